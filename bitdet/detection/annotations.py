"""Validated loading of COCO-format annotation files (a wrapper of Detectron2's ``load_coco_json``).

Policy, applied to every dataset registered through
:func:`bitdet.detection.register_coco_format` (and so ``DATASETS.COCO_FORMAT``):

- malformed JSON: :class:`AnnotationError` naming the file, line and column;
- a missing key (``images``: id, file_name, height, width; ``annotations``: id, image_id,
  category_id, bbox; ``categories``: id, name), a ``bbox`` that is not 4 numbers, or a
  ``category_id`` absent from ``categories``: :class:`AnnotationError` naming the file,
  the key and the annotation (or image) id, with how many entries share the problem.
  Unknown categories are an error rather than filtered: they mean the file and its
  category list disagree, and dropping them would silently change what the model learns;
- degenerate boxes (width or height <= 0, NaN or infinite): dropped and counted;
- boxes crossing the image border: clipped to it and counted; boxes entirely outside:
  dropped and counted;
- images without annotations: kept (RetinaNet learns background from them; note that
  Detectron2's ``DATALOADER.FILTER_EMPTY_ANNOTATIONS`` (default True) removes them later);
- annotations whose ``image_id`` matches no image are ignored by ``load_coco_json``.

The counts are logged once per load (a warning when anything was dropped or clipped).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from detectron2.data.datasets import load_coco_json
from detectron2.structures import BoxMode

from bitdet.errors import DataError

__all__ = [
    "AnnotationError",
    "AnnotationStats",
    "check_coco_json",
    "clean_records",
    "load_coco_format",
]

logger = logging.getLogger(__name__)

REQUIRED_KEYS: Dict[str, tuple] = {
    "images": ("id", "file_name", "height", "width"),
    "annotations": ("id", "image_id", "category_id", "bbox"),
    "categories": ("id", "name"),
}


class AnnotationError(DataError):
    """A COCO-format annotation file that cannot be used; the message names file, key and id."""


@dataclass
class AnnotationStats:
    """What :func:`clean_records` kept, dropped and clipped."""

    images: int = 0
    images_without_boxes: int = 0
    boxes: int = 0
    dropped_degenerate: int = 0
    dropped_outside: int = 0
    clipped: int = 0

    def __str__(self) -> str:
        return (
            f"{self.images} images ({self.images_without_boxes} without boxes, kept), "
            f"{self.boxes} boxes kept; "
            f"dropped {self.dropped_degenerate} degenerate (w or h <= 0 or not finite) and "
            f"{self.dropped_outside} entirely outside their image; "
            f"clipped {self.clipped} to the image"
        )


def _describe(ids: List[Any], what: str) -> str:
    more = f" (and {len(ids) - 1} more)" if len(ids) > 1 else ""
    return f"{what} id {ids[0]!r}{more}"


def check_coco_json(json_file: os.PathLike) -> Dict[str, Any]:
    """Parse and check the structure of a COCO-format file; returns the parsed dict.

    Raises:
        AnnotationError: malformed JSON (with line and column), a missing section or key,
            a malformed ``bbox``, or a ``category_id`` not in ``categories``.
    """
    with open(json_file, encoding="utf-8") as f:
        text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{json_file}:{e.lineno}:{e.colno}: malformed JSON: {e.msg}") from e
    if not isinstance(data, dict):
        raise AnnotationError(
            f"{json_file}: expected a JSON object with images/annotations/categories"
        )
    for section in ("images", "categories"):
        if not isinstance(data.get(section), list):
            raise AnnotationError(f"{json_file}: missing or non-list top-level key {section!r}")
    for section, keys in REQUIRED_KEYS.items():
        entries = data.get(section, [])
        for key in keys:
            lacking = [
                e.get("id", f"<entry #{i}>") if isinstance(e, dict) else f"<entry #{i}>"
                for i, e in enumerate(entries)
                if not isinstance(e, dict) or key not in e
            ]
            if lacking:
                raise AnnotationError(
                    f"{json_file}: {section}: key {key!r} missing in "
                    f"{_describe(lacking, section[:-1])}"
                )
    anns = data.get("annotations", [])
    bad_box = [
        a["id"]
        for a in anns
        if not (
            isinstance(a["bbox"], list)
            and len(a["bbox"]) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in a["bbox"])
        )
    ]
    if bad_box:
        raise AnnotationError(
            f"{json_file}: key 'bbox' is not [x, y, w, h] numbers in "
            f"{_describe(bad_box, 'annotation')}"
        )
    categories = {c["id"] for c in data["categories"]}
    unknown = [a["id"] for a in anns if a["category_id"] not in categories]
    if unknown:
        found = sorted(
            {a["category_id"] for a in anns if a["category_id"] not in categories}, key=str
        )
        raise AnnotationError(
            f"{json_file}: key 'category_id' has values {found} not in 'categories' "
            f"{sorted(categories, key=str)} "
            f"in {_describe(unknown, 'annotation')}; fix the file or add the categories"
        )
    return data


def clean_records(records: List[Dict[str, Any]], source: str = "<records>") -> AnnotationStats:
    """Drop degenerate boxes and clip boxes to their image, in place (Detectron2 dataset dicts).

    Args:
        records: dataset dicts from ``load_coco_json`` (``bbox`` in ``XYWH_ABS``).
        source: the annotation file, for error messages.

    Returns:
        The counts of what was kept, dropped and clipped.

    Raises:
        AnnotationError: an annotation without a ``bbox``.
    """
    stats = AnnotationStats(images=len(records))
    for record in records:
        width, height = record["width"], record["height"]
        kept = []
        for obj in record.get("annotations", []):
            if "bbox" not in obj:
                raise AnnotationError(
                    f"{source}: key 'bbox' missing in annotation id {obj.get('id', '?')!r}"
                )
            if obj.get("bbox_mode", BoxMode.XYWH_ABS) != BoxMode.XYWH_ABS:
                kept.append(obj)  # another producer's mode: leave it to Detectron2
                continue
            try:
                x, y, w, h = (float(v) for v in obj["bbox"])
            except (TypeError, ValueError) as e:
                raise AnnotationError(
                    f"{source}: key 'bbox' is not [x, y, w, h] numbers in annotation id "
                    f"{obj.get('id', '?')!r}: {obj['bbox']!r}"
                ) from e
            if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
                stats.dropped_degenerate += 1
                continue
            x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
            x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
            if x1 <= x0 or y1 <= y0:
                stats.dropped_outside += 1
                continue
            if (x0, y0, x1, y1) != (x, y, x + w, y + h):
                stats.clipped += 1
                obj["bbox"] = [x0, y0, x1 - x0, y1 - y0]
            kept.append(obj)
        record["annotations"] = kept
        stats.boxes += len(kept)
        stats.images_without_boxes += not kept
    return stats


def load_coco_format(
    json_file: os.PathLike,
    image_root: os.PathLike,
    dataset_name: str,
    stats: Optional[AnnotationStats] = None,
) -> List[Dict[str, Any]]:
    """``load_coco_json`` with the validation and filtering of this module's policy.

    The file is parsed once on the normal path; only when Detectron2 rejects it is it
    re-read by :func:`check_coco_json` to name the key and id at fault.

    Args:
        json_file: the COCO-format annotation file.
        image_root: folder the ``file_name`` entries are relative to.
        dataset_name: the categories are registered in ``MetadataCatalog`` under it and ids
            mapped to contiguous ones (``load_coco_json`` checks ids only when given a name).
        stats: if given, filled with the counts.

    Returns:
        Detectron2 dataset dicts (annotations keep their ``id``).

    Raises:
        AnnotationError: see the module docstring.
    """
    json_file, image_root = str(json_file), str(image_root)
    try:
        records = load_coco_json(json_file, image_root, dataset_name, extra_annotation_keys=["id"])
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{json_file}:{e.lineno}:{e.colno}: malformed JSON: {e.msg}") from e
    except (KeyError, AssertionError, ValueError, TypeError) as e:
        check_coco_json(json_file)  # raises the precise error when the structure is at fault
        raise AnnotationError(f"{json_file}: rejected by Detectron2's load_coco_json: {e!r}") from e
    if not records:
        raise AnnotationError(f"{json_file}: no images")
    result = clean_records(records, json_file)
    if stats is not None:
        stats.__dict__.update(result.__dict__)
    changed = result.dropped_degenerate or result.dropped_outside or result.clipped
    (logger.warning if changed else logger.info)("annotations %s: %s", json_file, result)
    return records
