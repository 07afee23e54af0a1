"""Detectron2 ``DatasetMapper`` s for BiT detectors: augmentations chosen by ``INPUT.AUGMENTATION``,
and a training mapper that skips unreadable images instead of ending the run.

``INPUT.AUGMENTATION "multiscale"`` keeps Detectron2's own augmentations; ``"fixed_size_jitter"``
is the BiT paper's detection input (supplementary E), built from Detectron2's ``RandomFlip``,
``ResizeScale`` and ``FixedSizeCrop`` (see :func:`bitdet.detection.config.add_bit_config`).

Detectron2's ``read_image`` raises on an empty, truncated or oversized file (see
tests/reliability/test_bad_images.py), which would stop a multi-day run at the first bad
file. Returning ``None`` is Detectron2's own protocol for "skip this sample": its
``MapDataset`` draws another index. Skips are logged (rate-limited) and counted in
:data:`bitdet.data.images.decode_stats` with the reason ``unreadable``; usable images in
odd formats (grayscale, CMYK, 16-bit, alpha, EXIF-rotated) are converted by Detectron2.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from detectron2.data import DatasetMapper
from detectron2.data import transforms as T
from PIL import Image

from bitdet.data.images import decode_stats
from bitdet.detection.config import fixed_input_size
from bitdet.errors import ConfigError

__all__ = ["BiTDatasetMapper", "SkippingDatasetMapper", "fixed_size_jitter"]


def fixed_size_jitter(cfg) -> List[T.Augmentation]:
    """The training augmentations of ``INPUT.AUGMENTATION "fixed_size_jitter"``.

    ``INPUT.RANDOM_FLIP``, then ``ResizeScale`` (the image fits a square of ``SIZE`` times a scale
    drawn from ``SCALE_RANGE``) and a random ``SIZE x SIZE`` ``FixedSizeCrop`` without padding: the
    model pads every image to ``SIZE x SIZE`` (the backbone's ``padding_constraints``), with zeros
    after normalisation as the tensorflow/tpu RetinaNet, whatever ``MODEL.PIXEL_MEAN``, and so
    that evaluated boxes map back from the unpadded size. Evaluation uses Detectron2's test resize
    (``INPUT.MIN_SIZE_TEST = MAX_SIZE_TEST = SIZE``: the long side at ``SIZE``).

    Raises:
        ValueError: an unknown ``INPUT.AUGMENTATION`` or inconsistent keys
            (:func:`fixed_input_size`).
    """
    size = fixed_input_size(cfg)
    if not size:
        raise ConfigError(
            f"INPUT.AUGMENTATION is {cfg.INPUT.AUGMENTATION!r}, not 'fixed_size_jitter'"
        )
    low, high = cfg.INPUT.FIXED_SIZE_JITTER.SCALE_RANGE
    flip = cfg.INPUT.RANDOM_FLIP
    # Flip first, as the TPU parser does (and Detectron2's large-scale-jitter recipe).
    flips = (
        [T.RandomFlip(horizontal=flip == "horizontal", vertical=flip == "vertical")]
        if flip != "none"
        else []
    )
    return [
        *flips,
        T.ResizeScale(min_scale=low, max_scale=high, target_height=size, target_width=size),
        T.FixedSizeCrop(crop_size=(size, size), pad=False),
    ]


class BiTDatasetMapper(DatasetMapper):
    """:class:`DatasetMapper` whose training augmentations follow ``INPUT.AUGMENTATION``.

    "multiscale" is Detectron2's mapper unchanged. "fixed_size_jitter" trains with
    :func:`fixed_size_jitter`: boxes are clipped to the crop and those left empty are dropped
    (Detectron2's ``filter_empty_instances``); with ``MODEL.MASK_ON`` the boxes of cropped
    instances are recomputed from their masks, as Detectron2 does after its own crop.

    Raises:
        ValueError: an unknown ``INPUT.AUGMENTATION`` or inconsistent keys
            (:func:`fixed_input_size`).
    """

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> Dict[str, Any]:
        args = super().from_config(cfg, is_train)
        if fixed_input_size(cfg) and is_train:
            args["augmentations"] = fixed_size_jitter(cfg)
            args["recompute_boxes"] = cfg.MODEL.MASK_ON
        return args


class SkippingDatasetMapper(BiTDatasetMapper):
    """:class:`BiTDatasetMapper` that returns ``None`` (skip) for an image it cannot read
    (training only: evaluation must see every image)."""

    def __call__(self, dataset_dict: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        try:
            return super().__call__(dataset_dict)
        except (OSError, SyntaxError, Image.DecompressionBombError) as e:
            # PIL reports empty / truncated / malformed files as OSError (incl.
            # UnidentifiedImageError) or SyntaxError; an oversized one as DecompressionBombError.
            decode_stats.record_skip(
                "unreadable", dataset_dict.get("file_name", "?"), f"{type(e).__name__}: {e}"
            )
            return None
