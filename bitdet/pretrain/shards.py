"""WebDataset tar shards: write them, and read them with random access.

Sample layout (WebDataset convention: members grouped by key, the part before the first dot)::

    <key>.jpg | .jpeg | .png | .webp     the original encoded image bytes (not re-encoded)
    <key>.cls                             one class index, e.g. "3"
    <key>.labels                          several class indices, e.g. "3,17,42" (multi-label)

:class:`ShardDataset` indexes each tar's member headers once (no decoding) and then reads a
sample by seeking to its offset. That makes shards a map-style dataset: the trainer's
deterministic, per-rank sampler applies unchanged (each rank reads only its own samples) and
resumption is exact. Shards must be on a seekable file system (local disk, NFS, Lustre);
streaming from object stores is not covered.
"""
from __future__ import annotations

import logging
import os
import tarfile
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence, Tuple, Union

import braceexpand
import torch
from torch.utils.data import Dataset

from bitdet.data.images import decode_image

__all__ = ["IMAGE_EXTENSIONS", "ShardDataset", "expand_shards", "write_shards"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
Labels = Union[int, Sequence[int]]


def expand_shards(pattern: str) -> List[str]:
    """Shard paths from a brace pattern (``train-{000000..000009}.tar``) or a comma list."""
    paths: List[str] = []
    for part in pattern.split(","):
        paths.extend(braceexpand.braceexpand(part.strip()))
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise FileNotFoundError(f"{len(missing)} of {len(paths)} shards of {pattern!r} not found: "
                                f"{', '.join(missing[:5])}{more}")
    return paths


def write_shards(
    samples: Iterable[Tuple[str, Labels]],
    pattern: str,
    max_count: int = 1000,
    max_size: float = 1e9,
) -> List[str]:
    """Write ``(image_path, labels)`` samples into tar shards with the original image bytes.

    Args:
        samples: image file and its label (an int: ``.cls``) or labels (a list: ``.labels``).
        pattern: output pattern with a ``%`` field, e.g. ``"out/train-%06d.tar"``.
        max_count: samples per shard.
        max_size: bytes per shard (a new shard starts when either limit is reached).

    Returns:
        The shard paths written.
    """
    import webdataset as wds

    Path(pattern).parent.mkdir(parents=True, exist_ok=True)
    written: List[str] = []
    with wds.ShardWriter(pattern, maxcount=max_count, maxsize=max_size, verbose=0) as sink:
        for i, (path, labels) in enumerate(samples):
            ext = Path(path).suffix.lower().lstrip(".") or "jpg"
            if ext not in IMAGE_EXTENSIONS:
                raise ValueError(f"{path}: unsupported image extension {ext!r} (expected one of {IMAGE_EXTENSIONS})")
            with open(path, "rb") as f:
                sample = {"__key__": f"{i:09d}", ext: f.read()}
            if isinstance(labels, (list, tuple)):
                sample["labels"] = ",".join(str(int(v)) for v in labels)
            else:
                sample["cls"] = str(int(labels))
            sink.write(sample)
            if sink.fname and (not written or written[-1] != sink.fname):
                written.append(sink.fname)
    return written


class ShardDataset(Dataset):
    """Random access to the samples of WebDataset tar shards.

    Args:
        pattern: brace pattern or comma list of shard paths.
        num_classes: needed for multi-label targets (multi-hot vectors of this size).
        multilabel: return multi-hot float targets (from ``.labels`` or ``.cls``).
        transform: applied to the decoded RGB ``PIL`` image.

    ``dataset[i]`` is ``(transform(image), target)``, or ``None`` when the image is unusable
    (the trainer skips and counts it).
    """

    def __init__(
        self,
        pattern: str,
        num_classes: int = 0,
        multilabel: bool = False,
        transform: Optional[Callable] = None,
    ) -> None:
        if multilabel and num_classes <= 0:
            raise ValueError("multi-label shards need num_classes > 0 (MODEL.NUM_CLASSES)")
        self.shards = expand_shards(pattern)
        self.num_classes, self.multilabel, self.transform = num_classes, multilabel, transform
        # Per sample: (shard index, image offset, image size, image name, label text).
        self.index: List[Tuple[int, int, int, str, str]] = []
        for s, shard in enumerate(self.shards):
            self.index.extend((s, *entry) for entry in self._index_shard(shard))
        if not self.index:
            raise ValueError(f"no samples with an image and a .cls/.labels member in {pattern!r}")

    @staticmethod
    def _index_shard(path: str) -> List[Tuple[int, int, str, str]]:
        groups: dict = {}
        order: List[str] = []
        try:
            with tarfile.open(path, "r:") as tar:  # uncompressed: offsets must be seekable
                for member in tar:
                    if not member.isfile():
                        continue
                    base = os.path.basename(member.name)
                    key, _, ext = base.partition(".")
                    key = os.path.join(os.path.dirname(member.name), key)
                    if key not in groups:
                        groups[key] = {}
                        order.append(key)
                    if ext.lower() in ("cls", "labels"):
                        groups[key]["label"] = tar.extractfile(member).read().decode().strip()
                    elif ext.lower() in IMAGE_EXTENSIONS:
                        groups[key]["image"] = (member.offset_data, member.size, member.name)
        except tarfile.TarError as e:
            raise ValueError(f"{path} is not a readable uncompressed tar shard: {e}") from e
        out = []
        for key in order:
            g = groups[key]
            if "image" not in g or "label" not in g:
                logger.warning("%s: sample %s lacks an image or a label; ignored", path, key)
                continue
            offset, size, name = g["image"]
            out.append((offset, size, name, g["label"]))
        return out

    def __len__(self) -> int:
        return len(self.index)

    def target(self, index: int) -> Union[int, torch.Tensor]:
        """The label(s) of sample ``index`` (no image read)."""
        text = self.index[index][4]
        labels = [int(v) for v in text.replace(" ", ",").split(",") if v]
        if not self.multilabel:
            if len(labels) != 1:
                raise ValueError(f"{self.shards[self.index[index][0]]}: sample has labels {labels}; "
                                 "set DATASETS.MULTILABEL True for several labels per image")
            return labels[0]
        vec = torch.zeros(self.num_classes)
        bad = [v for v in labels if not 0 <= v < self.num_classes]
        if bad:
            raise ValueError(f"labels {bad} outside [0, {self.num_classes}) in {self.shards[self.index[index][0]]}")
        vec[labels] = 1.0
        return vec

    def __getitem__(self, index: int):
        shard, offset, size, name, _ = self.index[index]
        source = f"{self.shards[shard]}:{name}"
        with open(self.shards[shard], "rb") as f:
            f.seek(offset)
            data = f.read(size)
        img = decode_image(data, source=source) if len(data) == size else decode_image(b"", source=source)
        if img is None:
            return None
        return (self.transform(img) if self.transform else img), self.target(index)
