"""Training checkpoints: ``model_{iteration:07d}.pth`` + ``last_checkpoint``, atomic, keep the last N.

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
import random
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from bitdet.checkpoint.errors import CheckpointError
from bitdet.checkpoint.loading import ws_eps_of
from bitdet.utils.io import PathLike, atomic_write, remove_stale_temporaries

__all__ = ["TrainingCheckpointer", "capture_rng_state", "clear_run", "restore_rng_state"]

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
    random.setstate((state["python_version"], tuple(int(v) for v in state["python"].tolist()), None))
    has_gauss, gauss = state["numpy_gauss"]
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], int(has_gauss), gauss))
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
    doomed = [p for p in folder.iterdir() if _PATTERN.match(p.name)]
    doomed += [folder / name for name in (LAST_CHECKPOINT, *results) if (folder / name).is_file()]
    for path in doomed:
        path.unlink(missing_ok=True)
    if doomed:
        logger.info("starting over in %s: deleted %s", folder, ", ".join(sorted(p.name for p in doomed)))
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
        """The file of the state after ``step`` (>= 1) completed steps: ``model_{step - 1:07d}.pth``."""
        if step < 1:
            raise ValueError(f"a checkpoint holds at least one completed step, got step {step}")
        return self.output_dir / f"model_{step - 1:07d}.pth"

    def save(self, step: int, model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer] = None,
             meta: Optional[Dict[str, Any]] = None) -> Path:
        """Write the checkpoint of ``step`` atomically, point ``last_checkpoint`` at it, prune.

        Args:
            step: completed optimizer steps.
            model: the bare model (not DDP-wrapped).
            optimizer: its optimizer, or None for a weights-only file.
            meta: plain values (config, names) to store alongside.

        Returns:
            The path written.
        """
        state = {
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "step": int(step),
            "rng": capture_rng_state(),
            "meta": dict(meta or {}),
        }
        eps = ws_eps_of(model)
        if eps is not None:  # loading restores it (weights from timm compute with 1e-8)
            state["meta"].setdefault("ws_eps", eps)
        if optimizer is not None:
            state["optimizer"] = optimizer.state_dict()
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
            logger.warning("%s names %s, which does not exist; using the newest file", pointer, name)
        files = self.list()
        return files[-1] if files else None

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
            raise CheckpointError(f"{path} is not a bitdet training checkpoint (needs 'model' and 'step')")
        return state
