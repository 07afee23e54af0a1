import logging

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone

import bitdet
from bitdet import create_model
from bitdet.detection import BiTBackbone, get_bit_cfg


def _cfg(backbone="build_retinanet_bit_fpn_backbone", **bit):
    cfg = get_bit_cfg(
        "Base-RetinaNet-BiT.yaml", ["MODEL.DEVICE", "cpu", "MODEL.BACKBONE.NAME", backbone]
    )
    for key, value in bit.items():
        cfg.MODEL.BIT[key] = value
    return cfg


@pytest.mark.parametrize("name", [n for n in bitdet.list_models() if not n.startswith("BiT-")])
def test_outputs_match_output_shape_for_every_variant(name):
    with torch.device("meta"):
        backbone = BiTBackbone(name, out_features=("stem", "res2", "res3", "res4", "res5"))
        feats = backbone(torch.empty(1, 3, 64, 64))
    for key, spec in backbone.output_shape().items():
        assert tuple(feats[key].shape) == (
            1,
            spec.channels,
            64 // spec.stride,
            64 // spec.stride,
        ), key


@pytest.mark.parametrize("tap", ["preact", "raw"])
def test_trunk_features_equal_the_classifier_trunk(tap):
    model = create_model("R14-tiny", num_classes=0).eval()
    backbone = BiTBackbone("R14-tiny", ("res2", "res3", "res4", "res5"), feature_tap=tap).eval()
    backbone.load_state_dict(model.state_dict(), strict=tap == "preact")
    x = torch.randn(1, 3, 64, 64)
    raw = model.forward_features(x, ("res2", "res3", "res4", "res5"))
    feats = backbone(x)
    norms = {
        "res2": model.block2.unit01.gn1,
        "res3": model.block3.unit01.gn1,
        "res4": model.block4.unit01.gn1,
        "res5": model.norm,
    }
    for key in raw:
        expected = torch.relu(norms[key](raw[key])) if tap == "preact" else raw[key]
        torch.testing.assert_close(feats[key], expected)


def test_raw_tap_builds_only_needed_stages_and_preact_requires_res5():
    backbone = BiTBackbone("R14-tiny", ("res2", "res3"), feature_tap="raw")
    assert backbone.num_stages == 2 and not hasattr(backbone, "block3")
    with pytest.raises(ValueError, match="must include res5"):
        BiTBackbone("R14-tiny", ("res3",), feature_tap="preact")
    with pytest.raises(ValueError, match="FEATURE_TAP"):
        BiTBackbone("R14-tiny", feature_tap="gn")


