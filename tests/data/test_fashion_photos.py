"""Fashion-MNIST items drawn like detection objects, as an upstream pretraining source."""

import numpy as np
import pytest
import torch

from bitdet.data.detection_generate import item_on_canvas
from bitdet.data.fashion_mnist import FashionMNIST
from bitdet.data.fashion_photos import FashionMNISTOnPhotos
from bitdet.engine.data import SeededDataset
from bitdet.pretrain import get_pretrain_cfg
from bitdet.pretrain.data import build_dataset


@pytest.fixture(scope="module")
def items():
    return FashionMNIST(split="test", indices=range(50))


def _extent(canvas):
    ys, xs = np.nonzero(canvas.max(axis=2) > 0)
    return ys.max() - ys.min() + 1, xs.max() - xs.min() + 1


def _photos_on_test_split(*overrides):
    """The demo pretraining config, training on Fashion-MNIST items on photos (test split)."""
    return get_pretrain_cfg(
        "pretrain/demo_fashion_mnist.yaml",
        ["DATASETS.TRAIN.NAME", "fashion_mnist_photos", "DATASETS.TRAIN.SPLIT", "test", *overrides],
    )


def test_plain_canvas_is_the_grey_item_on_black_at_the_drawn_scale(items):
    trouser = items.images[int(np.flatnonzero(items.targets == 1)[0])]
    small = [
        _extent(item_on_canvas(trouser, np.random.default_rng(s), 64, (0.25, 0.3), False))
        for s in range(5)
    ]
    large = [
        _extent(item_on_canvas(trouser, np.random.default_rng(s), 64, (0.9, 1.0), False))
        for s in range(5)
    ]
    assert max(max(e) for e in small) <= 64 * 0.3 * 1.2 + 2 < min(max(e) for e in large)
    canvas = item_on_canvas(trouser, np.random.default_rng(0), 64, (0.25, 0.3), False)
    assert canvas.dtype == np.uint8 and canvas.shape == (64, 64, 3)
    assert np.array_equal(canvas[..., 0], canvas[..., 1]) and np.array_equal(
        canvas[..., 0], canvas[..., 2]
    )
    assert (canvas.max(axis=2) == 0).mean() > 0.5  # mostly black around a small item


def test_photo_canvas_is_tinted_clutter(items):
    canvas = item_on_canvas(items.images[0], np.random.default_rng(1), 32, (0.4, 1.0), True)
    assert (canvas.max(axis=2) == 0).mean() < 0.5  # a photo behind the item, not black
    assert not np.array_equal(canvas[..., 0], canvas[..., 1])


def test_plain_share_keeps_the_test_split_look():
    """PLAIN_PROB 1: every sample is the item's whole frame, as the plain Fashion-MNIST
    evaluation draws it; PLAIN_PROB 0: none is (items are cropped to their extent and placed)."""
    cfg = _photos_on_test_split("INPUT.RANDOM_FLIP", "False", "INPUT.PLAIN_PROB", "1.0")
    plain = SeededDataset(build_dataset(cfg.DATASETS.TRAIN, train=True, cfg=cfg))
    reference = build_dataset(
        cfg.DATASETS.TEST, train=False, cfg=cfg
    )  # NAME fashion_mnist, TEST_RESIZE 32
    for i in range(3):
        drawn, label = plain[(i, 5)]
        assert label == reference[i][1] and (drawn - reference[i][0]).abs().max() < 0.1
    cfg.merge_from_list(["INPUT.PLAIN_PROB", "0.0"])
    drawn_like_objects = SeededDataset(build_dataset(cfg.DATASETS.TRAIN, train=True, cfg=cfg))
    assert all(
        (drawn_like_objects[(i, 5)][0] - reference[i][0]).abs().max() > 0.5 for i in range(3)
    )
    with pytest.raises(ValueError, match="plain_prob"):
        FashionMNISTOnPhotos(split="test", plain_prob=-0.1)


def test_scale_range_is_checked(items):
    with pytest.raises(ValueError, match="scale_range"):
        item_on_canvas(items.images[0], np.random.default_rng(0), 32, (0.5, 1.5), True)
    with pytest.raises(ValueError, match="photo_prob"):
        FashionMNISTOnPhotos(split="test", photo_prob=1.5)


def test_training_samples_follow_the_trainer_seed_and_eval_samples_are_fixed():
    cfg = _photos_on_test_split(
        "DATASETS.TEST.NAME", "fashion_mnist_photos", "INPUT.CROP_SIZE", "24"
    )
    train = SeededDataset(build_dataset(cfg.DATASETS.TRAIN, train=True, cfg=cfg))
    (a, label), (b, _), (c, _) = train[(7, 11)], train[(7, 11)], train[(7, 12)]
    assert a.shape == (3, 24, 24) and -1 <= a.min() and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert label == int(FashionMNIST(split="test").targets[7])
    test = build_dataset(cfg.DATASETS.TEST, train=False, cfg=cfg)
    assert torch.equal(test[3][0], test[3][0])
