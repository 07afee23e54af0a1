"""The tools re-opening a run folder, and Ctrl-C, as a user meets them: real tool processes.

One rule for every trainer (``bitdet.engine.run_folder``): a run of the same config continues
or, finished, reports its numbers; a run of another config is refused in one line naming the
keys that differ; ``--eval-only`` never writes over the run's ``config.yaml``; ``--force``
starts over. An ``OUTPUT_DIR`` that is a file, unwritable or held by another run is one line
and exit status 2. Ctrl-C saves the current step and exits 130 without a traceback.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.reliability import detection_runs

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
FINETUNE = ("--config-file", "quick_schedules/finetune_instant_test.yaml")
PRETRAIN = ("--config-file", "quick_schedules/pretrain_fashion_mnist_instant_test.yaml")


def _env(tmp_path: Path) -> dict:
    return dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        DETECTRON2_DATASETS=str(tmp_path / "datasets"),
    )


def _start(tmp_path: Path, command: list, **kwargs) -> subprocess.Popen:
    """``command`` started in ``tmp_path`` with :func:`_env`, its output piped as text."""
    return subprocess.Popen(
        command,
        cwd=tmp_path,
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _command(tool: str, *args) -> list:
    return [sys.executable, "-m", f"bitdet.tools.{tool}", *map(str, args)]


def _tool(tmp_path: Path, tool: str, *args, status: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        _command(tool, *args),
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == status, (
        f"{tool} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-3000:]}"
    )
    return proc


def _one_error_line(proc: subprocess.CompletedProcess, tool: str) -> str:
    """The single ``<tool>: error:`` line, last on stderr, with no traceback anywhere."""
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if f"{tool}: error:" in line]
    assert len(errors) == 1 and proc.stderr.strip().splitlines()[-1] == errors[0], proc.stderr[
        -3000:
    ]
    return errors[0]


def _files(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "log.txt"}


def test_finetune_refuses_other_settings_and_evaluates_beside_the_run(tmp_path):
    out = tmp_path / "run"
    _tool(tmp_path, "finetune", *FINETUNE, "OUTPUT_DIR", out)
    results = json.loads((out / "results.json").read_text())
    before = _files(out)

    # Other settings (the report's case): refused, naming the key, nothing written.
    other = _tool(
        tmp_path,
        "finetune",
        *FINETUNE,
        "--weights",
        "",
        "OUTPUT_DIR",
        out,
        "HYPERRULE.STEPS",
        6,
        status=2,
    )
    line = _one_error_line(other, "finetune")
    assert line == (
        f"finetune: error: {out} holds a run of another config (HYPERRULE.STEPS: 4 -> 6); --force "
        "starts over there (deleting its checkpoints and results), or set another OUTPUT_DIR"
    )
    assert _files(out) == before

    # --eval-only in the run's folder records its own config beside the run's.
    _tool(
        tmp_path,
        "finetune",
        *FINETUNE,
        "--eval-only",
        "--weights",
        out / "model_0000003.pth",
        "OUTPUT_DIR",
        out,
        "TEST.IMS_PER_BATCH",
        64,
    )
    assert (out / "config.yaml").read_bytes() == before["config.yaml"]
    assert yaml.safe_load((out / "config_eval.yaml").read_text())["TEST"]["IMS_PER_BATCH"] == 64
    assert json.loads((out / "eval_results.json").read_text())["top1"] == pytest.approx(
        results["top1"]
    )


def test_train_net_ctrl_c_saves_then_the_same_command_continues_and_other_settings_are_refused(
    tmp_path,
):
    out = tmp_path / "run"
    # the tiny detection run of the fault tests: R14-tiny RetinaNet at 64 px, checkpoints every 2
    # iterations
    run = [
        "--config",
        detection_runs.CONFIG,
        "OUTPUT_DIR",
        out,
        "SEED",
        7,
        "SOLVER.CHECKPOINT_PERIOD",
        2,
        "DATASETS.TEST",
        "()",
        "INPUT.MIN_SIZE_TRAIN",
        "(64,)",
        "INPUT.MAX_SIZE_TRAIN",
        64,
    ]
    command = _command("train_net", *run, "SOLVER.MAX_ITER", 12)
    proc = _start(tmp_path, command, start_new_session=True)
    try:
        detection_runs.wait_for(
            out / "model_0000001.pth", proc
        )  # mid-run: 12 iterations, one every 2 saved
        os.killpg(
            proc.pid, signal.SIGINT
        )  # what Ctrl-C in a terminal does: the whole foreground group
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (stdout + stderr)[-3000:]
    assert "Traceback" not in stdout + stderr, stderr[-3000:]
    stopped = re.findall(
        r"interrupted \(Ctrl-C\): saved (\S+model_(\d{7})\.pth) after iteration (\d+); exiting "
        r"with status 130; re-running the command continues from it",
        stdout,
    )
    assert len(stopped) == 1, stdout[-3000:]
    path, name_iteration, iteration = stopped[0]
    assert Path(path) == out / f"model_{name_iteration}.pth" and int(name_iteration) == int(
        iteration
    )
    assert Path(path).is_file() and (out / "last_checkpoint").read_text() == Path(path).name
    assert 1 <= int(iteration) < 11 and not (out / "model_final.pth").exists()
    assert detection_runs.load(Path(path))["iteration"] == int(iteration)

    # The same command, without --resume, continues from that checkpoint (no training over it).
    resumed = subprocess.run(
        command, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Starting training from iteration {int(iteration) + 1}" in resumed.stdout
    final = json.loads((out / "final.json").read_text())
    assert final["iterations"] == 12 and final["total_loss"] > 0
    assert (out / "last_checkpoint").read_text() == "model_final.pth"

    # Finished: reported with its numbers, nothing trained.
    before = _files(out)
    again = _tool(tmp_path, "train_net", *run, "SOLVER.MAX_ITER", 12)
    assert "Starting training" not in again.stdout
    assert (
        f"its results (final.json): iterations 12, total_loss {final['total_loss']:.4g}"
        in again.stdout
    )
    assert _files(out) == before

    # Another schedule: refused (no training from iteration 0 over the checkpoints).
    other = _tool(tmp_path, "train_net", *run, "SOLVER.MAX_ITER", 8, status=2)
    assert (
        "train_net: error: "
        f"{out} holds a run of another config (SOLVER.MAX_ITER: 12 -> 8); --force"
        in _one_error_line(other, "train_net")
    )
    assert _files(out) == before

    # --force starts over: only this run's checkpoints remain, no stale later one.
    forced = _tool(tmp_path, "train_net", "--force", *run, "SOLVER.MAX_ITER", 4)
    assert "Starting training from iteration 0" in forced.stdout
    assert sorted(p.name for p in out.glob("model_*.pth")) == [
        "model_0000001.pth",
        "model_0000003.pth",
        "model_final.pth",
    ]
    assert yaml.safe_load((out / "config.yaml").read_text())["SOLVER"]["MAX_ITER"] == 4
    assert json.loads((out / "final.json").read_text())["iterations"] == 4


def test_an_output_dir_that_is_a_file_is_one_line_and_status_2(tmp_path):
    afile = tmp_path / "not_a_folder"
    afile.write_text("a file")
    proc = _tool(tmp_path, "pretrain", *PRETRAIN, "OUTPUT_DIR", afile, status=2)
    assert _one_error_line(proc, "pretrain") == (
        f"pretrain: error: OUTPUT_DIR {afile} is a file, not a folder: set another OUTPUT_DIR"
    )
    assert afile.read_text() == "a file"


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root writes into read-only folders: permissions cannot stop it"
)
def test_a_read_only_output_dir_is_one_line_and_status_2(tmp_path):
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        proc = _tool(tmp_path, "pretrain", *PRETRAIN, "OUTPUT_DIR", folder, status=2)
    finally:
        folder.chmod(0o755)
    assert _one_error_line(proc, "pretrain").startswith(
        f"pretrain: error: OUTPUT_DIR {folder} cannot be written (Permission denied"
    )
    assert list(folder.iterdir()) == []


def test_two_runs_started_together_on_one_output_dir_one_runs_the_other_names_it(tmp_path):
    out = tmp_path / "run"
    command = _command("finetune", *FINETUNE, "OUTPUT_DIR", out)
    procs = [_start(tmp_path, command) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    statuses = sorted(p.returncode for p in procs)
    assert statuses == [0, 2], [o[1][-2000:] for o in outputs]
    winner, loser = (0, 1) if procs[0].returncode == 0 else (1, 0)
    line = _one_error_line(subprocess.CompletedProcess(command, 2, *outputs[loser]), "finetune")
    assert line.startswith(f"finetune: error: OUTPUT_DIR {out} is in use by another run (host ")
    assert f", pid {procs[winner].pid}, started " in line
    assert json.loads((out / "results.json").read_text())["steps"] == 4
    assert not (out / "bitdet.lock").exists()
