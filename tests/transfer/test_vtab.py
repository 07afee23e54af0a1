"""VTAB-1k protocol: CSV and folder layouts, the union split, the runner's summary."""

import numpy as np
import pytest
from PIL import Image

from bitdet.transfer.datasets import build_dataset, dataset_targets, get_spec
from bitdet.transfer.vtab import VTAB_TASKS, check_tasks, load_split, run_vtab


def _png(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 12), (value, value, value)).save(path)


def test_19_tasks_with_label_preserving_augmentation():
    assert len(VTAB_TASKS) == 19
    assert {t.group for t in VTAB_TASKS.values()} == {"natural", "specialized", "structured"}
    assert (
        VTAB_TASKS["dsprites_location"].flip is False
        and VTAB_TASKS["clevr_count"].random_crop is False
    )
    assert get_spec("vtab/dtd").train_split == "train800val200"


def test_csv_layout(tmp_path):
    rows = ["image,label,split"]
    for i, split in enumerate(["train800"] * 4 + ["val200"] * 2 + ["test"] * 3):
        _png(tmp_path / "img" / f"{i}.png", i * 20)
        rows.append(f"img/{i}.png,{i % 3},{split}")
    (tmp_path / "dtd.csv").write_text("\n".join(rows) + "\n")
    train = load_split(tmp_path, "dtd", "train800")
    both = load_split(tmp_path, "dtd", "train800val200")
    assert len(train) == 4 and len(both) == 6 and len(load_split(tmp_path, "dtd", "test")) == 3
    assert dataset_targets(both).tolist() == [0, 1, 2, 0, 1, 2]
    image, label = both[5]
    assert np.asarray(image)[0, 0, 0] == 100 and label == 2
    assert len(build_dataset("vtab/dtd", str(tmp_path), "test")) == 3
    with pytest.raises(ValueError, match="800"):
        load_split(tmp_path, "dtd", "train800", strict=True)


def test_folder_layout_and_errors(tmp_path):
    for split, n, labels in (("train800", 2, (2, 9)), ("val200", 1, (2, 9)), ("test", 1, (0, 10))):
        for label in labels:
            for i in range(n):
                _png(tmp_path / "svhn" / split / str(label) / f"{i}.png", 50)
    ds = load_split(tmp_path, "svhn", "train800val200")
    # Labels are the integer folder names; train800val200 is train800 followed by val200.
    assert dataset_targets(ds).tolist() == [2, 2, 9, 9, 2, 9]
    with pytest.raises(ValueError, match=r"labels \[10\] outside \[0, 10\)"):
        load_split(tmp_path, "svhn", "test")  # svhn has 10 classes: label 10 is invalid
    with pytest.raises(FileNotFoundError, match="eurosat"):
        load_split(tmp_path, "eurosat", "test")


def test_bad_csv_is_named(tmp_path):
    (tmp_path / "eurosat.csv").write_text("image,label\nx.png,1\n")
    with pytest.raises(ValueError, match="eurosat.csv.*split"):
        load_split(tmp_path, "eurosat", "test")
    (tmp_path / "eurosat.csv").write_text("image,label,split\nx.png,1,train\n")
    with pytest.raises(ValueError, match="eurosat.csv:2"):
        load_split(tmp_path, "eurosat", "test")


def test_runner_reports_each_task_mean_and_failures():
    scores = {"dtd": 50.0, "svhn": 70.0, "eurosat": 90.0}

    def run(task):
        if task == "dmlab":
            raise FileNotFoundError("no dmlab here")
        return {"top1": scores[task]}

    summary = run_vtab(run, ["dtd", "svhn", "eurosat", "dmlab"])
    assert summary["mean"] == pytest.approx(70.0)
    assert summary["groups"] == {"natural": 60.0, "specialized": 90.0}
    assert "no dmlab" in summary["tasks"]["dmlab"]["error"] and summary["complete"] is False
    with pytest.raises(KeyError, match="unknown VTAB"):
        run_vtab(run, ["imagenet"])


def test_check_tasks_reports_every_missing_task_at_once(tmp_path):
    _png(tmp_path / "svhn" / "test" / "0" / "a.png", 10)
    (tmp_path / "dtd.csv").write_text("image,label,split\n")
    found = check_tasks(str(tmp_path), ["svhn", "dtd"])
    assert found == {"svhn": tmp_path / "svhn", "dtd": tmp_path / "dtd.csv"}
    with pytest.raises(
        FileNotFoundError, match=r"2 of 4 tasks have no data: eurosat, dmlab \(each needs"
    ):
        check_tasks(str(tmp_path), ["svhn", "eurosat", "dtd", "dmlab"])
    with pytest.raises(FileNotFoundError, match="not a folder"):
        check_tasks(str(tmp_path / "absent"), ["svhn"])
    with pytest.raises(FileNotFoundError, match="not set: pass --data-root"):
        check_tasks("", ["svhn"])
    with pytest.raises(KeyError, match="unknown VTAB tasks"):
        check_tasks(str(tmp_path), ["svhm"])
