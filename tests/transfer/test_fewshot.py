"""Few-shot sampler: exactly k per class, seed stability, nesting, errors naming the class."""

import numpy as np
import pytest

from bitdet.transfer.fewshot import (
    FULL,
    load_indices,
    mean_std,
    parse_shots,
    sample_few_shot,
    save_indices,
)

TARGETS = np.repeat(np.arange(5), [7, 3, 12, 5, 9])[np.random.default_rng(1).permutation(36)]


@pytest.mark.parametrize("k", [1, 2, 3])
def test_exactly_k_per_class(k):
    idx = sample_few_shot(TARGETS, k, seed=0)
    assert len(idx) == len(set(idx.tolist())) == 5 * k
    assert np.all(np.diff(idx) > 0)
    assert np.bincount(TARGETS[idx], minlength=5).tolist() == [k] * 5


def test_seed_stability_and_variation():
    a = sample_few_shot(TARGETS, 2, seed=3)
    np.testing.assert_array_equal(a, sample_few_shot(TARGETS.copy(), 2, seed=3))
    others = {tuple(sample_few_shot(TARGETS, 2, seed=s)) for s in range(6)}
    assert len(others) > 1


def test_larger_k_contains_smaller_k_for_a_seed():
    one, three = sample_few_shot(TARGETS, 1, 7), sample_few_shot(TARGETS, 3, 7)
    assert set(one.tolist()) <= set(three.tolist())


def test_a_short_class_is_named():
    with pytest.raises(ValueError, match=r"'dog' \(label 1\) has 3"):
        sample_few_shot(TARGETS, 4, 0, classes=["cat", "dog", "a", "b", "c"])
    with pytest.raises(ValueError, match="label 5 has 0"):
        sample_few_shot(TARGETS, 1, 0, num_classes=6)


def test_indices_round_trip(tmp_path):
    idx = sample_few_shot(TARGETS, 2, 0)
    save_indices(tmp_path / "idx.json", idx, shots=2, seed=0)
    np.testing.assert_array_equal(load_indices(tmp_path / "idx.json"), idx)


def test_parse_shots_and_mean_std():
    assert parse_shots("1, 5,10,full") == [1, 5, 10, FULL]
    assert parse_shots([25, "all"]) == [25, FULL]
    with pytest.raises(ValueError, match="'-1'"):
        parse_shots("-1")
    with pytest.raises(ValueError, match="'x'"):
        parse_shots("1,x")
    stats = mean_std([70.0, 72.0, 74.0])
    assert stats == {"mean": 72.0, "std": pytest.approx(2.0), "n": 3}
    assert mean_std([5.0])["std"] == 0.0
