"""bitdet: Big Transfer (BiT) ResNet-v2 backbones, pretraining, transfer and Detectron2
detection."""

from bitdet.models import create_model, create_transform, list_models, resolve_data_config
from bitdet.version import __version__

__all__ = ["create_model", "create_transform", "list_models", "resolve_data_config", "__version__"]
