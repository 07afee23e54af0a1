"""The one table of BiT model variants and pretrained checkpoints.

Names follow the paper: ``R{depth}x{width}`` for an architecture, ``BiT-{S,M}-R{depth}x{width}``
for one with its official upstream weights (BiT-S: ILSVRC-2012, 1000 classes; BiT-M:
ImageNet-21k, 21843 classes). BiT-L was never released.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Sequence, Tuple, Union

from bitdet.errors import UnknownNameError

__all__ = [
    "ARCHITECTURES",
    "PRETRAINED",
    "Architecture",
    "Pretrained",
    "PretrainedCfg",
    "get_pretrained_cfg",
    "list_models",
    "resolve",
]


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
    (:func:`bitdet.weights.official.check_npz_architecture`). Set ``sha256`` to pin a file.
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
# Small variants for CPU demos and tests: NOT paper models (fewer units per stage and a
# narrower stem than R50x1, as their rows say).
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
    raise UnknownNameError(
        f"unknown model {name!r}{hint}; known models: {', '.join(list_models())}"
    )


def list_models(pattern: Union[str, Sequence[str], None] = None, pretrained: bool = False) -> list:
    """Model names, official checkpoints first; timm's ``list_models``.

    Args:
        pattern: shell-style pattern(s) (``fnmatch``, case-insensitive), e.g. ``"*R50*"`` or
            ``["BiT-M-*", "*tiny"]``; None lists every name.
        pretrained: only names with an official checkpoint (``BiT-S-*``, ``BiT-M-*``).

    Returns:
        Matching names: ``BiT-S-R50x1`` ... ``BiT-M-R152x4``, then ``R50x1`` ... ``R26-tiny``.
    """
    if isinstance(pattern, bool):  # list_models(True) meant pretrained-only before patterns existed
        raise TypeError(
            "list_models: the first argument is a name pattern; pass pretrained=True by keyword"
        )
    names = list(PRETRAINED) + ([] if pretrained else list(ARCHITECTURES))
    if pattern is None:
        return names
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    return [n for n in names if any(fnmatch.fnmatchcase(n.lower(), p.lower()) for p in patterns)]


@dataclass(frozen=True)
class PretrainedCfg:
    """How a model expects its input: timm's ``pretrained_cfg`` for a BiT model.

    Every BiT model takes RGB scaled to [-1, 1]: ``mean = std = 0.5`` on [0, 1] tensors, i.e.
    ``x / 127.5 - 1`` on 0..255 pixels (the authors' ``big_transfer`` input pipeline). Upstream
    training used 224 px Inception crops; the BiT-HyperRule evaluates by resizing straight to
    the input size, without a centre crop (``crop_pct`` 1.0, ``crop_mode`` "squash").

    Attributes:
        input_size: ``(channels, height, width)``.
        mean, std: per-channel normalisation of [0, 1] tensors.
        interpolation: resize interpolation (torchvision's name).
        crop_pct: evaluation resize side = ``input side / crop_pct``, then a centre crop;
            1.0 with "squash" resizes to the input size directly (aspect ratio not kept).
        crop_mode: "squash" (resize to the input size) or "center" (shorter side, then crop).
        num_classes: head size of the official checkpoint (1000 for an architecture name).
        first_conv, classifier: module names of the stem conv and the head.
    """

    input_size: Tuple[int, int, int] = (3, 224, 224)
    mean: Tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: Tuple[float, float, float] = (0.5, 0.5, 0.5)
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    crop_mode: str = "squash"
    num_classes: int = 1000
    first_conv: str = "stem.conv"
    classifier: str = "fc"

    def to_dict(self) -> dict:
        return asdict(self)


def get_pretrained_cfg(name: str) -> PretrainedCfg:
    """The input configuration of model ``name`` (any name :func:`list_models` gives)."""
    _, _, pre = resolve(name)
    return PretrainedCfg(num_classes=pre.num_classes if pre else 1000)
