"""Readers on small files written in each official on-disk format."""

import gzip
import inspect
import pickle
import struct

import numpy as np
import pytest
from PIL import Image

from bitdet.pretrain import get_pretrain_cfg
from bitdet.transfer import datasets as transfer_datasets
from bitdet.transfer.datasets import (
    DigitsOnPhotos,
    SklearnDigits,
    build_dataset,
    dataset_classes,
    dataset_image_size,
    dataset_targets,
    get_spec,
    list_datasets,
)


def _pickle(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _jpeg(path, color, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def test_registry_has_the_issue_datasets():
    names = set(list_datasets())
    assert {
        "cifar10",
        "cifar100",
        "oxford_pets",
        "flowers102",
        "imagenet",
        "fashion_mnist",
        "mnist",
        "digits",
        "digits_on_photos",
        "imagefolder",
    } <= names
    assert sum(n.startswith("vtab/") for n in names) == 19
    with pytest.raises(KeyError, match="registered: .*cifar10"):
        get_spec("cifar11")


def test_cifar10_pickle_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        _pickle(
            folder / f"data_batch_{i}",
            {
                "data": rng.integers(0, 256, (2, 3072), dtype=np.uint8),
                "labels": [i % 10, (i + 1) % 10],
            },
        )
    test_pixels = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    _pickle(folder / "test_batch", {"data": test_pixels, "labels": [7, 8, 9]})
    _pickle(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    train = build_dataset("cifar10", str(tmp_path), "train")
    test = build_dataset("cifar10", str(tmp_path), "test")
    assert len(train) == 10 and len(test) == 3
    assert dataset_targets(test).tolist() == [7, 8, 9]
    assert dataset_classes(train)[3] == "c3"
    image, label = test[1]
    assert image.size == (32, 32) and label == 8
    # CHW planes in the file -> HWC image: red plane first.
    assert (
        np.asarray(image)[0, 0, 0] == test_pixels[1, 0]
        and np.asarray(image)[0, 0, 1] == test_pixels[1, 1024]
    )


def test_cifar100_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    _pickle(
        folder / "train",
        {
            "data": np.zeros((4, 3072), np.uint8),
            "fine_labels": [0, 99, 5, 5],
            "coarse_labels": [0, 1, 2, 2],
        },
    )
    _pickle(
        folder / "test",
        {"data": np.zeros((1, 3072), np.uint8), "fine_labels": [42], "coarse_labels": [3]},
    )
    _pickle(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)]})
    train = build_dataset("cifar100", str(tmp_path), "train")
    assert dataset_targets(train).tolist() == [0, 99, 5, 5]
    assert len(dataset_classes(train)) == 100


