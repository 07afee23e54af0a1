"""Training hooks for Detectron2 runs on shared clusters: checkpoint-and-exit on SIGTERM, and
the model state a checkpoint must carry beyond parameters (RetinaNet's loss normalizer).

Schedulers (SLURM, Kubernetes, spot instances) send SIGTERM some seconds before they kill a
job. :class:`PreemptionCheckpointer` turns that signal into "finish the current iteration,
write a checkpoint atomically, exit with status 0", so ``--resume`` continues from the
iteration that was running instead of the last periodic checkpoint.
"""
from __future__ import annotations

import logging
import signal
import threading
from typing import Any, Optional

import torch
import torch.distributed as dist
from detectron2.engine import HookBase
from detectron2.utils import comm

__all__ = ["LossNormalizerState", "PreemptionCheckpointer", "TrainingPreempted"]

logger = logging.getLogger(__name__)


class TrainingPreempted(SystemExit):
    """Raised on every rank after the preemption checkpoint is written.

    A :class:`SystemExit` (status 0), so Detectron2's training loop does not log it as a
    failure, its ``after_train`` hooks still run, and the process ends cleanly.
    """

    def __init__(self, iteration: int, path: Optional[str]) -> None:
        super().__init__(0)
        self.iteration = iteration
        self.path = path


class PreemptionCheckpointer(HookBase):
    """On SIGTERM, checkpoint after the current iteration and stop all ranks.

    The signal handler only sets a flag (a handler must not do I/O in the middle of an
    arbitrary bytecode). After each step, ranks agree through one all-reduce of that flag,
    so every rank stops at the same iteration even when the signal reaches them at
    different times; the checkpoint goes through the trainer's checkpointer, which writes
    only on the main process and atomically. DataLoader workers forked after
    ``before_train`` inherit the handler, so a SIGTERM sent to the whole process group does
    not kill them mid-batch.

    Args:
        checkpointer: the trainer's checkpointer (``save(name, iteration=...)``).
        signals: signals that request a checkpoint and exit.
    """

    def __init__(self, checkpointer: Any, signals: tuple = (signal.SIGTERM,)) -> None:
        self._checkpointer = checkpointer
        self._signals = tuple(signals)
        self._requested = threading.Event()
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        """Whether this process has received one of the signals."""
        return self._requested.is_set()

    def request(self) -> None:
        """Ask for a checkpoint-and-exit after the current step (what the signal does)."""
        self._requested.set()

    def _on_signal(self, signum: int, frame: Any) -> None:
        # No logging here: the handler may interrupt a thread that holds the logging lock.
        self._requested.set()

    def before_train(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            logger.warning("training runs outside the main thread: SIGTERM will not trigger a checkpoint")
            return
        for sig in self._signals:
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def after_train(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _agreed(self) -> bool:
        """The flag OR-reduced over ranks (cost: one scalar all-reduce per iteration)."""
        flag = self._requested.is_set()
        if comm.get_world_size() == 1:
            return flag
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        t = torch.tensor([int(flag)], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def after_step(self) -> None:
        if not self._agreed():
            return
        iteration = self.trainer.iter
        name = f"model_{iteration:07d}"
        # Same naming and "iteration" as Detectron2's PeriodicCheckpointer: --resume starts
        # at iteration + 1.
        self._checkpointer.save(name, iteration=iteration)
        comm.synchronize()  # no rank leaves (tearing down the process group) mid-write
        path = f"{self._checkpointer.save_dir}/{name}.pth" if comm.is_main_process() else None
        logger.warning(
            "SIGTERM received: saved %s after iteration %d; exiting with status 0 (continue with --resume)",
            path or name, iteration,
        )
        raise TrainingPreempted(iteration, path)


class LossNormalizerState(HookBase):
    """Checkpoints RetinaNet's ``loss_normalizer`` of every rank and restores it on resume.

    Detectron2's dense detectors divide their losses by a moving average of the foreground
    anchor count (``loss_normalizer``, one per rank). It is a plain attribute, not a
    buffer, so Detectron2's checkpoint omits it and a resumed run restarts it at 100: the
    losses, hence the weights, drift from an uninterrupted run. With several processes or
    micro-batches, bitdet's step updates it once per step from the whole step's count
    (:mod:`bitdet.detection.accumulation`), so every rank holds the same value. Only the main process writes
    checkpoints, so with several processes every rank's value is gathered after each step
    (one small all-gather). Register this hook before the checkpointers.
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
        self._values = comm.all_gather(float(value)) if comm.get_world_size() > 1 else [float(value)]

    def state_dict(self) -> dict:
        return {"per_rank": list(self._values)} if self._values else {}

    def load_state_dict(self, state: dict) -> None:
        values = state.get("per_rank")
        if not values:
            return
        rank, world = comm.get_rank(), comm.get_world_size()
        if len(values) != world:
            logger.warning("checkpoint has the loss normalizer of %d processes, this run has %d: every rank "
                           "continues from their mean", len(values), world)
            value = sum(values) / len(values)
        else:
            value = values[rank]
        setattr(self._detector(), self.NAME, value)
        self._values = None
