"""The one table of BiT model variants and pretrained checkpoints.

Names follow the paper: ``R{depth}x{width}`` for an architecture, ``BiT-{S,M}-R{depth}x{width}``
for one with its official upstream weights (BiT-S: ILSVRC-2012, 1000 classes; BiT-M:
ImageNet-21k, 21843 classes). BiT-L was never released.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

__all__ = ["Architecture", "Pretrained", "ARCHITECTURES", "PRETRAINED", "resolve", "list_models"]


@dataclass(frozen=True)
class Architecture:
    """A ResNet-v2 shape.

    Attributes:
        layers: bottleneck units per stage (4 stages).
        width: the width multiplier ``w``: stage outputs are 256w, 512w, 1024w, 2048w.
        stem_width: channels of the stem conv before multiplying by ``w`` (64 in the paper).
        paper_model: False for the small CPU variants that are not from the paper.
    """

    layers: Tuple[int, int, int, int]
    width: int = 1
    stem_width: int = 64
    paper_model: bool = True


@dataclass(frozen=True)
class Pretrained:
    """An official checkpoint: its architecture, upstream class count and public URL.

    ``sha256`` is None for every official file: the authors publish no digests or sizes, and
    the files could not be fetched where this table was written to record them. A download
    is verified instead by its transfer length (``Content-Length``), by reading every array,
    and by matching every parameter name and shape of the architecture, head included
    (:func:`bitdet.models.factory.check_npz_architecture`). Set ``sha256`` to pin a file.
    """

    arch: str
    num_classes: int
    url: str
    sha256: Optional[str] = None


_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}

ARCHITECTURES: Dict[str, Architecture] = {
    f"R{depth}x{width}": Architecture(layers, width)
    for depth, layers in _DEPTHS.items()
    for width in (1, 2, 3, 4)
}
# Small variants for CPU demos and tests: NOT paper models (one unit per stage, half width).
ARCHITECTURES["R14-tiny"] = Architecture((1, 1, 1, 1), width=1, stem_width=32, paper_model=False)
ARCHITECTURES["R26-tiny"] = Architecture((2, 2, 2, 2), width=1, stem_width=32, paper_model=False)

_UPSTREAM_CLASSES = {"S": 1000, "M": 21843}
_WEIGHTS_BASE_URL = "https://storage.googleapis.com/bit_models"

PRETRAINED: Dict[str, Pretrained] = {
    f"BiT-{tier}-{arch}": Pretrained(arch, classes, f"{_WEIGHTS_BASE_URL}/BiT-{tier}-{arch}.npz")
    for tier, classes in _UPSTREAM_CLASSES.items()
    for arch, spec in ARCHITECTURES.items()
    if spec.paper_model
}

_BIT_NAME = re.compile(r"^BiT-[SML]-")


def resolve(name: str) -> Tuple[str, Architecture, Optional[Pretrained]]:
    """Split a model name into its architecture name, shape and (optional) official checkpoint.

    Raises:
        KeyError: the name is unknown; the message lists the valid names.
    """
    if name in PRETRAINED:
        pre = PRETRAINED[name]
        return pre.arch, ARCHITECTURES[pre.arch], pre
    if name in ARCHITECTURES:
        return name, ARCHITECTURES[name], None
    hint = " (BiT-L was never released)" if name.startswith("BiT-L-") else ""
    if _BIT_NAME.match(name) and name[6:] in ARCHITECTURES and not hint:
        hint = f" ({name[6:]} has no official checkpoint)"
    raise KeyError(f"unknown model {name!r}{hint}; known models: {', '.join(list_models())}")


def list_models(pretrained_only: bool = False) -> list:
    """All model names, official checkpoints first."""
    names = list(PRETRAINED)
    if not pretrained_only:
        names += list(ARCHITECTURES)
    return names
