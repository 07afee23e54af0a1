"""A generated COCO-format detection dataset made of real images: Fashion-MNIST items on photos.

Nothing here is synthetic texture: every object is a real Fashion-MNIST image (28x28 scans of
Zalando product photos, 10 categories) and every background is a real photograph shipped with
scikit-image. What *is* generated is the layout: where each item goes, how large it is, its
tint, and which crop of which photo lies behind it. Detection on this set therefore measures
localisation and classification of real (if small and simple) objects on real clutter, at
CPU scale; it is not a substitute for COCO and its AP is not comparable to COCO AP.

Recipe, per image (each image has its own random stream, derived from ``(seed, split, index)``):

1. Background: a random crop (30-100 % of the photo's shorter side, the target aspect ratio)
   of one of the scikit-image photos, resized to ``image_size``, randomly flipped left-right.
   Grey photos are repeated into three channels.
2. Objects: 1-6 items, drawn uniformly from the 10 classes; training images take items from
   the Fashion-MNIST training file, validation images from the test file, so no item appears
   in both splits. Each item is resized (side 12-50 % of the shorter image side, aspect
   jitter 0.8-1.25), tinted with a random bright colour, and alpha-composited with its own
   intensity as the mask (``alpha = clip((I - 8) / 48, 0, 1)``: dark garment regions stay
   opaque, the item's black surround becomes transparent, so the photo shows around it).
3. Boxes are tight around the pixels with ``alpha >= 0.5`` after resizing, and those pixels
   are the instance mask. A placement is rejected (and retried) when its box overlaps an
   earlier one by IoU > 0.25 or covers more than 40 % of the smaller of the two boxes, so
   every object stays mostly visible. Box and mask are the whole item (amodal): where a later
   item covers part of an earlier one, both keep the covered pixels, so each box is exactly
   the bounding box of its mask.

Output layout (Detectron2 / COCO conventions)::

    <folder>/train/000000.jpg ...          <folder>/val/000000.jpg ...
    <folder>/annotations/instances_train.json
    <folder>/annotations/instances_val.json

Annotations carry ``bbox`` ([x, y, w, h] in pixels), ``segmentation`` (the mask as COCO
compressed RLE, exact to the pixel, holes included, which polygons cannot express: Detectron2
reads it with ``INPUT.MASK_FORMAT "bitmask"``), ``area`` (the box area, for both tasks, so that
COCO's small / medium / large buckets hold the same objects in bbox and segm AP), ``iscrowd`` 0;
category ids are 1..10 with the Fashion-MNIST class names. The same arguments give
byte-identical json files (and identical pixels); the masks draw no random numbers, so images
and boxes are those of the recipe without masks.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import pycocotools.mask as mask_util

from bitdet.data.fashion_mnist import DEFAULT_ROOT, FASHION_MNIST_CLASSES, FashionMNIST
from bitdet.errors import ConfigError
from bitdet.utils.io import atomic_write

__all__ = [
    "BACKGROUND_PHOTOS",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "DATASET_DESCRIPTION",
    "generate_detection_dataset",
    "is_complete",
    "item_on_canvas",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

# The Debian package dataset-fashion-mnist installs the original idx files there.
FASHION_MNIST_DIR = Path(os.environ.get("BITDET_FASHION_MNIST", DEFAULT_ROOT))
# skimage.data photos that ship inside the scikit-image wheel (no download needed).
BACKGROUND_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "camera",
    "coins",
    "moon",
    "clock",
    "brick",
    "grass",
    "gravel",
)

# Bump when the recipe changes: a dataset written by another version is regenerated.
# 2: annotations carry the instance masks (same images and boxes as 1).
GENERATOR_VERSION = 2
_SPLITS = ("train", "val")
_MAX_OBJECTS = 6
_SCALE_RANGE = (0.12, 0.5)  # item side / shorter image side
_MAX_IOU = 0.25
_MAX_COVER = 0.4
_PLACEMENT_TRIES = 30
_ALPHA_LOW, _ALPHA_SPAN = 8.0, 48.0  # intensity -> alpha ramp (see module docstring)
_UPSTREAM_CROP_RANGE = (0.05, 0.3)  # item_on_canvas: photo crop side / photo short side (of 256 px)

DATASET_DESCRIPTION = """\
**bitdet demo detection set.** Real Fashion-MNIST items (10 clothing classes, 28x28 product
scans) composited at random positions and scales (12-50 % of the image side, 1-6 per image,
limited overlap) onto random crops of the real photographs that ship with scikit-image
(astronaut, chelsea, coffee, rocket, ...). The images are real; the layout is generated. Items in
the validation split come from the Fashion-MNIST test file, so no item is shared with training.
Boxes are tight around each item's opaque pixels, which are its instance mask; annotations are
COCO json. Generated deterministically from a seed in seconds
(`python tools/generate_detection_data.py`), it is small enough to train a tiny RetinaNet on a
CPU. Its AP checks the detection pipeline; it is not comparable to COCO AP.
"""


# ----------------------------------------------------------------------------- sources


@functools.lru_cache(maxsize=1)
def _background_photos() -> Tuple[np.ndarray, ...]:
    import skimage.data

    photos = []
    for name in BACKGROUND_PHOTOS:
        image = getattr(skimage.data, name)()
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        photos.append(np.ascontiguousarray(image[:, :, :3], dtype=np.uint8))
    return tuple(photos)


# ----------------------------------------------------------------------------- one image


@functools.lru_cache(maxsize=4)
def _small_photos(short_side: int) -> Tuple[np.ndarray, ...]:
    """The background photos downscaled to at most ``short_side`` (cheap small crops)."""
    out = []
    for photo in _background_photos():
        scale = short_side / min(photo.shape[:2])
        size = (max(1, round(photo.shape[1] * scale)), max(1, round(photo.shape[0] * scale)))
        out.append(cv2.resize(photo, size, interpolation=cv2.INTER_AREA) if scale < 1 else photo)
    return tuple(out)


def _background(
    rng: np.random.Generator,
    height: int,
    width: int,
    photos: Optional[Sequence[np.ndarray]] = None,
    crop_range: Tuple[float, float] = (0.3, 1.0),
) -> np.ndarray:
    photos = photos or _background_photos()
    photo = photos[rng.integers(len(photos))]
    ph, pw = photo.shape[:2]
    # The largest crop with the target aspect ratio, scaled by crop_range (30-100 %).
    aspect = width / height
    full_h = min(ph, pw / aspect)
    crop_h = max(8, int(full_h * rng.uniform(*crop_range)))
    crop_w = max(8, min(pw, int(round(crop_h * aspect))))
    y0 = rng.integers(0, ph - crop_h + 1)
    x0 = rng.integers(0, pw - crop_w + 1)
    crop = photo[y0 : y0 + crop_h, x0 : x0 + crop_w]
    crop = cv2.resize(
        crop, (width, height), interpolation=cv2.INTER_AREA if crop_h > height else cv2.INTER_LINEAR
    )
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.ascontiguousarray(crop)


def _item_layer(
    item: np.ndarray, rng: np.random.Generator, side: int, tint: bool = True
) -> Tuple[np.ndarray, np.ndarray]:
    """A resized item (float RGB, tinted unless ``tint`` is False) and its alpha, cropped tight
    to ``alpha >= 0.5``."""
    jitter = np.exp(rng.uniform(np.log(0.8), np.log(1.25)))
    h = max(6, int(round(side * np.sqrt(jitter))))
    w = max(6, int(round(side / np.sqrt(jitter))))
    intensity = cv2.resize(item.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    alpha = np.clip((intensity - _ALPHA_LOW) / _ALPHA_SPAN, 0.0, 1.0)
    ys, xs = np.nonzero(alpha >= 0.5)
    if len(ys) == 0:  # an (almost) empty scan; the caller draws another item
        return np.zeros((0, 0, 3), np.float32), np.zeros((0, 0), np.float32)
    alpha = alpha[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    intensity = intensity[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    # A bright random tint keeps the item's texture (its intensity) and separates it from grey
    # photos.
    colour = rng.uniform(0.35, 1.0, size=3).astype(np.float32) if tint else np.ones(3, np.float32)
    colour /= colour.max()
    rgb = (intensity / 255.0)[:, :, None] * colour[None, None, :] * 255.0
    return rgb, alpha


def _box_overlap_ok(box: np.ndarray, boxes: List[np.ndarray]) -> bool:
    for other in boxes:
        ix = max(0.0, min(box[2], other[2]) - max(box[0], other[0]))
        iy = max(0.0, min(box[3], other[3]) - max(box[1], other[1]))
        inter = ix * iy
        area_a = (box[2] - box[0]) * (box[3] - box[1])
        area_b = (other[2] - other[0]) * (other[3] - other[1])
        if inter / (area_a + area_b - inter) > _MAX_IOU or inter / min(area_a, area_b) > _MAX_COVER:
            return False
    return True


class _Placed(NamedTuple):
    """An object of a composed image: class index, ``[x, y, w, h]`` and its mask inside the box."""

    label: int
    bbox: List[float]
    mask: np.ndarray  # bool, (h, w): the item's pixels with alpha >= 0.5


def _compose(
    rng: np.random.Generator, items: np.ndarray, labels: np.ndarray, height: int, width: int
) -> Tuple[np.ndarray, List[_Placed]]:
    """One image (uint8 HxWx3 RGB) and its objects."""
    canvas = _background(rng, height, width).astype(np.float32)
    short = min(height, width)
    num_objects = int(rng.integers(1, _MAX_OBJECTS + 1))
    boxes: List[np.ndarray] = []
    objects: List[_Placed] = []
    for _ in range(num_objects):
        index = int(rng.integers(len(items)))
        side = int(round(short * rng.uniform(*_SCALE_RANGE)))
        rgb, alpha = _item_layer(items[index], rng, side)
        ah, aw = alpha.shape
        if ah == 0 or ah > height or aw > width:
            continue
        for _ in range(_PLACEMENT_TRIES):
            y0 = int(rng.integers(0, height - ah + 1))
            x0 = int(rng.integers(0, width - aw + 1))
            box = np.array([x0, y0, x0 + aw, y0 + ah], dtype=np.float64)
            if _box_overlap_ok(box, boxes):
                break
        else:
            continue  # no room left for this item: the image gets fewer objects
        region = canvas[y0 : y0 + ah, x0 : x0 + aw]
        region[:] = alpha[:, :, None] * rgb + (1.0 - alpha[:, :, None]) * region
        boxes.append(box)
        objects.append(
            _Placed(int(labels[index]), [float(x0), float(y0), float(aw), float(ah)], alpha >= 0.5)
        )
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), objects


def _rle(placed: _Placed, height: int, width: int) -> Dict:
    """The object's mask on the whole image as COCO compressed RLE (``{"size", "counts"}``)."""
    full = np.zeros((height, width), dtype=np.uint8, order="F")
    x0, y0, w, h = (int(v) for v in placed.bbox)
    full[y0 : y0 + h, x0 : x0 + w] = placed.mask
    rle = mask_util.encode(full)
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def item_on_canvas(
    item: np.ndarray,
    rng: np.random.Generator,
    size: int,
    scale_range: Tuple[float, float],
    photo: bool,
) -> np.ndarray:
    """One item as a classification sample drawn like a detection object (uint8
    ``size``x``size``x3).

    The item is resized to a side of ``scale_range`` x ``size`` (with the detection set's aspect
    jitter) and placed at a random position; with ``photo`` it is tinted and pasted on a random
    photo crop exactly as in :func:`generate_detection_dataset`, else it stays grey on black
    (the plain Fashion-MNIST look). Upstream pretraining on these samples sees the scales,
    colours and clutter that the detector meets downstream.
    """
    low, high = scale_range
    if not 0 < low <= high <= 1:
        raise ConfigError(
            f"scale_range {tuple(scale_range)}: expected 0 < low <= high <= 1 "
            "(item side / canvas side)"
        )
    if photo:
        # A detection image is ~8x the canvas (items of 12-50 % of 256 px vs 40-100 % of the
        # canvas): crop the photo ~8x finer than the detection set does, so the clutter
        # around an item has the same scale relative to the item.
        canvas = _background(rng, size, size, _small_photos(256), _UPSTREAM_CROP_RANGE).astype(
            np.float32
        )
    else:
        canvas = np.zeros((size, size, 3), np.float32)
    rgb, alpha = _item_layer(
        item, rng, max(6, int(round(size * rng.uniform(low, high)))), tint=photo
    )
    ah, aw = alpha.shape
    if ah == 0:  # an empty scan: the canvas alone (the label still names the item's class)
        return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    if ah > size or aw > size:  # aspect jitter can overshoot the canvas by a pixel or two
        y1, x1 = (ah - min(ah, size)) // 2, (aw - min(aw, size)) // 2
        rgb, alpha = rgb[y1 : y1 + size, x1 : x1 + size], alpha[y1 : y1 + size, x1 : x1 + size]
        ah, aw = alpha.shape
    y0, x0 = int(rng.integers(0, size - ah + 1)), int(rng.integers(0, size - aw + 1))
    region = canvas[y0 : y0 + ah, x0 : x0 + aw]
    region[:] = alpha[:, :, None] * rgb + (1.0 - alpha[:, :, None]) * region
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- writing


