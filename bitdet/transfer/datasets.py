"""Downstream classification datasets by name, read from their official on-disk formats.

Each entry of the registry knows how to open one split of a dataset as a map-style dataset of
``(PIL.Image, int)`` pairs, its typical image size (which picks the HyperRule resolution) and
whether random crops and flips keep its labels. Nothing is downloaded unless the caller
passes ``download=True`` (``--download`` in the tools).

The torchvision readers parse the official formats. Two of them (CIFAR, Flowers-102) also
compare MD5 sums of the full release files, which rejects any subset written for tests and
re-hashes hundreds of MB on every start; the subclasses here keep torchvision's parsing and
check only that the files exist, naming the ones that are missing.
"""

from __future__ import annotations

import functools
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from torch.utils.data import Dataset, Subset
from torchvision import datasets as tvd

from bitdet.errors import ConfigError, DataError, UnknownNameError

__all__ = [
    "DatasetSpec",
    "DATASETS",
    "SklearnDigits",
    "build_dataset",
    "dataset_classes",
    "dataset_image_size",
    "dataset_targets",
    "get_spec",
    "list_datasets",
    "register_dataset",
]

Builder = Callable[[str, str, bool], Dataset]


@dataclass(frozen=True)
class DatasetSpec:
    """How to open a dataset, and what the HyperRule and augmentation need to know about it.

    Attributes:
        name: registry key.
        build: ``build(root, split, download) -> Dataset`` of ``(PIL.Image, int)``.
        train_split / test_split: split names passed to ``build`` by default.
        splits: every split name ``build`` accepts.
        image_size: typical original ``(height, width)``; None to measure the first image.
        random_crop / flip: False where the augmentation would change the label (counting,
            position, orientation).
        default_root: used when no data root is given ("" = a root is required).
        description: one line for reports on runs of this dataset ("" = its name says enough).
    """

    name: str
    build: Builder
    train_split: str
    test_split: str
    splits: Tuple[str, ...]
    image_size: Optional[Tuple[int, int]] = None
    random_crop: bool = True
    flip: bool = True
    default_root: str = ""
    description: str = ""


