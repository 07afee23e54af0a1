"""One way the tests run Python (a script of ``tools/``) in a subprocess, and read what a run
wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_python(*args, cwd, status=0, datasets=None, threads=1, timeout=600):
    """Run this Python with ``args`` in ``cwd``, the repository on ``PYTHONPATH`` and
    ``DETECTRON2_DATASETS`` at ``datasets`` (default ``cwd/datasets``); assert that it exits with
    ``status`` and return the finished process (its ``stdout`` and ``stderr``)."""
    env = dict(
        os.environ,
        DETECTRON2_DATASETS=str(datasets or Path(cwd) / "datasets"),
        PYTHONPATH=str(ROOT),
        OMP_NUM_THREADS=str(threads),
    )
    out = subprocess.run(
        [sys.executable, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=str(cwd),
    )
    assert out.returncode == status, (
        f"exit status {out.returncode}, not {status}:\n{(out.stdout + out.stderr)[-4000:]}"
    )
    return out


def run_tool(tool, *args, **kwargs):
    """Run ``tools/<tool>`` with ``args``; :func:`run_python` for the keyword arguments."""
    return run_python(ROOT / "tools" / tool, *args, **kwargs)


def read_metrics(output_dir):
    """The records of ``output_dir/metrics.json``, one a line."""
    return [
        json.loads(line) for line in (Path(output_dir) / "metrics.json").read_text().splitlines()
    ]
