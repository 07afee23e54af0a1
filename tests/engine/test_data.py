"""Deterministic resumable data order, per-sample seeding, skipping collate."""

import random

import numpy as np
import pytest
import torch

from bitdet.engine.data import SeededDataset, StepBatchSampler, collate_skip_none, sample_seed


def indices(sampler, step):
    return [i for i, _ in sampler.batch(step)]


def test_each_epoch_is_a_permutation_and_epochs_differ():
    s = StepBatchSampler(10, global_batch=5, seed=0, max_steps=4)
    batches = list(s)
    assert len(batches) == 4
    epoch0 = sorted(i for b in batches[:2] for i, _ in b)
    epoch1 = [i for b in batches[2:] for i, _ in b]
    assert epoch0 == list(range(10)) and sorted(epoch1) == list(range(10))
    assert [i for b in batches[:2] for i, _ in b] != epoch1


def test_batches_straddle_epochs():
    s = StepBatchSampler(7, global_batch=4, seed=1, max_steps=7)
    stream = [i for b in s for i, _ in b]
    for e in range(4):
        assert sorted(stream[7 * e : 7 * e + 7]) == list(range(7))


def test_ranks_split_the_single_process_batch():
    single = StepBatchSampler(100, 12, seed=5)
    r0, r1 = (StepBatchSampler(100, 12, seed=5, rank=r, world_size=2) for r in (0, 1))
    for step in (0, 7, 8, 30):
        assert single.batch(step) == r0.batch(step) + r1.batch(step)


def test_resume_mid_epoch_continues_the_same_stream():
    full = list(StepBatchSampler(50, 8, seed=2, max_steps=20))
    resumed = list(StepBatchSampler(50, 8, seed=2, start_step=13, max_steps=20))
    assert resumed == full[13:]


def test_seed_changes_order_and_augmentation_seeds():
    a, b = StepBatchSampler(50, 8, seed=0), StepBatchSampler(50, 8, seed=1)
    assert a.batch(0) != b.batch(0)
    assert sample_seed(0, 0, 3) != sample_seed(0, 1, 3)  # a new epoch re-augments


def test_indivisible_global_batch_is_rejected():
    with pytest.raises(ValueError, match="not divisible by world size 3"):
        StepBatchSampler(10, 8, seed=0, world_size=3)


class RandomItems(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.rand(3), random.random(), np.random.rand()


def test_seeded_dataset_is_reproducible_and_leaves_global_rng_alone():
    ds = SeededDataset(RandomItems())
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = ds[(2, 99)]
    torch.rand(5)  # the caller's stream moves on ...
    b = ds[(2, 99)]
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
    assert not torch.equal(ds[(2, 100)][0], a[0])
    torch.manual_seed(123)
    ds[(0, 1)]
    assert torch.equal(torch.get_rng_state(), before)  # ... and is not disturbed


def test_collate_skips_unusable_samples():
    good = (torch.zeros(3, 2, 2), 1)
    images, targets, skipped = collate_skip_none([good, None, (None, 2), good])
    assert images.shape == (2, 3, 2, 2) and targets.tolist() == [1, 1] and skipped == 2
    images, _, skipped = collate_skip_none([None, None])
    assert images.numel() == 0 and skipped == 2
    _, targets, _ = collate_skip_none([(torch.zeros(1), torch.tensor([0.0, 1.0]))])
    assert targets.dtype == torch.float32 and targets.shape == (1, 2)
