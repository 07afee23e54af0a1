"""SIGTERM and Ctrl-C (SIGINT) during training: finish the step, checkpoint it, exit.

Schedulers (SLURM, Kubernetes, spot instances) send SIGTERM some seconds before they kill a
job; a user stops a run with Ctrl-C. Both trainers (:class:`bitdet.engine.ClassifierTrainer`
and the detection trainers) register the same hook, :class:`CheckpointOnStop`: the handler
only records the signal (a handler must not do I/O in the middle of arbitrary bytecode), the
ranks agree after each step so that every rank stops at the same one, the checkpoint of that
step is written (atomically, by the main process), the ranks wait for it and every rank raises
:class:`TrainingStopped`: exit status 0 after SIGTERM (a requeued job resumes), 130 after
SIGINT (the shell's status for Ctrl-C), with one line naming the checkpoint. Re-running the
command continues from it. DataLoader workers ignore both signals (:func:`ignore_stop_signals`
as their ``worker_init_fn``; a worker forked with the handler installed ignores them too), so
a signal sent to the whole process group does not kill them mid-batch.

A second Ctrl-C before the checkpoint is written aborts at once (``KeyboardInterrupt``): the
step is lost, the previous checkpoint stays intact.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from detectron2.engine import HookBase
from detectron2.utils import comm

__all__ = [
    "STOP_SIGNALS",
    "CheckpointOnStop",
    "StopSignals",
    "TrainingStopped",
    "exit_status",
    "ignore_stop_signals",
]

logger = logging.getLogger(__name__)

# Highest priority first: when ranks received different signals, Ctrl-C decides the status.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_NOTICE = b"Ctrl-C: finishing this step to save a checkpoint (Ctrl-C again aborts without saving)\n"


def exit_status(signum: int) -> int:
    """0 after SIGTERM (preemption is not a failure), else 128 + the signal number (130 for
    SIGINT)."""
    return 0 if signum == signal.SIGTERM else 128 + int(signum)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A DataLoader ``worker_init_fn``: the worker ignores SIGTERM and SIGINT.

    Schedulers signal every process of a job, Ctrl-C the terminal's whole process group, and a
    worker dying first would crash the main process before it can save its checkpoint. Workers
    still exit when the main process does (DataLoader's parent watchdog).
    """
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class TrainingStopped(SystemExit):
    """Raised on every rank once the checkpoint of the stopped step is written.

    A :class:`SystemExit`, so Detectron2's training loop does not log it as a failure, its
    ``after_train`` hooks still run, and the process ends with :func:`exit_status` quietly.

    Attributes:
        signum: the signal that stopped the run.
        done: completed steps (iterations) held by the checkpoint.
        path: the checkpoint (on the main process; None elsewhere).
    """

    def __init__(self, signum: int, done: int, path: Optional[str]) -> None:
        super().__init__(exit_status(signum))
        self.signum, self.done, self.path = int(signum), int(done), path

    @property
    def iteration(self) -> int:
        """The 0-based index of the last completed iteration (Detectron2's naming)."""
        return self.done - 1


