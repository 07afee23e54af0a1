"""The BiT-HyperRule: fine-tuning hyperparameters from the training-set size and image size.

Kolesnikov et al., "Big Transfer (BiT)", ECCV 2020, section 3.3. One rule for every
downstream task: SGD (momentum 0.9) at learning rate 0.003, batch 512, no weight decay,
a zero-initialised head, and

- resolution: images smaller than 96x96 in area are resized to 160 and randomly cropped
  to 128; larger ones to 448 / 384 (the paper) or 512 / 480 (the authors' public code);
- schedule: fewer than 20k examples -> 500 steps, fewer than 500k -> 10k, else 20k, with a
  linear warm-up and three ÷10 decays at the public code's step boundaries;
- MixUp with alpha 0.1 from 20k examples on, none below.

Pure Python with no framework import, so that any training loop (or a notebook) can use it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence, Tuple, Union

from bitdet.errors import ConfigError, DataError

__all__ = [
    "BASE_LR",
    "BATCH_SIZE",
    "RESOLUTIONS",
    "SCHEDULES",
    "Rule",
    "get_rule",
    "get_resolution",
    "get_schedule",
    "get_mixup_alpha",
]

BASE_LR: float = 0.003
BATCH_SIZE: int = 512
# Images with an area below this many pixels count as "small" (the paper's 96x96).
SMALL_IMAGE_AREA: int = 96 * 96
# Training-set size at and above which MixUp (alpha 0.1) is used.
MIXUP_MIN_SIZE: int = 20_000
MIXUP_ALPHA: float = 0.1

# (resize, crop) for small images and, per resolution preset, for larger ones.
SMALL_RESOLUTION: Tuple[int, int] = (160, 128)
RESOLUTIONS = {"paper": (448, 384), "public": (512, 480)}

# (dataset size upper bound (exclusive), (warm-up end, decay, decay, decay, end)). The public
# code's "supports": the learning rate is divided by 10 once the step is past each decay.
SCHEDULES: Tuple[Tuple[float, Tuple[int, int, int, int, int]], ...] = (
    (20_000, (100, 200, 300, 400, 500)),
    (500_000, (500, 3000, 6000, 9000, 10_000)),
    (float("inf"), (500, 6000, 12_000, 18_000, 20_000)),
)

ImageSize = Union[int, Sequence[int]]


@dataclass(frozen=True)
class Rule:
    """Fine-tuning hyperparameters. Every field is explicit; nothing means "unset".

    Attributes:
        resize: side of the square resize before the random crop (training).
        crop: side of the random crop (training) and of the evaluation resize.
        steps: total optimizer steps; valid steps are ``0 .. steps - 1``.
        warmup_steps: linear warm-up length (from 0 at step 0 to ``base_lr``).
        decay_steps: boundaries, ascending; the rate is divided by 10 once ``step`` is past each.
        mixup_alpha: MixUp's Beta(alpha, alpha) parameter; 0 disables MixUp.
        base_lr: peak learning rate (after warm-up, before decays).
        batch_size: global batch size (per optimizer step, across devices and accumulation).
    """

    resize: int
    crop: int
    steps: int
    warmup_steps: int
    decay_steps: Tuple[int, ...]
    mixup_alpha: float
    base_lr: float = BASE_LR
    batch_size: int = BATCH_SIZE

    def __post_init__(self) -> None:
        # Normalise lists (e.g. from a config) to a tuple so the rule stays hashable.
        object.__setattr__(self, "decay_steps", tuple(int(s) for s in self.decay_steps))
        problems = []
        if self.crop <= 0 or self.resize < self.crop:
            problems.append(f"need 0 < crop <= resize, got resize={self.resize}, crop={self.crop}")
        if self.steps <= 0:
            problems.append(f"steps must be positive, got {self.steps}")
        if not 0 <= self.warmup_steps <= self.steps:
            problems.append(
                f"warmup_steps must be in [0, steps={self.steps}], got {self.warmup_steps}"
            )
        if list(self.decay_steps) != sorted(self.decay_steps) or any(
            not 0 <= s < self.steps for s in self.decay_steps
        ):
            problems.append(
                f"decay_steps must be ascending in [0, steps={self.steps}), got {self.decay_steps}"
            )
        if self.mixup_alpha < 0:
            problems.append(f"mixup_alpha must be >= 0, got {self.mixup_alpha}")
        if self.base_lr <= 0 or self.batch_size <= 0:
            problems.append(
                f"base_lr and batch_size must be positive, got {self.base_lr}, {self.batch_size}"
            )
        if problems:
            raise ConfigError("invalid HyperRule: " + "; ".join(problems))

    def lr_at(self, step: int) -> float:
        """Learning rate for optimizer step ``step`` (0-based).

        Linear warm-up ``base_lr * step / warmup_steps`` (the first step has rate 0, as in
        the public code), then ``base_lr / 10**k`` where ``k`` counts the decay boundaries
        strictly below ``step``.

        Raises:
            ValueError: ``step`` is negative or ``>= steps``: training is over, and asking
                for a rate past the end is a bug in the caller's loop, not a value to guess.
        """
        if not 0 <= step < self.steps:
            raise ValueError(f"step {step} is outside the schedule [0, {self.steps})")
        if step < self.warmup_steps:
            return self.base_lr * step / self.warmup_steps
        return self.base_lr * 0.1 ** sum(step > boundary for boundary in self.decay_steps)

    def with_steps(self, steps: int) -> "Rule":
        """The same rule stretched to ``steps``: warm-up and decays keep their relative
        positions."""
        scale = steps / self.steps
        return dataclasses.replace(
            self,
            steps=steps,
            warmup_steps=min(steps, round(self.warmup_steps * scale)),
            decay_steps=tuple(min(steps - 1, round(s * scale)) for s in self.decay_steps),
        )

    def to_dict(self) -> dict:
        """Plain JSON-ready dict (``decay_steps`` as a list)."""
        out = dataclasses.asdict(self)
        out["decay_steps"] = list(self.decay_steps)
        return out

    def __str__(self) -> str:
        return (
            f"BiT-HyperRule: resize {self.resize} -> crop {self.crop}, {self.steps} steps "
            f"(warm-up {self.warmup_steps}, ÷10 after {list(self.decay_steps)}), "
            f"lr {self.base_lr:g}, batch {self.batch_size}, "
            + (f"MixUp alpha {self.mixup_alpha:g}" if self.mixup_alpha else "no MixUp")
        )


def _area(image_size: ImageSize) -> int:
    if isinstance(image_size, int):
        return image_size * image_size
    dims = tuple(image_size)
    if len(dims) != 2 or any(int(d) <= 0 for d in dims):
        raise ValueError(
            f"image_size must be a side or (height, width) of positive ints, got {image_size!r}"
        )
    return int(dims[0]) * int(dims[1])


def get_resolution(image_size: ImageSize, resolution: str = "paper") -> Tuple[int, int]:
    """(resize, crop) for images of ``image_size`` (a side, or ``(height, width)``).

    Args:
        image_size: typical original image size of the dataset.
        resolution: ``"paper"`` (448 / 384 for large images) or ``"public"`` (512 / 480).
    """
    if resolution not in RESOLUTIONS:
        raise ConfigError(f"resolution must be one of {sorted(RESOLUTIONS)}, got {resolution!r}")
    return SMALL_RESOLUTION if _area(image_size) < SMALL_IMAGE_AREA else RESOLUTIONS[resolution]


def get_schedule(dataset_size: int) -> Tuple[int, int, Tuple[int, ...]]:
    """(steps, warmup_steps, decay_steps) for a training set of ``dataset_size`` examples."""
    if dataset_size <= 0:
        raise DataError(f"dataset_size must be positive, got {dataset_size}")
    for bound, (warmup, *decays, end) in SCHEDULES:
        if dataset_size < bound:
            return end, warmup, tuple(decays)
    raise AssertionError("unreachable: the last schedule bound is infinite")


def get_mixup_alpha(dataset_size: int) -> float:
    """MixUp alpha: 0.1 for 20k examples or more, 0 (no MixUp) below."""
    return MIXUP_ALPHA if dataset_size >= MIXUP_MIN_SIZE else 0.0


def get_rule(dataset_size: int, image_size: ImageSize, resolution: str = "paper") -> Rule:
    """The BiT-HyperRule for a dataset.

    Args:
        dataset_size: number of training examples (after any few-shot sampling).
        image_size: typical original image side, or ``(height, width)``.
        resolution: ``"paper"`` (448 -> 384 for larger images) or ``"public"`` (512 -> 480).

    Returns:
        The :class:`Rule`.
    """
    resize, crop = get_resolution(image_size, resolution)
    steps, warmup, decays = get_schedule(dataset_size)
    return Rule(
        resize=resize,
        crop=crop,
        steps=steps,
        warmup_steps=warmup,
        decay_steps=decays,
        mixup_alpha=get_mixup_alpha(dataset_size),
    )
