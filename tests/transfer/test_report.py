"""Results table, seed summaries, metrics reading and the PNG plots."""

import json

import pytest

from bitdet.transfer.report import (
    accuracy_vs_shots_plot,
    confusion_plot,
    read_metrics,
    results_table,
    summarize_runs,
    training_curve_plot,
    write_json,
)

RUNS = [
    {"dataset": "digits", "init": "upstream", "shots": 1, "seed": 0, "top1": 40.0},
    {"dataset": "digits", "init": "upstream", "shots": 1, "seed": 1, "top1": 50.0},
    {"dataset": "digits", "init": "upstream", "shots": "full", "seed": 0, "top1": 95.0},
    {"dataset": "digits", "init": "scratch", "shots": 1, "seed": 0, "top1": 20.0},
    {"dataset": "digits", "init": "upstream", "shots": 10, "seed": 0, "top1": 80.0},
]


def _is_png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_and_table():
    rows = summarize_runs(RUNS)
    first = rows[-3]  # sorted by dataset, init, shots (full last)
    assert (first["init"], first["shots"], first["mean"], first["n"]) == ("upstream", 1, 45.0, 2)
    assert first["std"] == pytest.approx(7.0710678)
    assert [r["shots"] for r in rows if r["init"] == "upstream"] == [1, 10, "full"]
    table = results_table(rows)
    lines = table.splitlines()
    assert lines[2] == "| dataset | init | 1-shot | 10-shot | full |"
    assert "| digits | scratch | 20.0 | – | – |" in lines
    assert "| digits | upstream | 45.0 ± 7.1 (n=2) | 80.0 | 95.0 |" in lines


def test_read_metrics_tolerates_a_torn_line_and_resumes(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(
        "\n".join(
            [
                json.dumps({"iteration": 0, "loss": 2.3, "lr": 0.0}),
                json.dumps({"iteration": 1, "loss": 2.0, "lr": 0.003}),
                json.dumps({"iteration": 1, "loss": 1.9, "lr": 0.003}),  # repeated after a resume
                json.dumps({"iteration": 1, "eval/top1": 55.0}),
                '{"iteration": 2, "lo',
            ]
        )
    )
    records = read_metrics(path)
    assert [r["iteration"] for r in records] == [0, 1]
    assert records[1] == {"iteration": 1, "loss": 1.9, "lr": 0.003, "eval/top1": 55.0}
    out = training_curve_plot(path, tmp_path / "curve.png")
    assert _is_png(out)


def test_plots_and_json(tmp_path):
    assert _is_png(confusion_plot([[3, 1], [0, 4]], ["a", "b"], tmp_path / "cm.png"))
    assert _is_png(accuracy_vs_shots_plot(summarize_runs(RUNS), tmp_path / "shots.png"))
    with pytest.raises(ValueError, match="square with 3 classes"):
        confusion_plot([[1, 0], [0, 1]], ["a", "b", "c"], tmp_path / "bad.png")
    import numpy as np

    write_json(tmp_path / "r.json", {"top1": np.float32(0.5), "idx": np.arange(2)})
    assert json.loads((tmp_path / "r.json").read_text()) == {"top1": 0.5, "idx": [0, 1]}


def test_collect_runs_skips_sweep_summaries(tmp_path):
    from bitdet.transfer.report import collect_runs

    for i, run in enumerate(RUNS):
        write_json(tmp_path / run["init"] / f"run{i}" / "results.json", run)
    write_json(tmp_path / "results.json", {"runs": RUNS, "summary": []})
    runs = collect_runs([tmp_path])
    assert len(runs) == len(RUNS)
    assert results_table(summarize_runs(runs)) == results_table(summarize_runs(RUNS))
