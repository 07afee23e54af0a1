"""tools/train_net.py end to end: train + COCO evaluation, --eval-only, resume (subprocesses)."""

import json
import re
import shutil

import pytest

from tests.tools.tool_run import read_metrics, run_tool

CONFIG = "quick_schedules/retinanet_bit_instant_test.yaml"
# An untrained RetinaNet scores about its prior (0.01), below the default 0.05 test threshold;
# with no detections COCOEvaluator reports NaN, so keep every detection.
KEEP_ALL = ("MODEL.RETINANET.SCORE_THRESH_TEST", "0.0")
COPYPASTE = re.compile(r"copypaste: AP,AP50,AP75,APs,APm,APl\s*\n.*copypaste: ([-\d.nan]+),", re.M)
# Lines a CPU run must not show: torch's note on building C++ extensions (which no tool does),
# the meshgrid deprecation raised inside Detectron2's anchor generator, pycocotools' own AP
# summary (Detectron2's table shows the same numbers), and any other warning from Python.
NOT_ON_CONSOLE = (
    "No CUDA runtime is found",
    "torch.meshgrid",
    "Average Precision  (AP)",
    "Loading and preparing",
    "Warning:",
)


def _run(tmp_path, *args, timeout=900):
    run = run_tool(
        "train_net.py", "--config", CONFIG, *args, cwd=tmp_path, threads=2, timeout=timeout
    )
    return run.stdout + run.stderr


def _ap(log):
    match = COPYPASTE.search(log)
    assert match, "no COCO 'copypaste: AP,...' line in the output:\n" + log[-3000:]
    return float(match.group(1))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train_net")
    log = _run(tmp, "OUTPUT_DIR", str(tmp / "out"), *KEEP_ALL)
    return tmp, log


@pytest.mark.slow
def test_trains_checkpoints_and_evaluates(trained):
    tmp, log = trained
    out = tmp / "out"
    ap = _ap(log)
    assert (
        0.0 <= ap <= 100.0
    )  # four iterations: any finite AP; the point is that the whole path runs
    assert (out / "model_final.pth").is_file() and (
        out / "last_checkpoint"
    ).read_text() == "model_final.pth"
    assert (out / "model_0000001.pth").is_file()  # CHECKPOINT_PERIOD 2 -> after iteration index 1
    metrics = read_metrics(out)
    assert max(m["iteration"] for m in metrics if "total_loss" in m) == 3
    assert (out / "inference" / "bitdet_demo_mini_val" / "coco_instances_results.json").is_file()
    assert (
        tmp / "datasets" / "bitdet_demo_mini" / "annotations" / "instances_val.json"
    ).is_file()  # generated on use
    assert (out / "config.yaml").is_file()


@pytest.mark.slow
def test_console_is_quiet_and_the_details_are_in_the_log_file(trained):
    tmp, log = trained
    assert [line for line in NOT_ON_CONSOLE if line in log] == []
    assert log.count("Evaluation results for bbox") == 1 and log.count("copypaste: AP,AP50") == 1
    details = (tmp / "out" / "log.txt").read_text()
    assert "Average Precision  (AP)" in details  # pycocotools' printout, kept in the log file


@pytest.mark.slow
def test_the_instant_config_repeats_exactly(trained):
    """SEED is fixed: a second run gives the same losses, detections and AP."""
    tmp, log = trained
    again = tmp / "again"
    log_again = _run(tmp, "OUTPUT_DIR", str(again), *KEEP_ALL)

    def losses(out):
        return [
            m["total_loss"]
            for m in map(json.loads, (out / "metrics.json").read_text().splitlines())
            if "total_loss" in m
        ]

    assert losses(again) == losses(tmp / "out") and len(losses(again)) >= 1
    detections = "inference/bitdet_demo_mini_val/coco_instances_results.json"
    assert (again / detections).read_text() == (tmp / "out" / detections).read_text()
    assert _ap(log_again) == _ap(log)


@pytest.mark.slow
def test_eval_only_reproduces_the_final_evaluation(trained):
    tmp, log = trained
    out = tmp / "out"
    eval_log = _run(
        tmp,
        "--eval-only",
        "MODEL.WEIGHTS",
        str(out / "model_final.pth"),
        "OUTPUT_DIR",
        str(tmp / "eval"),
        *KEEP_ALL,
    )
    assert "Starting training" not in eval_log
    assert _ap(eval_log) == pytest.approx(_ap(log), abs=1e-3)


@pytest.mark.slow
def test_the_same_command_continues_from_the_last_checkpoint(trained):
    tmp, _ = trained
    out = tmp / "stopped"
    shutil.copytree(tmp / "out", out)
    for name in ("model_final.pth", "final.json"):  # as if stopped after iteration 1
        (out / name).unlink()
    (out / "last_checkpoint").write_text("model_0000001.pth")
    log = _run(
        tmp, "OUTPUT_DIR", str(out), *KEEP_ALL
    )  # no --resume: a run of the same config continues
    assert "Starting training from iteration 2" in log
    assert json.loads((out / "final.json").read_text())["iterations"] == 4
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
