"""Robust image decoding: any readable file becomes an 8-bit RGB ``PIL.Image``; the rest ``None``.

Large datasets always hold a few bad files (zero bytes, truncated downloads, CMYK JPEGs,
16-bit PNGs, palette images with transparency, absurdly large scans). A training job must
neither crash nor silently train on garbage, so :func:`decode_image` returns ``None`` for a
file it cannot use, logs why (rate-limited), and counts it in :data:`decode_stats`. Counters
are per process: a trainer counts the ``None`` samples that reach its collate function,
which also covers DataLoader worker processes.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import warnings
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from bitdet.numerics import PIXEL_MEAN, PIXEL_STD

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DecodeStats",
    "ToBiTTensor",
    "decode_image",
    "decode_stats",
    "load_image",
]

logger = logging.getLogger(__name__)

# Refuse images above this many pixels before decoding them (a 16k x 16k RGB image is
# already 768 MiB decoded); PIL's own bomb check would warn or raise inconsistently.
DEFAULT_MAX_PIXELS: int = 16384 * 16384
# Log the first few failures in full; afterwards only counts, so a bad shard cannot flood logs.
_MAX_LOGGED = 20


@dataclass
class DecodeStats:
    """How many images were decoded and skipped in this process, with reasons."""

    decoded: int = 0
    skipped: int = 0
    reasons: Dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record_skip(self, reason: str, source: str, detail: str) -> None:
        with self._lock:
            self.skipped += 1
            self.reasons[reason] = self.reasons.get(reason, 0) + 1
            n = self.skipped
        if n <= _MAX_LOGGED:
            logger.warning("skipping unusable image %s (%s: %s)", source, reason, detail)
        elif n == _MAX_LOGGED + 1:
            logger.warning("more unusable images; further ones are counted but not logged")

    def reset(self) -> None:
        with self._lock:
            self.decoded = self.skipped = 0
            self.reasons = {}


#: Process-wide counters of :func:`decode_image`.
decode_stats = DecodeStats()


def _to_rgb(img: Image.Image, background: Tuple[int, int, int]) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. Alpha is composited onto ``background`` (not dropped:
    dropping exposes whatever colour the encoder left under transparent pixels)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit (and 32-bit) grayscale: PIL's convert("L") clips instead of rescaling.
        arr = np.asarray(img, dtype=np.float64)
        scale = 257.0 if img.mode != "F" or arr.max() > 1.0 else 1 / 255.0
        arr = np.clip(arr / scale, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "La", "PA"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "RGBa"):
        base = Image.new("RGB", img.size, background)
        base.paste(img, mask=img.getchannel("A"))
        return base
    return img.convert("RGB") if img.mode != "RGB" else img


def decode_image(
    data: Union[bytes, bytearray, memoryview],
    source: str = "<bytes>",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: Tuple[int, int, int] = (255, 255, 255),
    stats: Optional[DecodeStats] = None,
) -> Optional[Image.Image]:
    """Decode encoded image bytes into an upright 8-bit RGB image, or ``None`` if unusable.

    Args:
        data: the encoded file (JPEG, PNG, WebP, ...).
        source: where it came from (a path, a shard member), used in the log line.
        max_pixels: images with more pixels are refused before decoding.
        background: colour behind transparent pixels.
        stats: counters to update (default: the process-wide :data:`decode_stats`).

    Returns:
        The RGB image with EXIF orientation applied, or ``None`` (empty, truncated, not an
        image, too large); the reason is logged and counted.
    """
    stats = decode_stats if stats is None else stats
    if len(data) == 0:
        stats.record_skip("empty", source, "zero bytes")
        return None
    try:
        with warnings.catch_warnings():
            # We enforce our own size limit below; PIL's warning would only add noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))  # reads the header only
            w, h = img.size
            if w * h > max_pixels or w <= 0 or h <= 0:
                stats.record_skip("too_large", source, f"{w}x{h} exceeds {max_pixels} pixels")
                return None
            img.load()  # full decode: raises on truncated data
            img = ImageOps.exif_transpose(img) or img
            img = _to_rgb(img, background)
    except Image.DecompressionBombError as e:
        stats.record_skip("too_large", source, str(e))
        return None
    except UnidentifiedImageError as e:
        stats.record_skip("not_an_image", source, str(e))
        return None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as e:
        # PIL signals truncated or malformed streams with OSError / SyntaxError / ValueError.
        stats.record_skip("corrupt", source, f"{type(e).__name__}: {e}")
        return None
    with stats._lock:
        stats.decoded += 1
    return img


def load_image(path: Union[str, os.PathLike], **kwargs) -> Optional[Image.Image]:
    """Read and :func:`decode_image` a file; an unreadable file also gives ``None``.

    Args:
        path: image file.
        **kwargs: passed to :func:`decode_image`.
    """
    stats = kwargs.get("stats") or decode_stats
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        stats.record_skip("unreadable", str(path), f"{type(e).__name__}: {e}")
        return None
    return decode_image(data, source=str(path), **kwargs)


class ToBiTTensor:
    """PIL image (any mode) -> float32 tensor ``(3, H, W)`` in [-1, 1], RGB:
    ``(x - 127.5) / 127.5``.

    The uint8 pixels are converted to float once and scaled in place: the same values as a
    float NumPy round trip or PILToTensor + ToDtype + Normalize, with fewer passes.
    """

    def __call__(self, image: Image.Image) -> torch.Tensor:
        # Grayscale digits and palette PNGs become 3 equal / decoded channels, as BiT expects RGB.
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        hwc = torch.from_numpy(np.array(rgb, dtype=np.uint8, copy=True))
        chw = torch.empty((3, rgb.height, rgb.width), dtype=torch.float32)
        chw.copy_(hwc.permute(2, 0, 1))
        return chw.sub_(PIXEL_MEAN).div_(PIXEL_STD)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={PIXEL_MEAN}, std={PIXEL_STD})"
