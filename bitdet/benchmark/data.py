"""Data-path throughput: decode + augment images per second per CPU core (and GPU decode).

The images are real photos (scikit-image's samples) re-encoded as JPEG at ImageNet-like
and COCO-like sizes, so decode cost is realistic. Each loader runs in this process with one
intra-op thread: the result is per core; a loader with N workers scales up to N times that.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch

from bitdet.benchmark.timing import CLOCKS
from bitdet.errors import ConfigError

__all__ = ["LOADERS", "make_jpegs", "measure_loader", "measure_gpu_decode"]

LOADERS = ("imagefolder", "shards", "hyperrule", "decode_jpeg", "detection")

_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "immunohistochemistry",
    "motorcycle_left",
    "hubble_deep_field",
)


def make_jpegs(num: int, size: Tuple[int, int], quality: int = 90) -> List[bytes]:
    """``num`` JPEG files (bytes) of ``size`` (height, width) cut from scikit-image's photos."""
    import cv2
    import skimage.data

    photos = []
    for name in _PHOTOS:
        loader = getattr(skimage.data, name, None)
        if loader is None:
            continue
        try:
            img = loader()
        except Exception:  # noqa: BLE001 - some samples need optional downloads; skip those
            continue
        if img.ndim == 3 and img.shape[2] == 3:
            photos.append(img)
    if not photos:
        raise RuntimeError("no RGB photo found in skimage.data: cannot build benchmark JPEGs")
    h, w = size
    rng = np.random.default_rng(0)
    out = []
    for i in range(num):
        img = photos[i % len(photos)]
        # A random crop of varying scale, resized: different content per file.
        scale = rng.uniform(0.6, 1.0)
        ch, cw = int(img.shape[0] * scale), int(img.shape[1] * scale)
        y0, x0 = rng.integers(0, img.shape[0] - ch + 1), rng.integers(0, img.shape[1] - cw + 1)
        crop = cv2.resize(img[y0 : y0 + ch, x0 : x0 + cw], (w, h), interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", crop[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError("OpenCV failed to encode a JPEG")
        out.append(buf.tobytes())
    return out


def _decode_jpeg_transform():
    """Inception-style random crop to 224, flip, [-1, 1] on uint8 tensors (torchvision v2)."""
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.RandomResizedCrop(224, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.5] * 3, [0.5] * 3),  # [0, 1] -> [-1, 1]
        ]
    )


def _write_files(jpegs: Sequence[bytes], root: str) -> List[str]:
    """The JPEGs as ``root/<class>/<i>.jpg`` (two classes, an image folder)."""
    paths = []
    for i, data in enumerate(jpegs):
        folder = os.path.join(root, f"class{i % 2}")
        os.makedirs(folder, exist_ok=True)
        paths.append(os.path.join(folder, f"{i:05d}.jpg"))
        with open(paths[-1], "wb") as f:
            f.write(data)
    return paths


def _build_loader(
    loader: str, jpegs: Sequence[bytes], image_size: Sequence[int], tmp: str
) -> Tuple[Callable, str]:
    """``(one(i), description)``: ``one`` decodes and augments image ``i`` (cycled) as
    ``loader`` does."""
    if loader == "imagefolder":
        from bitdet.pretrain.data import ImageFolderDataset, train_transform

        _write_files(jpegs, tmp)
        ds = ImageFolderDataset(tmp, train_transform(224))
        return (
            lambda i: ds[i % len(ds)]
        ), "ImageFolderDataset: PIL decode, Inception crop 224, flip"
    if loader == "shards":
        from bitdet.pretrain.data import train_transform
        from bitdet.pretrain.shards import ShardDataset, write_shards

        paths = _write_files(jpegs, tmp)
        shards = write_shards(
            [(p, i % 2) for i, p in enumerate(paths)], os.path.join(tmp, "shard-%06d.tar")
        )
        ds = ShardDataset(",".join(shards), transform=train_transform(224))
        return (
            lambda i: ds[i % len(ds)]
        ), "ShardDataset (tar): PIL decode, Inception crop 224, flip"
    if loader == "hyperrule":
        from bitdet.data.images import load_image
        from bitdet.hyperrule import get_resolution
        from bitdet.transfer.transforms import train_transform

        paths = _write_files(jpegs, tmp)
        resize, crop = get_resolution(tuple(image_size))
        transform = train_transform(resize, crop)
        return (lambda i: transform(load_image(paths[i % len(paths)]))), (
            f"HyperRule: PIL decode, resize {resize}, crop {crop}, flip"
        )
    if loader == "decode_jpeg":
        from torchvision.io import ImageReadMode, decode_jpeg

        transform = _decode_jpeg_transform()
        data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in jpegs]
        return (lambda i: transform(decode_jpeg(data[i % len(data)], mode=ImageReadMode.RGB))), (
            "torchvision decode_jpeg, v2 Inception crop 224 on uint8"
        )
    if loader == "detection":
        mapper = _detection_mapper()
        h, w = image_size
        dicts = []
        for i, path in enumerate(_write_files(jpegs, tmp)):
            boxes = [
                [w * 0.1 * k, h * 0.1 * k, w * (0.1 * k + 0.2), h * (0.1 * k + 0.2)]
                for k in range(1, 5)
            ]
            dicts.append(
                {
                    "file_name": path,
                    "height": h,
                    "width": w,
                    "image_id": i,
                    "annotations": [
                        {"bbox": bb, "bbox_mode": 0, "category_id": k} for k, bb in enumerate(boxes)
                    ],
                }
            )
        return (
            lambda i: mapper(dict(dicts[i % len(dicts)]))
        ), "Detectron2 DatasetMapper (PIL), BiT RetinaNet augs"
    raise ConfigError(f"BENCH.DATA.LOADERS: unknown loader {loader!r}; expected one of {LOADERS}")


