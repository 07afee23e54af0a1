"""Atomic writes: the umask decides the mode (like ``open()``), a failed write leaves the old
file."""

import json
import math
import os
import stat

import numpy as np
import pytest

from bitdet.utils.io import atomic_write, write_json


@pytest.fixture
def umask():
    def set_mask(mask):
        previous.append(os.umask(mask))

    previous = []
    yield set_mask
    for mask in reversed(previous):
        os.umask(mask)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_mode_follows_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    with atomic_write(tmp_path / "model.pth") as f:
        f.write(b"x")
    write_json(tmp_path / "results.json", {"a": 1})
    with open(tmp_path / "plain.txt", "w") as f:  # the reference: what open() gives
        f.write("x")
    for name in ("model.pth", "results.json", "plain.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_failed_write_keeps_the_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "last_checkpoint"
    target.write_text("model_0000002.pth")
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as f:
            f.write("model_0000004.pth")
            raise RuntimeError("disk full")
    assert target.read_text() == "model_0000002.pth"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint"]


def test_write_json_writes_non_finite_numbers_as_null(tmp_path):
    def no_nan(token):
        raise ValueError(f"invalid JSON number {token}")

    payload = {"a": math.nan, "b": [1.5, -math.inf], "c": np.float32("nan"), "d": np.arange(2)}
    write_json(tmp_path / "r.json", payload)
    stored = json.loads((tmp_path / "r.json").read_text(), parse_constant=no_nan)
    assert stored == {"a": None, "b": [1.5, None], "c": None, "d": [0, 1]}
    with pytest.raises(TypeError, match="r2.json"):
        write_json(tmp_path / "r2.json", {"x": object()})
    assert not (tmp_path / "r2.json").exists()
