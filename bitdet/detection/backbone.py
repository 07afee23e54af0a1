"""BiT ResNet-v2 as Detectron2 backbones: the trunk, RetinaNet's FPN (P3-P7), a plain FPN (P2-P6).

The trunk reuses :class:`bitdet.models.ResNetV2`'s modules under the same names, so a
classification checkpoint maps onto ``backbone.bottom_up.<name>`` unchanged.
"""

from __future__ import annotations

import logging
from typing import Dict, Sequence

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7

from bitdet.config import check_device
from bitdet.detection.config import fixed_input_size
from bitdet.errors import ConfigError
from bitdet.log import ignore_third_party_warnings
from bitdet.models.resnetv2 import (
    FEATURE_NAMES,
    GradCheckpointing,
    ResNetV2,
    checkpointing_mode,
    run_stage,
)
from bitdet.models.variants import resolve

__all__ = [
    "BiTBackbone",
    "build_bit_backbone",
    "build_bit_fpn_backbone",
    "build_retinanet_bit_fpn_backbone",
]

FEATURE_TAPS = ("preact", "raw")

logger = logging.getLogger(__name__)


class BiTBackbone(GradCheckpointing, Backbone):
    """BiT ResNet-v2 trunk returning ``{"stem", "res2".."res5"}`` features for Detectron2.

    Args:
        variant: architecture name, e.g. ``"R101x3"`` (a ``BiT-S-``/``BiT-M-`` prefix is allowed).
        out_features: stage outputs to return.
        feature_tap: ``"preact"`` returns ``relu(GN(x))`` of each stage output using the
            pretrained norm that comes next in the network (the next stage's first ``gn1``;
            for ``res5`` the final GN); ``"raw"`` returns the un-normalised residual sums.
        freeze_at: freeze the stem (1) and the following stages (2 = stem + res2, ...), as
            Detectron2's ``MODEL.BACKBONE.FREEZE_AT``; see :meth:`freeze`.
        activation_checkpointing: ``"none"``, ``"stage"`` or ``"unit"``
            (``MODEL.ACTIVATION_CHECKPOINTING``; :meth:`set_grad_checkpointing`). Frozen
            stages are not checkpointed: they keep no activations.
        **model_kwargs: :class:`ResNetV2` options (``ws_eps``, ``in_channels``).

    ``square_pad`` (set by :func:`build_bit_backbone` from ``INPUT.AUGMENTATION``; 0: none) is the
    square side the detector pads its inputs to (Detectron2's ``padding_constraints``).
    """

    square_pad = 0

    def __init__(
        self,
        variant: str,
        out_features: Sequence[str] = ("res3", "res4", "res5"),
        feature_tap: str = "preact",
        freeze_at: int = 0,
        activation_checkpointing: str = "none",
        **model_kwargs,
    ) -> None:
        super().__init__()
        _, arch, _ = resolve(variant)
        self.grad_checkpointing = checkpointing_mode(
            activation_checkpointing, "MODEL.ACTIVATION_CHECKPOINTING"
        )
        unknown = [f for f in out_features if f not in FEATURE_NAMES]
        if unknown or not out_features:
            raise ConfigError(
                f"MODEL.BIT.OUT_FEATURES {list(out_features)}: choose from {FEATURE_NAMES}"
            )
        if feature_tap not in FEATURE_TAPS:
            raise ConfigError(
                f"MODEL.BIT.FEATURE_TAP {feature_tap!r}: expected one of {FEATURE_TAPS}"
            )
        last = max(FEATURE_NAMES.index(f) for f in out_features)
        if feature_tap == "preact" and last != len(FEATURE_NAMES) - 1:
            raise ConfigError(
                "MODEL.BIT.FEATURE_TAP 'preact' normalises a stage with the next stage's first "
                f"norm, so OUT_FEATURES must include res5 (got {list(out_features)}); use 'raw' "
                "otherwise"
            )
        trunk = ResNetV2(
            arch.layers, arch.width, num_classes=0, stem_width=arch.stem_width, **model_kwargs
        )
        self.stem = trunk.stem
        self.num_stages = (
            last  # the trunk is built whole; stages after the last requested feature are dropped
        )
        for i in range(1, last + 1):
            self.add_module(f"block{i}", getattr(trunk, f"block{i}"))
        if feature_tap == "preact":
            self.norm = trunk.norm
        self.feature_tap = feature_tap
        self._out_features = list(out_features)
        self._out_feature_channels = {f: trunk.feature_info[f][0] for f in out_features}
        self._out_feature_strides = {f: trunk.feature_info[f][1] for f in out_features}
        self.freeze(freeze_at)

    @property
    def stages(self):
        return tuple(getattr(self, f"block{i}") for i in range(1, self.num_stages + 1))

    def freeze(self, freeze_at: int = 0) -> "BiTBackbone":
        """Freeze the stem (``freeze_at >= 1``) and stages ``res2``.. up to ``freeze_at``.

        Detectron2's ``MODEL.BACKBONE.FREEZE_AT``: 0 trains everything, 1 freezes the stem, 2
        the stem and res2, ... 5 the whole trunk. Frozen parameters get ``requires_grad =
        False`` (GroupNorm has no running statistics to freeze). With the ``"preact"`` tap a
        frozen stage's feature is ``relu(norm(x))`` through the next stage's ``gn1`` (res5: the
        final ``norm``): that norm is frozen too, so a frozen stage's feature is fixed. Logs what
        is trainable.

        Raises:
            ValueError: ``freeze_at`` outside 0..5.
        """
        if not 0 <= freeze_at <= len(FEATURE_NAMES):
            raise ConfigError(
                f"MODEL.BACKBONE.FREEZE_AT {freeze_at}: expected 0 (train all) to "
                f"{len(FEATURE_NAMES)} (freeze {', '.join(FEATURE_NAMES)})"
            )
        for module in [self.stem, *self.stages][:freeze_at]:
            _frozen(module)
        if self.feature_tap == "preact":  # the tap norms of stem, res2, ..., res5
            for i in range(freeze_at):
                _frozen(self.stages[i][0].gn1 if i < len(self.stages) else self.norm)
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        frozen = ", ".join(FEATURE_NAMES[:freeze_at]) or "nothing"
        logger.info(
            "BiT backbone: MODEL.BACKBONE.FREEZE_AT %d freezes %s; %s of %s parameters trainable",
            freeze_at,
            frozen,
            f"{trainable:,}",
            f"{total:,}",
        )
        return self

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        if x.dim() != 4:
            raise ValueError(f"BiTBackbone takes (N, C, H, W) input, got shape {tuple(x.shape)}")
        outputs: Dict[str, torch.Tensor] = {}
        x = self.stem(x)
        names = FEATURE_NAMES[: self.num_stages + 1]
        for name, stage in zip(names, self.stages):
            first = stage[0]
            preact = torch.relu(first.gn1(x)) if self.feature_tap == "preact" else None
            if name in self._out_features:
                outputs[name] = x if preact is None else preact
            x = run_stage(
                stage, x, self.grad_checkpointing, preact
            )  # the unit reuses the tap's relu(gn1(x))
        last = names[-1]
        if last in self._out_features:
            outputs[last] = torch.relu(self.norm(x)) if self.feature_tap == "preact" else x
        return outputs

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            f: ShapeSpec(
                channels=self._out_feature_channels[f], stride=self._out_feature_strides[f]
            )
            for f in self._out_features
        }

    @property
    def padding_constraints(self) -> Dict[str, int]:
        return {"square_size": self.square_pad}


