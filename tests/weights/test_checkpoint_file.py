"""Every writer of weights refuses NaN / inf and leaves the previous file in place."""

import numpy as np
import pytest
import torch

from bitdet import create_model
from bitdet.weights.checkpoint_file import (
    last_checkpoint,
    point_last_checkpoint,
    save_checkpoint,
    write_npz,
    write_state_dict,
)


@pytest.mark.parametrize("name", ["model.pth", "model.safetensors", "model.npz", "ckpt.pth"])
def test_non_finite_weights_are_never_written(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"previous")
    model = create_model("R14-tiny", num_classes=3)
    with torch.no_grad():
        model.fc.bias[1] = float("nan")
    state = model.state_dict()
    with pytest.raises(
        FloatingPointError, match=rf"{name}: the weights hold NaN or inf \(fc.bias\)"
    ):
        if name.endswith(".npz"):
            write_npz(path, {"fc.bias": state["fc.bias"].numpy()})
        elif name == "ckpt.pth":
            save_checkpoint(path, model)
        else:
            write_state_dict(path, state)
    assert path.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_finite_npz_is_written(tmp_path):
    write_npz(tmp_path / "a.npz", {"w": np.ones(2, dtype=np.float32)})
    assert np.load(tmp_path / "a.npz")["w"].tolist() == [1.0, 1.0]


def test_pointer_names_the_file(tmp_path):
    assert last_checkpoint(tmp_path) is None
    point_last_checkpoint(tmp_path, "model_0000004.pth")
    assert last_checkpoint(tmp_path) == tmp_path / "model_0000004.pth"