DATASETS: Dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add ``spec`` to the registry (replacing an entry of the same name) and return it."""
    DATASETS[spec.name] = spec
    return spec


def list_datasets() -> List[str]:
    """Registered dataset names, sorted."""
    return sorted(DATASETS)


def get_spec(name: str) -> DatasetSpec:
    """The registry entry for ``name``; a KeyError lists the valid names."""
    try:
        return DATASETS[name]
    except KeyError:
        raise UnknownNameError(
            f"unknown dataset {name!r}; registered: {', '.join(list_datasets())}"
        ) from None


def build_dataset(name: str, root: str = "", split: str = "", download: bool = False) -> Dataset:
    """Open one split of a registered dataset.

    Args:
        name: registry key (see :func:`list_datasets`).
        root: data folder; defaults to the entry's ``default_root``.
        split: defaults to the entry's training split.
        download: let torchvision fetch a missing dataset (needs the network).

    Returns:
        A dataset of ``(PIL.Image, int)`` with a ``targets``-like attribute where possible.
    """
    spec = get_spec(name)
    split = split or spec.train_split
    if split not in spec.splits:
        raise ConfigError(f"dataset {name!r} has splits {spec.splits}, not {split!r}")
    root = root or spec.default_root
    if not root:
        raise ConfigError(f"dataset {name!r} needs a data root (--data-root / DATASETS.TRAIN.ROOT)")
    return spec.build(os.path.expanduser(root), split, download)


# --- labels, classes and sizes of any of these datasets ------------------------------------


def dataset_targets(dataset: Dataset) -> np.ndarray:
    """Integer labels of every example, read from the dataset's metadata when it has some.

    Falls back to iterating the dataset (decoding every image) only for unknown types.
    """
    if isinstance(dataset, Subset):
        return dataset_targets(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    for attr in ("targets", "_labels", "labels"):
        values = getattr(dataset, attr, None)
        if values is not None and not callable(values):
            return np.asarray([int(v) for v in values], dtype=np.int64)
    inner = getattr(dataset, "dataset", None)  # transform wrappers
    if inner is not None:
        return dataset_targets(inner)
    return np.asarray([int(dataset[i][1]) for i in range(len(dataset))], dtype=np.int64)


def dataset_classes(dataset: Dataset) -> List[str]:
    """Class names (``classes`` attribute), else ``"0" .. str(max label)``."""
    base = dataset
    while isinstance(base, Subset) or (not hasattr(base, "classes") and hasattr(base, "dataset")):
        base = base.dataset
    classes = getattr(base, "classes", None)
    if classes:
        return [str(c) for c in classes]
    return [str(i) for i in range(int(dataset_targets(dataset).max()) + 1)]


def dataset_image_size(spec: DatasetSpec, dataset: Dataset) -> Tuple[int, int]:
    """The spec's typical ``(height, width)``, or the size of the dataset's first image."""
    if spec.image_size is not None:
        return spec.image_size
    if len(dataset) == 0:
        raise DataError(f"dataset {spec.name!r} is empty: cannot measure its image size")
    width, height = dataset[0][0].size
    return height, width


# --- official formats -----------------------------------------------------------------------


def _require(paths: Sequence[Path], name: str, hint: str) -> None:
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{name}: missing {', '.join(missing)}. {hint}")


class _CIFARFiles:
    """CIFAR reader that checks for the batch files instead of their full-release MD5 sums."""

    def _check_integrity(self) -> bool:
        folder = Path(self.root) / self.base_folder
        return all((folder / f).is_file() for f, _ in self.train_list + self.test_list)

    def _load_meta(self) -> None:
        path = Path(self.root) / self.base_folder / self.meta["filename"]
        with open(path, "rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


class CIFAR10Files(_CIFARFiles, tvd.CIFAR10):
    """torchvision's CIFAR-10 on ``root/cifar-10-batches-py`` (python pickle batches)."""


class CIFAR100Files(_CIFARFiles, tvd.CIFAR100):
    """torchvision's CIFAR-100 on ``root/cifar-100-python`` (``train``, ``test``, ``meta``)."""


class Flowers102Files(tvd.Flowers102):
    """torchvision's Flowers-102 on ``root/flowers-102/{jpg/, imagelabels.mat, setid.mat}``."""

    def _check_integrity(self) -> bool:
        return self._images_folder.is_dir() and all(
            (self._base_folder / self._file_dict[k][0]).is_file() for k in ("label", "setid")
        )


def _cifar(cls) -> Builder:
    def build(root: str, split: str, download: bool) -> Dataset:
        folder = Path(root) / cls.base_folder
        if not download:
            files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
            _require(
                [folder / f for f in files],
                cls.__name__,
                "Expected the official python version "
                f"extracted under {root} (or pass --download).",
            )
        return cls(root, train=split == "train", download=download)

    return build


def _flowers(root: str, split: str, download: bool) -> Dataset:
    base = Path(root) / "flowers-102"
    if not download:
        _require(
            [base / "jpg", base / "imagelabels.mat", base / "setid.mat"],
            "Flowers-102",
            f"Expected 102flowers.tgz extracted and the two .mat files in {base} (or --download).",
        )
    return Flowers102Files(root, split=split, download=download)


def _pets(root: str, split: str, download: bool) -> Dataset:
    base = Path(root) / "oxford-iiit-pet"
    if not download:
        _require(
            [base / "images", base / "annotations" / f"{split}.txt"],
            "Oxford-IIIT Pets",
            f"Expected images.tar.gz and annotations.tar.gz extracted in {base} (or --download).",
        )
    return tvd.OxfordIIITPet(root, split=split, download=download)


