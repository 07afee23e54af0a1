import json

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from bitdet.config import CONFIGS_DIR, shipped_configs
from bitdet.detection import BiTCheckpointer, get_bit_cfg
from bitdet.weights import CheckpointMismatchError
from tests.official_npz import write_official_npz


@pytest.fixture
def cfg():
    return get_bit_cfg("quick_schedules/retinanet_bit_instant_test.yaml")


def _sample(num_boxes, size=96):
    image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8).float()
    inst = Instances((size, size))
    xy = torch.rand(num_boxes, 2) * size / 2
    inst.gt_boxes = Boxes(torch.cat([xy, xy + 16 + torch.rand(num_boxes, 2) * size / 3], 1))
    inst.gt_classes = torch.randint(0, 10, (num_boxes,))
    return {"image": image, "instances": inst, "height": size, "width": size}


def test_training_step_finite_losses_and_backbone_gradients(cfg):
    model = build_model(cfg)
    with EventStorage():
        losses = model([_sample(3), _sample(1)])
    assert set(losses) == {"loss_cls", "loss_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    stem = model.backbone.bottom_up.stem.conv.weight
    assert stem.grad is not None and stem.grad.abs().sum() > 0


def test_images_without_annotations_train(cfg):
    model = build_model(cfg)
    with EventStorage():
        losses = model([_sample(0), _sample(0)])
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_box_reg"] == 0


def test_inference_returns_instances(cfg):
    model = build_model(cfg).eval()
    with torch.no_grad():
        out = model([{"image": torch.zeros(3, 100, 120), "height": 200, "width": 240}])
    inst = out[0]["instances"]
    assert inst.image_size == (200, 240)
    assert {"pred_boxes", "scores", "pred_classes"} <= set(inst.get_fields())


def test_official_npz_loads_into_the_detector_trunk(cfg, tmp_path, caplog):
    arrays = write_official_npz(tmp_path / "tiny.npz", num_classes=5)
    model = build_model(cfg)
    caplog.set_level("INFO")
    BiTCheckpointer(model).load(str(tmp_path / "tiny.npz"))
    trunk = model.backbone.bottom_up
    expected = torch.from_numpy(
        arrays["resnet/block3/unit01/b/standardized_conv2d/kernel"]
    ).permute(3, 2, 0, 1)
    assert torch.equal(trunk.block3.unit01.conv2.weight, expected)
    assert torch.equal(trunk.norm.weight, torch.from_numpy(arrays["resnet/group_norm/gamma"]))
    assert (
        "not used by this detector: resnet/head/conv2d/bias" in caplog.text
        and "tensors loaded into backbone.bottom_up" in caplog.text
    )


def test_bitdet_checkpoint_and_named_weights_load(cfg, tmp_path, monkeypatch):
    from bitdet import create_model
    from bitdet.weights import save_checkpoint

    source = create_model("R14-tiny", num_classes=7)
    save_checkpoint(tmp_path / "pretrained.pth", source)
    model = build_model(cfg)
    BiTCheckpointer(model).load(str(tmp_path / "pretrained.pth"))
    assert torch.equal(
        model.backbone.bottom_up.block4.unit01.conv3.weight, source.block4.unit01.conv3.weight
    )

    from bitdet.models import variants

    monkeypatch.setenv("BITDET_CACHE", str(tmp_path / "cache"))
    # an official name must hold its official architecture and head: a small stand-in entry
    monkeypatch.setitem(
        variants.PRETRAINED,
        "BiT-M-R14-tiny",
        variants.Pretrained("R14-tiny", 5, "file:///absent.npz"),
    )
    cached = tmp_path / "cache" / "BiT-M-R14-tiny.npz"
    cached.parent.mkdir()
    arrays = write_official_npz(cached, num_classes=5, seed=1)
    BiTCheckpointer(model).load("BiT-M-R14-tiny")
    expected = torch.from_numpy(arrays["resnet/root_block/standardized_conv2d/kernel"]).permute(
        3, 2, 0, 1
    )
    assert torch.equal(model.backbone.bottom_up.stem.conv.weight, expected)


def test_wrong_variant_weights_are_a_clear_error(cfg, tmp_path):
    write_official_npz(tmp_path / "r26.npz", layers=(2, 2, 2, 2), num_classes=0)
    with pytest.raises(
        CheckpointMismatchError,
        match="unexpected keys .*resnet/block1/unit02/a/standardized_conv2d/kernel",
    ):
        BiTCheckpointer(build_model(cfg)).load(str(tmp_path / "r26.npz"))


def test_checkpoint_save_is_atomic(cfg, tmp_path, monkeypatch):
    model = build_model(cfg)
    ckpt = BiTCheckpointer(model, save_dir=str(tmp_path))
    ckpt.save("model_0000001")
    good = (tmp_path / "model_0000001.pth").read_bytes()

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="No space"):
        ckpt.save("model_0000001")
    assert (tmp_path / "model_0000001.pth").read_bytes() == good
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000001.pth"]


