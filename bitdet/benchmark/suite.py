"""The models a benchmark run compares: BiT (bitdet) and its peers, grouped for ratios.

Peers are built without weights (nothing downloads): timm's BiT port, torchvision's BN
ResNet-50, and Detectron2's RetinaNet R50-FPN twice: stock (the model-zoo config: frozen
BatchNorm, FREEZE_AT 2) and like for like with bitdet's detector (GroupNorm, every layer
trainable).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch
from torch import nn

from bitdet.errors import UnknownNameError

__all__ = ["ModelSpec", "SUITE", "get_spec"]


@dataclass(frozen=True)
class ModelSpec:
    """One benchmarked model.

    Attributes:
        name: key in :data:`SUITE` and in the results.
        kind: "classifier" or "detector".
        group: models compared with each other (ratios are bitdet vs peer in a group).
        role: "bitdet" (ours) or "peer".
        build: ``build(num_classes, device) -> nn.Module``, randomly initialised.
        batch_size: reference training batch for classifiers (``BENCH.CLS_BATCH_SIZE`` 0).
        requires: the import this model needs, to skip it cleanly when missing.
        tiny: the suite entry a dry run builds in its place (the same code path at a small
            size); None builds the model itself (at the dry run's tiny inputs).
    """

    name: str
    kind: str
    group: str
    role: str
    build: Callable[[int, str], nn.Module]
    batch_size: int = 128
    requires: Optional[str] = None
    tiny: Optional[str] = None


def _bit(arch: str) -> Callable[[int, str], nn.Module]:
    def build(num_classes: int, device: str) -> nn.Module:
        from bitdet.factory import create_model

        with torch.device(device):  # initialise on the device: R101x3 is large
            return create_model(arch, num_classes=num_classes)

    return build


def _timm(name: str) -> Callable[[int, str], nn.Module]:
    def build(num_classes: int, device: str) -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False, num_classes=num_classes).to(device)

    return build


def _torchvision(name: str) -> Callable[[int, str], nn.Module]:
    def build(num_classes: int, device: str) -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(weights=None, num_classes=num_classes).to(device)

    return build


def _retinanet_bit(variant: str, fpn_channels: int = 256) -> Callable[[int, str], nn.Module]:
    def build(num_classes: int, device: str) -> nn.Module:
        from detectron2.modeling import build_model

        from bitdet.detection import get_bit_cfg

        cfg = get_bit_cfg(
            "Base-RetinaNet-BiT.yaml",
            [
                "MODEL.BIT.VARIANT",
                variant,
                "MODEL.BACKBONE.FREEZE_AT",
                0,  # all layers trainable, as BiT fine-tunes
                "MODEL.FPN.OUT_CHANNELS",
                fpn_channels,
                "MODEL.RETINANET.NUM_CLASSES",
                num_classes,
                "MODEL.DEVICE",
                device,
            ],
        )
        with torch.device(device):
            return build_model(cfg)

    return build


def _retinanet_detectron2(group_norm: bool) -> Callable[[int, str], nn.Module]:
    """Detectron2's model-zoo RetinaNet R50-FPN: stock, or with GN and every layer trainable."""

    def build(num_classes: int, device: str) -> nn.Module:
        from detectron2 import model_zoo
        from detectron2.config import get_cfg
        from detectron2.modeling import build_model

        cfg = get_cfg()
        cfg.merge_from_file(model_zoo.get_config_file("COCO-Detection/retinanet_R_50_FPN_1x.yaml"))
        # Random weights: the zoo's weights are not needed for speed and are not downloaded.
        cfg.MODEL.WEIGHTS = ""
        cfg.MODEL.RETINANET.NUM_CLASSES = num_classes
        cfg.MODEL.DEVICE = device
        if group_norm:
            # Like bitdet's detector: 32-group GN in the backbone, stride on the 3x3 conv,
            # nothing frozen; FPN and head keep bitdet's base config (no norm).
            cfg.MODEL.RESNETS.NORM = "GN"
            cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
            cfg.MODEL.BACKBONE.FREEZE_AT = 0
        return build_model(cfg)

    return build


_SPECS = [
    ModelSpec(
        "bit-R50x1", "classifier", "R50x1", "bitdet", _bit("R50x1"), 128, tiny="bit-R14-tiny"
    ),
    ModelSpec(
        "timm-resnetv2_50x1_bit",
        "classifier",
        "R50x1",
        "peer",
        _timm("resnetv2_50x1_bit"),
        128,
        requires="timm",
    ),
    ModelSpec(
        "torchvision-resnet50",
        "classifier",
        "R50x1",
        "peer",
        _torchvision("resnet50"),
        128,
        tiny="torchvision-resnet18",
    ),
    ModelSpec(
        "bit-R101x3", "classifier", "R101x3", "bitdet", _bit("R101x3"), 32, tiny="bit-R14-tiny"
    ),
    ModelSpec(
        "timm-resnetv2_101x3_bit",
        "classifier",
        "R101x3",
        "peer",
        _timm("resnetv2_101x3_bit"),
        32,
        requires="timm",
        tiny="timm-resnetv2_50x1_bit",
    ),
    ModelSpec(
        "retinanet-bit-R50x1-FPN",
        "detector",
        "RetinaNet",
        "bitdet",
        _retinanet_bit("R50x1"),
        tiny="retinanet-bit-R14-tiny-FPN",
    ),
    # The paper's detector (section 3.7): RetinaNet with an R101x3 trunk.
    ModelSpec(
        "retinanet-bit-R101x3-FPN",
        "detector",
        "RetinaNet-R101x3",
        "bitdet",
        _retinanet_bit("R101x3"),
        tiny="retinanet-bit-R14-tiny-FPN",
    ),
    ModelSpec(
        "retinanet-d2-R50-FPN",
        "detector",
        "RetinaNet",
        "peer",
        _retinanet_detectron2(group_norm=False),
    ),
    ModelSpec(
        "retinanet-d2-R50-FPN-GN",
        "detector",
        "RetinaNet",
        "peer",
        _retinanet_detectron2(group_norm=True),
    ),
    # Small CPU entries for tests and smoke runs (R14-tiny is not a paper model).
    ModelSpec("bit-R14-tiny", "classifier", "tiny", "bitdet", _bit("R14-tiny"), 2),
    ModelSpec("torchvision-resnet18", "classifier", "tiny", "peer", _torchvision("resnet18"), 2),
    ModelSpec(
        "retinanet-bit-R14-tiny-FPN",
        "detector",
        "RetinaNet-tiny",
        "bitdet",
        _retinanet_bit("R14-tiny", fpn_channels=32),
    ),
]

SUITE: Dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}


def get_spec(name: str) -> ModelSpec:
    """The suite entry ``name``; the error lists the valid names (``BENCH.MODELS``)."""
    try:
        return SUITE[name]
    except KeyError:
        raise UnknownNameError(
            f"BENCH.MODELS: unknown model {name!r}; known: {', '.join(SUITE)}"
        ) from None
