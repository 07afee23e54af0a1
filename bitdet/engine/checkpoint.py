"""Training checkpoints: ``model_{iteration:07d}.pth`` + ``last_checkpoint``, atomic, keep the
last N (written and read by :mod:`bitdet.weights.checkpoint_file`).

A file holds ``{"model": state_dict, "optimizer": ..., "step": int, "rng": {...}, "meta": {...}}``
made only of tensors and plain Python values, so it loads with ``torch.load(weights_only=True)``.
``"model"`` uses bitdet's own parameter names (no ``module.`` prefix): the file is also a valid
weights file for :func:`bitdet.weights.load_weights`, ``create_model(pretrained=...)`` and
Detectron2's ``BiTCheckpointer``. ``step`` counts completed optimizer steps; the file is named as
Detectron2 names its own: after the 0-based index of the last iteration it holds
(``model_0000099.pth`` after 100 steps), so both trainers' folders read the same way.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from bitdet.utils.io import PathLike, remove_stale_temporaries
from bitdet.weights.checkpoint_file import (
    LAST_CHECKPOINT,
    last_checkpoint,
    periodic_checkpoints,
    point_last_checkpoint,
    resume_file,
    torch_load_safely,
    write_checkpoint,
    ws_eps_of,
)
from bitdet.weights.errors import CheckpointError

__all__ = [
    "TrainingCheckpointer",
    "capture_rng_state",
    "clear_run",
    "restore_rng_state",
]

logger = logging.getLogger(__name__)


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


def clear_run(output_dir: PathLike, results: Sequence[str] = ()) -> List[Path]:
    """Delete a run's checkpoints, ``last_checkpoint`` and its ``results`` files (``--force``).

    Logs, metrics and anything else in the folder stay. Returns the deleted paths.
    """
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    doomed = periodic_checkpoints(folder)
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
            NonFiniteError: the weights hold NaN or inf (nothing is written).
        """
        weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        extra: Dict[str, Any] = {"step": int(step), "rng": capture_rng_state()}
        if optimizer is not None:
            extra["optimizer"] = optimizer.state_dict()
        if data is not None:
            extra["data"] = dict(data)
        path = write_checkpoint(
            self.path_for(step),
            weights,
            ws_eps=ws_eps_of(model),
            meta=dict(meta or {}),
            extra=extra,
            what=f"checkpoint after step {step}",
        )
        point_last_checkpoint(self.output_dir, path.name)
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
        return periodic_checkpoints(self.output_dir)

    def latest(self) -> Optional[Path]:
        """The file ``last_checkpoint`` names, else the newest ``model_*.pth``, else None."""
        named = last_checkpoint(self.output_dir)
        if named is not None:
            if named.is_file():
                return named
            logger.warning(
                "%s names %s, which does not exist; using the newest file",
                self.output_dir / LAST_CHECKPOINT,
                named.name,
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
        return None if latest is None else resume_file(latest, self.output_dir)

    @staticmethod
    def load(path: PathLike) -> Dict[str, Any]:
        """Read a training checkpoint with ``weights_only=True``.

        Raises:
            CheckpointError: unreadable, or not a training checkpoint (no ``model``/``step``).
        """
        try:
            state = torch_load_safely(path)
        except Exception as e:  # corrupt zip, unsafe pickle, truncated file ...
            raise CheckpointError(f"cannot resume from {path}: {e}") from e
        if not isinstance(state, dict) or "model" not in state or "step" not in state:
            raise CheckpointError(
                f"{path} is not a bitdet training checkpoint (needs 'model' and 'step')"
            )
        return state
