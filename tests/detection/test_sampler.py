"""The resumable detection stream: order, sharding, grouping and per-sample seeding."""

import itertools

import numpy as np
import pytest

from bitdet.detection.sampler import ResumableBatchSampler, SeededMapDataset


def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_resuming_at_a_batch_continues_the_same_stream():
    wide = [i % 3 != 0 for i in range(11)]
    full = _take(ResumableBatchSampler(11, 2, seed=5, wide=wide), 20)
    resumed = ResumableBatchSampler(11, 2, seed=5, wide=wide)
    resumed.start_batch = 7
    assert _take(resumed, 13) == full[7:]


def test_batches_are_grouped_by_aspect_ratio():
    wide = [i % 3 != 0 for i in range(11)]
    for batch in _take(ResumableBatchSampler(11, 3, seed=1, wide=wide), 30):
        assert len({wide[index] for index, _ in batch}) == 1


def test_ranks_share_one_stream_without_overlap():
    """Without grouping, two ranks' batches interleave into the one-process stream."""
    one = [item for batch in _take(ResumableBatchSampler(9, 4, seed=2), 9) for item in batch]
    ranks = [_take(ResumableBatchSampler(9, 2, seed=2, rank=r, world_size=2), 9) for r in (0, 1)]
    merged = [item for b0, b1 in zip(*ranks) for pair in zip(b0, b1) for item in pair]
    assert merged == one
    # every epoch is a permutation: each image once per 9 positions
    assert sorted(index for index, _ in one[:9]) == list(range(9))
    assert len({seed for _, seed in one}) == len(one), "augmentation seeds repeat"


def test_mapping_depends_on_the_seed_only_and_replaces_unreadable_images():
    dicts = [{"id": i} for i in range(6)]

    def mapper(d):
        if d["id"] == 3:
            return None  # unreadable
        return (d["id"], float(np.random.rand()))

    ds = SeededMapDataset(dicts, mapper)
    np.random.seed(0)
    first = [ds[(i, 100 + i)] for i in range(6)]
    np.random.seed(1)
    again = [ds[(i, 100 + i)] for i in reversed(range(6))][::-1]
    assert first == again
    assert first[3][0] != 3 and first[3] == ds[(3, 103)]


def test_an_empty_training_set_is_named():
    with pytest.raises(ValueError, match="training set is empty"):
        ResumableBatchSampler(0, 2, seed=0)


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2), (4, 2)])
def test_resuming_with_another_process_count_keeps_the_global_batches(before, after):
    """Each iteration's images (and seeds) are those of the interrupted run's ranks, in rank order,
    split evenly between the new processes; with aspect-ratio grouping too."""
    wide = [i % 3 != 0 for i in range(13)]
    global_batch, start = 4, 5

    def global_batches(samplers, n):
        return [
            [item for part in parts for item in part]
            for parts in zip(*(_take(s, n) for s in samplers))
        ]

    old = [
        ResumableBatchSampler(
            13, global_batch // before, seed=3, rank=r, world_size=before, wide=wide
        )
        for r in range(before)
    ]
    expected = global_batches(old, start + 6)[start:]
    new = [
        ResumableBatchSampler(
            13, global_batch // after, seed=0, rank=r, world_size=after, wide=wide
        )
        for r in range(after)
    ]
    for sampler in new:
        sampler.resume(seed=3, batches=start, stream_world_size=before)
    assert global_batches(new, 6) == expected
    fresh = [
        ResumableBatchSampler(
            13, global_batch // after, seed=3, rank=r, world_size=after, wide=wide
        )
        for r in range(after)
    ]
    assert (
        global_batches(fresh, start + 6)[start:] != expected
    )  # another process count, another stream
    with pytest.raises(ValueError, match="read by 3 process"):
        new[0].resume(seed=3, batches=start, stream_world_size=3)
