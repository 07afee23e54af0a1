"""Upstream schedule math: epochs to steps, linear warm-up, step decays. Pure functions."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Sequence, Tuple

from bitdet.errors import ConfigError

__all__ = ["StepSchedule", "epochs_to_steps", "scaled_lr"]


def epochs_to_steps(epochs: float, dataset_size: int, global_batch: int) -> int:
    """Optimizer steps that cover ``epochs`` passes over ``dataset_size`` samples (rounded up).

    Example: 90 epochs of ILSVRC-2012 (1,281,167 images) at batch 4096 -> 28,151 steps.
    """
    if dataset_size <= 0 or global_batch <= 0:
        raise ConfigError(
            f"dataset size ({dataset_size}) and batch ({global_batch}) must be positive"
        )
    return math.ceil(epochs * dataset_size / global_batch)


def scaled_lr(lr_per_256: float, global_batch: int) -> float:
    """BiT's linear scaling rule: ``lr_per_256 * global_batch / 256`` (0.03 at 4096 -> 0.48)."""
    return lr_per_256 * global_batch / 256


@dataclass(frozen=True)
class StepSchedule:
    """Linear warm-up, then piecewise-constant decays.

    ``lr(step)`` for the 0-based optimizer step ``step``: ``base_lr * (step + 1) / warmup``
    during warm-up (the first step is not wasted at lr 0), then ``base_lr * factor**k`` where
    ``k`` counts the boundaries ``<= step`` (a decay applies from its boundary step on).

    Attributes:
        base_lr: peak learning rate.
        warmup_steps: length of the linear warm-up.
        boundaries: increasing step indices of the decays.
        factor: multiplier applied at each boundary.
        total_steps: training length (for reporting; ``lr`` is defined past it too).
    """

    base_lr: float
    warmup_steps: int
    boundaries: Tuple[int, ...]
    factor: float = 0.1
    total_steps: int = 0

    def __post_init__(self) -> None:
        if list(self.boundaries) != sorted(self.boundaries):
            raise ConfigError(f"decay boundaries must increase, got {self.boundaries}")

    def __call__(self, step: int) -> float:
        lr = self.base_lr * self.factor ** bisect.bisect_right(self.boundaries, step)
        if step < self.warmup_steps:
            lr = min(lr, self.base_lr * (step + 1) / self.warmup_steps)
        return lr

    @classmethod
    def from_epochs(
        cls,
        base_lr: float,
        warmup_steps: int,
        epochs: float,
        decay_epochs: Sequence[float],
        dataset_size: int,
        global_batch: int,
        factor: float = 0.1,
    ) -> "StepSchedule":
        """The schedule of an epoch-based recipe (e.g. 90 epochs, decays at 30/60/80)."""
        bad = [e for e in decay_epochs if not 0 < e < epochs]
        if bad:
            raise ConfigError(f"decay epochs {bad} are outside (0, {epochs})")
        total = epochs_to_steps(epochs, dataset_size, global_batch)
        bounds = tuple(epochs_to_steps(e, dataset_size, global_batch) for e in decay_epochs)
        return cls(base_lr, warmup_steps, bounds, factor, total)

    def describe(self) -> str:
        return (
            f"lr {self.base_lr:.4g}, {self.warmup_steps} warm-up steps, x{self.factor} at steps "
            f"{list(self.boundaries)}, {self.total_steps} steps"
        )
