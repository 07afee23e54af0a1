"""timm's model API on BiT: list_models patterns, forward_features by name, features_only,
pretrained_cfg and the preprocessing it drives."""

import numpy as np
import pytest
import torch
from PIL import Image

import bitdet
from bitdet import create_model
from bitdet.models import create_transform, get_pretrained_cfg, resolve_data_config
from bitdet.transfer.transforms import ToBiTTensor


def test_list_models_patterns_and_pretrained():
    assert bitdet.list_models("*R50*") == [
        "BiT-S-R50x1",
        "BiT-S-R50x2",
        "BiT-S-R50x3",
        "BiT-S-R50x4",
        "BiT-M-R50x1",
        "BiT-M-R50x2",
        "BiT-M-R50x3",
        "BiT-M-R50x4",
        "R50x1",
        "R50x2",
        "R50x3",
        "R50x4",
    ]
    assert bitdet.list_models("bit-m-r101*", pretrained=True) == [
        f"BiT-M-R101x{w}" for w in (1, 2, 3, 4)
    ]
    assert bitdet.list_models(["*tiny", "R152x4"]) == ["R152x4", "R14-tiny", "R26-tiny"]
    assert bitdet.list_models("*tiny", pretrained=True) == []
    assert len(bitdet.list_models()) == 38 and len(bitdet.list_models(pretrained=True)) == 24
    with pytest.raises(TypeError, match="pretrained=True by keyword"):
        bitdet.list_models(True)


def test_forward_features_takes_a_name_or_a_list():
    model = create_model("R14-tiny", num_classes=0).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        one = model.forward_features(x, "res2")
        several = model.forward_features(x, ["res2", "res4"])
    assert isinstance(one, torch.Tensor) and one.shape == (2, 128, 16, 16)
    assert list(several) == ["res2", "res4"] and torch.equal(several["res2"], one)
    with pytest.raises(KeyError, match="unknown features"):
        model.forward_features(x, "r")


def test_the_head_size_comes_from_the_weights_file(tmp_path):
    from bitdet.weights import save_checkpoint

    source = create_model("R14-tiny", num_classes=10)
    save_checkpoint(tmp_path / "w10.pth", source)
    model = create_model(
        "R14-tiny", pretrained=tmp_path / "w10.pth"
    )  # not the name's 1000 classes, zeroed
    assert model.fc.out_channels == 10 and torch.equal(model.fc.weight, source.fc.weight)
    new = create_model(
        "R14-tiny", num_classes=3, pretrained=tmp_path / "w10.pth"
    )  # asked for: a new head
    assert new.fc.out_channels == 3 and torch.count_nonzero(new.fc.weight) == 0
    save_checkpoint(tmp_path / "trunk.pth", create_model("R14-tiny", num_classes=0))
    assert (
        create_model("R14-tiny", pretrained=tmp_path / "trunk.pth").fc is None
    )  # a headless file: headless


def test_features_only_returns_the_list_with_feature_info(tmp_path):
    full = create_model("R14-tiny", num_classes=5).eval()
    torch.save(full.state_dict(), tmp_path / "w.pth")
    feats_model = create_model(
        "R14-tiny", features_only=True, out_indices=(1, 3, 4), pretrained=tmp_path / "w.pth"
    ).eval()
    assert feats_model.feature_info.channels() == [128, 512, 1024]
    assert feats_model.feature_info.reduction() == [4, 16, 32]
    assert feats_model.feature_info.module_name() == ["res2", "res4", "res5"]
    assert feats_model.feature_info.channels(0) == 128
    assert not hasattr(feats_model, "fc") and not hasattr(feats_model, "norm")
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        outs = feats_model(x)
        ref = full.forward_features(x, ["res2", "res4", "res5"])
    assert [tuple(o.shape) for o in outs] == [(1, 128, 16, 24), (1, 512, 4, 6), (1, 1024, 2, 3)]
    for out, name in zip(outs, ["res2", "res4", "res5"]):
        torch.testing.assert_close(out, ref[name])  # the loaded weights, not a new init


def test_features_only_builds_only_the_needed_stages_and_checks_indices():
    model = create_model("R14-tiny", features_only=True, out_indices=(0, 2))
    assert hasattr(model, "block2") and not hasattr(model, "block3")
    assert model.feature_info.reduction() == [4, 8]
    for bad in [(5,), (), (1, 1), (-1,)]:
        with pytest.raises(ValueError, match="out_indices"):
            create_model("R14-tiny", features_only=True, out_indices=bad)


@pytest.mark.parametrize("name", ["BiT-M-R50x1", "BiT-S-R101x3", "R14-tiny"])
def test_pretrained_cfg_says_the_input_range(name):
    cfg = get_pretrained_cfg(name)
    assert cfg.mean == cfg.std == (0.5, 0.5, 0.5)
    assert (
        cfg.input_size == (3, 224, 224) and cfg.interpolation == "bilinear" and cfg.crop_pct == 1.0
    )
    assert cfg.num_classes == {"BiT-M-R50x1": 21843, "BiT-S-R101x3": 1000, "R14-tiny": 1000}[name]
    with torch.device("meta"):
        assert create_model(name, num_classes=0).pretrained_cfg == cfg.to_dict()


def test_create_transform_gives_bit_scaling():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))
    config = resolve_data_config(create_model("R14-tiny"), input_size=40)
    assert config["input_size"] == (3, 40, 40)
    out = create_transform(**config)(image)
    resized = image.resize((40, 40), Image.BILINEAR)
    torch.testing.assert_close(
        out, ToBiTTensor()(resized), atol=2e-2, rtol=0
    )  # PIL vs tensor resize rounding
    assert out.min() >= -1 and out.max() <= 1
    exact = create_transform(**resolve_data_config("R14-tiny", input_size=(3, 40, 60)))(image)
    torch.testing.assert_close(
        exact, torch.from_numpy(np.asarray(image, np.float32) / 127.5 - 1).permute(2, 0, 1)
    )


def test_create_transform_modes_and_errors():
    gray = Image.fromarray(np.full((50, 100), 255, np.uint8), mode="L")
    center = create_transform(input_size=32, crop_pct=0.5, crop_mode="center")(gray)
    assert center.shape == (3, 32, 32) and torch.all(center == 1)
    train = create_transform(input_size=(3, 24, 16), is_training=True)(gray)
    assert train.shape == (3, 24, 16)
    with pytest.raises(ValueError, match="crop_mode"):
        create_transform(crop_mode="zoom")
    with pytest.raises(ValueError, match="interpolation"):
        create_transform(interpolation="lanczos9")
    with pytest.raises(KeyError, match="unknown preprocessing settings"):
        resolve_data_config("R14-tiny", size=3)


def test_docstrings_state_the_input_range():
    for obj in (
        bitdet.create_model,
        bitdet.models.ResNetV2,
        bitdet.models.ResNetV2.forward,
        bitdet.models.ResNetV2.forward_features,
        bitdet.models.ResNetV2Features,
    ):
        assert "[-1, 1]" in obj.__doc__ and "127.5" in obj.__doc__, obj
