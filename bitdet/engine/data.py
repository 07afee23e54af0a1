"""Deterministic, resumable data order for the trainer.

The data stream is a pure function of ``(seed, step)``: the global batch of step ``s`` holds
stream positions ``[s*B, (s+1)*B)`` of the concatenation of per-epoch permutations
``perm(seed, epoch)``; rank ``r`` of ``W`` takes the ``r``-th contiguous slice of it. Each
sample's augmentation is seeded from ``(seed, epoch, index)``. Hence the order and the
augmentation do not depend on the number of DataLoader workers, a resumed run continues
mid-epoch exactly where the interrupted one stopped, and nothing about the data needs to be
stored in a checkpoint.
"""

from __future__ import annotations

import random
from typing import Any, Iterator, List, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from bitdet.errors import ConfigError, DataError

__all__ = [
    "SeededDataset",
    "StepBatchSampler",
    "collate_skip_none",
    "epoch_permutation",
    "sample_seed",
    "step_seed",
]


def _seed63(*entropy: int) -> int:
    """A well-mixed non-negative 63-bit seed from ``entropy``."""
    return int(
        np.random.SeedSequence(list(entropy)).generate_state(2, np.uint32).view(np.uint64)[0] >> 1
    )


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The sample order of ``epoch``: a permutation of ``range(n)`` drawn from ``(seed, epoch)``."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch])))
    return rng.permutation(n)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for the augmentation of sample ``index`` in ``epoch``."""
    return _seed63(seed, epoch, index)


def step_seed(seed: int, step: int, rank: int) -> int:
    """Seed of the per-step batch-level randomness (e.g. MixUp) on ``rank``."""
    # The tag 1 keeps these streams apart from the per-sample ones of sample_seed.
    return _seed63(seed, 1, step, rank)


class StepBatchSampler(Sampler[List[Tuple[int, int]]]):
    """Yields, for each step from ``start_step`` to ``max_steps``, this rank's part of the batch.

    Each item is ``(dataset_index, augmentation_seed)``; wrap the dataset in
    :class:`SeededDataset` to consume them.

    Args:
        dataset_size: number of samples.
        global_batch: samples per optimizer step over all ranks.
        seed: base seed of the order and the augmentations.
        rank, world_size: this process's shard; ``global_batch`` must divide by ``world_size``.
        start_step, max_steps: the steps to produce (``start_step`` > 0 resumes mid-epoch).
    """

    def __init__(
        self,
        dataset_size: int,
        global_batch: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        start_step: int = 0,
        max_steps: int = 0,
    ) -> None:
        if dataset_size <= 0:
            raise DataError("the training set is empty")
        if global_batch % world_size:
            raise ConfigError(
                f"global batch {global_batch} is not divisible by world size {world_size}"
            )
        self.n, self.global_batch, self.seed = dataset_size, global_batch, seed
        self.rank, self.world_size = rank, world_size
        self.start_step, self.max_steps = start_step, max_steps
        self.local_batch = global_batch // world_size
        self._perms: dict = {}

    def permutation(self, epoch: int) -> np.ndarray:
        """The sample order of ``epoch`` (cached: a batch may straddle two epochs)."""
        if epoch not in self._perms:
            if len(self._perms) >= 2:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = epoch_permutation(self.seed, epoch, self.n)
        return self._perms[epoch]

    def batch(self, step: int) -> List[Tuple[int, int]]:
        """This rank's ``(index, seed)`` items for ``step``."""
        begin = step * self.global_batch + self.rank * self.local_batch
        out = []
        for pos in range(begin, begin + self.local_batch):
            epoch, offset = divmod(pos, self.n)
            index = int(self.permutation(epoch)[offset])
            out.append((index, sample_seed(self.seed, epoch, index)))
        return out

    def epoch_at(self, step: int) -> float:
        """Fractional epoch reached after ``step`` steps."""
        return step * self.global_batch / self.n

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        for step in range(self.start_step, self.max_steps):
            yield self.batch(step)

    def __len__(self) -> int:
        return max(0, self.max_steps - self.start_step)


class SeededDataset(Dataset):
    """Wraps a dataset so that ``ds[(index, seed)]`` runs its transforms under that seed.

    Python's, NumPy's and torch's global (CPU) generators are seeded for the call and restored
    afterwards, so ordinary torchvision transforms become reproducible per sample without
    disturbing the caller's random state (it matters when ``num_workers == 0``).
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: Tuple[int, int]) -> Any:
        index, seed = item
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                # The CPU generator only: torch.manual_seed would also queue a seed for every
                # uninitialised accelerator, capturing a stack trace each time (half a
                # sample's cost), and reseed an initialised GPU's generator, which fork_rng
                # here does not restore.
                torch.default_generator.manual_seed(seed)
                random.seed(seed)
                np.random.seed(seed % 2**32)
                return self.dataset[index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def collate_skip_none(batch: Sequence[Any]) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """Stack ``(image, target)`` samples, dropping unusable ones (``None`` or image ``None``).

    Returns:
        ``(images, targets, skipped)``; ``images`` is empty (shape ``(0,)``) when every
        sample was unusable.
    """
    good = [s for s in batch if s is not None and s[0] is not None]
    skipped = len(batch) - len(good)
    if not good:
        return torch.empty(0), torch.empty(0), skipped
    images = torch.stack([torch.as_tensor(s[0]) for s in good])
    first = good[0][1]
    if torch.is_tensor(first) or isinstance(first, np.ndarray):
        targets = torch.stack([torch.as_tensor(s[1], dtype=torch.float32) for s in good])
    else:
        targets = torch.as_tensor([int(s[1]) for s in good], dtype=torch.int64)
    return images, targets, skipped
