"""WebDataset tar shards: write them (with an index), read them with random access, or stream them.

Sample layout (WebDataset convention: members grouped by key, the part before the first dot)::

    <key>.jpg | .jpeg | .png | .webp     the original encoded image bytes (not re-encoded)
    <key>.cls                             one class index, e.g. "3"
    <key>.labels                          several class indices, e.g. "3,17,42" (multi-label)

Two readers, chosen by ``DATASETS.*.ROOT`` (:func:`is_stream`):

* Local paths (brace pattern or comma list): :class:`ShardDataset`, random access. Each
  sample is read by seeking to its offset, taken from the index ``<shard>.idx`` that
  :func:`write_shards` writes beside each shard (without one, the tar headers are scanned at
  start-up). A map-style dataset: the trainer's per-rank sampler applies unchanged and
  resumption is exact to the sample.
* ``pipe:`` commands and URLs (``http://``, ``s3://`` through ``pipe:``, ``file:``):
  :class:`StreamingShards`, streamed through the ``webdataset`` library (pattern as
  WebDataset takes it: braces, ``::`` between patterns). What is exact on resume: see its
  docstring.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tarfile
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import braceexpand
import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from bitdet.data.images import decode_image
from bitdet.engine.data import sample_seed
from bitdet.errors import ConfigError, DataError
from bitdet.utils.io import write_json

__all__ = [
    "IMAGE_EXTENSIONS",
    "INDEX_SUFFIX",
    "ShardDataset",
    "StreamingShards",
    "expand_shards",
    "index_shard",
    "is_stream",
    "write_index",
    "write_shards",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
Labels = Union[int, Sequence[int]]
INDEX_SUFFIX = ".idx"
_INDEX_FORMAT = "bitdet-shard-index-1"
_STREAM = re.compile(r"^(pipe:|file:|[a-z][a-z0-9+.-]*://)", re.I)
# Per sample of a shard: (image offset, image size, image member name, label text).
IndexEntry = Tuple[int, int, str, str]


def is_stream(pattern: str) -> bool:
    """Whether ``pattern`` names streamed shards (``pipe:``, ``file:`` or a URL) rather than
    local files."""
    return bool(_STREAM.match(pattern.strip()))


def expand_shards(pattern: str) -> List[str]:
    """Shard paths from a brace pattern (``train-{000000..000009}.tar``) or a comma list."""
    paths: List[str] = []
    for part in pattern.split(","):
        paths.extend(braceexpand.braceexpand(part.strip()))
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise FileNotFoundError(
            f"{len(missing)} of {len(paths)} shards of {pattern!r} not found: "
            f"{', '.join(missing[:5])}{more}"
        )
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
                raise DataError(
                    f"{path}: unsupported image extension {ext!r} "
                    f"(expected one of {IMAGE_EXTENSIONS})"
                )
            with open(path, "rb") as f:
                sample = {"__key__": f"{i:09d}", ext: f.read()}
            if isinstance(labels, (list, tuple)):
                sample["labels"] = ",".join(str(int(v)) for v in labels)
            else:
                sample["cls"] = str(int(labels))
            sink.write(sample)
            if sink.fname and (not written or written[-1] != sink.fname):
                written.append(sink.fname)
    for shard in written:
        write_index(shard)
    return written


def index_shard(path: str) -> List[IndexEntry]:
    """Scan a tar's member headers (no image decoding): one entry per usable sample, in order.

    Raises:
        ValueError: ``path`` is not a readable uncompressed tar.
    """
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
        raise DataError(f"{path} is not a readable uncompressed tar shard: {e}") from e
    out = []
    for key in order:
        g = groups[key]
        if "image" not in g or "label" not in g:
            logger.warning("%s: sample %s lacks an image or a label; ignored", path, key)
            continue
        offset, size, name = g["image"]
        out.append((offset, size, name, g["label"]))
    return out


def write_index(shard: str) -> str:
    """Write ``<shard>.idx`` (JSON: the shard's size and its samples' offsets and labels).

    Returns:
        The index path.
    """
    path = shard + INDEX_SUFFIX
    write_json(
        path,
        {
            "format": _INDEX_FORMAT,
            "shard_bytes": os.path.getsize(shard),
            "samples": [list(entry) for entry in index_shard(shard)],
        },
    )
    return path


def _read_index(shard: str) -> Optional[List[IndexEntry]]:
    """The samples of ``shard`` from its index, None without one.

    Raises:
        ValueError: the index is unreadable or was written for another version of the shard.
    """
    path = shard + INDEX_SUFFIX
    try:
        with open(path) as f:
            index = json.load(f)
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise DataError(
            f"{path}: unreadable shard index ({e}); delete it or rewrite it with "
            "python -m bitdet.tools.write_shards --index PATTERN"
        ) from None
    size = os.path.getsize(shard)
    if index.get("format") != _INDEX_FORMAT or index.get("shard_bytes") != size:
        raise DataError(
            f"{path} does not describe {shard} (index for {index.get('shard_bytes')} bytes, "
            f"shard has {size}); rewrite it with python -m bitdet.tools.write_shards --index "
            "PATTERN"
        )
    return [tuple(entry) for entry in index["samples"]]  # type: ignore[misc]


class _LabelledSamples:
    """Label settings and the image transform, shared by both shard readers."""

    def __init__(self, num_classes: int, multilabel: bool, transform: Optional[Callable]) -> None:
        if multilabel and num_classes <= 0:
            raise ConfigError("multi-label shards need num_classes > 0 (MODEL.NUM_CLASSES)")
        self.num_classes, self.multilabel, self.transform = num_classes, multilabel, transform

    def parse_target(self, text: str, where: str) -> Union[int, torch.Tensor]:
        """A sample's ``.cls`` / ``.labels`` text as a class index or a multi-hot vector."""
        labels = [int(v) for v in text.replace(" ", ",").split(",") if v]
        if not self.multilabel:
            if len(labels) != 1:
                raise DataError(
                    f"{where}: sample has labels {labels}; "
                    "set DATASETS.MULTILABEL True for several labels per image"
                )
            return labels[0]
        vec = torch.zeros(self.num_classes)
        bad = [v for v in labels if not 0 <= v < self.num_classes]
        if bad:
            raise DataError(f"labels {bad} outside [0, {self.num_classes}) in {where}")
        vec[labels] = 1.0
        return vec


