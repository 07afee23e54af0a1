"""Training checkpoints: ``model_{iteration:07d}.pth`` + ``last_checkpoint``, atomic, keep the
last N.

A file holds ``{"model": state_dict, "optimizer": ..., "step": int, "rng": {...}, "meta": {...}}``
made only of tensors and plain Python values, so it loads with ``torch.load(weights_only=True)``.
``"model"`` uses bitdet's own parameter names (no ``module.`` prefix): the file is also a valid
weights file for :func:`bitdet.checkpoint.load_weights`, ``create_model(pretrained=...)`` and
Detectron2's ``BiTCheckpointer``. ``step`` counts completed optimizer steps; the file is named as
Detectron2 names its own: after the 0-based index of the last iteration it holds
(``model_0000099.pth`` after 100 steps), so both trainers' folders read the same way.
"""

from __future__ import annotations

import logging
import math
import random
import re
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from bitdet.checkpoint.errors import CheckpointError
from bitdet.checkpoint.loading import ws_eps_of
from bitdet.errors import NonFiniteError
from bitdet.utils.io import PathLike, atomic_write, remove_stale_temporaries

__all__ = [
    "TrainingCheckpointer",
    "capture_rng_state",
    "check_finite_weights",
    "clear_run",
    "damage_of",
    "describe_fallback",
    "newest_readable",
    "restore_rng_state",
]

logger = logging.getLogger(__name__)

_PATTERN = re.compile(r"^model_(\d{7})\.pth$")
LAST_CHECKPOINT = "last_checkpoint"


