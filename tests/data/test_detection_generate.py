"""bitdet/data/detection_generate.py: COCO structure, tight boxes, determinism, idempotence,
loading."""

import json

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from bitdet.data.detection_generate import (
    FASHION_MNIST_CLASSES,
    generate_detection_dataset,
    is_complete,
)
from bitdet.detection import register_coco_format
from tests.tools.tool_run import run_tool

SPEC = dict(num_train=6, num_val=3, image_size=(64, 80), seed=3)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gen") / "set"
    paths = generate_detection_dataset(folder, **SPEC)
    return folder, paths


def _load(path):
    with open(path) as f:
        return json.load(f)


def test_layout_and_coco_fields(generated):
    folder, paths = generated
    assert paths["train_json"] == folder / "annotations" / "instances_train.json"
    for split, count in (("train", 6), ("val", 3)):
        data = _load(paths[f"{split}_json"])
        assert [c["name"] for c in data["categories"]] == list(FASHION_MNIST_CLASSES)
        assert [c["id"] for c in data["categories"]] == list(range(1, 11))
        assert len(data["images"]) == count
        assert {im["id"] for im in data["images"]} == set(range(1, count + 1))
        per_image = np.bincount([a["image_id"] for a in data["annotations"]], minlength=count + 1)[
            1:
        ]
        assert per_image.min() >= 1 and per_image.max() <= 6
        assert len({a["id"] for a in data["annotations"]}) == len(data["annotations"])
        for im in data["images"]:
            image = cv2.imread(str(folder / split / im["file_name"]))
            assert image.shape == (64, 80, 3) and (im["height"], im["width"]) == (64, 80)
        for a in data["annotations"]:
            x, y, w, h = a["bbox"]
            assert a["iscrowd"] == 0 and 1 <= a["category_id"] <= 10
            assert x >= 0 and y >= 0 and x + w <= 80 and y + h <= 64 and w > 0 and h > 0
            assert a["area"] == pytest.approx(w * h)


def test_boxes_are_tight_around_the_pasted_items(monkeypatch):
    """On a black background every box edge row/column holds item pixels (tight), none is empty."""
    from bitdet.data import detection_generate as gen
    from bitdet.data.fashion_mnist import FashionMNIST

    monkeypatch.setattr(gen, "_background", lambda rng, h, w: np.zeros((h, w, 3), np.uint8))
    source = FashionMNIST(gen.FASHION_MNIST_DIR, split="test", indices=range(200))
    for index in range(5):
        image, objects = gen._compose(
            np.random.default_rng(index), source.images, source.targets, 96, 128
        )
        assert 1 <= len(objects) <= 6
        for label, (x, y, w, h), _ in objects:
            box = image[int(y) : int(y + h), int(x) : int(x + w)].max(axis=2)
            assert box.shape == (h, w) and 0 <= label < 10
            for edge in (box[0], box[-1], box[:, 0], box[:, -1]):
                assert edge.max() > 0


def test_masks_are_the_opaque_item_pixels_and_fill_their_boxes(monkeypatch):
    """One item per image on black: the mask holds the pixels the item made bright (alpha >= 0.5
    gives intensity >= 16 in the brightest channel) and its bounding box is the object's box."""
    from bitdet.data import detection_generate as gen
    from bitdet.data.fashion_mnist import FashionMNIST

    monkeypatch.setattr(gen, "_background", lambda rng, h, w: np.zeros((h, w, 3), np.uint8))
    monkeypatch.setattr(gen, "_MAX_OBJECTS", 1)
    source = FashionMNIST(gen.FASHION_MNIST_DIR, split="test", indices=range(200))
    for index in range(5):
        image, objects = gen._compose(
            np.random.default_rng(index), source.images, source.targets, 96, 128
        )
        (placed,) = objects
        full = mask_util.decode(gen._rle(placed, 96, 128)).astype(bool)
        brightest = image.max(axis=2)
        assert not full[brightest < 16].any()  # every mask pixel is bright
        assert full[brightest >= 17].all()  # every clearly bright pixel is in the mask
        ys, xs = np.nonzero(full)
        assert [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()] == placed.bbox


def test_annotations_carry_rle_masks_within_their_boxes(generated):
    _, paths = generated
    data = _load(paths["train_json"])
    for a in data["annotations"]:
        x, y, w, h = (int(v) for v in a["bbox"])
        mask = mask_util.decode(a["segmentation"])
        assert mask.shape == (64, 80) and a["segmentation"]["size"] == [64, 80]
        assert 0 < mask.sum() < w * h and mask.sum() == mask[y : y + h, x : x + w].sum()