def _params(num_images: int, image_size: Tuple[int, int], seed: int, image_format: str) -> Dict:
    return {
        "generator": "bitdet.data.detection_generate",
        "version": GENERATOR_VERSION,
        "num_images": num_images,
        "image_size": list(image_size),
        "seed": seed,
        "image_format": image_format,
    }


def _json_path(folder: Path, split: str) -> Path:
    return folder / "annotations" / f"instances_{split}.json"


def _split_complete(folder: Path, split: str, params: Dict) -> bool:
    """The split's json exists, was written with ``params``, and all its images exist."""
    path = _json_path(folder, split)
    try:
        with open(path) as f:
            data = json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    if data.get("info", {}).get("bitdet") != params:
        logger.info("%s was generated with other settings; regenerating", path)
        return False
    return all((folder / split / im["file_name"]).is_file() for im in data.get("images", ()))


def is_complete(
    folder: PathLike,
    num_train: int,
    num_val: int,
    image_size: Sequence[int] = (256, 256),
    seed: int = 0,
    image_format: str = "jpg",
) -> bool:
    """Whether ``folder`` already holds the dataset these arguments would generate."""
    folder = Path(folder)
    size = (int(image_size[0]), int(image_size[1]))
    return all(
        _split_complete(folder, split, _params(n, size, seed, image_format))
        for split, n in zip(_SPLITS, (num_train, num_val))
    )


