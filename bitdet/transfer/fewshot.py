"""Few-shot subsets: ``k`` training examples per class drawn with a seed, saved for the record.

Each class draws from its own seeded stream (``(seed, class)``) a permutation of its members
and keeps the first ``k``. So for one seed the 5-shot subset contains the 1-shot one, and a
class's draw does not depend on the other classes. The chosen indices are written to JSON
next to the results, so every number can be traced to its training images.
"""

from __future__ import annotations

import json
import math
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from bitdet.errors import ConfigError, DataError
from bitdet.utils.io import PathLike, atomic_write

__all__ = [
    "FULL",
    "Shots",
    "load_indices",
    "mean_std",
    "parse_shots",
    "sample_few_shot",
    "save_indices",
]

# The whole training set, as a value of a shots list ("1,5,10,full").
FULL = "full"
Shots = Union[int, str]


def parse_shots(spec: Union[str, Sequence[Union[int, str]]]) -> List[Shots]:
    """``"1,5,10,full"`` (or a list) -> ``[1, 5, 10, "full"]``; every k must be a positive int.

    Raises:
        ValueError: naming the bad entry.
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: List[Shots] = []
    for item in items:
        text = str(item).strip().lower()
        if not text:
            continue
        if text in (FULL, "all"):
            out.append(FULL)
            continue
        try:
            k = int(text)
        except ValueError:
            raise ConfigError(
                f"shots entry {item!r} is neither a positive integer nor 'full'"
            ) from None
        if k <= 0:
            raise ConfigError(f"shots entry {item!r} must be positive (use 'full' for all data)")
        out.append(k)
    return out


def sample_few_shot(
    targets: Sequence[int],
    shots: int,
    seed: int,
    classes: Optional[Sequence[str]] = None,
    num_classes: Optional[int] = None,
) -> np.ndarray:
    """Indices of ``shots`` examples of every class, sorted.

    Args:
        targets: label of every training example.
        shots: examples per class (k).
        seed: the draw's seed.
        classes: class names, used in error messages.
        num_classes: the number of classes; defaults to ``max(targets) + 1``. A class with
            no example at all is then an error too.

    Returns:
        ``int64`` array of ``shots * num_classes`` dataset indices, ascending.

    Raises:
        ValueError: a class has fewer than ``shots`` examples (named, with its count).
    """
    targets = np.asarray(targets, dtype=np.int64)
    if shots <= 0:
        raise ConfigError(f"shots must be positive, got {shots}")
    if targets.size == 0:
        raise DataError("cannot sample a few-shot subset of an empty dataset")
    num_classes = int(num_classes if num_classes is not None else targets.max() + 1)
    counts = np.bincount(targets, minlength=num_classes)
    short = [c for c in range(num_classes) if counts[c] < shots]
    if short:
        name = (
            (lambda c: f"{classes[c]!r} (label {c})")
            if classes is not None
            else (lambda c: f"label {c}")
        )
        detail = ", ".join(f"{name(c)} has {counts[c]}" for c in short)
        raise ConfigError(f"{shots}-shot sampling needs {shots} examples of every class: {detail}")
    chosen = []
    for c in range(num_classes):
        members = np.flatnonzero(targets == c)  # ascending, so the draw depends only on the seed
        chosen.append(np.random.default_rng([seed, c]).permutation(members)[:shots])
    return np.sort(np.concatenate(chosen))


def save_indices(path: PathLike, indices: Sequence[int], **meta) -> None:
    """Write ``{"indices": [...], **meta}`` as JSON, atomically."""
    payload = dict(meta, indices=[int(i) for i in indices])
    with atomic_write(path, "w") as f:
        json.dump(payload, f)


def load_indices(path: PathLike) -> np.ndarray:
    """The ``indices`` of a file written by :func:`save_indices`."""
    with open(path) as f:
        payload = json.load(f)
    if "indices" not in payload:
        raise DataError(f"{path}: no 'indices' key (not written by save_indices?)")
    return np.asarray(payload["indices"], dtype=np.int64)


def mean_std(values: Sequence[float]) -> Dict[str, float]:
    """``{"mean", "std", "n"}``; ``std`` is the sample standard deviation (0 for one value)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_std of no values")
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return {"mean": mean, "std": math.sqrt(var), "n": len(values)}
