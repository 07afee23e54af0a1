"""A bitdet tool that SIGKILLs its own process group at a chosen point (tests only).

``python kill_point.py TOOL ARGS...`` runs ``bitdet.tools.TOOL`` (``train_net``, ``pretrain``
or ``finetune``) with ``ARGS``. ``BITDET_KILL_AT`` picks the point:

- ``step:N``: after iteration (step index) ``N`` and its checkpoint, if any;
- ``write:NAME`` (train_net): while writing checkpoint ``NAME`` (e.g. ``model_0000003.pth``):
  half of the temporary file is on disk, nothing renamed yet;
- ``end`` (train_net): after training, once the final checkpoint is written;
- ``term:N`` (train_net): not a kill: SIGTERM to this process after iteration ``N`` (preemption);
- ``nan:N``: not a kill: a NaN written into the first backbone weight before iteration ``N``
  (a diverged run: the loss of iteration ``N`` is NaN).

The whole process group dies (every rank and the launcher), as when a machine is lost.
The patches are applied at import, so the processes that ``--num-gpus`` spawns (which
import this file as their main module) carry them too. Start it in a new session.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys

import torch
from detectron2.engine import HookBase

import bitdet.weights.checkpoint_file as checkpoint_file_module
from bitdet.detection.trainer import BiTTrainer
from bitdet.engine.trainer import ClassifierTrainer

KIND, _, ARG = os.environ["BITDET_KILL_AT"].partition(":")
if KIND not in ("step", "write", "end", "term", "nan"):
    raise SystemExit(
        f"BITDET_KILL_AT={os.environ['BITDET_KILL_AT']!r}: expected step:N, write:NAME, end, "
        "term:N or nan:N"
    )


def _kill() -> None:
    os.killpg(os.getpgid(0), signal.SIGKILL)


def _poison(model: torch.nn.Module) -> None:
    """NaN in the first weight of the backbone (every rank: the replicas stay equal)."""
    model = getattr(model, "module", model)
    backbone = getattr(model, "backbone", model)
    with torch.no_grad():
        next(backbone.parameters()).view(-1)[0] = float("nan")


class _KillHook(HookBase):
    def before_step(self) -> None:
        if KIND == "nan" and self.trainer.iter == int(ARG):
            _poison(self.trainer.model)

    def after_step(self) -> None:
        if KIND == "step" and self.trainer.iter == int(ARG):
            _kill()
        if KIND == "term" and self.trainer.iter == int(ARG):
            os.kill(os.getpid(), signal.SIGTERM)

    def after_train(self) -> None:
        if KIND == "end":
            _kill()


_build_hooks = BiTTrainer.build_hooks
BiTTrainer.build_hooks = lambda self: [*_build_hooks(self), _KillHook()]

_atomic_write = checkpoint_file_module.atomic_write


@contextlib.contextmanager
def _dying_atomic_write(path, *args, **kwargs):
    with _atomic_write(path, *args, **kwargs) as f:
        yield f
        if KIND == "write" and os.path.basename(path) == ARG:
            f.flush()
            f.truncate(f.tell() // 2)
            os.fsync(f.fileno())
            _kill()


checkpoint_file_module.atomic_write = _dying_atomic_write

_classifier_after_step = ClassifierTrainer.after_step


def _classifier_after_step_then_die(self) -> None:
    _classifier_after_step(self)  # the step's checkpoint hook runs first
    if KIND == "step" and self.iter == int(ARG):
        _kill()


ClassifierTrainer.after_step = _classifier_after_step_then_die

_classifier_before_step = ClassifierTrainer.before_step


def _classifier_poison_then_step(self) -> None:
    if KIND == "nan" and self.iter == int(ARG):
        _poison(self.model)
    _classifier_before_step(self)


ClassifierTrainer.before_step = _classifier_poison_then_step

if __name__ == "__main__":
    tool = sys.argv.pop(1)
    if tool not in ("train_net", "pretrain", "finetune"):
        raise SystemExit(f"kill_point.py: unknown tool {tool!r} (train_net, pretrain or finetune)")
    importlib.import_module(f"bitdet.tools.{tool}").cli()
