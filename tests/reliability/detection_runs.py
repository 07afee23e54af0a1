"""Tiny ``tools/train_net.py`` runs in subprocesses, for kill / resume tests.

R14-tiny at 64 px, 2 images per batch, no data-loader workers, no evaluation, one CPU
thread: a few seconds of start-up and well under a second per iteration on this machine.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

import torch

REPO = Path(__file__).resolve().parents[2]
CONFIG = "quick_schedules/retinanet_bit_instant_test.yaml"
MAX_ITER = 10
CHECKPOINT_PERIOD = 3


def command(output_dir: Path, resume: bool = False, extra: Sequence[str] = ()) -> List[str]:
    """The train_net command line for a tiny run writing to ``output_dir``."""
    opts = [
        "OUTPUT_DIR", str(output_dir), "SEED", "7", "SOLVER.MAX_ITER", str(MAX_ITER),
        "SOLVER.CHECKPOINT_PERIOD", str(CHECKPOINT_PERIOD), "DATASETS.TEST", "()",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", *extra,
    ]
    return [sys.executable, "tools/train_net.py", "--config", CONFIG, *(["--resume"] if resume else []), *opts]


def environment(datasets: Path) -> Dict[str, str]:
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def start(output_dir: Path, datasets: Path, resume: bool = False) -> subprocess.Popen:
    """Start a run; stdout and stderr go to ``output_dir.log``."""
    log = open(f"{output_dir}.log", "ab")
    return subprocess.Popen(command(output_dir, resume), cwd=REPO, env=environment(datasets), stdout=log, stderr=subprocess.STDOUT)


def run(output_dir: Path, datasets: Path, resume: bool = False, timeout: float = 300) -> str:
    """Run to completion; returns the log. Fails the test with the log tail on a non-zero exit."""
    proc = start(output_dir, datasets, resume)
    rc = proc.wait(timeout)
    log = Path(f"{output_dir}.log").read_text()
    assert rc == 0, f"train_net exited with {rc}:\n{log[-3000:]}"
    return log


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Wait until ``path`` exists (the run is mid-training); fail if the run ends first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"run ended (status {proc.returncode}) before {path} appeared")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


def load(path: Path) -> dict:
    """A Detectron2 checkpoint, read the safe way (tensors and plain containers only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def checkpoints(output_dir: Path) -> List[Path]:
    return sorted(output_dir.glob("model_*.pth"))