def _image_folder(root: str, split: str, download: bool) -> Dataset:
    if download:
        raise ConfigError(
            "an image folder cannot be downloaded; arrange it as ROOT/SPLIT/CLASS/IMAGE"
        )
    folder = Path(root) / split
    _require([folder], "image folder", "Expected ROOT/SPLIT/CLASS/IMAGE files.")
    return tvd.ImageFolder(str(folder))


_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class _IdxDataset(Dataset):
    """MNIST-format idx files (optionally gzipped) in one flat folder, as Debian ships them."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> None:
        self.data, self.targets, self.classes = images, labels.astype(np.int64), list(classes)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return Image.fromarray(self.data[index], mode="L"), int(self.targets[index])


def _mnist(cls) -> Builder:
    def build(root: str, split: str, download: bool) -> Dataset:
        torchvision_raw = Path(root) / cls.__name__ / "raw"
        if download or (torchvision_raw / _MNIST_FILES[split][0]).is_file():
            return cls(root, train=split == "train", download=download)
        # The flat layout (e.g. Debian's dataset-fashion-mnist): FILE or FILE.gz in root.
        from bitdet.data.fashion_mnist import read_idx

        paths = []
        for stem in _MNIST_FILES[split]:
            found = [Path(root) / f for f in (stem, stem + ".gz") if (Path(root) / f).is_file()]
            if not found:
                raise FileNotFoundError(
                    f"{cls.__name__}: neither {torchvision_raw / stem} (torchvision layout) nor "
                    f"{Path(root) / stem}[.gz] (flat idx files) exists (or pass --download)"
                )
            paths.append(found[0])
        return _IdxDataset(
            np.asarray(read_idx(paths[0])), np.asarray(read_idx(paths[1])), cls.classes
        )

    return build


class SklearnDigits(Dataset):
    """scikit-learn's 1,797 real 8x8 handwritten digits as 8-bit grayscale images.

    The train/test split is deterministic and stratified: a fixed permutation per class
    (seed ``split_seed``) puts ``test_fraction`` of each class in the test split.

    Args:
        split: ``"train"`` or ``"test"``.
        test_fraction: share of each class in the test split.
        split_seed: seed of the per-class permutation (changing it changes the benchmark).
    """

    classes = [str(i) for i in range(10)]

    def __init__(
        self, split: str = "train", test_fraction: float = 0.25, split_seed: int = 0
    ) -> None:
        from sklearn.datasets import load_digits

        if split not in ("train", "test"):
            raise ConfigError(f"digits split must be 'train' or 'test', got {split!r}")
        bunch = load_digits()
        # Pixel values are 0..16 (counts of set pixels in 4x4 blocks): stretch to 0..255.
        images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
        labels = bunch.target.astype(np.int64)
        rng = np.random.default_rng(split_seed)
        chosen: List[np.ndarray] = []
        for c in range(10):
            members = rng.permutation(np.flatnonzero(labels == c))
            n_test = int(round(len(members) * test_fraction))
            chosen.append(members[:n_test] if split == "test" else members[n_test:])
        self.indices = np.sort(np.concatenate(chosen))
        self.data, self.targets = images[self.indices], labels[self.indices]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return Image.fromarray(self.data[index], mode="L"), int(self.targets[index])


def _digits(root: str, split: str, download: bool) -> Dataset:
    return SklearnDigits(split)


class DigitsOnPhotos(SklearnDigits):
    """scikit-learn's digits drawn the way the demo's upstream data draws its object-like items.

    Each digit, upsampled to 28 px (the Fashion-MNIST item size), is placed at a side of
    ``scale_range`` x ``size`` and a random position on a ``size`` px canvas; with probability
    ``photo_prob`` it is tinted and pasted on a scikit-image photo crop, else it stays grey on
    black (:func:`bitdet.data.detection_generate.item_on_canvas`). The defaults are the demo
    upstream config's ``INPUT.ITEM_SCALE`` and ``INPUT.PHOTO_PROB``: new classes in a look the
    upstream model has seen, BiT's setting. Image ``i`` of a split is drawn from
    ``(draw_seed, split, i)``: a fixed dataset, not an augmentation.
    """

    def __init__(
        self,
        split: str = "train",
        size: int = 32,
        scale_range: Tuple[float, float] = (0.4, 1.0),
        photo_prob: float = 0.75,
        draw_seed: int = 0,
    ) -> None:
        super().__init__(split)
        self.data = _draw_digits(split, size, tuple(scale_range), float(photo_prob), draw_seed)

    def __getitem__(self, index: int):
        return Image.fromarray(self.data[index], mode="RGB"), int(self.targets[index])


@functools.lru_cache(maxsize=4)
def _draw_digits(
    split: str, size: int, scale_range: Tuple[float, float], photo_prob: float, draw_seed: int
) -> np.ndarray:
    """The drawn images of a :class:`DigitsOnPhotos` split (cached: a few-shot sweep reuses
    them)."""
    from bitdet.data.detection_generate import item_on_canvas

    drawn = []
    for i, digit in enumerate(SklearnDigits(split).data):
        item = np.asarray(Image.fromarray(digit).resize((28, 28), Image.BILINEAR))
        rng = np.random.default_rng([draw_seed, ("train", "test").index(split), i])
        drawn.append(item_on_canvas(item, rng, size, scale_range, bool(rng.random() < photo_prob)))
    drawn = np.stack(drawn)
    drawn.flags.writeable = False
    return drawn


def _digits_on_photos(root: str, split: str, download: bool) -> Dataset:
    return DigitsOnPhotos(split)


_ONE_SPLIT = ("train", "test")
register_dataset(
    DatasetSpec("cifar10", _cifar(CIFAR10Files), "train", "test", _ONE_SPLIT, (32, 32))
)
register_dataset(
    DatasetSpec("cifar100", _cifar(CIFAR100Files), "train", "test", _ONE_SPLIT, (32, 32))
)
register_dataset(
    DatasetSpec("oxford_pets", _pets, "trainval", "test", ("trainval", "test"), (375, 500))
)
register_dataset(
    DatasetSpec("flowers102", _flowers, "train", "test", ("train", "val", "test"), (500, 600))
)
# ILSVRC-2012 as extracted folders: ROOT/train/<wnid>/*.JPEG and ROOT/val/<wnid>/*.JPEG.
register_dataset(
    DatasetSpec("imagenet", _image_folder, "train", "val", ("train", "val"), (375, 500))
)
register_dataset(
    DatasetSpec("imagefolder", _image_folder, "train", "val", ("train", "val", "test"))
)
register_dataset(
    DatasetSpec("mnist", _mnist(tvd.MNIST), "train", "test", _ONE_SPLIT, (28, 28), flip=False)
)
register_dataset(
    DatasetSpec(
        "fashion_mnist",
        _mnist(tvd.FashionMNIST),
        "train",
        "test",
        _ONE_SPLIT,
        (28, 28),
        default_root="/usr/share/datasets/fashion-mnist",
    )
)
# Digits (here and MNIST): a mirrored digit is not a digit (or is another one); no flips.
# The data ships inside scikit-learn, so the root is only a marker and is ignored.
register_dataset(
    DatasetSpec(
        "digits",
        _digits,
        "train",
        "test",
        _ONE_SPLIT,
        (8, 8),
        flip=False,
        default_root="<sklearn>",
        description="scikit-learn's 8x8 handwritten digits, plain (grey on black)",
    )
)
register_dataset(
    DatasetSpec(
        "digits_on_photos",
        _digits_on_photos,
        "train",
        "test",
        _ONE_SPLIT,
        (32, 32),
        flip=False,
        default_root="<sklearn>",
        description="scikit-learn's 8x8 handwritten digits drawn like the demo upstream's "
        "object-like items: new classes in a look the upstream model has seen",
    )
)
