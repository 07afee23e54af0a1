"""End to end on real data (scikit-learn's digits): learning, resume, the tool's sweep."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bitdet import create_model
from bitdet.transfer.config import get_finetune_cfg
from bitdet.transfer.finetune import evaluate_only, finetune, finetune_sweep
from bitdet.weights import save_checkpoint

ROOT = Path(__file__).resolve().parents[2]
INSTANT = "quick_schedules/finetune_instant_test.yaml"


@pytest.mark.slow
def test_finetune_beats_chance_on_digits(tmp_path, caplog):
    cfg = get_finetune_cfg(
        "finetune/demo_digits.yaml",
        [
            "HYPERRULE.RESIZE",
            18,
            "HYPERRULE.CROP",
            16,
            "HYPERRULE.STEPS",
            30,
            "SOLVER.IMS_PER_BATCH",
            16,
            "HYPERRULE.BASE_LR",
            0.03,
            "SOLVER.CHECKPOINT_PERIOD",
            1000,
            "OUTPUT_DIR",
            str(tmp_path),
        ],
    )
    finetune_logger = logging.getLogger("bitdet.transfer.finetune")
    finetune_logger.addHandler(
        caplog.handler
    )  # "bitdet" stops propagating once a tool set up its logging
    try:
        with caplog.at_level(logging.INFO, logger=finetune_logger.name):
            results = finetune(cfg)
    finally:
        finetune_logger.removeHandler(caplog.handler)
    assert results["top1"] > 30.0, results["top1"]  # chance: 10 %
    assert "BiT-HyperRule: resize 18 -> crop 16, 30 steps" in caplog.text
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["top1"] == pytest.approx(results["top1"])
    assert set(saved["per_class_acc"]) == {str(i) for i in range(10)}
    assert saved["rule"]["steps"] == saved["steps"] == 30 and saved["num_train"] == 1347
    assert saved["flip"] is False and saved["wall_time_s"] > 0
    for name in ("confusion.png", "training_curve.png", "metrics.json", "model_0000029.pth"):
        assert (tmp_path / name).is_file(), name


@pytest.mark.slow
def test_sigkill_then_resume_continues_exactly(tmp_path):
    def run(out, **kw):
        cfg = get_finetune_cfg(INSTANT, ["OUTPUT_DIR", str(out), "SOLVER.IMS_PER_BATCH", 4])
        return finetune(cfg, **kw)

    full = run(tmp_path / "a")
    interrupted = tmp_path / "b"
    # The real tool, SIGKILLed after step index 2: the 2-step checkpoint is on disk, step 3 is lost.
    cmd = [
        sys.executable,
        str(ROOT / "tests" / "reliability" / "kill_point.py"),
        "finetune",
        "--config-file",
        INSTANT,
        "OUTPUT_DIR",
        str(interrupted),
        "SOLVER.IMS_PER_BATCH",
        "4",
    ]
    proc = subprocess.run(
        cmd,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        start_new_session=True,
        env=dict(os.environ, OMP_NUM_THREADS="1", BITDET_KILL_AT="step:2", PYTHONPATH=str(ROOT)),
    )
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert sorted(p.name for p in interrupted.glob("model_*.pth")) == ["model_0000001.pth"]
    assert (interrupted / "last_checkpoint").read_text() == "model_0000001.pth"
    assert not (interrupted / "results.json").exists()

    resumed = run(interrupted)  # the run's folder, same config: it continues
    assert resumed["top1"] == full["top1"]
    a = torch.load(tmp_path / "a" / "model_0000003.pth", weights_only=True)
    b = torch.load(interrupted / "model_0000003.pth", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(
        torch.equal(
            a["optimizer"]["state"][k]["momentum_buffer"],
            b["optimizer"]["state"][k]["momentum_buffer"],
        )
        for k in a["optimizer"]["state"]
    )
    # --eval-only on the final checkpoint (head loaded, not zeroed) gives the same numbers.
    cfg = get_finetune_cfg(INSTANT, ["MODEL.WEIGHTS", str(interrupted / "model_0000003.pth")])
    assert evaluate_only(cfg, output_dir=str(tmp_path / "eval"))["top1"] == full["top1"]


@pytest.mark.slow
def test_a_finished_run_is_reported_and_force_starts_over(tmp_path):
    cfg = get_finetune_cfg(INSTANT, ["OUTPUT_DIR", str(tmp_path), "SOLVER.IMS_PER_BATCH", 4])
    first = finetune(cfg)
    stored, mtime = (
        (tmp_path / "results.json").read_text(),
        (tmp_path / "results.json").stat().st_mtime_ns,
    )
    assert finetune(cfg) == json.loads(stored)  # a finished run is not repeated
    assert (tmp_path / "results.json").stat().st_mtime_ns == mtime
    (tmp_path / "model_0000006.pth").write_bytes(b"left over from a longer run")
    again = finetune(cfg, force=True)
    assert not (tmp_path / "model_0000006.pth").exists(), "--force must delete the old checkpoints"
    assert (tmp_path / "results.json").stat().st_mtime_ns != mtime
    assert again["top1"] == first["top1"] and again["train"]["step"] == 4


def test_sweep_checks_every_shots_and_seed_before_training(tmp_path):
    cfg = get_finetune_cfg(INSTANT, ["OUTPUT_DIR", str(tmp_path)])
    # digits has about 135 training images per class, not 200: the sweep fails before its
    # 1-shot runs.
    with pytest.raises(
        ValueError,
        match=r"--shots 200 \(seed 0\) on digits: 200-shot sampling needs 200 examples "
        r"of every class: .* no run was started",
    ):
        finetune_sweep(cfg, [1, 200], [0, 1])
    for bad_seeds, message in (
        ([0, 0], "--seeds: 0 given more than once"),
        ([-1], "-1 is not a non-negative"),
        ([], "no seed given"),
    ):
        with pytest.raises(ValueError, match=message):
            finetune_sweep(cfg, [1], bad_seeds)
    with pytest.raises(ValueError, match="--shots: 1 given more than once"):
        finetune_sweep(cfg, [1, 1], [0])
    assert list(tmp_path.iterdir()) == [], "a run was started or a file written"


@pytest.mark.slow
def test_tool_sweeps_upstream_vs_scratch_with_fewshot(tmp_path):
    upstream = tmp_path / "upstream.pth"
    save_checkpoint(upstream, create_model("R14-tiny", num_classes=10), note="stand-in upstream")
    out = tmp_path / "sweep"
    cmd = [
        sys.executable,
        str(ROOT / "tools" / "finetune.py"),
        "--config-file",
        "quick_schedules/finetune_fewshot_instant_test.yaml",
        "--shots",
        "1",
        "--seeds",
        "1",
        "--weights",
        f"{upstream},",  # an empty entry: no weights
        "OUTPUT_DIR",
        str(out),
        "HYPERRULE.STEPS",
        2,
    ]
    proc = subprocess.run(
        [str(c) for c in cmd],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("BiT-HyperRule: resize 20 -> crop 16, 2 steps") == 2  # once per run
    assert "MixUp alpha 0.1" in proc.stdout
    assert "No CUDA runtime is found" not in proc.stdout + proc.stderr
    summary = json.loads((out / "results.json").read_text())
    assert len(summary["runs"]) == 2
    assert {(r["init"], r["shots"], r["n"]) for r in summary["summary"]} == {
        ("upstream", 1, 1),
        ("scratch", 1, 1),
    }
    table = (out / "results.md").read_text()
    assert (
        "| digits | scratch |" in table and "| digits | upstream |" in table and "1-shot" in table
    )
    assert (out / "accuracy_vs_shots.png").is_file()
    run_dir = out / "upstream" / "1shot_seed1"
    indices = json.loads((run_dir / "fewshot_indices.json").read_text())
    assert len(indices["indices"]) == 10 and indices["seed"] == 1
    assert json.loads((run_dir / "results.json").read_text())["weights_load"].endswith(
        "zero-initialised (requested)"
    )
