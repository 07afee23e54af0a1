"""Tools started as clusters start them (2 CPU processes, gloo): torchrun, SLURM (through
tools/slurm.sbatch with an emulated srun) and --num-gpus give one job with the same result."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FAKE_SRUN = ROOT / "tests" / "engine" / "fake_srun.py"
PRETRAIN = [
    "--config-file",
    "quick_schedules/pretrain_fashion_mnist_instant_test.yaml",
    "SOLVER.MAX_ITER",
    "2",
    "SOLVER.CHECKPOINT_PERIOD",
    "100",
    "DATASETS.TEST.MAX_SAMPLES",
    "16",
]
DETECTION = [
    "--config",
    "quick_schedules/retinanet_bit_instant_test.yaml",
    "SEED",
    "7",
    "SOLVER.MAX_ITER",
    "2",
    "MODEL.DEVICE",
    "cpu",
    "INPUT.MIN_SIZE_TRAIN",
    "(64,)",
    "INPUT.MAX_SIZE_TRAIN",
    "64",
    "INPUT.MIN_SIZE_TEST",
    "64",
    "INPUT.MAX_SIZE_TEST",
    "64",
]
LAUNCHER = re.compile(r"launcher: (\S+?)[ ;].*rank (\d) of world size (\d)")
STARTS = {"torchrun": "torchrun", "num_gpus": "--num-gpus/--num-machines", "slurm": "slurm"}


def _env(tmp, **extra):
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            ("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_", "TORCHELASTIC")
        )
    }
    env.update(
        PYTHONPATH=str(ROOT),
        OMP_NUM_THREADS="1",
        DETECTRON2_DATASETS=str(tmp / "datasets"),
        **extra,
    )
    return env


def _run(cmd, tmp, expect_ok=True, **env):
    out = subprocess.run(
        cmd, capture_output=True, text=True, env=_env(tmp, **env), cwd=str(tmp), timeout=600
    )
    log = out.stdout + out.stderr
    if expect_ok:
        assert out.returncode == 0, log[-4000:]
    return out.returncode, log


def torchrun(tool, args, out, tmp):
    return _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            f"bitdet.tools.{tool}",
            *args,
            "OUTPUT_DIR",
            str(out),
        ],
        tmp,
    )


def num_gpus(tool, args, out, tmp):
    return _run(
        [
            sys.executable,
            "-m",
            f"bitdet.tools.{tool}",
            "--num-gpus",
            "2",
            *args,
            "OUTPUT_DIR",
            str(out),
        ],
        tmp,
    )


def sbatch(tool, args, out, tmp):
    """``tools/slurm.sbatch`` as SLURM would run it on one node with 2 tasks."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, command in (("srun", f"{sys.executable} {FAKE_SRUN}"), ("python", sys.executable)):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec {command} "$@"\n')
        (bin_dir / name).chmod(0o755)
    slurm = dict(
        SLURM_JOB_ID="4242",
        SLURM_NTASKS="2",
        SLURM_NTASKS_PER_NODE="2",
        SLURM_NNODES="1",
        SLURM_JOB_NODELIST="localhost",
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    )
    return _run(
        ["bash", str(ROOT / "tools" / "slurm.sbatch"), tool, *args, "OUTPUT_DIR", str(out)],
        tmp,
        **slurm,
    )


def _logs(out):
    """{rank: log text} from the run's log.txt (rank 0) and log.txt.rank<r>."""
    return {
        0: (out / "log.txt").read_text(),
        **{int(p.name.rsplit("rank", 1)[1]): p.read_text() for p in out.glob("log.txt.rank*")},
    }


def _check_one_job(out, launcher, share):
    """Two processes of one job: world size 2 first in each log, different data, one writer."""
    logs = _logs(out)
    assert sorted(logs) == [0, 1]
    for rank, text in logs.items():
        first = LAUNCHER.search(text.splitlines()[0])
        assert first, text.splitlines()[0]
        assert first.groups() == (launcher, str(rank), "2")
    shares = [re.search(share, logs[r]).group(1) for r in (0, 1)]
    assert shares[0] != shares[1], shares
    assert len(list(out.glob("events.out.tfevents.*"))) == 1
    assert not (out / "bitdet.lock").exists()


