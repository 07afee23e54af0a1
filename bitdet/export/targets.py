"""What gets exported: a folded, traceable module with named inputs, outputs and sample inputs.

Three kinds, as in Detectron2's ``tools/deploy/export_model.py`` plus the classifier:

* ``classifier``: a :class:`bitdet.models.ResNetV2`; ``images`` ``(N, 3, H, W)`` scaled to
  ``[-1, 1]`` in, ``logits`` ``(N, num_classes)`` (or pooled ``features``) out.
* ``detector``: a Detectron2 RetinaNet wrapped in Detectron2's ``TracingAdapter``; one
  ``image`` ``(3, H, W)`` float32 in the config's ``INPUT.FORMAT`` channel order, 0-255,
  already resized by the caller (the test-time resize is not part of the graph); outputs
  ``pred_boxes`` ``(K, 4)`` (XYXY, input-image pixels), ``pred_classes``, ``scores`` and the
  ``image_size``. Normalisation, padding, anchors, box decoding and NMS are in the graph.
* ``backbone``: the backbone of any meta-architecture (BiT + FPN); ``images`` ``(N, 3, H, W)``
  already normalised, ``H`` and ``W`` multiples of ``backbone.size_divisibility``; one output
  per feature map (``p3`` ... ``p7`` for RetinaNet), in sorted name order.

Sample inputs are real photographs that ship with scikit-image (or the caller's images);
the first traces the model, the others (other sizes, and other batch sizes where the
batch is dynamic) check that the exported graph generalises.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bitdet.errors import ConfigError, DataError
from bitdet.export.fold import fold_weight_standardization
from bitdet.numerics import PIXEL_MEAN, PIXEL_STD

__all__ = [
    "ExportTarget",
    "backbone_target",
    "classifier_target",
    "detector_target",
    "sample_photos",
    "KINDS",
]

KINDS = ("classifier", "detector", "backbone")
# scikit-image's bundled colour photographs (no download); the last is turned to portrait.
SAMPLE_PHOTOS = ("astronaut", "coffee", "chelsea")

Tensors = Tuple[torch.Tensor, ...]


@dataclass
class ExportTarget:
    """A traceable module and everything needed to export and check it.

    Attributes:
        kind: one of :data:`KINDS`.
        module: the folded module to trace: tensors in, a tensor or tuple of tensors out.
        model: the original (unfolded) eager module: what exported graphs are compared with.
        call: ``call(model, *inputs)`` runs ``model`` (or a copy of it) on a sample and
            returns the outputs as a flat list in ``output_names`` order.
        samples: input tuples; ``samples[0]`` is traced, all are verified.
        input_names, output_names: graph names, in order.
        dynamic_axes: ONNX dynamic axes per input / output name.
        detections: outputs are ``pred_boxes, pred_classes, scores, image_size``.
        new_head: why the classifier's head was re-initialised instead of loaded (empty when
            it was loaded or there are no weights): verification then fails, as the logits
            do not come from the weights.
    """

    kind: str
    module: nn.Module
    model: nn.Module
    call: Callable[..., List[torch.Tensor]]
    samples: List[Tensors]
    input_names: List[str]
    output_names: List[str]
    dynamic_axes: Dict[str, Dict[int, str]] = field(default_factory=dict)
    detections: bool = False
    new_head: str = ""

    def reference(self, *inputs: torch.Tensor) -> List[torch.Tensor]:
        """The eager model's outputs on ``inputs``."""
        with torch.no_grad():
            return self.call(self.model, *inputs)


def sample_photos(paths: Sequence[str] = (), input_format: str = "RGB") -> List[np.ndarray]:
    """HWC uint8 images in ``input_format`` ("RGB" / "BGR"): the files at ``paths``, or
    scikit-image's bundled photographs when none are given.

    Raises:
        DataError: a file at ``paths`` that is not an image, naming it.
    """
    if paths:
        from detectron2.data.detection_utils import read_image
        from PIL import UnidentifiedImageError

        photos = []
        for path in paths:
            try:
                photos.append(read_image(str(path), format=input_format))
            except UnidentifiedImageError as e:
                raise DataError(f"sample image {path}: not an image PIL can read") from e
        return photos
    import skimage.data

    photos = [getattr(skimage.data, name)()[:, :, :3] for name in SAMPLE_PHOTOS]
    photos[-1] = np.rot90(photos[-1])  # portrait: square, landscape and portrait samples
    photos = [np.ascontiguousarray(p) for p in photos]
    return [p[:, :, ::-1].copy() if input_format == "BGR" else p for p in photos]


def _flat(outputs) -> List[torch.Tensor]:
    from detectron2.export.flatten import flatten_to_tuple

    return list(flatten_to_tuple(outputs)[0])


def _resize_batch(
    photos: Sequence[np.ndarray], batch: int, height: int, width: int
) -> torch.Tensor:
    """``batch`` photos (cycled) resized to ``height x width``: float32 NCHW, 0-255."""
    images = []
    for i in range(batch):
        x = torch.from_numpy(photos[i % len(photos)]).permute(2, 0, 1)[None].float()
        images.append(
            F.interpolate(
                x, size=(height, width), mode="bilinear", antialias=True, align_corners=False
            )
        )
    return torch.cat(images).clamp_(0, 255)


