"""tools/convert_weights.py: npz <-> PyTorch <-> Detectron2, architecture read from the file."""

import numpy as np
import pytest
import torch

from bitdet import create_model
from bitdet.weights import CheckpointError, read_npz
from bitdet.weights.convert import convert, infer_architecture
from tests.official_npz import write_official_npz
from tests.tools.tool_run import run_tool


def test_architecture_is_read_from_npz_and_torch_files(tmp_path):
    write_official_npz(tmp_path / "a.npz", layers=(2, 1, 3, 1), num_classes=7)
    arch = infer_architecture(tmp_path / "a.npz")
    assert (arch.layers, arch.stem_channels, arch.num_classes) == ((2, 1, 3, 1), 32, 7)
    convert(tmp_path / "a.npz", tmp_path / "a.pth", "torch")
    assert infer_architecture(tmp_path / "a.pth") == arch


def test_npz_torch_npz_round_trip_is_exact(tmp_path):
    arrays = write_official_npz(tmp_path / "src.npz", num_classes=5, conv_suffix="_1")
    convert(tmp_path / "src.npz", tmp_path / "m.pth", "torch")
    convert(tmp_path / "m.pth", tmp_path / "back.npz", "npz")
    back = read_npz(tmp_path / "back.npz")
    renamed = {
        k.replace("standardized_conv2d_1", "standardized_conv2d"): v for k, v in arrays.items()
    }
    assert set(back) == set(renamed)
    for key, value in renamed.items():
        np.testing.assert_array_equal(back[key].reshape(value.shape), value, err_msg=key)
    # the PyTorch file loads safely and gives the same model
    state = torch.load(tmp_path / "m.pth", weights_only=True)["model"]
    model = create_model("R14-tiny", num_classes=5, pretrained=tmp_path / "src.npz")
    for name, tensor in model.state_dict().items():
        assert torch.equal(state[name], tensor), name


def test_detectron2_file_loads_with_the_stock_checkpointer(tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from bitdet.detection import get_bit_cfg

    arrays = write_official_npz(tmp_path / "src.npz", num_classes=5)
    out = run_tool(
        "convert_weights.py",
        tmp_path / "src.npz",
        tmp_path / "d2.pth",
        "--to",
        "detectron2",
        cwd=tmp_path,
    )
    assert out.stdout.strip().endswith("stem 32 channels, head none")  # what the written file holds
    model = build_model(get_bit_cfg("quick_schedules/retinanet_bit_instant_test.yaml"))
    DetectionCheckpointer(model).load(str(tmp_path / "d2.pth"))  # detectron2's own class
    kernel = arrays["resnet/block2/unit01/a/proj/standardized_conv2d/kernel"]
    assert torch.equal(
        model.backbone.bottom_up.block2.unit01.downsample.weight,
        torch.from_numpy(kernel).permute(3, 2, 0, 1),
    )
    saved = torch.load(tmp_path / "d2.pth", weights_only=True)["model"]
    assert not any(k.startswith("backbone.bottom_up.fc") for k in saved)


def test_the_summary_describes_the_file_written(tmp_path):
    write_official_npz(tmp_path / "src.npz", layers=(1, 2, 1, 1), num_classes=5)
    d2 = convert(tmp_path / "src.npz", tmp_path / "d2.pth", "detectron2")
    assert (d2.layers, d2.num_classes) == ((1, 2, 1, 1), 0)  # the detector file has no head
    assert (
        "backbone.bottom_up.fc.weight"
        not in torch.load(tmp_path / "d2.pth", weights_only=True)["model"]
    )
    for fmt, name in (
        ("torch", "m.pth"),
        ("timm", "m.safetensors"),
        ("bit_pytorch", "b.pth"),
        ("npz", "m.npz"),
    ):
        written = convert(tmp_path / "src.npz", tmp_path / name, fmt)
        assert (written.layers, written.num_classes) == ((1, 2, 1, 1), 5), fmt
    assert convert(tmp_path / "d2.pth", tmp_path / "headless.npz", "npz").num_classes == 0


def test_not_a_bit_file_is_named(tmp_path):
    torch.save({"model": {"conv.weight": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(
        CheckpointError, match="other.pth: no BiT key layout recognised .*keys: conv.weight"
    ):
        infer_architecture(tmp_path / "other.pth")
    with pytest.raises(ValueError, match="unknown format"):
        convert(tmp_path / "other.pth", tmp_path / "x", "onnx")
