"""HyperRule image transforms: square resize, random crop and flip for training; resize to the
crop size for evaluation; RGB scaled to [-1, 1] (:mod:`bitdet.numerics`)."""

from __future__ import annotations

from typing import Callable

from torch.utils.data import Dataset
from torchvision import transforms as T

from bitdet.data.images import ToBiTTensor
from bitdet.transfer.datasets import dataset_classes, dataset_targets

__all__ = ["ToBiTTensor", "TransformedDataset", "train_transform", "eval_transform"]


def train_transform(
    resize: int, crop: int, random_crop: bool = True, flip: bool = True
) -> Callable:
    """HyperRule training transform.

    Args:
        resize: side of the square resize (aspect ratio is not kept, as in the public code).
        crop: side of the random crop.
        random_crop: False resizes straight to ``crop`` (for labels that a crop would change).
        flip: random horizontal flip (False where mirroring changes the label).

    Returns:
        A callable PIL image -> tensor ``(3, crop, crop)`` in [-1, 1].
    """
    steps = (
        [T.Resize((resize, resize)), T.RandomCrop(crop)]
        if random_crop
        else [T.Resize((crop, crop))]
    )
    if flip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose(steps + [ToBiTTensor()])


def eval_transform(crop: int) -> Callable:
    """HyperRule evaluation transform: resize to ``crop`` x ``crop`` only (no centre crop)."""
    return T.Compose([T.Resize((crop, crop)), ToBiTTensor()])


class TransformedDataset(Dataset):
    """``(transform(image), label)`` over a dataset of ``(PIL.Image, int)``; keeps
    ``targets``/``classes``.

    A sample whose image is None (unreadable file) stays None, for ``collate_skip_none``.
    """

    def __init__(self, dataset: Dataset, transform: Callable) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        sample = self.dataset[index]
        # An undecodable file arrives as None (bitdet.data.images); the trainer's collate skips it.
        if sample is None or sample[0] is None:
            return None
        image, label = sample
        return self.transform(image), int(label)

    @property
    def targets(self):
        return dataset_targets(self.dataset)

    @property
    def classes(self):
        return dataset_classes(self.dataset)
