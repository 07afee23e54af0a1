"""One CLI shape for every tool: flags, required config, one-line user errors (exit 2), the
CUDA hint, details in the log file, and `make bench`'s CPU preset."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bitdet.config import DeviceError, check_device

ROOT = Path(__file__).resolve().parents[2]
CONFIG_TOOLS = ("train_net", "visualize", "finetune", "vtab", "pretrain", "benchmark")
LAUNCH = {"--num-gpus", "--num-machines", "--machine-rank", "--dist-url"}
# The flags of Detectron2's default_argument_parser each tool has: only those it uses.
EXPECTED = {
    "train_net": {"--resume", "--eval-only", *LAUNCH},
    "finetune": {"--resume", "--eval-only", *LAUNCH},
    "vtab": {"--resume", *LAUNCH},
    "pretrain": {"--eval-only", *LAUNCH},
    "visualize": set(LAUNCH),
    "benchmark": {"--resume"},
}


def _parser_flags(tool: str, capsys) -> set:
    module = importlib.import_module(f"bitdet.tools.{tool}")
    with pytest.raises(SystemExit) as exit_info:
        module.parse_args(["--help"])
    assert exit_info.value.code == 0
    return set(capsys.readouterr().out.replace(",", " ").split())


@pytest.mark.parametrize("tool", CONFIG_TOOLS)
def test_help_lists_only_the_flags_the_tool_uses(tool, capsys):
    words = _parser_flags(tool, capsys)
    assert {"--config-file", "--config"} <= words
    d2_flags = {"--resume", "--eval-only", *LAUNCH}
    assert words & d2_flags == EXPECTED[tool]


@pytest.mark.parametrize("tool", CONFIG_TOOLS)
def test_config_is_required_and_both_spellings_work(tool, capsys):
    module = importlib.import_module(f"bitdet.tools.{tool}")
    extra = {"visualize": ["--input", "x.jpg", "--output", "out"]}.get(tool, [])
    with pytest.raises(SystemExit) as exit_info:
        module.parse_args(extra)
    assert exit_info.value.code == 2 and "--config-file" in capsys.readouterr().err
    for flag in ("--config", "--config-file"):
        assert module.parse_args([flag, "some.yaml", *extra, "SOLVER.X", "1"]).config_file == "some.yaml"


def test_cuda_config_on_a_cpu_machine_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    from bitdet.tools import train_net

    with pytest.raises(SystemExit) as exit_info:
        train_net.cli(["--config", "retinanet_bit_m.yaml"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["train_net: error: no CUDA device: add MODEL.DEVICE cpu (the config says MODEL.DEVICE 'cuda')"]


def test_check_device_rule(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for ok in ("cpu", "", "auto"):
        check_device(ok)
    with pytest.raises(DeviceError, match="no CUDA device: add BENCH.DEVICE cpu"):
        check_device("cuda:0", "BENCH.DEVICE")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(DeviceError, match="'cuda:1': this machine has 1 CUDA device"):
        check_device("cuda:1")


@pytest.mark.parametrize("argv, message", [
    (["--config", "no_such.yaml"], "train_net: error: config 'no_such.yaml' not found"),
    (["--config", "quick_schedules/retinanet_bit_instant_test.yaml", "SOLVER.NOT_A_KEY", "1"],
     "train_net: error: config override ['SOLVER.NOT_A_KEY', '1']: Non-existent key: SOLVER.NOT_A_KEY"),
])
def test_user_errors_are_one_line_with_exit_2(argv, message, capsys):
    from bitdet.tools import train_net

    with pytest.raises(SystemExit) as exit_info:
        train_net.cli(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message)


@pytest.mark.slow
def test_details_go_to_the_log_file_not_the_console(tmp_path):
    """Bad weights: one line on stderr, no ANSI codes; environment, full config, traceback in log.txt."""
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "bitdet.tools.pretrain", "--config", "pretrain/demo_fashion_mnist.yaml", "--eval-only",
         "MODEL.WEIGHTS", str(tmp_path / "missing.pth"), "OUTPUT_DIR", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"pretrain: error: weights '{tmp_path / 'missing.pth'}' not found")
    console = proc.stdout + proc.stderr
    assert "\x1b[" not in console and "Traceback" not in console
    assert "environment" not in proc.stdout.replace("environment and full config", "") and "PyTorch" not in console
    assert len(console.strip().splitlines()) <= 4
    log = (out / "log.txt").read_text()
    assert "environment:" in log and "PyTorch" in log  # Detectron2's collect_env_info table
    assert "SOLVER:" in log and "Traceback" in log and "missing.pth' not found" in log
    assert (out / "config_eval.yaml").is_file() and not (out / "config.yaml").exists()  # --eval-only's own name


def test_make_bench_runs_a_cpu_preset_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs the GPU preset")
    proc = subprocess.run(["make", "-n", "bench", f"PY={sys.executable}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "tools/benchmark.py --config-file benchmark/cpu_levers.yaml" in proc.stdout
