"""tools/demo.py at smoke size: every stage runs and the report's figures come from the run."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bitdet.demo_report import detection_results

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_pipeline_smoke(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"))
    proc = subprocess.run([sys.executable, str(ROOT / "tools/demo.py"), "--smoke", "--output", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # each stage produced its outputs
    for path in ("pretrain/model_final.pth", "pretrain/model_final.npz", "pretrain/final.json",
                 "transfer/results.json", "transfer/accuracy_vs_shots.png",
                 "detection/pretrained/model_final.pth", "detection/scratch/model_final.pth",
                 "plots/pretrain_curve.png", "plots/detection_loss.png", "report.md", "summary.json"):
        assert (out / path).is_file(), path
    drawn = sorted((out / "detections").glob("*.png"))
    assert len(drawn) == 3

    # the report's figures are the ones in the result files
    report = (out / "report.md").read_text()
    final = json.loads((out / "pretrain/final.json").read_text())
    assert f"| {final['top1']:.1f} | {final['top5']:.1f} |" in report
    assert (out / "transfer/results.md").read_text().strip() in report
    inits = {row["init"] for row in json.loads((out / "transfer/results.json").read_text())["summary"]}
    assert len(inits) == 2  # upstream checkpoint vs scratch
    for init in ("pretrained", "scratch"):
        det = detection_results(out / "detection" / init)
        assert f"| {init} | {det['AP']:.1f} | {det['AP50']:.1f} |" in report
    for name in drawn:
        assert f"detections/{name.name}" in report

    # a second run reuses every finished stage
    again = subprocess.run([sys.executable, str(ROOT / "tools/demo.py"), "--smoke", "--output", str(out)],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.count("reusing") == 5, again.stdout