def capture_rng_state() -> Dict[str, Any]:
    """Python, NumPy, torch (CPU and CUDA) generator states as tensors and plain values."""
    py = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: Dict[str, Any] = {
        "python": torch.tensor(py[1], dtype=torch.int64),
        "python_version": int(py[0]),
        "numpy": torch.from_numpy(np_keys.astype(np.int64)),
        "numpy_pos": int(np_pos),
        "numpy_gauss": [int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states only if the device count matches)."""
    random.setstate(
        (state["python_version"], tuple(int(v) for v in state["python"].tolist()), None)
    )
    has_gauss, gauss = state["numpy_gauss"]
    np.random.set_state(
        (
            "MT19937",
            state["numpy"].numpy().astype(np.uint32),
            state["numpy_pos"],
            int(has_gauss),
            gauss,
        )
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def check_finite_weights(state: Dict[str, torch.Tensor], what: str) -> None:
    """Refuse to write weights holding NaN or inf (the checkpoint would overwrite a good one).

    Raises:
        FloatingPointError: naming ``what`` and the first non-finite tensor.
    """
    for key, value in state.items():
        if (
            torch.is_tensor(value)
            and value.is_floating_point()
            and not bool(torch.isfinite(value).all())
        ):
            raise NonFiniteError(
                f"{what}: the weights hold NaN or inf ({key}); not saved, the previous "
                "checkpoint stays the last one. Lower the learning rate or check the data"
            )


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


def _number(path: Path) -> float:
    """Iteration in a ``model_{NNNNNNN}.pth`` name; ``model_final.pth`` (Detectron2) after all
    of them."""
    match = _PATTERN.match(path.name)
    return int(match.group(1)) if match else math.inf


def newest_readable(
    pointed: Optional[Path], folder: PathLike
) -> Tuple[Optional[Path], List[Tuple[Path, str]]]:
    """The checkpoint to resume from: ``pointed`` (what ``last_checkpoint`` names) if it reads
    whole, else the newest older ``model_NNNNNNN.pth`` of ``folder`` that does.

    Returns:
        ``(path or None when no file reads whole, [(skipped file, why)] newest first)``.
    """
    folder = Path(folder)
    numbered = sorted(
        (p for p in folder.glob("model_*.pth") if _PATTERN.match(p.name)), key=_number, reverse=True
    )
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
        f"cannot resume from {skipped[0][0].name} ({reasons}): resuming from {chosen.name}, the "
        "newest readable checkpoint before it"
    )


def clear_run(output_dir: PathLike, results: Sequence[str] = ()) -> List[Path]:
    """Delete a run's checkpoints, ``last_checkpoint`` and its ``results`` files (``--force``).

    Logs, metrics and anything else in the folder stay. Returns the deleted paths.
    """
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    doomed = [p for p in folder.iterdir() if _PATTERN.match(p.name)]
    doomed += [folder / name for name in (LAST_CHECKPOINT, *results) if (folder / name).is_file()]
    for path in doomed:
        path.unlink(missing_ok=True)
    if doomed:
        logger.info(
            "starting over in %s: deleted %s", folder, ", ".join(sorted(p.name for p in doomed))
        )
    return doomed


class TrainingCheckpointer:
    """Saves and finds training checkpoints in ``output_dir``.

    Args:
        output_dir: folder of the run.
        keep_last: how many periodic ``model_*.pth`` files to keep (older ones are deleted
            after a newer one is safely on disk); 0 keeps all.
    """

    def __init__(self, output_dir: PathLike, keep_last: int = 3) -> None:
        self.output_dir = Path(output_dir)
        self.keep_last = keep_last
        remove_stale_temporaries(self.output_dir)

    def path_for(self, step: int) -> Path:
        """The file of the state after ``step`` (>= 1) completed steps:
        ``model_{step - 1:07d}.pth``."""
        if step < 1:
            raise ValueError(f"a checkpoint holds at least one completed step, got step {step}")
        return self.output_dir / f"model_{step - 1:07d}.pth"

    def save(
        self,
        step: int,
        model: torch.nn.Module,
        optimizer: Optional[torch.optim.Optimizer] = None,
        meta: Optional[Dict[str, Any]] = None,
        data: Optional[Dict[str, int]] = None,
    ) -> Path:
        """Write the checkpoint of ``step`` atomically, point ``last_checkpoint`` at it, prune.

        Args:
            step: completed optimizer steps.
            model: the bare model (not DDP-wrapped).
            optimizer: its optimizer, or None for a weights-only file.
            meta: plain values (config, names) to store alongside.
            data: the data stream's layout (integers, e.g. the process count), checked on resume.

        Returns:
            The path written.

        Raises:
            FloatingPointError: the weights hold NaN or inf (nothing is written).
        """
        weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        check_finite_weights(weights, f"checkpoint after step {step}")
        state = {
            "model": weights,
            "step": int(step),
            "rng": capture_rng_state(),
            "meta": dict(meta or {}),
        }
        eps = ws_eps_of(model)
        if eps is not None:  # loading restores it (weights from timm compute with 1e-8)
            state["meta"].setdefault("ws_eps", eps)
        if optimizer is not None:
            state["optimizer"] = optimizer.state_dict()
        if data is not None:
            state["data"] = dict(data)
        path = self.path_for(step)
        with atomic_write(path) as f:
            torch.save(state, f)
        # The pointer moves only after the file is complete: a crash in between leaves the
        # previous pointer, which still names an intact file.
        with atomic_write(self.output_dir / LAST_CHECKPOINT, "w") as f:
            f.write(path.name)
        self._prune(keep=path)
        logger.info("saved checkpoint %s", path)
        return path

    def _prune(self, keep: Path) -> None:
        if self.keep_last <= 0:
            return
        files = self.list()
        for old in files[: max(0, len(files) - self.keep_last)]:
            if old != keep:
                old.unlink(missing_ok=True)

    def list(self) -> List[Path]:
        """Periodic checkpoint files, oldest first."""
        if not self.output_dir.is_dir():
            return []
        return sorted(p for p in self.output_dir.iterdir() if _PATTERN.match(p.name))

    def latest(self) -> Optional[Path]:
        """The file ``last_checkpoint`` names, else the newest ``model_*.pth``, else None."""
        pointer = self.output_dir / LAST_CHECKPOINT
        if pointer.is_file():
            name = pointer.read_text().strip()
            if (self.output_dir / name).is_file():
                return self.output_dir / name
            logger.warning(
                "%s names %s, which does not exist; using the newest file", pointer, name
            )
        files = self.list()
        return files[-1] if files else None

    def resume_file(self) -> Optional[Path]:
        """The checkpoint to resume from: :meth:`latest` if it reads whole, else the newest older
        one that does (with a warning naming both); None when the folder has none.

        Raises:
            CheckpointError: checkpoints exist but none reads whole.
        """
        latest = self.latest()
        if latest is None:
            return None
        chosen, skipped = newest_readable(latest, self.output_dir)
        if chosen is None:
            raise CheckpointError(describe_fallback(None, skipped, self.output_dir))
        if skipped:
            logger.warning(describe_fallback(chosen, skipped, self.output_dir))
        return chosen

    @staticmethod
    def load(path: PathLike) -> Dict[str, Any]:
        """Read a training checkpoint with ``weights_only=True``.

        Raises:
            CheckpointError: unreadable, or not a training checkpoint (no ``model``/``step``).
        """
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # corrupt zip, unsafe pickle, truncated file ...
            raise CheckpointError(f"cannot resume from {path}: {type(e).__name__}: {e}") from e
        if not isinstance(state, dict) or "model" not in state or "step" not in state:
            raise CheckpointError(
                f"{path} is not a bitdet training checkpoint (needs 'model' and 'step')"
            )
        return state
