"""BiT ResNet-v2 models (plain ``torch.nn``; no Detectron2 import)."""
from bitdet.models.factory import create_model, pretrained_path
from bitdet.models.layers import StdConv2d, standardize_weight
from bitdet.models.resnetv2 import FEATURE_NAMES, PreActBottleneck, ResNetV2
from bitdet.models.variants import ARCHITECTURES, PRETRAINED, list_models, resolve

__all__ = [
    "ARCHITECTURES",
    "FEATURE_NAMES",
    "PRETRAINED",
    "PreActBottleneck",
    "ResNetV2",
    "StdConv2d",
    "create_model",
    "list_models",
    "pretrained_path",
    "resolve",
    "standardize_weight",
]
