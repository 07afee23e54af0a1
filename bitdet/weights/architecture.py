"""The ResNet-v2 a set of weights describes, read from tensor shapes, and named as bitdet names
it."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple

import torch

from bitdet.numerics import WS_EPS
from bitdet.weights.checkpoint_file import RUNNING_STATS

__all__ = ["FileArchitecture", "architecture_of"]

_UNIT = re.compile(r"^block(\d)\.unit(\d+)\.")


@dataclass(frozen=True)
class FileArchitecture:
    """The ResNet-v2 shape of a state dict in bitdet's naming.

    Attributes:
        layers: units per stage.
        stem_channels: output channels of the stem conv (64 x the width multiplier for paper
            models).
        num_classes: rows of the head (0: no head).
        trunk_params: parameters outside the head.
        name: the bitdet architecture name of this shape (``"R50x1"``), or None.
    """

    layers: Tuple[int, ...]
    stem_channels: int
    num_classes: int
    trunk_params: int = 0
    name: Optional[str] = None

    def describe(self) -> str:
        """The bitdet name with the trunk's parameter count in millions (``BiT `` before a paper
        model), or the unit counts when unnamed."""
        size = f"{self.trunk_params / 1e6:.1f}M"
        if self.name is None:
            return (
                f"a ResNet-v2 with units {list(self.layers)} and a {self.stem_channels}-channel "
                f"stem ({size}), which no bitdet model name describes"
            )
        from bitdet.models.variants import ARCHITECTURES

        paper = ARCHITECTURES[self.name].paper_model
        return f"{'BiT ' if paper else ''}{self.name} ({size})"

    def build(self, ws_eps: float = WS_EPS):
        """A randomly initialised :class:`bitdet.models.ResNetV2` of this shape."""
        from bitdet.models.resnetv2 import ResNetV2

        return ResNetV2(
            self.layers,
            width=1,
            stem_width=self.stem_channels,
            num_classes=self.num_classes,
            ws_eps=ws_eps,
        )


def architecture_of(state: Mapping[str, torch.Tensor]) -> Optional[FileArchitecture]:
    """The architecture of a bitdet-named state dict; None without a stem conv.

    Only stages present are counted (a detector's trunk may stop early).
    """
    stem = state.get("stem.conv.weight")
    if stem is None:
        return None
    units: Dict[int, set] = defaultdict(set)
    for key in state:
        match = _UNIT.match(key)
        if match:
            units[int(match.group(1))].add(int(match.group(2)))
    layers = tuple(len(units[i]) for i in sorted(units))
    head = state.get("fc.weight")
    trunk = sum(
        v.numel()
        for k, v in state.items()
        if not k.startswith("fc.") and not k.endswith(RUNNING_STATS)
    )
    stem_channels = int(stem.shape[0])
    return FileArchitecture(
        layers,
        stem_channels,
        int(head.shape[0]) if head is not None else 0,
        trunk,
        _name_of(layers, stem_channels),
    )


def _name_of(layers: Tuple[int, ...], stem_channels: int) -> Optional[str]:
    from bitdet.models.variants import ARCHITECTURES

    for name, arch in ARCHITECTURES.items():
        if tuple(arch.layers) == layers and arch.stem_width * arch.width == stem_channels:
            return name
    return None