def _write_image(path: Path, image: np.ndarray, image_format: str) -> None:
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    params = (
        [cv2.IMWRITE_JPEG_QUALITY, 95]
        if image_format == "jpg"
        else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    )
    ok, encoded = cv2.imencode(f".{image_format}", bgr, params)
    if not ok:
        raise RuntimeError(f"could not encode {path}")
    with atomic_write(path) as f:
        f.write(encoded.tobytes())


def _generate_split(folder: Path, split: str, params: Dict, fashion_root: Optional[str]) -> Dict:
    source = FashionMNIST(
        fashion_root or FASHION_MNIST_DIR, split="train" if split == "train" else "test"
    )
    items, labels = source.images, source.targets
    height, width = params["image_size"]
    image_dir = folder / split
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    split_id = _SPLITS.index(split)
    for index in range(params["num_images"]):
        rng = np.random.default_rng([params["seed"], split_id, index])
        image, objects = _compose(rng, items, labels, height, width)
        file_name = f"{index:06d}.{params['image_format']}"
        _write_image(image_dir / file_name, image, params["image_format"])
        image_id = index + 1  # COCO ids start at 1 (pycocotools treats 0 as "unmatched")
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for placed in objects:
            bbox = placed.bbox
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": placed.label + 1,
                    "bbox": bbox,
                    "segmentation": _rle(placed, height, width),
                    "area": bbox[2] * bbox[3],
                    "iscrowd": 0,
                }
            )
    categories = [
        {"id": i + 1, "name": name, "supercategory": "clothing"}
        for i, name in enumerate(FASHION_MNIST_CLASSES)
    ]
    info = {
        "description": "Fashion-MNIST items composited onto scikit-image photos (bitdet)",
        "bitdet": params,
    }
    data = {"info": info, "images": images, "annotations": annotations, "categories": categories}
    # The json goes last and atomically: its presence marks the split as complete.
    with atomic_write(_json_path(folder, split), "w") as f:
        json.dump(data, f, separators=(",", ":"))
    return data


