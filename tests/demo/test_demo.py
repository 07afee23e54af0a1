"""The demo: verdicts computed from the numbers (synthetic runs), progress parsing, and
``python -m bitdet.tools.demo`` at smoke size (every stage runs, the report's figures come from
the run)."""

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bitdet.demo.progress import Progress, StageFailed, Task, run_tasks
from bitdet.demo.report import (
    box_precision,
    detection_results,
    draw_threshold,
    transfer_comparisons,
    write_report,
)
from bitdet.demo.stats import compare
from bitdet.utils.machine import cpu_name

ROOT = Path(__file__).resolve().parents[2]

# Two-sided 95 % Student t quantiles (textbook tables), an independent reference for the intervals.
T975 = {1: 12.706204736, 2: 4.302652730, 3: 3.182446305}


# ----------------------------------------------------------------------------- statistics


def test_paired_interval_matches_the_textbook_formula():
    up, scratch = [60.0, 58.0, 65.0], [50.0, 51.0, 52.0]
    diffs = [10.0, 7.0, 13.0]
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    c = compare(up, scratch, "points", paired=True)
    half = T975[2] * sd / math.sqrt(3)
    assert c.diff == pytest.approx(10.0)
    assert c.ci == pytest.approx((mean - half, mean + half), rel=1e-6)
    assert c.method == "paired t" and c.significant and c.beyond_spread
    assert c.verdict().startswith(
        "pretraining helps: +10.0 points (95 % CI +2.5 to +17.5, paired t, n=3)"
    )


def test_welch_interval_matches_the_textbook_formula():
    up, scratch = [20.0, 22.0], [12.0, 13.0]
    va, vb = 2.0 / 2, 0.5 / 2  # sample variances 2.0 and 0.5, over n = 2
    df = (va + vb) ** 2 / (va**2 + vb**2)
    c = compare(up, scratch, "AP", paired=False)
    assert c.method == "Welch t" and c.diff == pytest.approx(8.5)
    from scipy import stats

    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert c.ci == pytest.approx((8.5 - half, 8.5 + half))
    assert 1 < df < 2 and half > T975[2] * math.sqrt(
        va + vb
    )  # fewer than 2 degrees of freedom: wider


def test_verdict_says_scratch_wins_when_it_does():
    c = compare([10.0, 11.0, 10.5], [15.0, 15.5, 16.0], "AP", paired=False)
    assert c.ci[1] < 0 and not c.beyond_spread
    assert c.verdict().startswith("pretraining hurts (scratch wins): -5.0 AP")
    assert "helps" not in c.verdict()


def test_verdict_claims_nothing_inside_the_noise_or_from_one_run():
    noisy = compare([55.0, 48.0, 60.0], [50.0, 52.0, 47.0], "points", paired=True)
    assert noisy.ci[0] < 0 < noisy.ci[1] and not noisy.significant
    assert noisy.verdict().startswith("no significant difference: +4.7 points")
    single = compare([9.0], [3.0], "AP", paired=False)
    assert single.ci is None and not single.significant
    assert "helps" not in single.verdict() and "no interval" in single.verdict()


def test_compare_rejects_bad_input():
    with pytest.raises(ValueError, match="equal counts"):
        compare([1.0, 2.0], [1.0], "AP", paired=True)
    with pytest.raises(ValueError, match="non-finite"):
        compare([1.0, float("nan")], [1.0, 2.0], "AP", paired=False)
    with pytest.raises(ValueError, match="at least one value"):
        compare([], [1.0], "AP", paired=False)


def test_transfer_runs_are_paired_by_seed():
    runs = [
        dict(init=i, shots=1, seed=s, top1=v)
        for i, vals in (("upstream", (60, 61, 59)), ("scratch", (50, 52, 49)))
        for s, v in zip((2, 0, 1), vals)
    ]
    ((shots, c),) = transfer_comparisons(runs, "upstream")
    assert (
        shots == 1 and c.treated["values"] == [61, 59, 60] and c.control["values"] == [52, 49, 50]
    )
    with pytest.raises(ValueError, match="do not pair up"):
        transfer_comparisons(runs[:5], "upstream")