class ShardDataset(_LabelledSamples, Dataset):
    """Random access to the samples of WebDataset tar shards on a seekable file system.

    Args:
        pattern: brace pattern or comma list of shard paths.
        num_classes: needed for multi-label targets (multi-hot vectors of this size).
        multilabel: return multi-hot float targets (from ``.labels`` or ``.cls``).
        transform: applied to the decoded RGB ``PIL`` image.

    ``dataset[i]`` is ``(transform(image), target)``, or ``None`` when the image is unusable
    (the trainer skips and counts it). Offsets come from each shard's ``.idx`` index when
    present, else from a scan of its tar headers.
    """

    def __init__(
        self,
        pattern: str,
        num_classes: int = 0,
        multilabel: bool = False,
        transform: Optional[Callable] = None,
    ) -> None:
        super().__init__(num_classes, multilabel, transform)
        self.shards = expand_shards(pattern)
        # Per sample: (shard index, image offset, image size, image name, label text).
        self.index: List[Tuple[int, int, int, str, str]] = []
        scanned = 0
        for s, shard in enumerate(self.shards):
            entries = _read_index(shard)
            if entries is None:
                entries, scanned = index_shard(shard), scanned + 1
            self.index.extend((s, *entry) for entry in entries)
        if scanned:
            logger.info(
                "scanned the tar headers of %d of %d shards (no %s index beside them; "
                "python -m bitdet.tools.write_shards --index PATTERN writes them)",
                scanned,
                len(self.shards),
                INDEX_SUFFIX,
            )
        if not self.index:
            raise DataError(f"no samples with an image and a .cls/.labels member in {pattern!r}")

    def __len__(self) -> int:
        return len(self.index)

    def target(self, index: int) -> Union[int, torch.Tensor]:
        """The label(s) of sample ``index`` (no image read)."""
        entry = self.index[index]
        return self.parse_target(entry[4], self.shards[entry[0]])

    def __getitem__(self, index: int):
        shard, offset, size, name, _ = self.index[index]
        source = f"{self.shards[shard]}:{name}"
        with open(self.shards[shard], "rb") as f:
            f.seek(offset)
            data = f.read(size)
        img = (
            decode_image(data, source=source)
            if len(data) == size
            else decode_image(b"", source=source)
        )
        if img is None:
            return None
        return (self.transform(img) if self.transform else img), self.target(index)


