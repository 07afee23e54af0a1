"""run_pretraining in process: the shipped bf16 settings on the CPU, finished runs stay finished.

The bf16 run uses 32 px crops: at the instant config's 16 px the last stage gets 1x1 maps, and
on this CPU build bf16 autocast then intermittently gives NaN gradients for a 3x3 stride-2
convolution with a 1x1 input (about half of the steps; the trainer's loss check stops the run).
"""

import json
import math

import pytest
import torch
import yaml

from bitdet.config import CONFIGS_DIR
from bitdet.errors import ConfigError
from bitdet.pretrain import get_pretrain_cfg, run_pretraining, runner

INSTANT = "quick_schedules/pretrain_fashion_mnist_instant_test.yaml"
SHIPPED = yaml.safe_load((CONFIGS_DIR / "pretrain" / "Base-Pretrain.yaml").read_text())["SOLVER"]


def _cfg(out, *opts):
    return get_pretrain_cfg(INSTANT, ["OUTPUT_DIR", str(out), *opts])


def test_shipped_precision_settings_run_bf16_on_cpu(tmp_path, monkeypatch):
    assert SHIPPED["AMP"] == {"ENABLED": True, "PRECISION": "bf16"}
    seen = set()
    build = runner.build_model

    def recording_build(cfg):
        model = build(cfg)
        model.stem.conv.register_forward_hook(
            lambda mod, inp, out: seen.add(out.dtype) if mod.training else None
        )
        return model

    monkeypatch.setattr(runner, "build_model", recording_build)
    final = run_pretraining(
        _cfg(
            tmp_path,
            "SOLVER.AMP.ENABLED",
            SHIPPED["AMP"]["ENABLED"],
            "SOLVER.AMP.PRECISION",
            SHIPPED["AMP"]["PRECISION"],
            "SOLVER.CHANNELS_LAST",
            True,
            "INPUT.CROP_SIZE",
            32,
            "INPUT.TEST_RESIZE",
            32,
        )
    )
    assert seen == {torch.bfloat16}
    assert final["steps"] == 3 and math.isfinite(final["final_loss"]) and 0 <= final["top1"] <= 100
    state = torch.load(tmp_path / "model_final.pth", weights_only=True)["model"]
    assert all(
        v.dtype == torch.float32 and torch.isfinite(v).all()
        for v in state.values()
        if v.is_floating_point()
    )


def test_a_finished_run_reports_its_results_and_force_starts_over(tmp_path):
    torch.manual_seed(0)  # the model's initialisation (the tool seeds it through default_setup)
    first = run_pretraining(_cfg(tmp_path))
    stored = (tmp_path / "final.json").read_text()
    mtime = (tmp_path / "final.json").stat().st_mtime_ns

    again = run_pretraining(_cfg(tmp_path))
    assert again == json.loads(stored) and all(
        not (isinstance(v, float) and math.isnan(v)) for v in again.values()
    ), again
    assert (tmp_path / "final.json").read_text() == stored
    assert (tmp_path / "final.json").stat().st_mtime_ns == mtime

    (tmp_path / "model_0000002.pth").write_bytes(b"stale")  # --force must not resume from anything
    torch.manual_seed(0)
    redone = run_pretraining(_cfg(tmp_path), force=True)
    assert (tmp_path / "final.json").stat().st_mtime_ns != mtime
    assert (
        redone["steps"] == 3
        and math.isfinite(redone["img_per_s"])
        and math.isfinite(redone["final_loss"])
    )
    assert redone["final_loss"] == pytest.approx(
        first["final_loss"], abs=0
    )  # same seed, from step 0
    assert torch.load(tmp_path / "model_0000001.pth", weights_only=True)["step"] == 2


def _no_nan(token):
    raise ValueError(f"invalid JSON number {token}")


def test_a_rerun_without_training_steps_writes_valid_json(tmp_path):
    """All steps done in an earlier process, final.json gone: no step runs, so the throughput
    (and the last loss) are undefined: null, not the invalid JSON token NaN."""
    run_pretraining(_cfg(tmp_path))
    (tmp_path / "final.json").unlink()
    final = run_pretraining(_cfg(tmp_path))
    stored = json.loads((tmp_path / "final.json").read_text(), parse_constant=_no_nan)
    assert stored == final and final["steps"] == 3 and final["img_per_s"] is None


@pytest.mark.parametrize(
    "opts, named",
    [
        (("SOLVER.EPOCHS", "0.0", "SOLVER.MAX_ITER", "0"), ("SOLVER.EPOCHS", "SOLVER.MAX_ITER")),
        (
            ("SOLVER.EPOCHS", "2.0", "SOLVER.MAX_ITER", "0"),
            ("SOLVER.DECAY_EPOCHS", "SOLVER.EPOCHS"),
        ),
    ],
)
def test_a_schedule_without_length_names_the_keys(tmp_path, opts, named):
    cfg = _cfg(tmp_path, *opts, "SOLVER.DECAY_EPOCHS", "(1.0, 3.0)")
    with pytest.raises(ConfigError) as err:
        runner.build_schedule(cfg, 100)
    text = str(err.value)
    assert all(key in text for key in named) and "\n" not in text, text


def test_model_device_places_the_run(tmp_path, monkeypatch):
    """MODEL.DEVICE is the trainer's device: "cpu" keeps a machine that reports CUDA on the CPU
    (the trainer's default would move the model to cuda:0, which this machine lacks)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    devices = []
    trainer_class = runner.ClassifierTrainer

    def recording_trainer(*args, **kwargs):
        trainer = trainer_class(*args, **kwargs)
        devices.append(trainer.device)
        return trainer

    monkeypatch.setattr(runner, "ClassifierTrainer", recording_trainer)
    final = run_pretraining(
        _cfg(tmp_path, "MODEL.DEVICE", "cpu", "SOLVER.MAX_ITER", 1, "SOLVER.DECAY_STEPS", ())
    )
    assert devices == [torch.device("cpu")] and final["steps"] == 1
