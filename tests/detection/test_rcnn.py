"""Faster and Mask R-CNN with the BiT FPN backbone: the shipped configs load and build, the instant
configs train and evaluate through tools/train_net.py, and mask AP really scores the masks."""

import json
import math

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.structures import Boxes, BoxMode, Instances

from bitdet.detection import BiTTrainer, get_bit_cfg, register_demo_datasets
from tests.tools.tool_run import read_metrics, run_tool


@pytest.mark.parametrize(
    "config",
    [
        "COCO-Detection/faster_rcnn_bit_m_R50x1_FPN_1x.yaml",
        "COCO-InstanceSegmentation/mask_rcnn_bit_m_R50x1_FPN_1x.yaml",
    ],
)
def test_coco_configs_build_bit_r50x1_with_p2_to_p6_and_gn_heads(config):
    cfg = get_bit_cfg(config, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""])
    model = build_model(cfg)
    assert {k: v.stride for k, v in model.backbone.output_shape().items()} == {
        "p2": 4,
        "p3": 8,
        "p4": 16,
        "p5": 32,
        "p6": 64,
    }
    assert type(model.backbone.top_block).__name__ == "LastLevelMaxPool"
    assert cfg.MODEL.BIT.VARIANT == "R50x1" and cfg.MODEL.BACKBONE.FREEZE_AT == 0
    assert isinstance(model.roi_heads.box_head.conv1.norm, torch.nn.GroupNorm)
    assert model.roi_heads.mask_on == ("mask_rcnn" in config)
    assert cfg.OUTPUT_DIR == f"output/{config[:-5]}"


def _train_net(tmp_path, config):
    run_tool("train_net.py", "--config", config, "OUTPUT_DIR", tmp_path / "out", cwd=tmp_path)
    return read_metrics(tmp_path / "out")


@pytest.mark.slow
@pytest.mark.parametrize(
    "config, tasks, mask_loss",
    [
        ("quick_schedules/faster_rcnn_bit_instant_test.yaml", ("bbox",), False),
        ("quick_schedules/mask_rcnn_bit_instant_test.yaml", ("bbox", "segm"), True),
    ],
)
def test_instant_config_trains_and_evaluates(tmp_path, config, tasks, mask_loss):
    metrics = _train_net(tmp_path, config)
    losses = [m for m in metrics if "total_loss" in m]
    assert max(m["iteration"] for m in losses) == 3 and all(
        math.isfinite(m["total_loss"]) for m in losses
    )
    assert ("loss_mask" in losses[-1]) is mask_loss
    final = metrics[-1]
    for task in ("bbox", "segm"):
        present = [k for k in ("AP", "AP50", "AP75") if f"{task}/{k}" in final]
        assert present == (["AP", "AP50", "AP75"] if task in tasks else []), final.keys()
        assert all(
            0.0 <= final[f"{task}/{k}"] <= 100.0 for k in present
        )  # finite: there were detections
    results = json.loads(
        (
            tmp_path / "out" / "inference" / "bitdet_demo_mini_val" / "coco_instances_results.json"
        ).read_text()
    )
    assert results and all(("segmentation" in r) is mask_loss for r in results)


def _ground_truth_as_predictions(dataset_name, shift=0):
    """Each val image's annotations as a model output, masks moved ``shift`` pixels right."""
    outputs = []
    for record in DatasetCatalog.get(dataset_name):
        h, w = record["height"], record["width"]
        anns = record["annotations"]
        inst = Instances((h, w))
        inst.pred_boxes = Boxes(
            torch.tensor(
                [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns]
            )
        )
        inst.scores = torch.ones(len(anns))
        inst.pred_classes = torch.tensor([a["category_id"] for a in anns])
        masks = np.stack([mask_util.decode(a["segmentation"]) for a in anns]).astype(bool)
        inst.pred_masks = torch.from_numpy(np.roll(masks, shift, axis=2))
        outputs.append(({"image_id": record["image_id"]}, {"instances": inst}))
    return outputs


def test_mask_ap_scores_the_generated_masks(tmp_path):
    """The trainer's evaluator scores segm from the masks: the ground truth gets 100 mask AP; the
    same boxes with masks moved by 3 pixels keep 100 box AP and lose mask AP."""
    register_demo_datasets(tmp_path / "datasets")
    try:
        cfg = get_bit_cfg(
            "quick_schedules/mask_rcnn_bit_instant_test.yaml", ["OUTPUT_DIR", str(tmp_path / "out")]
        )
        results = {}
        for shift in (0, 3):
            predictions = _ground_truth_as_predictions(
                "bitdet_demo_mini_val", shift
            )  # generates the set
            evaluator = BiTTrainer.build_evaluator(
                cfg, "bitdet_demo_mini_val", str(tmp_path / f"eval{shift}")
            )
            evaluator.reset()
            for inputs, outputs in predictions:
                evaluator.process([inputs], [outputs])
            results[shift] = evaluator.evaluate()
    finally:
        register_demo_datasets()  # back to the default root for the tests that follow
    assert results[0]["bbox"]["AP"] == pytest.approx(100.0) and results[0]["segm"][
        "AP"
    ] == pytest.approx(100.0)
    assert results[3]["bbox"]["AP"] == pytest.approx(100.0) and results[3]["segm"]["AP"] < 60.0
