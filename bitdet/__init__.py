"""bitdet: Big Transfer (BiT) ResNet-v2 backbones, pretraining, transfer and Detectron2 detection."""
from bitdet.models import create_model, list_models
from bitdet.version import __version__

__all__ = ["create_model", "list_models", "__version__"]