# Detection YAML configs (the other kinds hold other config systems, tested with their tools).
DETECTION_CONFIGS = [
    CONFIGS_DIR / name for name in shipped_configs("detection") if name.endswith(".yaml")
]


@pytest.mark.parametrize("path", DETECTION_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS_DIR)))
def test_every_shipped_yaml_loads_and_builds(path):
    cfg = get_bit_cfg(str(path), ["MODEL.DEVICE", "meta"])
    with torch.device("meta"):
        model = build_model(cfg)
    assert model.backbone.bottom_up.output_shape()["res5"].stride == 32
    assert cfg.MODEL.PIXEL_MEAN == cfg.MODEL.PIXEL_STD == [127.5] * 3 and cfg.INPUT.FORMAT == "RGB"


def test_config_name_resolution_and_errors():
    from bitdet.detection import resolve_config_file

    assert resolve_config_file("retinanet_bit_m.yaml") == str(
        CONFIGS_DIR / "COCO-Detection" / "retinanet_bit_m.yaml"
    )
    assert resolve_config_file("retinanet_bit_instant_test.yaml").endswith(
        "quick_schedules/retinanet_bit_instant_test.yaml"
    )
    with pytest.raises(FileNotFoundError, match="'nope.yaml' not found"):
        resolve_config_file("nope.yaml")
    with pytest.raises(ValueError, match="Non-existent key: MODEL.BIT.NOT_A_KEY"):
        get_bit_cfg("retinanet_bit_m.yaml", ["MODEL.BIT.NOT_A_KEY", "1"])


def test_ground_truth_as_predictions_gives_ap_100(tmp_path):
    from detectron2.data import DatasetCatalog
    from detectron2.evaluation import COCOEvaluator

    from bitdet.detection import register_coco_format

    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(1, 6):
        images.append({"id": i, "file_name": f"{i}.png", "height": 200, "width": 300})
        for _ in range(rng.integers(0, 4)):
            x, y, w, h = (
                rng.uniform(0, 150),
                rng.uniform(0, 100),
                rng.uniform(20, 100),
                rng.uniform(20, 90),
            )
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": int(rng.integers(1, 4)),
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    cats = [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)]
    json_file = tmp_path / "gt.json"
    json_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    register_coco_format("gt_as_pred_test", json_file, tmp_path)
    evaluator = COCOEvaluator(
        "gt_as_pred_test", output_dir=str(tmp_path / "eval"), use_fast_impl=False
    )
    evaluator.reset()
    for record in DatasetCatalog.get("gt_as_pred_test"):
        inst = Instances((record["height"], record["width"]))
        boxes = [a["bbox"] for a in record["annotations"]]
        inst.pred_boxes = Boxes(
            torch.tensor([[x, y, x + w, y + h] for x, y, w, h in boxes]).reshape(-1, 4)
        )
        inst.scores = torch.ones(len(boxes))
        inst.pred_classes = torch.tensor(
            [a["category_id"] for a in record["annotations"]], dtype=torch.long
        )
        evaluator.process([{"image_id": record["image_id"]}], [{"instances": inst}])
    results = evaluator.evaluate()
    assert results["bbox"]["AP"] == pytest.approx(100.0)
