import random

import numpy as np
import pytest
import torch

from bitdet import create_model
from bitdet.engine import TrainingCheckpointer
from bitdet.engine.checkpoint import capture_rng_state, restore_rng_state
from bitdet.weights import CheckpointError
from bitdet.weights.checkpoint_file import damage_of, newest_readable


def test_keep_last_pointer_and_weights_only(tmp_path):
    model = create_model("R14-tiny", num_classes=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    opt.step()
    ckpt = TrainingCheckpointer(tmp_path, keep_last=2)
    for step in (10, 20, 30):
        ckpt.save(step, model, opt, meta={"name": "R14-tiny"})
    assert [p.name for p in ckpt.list()] == ["model_0000019.pth", "model_0000029.pth"]
    assert ckpt.latest().name == "model_0000029.pth"
    state = TrainingCheckpointer.load(ckpt.latest())  # weights_only=True inside
    assert state["step"] == 30 and state["meta"] == {
        "name": "R14-tiny",
        "ws_eps": 1e-10,
    }  # eps: restored on load
    opt2 = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(state["optimizer"])
    assert len(opt2.state) == len(list(model.parameters()))
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary files left behind


def test_stale_pointer_falls_back_to_newest_file(tmp_path):
    ckpt = TrainingCheckpointer(tmp_path)
    ckpt.save(5, torch.nn.Linear(2, 2))
    (tmp_path / "last_checkpoint").write_text("model_0000999.pth")
    assert ckpt.latest().name == "model_0000004.pth"
    assert TrainingCheckpointer(tmp_path / "empty").latest() is None


def test_corrupt_checkpoint_is_reported_by_name(tmp_path):
    bad = tmp_path / "model_0000001.pth"
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="model_0000001.pth"):
        TrainingCheckpointer.load(bad)


def test_rng_state_round_trip():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn()  # leaves a cached gaussian in NumPy's state
    state = capture_rng_state()
    expected = (random.random(), np.random.randn(), torch.rand(1))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng_state(state)
    assert (random.random(), np.random.randn()) == expected[:2] and torch.equal(
        torch.rand(1), expected[2]
    )


def test_newest_readable_skips_damaged_files_newest_first(tmp_path):
    ckpt = TrainingCheckpointer(tmp_path, keep_last=0)
    model = torch.nn.Linear(2, 2)
    for step in (2, 4, 6):
        ckpt.save(step, model)
    newest = tmp_path / "model_0000005.pth"
    flipped = bytearray(
        newest.read_bytes()
    )  # one byte of a tensor's storage: only the checksum notices
    data_at = flipped.find(b"data/0") + 200
    flipped[data_at] ^= 0xFF
    newest.write_bytes(bytes(flipped))
    (tmp_path / "model_0000003.pth").write_bytes(b"")
    chosen, skipped = newest_readable(newest, tmp_path)
    assert chosen == tmp_path / "model_0000001.pth"
    assert [(p.name, why.split(" ")[0]) for p, why in skipped] == [
        ("model_0000005.pth", "corrupt"),
        ("model_0000003.pth", "it"),
    ]
    assert damage_of(tmp_path / "model_0000001.pth") is None
    # a file newer than the one the pointer names is never taken; a missing pointed file is skipped
    assert newest_readable(tmp_path / "model_0000000.pth", tmp_path) == (
        None,
        [(tmp_path / "model_0000000.pth", "it does not exist")],
    )
    (tmp_path / "model_0000001.pth").unlink()
    with pytest.raises(
        CheckpointError,
        match=r"^no readable checkpoint to resume from in .* \(model_0000005\.pth: "
        r"corrupt member .* \(checksum mismatch\); model_0000003\.pth: it is "
        r"empty \(0 bytes\)\); move the damaged files away to train from the "
        r"start$",
    ):
        TrainingCheckpointer(tmp_path).resume_file()


@pytest.mark.parametrize("writer", ["training", "detection"])
def test_weights_with_nan_are_never_written(tmp_path, writer):
    model = torch.nn.Linear(2, 2)
    if writer == "training":
        ckpt = TrainingCheckpointer(tmp_path)
        save, name = (lambda: ckpt.save(2, model)), "model_0000001.pth"
    else:
        from bitdet.detection.checkpointer import BiTCheckpointer

        ckpt = BiTCheckpointer(model, str(tmp_path))
        save, name = (lambda: ckpt.save("model_0000001", iteration=1)), "model_0000001.pth"
    save()
    good = (tmp_path / name).read_bytes()
    with torch.no_grad():
        model.bias[1] = float("inf")
    with pytest.raises(
        FloatingPointError, match=r"the weights hold NaN or inf \(bias\); not saved"
    ):
        save()
    assert (tmp_path / name).read_bytes() == good
    assert (tmp_path / "last_checkpoint").read_text() == name
    assert not list(tmp_path.glob(".*.tmp"))
