"""tools/visualize.py: predictions of a (here untrained) detector and dataset ground truth as
PNGs."""

import importlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from detectron2.modeling import build_model

from bitdet.data.detection_generate import generate_detection_dataset
from bitdet.detection import BiTCheckpointer, get_bit_cfg
from tests.tools.tool_run import run_tool

CONFIG = "quick_schedules/retinanet_bit_instant_test.yaml"


def _load_tool():
    return importlib.import_module("bitdet.tools.visualize")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A mini generated set (PNG, two sizes of image) and an untrained checkpoint."""
    root = tmp_path_factory.mktemp("vis")
    paths = generate_detection_dataset(
        root / "set", num_train=0, num_val=3, image_size=(96, 128), seed=1, image_format="png"
    )
    model = build_model(get_bit_cfg(CONFIG))
    BiTCheckpointer(model, save_dir=str(root)).save("untrained")
    return root, paths


@pytest.mark.slow
def test_predictions_on_a_folder_and_a_file(data, tmp_path):
    root, paths = data
    extra = tmp_path / "photo.jpg"  # a file of another size, given by name
    cv2.imwrite(str(extra), np.full((70, 90, 3), 127, np.uint8))
    broken = tmp_path / "broken.jpg"  # unreadable: skipped and counted, the rest still drawn
    broken.write_bytes(b"not an image")
    out = run_tool(
        "visualize.py",
        "--config",
        CONFIG,
        "--input",
        paths["val_images"],
        broken,
        extra,
        "--output",
        tmp_path / "vis",
        "--confidence-threshold",
        "0.0",
        "--metadata-from",
        "",
        "MODEL.WEIGHTS",
        root / "untrained.pth",
        "TEST.DETECTIONS_PER_IMAGE",
        "3",
        cwd=tmp_path,
        datasets=root / "datasets",
        timeout=300,
    )
    written = sorted(p.name for p in (tmp_path / "vis").iterdir())
    assert written == ["000000.png", "000001.png", "000002.png", "photo.png"]
    for name in written[:3]:
        drawn = cv2.imread(str(tmp_path / "vis" / name))
        original = cv2.imread(str(paths["val_images"] / name))
        assert drawn.shape == (96, 128, 3)
        assert not np.array_equal(drawn, original)  # threshold 0: three boxes drawn on each
    assert cv2.imread(str(tmp_path / "vis" / "photo.png")).shape == (70, 90, 3)
    assert "3 detections >= 0.00" in out.stderr + out.stdout
    assert "drew 4 images" in out.stdout and "skipped 1 unreadable (not_an_image: 1)" in out.stdout


def test_ground_truth_of_a_registered_dataset(data, tmp_path):
    root, paths = data
    tool = _load_tool()
    spec = f"[['vis_test_val', '{paths['val_json']}', '{paths['val_images']}']]"
    args = tool.parse_args(
        [
            "--config",
            CONFIG,
            "--dataset",
            "vis_test_val",
            "--output",
            str(tmp_path / "gt"),
            "--max-images",
            "2",
            "DATASETS.COCO_FORMAT",
            spec,
        ]
    )
    written = tool.main(args)
    assert [p.name for p in written] == ["000000.png", "000001.png"]
    for path in written:
        drawn = cv2.imread(str(path))
        original = cv2.imread(str(paths["val_images"] / path.name))
        assert drawn.shape == original.shape == (96, 128, 3)
        # Boxes and labels change pixels; the rest of the photo stays close to the original.
        changed = np.abs(drawn.astype(int) - original.astype(int)).max(axis=2) > 30
        assert 0.005 < changed.mean() < 0.6


def test_inputs_are_checked(tmp_path):
    tool = _load_tool()
    with pytest.raises(FileNotFoundError, match="no such file"):
        tool.list_images([str(tmp_path / "missing.jpg")])
    with pytest.raises(FileNotFoundError, match="no images"):
        tool.list_images([str(tmp_path)])
    (tmp_path / "b.png").write_bytes(b"")
    (tmp_path / "a.JPG").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("")
    assert [p.name for p in tool.list_images([str(tmp_path)])] == ["a.JPG", "b.png"]
    with pytest.raises(SystemExit):
        tool.parse_args(
            ["--config", CONFIG, "--output", str(tmp_path)]
        )  # neither --input nor --dataset


def test_ground_truth_of_chosen_images(data, tmp_path):
    root, paths = data
    tool = _load_tool()
    spec = f"[['vis_test_val_ids', '{paths['val_json']}', '{paths['val_images']}']]"
    ids = sorted(image["id"] for image in json.loads(Path(paths["val_json"]).read_text())["images"])
    argv = [
        "--config",
        CONFIG,
        "--dataset",
        "vis_test_val_ids",
        "--output",
        str(tmp_path / "gt"),
        "DATASETS.COCO_FORMAT",
        spec,
    ]
    written = tool.main(
        tool.parse_args([*argv[:4], "--image-ids", str(ids[2]), str(ids[0]), *argv[4:]])
    )
    # Dataset order, only the chosen ones.
    assert [p.name for p in written] == ["000000.png", "000002.png"]
    with pytest.raises(ValueError, match=r"vis_test_val_ids has no image id\(s\) \[999\]"):
        tool.main(tool.parse_args([*argv[:4], "--image-ids", "999", *argv[4:]]))
