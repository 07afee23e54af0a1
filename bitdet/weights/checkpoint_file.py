"""The one place that writes and reads bitdet's checkpoint files, and a run's ``last_checkpoint``.

Every writer of weights goes through here: the classification trainer
(:class:`bitdet.engine.TrainingCheckpointer`), Detectron2's checkpointer
(:class:`bitdet.detection.BiTCheckpointer`), ``bitdet-convert`` and the pretraining export.
A write

- refuses NaN / inf weights (it would replace a good file),
- records the model's weight-standardization epsilon in ``meta["ws_eps"]``, which loading
  restores (timm-sourced weights compute with 1e-8),
- is atomic (:func:`bitdet.utils.io.atomic_write`: a temporary file renamed into place, mode
  0666 minus the umask), and holds only tensors and plain values, so it reads back with
  ``torch.load(weights_only=True)`` (:func:`torch_load_safely`).

A run folder holds ``model_{NNNNNNN}.pth`` files (Detectron2's naming) and ``last_checkpoint``,
which names the newest; it moves only after that file is complete. Resuming takes the file it
names when that reads whole, else the newest older one that does (:func:`resume_file`).
"""

from __future__ import annotations

import logging
import math
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

from bitdet.errors import NonFiniteError
from bitdet.utils.io import PathLike, atomic_write
from bitdet.weights.errors import CheckpointError
from bitdet.weights.safe_pickle import safe_pickle_load, unsafe_pickle_allowed

__all__ = [
    "LAST_CHECKPOINT",
    "RUNNING_STATS",
    "caffe2_weights",
    "check_finite_weights",
    "damage_of",
    "describe_fallback",
    "last_checkpoint",
    "load_pickle",
    "newest_readable",
    "periodic_checkpoints",
    "point_last_checkpoint",
    "resume_file",
    "save_checkpoint",
    "torch_load_safely",
    "write_checkpoint",
    "write_npz",
    "write_state_dict",
    "ws_eps_of",
]

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last_checkpoint"
# BatchNorm buffers: not learned, so a file may lack them.
RUNNING_STATS = ("running_mean", "running_var", "num_batches_tracked")
_PERIODIC = re.compile(r"^model_(\d{7})\.pth$")


# ---------------------------------------------------------------------------------- writing
def ws_eps_of(model: torch.nn.Module) -> Optional[float]:
    """The weight-standardization epsilon of ``model``'s convs (None without any)."""
    from bitdet.models.layers import StdConv2d

    return next((float(m.eps) for m in model.modules() if isinstance(m, StdConv2d)), None)


def check_finite_weights(state: Mapping[str, Any], what: str) -> None:
    """Refuse to write weights holding NaN or inf (the file would replace a good one).

    Raises:
        NonFiniteError: naming ``what`` and the first non-finite tensor.
    """
    for key, value in state.items():
        if isinstance(value, np.ndarray):
            finite = not np.issubdtype(value.dtype, np.floating) or bool(np.isfinite(value).all())
        else:
            finite = not (torch.is_tensor(value) and value.is_floating_point()) or bool(
                torch.isfinite(value).all()
            )
        if not finite:
            raise NonFiniteError(
                f"{what}: the weights hold NaN or inf ({key}); not saved, the previous "
                "checkpoint stays the last one. Lower the learning rate or check the data"
            )


def _torch_save(path: PathLike, obj: Any) -> None:
    with atomic_write(path) as f:
        torch.save(obj, f)


def write_checkpoint(
    path: PathLike,
    weights: Mapping[str, torch.Tensor],
    *,
    ws_eps: Optional[float] = None,
    meta: Optional[Dict[str, Any]] = None,
    extra: Optional[Dict[str, Any]] = None,
    what: Optional[str] = None,
) -> Path:
    """Write ``{"model": weights, "meta": meta, **extra}`` atomically.

    Args:
        weights: the state dict stored under ``"model"``.
        ws_eps: the model's weight-standardization epsilon, recorded as ``meta["ws_eps"]``
            unless ``meta`` has one.
        meta: plain values; with neither ``meta`` nor ``ws_eps`` the file has no ``"meta"``.
        extra: other entries (``step``, ``optimizer``, Detectron2's ``iteration``, ...).
        what: names the checkpoint in the NaN error (default: ``path``).

    Raises:
        NonFiniteError: the weights hold NaN or inf (nothing is written).
    """
    check_finite_weights(weights, what or str(path))
    payload: Dict[str, Any] = {"model": weights}
    if ws_eps is not None:
        meta = dict(meta or {})
        meta.setdefault("ws_eps", float(ws_eps))
    if meta is not None:
        payload["meta"] = meta
    payload.update(extra or {})
    _torch_save(path, payload)
    return Path(path)


def save_checkpoint(path: PathLike, model: torch.nn.Module, **meta: Any) -> None:
    """Save ``{"model": state_dict, "meta": meta}`` of ``model`` (see :func:`write_checkpoint`)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    write_checkpoint(path, state, ws_eps=ws_eps_of(model), meta=meta)


def write_state_dict(path: PathLike, tensors: Mapping[str, torch.Tensor]) -> None:
    """Write a bare state dict atomically: safetensors when ``path`` ends so, else ``torch.save``.

    Raises:
        NonFiniteError: the tensors hold NaN or inf (nothing is written).
    """
    check_finite_weights(tensors, str(path))
    if Path(path).suffix == ".safetensors":
        from safetensors.torch import save

        with atomic_write(path) as f:
            f.write(save({k: v.contiguous() for k, v in tensors.items()}))
    else:
        _torch_save(path, tensors)


def write_npz(path: PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` as an (uncompressed) npz, atomically.

    Raises:
        NonFiniteError: the arrays hold NaN or inf (nothing is written).
    """
    check_finite_weights(arrays, str(path))
    with atomic_write(path) as f:
        np.savez(f, **arrays)


