"""tools/export_model.py end to end: exit statuses, files, report, --verify and --benchmark."""

import json
from pathlib import Path

import pytest

from bitdet.tools.export_model import main, parse_args
from tests.tools.tool_run import run_tool

pytestmark = pytest.mark.filterwarnings(
    "ignore::FutureWarning", "ignore::UserWarning", "ignore::DeprecationWarning"
)

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--model", "R14-tiny", "--num-classes", "10", "--image-size", "64"]


def test_classifier_both_formats_verified_and_timed(tmp_path):
    args = parse_args(
        [
            *TINY,
            "--format",
            "torchscript",
            "onnx",
            "--output",
            str(tmp_path),
            "--verify",
            "--benchmark",
            "--iters",
            "1",
        ]
    )
    assert main(args) == 0
    assert (tmp_path / "model.ts").is_file() and (tmp_path / "model.onnx").is_file()
    report = json.loads((tmp_path / "export_report.json").read_text())
    for fmt in ("torchscript", "onnx"):
        comparisons = report["verify"]["comparisons"][fmt]
        assert len(comparisons) == 2 and all(
            c["ok"] for c in comparisons
        )  # two samples, both shapes
    variants = [row["variant"] for row in report["benchmark"]]
    assert variants == ["eager", "eager, fast path", "TorchScript", "ONNX Runtime"]
    assert all(row["images_per_sec"] > 0 for row in report["benchmark"])


def test_verification_beyond_tolerance_exits_1(tmp_path, capsys):
    # ONNX Runtime's float32 round-off differs from torch's: with zero tolerance --verify must fail
    args = parse_args(
        [
            *TINY,
            "--format",
            "onnx",
            "--output",
            str(tmp_path),
            "--verify",
            "--atol",
            "0",
            "--rtol",
            "0",
        ]
    )
    assert main(args) == 1
    assert "verification failed" in capsys.readouterr().err


def test_usage_errors_exit_2_with_one_line(tmp_path, capsys):
    assert (
        main(parse_args(["--model", "R99x9", "--format", "onnx", "--output", str(tmp_path)])) == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("export_model: error: unknown model 'R99x9'") and "\n" not in err
    missing = tmp_path / "missing.npz"
    assert (
        main(
            parse_args(
                [*TINY, "--weights", str(missing), "--format", "onnx", "--output", str(tmp_path)]
            )
        )
        == 2
    )
    assert str(missing) in capsys.readouterr().err
    for argv in ([*TINY, "MODEL.WEIGHTS", "x.pth"], ["--config", "x.yaml", "--batch-size", "4"]):
        with pytest.raises(SystemExit) as exit_info:  # flags that the chosen export does not use
            parse_args([*argv[:-2], "--format", "onnx", "--output", str(tmp_path), *argv[-2:]])
        assert exit_info.value.code == 2


@pytest.fixture
def console_logging_of_this_test():
    """Tool logging set up anew: an in-process run of an earlier test leaves handlers on streams
    that pytest has closed since (a real tool process sets it up once)."""
    import logging

    from detectron2.utils.logger import setup_logger

    for name in ("bitdet", "detectron2", "fvcore"):
        logging.getLogger(name).handlers.clear()
    setup_logger.cache_clear()
    yield


def test_the_head_comes_from_the_weights_file(tmp_path, capsys, console_logging_of_this_test):
    import torch

    from bitdet import create_model
    from bitdet.export import load_runner
    from bitdet.weights import state_dict_to_npz, write_npz

    source = create_model("R14-tiny", num_classes=10).eval()  # a trained-like head: not zero
    weights = tmp_path / "r14_10.npz"
    write_npz(weights, state_dict_to_npz(source))
    out = tmp_path / "out"
    base = [
        "--model",
        "R14-tiny",
        "--weights",
        str(weights),
        "--image-size",
        "64",
        "--format",
        "onnx",
        "--verify",
    ]
    assert main(parse_args([*base, "--output", str(out)])) == 0
    comparisons = json.loads((out / "export_report.json").read_text())["verify"]["comparisons"][
        "onnx"
    ]
    assert [c["shape"] for c in comparisons] == [[2, 10], [3, 10]] and all(
        c["ok"] for c in comparisons
    )
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        expected = source(x)
    (logits,) = load_runner(out / "model.onnx", "onnx")(x)
    assert expected.abs().max() > 1e-3 and torch.allclose(
        torch.from_numpy(logits), expected, atol=1e-4
    )

    assert main(parse_args([*base, "--num-classes", "1000", "--output", str(tmp_path / "o2")])) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("export_model: error: --num-classes 1000 disagrees with") and "\n" not in err
    )
    assert "10 classes" in err and "--new-head" in err
    assert (
        main(
            parse_args(
                [*base, "--num-classes", "1000", "--new-head", "--output", str(tmp_path / "o3")]
            )
        )
        == 1
    )
    assert "the head is new, zero-initialised" in capsys.readouterr().err


def test_weights_of_another_architecture_name_the_model_flag(tmp_path, capsys):
    from bitdet import create_model
    from bitdet.weights import state_dict_to_npz, write_npz

    weights = tmp_path / "r26.npz"
    write_npz(weights, state_dict_to_npz(create_model("R26-tiny", num_classes=10)))
    argv = [*TINY, "--weights", str(weights), "--format", "onnx", "--output", str(tmp_path)]
    assert main(parse_args(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("export_model: error: ") and "\n" not in err
    assert "pass --model R26-tiny" in err and "create_model" not in err


@pytest.mark.parametrize("part", ["model", "backbone"])
def test_instant_retinanet_and_its_backbone_to_onnx(part, tmp_path):
    config = str(ROOT / "configs/quick_schedules/retinanet_bit_instant_test.yaml")
    args = parse_args(
        [
            "--config-file",
            config,
            "--part",
            part,
            "--format",
            "onnx",
            "--output",
            str(tmp_path),
            "--verify",
            "MODEL.DEVICE",
            "cpu",
        ]
    )
    assert main(args) == 0
    report = json.loads((tmp_path / "export_report.json").read_text())
    assert report["kind"] == ("detector" if part == "model" else "backbone")
    assert all(c["ok"] for c in report["verify"]["comparisons"]["onnx"])


def test_the_wrapper_and_its_help(tmp_path):
    out = run_tool("export_model.py", "--help", cwd=tmp_path)
    for flag in ("--format", "--verify", "--benchmark", "--part", "--config-file"):
        assert flag in out.stdout
    assert "--num-gpus" not in out.stdout and "--resume" not in out.stdout  # only this tool's flags


def test_a_bug_keeps_its_traceback_and_a_missing_package_is_one_line(tmp_path, capsys, monkeypatch):
    import bitdet.tools.export_model as tool
    from bitdet.errors import MissingPackageError

    def bug(args):
        raise KeyError("internal")

    monkeypatch.setattr(tool, "build_classifier_target", bug)
    args = parse_args([*TINY, "--format", "torchscript", "--output", str(tmp_path)])
    with pytest.raises(KeyError, match="internal"):  # not turned into "error: internal", exit 2
        main(args)

    def missing(runtime=False):
        raise MissingPackageError("ONNX export needs onnx: pip install 'bitdet[export]'")

    monkeypatch.setattr(tool, "require_onnx", missing)
    args = parse_args([*TINY, "--format", "onnx", "--output", str(tmp_path)])
    assert main(args) == 2
    assert capsys.readouterr().err.strip() == (
        "export_model: error: ONNX export needs onnx: pip install 'bitdet[export]'"
    )
