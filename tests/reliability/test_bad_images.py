"""Bad image files, through bitdet's decoder and through Detectron2's detection read path.

``bitdet.data.images.load_image`` (classification / pretraining data) converts what it can
to 8-bit upright RGB and skips the rest with a logged, counted reason. Detectron2's
``detection_utils.read_image`` (what its ``DatasetMapper`` calls) converts the usable
ones too, but *raises* on an empty, truncated or oversized file; the table below pins that
behaviour so a change in either is noticed.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from detectron2.data.detection_utils import read_image
from PIL import Image
from skimage import data as skdata

from bitdet.data.images import DecodeStats, load_image


def _photo(size=(48, 32)) -> Image.Image:
    return Image.fromarray(skdata.astronaut()).resize(size)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def _huge_png() -> bytes:
    """A valid PNG header declaring 100000 x 100000 pixels (no need to allocate them)."""
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b""))
        + _png_chunk(b"IEND", b"")
    )


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    return _encode(_photo((48, 32)), "JPEG", exif=exif)


def _alpha() -> bytes:
    img = _photo().convert("RGBA")
    img.putalpha(Image.new("L", img.size, 0))  # fully transparent
    return _encode(img, "PNG")


def _sixteen_bit() -> bytes:
    arr = (np.arange(48 * 32).reshape(32, 48) * 40).astype(np.uint16)
    img = Image.fromarray(arr)  # mode "I;16"
    assert img.mode == "I;16"
    return _encode(img, "PNG")


FILES = {
    "truncated": lambda: _encode(_photo(), "JPEG")[:300],
    "zero_bytes": lambda: b"",
    "grayscale": lambda: _encode(_photo().convert("L"), "PNG"),
    "cmyk": lambda: _encode(_photo().convert("CMYK"), "JPEG"),
    "16_bit": _sixteen_bit,
    "alpha": _alpha,
    "exif_rotation": _exif_rotated,
    "huge_dimensions": _huge_png,
}
# name -> (bitdet outcome: (width, height) or skip reason, Detectron2's read_image outcome)
EXPECTED = {
    "truncated": ("corrupt", OSError),
    "zero_bytes": ("empty", OSError),  # PIL.UnidentifiedImageError is an OSError
    "grayscale": ((48, 32), (32, 48, 3)),
    "cmyk": ((48, 32), (32, 48, 3)),
    "16_bit": ((48, 32), (32, 48, 3)),
    "alpha": ((48, 32), (32, 48, 3)),
    "exif_rotation": ((32, 48), (48, 32, 3)),
    "huge_dimensions": ("too_large", Image.DecompressionBombError),
}


@pytest.fixture(params=sorted(FILES))
def bad_file(request, tmp_path):
    path = tmp_path / f"{request.param}.img"
    path.write_bytes(FILES[request.param]())
    return request.param, path


def test_bitdet_decoder_converts_or_skips_and_counts(bad_file, caplog):
    name, path = bad_file
    stats = DecodeStats()
    img = load_image(path, stats=stats)
    expected = EXPECTED[name][0]
    if isinstance(expected, str):
        assert img is None and stats.reasons == {expected: 1} and stats.skipped == 1
        assert str(path) in caplog.text and expected in caplog.text
    else:
        assert img.mode == "RGB" and img.size == expected and stats.decoded == 1
        pixels = np.asarray(img)
        if name == "alpha":  # composited onto white, not the hidden colours
            assert (pixels == 255).all()
        if name == "16_bit":  # rescaled, not clipped to 255
            assert 0 < pixels.mean() < 255 and len(np.unique(pixels)) > 100


def test_detectron2_read_image_converts_or_raises(bad_file):
    name, path = bad_file
    expected = EXPECTED[name][1]
    if isinstance(expected, type):
        with pytest.raises(expected):
            read_image(str(path), format="RGB")
    else:
        assert read_image(str(path), format="RGB").shape == expected


def test_detection_mapper_skips_unreadable_images_and_counts(tmp_path):
    from bitdet.data.images import decode_stats
    from bitdet.detection import get_bit_cfg
    from bitdet.detection.mapper import SkippingDatasetMapper

    cfg = get_bit_cfg("quick_schedules/retinanet_bit_instant_test.yaml")
    mapper = SkippingDatasetMapper(cfg, is_train=True)
    ann = [{"bbox": [2, 2, 20, 10], "bbox_mode": 1, "category_id": 0, "iscrowd": 0}]
    decode_stats.reset()
    for name in sorted(FILES):
        path = tmp_path / f"{name}.img"
        path.write_bytes(FILES[name]())
        size = EXPECTED[name][1][:2] if isinstance(EXPECTED[name][1], tuple) else (32, 48)
        out = mapper(
            {"file_name": str(path), "height": size[0], "width": size[1], "annotations": list(ann)}
        )
        assert (out is None) == isinstance(EXPECTED[name][0], str), name
        if out is not None:
            assert out["image"].shape[0] == 3 and len(out["instances"]) == 1
    assert decode_stats.reasons == {"unreadable": 3}