def _frozen(module: torch.nn.Module) -> None:
    """Make ``module``'s parameters untrainable."""
    for p in module.parameters():
        p.requires_grad_(False)


@BACKBONE_REGISTRY.register()
def build_bit_backbone(cfg, input_shape: ShapeSpec) -> BiTBackbone:
    """The BiT trunk alone, configured by ``MODEL.BIT`` (see :func:`add_bit_config`).

    Every BiT detector is built through here, so a ``MODEL.DEVICE`` this machine lacks stops
    with one line naming the key (not torch's driver error when the model is moved), and so
    does an unknown or inconsistent ``INPUT.AUGMENTATION`` (whose "fixed_size_jitter" pads
    inputs to a square).
    """
    check_device(cfg.MODEL.DEVICE, "MODEL.DEVICE")
    ignore_third_party_warnings()
    bit = cfg.MODEL.BIT
    backbone = BiTBackbone(
        bit.VARIANT,
        out_features=bit.OUT_FEATURES,
        feature_tap=bit.FEATURE_TAP,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
        activation_checkpointing=cfg.MODEL.ACTIVATION_CHECKPOINTING,
        ws_eps=bit.WS_EPS,
        in_channels=input_shape.channels,
    )
    backbone.square_pad = fixed_input_size(
        cfg
    )  # INPUT.AUGMENTATION "fixed_size_jitter": pad to a square
    return backbone


def _check_fpn_inputs(cfg, bottom_up: BiTBackbone) -> None:
    missing = [f for f in cfg.MODEL.FPN.IN_FEATURES if f not in bottom_up.output_shape()]
    if missing:
        raise ConfigError(
            f"MODEL.FPN.IN_FEATURES {list(cfg.MODEL.FPN.IN_FEATURES)} asks for {missing}, which "
            f"MODEL.BIT.OUT_FEATURES {list(cfg.MODEL.BIT.OUT_FEATURES)} does not provide"
        )


@BACKBONE_REGISTRY.register()
def build_retinanet_bit_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """BiT + FPN with P3-P7 as in Detectron2's RetinaNet: P6/P7 come from res5 (C5)."""
    bottom_up = build_bit_backbone(cfg, input_shape)
    _check_fpn_inputs(cfg, bottom_up)
    if "res5" not in bottom_up.output_shape():
        raise ConfigError(
            "RetinaNet's P6/P7 are computed from res5: add it to MODEL.BIT.OUT_FEATURES"
        )
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(bottom_up.output_shape()["res5"].channels, out_channels, "res5"),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
        square_pad=bottom_up.square_pad,
    )


@BACKBONE_REGISTRY.register()
def build_bit_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """BiT + FPN with P2-P6 (P6 by max-pooling P5), for Faster / Mask R-CNN and custom heads."""
    bottom_up = build_bit_backbone(cfg, input_shape)
    _check_fpn_inputs(cfg, bottom_up)
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
        square_pad=bottom_up.square_pad,
    )