def test_cifar_missing_files_are_named(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(FileNotFoundError, match="data_batch_1.*--download"):
        build_dataset("cifar10", str(tmp_path), "train")


def test_oxford_pets_layout(tmp_path):
    base = tmp_path / "oxford-iiit-pet"
    lines = {"trainval": ["Abyssinian_1 1 1 1", "beagle_2 2 2 1"], "test": ["Abyssinian_3 1 1 1"]}
    for split, rows in lines.items():
        (base / "annotations").mkdir(parents=True, exist_ok=True)
        (base / "annotations" / f"{split}.txt").write_text("\n".join(rows) + "\n")
        for row in rows:
            _jpeg(base / "images" / f"{row.split()[0]}.jpg", (200, 10, 10))
    train = build_dataset("oxford_pets", str(tmp_path))
    assert dataset_targets(train).tolist() == [0, 1]
    assert dataset_classes(train) == ["Abyssinian", "Beagle"]
    image, label = build_dataset("oxford_pets", str(tmp_path), "test")[0]
    assert image.mode == "RGB" and label == 0


def test_flowers102_layout(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    base = tmp_path / "flowers-102"
    for i in range(1, 7):
        _jpeg(base / "jpg" / f"image_{i:05d}.jpg", (0, 100, 0))
    # 1-based labels and image ids, as in the release.
    scipy_io.savemat(base / "imagelabels.mat", {"labels": np.array([[1, 2, 102, 1, 2, 102]])})
    scipy_io.savemat(
        base / "setid.mat",
        {"trnid": np.array([[1, 2]]), "valid": np.array([[3, 6]]), "tstid": np.array([[4, 5]])},
    )
    assert dataset_targets(build_dataset("flowers102", str(tmp_path), "train")).tolist() == [0, 1]
    assert dataset_targets(build_dataset("flowers102", str(tmp_path), "val")).tolist() == [101, 101]
    assert len(build_dataset("flowers102", str(tmp_path), "test")) == 2
    with pytest.raises(ValueError, match="splits"):
        build_dataset("flowers102", str(tmp_path), "trainval")


def _idx(path, array, gz):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(
        struct.pack(">I", d) for d in array.shape
    )
    data = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)


@pytest.mark.parametrize("layout", ["flat_gz", "torchvision"])
def test_mnist_idx_layouts(tmp_path, layout):
    images = np.arange(3 * 28 * 28, dtype=np.uint32).reshape(3, 28, 28) % 256
    labels = np.array([3, 1, 4])
    folder = tmp_path if layout == "flat_gz" else tmp_path / "FashionMNIST" / "raw"
    suffix = ".gz" if layout == "flat_gz" else ""
    for split in ("train", "t10k"):
        _idx(folder / f"{split}-images-idx3-ubyte{suffix}", images, gz=layout == "flat_gz")
        _idx(folder / f"{split}-labels-idx1-ubyte{suffix}", labels, gz=layout == "flat_gz")
    ds = build_dataset("fashion_mnist", str(tmp_path), "test")
    assert dataset_targets(ds).tolist() == [3, 1, 4]
    image, label = ds[2]
    assert image.size == (28, 28) and label == 4
    np.testing.assert_array_equal(np.asarray(image), images[2])
    assert dataset_classes(ds)[0] == "T-shirt/top"


def test_imagefolder_and_measured_size(tmp_path):
    for cls, color in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        for i in range(2):
            _jpeg(tmp_path / "train" / cls / f"{i}.jpg", color, size=(120, 100))
    ds = build_dataset("imagefolder", str(tmp_path), "train")
    assert dataset_classes(ds) == ["cat", "dog"] and dataset_targets(ds).tolist() == [0, 0, 1, 1]
    assert dataset_image_size(get_spec("imagefolder"), ds) == (100, 120)
    with pytest.raises(FileNotFoundError, match="val"):
        build_dataset("imagefolder", str(tmp_path), "val")


def test_digits_split_is_deterministic_stratified_and_disjoint():
    train, test = SklearnDigits("train"), SklearnDigits("test")
    assert len(train) + len(test) == 1797
    assert not set(train.indices) & set(test.indices)
    np.testing.assert_array_equal(SklearnDigits("train").indices, train.indices)
    counts = np.bincount(test.targets, minlength=10) / np.bincount(
        np.concatenate([train.targets, test.targets])
    )
    assert np.all(np.abs(counts - 0.25) < 0.01)
    image, label = train[0]
    assert image.size == (8, 8) and image.mode == "L" and np.asarray(image).max() <= 255
    assert get_spec("digits").flip is False


def test_digits_on_photos_are_the_digits_drawn_once_like_upstream_objects():
    plain, drawn = SklearnDigits("test"), DigitsOnPhotos("test")
    np.testing.assert_array_equal(drawn.targets, plain.targets)
    image, label = drawn[0]
    assert image.size == (32, 32) and image.mode == "RGB" and label == plain[0][1]
    images = np.stack([np.asarray(drawn[i][0]) for i in range(len(drawn))])
    grey = np.array(
        [
            np.array_equal(im[..., 0], im[..., 1]) and np.array_equal(im[..., 1], im[..., 2])
            for im in images
        ]
    )
    assert 0.15 < grey.mean() < 0.35  # photo_prob 0.75: about 1 in 4 stays grey on black
    for im in images[grey][:20]:  # the digit alone on black, 40-100 % of the canvas
        ys, xs = np.nonzero(im[..., 0] > 0)
        assert (
            0.4 * 32 * 0.8 <= max(np.ptp(ys), np.ptp(xs)) + 1 <= 32
            and (im[..., 0] == 0).mean() > 0.2
        )
    assert (images[~grey].min(axis=3) > 0).mean() > 0.8  # a photo behind the tinted ones
    # A fixed dataset: the same drawing every time, another one for another draw seed.
    transfer_datasets._draw_digits.cache_clear()
    np.testing.assert_array_equal(np.asarray(DigitsOnPhotos("test")[5][0]), images[5])
    assert not np.array_equal(np.asarray(DigitsOnPhotos("test", draw_seed=1)[5][0]), images[5])
    assert get_spec("digits_on_photos").flip is False and build_dataset(
        "digits_on_photos", "", "train"
    )[0][0].size == (32, 32)


def test_digits_on_photos_follow_the_demo_upstream_look():
    """The demo's transfer task is drawn with its upstream config's object-like item settings."""
    upstream = get_pretrain_cfg("pretrain/demo_fashion_mnist.yaml").INPUT
    defaults = inspect.signature(DigitsOnPhotos).parameters
    assert defaults["size"].default == upstream.CROP_SIZE
    assert tuple(defaults["scale_range"].default) == tuple(upstream.ITEM_SCALE)
    assert defaults["photo_prob"].default == upstream.PHOTO_PROB