class StopSignals:
    """Records SIGTERM / SIGINT while installed; see the module docstring.

    Args:
        signals: the signals that stop training (default :data:`STOP_SIGNALS`).
    """

    def __init__(self, signals: Sequence[int] = STOP_SIGNALS) -> None:
        unsupported = [signal.Signals(s).name for s in signals if s not in STOP_SIGNALS]
        if unsupported:
            raise ValueError(f"signals {unsupported}: only SIGINT and SIGTERM stop training")
        self.signals = tuple(s for s in STOP_SIGNALS if s in tuple(signals))
        self._received = {s: threading.Event() for s in self.signals}
        self._previous: Dict[int, Any] = {}
        self._notify = False
        self._pid = os.getpid()

    def install(self) -> bool:
        """Route the signals to this object (main thread only); returns whether it could."""
        for event in self._received.values():
            event.clear()
        if threading.current_thread() is not threading.main_thread():
            logger.warning(
                "training runs outside the main thread: SIGTERM and Ctrl-C will not save a "
                "checkpoint"
            )
            return False
        self._notify = comm.is_main_process()
        self._pid = os.getpid()
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return True

    def restore(self) -> None:
        """Put the previous handlers back."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def request(self, signum: int = signal.SIGTERM) -> None:
        """Ask for a checkpoint-and-exit after the current step (what the signal does)."""
        self._received[signum].set()

    def _on_signal(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:
            return  # a forked DataLoader worker that inherited the handler: ignore
        if signum == signal.SIGINT and self._received[signum].is_set():
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt  # the second Ctrl-C: abort without saving
        self._received[signum].set()
        if signum == signal.SIGINT and self._notify:
            os.write(2, _NOTICE)  # no logging: the handler may interrupt a thread holding its lock

    @property
    def requested(self) -> bool:
        """Whether this process has received one of the signals."""
        return any(event.is_set() for event in self._received.values())

    def pending(self) -> List[float]:
        """One entry per signal (1.0: received here), to sum over ranks with other statistics."""
        return [float(self._received[s].is_set()) for s in self.signals]

    def decide(self, counts: Sequence[float]) -> Optional[int]:
        """The signal that stops every rank, from :meth:`pending` summed over ranks; None: train
        on."""
        return next((s for s, n in zip(self.signals, counts) if n > 0), None)

    def agreed(self) -> Optional[int]:
        """:meth:`decide` over all ranks (one small all-reduce when distributed)."""
        counts = self.pending()
        if comm.get_world_size() > 1:
            import torch.distributed as dist

            t = torch.tensor(counts, device="cuda" if dist.get_backend() == "nccl" else "cpu")
            dist.all_reduce(t)
            counts = t.tolist()
        return self.decide(counts)

    def stop(self, signum: int, done: int, path: Optional[str], after: str) -> None:
        """Log where the run stopped (main process) and raise :class:`TrainingStopped`.

        Args:
            signum: the agreed signal.
            done: completed steps (iterations) held by the checkpoint ``path``.
            path: the checkpoint written (main process), None elsewhere.
            after: where the run stopped in the trainer's words, e.g. "step 6", "iteration 5".
        """
        if path is not None:
            if signum == signal.SIGTERM:
                how, status = "SIGTERM received", "exiting cleanly (status 0)"
            else:
                how, status = "interrupted (Ctrl-C)", f"exiting with status {exit_status(signum)}"
            logger.warning(
                "%s: saved %s after %s; %s; re-running the command continues from it",
                how,
                path,
                after,
                status,
            )
        raise TrainingStopped(signum, done, path)


class CheckpointOnStop(HookBase):
    """Both trainers' stop path: register it after the hooks whose work a stop step keeps
    (evaluation, log writes), and it turns SIGTERM or Ctrl-C into "finish the step, save it, exit".

    Installs :class:`StopSignals` in ``before_train`` and restores the previous handlers in
    ``after_train``. After each step the ranks agree on the signal (:meth:`StopSignals.agreed`,
    or the counts a trainer summed in its own all-reduce, :meth:`summed`); on a stop, ``save``
    writes the step's checkpoint, every rank waits for it (none tears down the process group
    mid-write) and :meth:`StopSignals.stop` raises :class:`TrainingStopped`.

    Args:
        save: ``save(done) -> path``: write the checkpoint holding ``done`` completed steps;
            the path written on the main process (other processes' return value is ignored).
        where: ``where(done) -> str``: the stop in the trainer's words, e.g. "step 6".
        signals: the signals that stop training (default :data:`STOP_SIGNALS`).
    """

    def __init__(
        self,
        save: Callable[[int], Any],
        where: Callable[[int], str],
        signals: Sequence[int] = STOP_SIGNALS,
    ) -> None:
        self.signals = StopSignals(signals)
        self._save, self._where = save, where
        self._summed: Optional[List[float]] = None

    @property
    def requested(self) -> bool:
        """Whether this process has received one of the signals."""
        return self.signals.requested

    def request(self, signum: int = signal.SIGTERM) -> None:
        """Ask for a checkpoint-and-exit after the current step (what the signal does)."""
        self.signals.request(signum)

    def summed(self, counts: Sequence[float]) -> None:
        """This step's :meth:`StopSignals.pending`, summed over ranks by the trainer's own
        all-reduce (the hook then adds none of its own after the step)."""
        self._summed = list(counts)

    def before_train(self) -> None:
        self._summed = None
        self.signals.install()

    def after_train(self) -> None:
        self.signals.restore()

    def after_step(self) -> None:
        counts, self._summed = self._summed, None
        signum = self.signals.agreed() if counts is None else self.signals.decide(counts)
        if signum is None:
            return
        done = self.trainer.iter + 1
        path = self._save(done)
        comm.synchronize()  # no rank leaves (tearing down the process group) mid-write
        main = comm.is_main_process()
        self.signals.stop(signum, done, str(path) if main and path else None, self._where(done))
