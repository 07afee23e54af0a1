"""Tiny ``tools/train_net.py`` runs in subprocesses, for kill / resume tests.

R14-tiny at 64 px, 2 images per batch, no data-loader workers, no evaluation, one CPU
thread per process: a few seconds of start-up and well under a second per iteration on this
machine. ``kill_at`` runs the same training through ``kill_point.py``, which SIGKILLs the
job at a chosen point (see there). ``PRECISION`` holds the overrides of each precision:
``"bf16"`` is the shipped configs' autocast (``SOLVER.AMP``), on the CPU.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

REPO = Path(__file__).resolve().parents[2]
CONFIG = "quick_schedules/retinanet_bit_instant_test.yaml"
MAX_ITER = 6
CHECKPOINT_PERIOD = 2  # checkpoints after iterations 1, 3 and 5 (+ model_final.pth)
KILL_POINT = Path(__file__).with_name("kill_point.py")
PRECISION = {
    "fp32": ("SOLVER.AMP.ENABLED", "False"),
    # 128 px: at 64 px P6 and P7 are 1x1 maps, where CPU bf16 convolution intermittently gave
    # a NaN weight gradient (tests/detection/test_precision.py).
    "bf16": (
        "SOLVER.AMP.ENABLED",
        "True",
        "SOLVER.AMP.PRECISION",
        "bf16",
        "INPUT.MIN_SIZE_TRAIN",
        "(128,)",
        "INPUT.MAX_SIZE_TRAIN",
        "128",
    ),
}


def command(
    output_dir: Path,
    resume: bool = False,
    extra: Sequence[str] = (),
    num_gpus: int = 1,
    kill_at: Optional[str] = None,
) -> List[str]:
    """The train_net command line for a tiny run writing to ``output_dir``."""
    script = [str(KILL_POINT), "train_net"] if kill_at else ["tools/train_net.py"]
    flags = ["--config", CONFIG, "--num-gpus", str(num_gpus), *(["--resume"] if resume else [])]
    if num_gpus > 1:  # Detectron2's default port is per user: other runs of this user may hold it
        flags += ["--dist-url", f"tcp://127.0.0.1:{free_port()}"]
    opts = [
        "OUTPUT_DIR",
        str(output_dir),
        "SEED",
        "7",
        "SOLVER.MAX_ITER",
        str(MAX_ITER),
        "SOLVER.CHECKPOINT_PERIOD",
        str(CHECKPOINT_PERIOD),
        "DATASETS.TEST",
        "()",
        "INPUT.MIN_SIZE_TRAIN",
        "(64,)",
        "INPUT.MAX_SIZE_TRAIN",
        "64",
        *extra,
    ]
    return [sys.executable, *script, *flags, *opts]


def free_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(datasets: Path, kill_at: Optional[str] = None) -> Dict[str, str]:
    env = dict(
        os.environ, DETECTRON2_DATASETS=str(datasets), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"
    )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("BITDET_KILL_AT", None)
    if kill_at:
        env["BITDET_KILL_AT"] = kill_at
    return env


def start(
    output_dir: Path,
    datasets: Path,
    resume: bool = False,
    num_gpus: int = 1,
    kill_at: Optional[str] = None,
    extra: Sequence[str] = (),
) -> subprocess.Popen:
    """Start a run in its own session; stdout and stderr go to ``output_dir.log``."""
    log = open(f"{output_dir}.log", "ab")
    return subprocess.Popen(
        command(output_dir, resume, extra, num_gpus=num_gpus, kill_at=kill_at),
        cwd=REPO,
        env=environment(datasets, kill_at),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def run(
    output_dir: Path,
    datasets: Path,
    resume: bool = False,
    timeout: float = 300,
    num_gpus: int = 1,
    extra: Sequence[str] = (),
) -> str:
    """Run to completion; returns the log. Fails the test with the log tail on a non-zero exit."""
    proc = start(output_dir, datasets, resume, num_gpus, extra=extra)
    rc = proc.wait(timeout)
    log = Path(f"{output_dir}.log").read_text()
    assert rc == 0, f"train_net exited with {rc}:\n{log[-3000:]}"
    return log


def run_failing(
    output_dir: Path,
    datasets: Path,
    resume: bool = False,
    kill_at: Optional[str] = None,
    extra: Sequence[str] = (),
    timeout: float = 300,
) -> tuple:
    """Run a job expected to stop with an error: ``(exit status, log)``."""
    proc = start(output_dir, datasets, resume, kill_at=kill_at, extra=extra)
    rc = proc.wait(timeout)
    return rc, Path(f"{output_dir}.log").read_text()


def run_user_error(output_dir: Path, datasets: Path, pattern: str, **kwargs) -> str:
    """Run a job expected to stop with a user error (:func:`run_failing`'s arguments): assert exit
    status 2 and a last line that matches ``pattern`` whole; returns the log."""
    rc, log = run_failing(output_dir, datasets, **kwargs)
    last = log.strip().splitlines()[-1]
    assert rc == 2, log[-3000:]
    assert re.fullmatch(pattern, last), last
    return log


def run_killed(
    output_dir: Path,
    datasets: Path,
    kill_at: str,
    resume: bool = False,
    num_gpus: int = 1,
    timeout: float = 300,
    extra: Sequence[str] = (),
) -> str:
    """Run until ``kill_point.py`` SIGKILLs it at ``kill_at``; returns the log. Fails unless it
    was killed."""
    proc = start(output_dir, datasets, resume, num_gpus, kill_at, extra)
    rc = proc.wait(timeout)
    log = Path(f"{output_dir}.log").read_text()
    assert rc == -9, f"expected death by SIGKILL at {kill_at}, got exit status {rc}:\n{log[-3000:]}"
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