def test_overlap_is_limited(generated):
    _, paths = generated
    data = _load(paths["train_json"])
    for im in data["images"]:
        boxes = np.array([a["bbox"] for a in data["annotations"] if a["image_id"] == im["id"]])
        x0, y0, x1, y1 = (
            boxes[:, 0],
            boxes[:, 1],
            boxes[:, 0] + boxes[:, 2],
            boxes[:, 1] + boxes[:, 3],
        )
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                inter = max(0, min(x1[i], x1[j]) - max(x0[i], x0[j])) * max(
                    0, min(y1[i], y1[j]) - max(y0[i], y0[j])
                )
                small = min(boxes[i, 2] * boxes[i, 3], boxes[j, 2] * boxes[j, 3])
                assert inter / small <= 0.4 + 1e-9


def test_same_seed_same_bytes_other_seed_differs(generated, tmp_path):
    folder, paths = generated
    again = generate_detection_dataset(tmp_path / "again", **SPEC)
    for key in ("train_json", "val_json"):
        assert again[key].read_bytes() == paths[key].read_bytes()
    assert (tmp_path / "again" / "train" / "000002.jpg").read_bytes() == (
        folder / "train" / "000002.jpg"
    ).read_bytes()
    other = generate_detection_dataset(tmp_path / "other", **dict(SPEC, seed=4))
    assert other["train_json"].read_bytes() != paths["train_json"].read_bytes()


def test_train_and_val_items_come_from_different_files(tmp_path):
    """Val items are Fashion-MNIST test items: the split's pixels never equal a train image's."""
    a = generate_detection_dataset(
        tmp_path, num_train=2, num_val=2, image_size=(64, 64), seed=0, image_format="png"
    )
    train = cv2.imread(str(tmp_path / "train" / "000000.png"))
    val = cv2.imread(str(tmp_path / "val" / "000000.png"))
    assert not np.array_equal(train, val)
    assert _load(a["val_json"])["info"]["bitdet"]["num_images"] == 2


def test_idempotent_and_half_written_sets_are_regenerated(generated, tmp_path):
    folder, paths = generated
    assert is_complete(folder, **SPEC)
    mtime = paths["train_json"].stat().st_mtime_ns
    generate_detection_dataset(folder, **SPEC)
    assert paths["train_json"].stat().st_mtime_ns == mtime  # skipped

    half = tmp_path / "half"
    p = generate_detection_dataset(half, **SPEC)
    original = p["train_json"].read_bytes()
    (half / "train" / "000004.jpg").unlink()  # interrupted after the json? an image is missing
    p["val_json"].write_text('{"images": [')  # a truncated json
    assert not is_complete(half, **SPEC)
    generate_detection_dataset(half, **SPEC)
    assert (half / "train" / "000004.jpg").is_file() and p["train_json"].read_bytes() == original
    assert _load(p["val_json"])["images"]
    assert not is_complete(half, **dict(SPEC, num_val=4))  # other settings: not complete
    assert not list(half.rglob("*.tmp"))


def test_bad_arguments_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="image_format"):
        generate_detection_dataset(tmp_path, 1, 1, image_format="gif")
    with pytest.raises(ValueError, match="image_size"):
        generate_detection_dataset(tmp_path, 1, 1, image_size=(16, 16))
    with pytest.raises(FileNotFoundError, match="Fashion-MNIST"):
        generate_detection_dataset(tmp_path, 1, 1, fashion_mnist_root=tmp_path / "nowhere")


def test_detectron2_loads_the_generated_set(generated):
    folder, paths = generated
    register_coco_format("test_generated_train", paths["train_json"], paths["train_images"])
    dicts = DatasetCatalog.get("test_generated_train")
    data = _load(paths["train_json"])
    assert len(dicts) == 6
    assert sum(len(d["annotations"]) for d in dicts) == len(data["annotations"])
    assert MetadataCatalog.get("test_generated_train").thing_classes == list(FASHION_MNIST_CLASSES)
    assert {a["category_id"] for d in dicts for a in d["annotations"]} <= set(
        range(10)
    )  # contiguous


@pytest.mark.slow
def test_command_line(tmp_path):
    out = run_tool(
        "generate_detection_data.py",
        "--output",
        tmp_path / "cli",
        "--num-train",
        "2",
        "--num-val",
        "1",
        "--image-size",
        "48",
        "64",
        "--format",
        "png",
        cwd=tmp_path,
        datasets=tmp_path / "ds",
    )
    assert "train: 2 images" in out.stdout and "val: 1 images" in out.stdout
    assert cv2.imread(str(tmp_path / "cli" / "val" / "000000.png")).shape == (48, 64, 3)