def generate_detection_dataset(
    folder: PathLike,
    num_train: int = 400,
    num_val: int = 100,
    image_size: Sequence[int] = (256, 256),
    seed: int = 0,
    image_format: str = "jpg",
    fashion_mnist_root: Optional[PathLike] = None,
    overwrite: bool = False,
) -> Dict[str, Path]:
    """Write the Fashion-MNIST-on-photos detection dataset (see the module docstring) to ``folder``.

    A generated layout of real images. Idempotent: a split whose json was written by the same
    arguments and whose images all exist is kept; anything else (absent, half-written, other
    settings) is regenerated. Same arguments, same bytes.

    Args:
        folder: output folder; gets ``train/``, ``val/`` and ``annotations/``.
        num_train: training images.
        num_val: validation images.
        image_size: ``(height, width)`` of every image.
        seed: base seed; each image's stream is derived from ``(seed, split, index)``.
        image_format: ``"jpg"`` (quality 95) or ``"png"``.
        fashion_mnist_root: folder with the Fashion-MNIST idx ``.gz`` files (default
            ``$BITDET_FASHION_MNIST`` or ``/usr/share/datasets/fashion-mnist``).
        overwrite: regenerate even when complete.

    Returns:
        ``{"train_json", "train_images", "val_json", "val_images"}`` paths.
    """
    folder = Path(folder)
    if image_format not in ("jpg", "png"):
        raise ConfigError(f"image_format {image_format!r}: expected 'jpg' or 'png'")
    if len(image_size) != 2 or min(image_size) < 32:
        raise ConfigError(f"image_size {tuple(image_size)}: expected (height, width), each >= 32")
    if num_train < 0 or num_val < 0:
        raise ConfigError(f"num_train={num_train}, num_val={num_val}: expected >= 0")
    size = (int(image_size[0]), int(image_size[1]))
    root = str(fashion_mnist_root) if fashion_mnist_root else None
    paths: Dict[str, Path] = {}
    for split, count in zip(_SPLITS, (num_train, num_val)):
        params = _params(count, size, seed, image_format)
        if overwrite or not _split_complete(folder, split, params):
            logger.info("generating %d %s images in %s", count, split, folder / split)
            _generate_split(folder, split, params, root)
        paths[f"{split}_json"] = _json_path(folder, split)
        paths[f"{split}_images"] = folder / split
    return paths
