"""Fashion-MNIST (Xiao et al. 2017) read from the idx files of Debian's ``dataset-fashion-mnist``.

The files are parsed directly (no torchvision folder layout, no download): 60k training
and 10k test images, 28x28 grayscale, 10 classes. Images are returned as RGB ``PIL`` images
so the same transforms serve Fashion-MNIST and photo datasets.
"""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from bitdet.errors import ConfigError, DataError
from bitdet.numerics import PIXEL_MEAN, PIXEL_STD

__all__ = ["DEFAULT_ROOT", "FASHION_MNIST_CLASSES", "FashionMNIST", "read_idx"]

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# idx type codes (LeCun's format): only unsigned bytes occur in (Fashion-)MNIST.
_IDX_UBYTE = 0x08


def read_idx(path: Union[str, os.PathLike]) -> np.ndarray:
    """Read an idx file (optionally ``.gz``) of unsigned bytes into an array.

    Raises:
        ValueError: the header is not an unsigned-byte idx header or the size disagrees.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _IDX_UBYTE:
        raise DataError(f"{path} is not an unsigned-byte idx file (header {data[:4]!r})")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(dims)):
        raise DataError(f"{path}: header says shape {dims} but holds {len(data) - offset} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def _find(root: Path, stem: str) -> Optional[Path]:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    return None


@functools.lru_cache(maxsize=4)
def _load_split(root: str, split: str) -> Tuple[np.ndarray, np.ndarray]:
    paths = [_find(Path(root), stem) for stem in _FILES[split]]
    if None in paths:
        expected = ", ".join(f"{root}/{stem}.gz" for stem in _FILES[split])
        raise FileNotFoundError(
            f"Fashion-MNIST {split} split not found: expected {expected}. Install it with "
            "`sudo apt-get install dataset-fashion-mnist`, or pass root= pointing at a folder "
            "holding the four idx files."
        )
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(
            f"{paths[0]} / {paths[1]}: shapes {images.shape} and {labels.shape} do not pair up"
        )
    return images, labels


class FashionMNIST(Dataset):
    """Fashion-MNIST from idx files: ``dataset[i] -> (transform(rgb_pil_image), label)``.

    Args:
        root: folder holding the idx files (``.gz`` or not).
        split: ``"train"`` (60k) or ``"test"`` (10k).
        transform: callable on an RGB ``PIL.Image``; default: a ``(3, 28, 28)`` float tensor in
            [-1, 1].
        indices: optional subset of sample indices (e.g. a few per class for tests).
    """

    classes = FASHION_MNIST_CLASSES

    def __init__(
        self,
        root: Union[str, os.PathLike] = DEFAULT_ROOT,
        split: str = "train",
        transform: Optional[Callable[[Image.Image], torch.Tensor]] = None,
        indices: Optional[Sequence[int]] = None,
    ) -> None:
        if split not in _FILES:
            raise ConfigError(f"split must be one of {sorted(_FILES)}, got {split!r}")
        images, labels = _load_split(str(root), split)
        if indices is not None:
            idx = np.asarray(indices, dtype=np.int64)
            images, labels = images[idx], labels[idx]
        self.images = images
        self.targets = labels.astype(np.int64)
        self.transform = transform
        self.root, self.split = str(root), split

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        img = Image.fromarray(self.images[index], mode="L").convert("RGB")
        if self.transform is not None:
            x = self.transform(img)
        else:
            x = torch.from_numpy(
                (np.asarray(img, dtype=np.float32) - PIXEL_MEAN) / PIXEL_STD
            ).permute(2, 0, 1)
        return x, int(self.targets[index])

    def subset_per_class(self, n: int, seed: int = 0) -> "FashionMNIST":
        """A copy holding ``n`` random examples of each class (few-shot / quick tests)."""
        rng = np.random.default_rng(seed)
        keep = np.sort(
            np.concatenate(
                [rng.permutation(np.flatnonzero(self.targets == c))[:n] for c in range(10)]
            )
        )
        out = FashionMNIST.__new__(FashionMNIST)
        out.__dict__.update(self.__dict__)
        out.images, out.targets = self.images[keep], self.targets[keep]
        return out
