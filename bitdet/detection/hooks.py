"""Training hooks for Detectron2 runs on shared clusters: checkpoint-and-exit on SIGTERM, a stop
at the first non-finite loss, and the model state a checkpoint must carry beyond parameters
(RetinaNet's loss normalizer).

Schedulers (SLURM, Kubernetes, spot instances) send SIGTERM some seconds before they kill a
job. :class:`PreemptionCheckpointer` turns that signal into "finish the current iteration,
write a checkpoint atomically, exit with status 0", so ``--resume`` continues from the
iteration that was running instead of the last periodic checkpoint.
"""
from __future__ import annotations

import logging
import math
import signal
import threading
from typing import Any, Optional

import torch
import torch.distributed as dist
from detectron2.engine import HookBase
from detectron2.utils import comm

__all__ = ["LossNormalizerState", "NonFiniteLossStop", "PreemptionCheckpointer", "TrainingPreempted"]

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
        losses = {k: float(v) for k, v in output.items()}
        total = sum(losses.values())
        finite = math.isfinite(total)
        if comm.get_world_size() > 1:
            flag = torch.tensor([int(finite)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            everywhere = bool(flag.item())
        else:
            everywhere = finite
        if everywhere:
            return
        shown = ", ".join(f"{k} {v:.4g}" for k, v in losses.items())
        iteration = self.trainer.iter
        what = (f"loss is {total} at iteration {iteration} ({shown})" if not finite else
                f"loss is not finite on another process at iteration {iteration} (this process: {shown})")
        last = self._checkpointer.get_checkpoint_file() if self._checkpointer.has_checkpoint() else ""
        raise FloatingPointError(f"{what}: the weights were not updated; last good checkpoint: "
                                 f"{last or 'none yet'}. Lower SOLVER.BASE_LR or check the training data")


class LossNormalizerState(HookBase):
    """Checkpoints RetinaNet's ``loss_normalizer`` of every rank and restores it on resume.

    Detectron2's dense detectors divide their losses by a moving average of the foreground
    anchor count (``loss_normalizer``, one per rank). It is a plain attribute, not a
    buffer, so Detectron2's checkpoint omits it and a resumed run restarts it at 100: the
    losses, hence the weights, drift from an uninterrupted run. Only the main process writes
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