@torch.no_grad()
def classifier_target(
    model: nn.Module,
    image_size: int,
    batch_size: int,
    photos: Sequence[np.ndarray],
    new_head: str = "",
) -> ExportTarget:
    """A BiT classifier (or headless trunk) with dynamic batch, height and width.

    Args:
        model: a :class:`bitdet.models.ResNetV2` (any module with the same signature works).
        image_size: side of the traced input.
        batch_size: batch of the traced input; a second sample has one image more and a
            side 32 px larger.
        photos: HWC uint8 RGB images for the samples.
        new_head: see :class:`ExportTarget`.
    """
    model = model.eval()
    samples = [
        ((_resize_batch(photos, b, s, s) - PIXEL_MEAN) / PIXEL_STD,)
        for b, s in ((batch_size, image_size), (batch_size + 1, image_size + 32))
    ]
    output = "logits" if getattr(model, "fc", None) is not None else "features"
    return ExportTarget(
        kind="classifier",
        module=fold_weight_standardization(model),
        model=model,
        call=lambda m, x: [m(x)],
        samples=samples,
        input_names=["images"],
        output_names=[output],
        dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}, output: {0: "batch"}},
        new_head=new_head,
    )


def _test_resize(cfg, photo: np.ndarray) -> torch.Tensor:
    from detectron2.data import transforms as T

    resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    image = resize.get_transform(photo).apply_image(photo)
    return torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))).float()


@torch.no_grad()
def detector_target(model: nn.Module, cfg, photos: Sequence[np.ndarray]) -> ExportTarget:
    """A whole RetinaNet, one image per call, dynamic height and width.

    Args:
        model: a Detectron2 ``RetinaNet`` built from ``cfg`` (weights loaded).
        cfg: its config: ``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST`` resize the samples.
        photos: HWC uint8 images in ``cfg.INPUT.FORMAT``; each is one sample.
    """
    from detectron2.export import TracingAdapter
    from detectron2.modeling import RetinaNet

    if not isinstance(model, RetinaNet):
        raise ConfigError(
            f"MODEL.META_ARCHITECTURE {cfg.MODEL.META_ARCHITECTURE}: whole-model export supports "
            "RetinaNet; export the BiT + FPN backbone of any meta-architecture with --part backbone"
        )
    model = model.eval()
    samples = [(_test_resize(cfg, p),) for p in photos]
    folded = fold_weight_standardization(model)
    adapter = TracingAdapter(folded, [{"image": samples[0][0]}]).eval()
    adapter(*samples[0])  # records the output schema
    fields = adapter.outputs_schema.schemas[0].schemas[0].keys  # Instances fields, sorted
    return ExportTarget(
        kind="detector",
        module=adapter,
        model=model,
        call=lambda m, image: _flat(m([{"image": image}])),
        samples=samples,
        input_names=["image"],
        output_names=[*fields, "image_size"],
        dynamic_axes={"image": {1: "height", 2: "width"}, **{f: {0: "detections"} for f in fields}},
        detections=True,
    )


@torch.no_grad()
def backbone_target(
    model: nn.Module,
    cfg,
    photos: Sequence[np.ndarray],
    batch_size: int,
    image_size: Optional[int] = None,
) -> ExportTarget:
    """The backbone (BiT + FPN) of any Detectron2 meta-architecture, dynamic batch and size.

    Args:
        model: a Detectron2 model with ``backbone``, ``pixel_mean`` and ``pixel_std``.
        cfg: its config; the default side is ``INPUT.MIN_SIZE_TEST``.
        photos: HWC uint8 images in ``cfg.INPUT.FORMAT``.
        batch_size: batch of the traced input; a second sample has one image more and a
            side one ``size_divisibility`` step larger.
        image_size: side of the traced input, rounded up to ``backbone.size_divisibility``.
    """
    from detectron2.export import TracingAdapter

    backbone = model.backbone.eval()
    step = max(1, int(backbone.size_divisibility))
    side = -(-(image_size or cfg.INPUT.MIN_SIZE_TEST) // step) * step
    mean, std = model.pixel_mean.cpu(), model.pixel_std.cpu()
    samples = [
        ((_resize_batch(photos, b, s, s) - mean) / std,)
        for b, s in ((batch_size, side), (batch_size + 1, side + step))
    ]
    folded = fold_weight_standardization(backbone)
    adapter = TracingAdapter(folded, samples[0]).eval()
    names = sorted(backbone.output_shape())  # the adapter flattens the feature dict in sorted order
    return ExportTarget(
        kind="backbone",
        module=adapter,
        model=backbone,
        call=lambda m, x: _flat(m(x)),
        samples=samples,
        input_names=["images"],
        output_names=names,
        dynamic_axes={
            "images": {0: "batch", 2: "height", 3: "width"},
            **{n: {0: "batch", 2: f"{n}_h", 3: f"{n}_w"} for n in names},
        },
    )
