"""Untrusted files are refused before any of their code runs, through every loader.

Each payload would create a marker file when deserialised; each case asserts a clear
refusal AND that the marker does not exist. Loaders: bitdet's classification loader
(``bitdet.weights.load_weights``) and Detectron2's path (``BiTCheckpointer`` for
``MODEL.WEIGHTS``, ``get_bit_cfg`` for configs). The single-loader unit tests live in
tests/weights/ (test_npz.py, test_torch_checkpoints.py, test_safe_pickle.py).
The only opt-in is ``BITDET_ALLOW_UNSAFE_PICKLE=1`` for Detectron2 ``.pkl`` model-zoo files
(the ecosystem ships weights that way); ``.npz``, ``.pth`` and YAML have none.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model

from bitdet import create_model
from bitdet.detection import BiTCheckpointer, get_bit_cfg
from bitdet.weights import CheckpointError, load_weights


class Payload:
    """Unpickling this opens (creates) ``marker``: stands in for arbitrary code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _npz(path, marker):
    arrays = {"resnet/root_block/standardized_conv2d/kernel": np.zeros((7, 7, 3, 16), np.float32)}
    arrays["resnet/evil"] = np.array([Payload(marker)], dtype=object)
    np.savez(path, **arrays)


def _pth(path, marker):
    torch.save({"model": {"stem.conv.weight": torch.zeros(1)}, "extra": Payload(marker)}, path)


def _pkl(path, marker):
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": Payload(marker)}, "__author__": "someone"}, f)


WRITERS = {"npz": _npz, "pth": _pth, "pkl": _pkl}


def _bitdet_load(path):
    load_weights(create_model("R14-tiny", num_classes=10), path)


def _detectron2_load(path):
    cfg = get_bit_cfg("quick_schedules/retinanet_bit_instant_test.yaml")
    BiTCheckpointer(build_model(cfg)).load(str(path))


@pytest.mark.parametrize(
    "loader", [_bitdet_load, _detectron2_load], ids=["load_weights", "BiTCheckpointer"]
)
@pytest.mark.parametrize("kind", ["npz", "pth", "pkl"])
def test_weights_carrying_code_are_refused_without_running_it(tmp_path, monkeypatch, kind, loader):
    monkeypatch.delenv("BITDET_ALLOW_UNSAFE_PICKLE", raising=False)
    marker = tmp_path / "marker"
    path = tmp_path / f"weights.{kind}"
    WRITERS[kind](path, marker)
    with pytest.raises((CheckpointError, ValueError, pickle.UnpicklingError)) as info:
        loader(path)
    assert not marker.exists(), f"{kind} payload ran through {loader.__name__}"
    message = str(info.value)
    assert str(path) in message or path.name in message, message
    assert any(
        w in message.lower() for w in ("pickle", "refus", "object", "unsafe", "weights_only")
    ), message


def test_yaml_with_python_tags_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "marker"
    config = tmp_path / "evil.yaml"
    config.write_text(
        f'SOLVER:\n  MAX_ITER: !!python/object/apply:builtins.open ["{marker}", "w"]\n'
    )
    with pytest.raises(
        ValueError, match=rf"config {config}: refusing a YAML tag that builds Python objects"
    ):
        get_bit_cfg(str(config))
    assert not marker.exists()
