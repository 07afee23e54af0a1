"""The Python API of docs/detection.md: a stock Faster R-CNN config with the plain BiT-FPN
backbone (P2-P6)."""

import pytest
import torch
from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from bitdet.config import DeviceError
from bitdet.detection import add_bit_config


def _faster_rcnn_bit_cfg():
    cfg = get_cfg()
    add_bit_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"))
    cfg.MODEL.BACKBONE.NAME = "build_bit_fpn_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = (
        0  # BiT fine-tunes every layer; the zoo config's 2 freezes stem + res2
    )
    cfg.MODEL.BIT.VARIANT = "R14-tiny"
    cfg.MODEL.BIT.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.PIXEL_MEAN = cfg.MODEL.PIXEL_STD = [127.5] * 3
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    return cfg


def test_faster_rcnn_with_bit_fpn_trains_and_infers():
    model = build_model(_faster_rcnn_bit_cfg())
    fpn = model.backbone
    assert {k: v.stride for k, v in fpn.output_shape().items()} == {
        "p2": 4,
        "p3": 8,
        "p4": 16,
        "p5": 32,
        "p6": 64,
    }
    inst = Instances((128, 128))
    inst.gt_boxes = Boxes(torch.tensor([[10.0, 12.0, 70.0, 90.0], [60.0, 20.0, 120.0, 60.0]]))
    inst.gt_classes = torch.tensor([0, 2])
    batch = [{"image": torch.randint(0, 256, (3, 128, 128)).float(), "instances": inst}]
    with EventStorage():
        losses = model(batch)
    assert {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"} <= set(losses)
    sum(losses.values()).backward()
    assert fpn.bottom_up.block1.unit01.conv1.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model([{"image": batch[0]["image"], "height": 256, "width": 256}])
    assert out[0]["instances"].image_size == (256, 256)


def test_zoo_freeze_at_keeps_detectron2_meaning():
    cfg = _faster_rcnn_bit_cfg()
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    trunk = build_model(cfg).backbone.bottom_up
    assert not any(p.requires_grad for p in [*trunk.stem.parameters(), *trunk.block1.parameters()])
    assert all(p.requires_grad for p in trunk.block3.parameters())


def test_cuda_config_on_a_cpu_machine_names_the_key(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = _faster_rcnn_bit_cfg()
    cfg.MODEL.DEVICE = "cuda"  # the zoo's and bitdet's detection configs say cuda
    with pytest.raises(DeviceError, match=r"^no CUDA device: add MODEL.DEVICE cpu"):
        build_model(cfg)
