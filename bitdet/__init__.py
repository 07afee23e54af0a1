"""bitdet: Big Transfer (BiT) ResNet-v2 backbones, pretraining, transfer and Detectron2
detection.

The names below are imported on first use, so that importing one subpackage
(``bitdet.models``, ``bitdet.weights``, ...) does not import the others.
"""

import importlib

from bitdet.version import __version__

__all__ = ["create_model", "create_transform", "list_models", "resolve_data_config", "__version__"]

_HOMES = {
    "create_model": "bitdet.factory",
    "create_transform": "bitdet.models.preprocess",
    "list_models": "bitdet.models.variants",
    "resolve_data_config": "bitdet.models.preprocess",
}


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'bitdet' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
