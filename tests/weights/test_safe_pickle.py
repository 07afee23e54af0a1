"""Pickled weight files: arrays load, anything that could run code is refused."""

import os
import pickle

import numpy as np
import pytest

from bitdet.weights import CheckpointError
from bitdet.weights.safe_pickle import safe_pickle_load


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_arrays_in_a_model_zoo_style_pickle_load(tmp_path):
    data = {
        "model": {"stem.conv1.weight": np.arange(6, dtype=np.float32).reshape(2, 3)},
        "__author__": "zoo",
    }
    (tmp_path / "w.pkl").write_bytes(pickle.dumps(data, protocol=2))
    loaded = safe_pickle_load(tmp_path / "w.pkl")
    np.testing.assert_array_equal(
        loaded["model"]["stem.conv1.weight"], data["model"]["stem.conv1.weight"]
    )


def test_a_pickle_that_runs_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"w": _RunsCode(marker)}))
    with pytest.raises(CheckpointError, match=r"evil.pkl: it asks to import posix.system"):
        safe_pickle_load(tmp_path / "evil.pkl")
    assert not marker.exists()


def test_the_detectron2_checkpointer_refuses_it_too(tmp_path):
    from detectron2.modeling import build_model

    from bitdet.detection import BiTCheckpointer, get_bit_cfg

    marker = tmp_path / "pwned"
    (tmp_path / "evil.pkl").write_bytes(
        pickle.dumps({"model": _RunsCode(marker), "__author__": "x"})
    )
    model = build_model(get_bit_cfg("quick_schedules/retinanet_bit_instant_test.yaml"))
    with pytest.raises(CheckpointError, match="refusing to load"):
        BiTCheckpointer(model).load(str(tmp_path / "evil.pkl"))
    assert not marker.exists()


def test_garbage_is_a_clear_error(tmp_path):
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="junk.pkl is not a readable pickle"):
        safe_pickle_load(tmp_path / "junk.pkl")
