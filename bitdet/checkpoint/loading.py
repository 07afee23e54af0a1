"""Load weights into a BiT model from an official ``.npz`` or a PyTorch checkpoint, and save.

Every loader ends in :func:`apply_state_dict`, which checks the whole file against the model
before changing anything, and decides what happens to the classification head.
"""
from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

import torch

from bitdet.checkpoint.atomic import PathLike, atomic_write
from bitdet.checkpoint.errors import CheckpointError, CheckpointMismatchError
from bitdet.checkpoint.npz import HEAD_KEYS, npz_to_state_dict, read_npz

__all__ = ["LoadReport", "apply_state_dict", "load_weights", "read_state_dict", "save_checkpoint", "strip_prefixes"]

logger = logging.getLogger(__name__)

_HEAD = ("fc.weight", "fc.bias")
# Prefixes other tools put in front of our parameter names: DDP, Detectron2's BiT backbone.
_PREFIXES = ("module.", "backbone.bottom_up.", "bottom_up.", "backbone.")


@dataclass
class LoadReport:
    """What a load did: tensors loaded, what happened to the head, what was left at init."""

    path: str
    loaded: int
    head: str
    not_in_file: List[str] = field(default_factory=list)

    def __str__(self) -> str:
        text = f"loaded {self.loaded} tensors from {self.path}; head: {self.head}"
        if self.not_in_file:
            text += f"; kept at initialisation (not in file): {', '.join(self.not_in_file)}"
        return text


def strip_prefixes(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Remove a prefix that every key shares (``module.`` from DDP, Detectron2's backbone path)."""
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def read_state_dict(path: PathLike) -> Dict[str, torch.Tensor]:
    """Read a PyTorch checkpoint safely (``weights_only=True``) and return its state dict.

    Accepts a plain state dict, ``{"model": state_dict, ...}`` (bitdet, Detectron2) or
    ``{"state_dict": ...}``; strips DDP / Detectron2 backbone prefixes.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refusing to load {path}: it contains Python objects beyond tensors and plain "
            f"containers, which could run code when unpickled ({e}). Re-save it as a state "
            "dict, or convert it with tools/convert_weights.py after reviewing its source."
        ) from e
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {e}") from e
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return strip_prefixes(dict(obj))


def apply_state_dict(
    model: torch.nn.Module,
    state: Dict[str, torch.Tensor],
    path: PathLike = "<state dict>",
    zero_head: bool = False,
) -> LoadReport:
    """Copy ``state`` into ``model`` after checking every key and shape.

    The head is loaded when the file has one of the model's size and ``zero_head`` is False;
    otherwise it is zero-initialised (BiT fine-tuning) and the report says why. A headless
    model ignores the file's head. BatchNorm running statistics may be absent.

    Raises:
        CheckpointMismatchError: missing, unexpected or misshapen tensors (nothing is changed).
    """
    own = model.state_dict()
    optional = {k for k in own if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    body = {k: v for k, v in state.items() if k not in _HEAD and k not in HEAD_KEYS}
    missing = sorted(k for k in own if k not in body and k not in _HEAD and k not in optional)
    unexpected = sorted(k for k in body if k not in own)
    mismatched = [(k, own[k].shape, v.shape) for k, v in body.items() if k in own and own[k].shape != v.shape]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(path, missing, unexpected, mismatched)

    file_head = tuple(state.get(k) for k in _HEAD)
    if getattr(model, "fc", None) is None:
        has_head = any(k in state for k in _HEAD + HEAD_KEYS)
        head = "none (headless model)" + ("; the file's head was ignored" if has_head else "")
    elif zero_head:
        head = "zero-initialised (requested)"
    elif file_head[0] is None:
        head = "zero-initialised (the file has no head)"
    elif any(v is None or v.shape != own[k].shape for k, v in zip(_HEAD, file_head)):
        found = file_head[0].shape[0] if file_head[0] is not None else "?"
        head = f"zero-initialised (the file's head has {found} classes, the model {model.fc.out_channels})"
    else:
        head = f"loaded ({model.fc.out_channels} classes)"
        body.update(zip(_HEAD, file_head))

    with torch.no_grad():
        for name, value in body.items():
            own[name].copy_(value)
    if head.startswith("zero"):
        model.reset_head(zero=True)
    not_in_file = sorted(k for k in optional if k not in body and not k.endswith("num_batches_tracked"))
    report = LoadReport(str(path), len(body), head, not_in_file)
    logger.info("%s", report)
    return report


def load_weights(model: torch.nn.Module, path: PathLike, zero_head: bool = False) -> LoadReport:
    """Load an official BiT ``.npz`` or a PyTorch checkpoint (chosen by content) into ``model``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    with open(path, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"
    # torch.save also writes zip archives; an npz has no "data.pkl" and its members end in .npy.
    if path.suffix == ".npz" or (is_zip and _looks_like_npz(path)):
        state = npz_to_state_dict(read_npz(path), model)
    else:
        state = read_state_dict(path)
    return apply_state_dict(model, state, path, zero_head=zero_head)


def _looks_like_npz(path: Path) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return all(n.endswith(".npy") for n in z.namelist())
    except zipfile.BadZipFile:
        return False


def save_checkpoint(path: PathLike, model: torch.nn.Module, **meta: Any) -> None:
    """Save ``{"model": state_dict, "meta": meta}`` atomically (loadable with weights_only)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_write(path) as f:
        torch.save({"model": state, "meta": meta}, f)

