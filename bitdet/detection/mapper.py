"""A Detectron2 ``DatasetMapper`` that skips unreadable images instead of ending the run.

Detectron2's ``read_image`` raises on an empty, truncated or oversized file (see
tests/reliability/test_bad_images.py), which would stop a multi-day run at the first bad
file. Returning ``None`` is Detectron2's own protocol for "skip this sample": its
``MapDataset`` draws another index. Skips are logged (rate-limited) and counted in
:data:`bitdet.data.images.decode_stats` with the reason ``unreadable``; usable images in
odd formats (grayscale, CMYK, 16-bit, alpha, EXIF-rotated) are converted by Detectron2.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from detectron2.data import DatasetMapper
from PIL import Image

from bitdet.data.images import decode_stats

__all__ = ["SkippingDatasetMapper"]


class SkippingDatasetMapper(DatasetMapper):
    """:class:`DatasetMapper` that returns ``None`` (skip) for an image it cannot read."""

    def __call__(self, dataset_dict: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        try:
            return super().__call__(dataset_dict)
        except (OSError, SyntaxError, Image.DecompressionBombError) as e:
            # PIL reports empty / truncated / malformed files as OSError (incl. UnidentifiedImageError)
            # or SyntaxError; an oversized one as DecompressionBombError.
            decode_stats.record_skip("unreadable", dataset_dict.get("file_name", "?"), f"{type(e).__name__}: {e}")
            return None