@pytest.fixture(scope="module")
def pretrain_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster_pretrain")
    for name, start in (("torchrun", torchrun), ("num_gpus", num_gpus), ("slurm", sbatch)):
        start("pretrain", PRETRAIN, tmp / name, tmp)
    return tmp


@pytest.mark.slow
def test_pretraining_is_one_job_whatever_the_launcher(pretrain_runs):
    losses = {}
    for name, launcher in STARTS.items():
        out = pretrain_runs / name
        _check_one_job(out, launcher, r"data share of rank \d of 2: step 0 reads samples (\[.*\])")
        final = json.loads((out / "final.json").read_text())
        assert final["processes"] == 2 and final["steps"] == 2
        losses[name] = final["final_loss"]
    reference = losses["torchrun"]
    assert all(abs(v - reference) < 1e-6 for v in losses.values()), losses


@pytest.fixture(scope="module")
def detection_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster_detection")
    logs = {}
    for name, start in (("torchrun", torchrun), ("num_gpus", num_gpus)):
        _, logs[name] = start("train_net", DETECTION, tmp / name, tmp)
    return tmp, logs


@pytest.mark.slow
def test_detection_trains_and_evaluates_as_one_job(detection_runs):
    tmp, logs = detection_runs
    finals = {}
    for name, console in logs.items():
        out = tmp / name
        _check_one_job(
            out, STARTS[name], r"data share of rank \d of 2: first batch holds image ids (\[.*\])"
        )
        assert (
            console.count("copypaste: AP,AP50") == 1
        )  # one evaluation result, from the main process
        assert (out / "model_final.pth").is_file()
        rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
        finals[name] = [r for r in rows if "total_loss" in r][-1]["total_loss"], rows[-1]["bbox/AP"]
        # the demo set is generated by one process per machine while the other waits
        ranks = _logs(out)
        assert "generating the bitdet_demo_mini" in ranks[0] and "generating" not in ranks[1]
    assert len(set(finals.values())) == 1, finals
    assert (tmp / "datasets" / "bitdet_demo_mini" / "annotations" / "instances_val.json").is_file()


@pytest.mark.slow
def test_missing_rendezvous_fails_non_zero(tmp_path):
    # rank 1 of 2 with nobody listening at MASTER_ADDR:MASTER_PORT
    code, log = _run(
        [
            sys.executable,
            "-m",
            "bitdet.tools.pretrain",
            *PRETRAIN,
            "OUTPUT_DIR",
            str(tmp_path / "out"),
        ],
        tmp_path,
        expect_ok=False,
        WORLD_SIZE="2",
        RANK="1",
        LOCAL_RANK="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT="9",
        BITDET_DIST_TIMEOUT="3",
    )
    assert code != 0
    assert (
        "torchrun launch: rank 1 could not join the process group of 2 processes at 127.0.0.1:9"
        in log
    )
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_second_run_on_a_locked_output_dir_stops_naming_the_first(tmp_path, capsys):
    from bitdet.tools.pretrain import cli

    out = tmp_path / "out"
    out.mkdir()
    first = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        (out / "bitdet.lock").write_text(
            json.dumps(
                {
                    "host": socket.gethostname(),
                    "pid": first.pid,
                    "started": "12:00",
                    "command": "pretrain.py first",
                }
            )
        )
        with pytest.raises(SystemExit) as exit_info:
            cli([*PRETRAIN, "OUTPUT_DIR", str(out)])
    finally:
        first.kill()
        first.wait()
    assert exit_info.value.code == 2
    assert re.fullmatch(
        rf"pretrain: error: OUTPUT_DIR {out} is in use by another run \(host .*, pid {first.pid}, "
        r"started 12:00: pretrain.py first\)\. .*",
        capsys.readouterr().err.strip().splitlines()[-1],
    )
    assert sorted(p.name for p in out.iterdir()) == ["bitdet.lock"]  # nothing written
