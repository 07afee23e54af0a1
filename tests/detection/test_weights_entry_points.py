"""Detectron2's own entry points with BiT weights: BiTPredictor, MODEL.WEIGHTS errors through
train_net, and the demo datasets found by the stock DatasetCatalog / DefaultTrainer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model

from bitdet import create_model
from bitdet.detection import BiTCheckpointer, BiTPredictor, get_bit_cfg
from bitdet.weights import (
    CheckpointError,
    CheckpointMismatchError,
    WeightsNotFoundError,
    save_checkpoint,
)
from tests.official_npz import write_official_npz
from tests.tools.tool_run import run_python

INSTANT = "quick_schedules/retinanet_bit_instant_test.yaml"


def _predict(cfg):
    predictor = BiTPredictor(cfg)
    image = np.random.default_rng(0).integers(
        0, 256, (96, 128, 3), dtype=np.uint8
    )  # BGR, as cv2 reads it
    instances = predictor(image)["instances"]
    assert instances.image_size == (96, 128)
    return predictor


def test_predictor_loads_npz_and_bitdet_files(tmp_path):
    arrays = write_official_npz(tmp_path / "tiny.npz", num_classes=5)
    predictor = _predict(get_bit_cfg(INSTANT, ["MODEL.WEIGHTS", str(tmp_path / "tiny.npz")]))
    expected = torch.from_numpy(
        arrays["resnet/block3/unit01/b/standardized_conv2d/kernel"]
    ).permute(3, 2, 0, 1)
    assert torch.equal(predictor.model.backbone.bottom_up.block3.unit01.conv2.weight, expected)
    assert predictor.cfg.MODEL.WEIGHTS == str(tmp_path / "tiny.npz")

    source = create_model("R14-tiny", num_classes=3)
    save_checkpoint(tmp_path / "ours.pth", source)
    predictor = _predict(get_bit_cfg(INSTANT, ["MODEL.WEIGHTS", str(tmp_path / "ours.pth")]))
    assert torch.equal(
        predictor.model.backbone.bottom_up.block4.unit01.conv3.weight,
        source.block4.unit01.conv3.weight,
    )


def test_predictor_loads_timm_files(tmp_path):
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("resnetv2_50x1_bit", num_classes=3)
    save_file(source.state_dict(), str(tmp_path / "model.safetensors"))
    predictor = _predict(
        get_bit_cfg(
            INSTANT,
            ["MODEL.BIT.VARIANT", "R50x1", "MODEL.WEIGHTS", str(tmp_path / "model.safetensors")],
        )
    )
    trunk = predictor.model.backbone.bottom_up
    assert torch.equal(trunk.block3.unit06.gn2.bias, source.stages[2].blocks[5].norm2.bias)
    assert {m.eps for m in trunk.modules() if hasattr(m, "clear_weight_cache")} == {1e-8}


def test_weights_errors_name_the_problem(tmp_path):
    model = build_model(get_bit_cfg(INSTANT))
    with pytest.raises(WeightsNotFoundError, match="'nope.npz' not found"):
        BiTCheckpointer(model).load("nope.npz")
    with pytest.raises(WeightsNotFoundError, match="BiT-M-R50x9 is no official BiT checkpoint"):
        BiTCheckpointer(model).load("BiT-M-R50x9")
    write_official_npz(tmp_path / "r26.npz", layers=(2, 2, 2, 2), num_classes=0)
    with pytest.raises(
        CheckpointMismatchError, match="this file is R26-tiny .*set MODEL.BIT.VARIANT R26-tiny"
    ):
        BiTCheckpointer(model).load(str(tmp_path / "r26.npz"))
    # a stock Detectron2 ResNet checkpoint used to load nothing into the BiT trunk, silently
    torch.save(
        {
            "model": {
                "backbone.bottom_up.stem.conv1.weight": torch.zeros(64, 3, 7, 7),
                "backbone.bottom_up.res2.0.conv1.weight": torch.zeros(64, 64, 1, 1),
            },
            "__author__": "Detectron2 Model Zoo",
        },
        tmp_path / "R-50.pth",
    )
    with pytest.raises(CheckpointError, match="no BiT key layout recognised"):
        BiTCheckpointer(model).load(str(tmp_path / "R-50.pth"))


def test_train_net_exits_with_the_loaders_message_for_an_unknown_layout(tmp_path):
    torch.save({"model": {"encoder.layer1.weight": torch.zeros(4)}}, tmp_path / "unknown.pth")
    out = run_python(
        "-m",
        "bitdet.tools.train_net",
        "--config",
        INSTANT,
        "MODEL.WEIGHTS",
        tmp_path / "unknown.pth",
        "OUTPUT_DIR",
        tmp_path / "out",
        cwd=tmp_path,
        status=2,  # a user error: one line, exit status 2
    )
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("train_net: error: ") and "no BiT key layout recognised" in last, (
        out.stderr[-2000:]
    )
    assert "encoder.layer1.weight" in last and "AssertionError" not in out.stderr


def test_stock_detectron2_finds_the_demo_datasets_on_import(tmp_path):
    script = f"""
import bitdet.detection
from detectron2.data import DatasetCatalog
from detectron2.engine import DefaultTrainer
assert len(DatasetCatalog.get("bitdet_demo_mini_val")) == 8
cfg = bitdet.detection.get_bit_cfg({INSTANT!r}, ["SOLVER.MAX_ITER", "1", "DATASETS.TEST", "()",
                                                "OUTPUT_DIR", {str(tmp_path / "out")!r}])
trainer = DefaultTrainer(cfg)
trainer.train()
print("iterations", trainer.iter)
"""
    out = run_python("-c", script, cwd=tmp_path)
    assert "iterations 1" in out.stdout
    assert (
        tmp_path / "datasets" / "bitdet_demo_mini" / "annotations" / "instances_train.json"
    ).is_file()
