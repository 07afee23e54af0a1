"""Fine-tuning outputs: results JSON, PNG plots (training curve, confusion matrix, accuracy vs
shots) and a markdown table across datasets and shots.

Plots use matplotlib's object API on the Agg canvas (no display, no global pyplot state), so
they work on headless cluster nodes and from several threads.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence

import numpy as np

from bitdet.errors import DataError
from bitdet.transfer.fewshot import FULL, mean_std
from bitdet.utils.io import PathLike, atomic_write, write_json

__all__ = [
    "accuracy_vs_shots_plot",
    "collect_runs",
    "confusion_plot",
    "read_metrics",
    "results_table",
    "summarize_runs",
    "training_curve_plot",
    "write_json",
]


def read_metrics(path: PathLike) -> List[Dict[str, Any]]:
    """Records of a Detectron2-style ``metrics.json`` (one JSON object per line).

    A torn last line (a run killed mid-write) is ignored; records repeated after a resume
    keep only their latest value per iteration.
    """
    by_iter: Dict[int, Dict[str, Any]] = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "iteration" in record:
                by_iter.setdefault(int(record["iteration"]), {}).update(record)
    return [by_iter[k] for k in sorted(by_iter)]


def _new_figure(width: float = 6.0, height: float = 4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: PathLike) -> Path:
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png")
    return Path(path)


def training_curve_plot(metrics_path: PathLike, out_png: PathLike, title: str = "") -> Path:
    """Loss and learning rate against step (and ``eval/top1`` where logged).

    Args:
        metrics_path: the trainer's ``metrics.json``.
        out_png: destination.

    Returns:
        ``out_png``.
    """
    records = read_metrics(metrics_path)
    if not records:
        raise DataError(f"{metrics_path} holds no metrics records")
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    steps = [r["iteration"] + 1 for r in records if "loss" in r]
    ax.plot(
        steps, [r["loss"] for r in records if "loss" in r], color="tab:blue", label="training loss"
    )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    lr = [(r["iteration"] + 1, r["lr"]) for r in records if "lr" in r]
    if lr:
        ax2 = ax.twinx()
        ax2.plot(*zip(*lr), color="tab:gray", linestyle="--", label="learning rate")
        ax2.set_ylabel("learning rate")
    evals = [(r["iteration"] + 1, r["eval/top1"]) for r in records if "eval/top1" in r]
    if evals:
        ax3 = ax.twinx()
        ax3.spines["right"].set_position(("axes", 1.15))
        ax3.plot(*zip(*evals), color="tab:green", marker="o", label="test top-1 (%)")
        ax3.set_ylabel("top-1 (%)")
    ax.set_title(title or Path(metrics_path).parent.name)
    handles = [h for a in fig.axes for h in a.get_lines()]
    ax.legend(handles, [h.get_label() for h in handles], loc="upper right", fontsize="small")
    return _save(fig, out_png)


def confusion_plot(
    confusion: Sequence[Sequence[int]],
    classes: Sequence[str],
    out_png: PathLike,
    title: str = "confusion matrix",
) -> Path:
    """Row-normalised confusion matrix (rows: true class, columns: prediction) with counts.

    Returns:
        ``out_png``.
    """
    matrix = np.asarray(confusion, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] != len(classes):
        raise ValueError(
            f"confusion must be square with {len(classes)} classes, got shape {matrix.shape}"
        )
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    n = len(classes)
    side = min(12.0, 2.0 + 0.45 * n)
    fig = _new_figure(side, side)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if n <= 40:  # tick labels and counts stay legible up to about this many classes
        ax.set_xticks(range(n), labels=classes, rotation=90, fontsize="small")
        ax.set_yticks(range(n), labels=classes, fontsize="small")
        if n <= 20:
            for i in range(n):
                for j in range(n):
                    if matrix[i, j]:
                        ax.text(
                            j,
                            i,
                            int(matrix[i, j]),
                            ha="center",
                            va="center",
                            fontsize="x-small",
                            color="white" if normalised[i, j] > 0.5 else "black",
                        )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return _save(fig, out_png)


def _shots_key(shots: Any) -> float:
    return math.inf if shots == FULL else float(shots)


def summarize_runs(runs: Sequence[Mapping[str, Any]], metric: str = "top1") -> List[Dict[str, Any]]:
    """Group runs by (dataset, init, shots) and give mean ± std of ``metric`` over seeds.

    Args:
        runs: dicts with ``dataset``, ``init`` (e.g. ``"upstream"`` / ``"scratch"``), ``shots``
            (int or ``"full"``), ``seed`` and ``metric``.

    Returns:
        One dict per group: ``dataset, init, shots, mean, std, n, seeds``, sorted.
    """
    groups: Dict[tuple, List[Mapping[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[(run["dataset"], run.get("init", ""), run["shots"])].append(run)
    rows = []
    for (dataset, init, shots), members in groups.items():
        stats = mean_std([m[metric] for m in members])
        rows.append(
            dict(
                dataset=dataset,
                init=init,
                shots=shots,
                seeds=[m.get("seed") for m in members],
                **stats,
            )
        )
    rows.sort(key=lambda r: (r["dataset"], r["init"], _shots_key(r["shots"])))
    return rows


def collect_runs(folders: Sequence[PathLike]) -> List[Dict[str, Any]]:
    """Every single-run ``results.json`` under ``folders`` (recursively), for a table across
    datasets, initialisations and shots: ``results_table(summarize_runs(collect_runs([...])))``.

    Sweep summaries (``results.json`` with a ``runs`` list) are skipped: their runs are
    found in their own sub-folders.
    """
    runs = []
    for folder in folders:
        for path in sorted(Path(folder).rglob("results.json")):
            try:
                record = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise DataError(f"{path}: unreadable results file ({e})") from e
            if "runs" not in record and record.get("top1") is not None:
                runs.append(dict(record, path=str(path)))
    return runs


def _shots_label(shots: Any) -> str:
    return "full" if shots == FULL else f"{shots}-shot"


def results_table(rows: Sequence[Mapping[str, Any]], metric_name: str = "top-1 (%)") -> str:
    """Markdown table: one line per (dataset, init), one column per shots setting.

    Args:
        rows: the output of :func:`summarize_runs`.

    Returns:
        The table; a cell reads ``mean ± std (n)`` (just ``mean`` for a single seed).
    """
    if not rows:
        raise DataError("no results to tabulate")
    shots = sorted({r["shots"] for r in rows}, key=_shots_key)
    cells: Dict[tuple, Dict[Any, str]] = defaultdict(dict)
    for r in rows:
        text = (
            f"{r['mean']:.1f}" if r["n"] == 1 else f"{r['mean']:.1f} ± {r['std']:.1f} (n={r['n']})"
        )
        cells[(r["dataset"], r["init"])][r["shots"]] = text
    header = ["dataset", "init"] + [_shots_label(s) for s in shots]
    lines = [
        f"{metric_name} by training examples per class",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for (dataset, init), by_shots in sorted(cells.items()):
        lines.append(
            "| " + " | ".join([dataset, init] + [by_shots.get(s, "–") for s in shots]) + " |"
        )
    return "\n".join(lines) + "\n"


def accuracy_vs_shots_plot(
    rows: Sequence[Mapping[str, Any]], out_png: PathLike, title: str = "accuracy vs shots"
) -> Path:
    """Top-1 (mean ± std over seeds) against examples per class, one line per (dataset, init).

    The full training set is drawn at the right end, past the largest k.

    Returns:
        ``out_png``.
    """
    if not rows:
        raise DataError("no results to plot")
    numeric = sorted({r["shots"] for r in rows if r["shots"] != FULL})
    full_x = max(numeric) * 3 if numeric else 1
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    series: Dict[tuple, List[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        series[(r["dataset"], r["init"])].append(r)
    for (dataset, init), members in sorted(series.items()):
        members = sorted(members, key=lambda r: _shots_key(r["shots"]))
        xs = [full_x if r["shots"] == FULL else r["shots"] for r in members]
        label = f"{dataset} ({init})" if init else dataset
        ax.errorbar(
            xs,
            [r["mean"] for r in members],
            yerr=[r["std"] for r in members],
            marker="o",
            capsize=3,
            label=label,
        )
    ticks = numeric + ([full_x] if any(r["shots"] == FULL for r in rows) else [])
    ax.set_xscale("log")
    ax.set_xticks(
        ticks, labels=[str(t) for t in numeric] + (["full"] if len(ticks) > len(numeric) else [])
    )
    ax.minorticks_off()
    ax.set_xlabel("training examples per class")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, out_png)