# ---------------------------------------------------------------------------------- reading
def torch_load_safely(path: PathLike) -> Any:
    """``torch.load`` with ``weights_only=True`` stated explicitly (an environment variable can
    flip torch's default) and errors that name the file.

    Raises:
        CheckpointError: the file holds Python objects beyond tensors and plain containers,
            or is no readable PyTorch file.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refusing to load {path}: it contains Python objects beyond tensors and plain "
            f"containers, which could run code when unpickled ({str(e).splitlines()[-1]}). "
            "Re-save it as a state dict, or convert it with bitdet-convert after reviewing its "
            "source."
        ) from e
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (truncated?): {e}"
        ) from e


def load_pickle(path: PathLike) -> Any:
    """Unpickle a ``.pkl`` weights file: numpy arrays and plain containers only, unless the
    user trusts the file (``BITDET_ALLOW_UNSAFE_PICKLE=1``)."""
    if unsafe_pickle_allowed():
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    return safe_pickle_load(path)


def caffe2_weights(data: Dict[str, Any]) -> Dict[str, Any]:
    """The weights of a pickled dict as Detectron2 reads them: under ``"blobs"`` when there
    (Caffe2 detection models), without the solver's ``*_momentum`` buffers."""
    if isinstance(data.get("blobs"), dict):
        data = data["blobs"]
    return {k: v for k, v in data.items() if not (isinstance(k, str) and k.endswith("_momentum"))}


# ------------------------------------------------------------------------------ run folders
def _number(path: Path) -> float:
    """Iteration in a ``model_{NNNNNNN}.pth`` name; ``model_final.pth`` (Detectron2) after all."""
    match = _PERIODIC.match(path.name)
    return int(match.group(1)) if match else math.inf


def periodic_checkpoints(folder: PathLike) -> List[Path]:
    """The ``model_{NNNNNNN}.pth`` files of ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if _PERIODIC.match(p.name)), key=_number)


def point_last_checkpoint(folder: PathLike, name: str) -> None:
    """Make ``last_checkpoint`` name the file ``name`` of ``folder`` (call after it is written:
    a crash in between leaves the previous pointer, which still names an intact file)."""
    with atomic_write(Path(folder) / LAST_CHECKPOINT, "w") as f:
        f.write(name)


def last_checkpoint(folder: PathLike) -> Optional[Path]:
    """The path ``folder/last_checkpoint`` names (it may not exist), or None without a pointer."""
    pointer = Path(folder) / LAST_CHECKPOINT
    if not pointer.is_file():
        return None
    return Path(folder) / pointer.read_text().strip()


def damage_of(path: PathLike) -> Optional[str]:
    """Why the checkpoint file ``path`` cannot be read whole (missing, empty, truncated, a failed
    checksum), or None when every member of its zip archive reads back with the right CRC."""
    path = Path(path)
    if not path.is_file():
        return "it does not exist"
    if path.stat().st_size == 0:
        return "it is empty (0 bytes)"
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:  # no central directory: truncated
        return f"truncated or corrupt ({e})"
    return f"corrupt member {bad} (checksum mismatch)" if bad else None


def newest_readable(
    pointed: Optional[Path], folder: PathLike
) -> Tuple[Optional[Path], List[Tuple[Path, str]]]:
    """``pointed`` (what ``last_checkpoint`` names) if it reads whole, else the newest older
    ``model_NNNNNNN.pth`` of ``folder`` that does.

    Returns:
        ``(path or None when no file reads whole, [(skipped file, why)] newest first)``.
    """
    numbered = periodic_checkpoints(folder)[::-1]
    if pointed is None:
        candidates = numbered
    else:
        candidates = [pointed, *(p for p in numbered if _number(p) < _number(pointed))]
    skipped = []
    for path in candidates:
        why = damage_of(path)
        if why is None:
            return path, skipped
        skipped.append((path, why))
    return None, skipped


def describe_fallback(
    chosen: Optional[Path], skipped: List[Tuple[Path, str]], folder: PathLike
) -> str:
    """The warning (a file was chosen) or the error (none was) after :func:`newest_readable`."""
    reasons = "; ".join(f"{p.name}: {why}" for p, why in skipped)
    if chosen is None:
        return (
            f"no readable checkpoint to resume from in {folder} ({reasons}); move the damaged "
            "files away to train from the start"
        )
    return (
        f"cannot resume from {skipped[0][0].name} ({reasons}): resuming from {chosen.name}, "
        "the newest readable checkpoint before it"
    )


def resume_file(pointed: Optional[Path], folder: PathLike) -> Path:
    """The checkpoint to resume from (:func:`newest_readable`); warns naming both files when it
    is not ``pointed``.

    Raises:
        CheckpointError: no checkpoint of ``folder`` reads whole.
    """
    chosen, skipped = newest_readable(pointed, folder)
    if chosen is None:
        raise CheckpointError(describe_fallback(None, skipped, folder))
    if skipped:
        logger.warning(describe_fallback(chosen, skipped, folder))
    return chosen