def _detection_mapper(config_file: str = "Base-RetinaNet-BiT.yaml"):
    """Detectron2's training DatasetMapper with the BiT RetinaNet config's augmentations."""
    from detectron2.data import DatasetMapper

    from bitdet.detection import get_bit_cfg

    return DatasetMapper(get_bit_cfg(config_file), is_train=True)


def measure_loader(
    loader: str, num_images: int, iters: int, image_size: Sequence[int], clock: str = "wall"
) -> Dict:
    """Decode + augment throughput of one loader on one CPU core.

    Args:
        loader: one of :data:`LOADERS`: "imagefolder" and "shards" (bitdet's pretraining
            datasets with the Inception-crop transform), "hyperrule" (fine-tuning transform
            for the images' size), "decode_jpeg" (torchvision's tensor route, for
            comparison), "detection" (Detectron2's DatasetMapper with the BiT config).
        num_images: distinct JPEGs, cycled.
        iters: images processed in the timed loop.
        image_size: (height, width) of the JPEGs.
        clock: "wall" or "cpu" (process CPU time), as ``BENCH.CLOCK``.

    Returns:
        A row with ``images_per_sec_per_core``.
    """
    jpegs = make_jpegs(num_images, tuple(image_size))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="bitdet-bench-") as tmp:
            one, decoder = _build_loader(loader, jpegs, image_size, tmp)
            for i in range(min(4, iters)):  # warm-up: imports, allocator
                one(i)
            now = CLOCKS[clock]
            start = now()
            for i in range(iters):
                one(i)
            elapsed = now() - start
    finally:
        torch.set_num_threads(threads)
    return {
        "task": "data",
        "loader": loader,
        "decoder": decoder,
        "device": "cpu",
        "image_size": list(image_size),
        "images": iters,
        "images_per_sec_per_core": iters / elapsed,
        "status": "ok",
        "reason": None,
    }


def measure_gpu_decode(
    num_images: int, iters: int, image_size: Sequence[int], device: str = "cuda"
) -> Dict:
    """Batched nvJPEG decode (``torchvision.io.decode_jpeg(..., device="cuda")``) in images/s."""
    from torchvision.io import ImageReadMode, decode_jpeg

    data = [
        torch.frombuffer(bytearray(b), dtype=torch.uint8)
        for b in make_jpegs(num_images, tuple(image_size))
    ]
    decode_jpeg(data, mode=ImageReadMode.RGB, device=device)  # warm-up: nvJPEG handles
    torch.cuda.synchronize(device)
    rounds = max(1, iters // len(data))
    start = time.perf_counter()
    for _ in range(rounds):
        decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    return {
        "task": "data",
        "loader": "gpu-decode",
        "decoder": "torchvision.io.decode_jpeg (nvJPEG)",
        "device": device,
        "image_size": list(image_size),
        "images": rounds * len(data),
        "images_per_sec": rounds * len(data) / elapsed,
        "status": "ok",
        "reason": None,
    }
