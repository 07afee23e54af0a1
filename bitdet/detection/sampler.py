"""A detection training stream that resumes exactly: order, grouping and augmentation.

Detectron2's ``TrainingSampler`` restarts its shuffled stream when a run resumes, its
aspect-ratio buckets and the augmentation generators (NumPy's global state in each
DataLoader worker) are not in the checkpoint, and ``MapDataset`` replaces an unreadable
image through a per-worker generator. A resumed run therefore sees other images and flips
than an uninterrupted one. Here the stream is a pure function of ``(seed, rank, world size,
batches consumed)``:

- the global stream is the concatenation of per-epoch permutations ``perm(seed, epoch)``;
  rank ``r`` of ``W`` takes positions ``r, r + W, r + 2W, ...`` (as ``TrainingSampler``);
- with ``DATALOADER.ASPECT_RATIO_GROUPING`` each rank fills two buckets (wide / tall images,
  as Detectron2's ``AspectRatioGroupedDataset``) and emits a batch when one is full; the
  grouping runs in the sampler, in the main process, so it does not depend on workers;
- each sample is mapped with Python's, NumPy's and torch's generators seeded from
  ``(seed, epoch, position)``; an unreadable image is replaced by an index drawn from that
  same seed. Which worker maps a sample, and how far ahead workers prefetch, do not matter.

The checkpoint stores the seed, the stream's world size and the number of batches consumed
(:class:`DataStreamState`); ``--resume`` replays the bucket filling up to that batch (index
arithmetic only: no image is read or mapped) and continues from there. A run resumed with
another number of processes keeps the stream of the interrupted run: each iteration's global
batch is the concatenation of what that run's ranks would have read, split evenly between the
new processes.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from detectron2.data import build_detection_train_loader, get_detection_dataset_dicts
from detectron2.engine import HookBase
from detectron2.utils import comm
from torch.utils.data import DataLoader, Dataset, Sampler

from bitdet.engine.data import SeededDataset, epoch_permutation, sample_seed
from bitdet.engine.stop_signals import ignore_stop_signals
from bitdet.errors import ConfigError, DataError

__all__ = [
    "DataStreamState",
    "ResumableBatchSampler",
    "SeededMapDataset",
    "build_resumable_train_loader",
    "micro_batch_size",
    "split_micro_batches",
]

logger = logging.getLogger(__name__)

Item = Tuple[int, int]  # (dataset index, augmentation seed)


class ResumableBatchSampler(Sampler[List[Item]]):
    """This rank's batches of ``(dataset index, augmentation seed)``, resumable at any batch.

    Args:
        wide: per dataset index, whether the image is wider than tall (the bucket key);
            ``None`` disables aspect-ratio grouping.
        dataset_size: number of images.
        batch_size: images per batch on this rank.
        seed: base seed of the order and the augmentations; the same on every rank.
        rank, world_size: this process's share of the global stream.

    Attributes:
        stream_world_size: the number of ranks whose streams make up the global batch
            (``world_size`` unless a run of another size is resumed).
        start_batch: batches to skip (those consumed before a resume).
    """

    def __init__(
        self,
        dataset_size: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        wide: Optional[Sequence[bool]] = None,
    ) -> None:
        if dataset_size <= 0:
            raise DataError("the detection training set is empty (DATASETS.TRAIN)")
        if batch_size <= 0:
            raise ConfigError(f"batch size per process must be positive, got {batch_size}")
        if wide is not None and len(wide) != dataset_size:
            raise ValueError(f"{len(wide)} aspect-ratio flags for {dataset_size} images")
        self.n, self.batch_size, self.seed = dataset_size, batch_size, int(seed)
        self.rank, self.world_size = rank, world_size
        self.wide = None if wide is None else np.asarray(wide, dtype=bool)
        self.stream_world_size = world_size
        self.start_batch = 0

    def _positions(self, rank: int, world_size: int) -> Iterator[Tuple[int, int, int, int]]:
        """The stream of ``rank`` of ``world_size``: ``(index, epoch, position, bucket)`` per
        position."""
        epoch, pos, perm = -1, rank, None
        while True:
            e, offset = divmod(pos, self.n)
            if e != epoch:
                epoch, perm = e, epoch_permutation(self.seed, e, self.n)
            index = int(perm[offset])
            yield index, epoch, pos, 0 if self.wide is None else int(not self.wide[index])
            pos += world_size

    def _grouped(
        self, rank: int, world_size: int, batch_size: int
    ) -> Iterator[List[Tuple[int, int, int]]]:
        buckets: List[List[Tuple[int, int, int]]] = [[], []]
        for index, epoch, pos, b in self._positions(rank, world_size):
            buckets[b].append((index, epoch, pos))
            if len(buckets[b]) == batch_size:
                batch, buckets[b] = buckets[b], []
                yield batch

    def _own(self) -> Iterator[List[Tuple[int, int, int]]]:
        """This process's batches: its share of each global batch of ``stream_world_size`` ranks."""
        if self.stream_world_size == self.world_size:
            return self._grouped(self.rank, self.world_size, self.batch_size)
        global_batch = self.batch_size * self.world_size
        ranks = [
            self._grouped(r, self.stream_world_size, global_batch // self.stream_world_size)
            for r in range(self.stream_world_size)
        ]
        begin = self.rank * self.batch_size
        return (
            [item for part in parts for item in part][begin : begin + self.batch_size]
            for parts in zip(*ranks)
        )

    def resume(self, seed: int, batches: int, stream_world_size: int) -> None:
        """Continue the stream of ``seed`` read by ``stream_world_size`` ranks after ``batches``
        batches.

        Raises:
            ConfigError: the global batch does not split between ``stream_world_size`` ranks.
        """
        global_batch = self.batch_size * self.world_size
        if stream_world_size <= 0 or global_batch % stream_world_size:
            raise ConfigError(
                f"the checkpoint's data stream was read by {stream_world_size} process(es), "
                f"which a global batch of {global_batch} images (SOLVER.IMS_PER_BATCH) does not "
                "split between; resume with the interrupted run's SOLVER.IMS_PER_BATCH"
            )
        self.seed, self.start_batch, self.stream_world_size = (
            int(seed),
            int(batches),
            int(stream_world_size),
        )

    def _seeded(self, batch: List[Tuple[int, int, int]]) -> List[Item]:
        # The position, not the index, keys the seed: an image seen in two epochs gets
        # independent augmentations.
        return [(index, sample_seed(self.seed, epoch, pos)) for index, epoch, pos in batch]

    def batches(self) -> Iterator[List[Item]]:
        """The infinite stream of this rank's batches from batch 0."""
        return map(self._seeded, self._own())

    def __iter__(self) -> Iterator[List[Item]]:
        stream = self._own()
        for _ in range(self.start_batch):  # replay: index arithmetic, no image read, no seed drawn
            next(stream)
        return map(self._seeded, stream)


class SeededMapDataset(Dataset):
    """``ds[(index, seed)]`` maps ``dataset_dicts[index]`` with every generator seeded from
    ``seed``.

    A mapper result of ``None`` (an unreadable image, see
    :class:`~bitdet.detection.mapper.SkippingDatasetMapper`) is replaced by another image
    drawn with a generator of the same seed, so the replacement is reproducible too.
    """

    def __init__(
        self, dataset_dicts: Sequence[Dict[str, Any]], mapper: Callable[[Dict[str, Any]], Any]
    ) -> None:
        self.dataset_dicts, self.mapper = dataset_dicts, mapper
        self._seeded = SeededDataset(_Mapped(dataset_dicts, mapper))

    def __len__(self) -> int:
        return len(self.dataset_dicts)

    def __getitem__(self, item: Item) -> Any:
        index, seed = item
        replacements = np.random.default_rng(seed)
        for attempt in range(len(self.dataset_dicts)):
            out = self._seeded[(index, seed + attempt)]
            if out is not None:
                return out
            index = int(replacements.integers(len(self.dataset_dicts)))
        raise RuntimeError(
            f"no readable image after {len(self.dataset_dicts)} attempts; check DATASETS.TRAIN"
        )


class _Mapped(Dataset):
    def __init__(
        self, dataset_dicts: Sequence[Dict[str, Any]], mapper: Callable[[Dict[str, Any]], Any]
    ) -> None:
        self.dataset_dicts, self.mapper = dataset_dicts, mapper

    def __len__(self) -> int:
        return len(self.dataset_dicts)

    def __getitem__(self, index: int) -> Any:
        return self.mapper(self.dataset_dicts[index])


def micro_batch_size(ims_per_batch: int, world_size: int, batch_split: int) -> int:
    """Images per micro-batch: ``SOLVER.IMS_PER_BATCH`` (the global batch) shared by ``world_size``
    processes, each running its share as ``SOLVER.BATCH_SPLIT`` micro-batches.

    Raises:
        ConfigError: ``batch_split`` < 1, or the batch does not divide evenly; names the keys.
    """
    if batch_split < 1:
        raise ConfigError(
            f"SOLVER.BATCH_SPLIT must be a positive integer for detection, got {batch_split} (no "
            "automatic value: detection input sizes change from batch to batch)"
        )
    if ims_per_batch <= 0 or ims_per_batch % (world_size * batch_split):
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH={ims_per_batch} is not divisible by {world_size} process(es) x "
            f"SOLVER.BATCH_SPLIT={batch_split}"
        )
    return ims_per_batch // (world_size * batch_split)


