"""TorchScript and ONNX (checked in ONNX Runtime on the CPU) against eager: R14-tiny
classification, the instant RetinaNet config, and its BiT + FPN backbone.

Heads are randomised so that outputs carry information: BiT's zero-initialised classifier
head gives zero logits, and Detectron2's RetinaNet initialisation scores every anchor at the
0.01 prior, so detections tie and boxes are barely decoded.
"""

import numpy as np
import onnx
import pytest
import torch
from detectron2.modeling import build_model
from torch import nn

import bitdet
from bitdet.detection import get_bit_cfg
from bitdet.export import (
    backbone_target,
    classifier_target,
    detector_target,
    export,
    load_runner,
    runtime_conv_weights,
    sample_photos,
)
from bitdet.export.formats import outputs_as_numpy
from bitdet.export.verify import _match_detections

pytestmark = pytest.mark.filterwarnings(
    "ignore::FutureWarning", "ignore::UserWarning", "ignore::DeprecationWarning"
)

TOL = 1e-4
CONFIG = "configs/quick_schedules/retinanet_bit_instant_test.yaml"


def _graph(path, fmt):
    if fmt == "onnx":
        return onnx.load(str(path))
    return torch.jit.load(str(path))


def _max_diffs(target, runner):
    """Per output name, the largest |exported - eager| over all samples (detections matched)."""
    worst = {}
    for sample in target.samples:
        ref, out = outputs_as_numpy(target.reference(*sample)), runner(*sample)
        if target.detections:
            matching = _match_detections(ref, out, 1e-3, 0.0)
            assert (
                matching.unexplained == 0
                and matching.at_cutoff == 0
                and len(matching.pairs) == len(ref[2])
            )
            ref = [r[matching.pairs[:, 1]] for r in ref[:3]] + ref[3:]
            out = [o[matching.pairs[:, 0]] for o in out[:3]] + out[3:]
        for name, r, o in zip(target.output_names, ref, out):
            assert r.shape == o.shape, name
            worst[name] = max(worst.get(name, 0.0), float(np.abs(r.astype(np.float64) - o).max()))
    return worst


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    model = bitdet.create_model("R14-tiny", num_classes=10).eval()
    nn.init.normal_(model.fc.weight, std=0.05)
    return classifier_target(model, image_size=64, batch_size=2, photos=sample_photos())


@pytest.fixture(scope="module")
def retinanet():
    torch.manual_seed(0)
    cfg = get_bit_cfg(CONFIG, ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg).eval()
    with (
        torch.no_grad()
    ):  # a head with realistic spreads: box deltas within about +-0.4, scores 0.05-0.25
        for name, p in model.head.named_parameters():
            if name.endswith("weight"):
                p.normal_(0, 0.005 if name.startswith("bbox_pred") else 0.05)
    return cfg, model


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_classifier_matches_eager_with_dynamic_batch_and_size(classifier, fmt, tmp_path):
    path = export(classifier, fmt, tmp_path)
    assert runtime_conv_weights(_graph(path, fmt)) == []
    shapes = [s[0].shape for s in classifier.samples]
    assert shapes[0][0] != shapes[1][0] and shapes[0][2:] != shapes[1][2:]  # both axes vary
    logits = classifier.reference(*classifier.samples[0])[0]
    assert logits.std() > 0.1  # not a degenerate head
    assert _max_diffs(classifier, load_runner(path, fmt))["logits"] <= TOL


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_retinanet_matches_eager(retinanet, fmt, tmp_path):
    cfg, model = retinanet
    target = detector_target(model, cfg, sample_photos(input_format=cfg.INPUT.FORMAT))
    assert target.output_names == ["pred_boxes", "pred_classes", "scores", "image_size"]
    assert (
        len({s[0].shape for s in target.samples}) == len(target.samples) > 1
    )  # several image sizes
    path = export(target, fmt, tmp_path)
    assert runtime_conv_weights(_graph(path, fmt)) == []
    scores = target.reference(*target.samples[0])[2]
    assert len(scores) > 10 and scores.max() - scores.min() > 0.05  # spread: no ties to hide behind
    diffs = _max_diffs(target, load_runner(path, fmt))
    assert diffs["pred_boxes"] <= TOL and diffs["scores"] <= TOL
    assert diffs["pred_classes"] == 0 and diffs["image_size"] == 0


def test_fpn_backbone_matches_eager_in_onnx_runtime(retinanet, tmp_path):
    cfg, model = retinanet
    target = backbone_target(model, cfg, sample_photos(input_format=cfg.INPUT.FORMAT), batch_size=2)
    assert target.output_names == ["p3", "p4", "p5", "p6", "p7"]
    path = export(target, "onnx", tmp_path)
    assert runtime_conv_weights(onnx.load(str(path))) == []
    diffs = _max_diffs(target, load_runner(path, "onnx"))
    assert max(diffs.values()) <= TOL
    target.module.train()  # a caller's wrapper left in training mode still exports for inference
    path = export(target, "torchscript", tmp_path)
    assert not any(m.training for m in target.module.modules())
    assert max(_max_diffs(target, load_runner(path, "torchscript")).values()) == 0


def test_detector_export_refuses_other_meta_architectures():
    cfg = get_bit_cfg(CONFIG, ["MODEL.DEVICE", "cpu"])
    with pytest.raises(ValueError, match="--part backbone"):
        detector_target(nn.Module(), cfg, sample_photos())


def test_bit_fpn_backbone_of_faster_rcnn_exports(tmp_path):
    """--part backbone works for any meta-architecture: here a stock Faster R-CNN config (P2-P6)."""
    from detectron2 import model_zoo
    from detectron2.config import get_cfg

    from bitdet.detection import add_bit_config

    cfg = get_cfg()
    add_bit_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"))
    cfg.MODEL.BACKBONE.NAME = "build_bit_fpn_backbone"
    cfg.MODEL.BIT.VARIANT = "R14-tiny"
    cfg.MODEL.BIT.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.PIXEL_MEAN = cfg.MODEL.PIXEL_STD = [127.5] * 3
    cfg.MODEL.DEVICE, cfg.MODEL.WEIGHTS, cfg.MODEL.FPN.OUT_CHANNELS = "cpu", "", 32
    model = build_model(cfg).eval()
    target = backbone_target(model, cfg, sample_photos(), batch_size=1, image_size=96)
    assert target.output_names == ["p2", "p3", "p4", "p5", "p6"]
    path = export(target, "onnx", tmp_path)
    assert runtime_conv_weights(onnx.load(str(path))) == []
    assert max(_max_diffs(target, load_runner(path, "onnx")).values()) <= TOL


def test_onnx_refuses_weights_beyond_protobufs_2_gib(classifier):
    from dataclasses import replace

    from bitdet.export.formats import check_onnx_size

    check_onnx_size(classifier)  # R14-tiny: a few MB
    huge = replace(
        classifier, module=nn.Linear(40000, 20000, device="meta")
    )  # 3.0 GiB, never allocated
    with pytest.raises(ValueError, match=r"3\.0 GiB.*--format torchscript"):
        check_onnx_size(huge)


def test_a_sample_image_that_is_not_an_image_is_a_data_error_naming_it(tmp_path):
    from bitdet.errors import DataError

    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    with pytest.raises(DataError, match=f"sample image {bad}: not an image"):
        sample_photos([str(bad)])
