"""decode_image: every odd file becomes RGB or None, never an exception."""

import io

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from bitdet.data import DecodeStats, decode_image, load_image


def encode(img, fmt="PNG", **kw):
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture
def photo():
    return Image.fromarray(skdata.chelsea()[:64, :96])  # a real photo, 96x64


def test_real_jpeg_decodes_to_rgb(photo):
    img = decode_image(encode(photo, "JPEG"), stats=DecodeStats())
    assert img.mode == "RGB" and img.size == (96, 64)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b"definitely not an image", "not_an_image"),
    ],
)
def test_unusable_bytes(data, reason):
    stats = DecodeStats()
    assert decode_image(data, stats=stats) is None
    assert stats.skipped == 1 and stats.reasons == {reason: 1}


def test_truncated_jpeg_and_png_are_skipped(photo):
    stats = DecodeStats()
    for fmt in ("JPEG", "PNG"):
        blob = encode(photo, fmt)
        assert decode_image(blob[: len(blob) // 2], source=f"half.{fmt}", stats=stats) is None
    assert stats.skipped == 2 and stats.decoded == 0


def test_modes_become_rgb(photo):
    stats = DecodeStats()
    gray16 = Image.fromarray((np.arange(64 * 32).reshape(32, 64) * 32).astype(np.uint16))
    out = decode_image(encode(gray16), stats=stats)
    assert out.mode == "RGB" and np.asarray(out)[-1, -1, 0] == 254  # 16-bit rescaled, not clipped
    assert decode_image(encode(photo.convert("CMYK"), "JPEG"), stats=stats).mode == "RGB"
    assert decode_image(encode(photo.convert("L")), stats=stats).mode == "RGB"
    rgba = photo.convert("RGBA")
    rgba.putalpha(0)  # fully transparent -> the background colour
    out = decode_image(encode(rgba), background=(255, 255, 255), stats=stats)
    assert out.mode == "RGB" and np.asarray(out).min() == 255
    pal = photo.convert("P")
    pal.info["transparency"] = 0
    assert decode_image(encode(pal, transparency=0), stats=stats).mode == "RGB"
    assert stats.decoded == 5 and stats.skipped == 0


def test_exif_orientation_is_applied(photo):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = decode_image(encode(photo, "JPEG", exif=exif), stats=DecodeStats())
    assert out.size == (64, 96)


def test_oversized_image_is_refused_before_decoding(photo):
    stats = DecodeStats()
    assert decode_image(encode(photo), max_pixels=1000, stats=stats) is None
    assert stats.reasons == {"too_large": 1}


def test_load_image_missing_file_is_counted(tmp_path):
    stats = DecodeStats()
    assert load_image(tmp_path / "nope.jpg", stats=stats) is None
    assert stats.reasons == {"unreadable": 1}
    (tmp_path / "zero.jpg").write_bytes(b"")
    assert load_image(tmp_path / "zero.jpg", stats=stats) is None
    assert stats.skipped == 2
