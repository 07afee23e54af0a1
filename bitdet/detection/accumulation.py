"""Gradient accumulation for Detectron2 detectors: micro-batch steps equal to the whole-batch step.

With ``SOLVER.BATCH_SPLIT`` = S, each process runs its share of ``SOLVER.IMS_PER_BATCH`` as S
micro-batches and takes one optimizer step. Two things make a RetinaNet micro-batch differ
from its part of the whole share, and :func:`accumulation_step` removes both:

- padding: a batch is padded to its largest image, and the convolutions, GroupNorm and the
  anchors see the padding. Each micro-batch is padded to the size of its process's share.
- the loss normalizer: RetinaNet divides its summed losses by a moving average of the
  batch's positive-anchor count, updated in every forward and per process. Here the count is
  taken over the whole step (every micro-batch of every process), the average is updated once
  per step with it, and each process's loss is multiplied by the number of processes (DDP
  averages gradients). The step's gradient is then the gradient of the whole batch's loss
  in one process, whatever the number of processes and micro-batches.

Generalized R-CNN is refused with more than one micro-batch: it samples anchors and
proposals at random per image in forward order and averages its box and mask losses over the
ROIs sampled in a batch, so its micro-batch steps are not its whole-batch step.
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.structures import ImageList
from detectron2.utils.events import EventStorage, get_event_storage
from torch import nn

from bitdet.errors import ConfigError

__all__ = ["accumulation_step", "check_accumulation", "one_scalar_set_per_step"]

Batch = List[Dict[str, Any]]
_NORMALIZER = "loss_normalizer"
# What the step normalizer relies on; a subclass overriding any of them is not handled.
_RELIED_ON = {
    "forward_training": RetinaNet,
    "losses": RetinaNet,
    "label_anchors": RetinaNet,
    "_ema_update": DenseDetector,
    "preprocess_image": DenseDetector,
}


def _has_step_normalizer(cls: type) -> bool:
    """Whether ``cls`` is RetinaNet, or a subclass keeping the methods the step normalizer
    patches."""
    return issubclass(cls, RetinaNet) and all(
        getattr(cls, name) is getattr(owner, name) for name, owner in _RELIED_ON.items()
    )


def check_accumulation(meta_architecture: str, batch_split: int) -> None:
    """Refuse ``SOLVER.BATCH_SPLIT`` > 1 for a meta-architecture whose micro-batch steps are
    not exact.

    Raises:
        ValueError: one line naming ``MODEL.META_ARCHITECTURE`` and ``SOLVER.BATCH_SPLIT``.
    """
    if batch_split > 1 and not _has_step_normalizer(META_ARCH_REGISTRY.get(meta_architecture)):
        raise ConfigError(
            f"SOLVER.BATCH_SPLIT={batch_split} needs MODEL.META_ARCHITECTURE 'RetinaNet' (got "
            f"{meta_architecture!r}, whose loss over micro-batches is not its loss over the whole "
            "batch): set SOLVER.BATCH_SPLIT 1"
        )


def _positives(gt_labels: Sequence[torch.Tensor], num_classes: int) -> torch.Tensor:
    """Foreground anchors in RetinaNet's labels (-1 ignored, ``num_classes`` background)."""
    return sum(((labels >= 0) & (labels != num_classes)).sum() for labels in gt_labels)


