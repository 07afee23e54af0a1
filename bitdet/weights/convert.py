"""Convert BiT weights between formats: any format bitdet reads -> npz, bitdet, Detectron2, timm,
bit_pytorch.

The architecture is read from the file itself (units per stage, stem width, head size), so a
conversion needs no model name. Every tensor is checked on the way (the same loader as
``create_model``), renamed, and written atomically; values are copied, never recomputed, so
converting back gives the original tensors.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict

import torch

from bitdet.errors import ConfigError
from bitdet.numerics import WS_EPS
from bitdet.utils.io import PathLike
from bitdet.weights.architecture import FileArchitecture
from bitdet.weights.checkpoint_file import (
    save_checkpoint,
    write_checkpoint,
    write_npz,
    write_state_dict,
)
from bitdet.weights.errors import CheckpointError
from bitdet.weights.layouts import LAYOUTS
from bitdet.weights.loading import WeightsFile, apply_weights, read_weights, read_weights_file
from bitdet.weights.npz import state_dict_to_npz

__all__ = [
    "FORMATS",
    "DETECTRON2_PREFIX",
    "FileArchitecture",
    "convert",
    "export_state_dict",
    "infer_architecture",
]

logger = logging.getLogger(__name__)

# Output formats: the official npz layout, a bitdet checkpoint, a Detectron2 checkpoint, a timm
# resnetv2_*_bit state dict, the authors' bit_pytorch state dict.
FORMATS = ("npz", "torch", "detectron2", "timm", "bit_pytorch")
# Where the BiT trunk sits inside bitdet's Detectron2 FPN detectors.
DETECTRON2_PREFIX = "backbone.bottom_up."


def infer_architecture(source: PathLike) -> FileArchitecture:
    """Units per stage, stem width and head size of a weights file of any supported format.

    Raises:
        CheckpointError: the file does not describe a BiT ResNet-v2 (names what it holds).
    """
    return _complete_architecture(read_weights(source), source)


def _complete_architecture(weights: WeightsFile, source: PathLike) -> FileArchitecture:
    """The architecture of ``weights`` read from ``source``, if a stem and 4 stages.

    Raises:
        CheckpointError: see :func:`infer_architecture`.
    """
    if weights.arch is None or len(weights.arch.layers) != 4:
        raise CheckpointError(
            f"{source} is not a complete BiT ResNet-v2 checkpoint ({weights.format}): expected a "
            "stem conv and units in 4 stages, found stages "
            f"{list(weights.arch.layers) if weights.arch else []}"
        )
    return weights.arch


def export_state_dict(model: torch.nn.Module, layout: str) -> Dict[str, torch.Tensor]:
    """``model``'s parameters renamed to a layout of :data:`bitdet.weights.layouts.LAYOUTS`."""
    target = LAYOUTS[layout]
    return {
        target.from_bitdet_key(name): target.from_bitdet_tensor(name, value)
        for name, value in model.state_dict().items()
    }


def convert(
    src: PathLike, dst: PathLike, fmt: str, prefix: str = DETECTRON2_PREFIX
) -> FileArchitecture:
    """Convert ``src`` (any format bitdet reads, or an ``hf-hub:`` id) to ``dst`` in format ``fmt``.

    ``detectron2`` writes ``{"model": {prefix + name: tensor}, "__author__": "bitdet"}``
    without the classification head: Detectron2's stock ``DetectionCheckpointer`` loads it
    into a detector whose backbone is registered by :mod:`bitdet.detection`. ``timm`` writes
    timm's key names (a ``.safetensors`` file when ``dst`` ends so, else ``torch.save``);
    ``bit_pytorch`` the authors' names, loadable with ``ResNetV2.load_state_dict``.

    Returns:
        The architecture of the file written, read back from ``dst`` (a ``detectron2`` file
        has no head).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}: expected one of {FORMATS}")
    src_text, dst = str(src), Path(dst)
    weights = read_weights(src)
    if weights.arch is None:  # no stem conv: the error of infer_architecture
        _complete_architecture(weights, weights.source)
    arch = weights.arch
    if len(arch.layers) != 4:
        raise CheckpointError(
            f"{src_text} ({weights.format}) holds stages {list(arch.layers)}, not 4: "
            "not convertible"
        )
    source_eps = weights.ws_eps or WS_EPS
    model = arch.build(ws_eps=source_eps)
    apply_weights(model, weights)
    target_eps = LAYOUTS[fmt].ws_eps or WS_EPS if fmt in LAYOUTS else None
    if target_eps is not None and target_eps != source_eps:
        logger.warning(
            "%s was made with weight-standardization eps %g, %s code uses %g: its logits will "
            "differ by about 1e-5 relative",
            src_text,
            source_eps,
            fmt,
            target_eps,
        )
    if fmt == "npz":
        write_npz(dst, state_dict_to_npz(model))
    elif fmt == "torch":
        save_checkpoint(
            dst,
            model,
            source=src_text,
            source_format=weights.format,
            layers=list(arch.layers),
            stem_channels=arch.stem_channels,
        )
    elif fmt == "detectron2":
        state = {
            prefix + k: v.detach().clone()
            for k, v in model.state_dict().items()
            if not k.startswith("fc.")
        }
        write_checkpoint(
            dst,
            state,
            ws_eps=source_eps,
            meta={"source": src_text},
            extra={"__author__": "bitdet", "matching_heuristics": False},
        )
    else:
        write_state_dict(dst, export_state_dict(model, fmt))
    return _written_architecture(dst)


def _written_architecture(path: Path) -> FileArchitecture:
    """The architecture a converted file holds, read back from it (its name is not resolved)."""
    arch = read_weights_file(path).arch
    if arch is None:
        raise CheckpointError(f"{path}: the file just written holds no BiT trunk when read back")
    return arch