class StreamingShards(_LabelledSamples, IterableDataset):
    """Shards streamed through the ``webdataset`` library (``pipe:`` commands, URLs).

    Iterating it once reads every shard once, in order, split between DataLoader workers:
    that is the evaluation pass. Training uses :meth:`for_rank`, an endless stream per rank:

    * Shard order: epoch ``e`` visits the shards in the permutation ``perm(seed, e)``; rank
      ``r`` of ``W`` takes every ``W``-th shard of it (from the ``r``-th) and DataLoader
      worker ``w`` of ``N`` every ``N``-th of those. Samples within a shard keep their order
      (:func:`write_shards` shuffles them across shards when writing).
    * Randomness per shard: the augmentation of sample ``i`` of shard ``k`` in epoch ``e`` is
      seeded from ``(seed, e, k, i)``.
    * Batches: step ``s`` takes worker ``s mod N``'s next ``B / W`` samples (PyTorch's
      DataLoader serves workers' batches in turn).

    Resumption is therefore exact to the sample, given the same world size ``W``, worker count
    ``N`` and seed: a run resumed at step ``s`` skips, per worker, the samples its steps before
    ``s`` consumed, reading them without decoding (for ``pipe:`` / URL sources the skipped part
    of the current shards is transferred again). A "epoch" is one pass of a worker over its
    shards. Each worker needs at least one shard: ``W * N`` must not exceed the shard count.

    Args:
        pattern: WebDataset URL pattern, e.g. ``"pipe:cat /data/train-{000000..000099}.tar"``.
        num_classes, multilabel, transform: as for :class:`ShardDataset`.
        num_samples: total samples when known (for epochs in the logs; optional).
        max_samples: the evaluation pass stops after this many samples (in shard order).
    """

    def __init__(
        self,
        pattern: str,
        num_classes: int = 0,
        multilabel: bool = False,
        transform: Optional[Callable] = None,
        num_samples: Optional[int] = None,
        max_samples: Optional[int] = None,
    ) -> None:
        from webdataset.shardlists import expand_urls

        super().__init__(num_classes, multilabel, transform)
        self.urls = expand_urls(pattern)
        if not self.urls:
            raise DataError(f"no shards in {pattern!r}")
        self.pattern, self.num_samples, self.max_samples = pattern, num_samples, max_samples
        self._share: Optional[Tuple[int, int, int, int, int]] = (
            None  # rank, world, batch, start step, seed
        )

    def for_rank(
        self, rank: int, world_size: int, local_batch: int, start_step: int, seed: int
    ) -> "StreamingShards":
        """The endless training stream of ``rank`` from ``start_step`` on (see the class
        docstring)."""
        stream = StreamingShards(
            self.pattern, self.num_classes, self.multilabel, self.transform, self.num_samples
        )
        stream._share = (rank, world_size, local_batch, start_step, seed)
        return stream

    def describe_share(self, num_workers: int) -> str:
        """Which shards this rank's stream reads first (for the log)."""
        rank, world, _, start_step, seed = self._share or (0, 1, 0, 0, 0)
        workers = max(num_workers, 1)
        first = [
            self.shards_of(0, seed, rank * workers + w, world * workers) for w in range(workers)
        ]
        return (
            f"shards {sorted(k for ks in first for k in ks)} of {len(self.urls)} in epoch 0, "
            f"from step {start_step}"
        )

    def shards_of(self, epoch: int, seed: int, unit: int, units: int) -> List[int]:
        """Shard numbers read in ``epoch`` by stream ``unit`` of ``units`` (rank-major, then
        worker)."""
        order = np.random.Generator(
            np.random.PCG64(np.random.SeedSequence([seed, 4, epoch]))
        ).permutation(len(self.urls))
        return [int(k) for k in order[unit::units]]

    def _samples(self, shard: int) -> Iterator[Dict[str, object]]:
        from webdataset.tariterators import tarfile_samples

        return tarfile_samples([{"url": self.urls[shard]}])

    def _decode(self, sample: Dict[str, object], seed: Optional[int]):
        where = f"{sample.get('__url__')}:{sample.get('__key__')}"
        ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
        label = sample.get("cls", sample.get("labels"))
        if ext is None or label is None:
            logger.warning("%s lacks an image or a .cls/.labels member; skipped", where)
            return None
        target = self.parse_target(bytes(label).decode().strip(), where)
        img = decode_image(bytes(sample[ext]), source=where)
        if img is None:
            return None
        if self.transform is None:
            return img, target
        if seed is None:
            return self.transform(img), target
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(img), target

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if self._share is None:  # one pass over every shard (evaluation)
            if self.max_samples:  # the first max_samples in shard order: one reader
                if worker == 0:
                    samples = (x for shard in range(len(self.urls)) for x in self._samples(shard))
                    for _, sample in zip(range(self.max_samples), samples):
                        yield self._decode(sample, None)
                return
            for shard in range(worker, len(self.urls), workers):
                for sample in self._samples(shard):
                    yield self._decode(sample, None)
            return
        rank, world, batch, start_step, seed = self._share
        units = world * workers
        if units > len(self.urls):
            raise ConfigError(
                f"{len(self.urls)} shards in {self.pattern!r} cannot feed {world} process(es) x "
                f"{workers} data-loader worker(s): each needs a shard (write more, smaller "
                "shards or lower DATALOADER.NUM_WORKERS)"
            )
        # Steps before start_step that this worker served: s < start_step with
        # s % workers == worker.
        skip = max(0, math.ceil((start_step - worker) / workers)) * batch
        unit = rank * workers + worker
        epoch = 0
        while True:
            read = 0
            for shard in self.shards_of(epoch, seed, unit, units):
                for i, sample in enumerate(self._samples(shard)):
                    read += 1
                    if skip:
                        skip -= 1
                        continue
                    yield self._decode(sample, sample_seed(seed, epoch, (shard << 32) | i))
            if not read:
                raise DataError(
                    f"the shards of {self.pattern!r} that rank {rank} (worker {worker}) reads "
                    "hold no samples"
                )
            epoch += 1
