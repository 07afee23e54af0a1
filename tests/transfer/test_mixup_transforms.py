"""MixUp batch hook and the HyperRule transforms."""

import numpy as np
import pytest
import torch
from PIL import Image

from bitdet.transfer.mixup import MixUp
from bitdet.transfer.transforms import (
    ToBiTTensor,
    TransformedDataset,
    eval_transform,
    train_transform,
)


def test_mixup_is_a_convex_mix_of_a_permutation():
    images, labels = torch.randn(6, 3, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    mix = MixUp(0.1, 3)
    lam, perm = mix.sample(6, torch.Generator().manual_seed(5))
    mixed, soft = mix(images, labels, torch.Generator().manual_seed(5))
    torch.testing.assert_close(mixed, lam * images + (1 - lam) * images[perm])
    torch.testing.assert_close(soft.sum(1), torch.ones(6))
    expected = lam * torch.eye(3)[labels] + (1 - lam) * torch.eye(3)[labels[perm]]
    torch.testing.assert_close(soft, expected)
    again, _ = mix(images, labels, torch.Generator().manual_seed(5))
    torch.testing.assert_close(again, mixed)
    assert 0.0 <= lam <= 1.0


def test_mixup_small_alpha_stays_near_an_endpoint():
    mix = MixUp(0.1, 2)
    lams = np.array([mix.sample(2, np.random.default_rng(s))[0] for s in range(200)])
    assert np.mean((lams < 0.1) | (lams > 0.9)) > 0.6


def test_mixup_errors():
    with pytest.raises(ValueError, match="alpha"):
        MixUp(0.0, 10)
    with pytest.raises(ValueError, match="4 classes"):
        MixUp(0.1, 3)(torch.zeros(2, 3, 2, 2), torch.zeros(2, 4))


def test_bit_scaling_is_exact():
    image = Image.fromarray(np.array([[[0, 255, 127]]], dtype=np.uint8))
    out = ToBiTTensor()(image)
    assert out.shape == (3, 1, 1)
    torch.testing.assert_close(out.flatten(), torch.tensor([-1.0, 1.0, 127 / 127.5 - 1]))
    gray = ToBiTTensor()(Image.new("L", (2, 2), 255))
    assert gray.shape == (3, 2, 2) and torch.all(gray == 1.0)


def test_train_and_eval_transforms():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8))
    torch.manual_seed(0)
    crops = [train_transform(40, 32)(image) for _ in range(4)]
    assert all(c.shape == (3, 32, 32) and c.min() >= -1 and c.max() <= 1 for c in crops)
    assert any(not torch.equal(crops[0], c) for c in crops[1:])  # random crop / flip
    fixed = train_transform(40, 32, random_crop=False, flip=False)
    torch.testing.assert_close(fixed(image), eval_transform(32)(image))
    torch.testing.assert_close(eval_transform(32)(image), eval_transform(32)(image))


def test_transformed_dataset_passes_unreadable_samples_as_none():
    data = [(Image.new("RGB", (8, 8)), 1), None, (None, 2)]

    class Listing(torch.utils.data.Dataset):
        targets = [1, 0, 2]

        def __len__(self):
            return 3

        def __getitem__(self, i):
            return data[i]

    ds = TransformedDataset(Listing(), eval_transform(4))
    image, label = ds[0]
    assert image.shape == (3, 4, 4) and label == 1
    assert ds[1] is None and ds[2] is None
    assert ds.targets.tolist() == [1, 0, 2]
