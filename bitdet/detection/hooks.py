"""Training hooks for Detectron2 runs on shared clusters: checkpoint-and-exit on SIGTERM or
Ctrl-C, a stop at the first non-finite loss, and the model state a checkpoint must carry beyond
parameters (RetinaNet's loss normalizer).

Schedulers (SLURM, Kubernetes, spot instances) send SIGTERM some seconds before they kill a
job; a user presses Ctrl-C. :class:`PreemptionCheckpointer` turns either into "finish the
current iteration, write a checkpoint atomically, exit" (status 0 after SIGTERM, 130 after
Ctrl-C: :class:`bitdet.engine.stop_signals.CheckpointOnStop`, the classifier's hook too), so the
next run continues from the iteration that was running instead of the last periodic checkpoint.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist
from detectron2.engine import HookBase
from detectron2.utils import comm

from bitdet.engine.stop_signals import STOP_SIGNALS, CheckpointOnStop
from bitdet.errors import NonFiniteError

__all__ = [
    "LossNormalizerState",
    "NonFiniteLossStop",
    "PreemptionCheckpointer",
]

logger = logging.getLogger(__name__)


class PreemptionCheckpointer(CheckpointOnStop):
    """On SIGTERM or Ctrl-C, checkpoint after the current iteration and stop all ranks.

    :class:`CheckpointOnStop` with the checkpoint written through the trainer's checkpointer
    (main process only, atomically), under the name and ``iteration`` of Detectron2's
    ``PeriodicCheckpointer``: ``--resume`` starts at the next iteration.

    Args:
        checkpointer: the trainer's checkpointer (``save(name, iteration=...)``).
        signals: signals that request a checkpoint and exit (default SIGINT and SIGTERM).
    """

    def __init__(self, checkpointer: Any, signals: Sequence[int] = STOP_SIGNALS) -> None:
        self._checkpointer = checkpointer
        super().__init__(self._save_iteration, lambda done: f"iteration {done - 1}", signals)

    def _save_iteration(self, done: int) -> str:
        name = f"model_{done - 1:07d}"
        self._checkpointer.save(name, iteration=done - 1)
        return f"{self._checkpointer.save_dir}/{name}.pth"


class NonFiniteLossStop(HookBase):
    """Stops training at the first iteration whose loss is NaN or inf, before the weights change.

    A forward hook on the detector reads each training forward's loss dict, before the
    backward pass and the optimizer step; all ranks agree through one scalar all-reduce, so
    every rank raises at the same iteration. Detectron2's own check runs later and on the main
    process only (the other ranks would step on and wait). The error is one line naming the
    iteration, this process's losses and the last checkpoint, which is left as it is.

    Args:
        checkpointer: the trainer's checkpointer (its ``last_checkpoint`` is named in the error).
    """

    def __init__(self, checkpointer: Any) -> None:
        self._checkpointer = checkpointer
        self._handle: Optional[Any] = None

    def before_train(self) -> None:
        model = self.trainer.model
        self._handle = getattr(model, "module", model).register_forward_hook(self._check)

    def after_train(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _check(self, module: torch.nn.Module, inputs: Any, output: Any) -> None:
        if not module.training or not isinstance(output, dict):
            return
        losses = {k: float(v.detach()) for k, v in output.items()}
        total = sum(losses.values())
        finite = math.isfinite(total)
        if comm.get_world_size() > 1:
            flag = torch.tensor(
                [int(finite)], device="cuda" if dist.get_backend() == "nccl" else "cpu"
            )
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            everywhere = bool(flag.item())
        else:
            everywhere = finite
        if everywhere:
            return
        shown = ", ".join(f"{k} {v:.4g}" for k, v in losses.items())
        iteration = self.trainer.iter
        what = (
            f"loss is {total} at iteration {iteration} ({shown})"
            if not finite
            else f"loss is not finite on another process at iteration {iteration} "
            f"(this process: {shown})"
        )
        last = (
            self._checkpointer.get_checkpoint_file() if self._checkpointer.has_checkpoint() else ""
        )
        raise NonFiniteError(
            f"{what}: the weights were not updated; last good checkpoint: "
            f"{last or 'none yet'}. Lower SOLVER.BASE_LR or check the training data"
        )


class LossNormalizerState(HookBase):
    """Checkpoints RetinaNet's ``loss_normalizer`` of every rank and restores it on resume.

    Detectron2's dense detectors divide their losses by a moving average of the foreground
    anchor count (``loss_normalizer``, one per rank). It is a plain attribute, not a
    buffer, so Detectron2's checkpoint omits it and a resumed run restarts it at 100: the
    losses, hence the weights, drift from an uninterrupted run. With several processes or
    micro-batches, bitdet's step updates it once per step from the whole step's count
    (:mod:`bitdet.detection.accumulation`), so every rank holds the same value. Only the main
    process writes checkpoints, so with several processes every rank's value is gathered after
    each step (one small all-gather). Register this hook before the checkpointers.
    """

    NAME = "loss_normalizer"

    def __init__(self) -> None:
        self._values: Optional[list] = None

    def _detector(self) -> Any:
        model = self.trainer.model
        return getattr(model, "module", model)  # DDP wraps the detector

    def after_step(self) -> None:
        value = getattr(self._detector(), self.NAME, None)
        if value is None:
            return
        self._values = (
            comm.all_gather(float(value)) if comm.get_world_size() > 1 else [float(value)]
        )

    def state_dict(self) -> dict:
        return {"per_rank": list(self._values)} if self._values else {}

    def load_state_dict(self, state: dict) -> None:
        values = state.get("per_rank")
        if not values:
            return
        rank, world = comm.get_rank(), comm.get_world_size()
        if len(values) != world:
            logger.warning(
                "checkpoint has the loss normalizer of %d processes, this run has %d: every rank "
                "continues from their mean",
                len(values),
                world,
            )
            value = sum(values) / len(values)
        else:
            value = values[rank]
        setattr(self._detector(), self.NAME, value)
        self._values = None
