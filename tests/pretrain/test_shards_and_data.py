"""Shard writer/reader round trip, ImageFolder / label file sources, corrupt files."""

import io
import tarfile

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from skimage import data as skdata

from bitdet.engine import collate_skip_none
from bitdet.pretrain import ImageFolderDataset, LabelFileDataset, ShardDataset, write_shards
from bitdet.pretrain.data import train_transform

PHOTOS = {
    "astronaut": skdata.astronaut,
    "chelsea": skdata.chelsea,
    "coffee": skdata.coffee,
    "rocket": skdata.rocket,
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """root/<class>/<image>: 4 real photos x 2 sizes, PNG and JPEG, plus one corrupt file."""
    root = tmp_path_factory.mktemp("folder")
    for name, load in PHOTOS.items():
        (root / name).mkdir()
        img = Image.fromarray(load()).convert("RGB")
        img.resize((40, 30)).save(root / name / "a.png")
        img.resize((24, 36)).save(root / name / "b.jpg", quality=90)
    (root / "rocket" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return root


def test_shard_round_trip_with_webdataset_reader(folder, tmp_path):
    ds = ImageFolderDataset(folder)
    samples = ds.samples + [(ds.samples[0][0], [0, 3])]  # one multi-label sample
    shards = write_shards(samples, str(tmp_path / "s-%06d.tar"), max_count=4)
    assert len(shards) == 3
    # Our random-access reader and the webdataset library agree on every sample.
    ours = ShardDataset(str(tmp_path / "s-{000000..000002}.tar"), num_classes=4, multilabel=True)
    assert len(ours) == len(samples) == 10
    theirs = list(
        wds.WebDataset([str(p) for p in sorted(tmp_path.glob("s-*.tar"))], shardshuffle=False)
    )
    assert len(theirs) == 10
    for i, (path, labels) in enumerate(samples):
        with open(path, "rb") as f:
            raw = f.read()
        ext = path.rsplit(".", 1)[1]
        assert theirs[i][ext] == raw
        expected = torch.zeros(4)
        expected[labels] = 1
        item = ours[i]
        if path.endswith("broken.jpg"):
            assert item is None
            continue
        img, target = item
        assert np.array_equal(np.asarray(img), np.asarray(Image.open(path).convert("RGB")))
        assert torch.equal(target, expected)


def test_single_label_shards_and_transforms(folder, tmp_path):
    ds = ImageFolderDataset(folder)
    write_shards(ds.samples, str(tmp_path / "t-%06d.tar"), max_count=100)
    shards = ShardDataset(str(tmp_path / "t-000000.tar"), transform=train_transform(16))
    items = [shards[i] for i in range(len(shards))]
    images, targets, skipped = collate_skip_none(items)
    assert skipped == 1 and images.shape == (8, 3, 16, 16)
    assert images.min() >= -1 and images.max() <= 1
    assert sorted(targets.tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_multilabel_sample_in_single_label_mode_is_an_error(folder, tmp_path):
    write_shards([(ImageFolderDataset(folder).samples[0][0], [1, 2])], str(tmp_path / "m-%06d.tar"))
    with pytest.raises(ValueError, match="MULTILABEL"):
        ShardDataset(str(tmp_path / "m-000000.tar"))[0]


def test_missing_and_bad_shards_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="x-000001.tar"):
        ShardDataset(str(tmp_path / "x-{000000..000001}.tar"))
    (tmp_path / "x-000000.tar").write_bytes(b"not a tar at all" * 64)
    with pytest.raises(ValueError, match="x-000000.tar"):
        ShardDataset(str(tmp_path / "x-000000.tar"))


def test_truncated_member_inside_a_shard_is_skipped(folder, tmp_path):
    blob = io.BytesIO()
    good = (folder / "chelsea" / "a.png").read_bytes()
    with tarfile.open(fileobj=blob, mode="w") as tar:
        for key, data in (("k0.png", good), ("k1.png", good[: len(good) // 3]), ("k2.png", b"")):
            info = tarfile.TarInfo(key)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            label = tarfile.TarInfo(key.replace(".png", ".cls"))
            label.size = 1
            tar.addfile(label, io.BytesIO(b"1"))
    (tmp_path / "c.tar").write_bytes(blob.getvalue())
    ds = ShardDataset(str(tmp_path / "c.tar"))
    assert ds[0][1] == 1 and ds[1] is None and ds[2] is None


def test_imagefolder_and_label_file(folder, tmp_path):
    ds = ImageFolderDataset(folder)
    assert ds.classes == sorted(PHOTOS) and len(ds) == 9
    lines = ["# path  labels", "chelsea/a.png\t1,2", "coffee/b.jpg 0", "rocket/broken.jpg\t3"]
    (folder / "labels.tsv").write_text("\n".join(lines))
    lf = LabelFileDataset(folder / "labels.tsv", num_classes=4, multilabel=True)
    assert len(lf) == 3 and lf[0][1].tolist() == [0, 1, 1, 0] and lf[2] is None
    with pytest.raises(ValueError, match="MULTILABEL"):
        LabelFileDataset(folder / "labels.tsv", num_classes=4)
    with pytest.raises(ValueError, match="outside"):
        LabelFileDataset(folder / "labels.tsv", num_classes=2, multilabel=True)
