"""Convert BiT weights between the official ``.npz``, bitdet's PyTorch checkpoint and Detectron2.

The architecture is read from the file itself (units per stage, stem width, head size), so a
conversion needs no model name. All outputs are written atomically.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Tuple

import torch

from bitdet.checkpoint.atomic import PathLike, atomic_write
from bitdet.checkpoint.errors import CheckpointError
from bitdet.checkpoint.loading import apply_state_dict, read_state_dict, save_checkpoint
from bitdet.checkpoint.npz import npz_to_state_dict, read_npz, state_dict_to_npz, write_npz

__all__ = ["FORMATS", "FileArchitecture", "convert", "infer_architecture"]

# Output formats: the official npz layout, a bitdet checkpoint, a Detectron2 checkpoint.
FORMATS = ("npz", "torch", "detectron2")
# Where the BiT trunk sits inside bitdet's Detectron2 FPN detectors.
DETECTRON2_PREFIX = "backbone.bottom_up."

_NPZ_UNIT = re.compile(r"^resnet/block(\d)/unit(\d+)/")
_TORCH_UNIT = re.compile(r"^block(\d)\.unit(\d+)\.")


@dataclass(frozen=True)
class FileArchitecture:
    """The ResNet-v2 shape a weights file describes."""

    layers: Tuple[int, int, int, int]
    stem_channels: int
    num_classes: int

    def build(self):
        """A randomly initialised :class:`bitdet.models.ResNetV2` of this shape."""
        from bitdet.models.resnetv2 import ResNetV2

        return ResNetV2(self.layers, width=1, stem_width=self.stem_channels, num_classes=self.num_classes)


def _read_any(path: Path) -> Dict[str, Any]:
    """Arrays keyed as in the file: npz keys (numpy) for ``.npz``, parameter names otherwise."""
    return read_npz(path) if path.suffix == ".npz" else read_state_dict(path)


def _architecture(state: Dict[str, Any], npz: bool, path: Path) -> FileArchitecture:
    unit_re, stem_key = (_NPZ_UNIT, "resnet/root_block/standardized_conv2d/kernel") if npz else (
        _TORCH_UNIT, "stem.conv.weight")
    head_key = "resnet/head/conv2d/bias" if npz else "fc.bias"
    units = defaultdict(set)
    for key in state:
        match = unit_re.match(key)
        if match:
            units[int(match.group(1))].add(int(match.group(2)))
    if stem_key not in state or sorted(units) != [1, 2, 3, 4]:
        raise CheckpointError(
            f"{path} is not a BiT ResNet-v2 checkpoint: expected {stem_key!r} and units in 4 blocks, "
            f"found blocks {sorted(units)}"
        )
    stem = state[stem_key].shape[-1] if npz else state[stem_key].shape[0]
    head = state.get(head_key)
    return FileArchitecture(
        layers=tuple(len(units[i]) for i in (1, 2, 3, 4)),
        stem_channels=int(stem),
        num_classes=int(head.shape[0]) if head is not None else 0,
    )


def infer_architecture(path: PathLike) -> FileArchitecture:
    """Read units per stage, stem width and head size from an npz or PyTorch BiT checkpoint.

    Raises:
        CheckpointError: the file does not describe a BiT ResNet-v2 (names the missing part).
    """
    path = Path(path)
    return _architecture(_read_any(path), path.suffix == ".npz", path)


def convert(src: PathLike, dst: PathLike, fmt: str, prefix: str = DETECTRON2_PREFIX) -> FileArchitecture:
    """Convert ``src`` (npz or PyTorch) to ``dst`` in format ``fmt`` (one of :data:`FORMATS`).

    ``detectron2`` writes ``{"model": {prefix + name: tensor}, "__author__": "bitdet"}``
    without the classification head: Detectron2's stock ``DetectionCheckpointer`` loads it
    into a detector whose backbone is registered by :mod:`bitdet.detection`.

    Returns:
        The architecture found in ``src``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: expected one of {FORMATS}")
    src = Path(src)
    npz = src.suffix == ".npz"
    state = _read_any(src)  # read once: for the architecture, then for the weights
    arch = _architecture(state, npz, src)
    model = arch.build()
    apply_state_dict(model, npz_to_state_dict(state, model) if npz else state, src)
    if fmt == "npz":
        write_npz(dst, state_dict_to_npz(model))
    elif fmt == "torch":
        save_checkpoint(dst, model, source=str(src), layers=list(arch.layers), stem_channels=arch.stem_channels)
    else:
        state = {prefix + k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}
        with atomic_write(dst) as f:
            torch.save({"model": state, "__author__": "bitdet", "matching_heuristics": False}, f)
    return arch