def split_micro_batches(share: List[Any], batch_split: int) -> List[List[Any]]:
    """This process's batch ``share`` as ``batch_split`` consecutive micro-batches of equal size."""
    if len(share) % batch_split:
        raise ConfigError(
            f"a batch of {len(share)} images does not split into SOLVER.BATCH_SPLIT={batch_split} "
            "equal micro-batches"
        )
    size = len(share) // batch_split
    return [share[i : i + size] for i in range(0, len(share), size)]


def _as_list(batch: List[Any]) -> List[Any]:
    return batch  # Detectron2 models take a list of dicts: no collation


def build_resumable_train_loader(cfg, mapper: Callable[[Dict[str, Any]], Any]) -> Any:
    """The training loader for ``cfg``: resumable for ``DATALOADER.SAMPLER_TRAIN``
    "TrainingSampler".

    Other samplers (repeat-factor, subsets) get Detectron2's own loader, whose resume is
    not exact (a warning says so). Either yields this process's whole share of the step
    (``SOLVER.IMS_PER_BATCH`` / processes), which the trainer runs as ``SOLVER.BATCH_SPLIT``
    micro-batches (:func:`split_micro_batches`).

    Args:
        cfg: a Detectron2 config (``DATASETS.TRAIN``, ``DATALOADER.*``, ``SOLVER.IMS_PER_BATCH``,
            ``SOLVER.BATCH_SPLIT``, ``SEED``).
        mapper: the per-image mapper (e.g. ``SkippingDatasetMapper(cfg, is_train=True)``).

    Returns:
        A ``DataLoader`` whose ``batch_sampler`` is a :class:`ResumableBatchSampler`, or
        Detectron2's loader.
    """
    world_size = comm.get_world_size()
    # an uneven split fails here
    micro_batch_size(cfg.SOLVER.IMS_PER_BATCH, world_size, cfg.SOLVER.BATCH_SPLIT)
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        logger.warning(
            "DATALOADER.SAMPLER_TRAIN=%s: Detectron2's loader; a resumed run will see other images "
            "than an uninterrupted one (only TrainingSampler resumes exactly)",
            cfg.DATALOADER.SAMPLER_TRAIN,
        )
        return build_detection_train_loader(cfg, mapper=mapper)
    dicts = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN,
        filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE
        if cfg.MODEL.KEYPOINT_ON
        else 0,
        proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
    )
    wide = (
        [d["width"] > d["height"] for d in dicts] if cfg.DATALOADER.ASPECT_RATIO_GROUPING else None
    )
    # SEED < 0 means "random": one seed shared by all ranks, stored in the checkpoint.
    seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
    sampler = ResumableBatchSampler(
        len(dicts), cfg.SOLVER.IMS_PER_BATCH // world_size, seed, comm.get_rank(), world_size, wide
    )
    return DataLoader(
        SeededMapDataset(dicts, mapper),
        batch_sampler=sampler,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        collate_fn=_as_list,
        worker_init_fn=ignore_stop_signals,
    )