@contextlib.contextmanager
def _instance_attributes(obj: nn.Module, **values: Any) -> Iterator[None]:
    """Set attributes on ``obj`` (shadowing its methods) for the duration of the block."""
    missing = object()
    saved = {name: obj.__dict__.get(name, missing) for name in values}
    for name, value in values.items():
        object.__setattr__(obj, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is missing:
                object.__delattr__(obj, name)
            else:
                object.__setattr__(obj, name, value)


def _padded_size(detector: DenseDetector, images: Batch) -> Tuple[int, int]:
    """The (height, width) that ``detector.preprocess_image(images)`` pads to, computed on
    shapes only."""
    shapes = [torch.empty(x["image"].shape, device="meta") for x in images]
    padded = ImageList.from_tensors(
        shapes,
        detector.backbone.size_divisibility,
        padding_constraints=detector.backbone.padding_constraints,
    )
    return tuple(padded.tensor.shape[-2:])


class _RetinaNetStep:
    """One optimizer step of a RetinaNet over ``micro_batches`` (run in that order)."""

    def __init__(
        self, detector: RetinaNet, micro_batches: Sequence[Batch], world_size: int
    ) -> None:
        self.detector, self.micro_batches, self.world_size = detector, micro_batches, world_size
        share = [x for batch in micro_batches for x in batch]
        self.padded = _padded_size(detector, share) if len(micro_batches) > 1 else None
        self.forwards = 0
        self.positives = self.normalizer = None
        self.originals = {
            name: getattr(detector, name) for name in ("losses", "_ema_update", "preprocess_image")
        }

    def _step_positives(self, anchors, gt_labels: Sequence[torch.Tensor]) -> int:
        """Positive anchors of the step: this micro-batch's labels, the others' labelled with the
        same anchors (every micro-batch has the share's padded size), summed over processes."""
        d = self.detector
        count = _positives(gt_labels, d.num_classes)
        for batch in self.micro_batches[1:]:
            labels, _ = d.label_anchors(anchors, [x["instances"].to(d.device) for x in batch])
            count = count + _positives(labels, d.num_classes)
        if self.world_size > 1:
            count = count.to(torch.int64)
            dist.all_reduce(count)
        return int(count.item())

    def losses(
        self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes
    ) -> Dict[str, torch.Tensor]:
        if self.forwards >= len(self.micro_batches):
            raise RuntimeError(
                f"{self.forwards + 1} forwards in a step of {len(self.micro_batches)} micro-batches"
            )
        if self.forwards == 0:
            self.positives = self._step_positives(anchors, gt_labels)
        self.forwards += 1
        return self.originals["losses"](
            anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes
        )

    def ema_update(self, name: str, value: float, *args: Any, **kwargs: Any) -> float:
        if name != _NORMALIZER:
            return self.originals["_ema_update"](name, value, *args, **kwargs)
        if self.normalizer is None:  # once per step, with the step's count
            self.normalizer = self.originals["_ema_update"](
                name, max(self.positives, 1), *args, **kwargs
            )
        return self.normalizer

    def preprocess_image(self, batched_inputs: Batch) -> ImageList:
        images = self.originals["preprocess_image"](batched_inputs)
        height, width = images.tensor.shape[-2:]
        target_h, target_w = self.padded
        if height > target_h or width > target_w:
            raise RuntimeError(
                f"micro-batch padded to {height}x{width}, larger than its share's "
                f"{target_h}x{target_w}"
            )
        if (height, width) == (target_h, target_w):
            return images
        return ImageList(
            F.pad(images.tensor, (0, target_w - width, 0, target_h - height), value=0.0),
            images.image_sizes,
        )

    @contextlib.contextmanager
    def patched(self) -> Iterator[float]:
        patches = dict(losses=self.losses, _ema_update=self.ema_update)
        if self.padded is not None:
            patches["preprocess_image"] = self.preprocess_image
        with _instance_attributes(self.detector, **patches):
            yield float(self.world_size)
        if self.forwards != len(self.micro_batches):
            raise RuntimeError(
                f"{self.forwards} forwards in a step of {len(self.micro_batches)} micro-batches"
            )


@contextlib.contextmanager
def accumulation_step(
    detector: nn.Module, micro_batches: Sequence[Batch], world_size: int
) -> Iterator[float]:
    """Context for one optimizer step over this process's ``micro_batches``, forwarded in order.

    Yields the weight of each micro-batch's loss: for RetinaNet the number of processes (its
    losses are normalised over the whole step, see the module docstring), else 1 (Detectron2's
    own behaviour; only one micro-batch per step is accepted then).

    Raises:
        ValueError: several micro-batches for a detector without a step normalizer.
    """
    if _has_step_normalizer(type(detector)) and (len(micro_batches) > 1 or world_size > 1):
        with _RetinaNetStep(detector, micro_batches, world_size).patched() as weight:
            yield weight
        return
    if len(micro_batches) > 1:
        raise ConfigError(
            f"{len(micro_batches)} micro-batches per step need a RetinaNet, got "
            f"{type(detector).__name__}: set SOLVER.BATCH_SPLIT 1"
        )
    yield 1.0


@contextlib.contextmanager
def one_scalar_set_per_step() -> Iterator[EventStorage]:
    """Collects what the model writes to the ``EventStorage`` during each micro-batch; on exit,
    each scalar reaches the trainer's storage once, as its mean over the micro-batches that wrote
    it (micro-batches hold equally many images), with images and histograms passed on.

    Yields:
        The storage to enter around each micro-batch's forward (``with storage: ...``).
    """
    outer = get_event_storage()
    inner = EventStorage(outer.iter)
    yield inner
    hints = inner.smoothing_hints()
    for name, history in inner.histories().items():
        values = [value for value, _ in history.values()]
        outer.put_scalar(name, float(np.mean(values)), smoothing_hint=hints[name])
    for image_name, image, _ in inner._vis_data:
        outer.put_image(image_name, image)
    outer._histograms.extend(inner._histograms)
