import gzip

import numpy as np
import pytest

from bitdet.data import FashionMNIST, read_idx


def test_splits_shapes_and_labels():
    train, test = FashionMNIST(split="train"), FashionMNIST(split="test")
    assert len(train) == 60000 and len(test) == 10000
    x, y = test[0]
    assert x.shape == (3, 28, 28) and -1.0 <= x.min() and x.max() <= 1.0 and 0 <= y < 10
    assert np.bincount(test.targets).tolist() == [1000] * 10  # the published balance


def test_subset_per_class_is_balanced_and_reproducible():
    ds = FashionMNIST(split="test")
    a, b = ds.subset_per_class(3, seed=1), ds.subset_per_class(3, seed=1)
    assert len(a) == 30 and np.bincount(a.targets).tolist() == [3] * 10
    assert np.array_equal(a.images, b.images)


def test_missing_files_name_the_paths_and_the_package(tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match=r"train-images-idx3-ubyte\.gz.*apt-get install dataset-fashion-mnist",
    ):
        FashionMNIST(root=tmp_path)


def test_read_idx_checks_header_and_size(tmp_path):
    good = tmp_path / "ok.gz"
    with gzip.open(good, "wb") as f:
        f.write(bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(6)))
    assert read_idx(good).tolist() == [[0, 1, 2], [3, 4, 5]]
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 9, 1, 2]))
    with pytest.raises(ValueError, match="shape"):
        read_idx(short)
    wrong = tmp_path / "float"
    wrong.write_bytes(bytes([0, 0, 0x0D, 1, 0, 0, 0, 1]) + bytes(4))
    with pytest.raises(ValueError, match="unsigned-byte"):
        read_idx(wrong)
