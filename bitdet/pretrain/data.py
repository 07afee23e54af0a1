"""Pretraining data: BiT's transforms and the dataset sources named by ``DATASETS.*.NAME``.

Every source returns ``(CHW float tensor in [-1, 1], target)`` or ``None`` for an unusable
image; the trainer skips and counts those.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, List, Optional, Tuple, Union

import torch
from torch.utils.data import Dataset, Subset
from torchvision.transforms import v2 as T

from bitdet.data.fashion_mnist import DEFAULT_ROOT as FASHION_MNIST_ROOT
from bitdet.data.fashion_mnist import FashionMNIST
from bitdet.data.fashion_photos import FashionMNISTOnPhotos
from bitdet.data.images import ToBiTTensor, load_image
from bitdet.errors import ConfigError, DataError
from bitdet.pretrain.shards import IMAGE_EXTENSIONS, ShardDataset, StreamingShards, is_stream

__all__ = [
    "ImageFolderDataset",
    "LabelFileDataset",
    "build_dataset",
    "eval_transform",
    "read_label_file",
    "train_transform",
]


def train_transform(
    size: int, scale: Tuple[float, float] = (0.08, 1.0), flip: bool = True
) -> Callable:
    """Inception-style random-resized crop to ``size``, optional horizontal flip, [-1, 1]."""
    ops: List[Callable] = [T.RandomResizedCrop(size, scale=tuple(scale), antialias=True)]
    if flip:
        ops.append(T.RandomHorizontalFlip())
    return T.Compose(ops + [ToBiTTensor()])  # uint8 [0, 255] -> float [-1, 1], BiT's input scaling


def eval_transform(resize: int, crop: int) -> Callable:
    """Resize the shorter side to ``resize``, centre-crop ``crop``, [-1, 1]."""
    return T.Compose([T.Resize(resize, antialias=True), T.CenterCrop(crop), ToBiTTensor()])


class _FileDataset(Dataset):
    """Images on disk with labels; unusable files give ``None``."""

    def __init__(
        self,
        samples: List[Tuple[str, Union[int, List[int]]]],
        num_classes: int,
        multilabel: bool,
        transform: Optional[Callable],
    ) -> None:
        self.samples, self.num_classes, self.multilabel, self.transform = (
            samples,
            num_classes,
            multilabel,
            transform,
        )

    def __len__(self) -> int:
        return len(self.samples)

    def target(self, index: int) -> Union[int, torch.Tensor]:
        labels = self.samples[index][1]
        if not self.multilabel:
            return labels if isinstance(labels, int) else labels[0]
        vec = torch.zeros(self.num_classes)
        vec[[labels] if isinstance(labels, int) else list(labels)] = 1.0
        return vec

    def __getitem__(self, index: int):
        img = load_image(self.samples[index][0])
        if img is None:
            return None
        return (self.transform(img) if self.transform else img), self.target(index)


class ImageFolderDataset(_FileDataset):
    """``root/<class name>/<image>`` (classes sorted by name, as torchvision's ImageFolder).

    Unlike torchvision's, an unreadable image yields ``None`` instead of raising.
    """

    def __init__(
        self,
        root: Union[str, os.PathLike],
        transform: Optional[Callable] = None,
        num_classes: int = 0,
        multilabel: bool = False,
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {root} does not exist (DATASETS.*.ROOT)")
        self.classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        if not self.classes:
            raise DataError(f"{root} has no class sub-folders (expected root/<class>/<image>)")
        samples = []
        for label, name in enumerate(self.classes):
            for path in sorted((root / name).rglob("*")):
                if path.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS:
                    samples.append((str(path), label))
        if not samples:
            raise DataError(f"no images with extensions {IMAGE_EXTENSIONS} under {root}")
        super().__init__(samples, num_classes or len(self.classes), multilabel, transform)


def read_label_file(path: Union[str, os.PathLike]) -> List[Tuple[str, List[int]]]:
    """Parse ``relative/path<TAB or spaces>label[,label...]`` lines (``#`` comments allowed).

    Paths are relative to the label file's folder.
    """
    path = Path(path)
    out = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.rsplit(None, 1)
        try:
            labels = [int(v) for v in parts[1].split(",") if v != ""]
        except (IndexError, ValueError):
            raise DataError(
                f"{path}:{n}: expected 'path<TAB>label[,label...]' with integer labels, "
                f"got {line!r}"
            ) from None
        out.append((str(path.parent / parts[0]), labels))
    if not out:
        raise DataError(f"{path} lists no samples")
    return out


class LabelFileDataset(_FileDataset):
    """Images listed in a label file (see :func:`read_label_file`), one or several labels each."""

    def __init__(
        self,
        label_file: Union[str, os.PathLike],
        num_classes: int,
        multilabel: bool = False,
        transform: Optional[Callable] = None,
    ) -> None:
        samples = read_label_file(label_file)
        bad = [
            (p, labels) for p, labels in samples if any(not 0 <= v < num_classes for v in labels)
        ]
        if bad:
            raise DataError(
                f"{label_file}: {len(bad)} sample(s) have labels outside [0, {num_classes}), "
                f"e.g. {bad[0]} (MODEL.NUM_CLASSES = {num_classes})"
            )
        if not multilabel and any(len(labels) != 1 for _, labels in samples):
            raise DataError(
                f"{label_file} has samples with several labels; set DATASETS.MULTILABEL True"
            )
        super().__init__(samples, num_classes, multilabel, transform)


def build_dataset(spec, *, train: bool, cfg) -> Dataset:
    """The dataset that a ``DATASETS.TRAIN`` / ``DATASETS.TEST`` node describes.

    Args:
        spec: the node (NAME, ROOT, SPLIT, MAX_SAMPLES).
        train: training transforms (random crop, flip) or evaluation ones.
        cfg: the full config (INPUT.*, MODEL.NUM_CLASSES, DATASETS.MULTILABEL).

    Returns:
        A map-style dataset of ``(image, target)`` (or ``None`` for unusable images); for
        ``webdataset`` shards given as ``pipe:`` / URL patterns, a :class:`StreamingShards`.
    """
    size = cfg.INPUT.CROP_SIZE
    transform = (
        train_transform(size, cfg.INPUT.CROP_SCALE, cfg.INPUT.RANDOM_FLIP)
        if train
        else eval_transform(cfg.INPUT.TEST_RESIZE, size)
    )
    name, root = spec.NAME, spec.ROOT
    num_classes, multilabel = cfg.MODEL.NUM_CLASSES, cfg.DATASETS.MULTILABEL
    if name in ("fashion_mnist", "fashion_mnist_photos"):
        if num_classes != 10 or multilabel:
            raise ConfigError(
                "Fashion-MNIST has 10 classes, one per image: set MODEL.NUM_CLASSES 10, "
                "DATASETS.MULTILABEL False"
            )
        if name == "fashion_mnist":
            dataset: Dataset = FashionMNIST(root or FASHION_MNIST_ROOT, spec.SPLIT, transform)
        else:  # the canvas is drawn at CROP_SIZE: no resize or crop, only the flip and [-1, 1]
            ops = [T.RandomHorizontalFlip()] if train and cfg.INPUT.RANDOM_FLIP else []
            dataset = FashionMNISTOnPhotos(
                root or FASHION_MNIST_ROOT,
                spec.SPLIT,
                size,
                cfg.INPUT.ITEM_SCALE,
                cfg.INPUT.PHOTO_PROB,
                T.Compose(ops + [ToBiTTensor()]),
                seed=None if train else cfg.SEED,
                plain_prob=cfg.INPUT.PLAIN_PROB,
            )
    elif name == "imagefolder":
        dataset = ImageFolderDataset(root, transform, num_classes, multilabel)
        if len(dataset.classes) > num_classes:
            raise ConfigError(
                f"{root} has {len(dataset.classes)} classes but MODEL.NUM_CLASSES is {num_classes}"
            )
    elif name == "labelfile":
        dataset = LabelFileDataset(root, num_classes, multilabel, transform)
    elif name == "webdataset" and is_stream(root):
        if spec.MAX_SAMPLES and train:
            raise ConfigError(
                f"MAX_SAMPLES cannot subset the streamed training shards {root!r}: set it to 0 and "
                "list fewer shards"
            )
        # held-out: the first MAX_SAMPLES samples in shard order (a stream has no random subset)
        return StreamingShards(
            root, num_classes, multilabel, transform, max_samples=spec.MAX_SAMPLES or None
        )
    elif name == "webdataset":
        dataset = ShardDataset(root, num_classes, multilabel, transform)
    else:
        raise ConfigError(f"unknown dataset NAME {name!r}")
    if spec.MAX_SAMPLES and spec.MAX_SAMPLES < len(dataset):
        # A fixed random subset: the first N of a class-sorted folder would miss classes.
        keep = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[
            : spec.MAX_SAMPLES
        ]
        dataset = Subset(dataset, sorted(keep.tolist()))
    return dataset
