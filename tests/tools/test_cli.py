"""One CLI shape for every tool: --help in every form, flags, required config, override
examples, one-line user errors (exit 2), the CUDA hint, details in the log file, and `make
bench`'s CPU preset."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bitdet.benchmark import get_benchmark_cfg
from bitdet.config import CONFIGS_DIR, DeviceError, check_device, resolve_device
from bitdet.detection import get_bit_cfg
from bitdet.pretrain import get_pretrain_cfg
from bitdet.transfer.config import get_finetune_cfg
from tests.tools.tool_run import run_python

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
LOADERS = {
    "train_net": get_bit_cfg,
    "visualize": get_bit_cfg,
    "finetune": get_finetune_cfg,
    "vtab": get_finetune_cfg,
    "pretrain": get_pretrain_cfg,
    "benchmark": get_benchmark_cfg,
}


def _console_scripts() -> dict:
    """``{script name: module}`` of setup.py's ``console_scripts`` (its ``(name, module)``
    pairs)."""
    scripts = next(
        node
        for node in ast.walk(ast.parse((ROOT / "setup.py").read_text()))
        if isinstance(node, ast.ListComp) and "bitdet.tools." in ast.unparse(node.elt)
    )
    return {
        f"bitdet-{name}": module for name, module in ast.literal_eval(scripts.generators[0].iter)
    }


CONSOLE_SCRIPTS = _console_scripts()


def test_every_tool_module_has_a_console_script():
    modules = {p.stem for p in (ROOT / "bitdet" / "tools").glob("*.py")} - {"__init__", "cli"}
    assert set(CONSOLE_SCRIPTS.values()) == modules
    assert {p.stem for p in (ROOT / "tools").glob("*.py")} >= modules  # the checkout's wrappers


# Runs ``--help`` of every tool in one form in this process, as that form runs it: a script
# (tools/<x>.py: its folder first on sys.path), a module (-m: the current folder first) or
# the installed console script's file; prints {entry: [exit code, output]} as JSON.
_HELP_DRIVER = """
import contextlib, io, json, runpy, sys
form, entries = sys.argv[1], json.loads(sys.argv[2])
sys.path[:] = [p for p in sys.path if p not in ("", ".")]
results = {}
for entry, target in entries.items():
    out = io.StringIO()
    sys.argv = [target, "--help"]
    sys.path.insert(0, "" if form == "-m" else target.rpartition("/")[0])
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            if form == "-m":
                runpy.run_module(target, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(target, run_name="__main__")
        code = 0
    except SystemExit as e:
        code = e.code
    except BaseException as e:
        code, _ = repr(e), out.write(repr(e))
    sys.path.pop(0)
    results[entry] = [code, out.getvalue()]
print(json.dumps(results))
"""


@pytest.mark.parametrize("form", ["tools/*.py", "-m", "console script"])
def test_help_works_in_every_form_from_any_folder(form, tmp_path):
    """``python tools/<x>.py --help``, ``python -m bitdet.tools.<x> --help`` and
    ``bitdet-<name> --help`` of every console script in setup.py, from a folder outside the
    checkout: exit 0 and the usage
    printed. One process per form runs every tool's help as that form does (one torch import)."""
    bin_dir = Path(sys.executable).parent
    missing = [script for script in CONSOLE_SCRIPTS if not (bin_dir / script).is_file()]
    assert not missing, f"{missing} not installed: pip install -e {ROOT}"
    targets = {
        script: {
            "tools/*.py": str(ROOT / "tools" / f"{module}.py"),
            "-m": f"bitdet.tools.{module}",
            "console script": str(bin_dir / script),
        }[form]
        for script, module in CONSOLE_SCRIPTS.items()
    }
    proc = run_python("-c", _HELP_DRIVER, form, json.dumps(targets), cwd=tmp_path, timeout=300)
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    failed = {
        entry: output[-1500:]
        for entry, (code, output) in results.items()
        if code not in (0, None) or not output.startswith("usage: ") or "--help" not in output
    }
    assert set(results) == set(CONSOLE_SCRIPTS) and not failed, failed


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
def test_every_trainer_and_only_a_trainer_has_force(tool, capsys):
    trainers = {"train_net", "finetune", "vtab", "pretrain"}
    assert ("--force" in _parser_flags(tool, capsys)) == (tool in trainers)
    if tool in trainers:
        module = importlib.import_module(f"bitdet.tools.{tool}")
        assert module.parse_args(["--config", "some.yaml", "--force"]).force
        assert not module.parse_args(["--config", "some.yaml"]).force


@pytest.mark.parametrize("tool", CONFIG_TOOLS)
def test_config_is_required_and_both_spellings_work(tool, capsys):
    module = importlib.import_module(f"bitdet.tools.{tool}")
    extra = {"visualize": ["--input", "x.jpg", "--output", "out"]}.get(tool, [])
    with pytest.raises(SystemExit) as exit_info:
        module.parse_args(extra)
    assert exit_info.value.code == 2 and "--config-file" in capsys.readouterr().err
    for flag in ("--config", "--config-file"):
        assert (
            module.parse_args([flag, "some.yaml", *extra, "SOLVER.X", "1"]).config_file
            == "some.yaml"
        )


@pytest.mark.parametrize("tool", CONFIG_TOOLS)
def test_override_example_in_help_names_keys_of_the_tools_config(tool, capsys):
    module = importlib.import_module(f"bitdet.tools.{tool}")
    with pytest.raises(SystemExit):
        module.parse_args(["--help"])
    assert f"e.g. {module.OVERRIDES_EXAMPLE}" in " ".join(capsys.readouterr().out.split())
    pairs = module.OVERRIDES_EXAMPLE.split()
    assert len(pairs) >= 4 and len(pairs) % 2 == 0
    cfg = LOADERS[tool](None, pairs)  # raises on a key the config lacks
    for key, value in zip(pairs[::2], pairs[1::2]):
        section, name = key.split(".")
        assert str(cfg[section][name]) == value


@pytest.mark.parametrize(
    "tool, argv",
    [
        ("train_net", ["--config", "retinanet_bit_m.yaml"]),
        (
            "pretrain",
            [
                "--config",
                "quick_schedules/pretrain_fashion_mnist_instant_test.yaml",
                "MODEL.DEVICE",
                "cuda",
            ],
        ),
        (
            "finetune",
            [
                "--config",
                "quick_schedules/finetune_instant_test.yaml",
                "MODEL.DEVICE",
                "cuda",
            ],
        ),
    ],
)
def test_cuda_config_on_a_cpu_machine_is_one_line(tool, argv, monkeypatch, capsys):
    """One device key and rule for every trainer."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    module = importlib.import_module(f"bitdet.tools.{tool}")
    with pytest.raises(SystemExit) as exit_info:
        module.cli(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"{tool}: error: no CUDA device: add MODEL.DEVICE cpu (the config says MODEL.DEVICE 'cuda')"
    ]


def test_resolve_device_rule(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert [resolve_device(d) for d in ("cpu", "", "auto")] == ["cpu"] * 3
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [resolve_device(d) for d in ("cpu", "", "cuda")] == ["cpu", "cuda:0", "cuda:0"]
    with pytest.raises(DeviceError, match="MODEL.DEVICE 'cuda:1': use 'cpu', 'cuda'"):
        resolve_device("cuda:1")
    with pytest.raises(DeviceError, match="MODEL.DEVICE 'tpu'"):
        resolve_device("tpu")


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


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--config", "no_such.yaml"], "train_net: error: config 'no_such.yaml' not found"),
        (
            [
                "--config",
                "quick_schedules/retinanet_bit_instant_test.yaml",
                "SOLVER.NOT_A_KEY",
                "1",
            ],
            "train_net: error: config override ['SOLVER.NOT_A_KEY', '1']: Non-existent key: "
            "SOLVER.NOT_A_KEY",
        ),
        (
            [
                "--config",
                "quick_schedules/retinanet_bit_instant_test.yaml",
                "MODEL.RETINANET.NUM_CLASSE",
                "3",
            ],
            "train_net: error: config override ['MODEL.RETINANET.NUM_CLASSE', '3']: "
            "Non-existent key: MODEL.RETINANET.NUM_CLASSE (did you mean "
            "MODEL.RETINANET.NUM_CLASSES?)",
        ),
        (
            ["--config", "retinanet_bit_s_R50x1_1.yaml"],
            "train_net: error: config 'retinanet_bit_s_R50x1_1.yaml' not found here or "
            f"in {CONFIGS_DIR}; did you mean COCO-Detection/retinanet_bit_s_R50x1_1x.yaml?",
        ),
    ],
)
def test_user_errors_are_one_line_with_exit_2(argv, message, capsys):
    from bitdet.tools import train_net

    with pytest.raises(SystemExit) as exit_info:
        train_net.cli(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message)


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["DATASET.NAME", "digits"],
            "finetune: error: config override ['DATASET.NAME', 'digits']: DATASET.NAME was "
            "renamed to DATASETS.TRAIN.NAME",
        ),
        (
            ["--weights", "scratch"],
            "finetune: error: --weights 'scratch': no weights (random initialisation) is ''",
        ),
    ],
)
def test_old_keys_and_spellings_are_one_line_naming_the_new_ones(argv, message, capsys):
    from bitdet.tools import finetune

    with pytest.raises(SystemExit) as exit_info:
        finetune.cli(["--config", "quick_schedules/finetune_instant_test.yaml", *argv])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [message]


@pytest.mark.parametrize(
    "argv0, prefix",
    [
        ("/venv/bin/bitdet-convert", "bitdet-convert"),  # the console script
        ("tools/convert_weights.py", "convert_weights"),
        ("/checkout/bitdet/tools/convert_weights.py", "convert_weights"),  # python -m
    ],
)
def test_a_user_error_names_the_program_that_was_run(argv0, prefix, tmp_path, monkeypatch, capsys):
    from bitdet.tools import convert_weights

    monkeypatch.setattr(sys, "argv", [argv0])
    with pytest.raises(SystemExit) as exit_info:
        convert_weights.cli([str(tmp_path / "a.npz"), str(tmp_path / "b.bin")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{prefix}: error: cannot tell the format of ") and err.count("\n") == 1


@pytest.mark.parametrize("error", [KeyError, ValueError])
def test_a_bug_keeps_its_traceback_a_user_error_is_one_line(error, monkeypatch, capsys):
    """Only bitdet's user errors (and OS errors about a path) become the one-line form: a
    KeyError or ValueError from a bug propagates, so Python prints its traceback."""
    from bitdet.errors import ConfigError
    from bitdet.tools import pretrain

    argv = ["--config", "quick_schedules/pretrain_fashion_mnist_instant_test.yaml"]

    def raising(exception):
        def setup(args):
            raise exception

        return setup

    monkeypatch.setattr(pretrain, "setup", raising(error("a bug in the code")))
    with pytest.raises(error, match="a bug in the code"):
        pretrain.cli(argv)
    assert "error:" not in capsys.readouterr().err
    monkeypatch.setattr(pretrain, "setup", raising(ConfigError("SOLVER.X: fix it")))
    with pytest.raises(SystemExit) as exit_info:
        pretrain.cli(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "pretrain: error: SOLVER.X: fix it\n"


@pytest.mark.slow
def test_details_go_to_the_log_file_not_the_console(tmp_path):
    """Bad weights: one line on stderr, no ANSI codes; environment, full config, traceback in
    log.txt."""
    out = tmp_path / "run"
    proc = run_python(
        "-m",
        "bitdet.tools.pretrain",
        "--config",
        "pretrain/demo_fashion_mnist.yaml",
        "--eval-only",
        "MODEL.WEIGHTS",
        tmp_path / "missing.pth",
        "OUTPUT_DIR",
        out,
        cwd=tmp_path,
        status=2,
        timeout=120,
    )
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith(f"pretrain: error: weights '{tmp_path / 'missing.pth'}' not found")
    )
    console = proc.stdout + proc.stderr
    assert "\x1b[" not in console and "Traceback" not in console
    assert (
        "environment" not in proc.stdout.replace("environment and full config", "")
        and "PyTorch" not in console
    )
    assert len(console.strip().splitlines()) <= 4
    log = (out / "log.txt").read_text()
    assert "environment:" in log and "PyTorch" in log  # Detectron2's collect_env_info table
    assert "SOLVER:" in log and "Traceback" in log and "missing.pth' not found" in log
    assert (out / "config_eval.yaml").is_file() and not (
        out / "config.yaml"
    ).exists()  # --eval-only's own name


def test_make_bench_runs_a_cpu_preset_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs the GPU preset")
    proc = subprocess.run(
        ["make", "-n", "bench", f"PY={sys.executable}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "tools/benchmark.py --config-file benchmark/cpu_levers.yaml" in proc.stdout
