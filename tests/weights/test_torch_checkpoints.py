import pickle

import pytest
import torch

from bitdet import create_model
from bitdet.weights import (
    CheckpointError,
    CheckpointMismatchError,
    load_weights,
    read_state_dict,
    save_checkpoint,
)


def test_save_and_load_round_trip(tmp_path):
    model = create_model("R14-tiny", num_classes=4, zero_head=False)
    path = tmp_path / "ckpt.pth"
    save_checkpoint(path, model, arch="R14-tiny", step=3)
    assert torch.load(path, weights_only=True)["meta"] == {
        "arch": "R14-tiny",
        "step": 3,
        "ws_eps": 1e-10,
    }
    other = create_model("R14-tiny", num_classes=4)
    report = load_weights(other, path)
    assert report.head == "loaded (4 classes)"
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("prefix", ["module.", "backbone.bottom_up."])
def test_ddp_and_detectron2_prefixes_are_stripped(tmp_path, prefix):
    model = create_model("R14-tiny", num_classes=0)
    path = tmp_path / "prefixed.pth"
    torch.save({"model": {prefix + k: v for k, v in model.state_dict().items()}}, path)
    assert set(read_state_dict(path)) == set(model.state_dict())


class _Payload:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_checkpoint_carrying_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "payload": _Payload()}, path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        read_state_dict(path)


def test_plain_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(CheckpointError):
        load_weights(create_model("R14-tiny"), path)


def test_state_dict_of_other_model_is_a_mismatch(tmp_path):
    path = tmp_path / "r26.pth"
    save_checkpoint(path, create_model("R26-tiny", num_classes=0))
    with pytest.raises(CheckpointMismatchError, match="unexpected keys"):
        load_weights(create_model("R14-tiny", num_classes=0), path)


def test_stale_temporaries_of_killed_writes_are_removed_fresh_ones_kept(tmp_path):
    import os
    import time

    from bitdet.utils.io import remove_stale_temporaries

    stale, fresh = (
        tmp_path / ".model_0000100.pth.abc123.tmp",
        tmp_path / ".model_0000200.pth.def456.tmp",
    )
    keep = tmp_path / "model_0000100.pth"
    for path in (stale, fresh, keep):
        path.write_bytes(b"x")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    os.utime(keep, (old, old))
    assert remove_stale_temporaries(tmp_path) == 1
    assert not stale.exists() and fresh.exists() and keep.exists()