def test_box_precision_counts_right_class_and_overlap_once():
    gt = {
        "annotations": [
            {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},
            {"image_id": 1, "category_id": 2, "bbox": [20, 20, 10, 10]},
        ]
    }
    preds = [
        {"image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10], "score": 0.9},  # right
        {
            "image_id": 1,
            "category_id": 1,
            "bbox": [0, 0, 10, 10],
            "score": 0.8,
        },  # duplicate of a matched box
        {"image_id": 1, "category_id": 1, "bbox": [20, 20, 10, 10], "score": 0.7},  # wrong class
        {
            "image_id": 1,
            "category_id": 2,
            "bbox": [20, 20, 10, 10],
            "score": 0.2,
        },  # right, below 0.5
    ]
    assert box_precision(preds, gt, 0.5) == {
        "threshold": 0.5,
        "drawn": 3,
        "right": 1,
        "precision": pytest.approx(1 / 3),
        "recall": 0.5,
    }
    assert box_precision(preds, gt, 0.1)["right"] == 2
    assert box_precision(preds, gt, 0.95)["precision"] == 0.0


def test_draw_threshold_is_the_lowest_mostly_right_and_picks_images_with_boxes(tmp_path):
    box = [0, 0, 10, 10]
    gt = {
        "images": [{"id": i} for i in (5, 1, 2, 3)],
        "annotations": [{"image_id": i, "category_id": 1, "bbox": box} for i in (5, 1, 2, 3)],
    }
    preds = [
        {"image_id": 2, "category_id": 1, "bbox": box, "score": 0.9},  # right
        {"image_id": 5, "category_id": 1, "bbox": box, "score": 0.62},  # right
        {"image_id": 3, "category_id": 1, "bbox": box, "score": 0.58},  # right
        {"image_id": 2, "category_id": 2, "bbox": box, "score": 0.52},  # wrong class
        {
            "image_id": 1,
            "category_id": 2,
            "bbox": box,
            "score": 0.32,
        },  # wrong class, image 1's only box
    ]
    (tmp_path / "preds.json").write_text(json.dumps(preds))
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    chosen = draw_threshold(tmp_path / "preds.json", tmp_path / "gt.json", images=2)
    # 0.3 draws 3 right of 5, 0.35 the first threshold with 3 of 4 right.
    assert chosen["threshold"] == 0.35 and (chosen["drawn"], chosen["right"]) == (4, 3)
    # The split's order, only images with a box at that threshold (not 1), at most 2.
    assert chosen["image_ids"] == [5, 2]
    # No box at any threshold: the first images of the split.
    (tmp_path / "low.json").write_text(json.dumps([dict(p, score=0.1) for p in preds]))
    assert draw_threshold(tmp_path / "low.json", tmp_path / "gt.json", images=2)["image_ids"] == [
        5,
        1,
    ]


# ----------------------------------------------------------------------- report from synthetic runs


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _synthetic_demo(root: Path, det_ap, top1) -> None:
    """The files the stages write, with chosen numbers: det_ap[init] per seed, top1[init] per
    seed."""
    _write(
        root / "upstream/final.json",
        json.dumps({"top1": 88.4, "top5": 99.7, "steps": 10, "img_per_s": 500.0}),
    )
    _write(
        root / "upstream/metrics.json",
        "\n".join(json.dumps({"iteration": i, "loss": 2.0 - i / 10, "lr": 0.1}) for i in range(5)),
    )
    for init, values in top1.items():
        for seed, value in enumerate(values):
            label = (
                "my_checkpoint" if init == "upstream" else init
            )  # the folder, not the label, decides
            _write(
                root / f"transfer/{init}/{label}/1shot_seed{seed}/results.json",
                json.dumps(
                    {"dataset": "digits", "init": label, "shots": 1, "seed": seed, "top1": value}
                ),
            )
    for init, values in det_ap.items():
        for seed, ap in enumerate(values):
            lines = [{"iteration": i, "total_loss": 1.0 - i / 10} for i in range(3)]
            lines.append(
                {
                    "iteration": 2,
                    **{f"bbox/{k}": ap for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")},
                }
            )
            _write(
                root / f"detection/{init}_seed{seed}/metrics.json",
                "\n".join(map(json.dumps, lines)),
            )
    _write(
        root / "detections_source.json",
        json.dumps(
            {
                "init": "scratch",
                "run": "scratch_seed0",
                "threshold": 0.5,
                "precision": 0.8,
                "recall": 0.5,
                "drawn": 10,
                "right": 8,
            }
        ),
    )


def _test_mode_report(root, timings, det_ap, top1):
    """``write_report`` of a synthetic test-mode demo (seed 0) with these scores."""
    _synthetic_demo(root, det_ap, top1)
    return write_report(root, timings, {"mode": "test", "seed": 0})


def test_report_verdicts_follow_the_numbers(tmp_path):
    timings = {"pretrain": {"wall_s": 10.0, "cpu_s": 9.0}}
    scratch_wins = tmp_path / "a"
    report, verdicts = _test_mode_report(
        scratch_wins,
        timings,
        {"upstream": [4.0, 4.5], "scratch": [9.0, 9.5]},
        {"upstream": [40.0, 41.0, 42.0], "scratch": [50.0, 52.0, 51.0]},
    )
    text = report.read_text()
    assert verdicts[0].startswith("detection: pretraining hurts (scratch wins): -5.0 AP")
    assert verdicts[1].startswith(
        "digits 1-shot: pretraining hurts (scratch wins): -10.0 points top-1"
    )
    assert "pretraining helps" not in text and all(v in text for v in verdicts)
    assert (
        "| upstream | 4.2 ± 0.4 |" in text
        and "| 1-shot | 41.0 ± 1.0 | 51.0 ± 1.0 | -10.0 |" in text
    )
    summary = json.loads((scratch_wins / "summary.json").read_text())
    assert (
        summary["detection_comparison"]["significant"]
        and summary["detection_comparison"]["diff"] < 0
    )

    _, verdicts = _test_mode_report(
        tmp_path / "b",
        timings,
        {"upstream": [15.0, 16.0], "scratch": [9.0, 9.4]},
        {"upstream": [60.0, 58.0, 65.0], "scratch": [50.0, 51.0, 52.0]},
    )
    assert (
        verdicts[0].startswith("detection: pretraining helps: +6.3 AP")
        and "ratio 1.68" in verdicts[0]
    )
    assert verdicts[1].startswith("digits 1-shot: pretraining helps: +10.0 points top-1")


def test_study_compares_the_two_upstream_models(tmp_path):
    root = tmp_path / "study"
    _synthetic_demo(
        root,
        {
            "upstream": [15.0, 16.0, 15.5],
            "scratch": [9.0, 9.4, 9.2],
            "upstream10": [12.0, 12.5, 12.2],
        },
        {
            "upstream": [60.0, 58.0, 65.0],
            "scratch": [50.0, 51.0, 52.0],
            "upstream10": [61.0, 58.5, 66.0],
        },
    )
    _write(root / "upstream10/final.json", json.dumps({"top1": 80.5, "steps": 10}))
    study = {"init": "upstream10", "fraction": 0.1}
    report, verdicts = write_report(root, {}, {"mode": "test", "seed": 0, "study": study})
    text = report.read_text()
    # detection: 100 % beats 10 %; digits: 10 % is ahead on every seed, and the verdict says so
    assert verdicts[-2].startswith("study, detection: more upstream data helps: +3.3 AP")
    assert verdicts[-1].startswith(
        "study, digits 1-shot: more upstream data hurts (10 % of the items wins): -0.8"
    )
    assert "| digits 1-shot | +10.0 | +10.8 | -0.8 |" in text and "| 10 % | 80.5 | 10 |" in text
    assert "| upstream10 | 12.2 ± 0.3 |" in text
    summary = json.loads((root / "summary.json").read_text())
    assert summary["study"]["detection_comparison"]["diff"] == pytest.approx(
        15.5 - 12.233333, abs=1e-4
    )


def test_study_pretrains_on_a_subset_for_the_same_steps(tmp_path):
    from bitdet.tools.demo import build_tasks

    plain = {t.name for t in build_tasks(tmp_path, "smoke", 0)}
    tasks = {t.name: t for t in build_tasks(tmp_path, "smoke", 0, study=True)}
    assert set(tasks) - plain == {
        "pretrain_upstream10",
        "transfer_upstream10",
        "detection_upstream10_seed0",
        "detection_upstream10_seed1",
    }
    full, small = tasks["pretrain"], tasks["pretrain_upstream10"]
    opts = dict(zip(small.cmd[-6::2], small.cmd[-5::2]))
    assert (
        opts["SOLVER.MAX_ITER"] == str(full.progress.iters_per_run)
        and int(opts["DATASETS.TRAIN.MAX_SAMPLES"]) > 0
    )
    assert tasks["detection_upstream10_seed1"].needs == ("pretrain_upstream10",)
    assert (
        tasks["detection_upstream_seed1"].needs == ("pretrain",)
        and tasks["transfer_scratch"].needs == ()
    )
    assert str(tmp_path / "upstream10" / "model_final.pth") in tasks["transfer_upstream10"].cmd


def test_progress_reads_the_tools_console_lines():
    p = Progress(100, runs=4)
    p.feed(
        "[11/29 15:22:30 bitdet.transfer.finetune]: digits (5 per class, seed 1): "
        "50 training / 450 test images, 10 classes\n"
    )
    p.feed(
        "[11/29 15:22:37 d2.utils.events]:  eta: 0:07:10  iter: 39  loss: 2.135    "
        "time: 0.3897  lr: 0.03\n"
    )
    p.feed("[11/29 15:23:00 bitdet.transfer.finetune]: digits: top-1 61.25%, top-5 90.00% -> x\n")
    assert (
        p.line() == "run 1/4 (5 per class, seed 1) iter 40/100 eta 0:07:10 loss 2.13 top-1 61.2 %"
    )
    d = Progress(1500)
    d.feed(" eta: 0:01:02  iter: 1199  total_loss: 0.8125  loss_cls: 0.4\n")
    d.feed("[d2.evaluation.testing]: copypaste: AP,AP50,AP75,APs,APm,APl\n")
    d.feed("[d2.evaluation.testing]: copypaste: 21.5312,40.1,20.0,10.0,25.0,30.0\n")
    assert d.line() == "iter 1200/1500 eta 0:01:02 loss 0.812 AP 21.5312"


def _py_task(name, code, done, needs=()):
    return Task(name, [sys.executable, "-c", code], done, Progress(5), needs=needs)


def test_run_tasks_logs_orders_reuses_and_names_a_failure(tmp_path):
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    write = "print(' eta: 0:00:01  iter: 4  loss: 0.5'); open({!r}, 'w').write({!r})"
    tasks = [
        _py_task(
            "second",
            write.format(str(second), "2") + f"; assert open({str(first)!r}).read() == '1'",
            second,
            needs=("first",),
        ),
        _py_task("first", write.format(str(first), "1"), first),
    ]
    out = io.StringIO()
    ran = run_tasks(tasks, tmp_path, dict(os.environ), jobs=2, out=out)
    assert [t.name for t in ran] == ["first", "second"]  # "second" waited for "first"
    assert "iter: 4" in (tmp_path / "second.log").read_text()
    assert (
        "[demo] second: done in" in out.getvalue()
        and "iter 5/5 eta 0:00:01 loss 0.5" in out.getvalue()
    )
    assert all(t.cpu_s >= 0 and t.wall_s > 0 for t in ran)

    again = io.StringIO()
    assert run_tasks(tasks, tmp_path, dict(os.environ), jobs=2, out=again) == []
    assert again.getvalue().count("reusing") == 2

    bad = _py_task(
        "broken", "print('something went wrong'); raise SystemExit(3)", tmp_path / "never"
    )
    with pytest.raises(
        StageFailed, match=r"(?s)stage 'broken' failed \(exit 3\).*something went wrong"
    ):
        run_tasks([bad], tmp_path, dict(os.environ), jobs=1, out=io.StringIO())


def test_estimate_schedules_stages_as_run_tasks_does(tmp_path):
    from bitdet.demo.estimate import STAGE_COSTS, estimate, stage_cpu_s

    pre = Task("pretrain", (), tmp_path / "pre", Progress(100))
    det = Task("detection_upstream_seed0", (), tmp_path / "det", Progress(50), needs=("pretrain",))
    sweep = Task("transfer_scratch", (), tmp_path / "tr", Progress(10, runs=4))
    p, d, t = STAGE_COSTS["pretrain"], STAGE_COSTS["detection"], STAGE_COSTS["transfer"]
    assert stage_cpu_s(sweep) == pytest.approx(t.start_s + 4 * (t.run_s + 10 * t.step_s))
    cpu = {x.name: stage_cpu_s(x) for x in (pre, det, sweep)}
    # two at a time: the sweep runs beside the pretraining, the detection run after it
    two = estimate([pre, det, sweep], jobs=2, cores=2)
    assert two.wall_s == pytest.approx(
        max(cpu["pretrain"] + cpu["detection_upstream_seed0"], cpu["transfer_scratch"])
    )
    assert sum(two.cpu_s.values()) == pytest.approx(
        p.start_s + 100 * p.step_s + d.start_s + 50 * d.step_s + cpu["transfer_scratch"]
    )
    assert estimate([pre, det, sweep], jobs=1, cores=2).wall_s == pytest.approx(sum(cpu.values()))
    # more stages at a time than cores: they share the cores
    assert estimate([pre], jobs=2, cores=1).wall_s == pytest.approx(2 * cpu["pretrain"])
    (tmp_path / "pre").write_text("done")  # a finished stage is reused: it costs nothing
    reused = estimate([pre, det], jobs=2, cores=2)
    assert "pretrain" not in reused.cpu_s and reused.wall_s == pytest.approx(
        cpu["detection_upstream_seed0"]
    )
    assert (
        "min wall" in two.describe() and "a slower or busy machine takes longer" in two.describe()
    )
    with pytest.raises(KeyError, match="no cost model"):
        estimate([Task("mystery", (), tmp_path / "m", Progress(5))], jobs=1, cores=1)


def test_full_demo_estimate_leaves_headroom_in_the_cpu_budget(tmp_path):
    from bitdet.demo.estimate import CPU_BUDGET_S, CPU_HEADROOM, estimate
    from bitdet.tools.demo import build_tasks, drawing_placeholders

    tasks = build_tasks(tmp_path, "full", 0)
    planned = estimate(tasks + drawing_placeholders(tmp_path, tasks), jobs=2, cores=2)
    # every stage is priced: one pretraining, 3 detection runs per side, 2 sweeps, 2 drawings
    assert len(planned.cpu_s) == 11 and min(planned.cpu_s.values()) > 0
    assert sum(planned.cpu_s.values()) <= CPU_HEADROOM * CPU_BUDGET_S


# ----------------------------------------------------------------------------- smoke run


@pytest.mark.slow
def test_demo_pipeline_smoke(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"))
    cmd = [
        sys.executable,
        "-m",
        "bitdet.tools.demo",
        "--smoke",
        "--seed",
        "3",
        "--output",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # each stage produced its outputs, with the requested seeds
    for path in (
        "upstream/model_final.pth",
        "upstream/final.json",
        "detection/upstream_seed3/model_final.pth",
        "detection/scratch_seed4/model_final.pth",
        "plots/pretrain_curve.png",
        "plots/detection_loss.png",
        "plots/accuracy_vs_shots.png",
        "report.md",
        "summary.json",
        "timings.json",
    ):
        assert (out / path).is_file(), path
    assert {p.name for p in (out / "transfer/scratch/scratch").iterdir()} == {
        "1shot_seed3",
        "1shot_seed4",
        "full_seed3",
        "full_seed4",
    }
    drawn = sorted(p.name for p in (out / "detections").glob("*.png"))
    assert len(drawn) == 4 and drawn == sorted(p.name for p in (out / "ground_truth").glob("*.png"))

    # the report's figures and verdicts are the ones computed from the result files
    report = (out / "report.md").read_text()
    summary = json.loads((out / "summary.json").read_text())
    final = json.loads((out / "upstream/final.json").read_text())
    assert f"| {final['top1']:.1f} | {final['top5']:.1f} |" in report
    assert f"Machine: {cpu_name()}, " in report  # figures differ between CPU models: it is named
    for init in ("upstream", "scratch"):
        for seed in (3, 4):
            det = detection_results(out / f"detection/{init}_seed{seed}")
            assert f"| {init}_seed{seed} | {det['AP']:.1f} | {det['AP50']:.1f} |" in report
    assert len(summary["verdicts"]) == 3  # detection, 1-shot, full
    for verdict in summary["verdicts"]:
        assert f"- {verdict}" in report and f"[demo] {verdict}" in proc.stdout
    det_cmp = summary["detection_comparison"]
    assert ("helps" in det_cmp["verdict"]) == (det_cmp["ci"] is not None and det_cmp["ci"][0] > 0)
    assert proc.stdout.rstrip().endswith(f"[demo] report: {out / 'report.md'}")
    assert "iter 4/4" in proc.stdout  # the live progress line reached the end of a detection run

    # a second run reuses every finished stage
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.count("reusing") == 9, again.stdout