class DataStreamState(HookBase):
    """Puts the data stream's position in the trainer's checkpoint and restores it on resume.

    The state is ``{"seed", "world_size", "batches"}``; ``world_size`` is the number of ranks
    whose streams make up the global batch (the first run's process count) and ``batches`` the
    number of batches each rank has consumed (one per iteration, its micro-batches included).
    Resuming with another number of processes continues that same stream, split between the new
    processes (a warning says so): every iteration reads the images and augmentations of the
    interrupted run.
    """

    def _sampler(self) -> Optional[ResumableBatchSampler]:
        sampler = getattr(self.trainer.data_loader, "batch_sampler", None)
        return sampler if isinstance(sampler, ResumableBatchSampler) else None

    def state_dict(self) -> Dict[str, int]:
        sampler = self._sampler()
        if sampler is None:
            return {}
        # Called when a checkpoint is written after iteration trainer.iter.
        return {
            "seed": sampler.seed,
            "world_size": sampler.stream_world_size,
            "batches": int(self.trainer.iter) + 1,
        }

    def load_state_dict(self, state: Dict[str, int]) -> None:
        sampler = self._sampler()
        if sampler is None or not state:
            return
        sampler.resume(state["seed"], state["batches"], state["world_size"])
        if sampler.stream_world_size != sampler.world_size:
            logger.warning(
                "resuming a run of %d process(es) with %d: each iteration reads the images and "
                "augmentations the %d process(es) would have read, %d per process",
                sampler.stream_world_size,
                sampler.world_size,
                sampler.stream_world_size,
                sampler.batch_size,
            )
        logger.info("data stream resumes at batch %d of seed %d", sampler.start_batch, sampler.seed)