def test_retinanet_fpn_levels_and_strides():
    cfg = _cfg(VARIANT="R14-tiny")
    fpn = build_backbone(cfg, ShapeSpec(channels=3))
    shapes = fpn.output_shape()
    assert {k: v.stride for k, v in shapes.items()} == {
        "p3": 8,
        "p4": 16,
        "p5": 32,
        "p6": 64,
        "p7": 128,
    }
    out = fpn(torch.randn(1, 3, 128, 128))
    assert all(out[k].shape[-1] == 128 // s.stride for k, s in shapes.items())


def test_plain_fpn_levels_p2_to_p6():
    cfg = _cfg(
        "build_bit_fpn_backbone", VARIANT="R14-tiny", OUT_FEATURES=["res2", "res3", "res4", "res5"]
    )
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    shapes = build_backbone(cfg, ShapeSpec(channels=3)).output_shape()
    assert {k: v.stride for k, v in shapes.items()} == {
        "p2": 4,
        "p3": 8,
        "p4": 16,
        "p5": 32,
        "p6": 64,
    }


def test_fpn_features_not_provided_is_a_clear_error():
    cfg = _cfg(VARIANT="R14-tiny", OUT_FEATURES=["res4", "res5"])
    with pytest.raises(ValueError, match=r"MODEL.FPN.IN_FEATURES .* asks for \['res3'\]"):
        build_backbone(cfg, ShapeSpec(channels=3))


@pytest.mark.parametrize(
    "freeze_at, frozen",
    [
        (0, []),
        (1, ["stem", "block1.unit01.gn1"]),
        (3, ["stem", "block1", "block2", "block3.unit01.gn1"]),
        (5, ["stem", "block1", "block2", "block3", "block4", "norm"]),
    ],
)
def test_freeze_at_has_detectron2_meaning_and_freezes_the_tap_norm(freeze_at, frozen):
    backbone = BiTBackbone(
        "R14-tiny", out_features=("res2", "res3", "res4", "res5"), freeze_at=freeze_at
    )
    for name, p in backbone.named_parameters():
        assert p.requires_grad == (not any(name.startswith(f + ".") for f in frozen)), name


def test_raw_tap_freezes_stages_only():
    backbone = BiTBackbone(
        "R14-tiny", out_features=("res2", "res3"), feature_tap="raw", freeze_at=2
    )
    assert backbone.block2.unit01.gn1.weight.requires_grad
    assert not backbone.block1.unit01.conv3.weight.requires_grad


def test_frozen_stage_feature_gets_no_gradient():
    backbone = BiTBackbone("R14-tiny", out_features=("res2", "res3", "res4", "res5"), freeze_at=2)
    feats = backbone(torch.randn(1, 3, 64, 64))
    assert not feats["res2"].requires_grad  # stem, res2 and res2's tap norm are all frozen
    feats["res3"].sum().backward()
    assert (
        backbone.block2.unit01.gn1.weight.grad is None
        and backbone.block2.unit01.conv1.weight.grad is not None
    )


def test_backbone_freeze_at_key_freezes_stem_and_res2(caplog, monkeypatch):
    # A tool run in this process may have set up the "bitdet" logger without propagation.
    monkeypatch.setattr(logging.getLogger("bitdet"), "propagate", True)
    cfg = _cfg(VARIANT="R50x1")
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    with torch.device("meta"), caplog.at_level("INFO", logger="bitdet"):
        trunk = build_backbone(cfg, ShapeSpec(channels=3)).bottom_up
        reference = create_model("R50x1", num_classes=0)
    count = lambda params: sum(p.numel() for p in params)  # noqa: E731
    frozen = (
        count(reference.stem.parameters())
        + count(reference.block1.parameters())
        + count(reference.block2.unit01.gn1.parameters())
    )
    total = count(trunk.parameters())
    assert total == 23_500_352  # the R50x1 trunk (paper: 23.5M)
    assert count(p for p in trunk.parameters() if p.requires_grad) == total - frozen
    assert f"{total - frozen:,} of 23,500,352 parameters trainable" in caplog.text
    assert "FREEZE_AT 2 freezes stem, res2" in caplog.text


def test_bit_configs_train_every_layer():
    assert get_bit_cfg("Base-RetinaNet-BiT.yaml").MODEL.BACKBONE.FREEZE_AT == 0


@pytest.mark.parametrize("freeze_at", [-1, 6])
def test_freeze_at_out_of_range_is_an_error(freeze_at):
    cfg = _cfg(VARIANT="R14-tiny")
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
    with pytest.raises(ValueError, match=f"MODEL.BACKBONE.FREEZE_AT {freeze_at}: expected 0"):
        build_backbone(cfg, ShapeSpec(channels=3))


def test_old_freeze_key_names_its_replacement(tmp_path):
    with pytest.raises(
        ValueError, match="MODEL.BIT.FREEZE_AT was renamed to MODEL.BACKBONE.FREEZE_AT"
    ):
        get_bit_cfg("Base-RetinaNet-BiT.yaml", ["MODEL.BIT.FREEZE_AT", "2"])
    path = tmp_path / "old.yaml"
    path.write_text('_BASE_: "Base-RetinaNet-BiT.yaml"\nMODEL:\n  BIT:\n    FREEZE_AT: 2\n')
    with pytest.raises(ValueError, match=f"config {path}: .*renamed to MODEL.BACKBONE.FREEZE_AT"):
        get_bit_cfg(str(path))
