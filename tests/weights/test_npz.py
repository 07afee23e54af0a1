import numpy as np
import pytest
import torch

from bitdet import create_model
from bitdet.weights import (
    CheckpointError,
    CheckpointMismatchError,
    load_weights,
    read_npz,
    state_dict_to_npz,
    write_npz,
)
from tests.official_npz import reference_forward, write_official_npz


@pytest.fixture
def official(tmp_path):
    path = tmp_path / "BiT-M-R14-tiny.npz"
    return path, write_official_npz(path, num_classes=5)


def test_official_npz_gives_reference_logits(official):
    path, arrays = official
    model = create_model("R14-tiny", num_classes=5, pretrained=path).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits = model(x)
    expected = reference_forward(arrays, x)
    torch.testing.assert_close(
        logits.double(), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item()
    )


def test_numbered_conv_names_are_tolerated(tmp_path, official):
    path, _ = official
    numbered = tmp_path / "numbered.npz"
    write_official_npz(numbered, num_classes=5, conv_suffix="_3")
    a = create_model("R14-tiny", num_classes=5, pretrained=path)
    b = create_model("R14-tiny", num_classes=5, pretrained=numbered)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_round_trip_npz_model_npz_is_exact(tmp_path, official):
    path, arrays = official
    model = create_model("R14-tiny", num_classes=5, pretrained=path)
    out = tmp_path / "export.npz"
    write_npz(out, state_dict_to_npz(model))
    again = read_npz(out)
    assert set(again) == set(arrays)
    for key, value in arrays.items():
        assert again[key].dtype == np.float32 and np.array_equal(again[key], value), key


def test_head_is_zero_initialised_when_classes_differ(official, caplog):
    path, _ = official
    caplog.set_level("INFO")
    model = create_model("R14-tiny", num_classes=3, pretrained=path)
    assert torch.count_nonzero(model.fc.weight) == 0 and torch.count_nonzero(model.fc.bias) == 0
    assert "file's head has 5 classes, the model 3" in caplog.text
    loaded = load_weights(create_model("R14-tiny", num_classes=5), path)
    assert loaded.head == "loaded (5 classes)"
    requested = load_weights(create_model("R14-tiny", num_classes=5), path, zero_head=True)
    assert requested.head == "zero-initialised (requested)"


def test_headless_model_ignores_the_file_head(official):
    path, arrays = official
    model = create_model("R14-tiny", num_classes=0)
    report = load_weights(model, path)
    assert "headless" in report.head and "ignored" in report.head
    assert torch.equal(model.norm.weight, torch.from_numpy(arrays["resnet/group_norm/gamma"]))


def test_wrong_shape_is_named_with_expected_and_found(tmp_path, official):
    _, arrays = official
    arrays = dict(arrays)
    arrays["resnet/block2/unit01/b/standardized_conv2d/kernel"] = np.zeros(
        (3, 3, 64, 32), np.float32
    )
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    model = create_model("R14-tiny", num_classes=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(
        CheckpointMismatchError,
        match=r"block2.unit01.conv2.weight: expected \(64, 64, 3, 3\), found \(32, 64, 3, 3\)",
    ):
        load_weights(model, bad)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), (
        "model changed on error"
    )


def test_missing_and_unexpected_keys_are_listed(tmp_path, official):
    _, arrays = official
    arrays = dict(arrays)
    del arrays["resnet/block3/unit01/c/group_norm/beta"]
    arrays["resnet/block9/unit01/a/group_norm/gamma"] = np.ones(4, np.float32)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    with pytest.raises(CheckpointMismatchError) as err:
        load_weights(create_model("R14-tiny", num_classes=5), bad)
    assert err.value.missing == ["block3.unit01.gn3.bias"]
    assert err.value.unexpected == ["resnet/block9/unit01/a/group_norm/gamma"]
    assert str(bad) in str(err.value)


def test_wrong_architecture_is_refused(official):
    path, _ = official
    with pytest.raises(CheckpointMismatchError, match="missing keys"):
        create_model("R26-tiny", num_classes=5, pretrained=path)


def test_pickle_bearing_npz_is_refused(tmp_path):
    bad = tmp_path / "pickled.npz"
    np.savez(bad, **{"resnet/group_norm/gamma": np.array([{"x": 1}], dtype=object)})
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        read_npz(bad)


def test_truncated_npz_is_a_clear_error(tmp_path, official):
    path, _ = official
    data = path.read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        create_model("R14-tiny", num_classes=5, pretrained=cut)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        create_model("R14-tiny", pretrained=tmp_path / "nope.npz")
