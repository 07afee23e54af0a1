"""tools/pretrain.py and tools/write_shards.py end to end (instant-test configs)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from bitdet import create_model
from bitdet.weights import load_weights

REPO = Path(__file__).resolve().parents[2]


def run_tool(*args, timeout=240):
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_pretrain_instant_fashion_mnist(tmp_path):
    run_tool(
        "tools/pretrain.py",
        "--config-file",
        "configs/quick_schedules/pretrain_fashion_mnist_instant_test.yaml",
        "OUTPUT_DIR",
        str(tmp_path),
    )
    final = json.loads((tmp_path / "final.json").read_text())
    assert (
        final["steps"] == 3
        and final["num_samples"] == 32
        and 0 <= final["top1"] <= 100
        and final["img_per_s"] > 0
    )
    rows = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    assert [r["lr"] for r in rows if "lr" in r] == pytest.approx(
        [0.00375, 0.00375, 0.000375]
    )  # warm-up 1, decay at 2
    # both exports load into a fresh model and agree
    a, b = create_model("R14-tiny", num_classes=10), create_model("R14-tiny", num_classes=10)
    load_weights(a, tmp_path / "model_final.pth")
    load_weights(b, tmp_path / "model_final.npz")
    for k, v in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[k], v)


@pytest.mark.slow
def test_write_shards_then_pretrain_multilabel(tmp_path):
    labels = []
    for i, name in enumerate(["astronaut", "chelsea", "coffee", "rocket", "camera"]):
        img = Image.fromarray(getattr(skdata, name)()).convert("RGB").resize((32, 32))
        for j in range(2):
            path = tmp_path / "img" / f"{name}{j}.jpg"
            path.parent.mkdir(exist_ok=True)
            img.rotate(90 * j).save(path)
            labels.append(f"img/{path.name}\t{i},{(i + 1) % 5}")
    (tmp_path / "labels.tsv").write_text("\n".join(labels))
    run_tool(
        "tools/write_shards.py",
        "--label-file",
        str(tmp_path / "labels.tsv"),
        "--output",
        str(tmp_path / "shards" / "train-%06d.tar"),
        "--max-count",
        "6",
    )
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == [
        "train-000000.tar",
        "train-000000.tar.idx",
        "train-000001.tar",
        "train-000001.tar.idx",
    ]
    pattern = str(tmp_path / "shards" / "train-{000000..000001}.tar")
    run_tool(
        "tools/pretrain.py",
        "--config-file",
        "configs/quick_schedules/pretrain_webdataset_multilabel_instant_test.yaml",
        "DATASETS.TRAIN.ROOT",
        pattern,
        "DATASETS.TEST.ROOT",
        pattern,
        "OUTPUT_DIR",
        str(tmp_path / "out"),
    )
    final = json.loads((tmp_path / "out" / "final.json").read_text())
    assert final["num_samples"] == 10 and 0 <= final["mAP"] <= 100 and "precision@1" in final
    state = torch.load(tmp_path / "out" / "model_final.pth", weights_only=True)["model"]
    # the sigmoid head started at bias -10 and three small steps keep it near there
    assert np.allclose(state["fc.bias"].numpy(), -10, atol=0.5)
