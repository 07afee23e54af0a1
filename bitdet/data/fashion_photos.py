"""Fashion-MNIST as an upstream set that looks like the demo's detection data.

Each sample is one Fashion-MNIST item drawn the way :mod:`bitdet.data.detection_generate`
draws a detection object (random side within a range of the canvas, aspect jitter, random
position; with some probability tinted and pasted on a crop of a real scikit-image photo,
else grey on black), labelled with the item's class. A tiny model pretrained only on items
centred on black leaves a detector's backbone unprepared for small, large, coloured and
cluttered objects; this source lets the demo's upstream data cover what its detection sees.
A share of the items (``plain_prob``) can keep the plain Fashion-MNIST look instead (the whole
28 px frame resized to the canvas, grey on black), which is what the standard test split and
grey-on-black transfer tasks look like.
"""

from __future__ import annotations

import os
from typing import Callable, Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from bitdet.data.detection_generate import item_on_canvas
from bitdet.data.fashion_mnist import DEFAULT_ROOT, FASHION_MNIST_CLASSES, FashionMNIST
from bitdet.errors import ConfigError

__all__ = ["FashionMNISTOnPhotos"]


class FashionMNISTOnPhotos(Dataset):
    """``dataset[i] -> (transform(rgb_pil_image), label)``: item ``i`` on a generated canvas.

    Args:
        root: folder of the Fashion-MNIST idx files.
        split: ``"train"`` or ``"test"``.
        size: canvas side in pixels.
        scale_range: item side as a fraction of ``size``, e.g. ``(0.4, 1.0)``.
        photo_prob: probability that a sample drawn like a detection object is tinted and pasted
            on a photo crop.
        plain_prob: probability that a sample keeps the plain Fashion-MNIST look (drawn before
            ``photo_prob``; 0 draws every sample like a detection object).
        transform: callable on the RGB ``PIL.Image`` (e.g. flip and [-1, 1] scaling).
        seed: with ``None`` (training) the layout comes from torch's generator, which the
            trainer seeds per sample (reproducible, fresh each epoch); with an int (held-out
            evaluation) sample ``i`` is always drawn from ``(seed, i)``.
    """

    classes = FASHION_MNIST_CLASSES

    def __init__(
        self,
        root: Union[str, os.PathLike] = DEFAULT_ROOT,
        split: str = "train",
        size: int = 32,
        scale_range: Tuple[float, float] = (0.4, 1.0),
        photo_prob: float = 0.75,
        transform: Optional[Callable] = None,
        seed: Optional[int] = None,
        plain_prob: float = 0.0,
    ) -> None:
        for name, p in (("photo_prob", photo_prob), ("plain_prob", plain_prob)):
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"{name} {p}: expected a probability in [0, 1]")
        if size < 8:
            raise ConfigError(f"canvas size {size}: expected >= 8 pixels")
        self.items = FashionMNIST(root, split)
        self.targets = self.items.targets
        self.size, self.scale_range, self.photo_prob = (
            int(size),
            tuple(scale_range),
            float(photo_prob),
        )
        self.plain_prob = float(plain_prob)
        self.transform, self.seed = transform, seed
        item_on_canvas(
            self.items.images[0], np.random.default_rng(0), self.size, self.scale_range, False
        )  # checks the range

    def __len__(self) -> int:
        return len(self.items)

    def _rng(self, index: int) -> np.random.Generator:
        if self.seed is not None:
            return np.random.default_rng([self.seed, index])
        return np.random.default_rng(int(torch.randint(0, 2**62, ())))

    def __getitem__(self, index: int) -> Tuple[object, int]:
        rng = self._rng(index)
        if rng.random() < self.plain_prob:
            image = Image.fromarray(self.items.images[index], mode="L").resize(
                (self.size, self.size), Image.BILINEAR
            )
            image = image.convert("RGB")
        else:
            photo = bool(rng.random() < self.photo_prob)
            image = Image.fromarray(
                item_on_canvas(self.items.images[index], rng, self.size, self.scale_range, photo),
                mode="RGB",
            )
        return (self.transform(image) if self.transform else image), int(self.targets[index])
