"""BiT ResNet-v2 models (plain ``torch.nn``; no Detectron2 import, no weights files: those are
:mod:`bitdet.weights`, and :func:`bitdet.create_model` builds a model with them).

Inputs are RGB images scaled to [-1, 1] (``x / 127.5 - 1``; ``mean = std = 0.5`` on [0, 1]).
"""

from bitdet.models.layers import StdConv2d, standardize_weight
from bitdet.models.preprocess import create_transform, resolve_data_config
from bitdet.models.resnetv2 import (
    FEATURE_NAMES,
    FeatureInfo,
    PreActBottleneck,
    ResNetV2,
    ResNetV2Features,
)
from bitdet.models.variants import (
    ARCHITECTURES,
    PRETRAINED,
    PretrainedCfg,
    get_pretrained_cfg,
    list_models,
    resolve,
)

__all__ = [
    "ARCHITECTURES",
    "FEATURE_NAMES",
    "FeatureInfo",
    "PRETRAINED",
    "PreActBottleneck",
    "PretrainedCfg",
    "ResNetV2",
    "ResNetV2Features",
    "StdConv2d",
    "create_transform",
    "get_pretrained_cfg",
    "list_models",
    "resolve",
    "resolve_data_config",
    "standardize_weight",
]
