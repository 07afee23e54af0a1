"""A tiny, fast training setup shared by the engine tests (also run as a subprocess).

``python -m tests.engine.tiny_run OUT STEPS [--kill-after K] [--workers N] [--precision P]`` trains
R14-tiny on 24x24 Fashion-MNIST crops; ``--kill-after K`` SIGKILLs the process right after the
checkpoint of step K is on disk (an abrupt preemption).
"""

from __future__ import annotations

import argparse
import os
import signal
from typing import Any, Dict

import torch
from detectron2.engine import HookBase
from torchvision.transforms import v2 as T

from bitdet import create_model
from bitdet.data import FashionMNIST
from bitdet.engine import ClassifierTrainer

# A random crop and flip make the test depend on per-sample augmentation seeds.
TRANSFORM = T.Compose(
    [
        T.PILToTensor(),
        T.RandomCrop(24),
        T.RandomHorizontalFlip(),
        T.ToDtype(torch.float32),
        T.Lambda(lambda x: x / 127.5 - 1),
    ]
)


def tiny_sets(per_class: int = 8):
    """A small, real training set (Fashion-MNIST, ``per_class`` images per class) and a test set."""
    train = FashionMNIST(split="train", transform=TRANSFORM).subset_per_class(per_class)
    test = FashionMNIST(
        split="test",
        transform=T.Compose(
            [
                T.PILToTensor(),
                T.CenterCrop(24),
                T.ToDtype(torch.float32),
                T.Lambda(lambda x: x / 127.5 - 1),
            ]
        ),
    ).subset_per_class(4)
    return train, test


def tiny_trainer(out: str, steps: int, period: int = 2, **kwargs: Any) -> ClassifierTrainer:
    torch.manual_seed(0)
    model = create_model("R14-tiny", num_classes=10)
    train, _ = tiny_sets()
    options: Dict[str, Any] = dict(
        output_dir=out,
        max_steps=steps,
        global_batch=8,
        lr_at=lambda s: 0.05,
        weight_decay=1e-4,
        checkpoint_period=period,
        keep_last=2,
        log_period=1,
        seed=3,
        num_workers=0,
    )
    options.update(kwargs)
    return ClassifierTrainer(model, train, **options)


class KillAfter(HookBase):
    """SIGKILL this process once the checkpoint after ``step`` steps is written."""

    def __init__(self, step: int) -> None:
        self.step = step

    def after_step(self) -> None:
        if self.trainer.iter + 1 == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("steps", type=int)
    parser.add_argument("--kill-after", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()
    torch.set_num_threads(1)
    trainer = tiny_trainer(args.out, args.steps, num_workers=args.workers, precision=args.precision)
    if args.kill_after:
        trainer.register_hooks([KillAfter(args.kill_after)])
    trainer.train(resume=True)


class FailOnRank(HookBase):
    """Raise on ``rank`` before ``step``: a crashing worker in a DDP job."""

    def __init__(self, rank: int, step: int) -> None:
        self.rank, self.step = rank, step

    def before_step(self) -> None:
        if self.trainer.rank == self.rank and self.trainer.iter == self.step:
            raise ValueError(f"rank {self.rank} exploded at step {self.step}")


def ddp_worker(out: str, steps: int, fail_rank: int = -1) -> None:
    """Entry point for ``detectron2.engine.launch``: train, then save this rank's parameters."""
    torch.set_num_threads(1)
    trainer = tiny_trainer(
        out, steps, period=100, global_batch=16, lr_at=lambda s: 0.01, log_period=1
    )
    if fail_rank >= 0:
        trainer.register_hooks([FailOnRank(fail_rank, 2)])
    trainer.train(resume=False)
    torch.save(trainer.model.state_dict(), os.path.join(out, f"rank{trainer.rank}.pt"))
