"""The demo's report: read what each stage wrote, compare the initialisations, write ``report.md``.

Every figure in the report is read from a result file of the run (listed under *Sources*),
never typed in, so the report cannot disagree with the run it describes. Each comparison
(upstream-pretrained vs from scratch) gives mean ± std over seeds, the gain with a 95 %
t-interval, and a verdict computed from that interval (:mod:`bitdet.demo.stats`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np

from bitdet.demo import INITS
from bitdet.demo.stats import Comparison, compare
from bitdet.transfer.datasets import get_spec
from bitdet.transfer.fewshot import FULL, mean_std
from bitdet.transfer.report import (
    accuracy_vs_shots_plot,
    collect_runs,
    read_metrics,
    summarize_runs,
    training_curve_plot,
)
from bitdet.utils.io import PathLike, atomic_write, write_json

__all__ = [
    "DRAW_THRESHOLDS",
    "box_precision",
    "detection_comparison",
    "detection_results",
    "draw_threshold",
    "loss_curves_plot",
    "transfer_comparisons",
    "write_report",
]

_AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# Score thresholds tried for the drawn detections: the lowest whose boxes are >= 75 % right
# (a short CPU schedule leaves RetinaNet's focal-loss scores low, mostly below 0.6).
DRAW_THRESHOLDS = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7)
_DRAW_PRECISION = 0.75


def _read_json(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(
            f"the demo expected {path}; did its stage finish? (see the logs folder)"
        )
    return json.loads(path.read_text())


def detection_results(output_dir: PathLike) -> Dict[str, Any]:
    """COCO box AP and training facts from a ``tools/train_net.py`` output folder.

    Reads Detectron2's ``metrics.json``: the last record holding ``bbox/AP`` (evaluation at
    the end of training), and the last iteration's ``total_loss``.
    """
    metrics = read_metrics(Path(output_dir) / "metrics.json")
    evals = [m for m in metrics if "bbox/AP" in m]
    if not evals:
        raise ValueError(
            f"{output_dir}/metrics.json has no bbox/AP record: set TEST.EVAL_PERIOD to MAX_ITER"
        )
    train = [m for m in metrics if "total_loss" in m]
    result = {k: evals[-1][f"bbox/{k}"] for k in _AP_KEYS if f"bbox/{k}" in evals[-1]}
    result["iterations"] = (train[-1]["iteration"] + 1) if train else 0
    result["final_loss"] = train[-1]["total_loss"] if train else float("nan")
    return result


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one ``[x, y, w, h]`` box with each row of ``boxes``."""
    x0, y0 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[0] + box[2], boxes[:, 0] + boxes[:, 2])
    y1 = np.minimum(box[1] + box[3], boxes[:, 1] + boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    return inter / (box[2] * box[3] + boxes[:, 2] * boxes[:, 3] - inter)


def box_precision(
    predictions: Sequence[Mapping[str, Any]],
    ground_truth: Mapping[str, Any],
    threshold: float,
    iou: float = 0.5,
) -> Dict[str, float]:
    """How right the boxes drawn at a score threshold are, over a whole COCO-format split.

    A prediction (COCO results format) with ``score >= threshold`` is right when it matches a
    not yet matched ground-truth box of the same category with IoU >= ``iou`` (greedy by score).

    Returns:
        ``{"threshold", "drawn", "right", "precision", "recall"}`` (precision is 0 when nothing
        is drawn).
    """
    by_image: Dict[Tuple[int, int], List[List[float]]] = {}
    for a in ground_truth["annotations"]:
        by_image.setdefault((a["image_id"], a["category_id"]), []).append(a["bbox"])
    used = {k: np.zeros(len(v), bool) for k, v in by_image.items()}
    gts = {k: np.asarray(v, float) for k, v in by_image.items()}
    drawn = sorted((p for p in predictions if p["score"] >= threshold), key=lambda p: -p["score"])
    right = 0
    for p in drawn:
        key = (p["image_id"], p["category_id"])
        if key not in gts:
            continue
        overlaps = np.where(used[key], -1.0, _iou(np.asarray(p["bbox"], float), gts[key]))
        best = int(np.argmax(overlaps))
        if overlaps[best] >= iou:
            used[key][best] = True
            right += 1
    total = len(ground_truth["annotations"])
    return {
        "threshold": threshold,
        "drawn": len(drawn),
        "right": right,
        "precision": right / len(drawn) if drawn else 0.0,
        "recall": right / total if total else 0.0,
    }


def draw_threshold(
    predictions_file: PathLike, gt_file: PathLike, images: int = 4
) -> Dict[str, Any]:
    """The lowest of :data:`DRAW_THRESHOLDS` at which >= 75 % of drawn boxes are right (else the
    highest), with its :func:`box_precision` figures on the evaluated split and ``image_ids``: the
    first ``images`` images of the split (in its order) with at least one box at that threshold
    (the first ``images`` of all when none has one)."""
    predictions = _read_json_list(Path(predictions_file))
    ground_truth = _read_json(Path(gt_file))
    stats = [box_precision(predictions, ground_truth, t) for t in DRAW_THRESHOLDS]
    good = [s for s in stats if s["drawn"] and s["precision"] >= _DRAW_PRECISION]
    chosen: Dict[str, Any] = dict(good[0] if good else stats[-1])
    with_boxes = {p["image_id"] for p in predictions if p["score"] >= chosen["threshold"]}
    ids = [im["id"] for im in ground_truth["images"]]
    # With no box at any threshold, the first images show that nothing is found.
    chosen["image_ids"] = [i for i in ids if i in with_boxes][:images] or ids[:images]
    return chosen


def _read_json_list(path: Path) -> List[Dict[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(
            f"the demo expected {path} (COCOEvaluator's predictions); did detection finish?"
        )
    return json.loads(path.read_text())


def loss_curves_plot(
    curves: Mapping[str, PathLike], out_png: PathLike, key: str = "total_loss", title: str = ""
) -> Path:
    """One loss-vs-iteration line per labelled ``metrics.json`` (Detectron2 or bitdet engine);
    labels starting with the same word share a colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    colours: Dict[str, str] = {}
    for label, path in curves.items():
        points = [
            (m["iteration"], m[key]) for m in read_metrics(path) if key in m and "iteration" in m
        ]
        if points:
            group = label.split()[0]
            (line,) = ax.plot(*zip(*points), label=label, color=colours.get(group), alpha=0.85)
            colours.setdefault(group, line.get_color())
    ax.set_xlabel("iteration")
    ax.set_ylabel(key)
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out_png, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return out_png


def transfer_comparisons(
    runs: Sequence[Mapping[str, Any]],
    treated: str,
    control: str = "scratch",
    sides: Tuple[str, str] = ("pretraining", "scratch"),
) -> List[Tuple[Any, Comparison]]:
    """Per shots setting, ``treated`` vs ``control`` top-1, paired by seed (a seed fixes the
    few-shot draw).

    Args:
        runs: single-run results (``init``, ``shots``, ``seed``, ``top1``).
        treated, control: the ``init`` of each side's runs.
        sides: how the verdicts name the two sides.

    Raises:
        ValueError: a shots setting lacks runs of one side or their seeds differ.
    """
    out = []
    shots_all = sorted(
        {r["shots"] for r in runs}, key=lambda s: float("inf") if s == FULL else float(s)
    )
    for shots in shots_all:
        side = {
            init: {r["seed"]: r["top1"] for r in runs if r["shots"] == shots and r["init"] == init}
            for init in (treated, control)
        }
        if not side[treated] or not side[control] or set(side[treated]) != set(side[control]):
            raise ValueError(
                f"{shots}-shot transfer: {treated} seeds {sorted(side[treated])} and {control} "
                f"seeds {sorted(side[control])} do not pair up"
            )
        seeds = sorted(side[control])
        out.append(
            (
                shots,
                compare(
                    [side[treated][s] for s in seeds],
                    [side[control][s] for s in seeds],
                    "points top-1",
                    paired=True,
                    sides=sides,
                ),
            )
        )
    return out


def detection_comparison(
    results: Mapping[str, Sequence[Mapping[str, Any]]],
    treated: str = "upstream",
    control: str = "scratch",
    sides: Tuple[str, str] = ("pretraining", "scratch"),
) -> Comparison:
    """``treated`` vs ``control`` COCO AP over detection seeds, Welch's t-interval (the seed sets
    only the data order and the new layers, so runs are treated as independent)."""
    return compare(
        [r["AP"] for r in results[treated]],
        [r["AP"] for r in results[control]],
        "AP",
        paired=False,
        sides=sides,
    )


def _fmt(value: Any, digits: int = 1) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else str(value)


def _ms(c: Mapping[str, Any]) -> str:
    return f"{c['mean']:.1f} ± {c['std']:.1f}"


def _ci(c: Comparison) -> str:
    return "–" if c.ci is None else f"{c.ci[0]:+.1f} to {c.ci[1]:+.1f}"


def _shots_label(shots: Any) -> str:
    return "full" if shots == FULL else f"{shots}-shot"


def _study_section(
    root: Path,
    study: Mapping[str, Any],
    source,
    transfer_runs: Sequence[Mapping[str, Any]],
    gains: Mapping[Any, Comparison],
    det: Mapping[str, Sequence[Mapping[str, Any]]],
    det_full: Comparison,
) -> Tuple[List[str], List[str], Dict[str, Any]]:
    """``--study``: the upstream model on all items vs the one on ``study["fraction"]`` of them
    (same steps), each against scratch and against each other. Returns (report lines, verdicts,
    summary)."""
    init, share = study["init"], f"{study['fraction'] * 100:.0f} %"
    sides = ("more upstream data", f"{share} of the items")
    small_pre = _read_json(source(root / init / "final.json"))
    full_pre = _read_json(root / "upstream" / "final.json")
    small_gains = dict(transfer_comparisons(transfer_runs, init))
    versus = transfer_comparisons(transfer_runs, "upstream", init, sides=sides)
    det_small = detection_comparison(det, init)
    det_versus = detection_comparison(det, "upstream", init, sides=sides)
    verdicts = [f"study, detection: {det_versus.verdict()}"]
    verdicts += [f"study, digits {_shots_label(s)}: {c.verdict()}" for s, c in versus]
    lines = [
        f"## 4. Does more upstream data transfer better? (`--study`): 100 % vs {share} of the "
        "items",
        "",
        "The paper finds that larger upstream data transfers better (BiT-M, ImageNet-21k, over "
        "BiT-S,",
        "ILSVRC-2012). Here a second",
        f"upstream model is trained on a fixed random {share} of the Fashion-MNIST training items",
        "for the same number of steps (the same compute, each item seen more often), then "
        "transferred",
        "and detected with the same recipes and seeds. Each gain is against scratch; the last "
        "columns",
        "compare the two upstream models directly (paired t for digits, Welch for detection).",
        "",
        "| upstream items | held-out top-1 (%) | steps |",
        "|---|---|---|",
        f"| 100 % | {_fmt(full_pre.get('top1'))} | {full_pre.get('steps', '?')} |",
        f"| {share} | {_fmt(small_pre.get('top1'))} | {small_pre.get('steps', '?')} |",
        "",
        f"| stage | gain, 100 % | gain, {share} | 100 % minus {share} | 95 % CI | verdict |",
        "|---|---|---|---|---|---|",
        *[
            f"| digits {_shots_label(s)} | {gains[s].diff:+.1f} | {small_gains[s].diff:+.1f} | "
            f"{c.diff:+.1f} | {_ci(c)} | {c.verdict()} |"
            for s, c in versus
        ],
        f"| detection AP | {det_full.diff:+.1f} | {det_small.diff:+.1f} | {det_versus.diff:+.1f} | "
        f"{_ci(det_versus)} | {det_versus.verdict()} |",
        "",
    ]
    summary = {
        "init": init,
        "fraction": study["fraction"],
        "pretrain": small_pre,
        "transfer_comparison": [dict(c.to_dict(), shots=s) for s, c in versus],
        "detection_comparison": det_versus.to_dict(),
    }
    return lines, verdicts, summary


def write_report(
    root: PathLike, timings: Mapping[str, Mapping[str, float]], settings: Mapping[str, Any]
) -> Tuple[Path, List[str]]:
    """Write ``root/report.md`` and ``root/summary.json`` from the stage outputs under ``root``.

    Args:
        root: the demo folder (``upstream/``, ``transfer/{upstream,scratch}/``,
            ``detection/<init>_seed<k>/``, ``detections/``, ``ground_truth/``).
        timings: per stage, ``{"wall_s", "cpu_s"}``.
        settings: what was run (model, seed, mode, cores, demo wall time), printed in the header.

    Returns:
        ``(report path, verdict lines)``.
    """
    root = Path(root)
    sources: List[str] = []

    def source(path: Path) -> Path:
        sources.append(str(path.relative_to(root)))
        return path

    study = settings.get("study")
    inits = INITS + ((study["init"],) if study else ())
    pre = _read_json(source(root / "upstream" / "final.json"))
    # transfer/<init>/ holds one initialisation's sweep, whatever its checkpoint was called.
    transfer_runs = [
        dict(run, init=init) for init in inits for run in collect_runs([root / "transfer" / init])
    ]
    if not transfer_runs:
        raise FileNotFoundError(
            f"no fine-tuning results under {root / 'transfer'}; did the transfer stages finish?"
        )
    sources.append(f"transfer/{{{','.join(inits)}}}/*/<shots>_seed<k>/results.json")
    transfer_rows = summarize_runs(transfer_runs)
    dataset = transfer_runs[0]["dataset"]
    transfer = transfer_comparisons(transfer_runs, "upstream")

    det_dirs = {init: sorted((root / "detection").glob(f"{init}_seed*")) for init in inits}
    if not all(det_dirs.values()):
        raise FileNotFoundError(
            f"{root / 'detection'} lacks runs of one of {', '.join(f'{i}_seed*' for i in inits)}"
        )
    det = {
        init: [dict(detection_results(d), run=d.name) for d in dirs]
        for init, dirs in det_dirs.items()
    }
    for dirs in det_dirs.values():
        for d in dirs:
            source(d / "metrics.json")
    det_cmp = detection_comparison(det)
    drawn = _read_json(source(root / "detections_source.json"))

    plots = root / "plots"
    training_curve_plot(
        root / "upstream" / "metrics.json",
        plots / "pretrain_curve.png",
        title="upstream pretraining on Fashion-MNIST",
    )
    accuracy_vs_shots_plot(
        transfer_rows,
        plots / "accuracy_vs_shots.png",
        title="digits: top-1 by training examples per class",
    )
    loss_curves_plot(
        {
            f"{init} {d.name.rsplit('_', 1)[1]}": d / "metrics.json"
            for init, dirs in det_dirs.items()
            for d in dirs
        },
        plots / "detection_loss.png",
        title="RetinaNet training loss",
    )

    ratio = (
        det_cmp.treated["mean"] / det_cmp.control["mean"] if det_cmp.control["mean"] > 0 else None
    )
    ratio_text = "n/a (scratch AP 0)" if ratio is None else f"{ratio:.2f}"
    verdicts = [f"detection: {det_cmp.verdict()}; upstream/scratch AP ratio {ratio_text}"]
    verdicts += [f"digits {_shots_label(s)}: {c.verdict()}" for s, c in transfer]
    study_lines: List[str] = []
    study_summary: Dict[str, Any] = {}
    if study:
        study_lines, study_verdicts, study_summary = _study_section(
            root, study, source, transfer_runs, dict(transfer), det, det_cmp
        )
        verdicts += study_verdicts

    total_wall = settings.get("wall_s", sum(t["wall_s"] for t in timings.values()))
    total_cpu = sum(t["cpu_s"] for t in timings.values())
    pictures = sorted((root / "detections").glob("*.png"))
    lines = [
        "# bitdet demo: pretrain -> classify -> detect",
        "",
        f"Machine: {settings.get('cpu', '?')}, {settings.get('cpus', '?')} cores, "
        f"torch {settings.get('torch', '?')}; "
        f"mode: {settings.get('mode', '?')}; base seed {settings.get('seed', '?')}; "
        f"{settings.get('jobs', '?')} stage(s) at a time.",
        f"Wall time {total_wall / 60:.1f} min; CPU time of all stages {total_cpu / 60:.1f} min "
        "(on a machine shared with other work the wall time is longer than the CPU time / cores).",
        f"Model: {settings.get('model', '?')} (a small BiT-style ResNet-v2 with GN+WS, not a "
        "paper model).",
        "",
        "## Verdicts",
        "",
        "Each gain is upstream-pretrained minus from scratch, with a 95 % t-interval; a verdict "
        "says",
        '"helps" only when the whole interval is above 0 and "hurts" only when it is below.',
        "",
        *[f"- {v}" for v in verdicts],
        "",
        "| stage | wall time (s) | CPU time (s) |",
        "|---|---|---|",
        *[f"| {stage} | {t['wall_s']:.0f} | {t['cpu_s']:.0f} |" for stage, t in timings.items()],
        "",
        "## 1. Upstream pretraining on Fashion-MNIST",
        "",
        "Training items keep the plain look (`INPUT.PLAIN_PROB` of them) or are drawn like the "
        "detection",
        "set's objects (several scales and positions, some tinted on photo crops); the test "
        "split is the",
        "standard Fashion-MNIST test set.",
        "",
        "| held-out top-1 (%) | top-5 (%) | steps | img/s |",
        "|---|---|---|---|",
        f"| {_fmt(pre.get('top1'))} | {_fmt(pre.get('top5'))} | {pre.get('steps', '?')} | "
        f"{_fmt(pre.get('img_per_s'))} |",
        "",
        "![pretraining curve](plots/pretrain_curve.png)",
        "",
        f"## 2. BiT-HyperRule transfer to `{dataset}`: upstream vs from scratch",
        "",
        f"{get_spec(dataset).description or dataset}. Top-1 (%) on its test split, mean ± std "
        "over seeds",
        "(a seed fixes the few-shot draw and the training order; the gain's interval is a paired",
        "t-interval over seeds).",
        "",
        "| shots | upstream | scratch | gain | 95 % CI | gain > larger std | verdict |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {_shots_label(s)} | {_ms(c.treated)} | {_ms(c.control)} | {c.diff:+.1f} | "
            f"{_ci(c)} | {'yes' if c.beyond_spread else 'no'} | {c.verdict()} |"
            for s, c in transfer
        ],
        "",
        "![accuracy vs shots](plots/accuracy_vs_shots.png)",
        "",
        "## 3. RetinaNet on the generated detection dataset (COCO box AP, val split)",
        "",
        f"Mean ± std over {det_cmp.treated['n']} seeds per initialisation; the gain's interval "
        "is Welch's.",
        "",
        "| backbone init | " + " | ".join(_AP_KEYS) + " |",
        "|---|" + "---|" * len(_AP_KEYS),
        *[
            f"| {init} | "
            + " | ".join(
                _ms(mean_std([r.get(k, float("nan")) for r in det[init]])) for k in _AP_KEYS
            )
            + " |"
            for init in inits
        ],
        "",
        f"Gain {det_cmp.diff:+.1f} AP (95 % CI {_ci(det_cmp)}), upstream/scratch ratio "
        f"{ratio_text}: {det_cmp.verdict()}.",
        "",
        "| run | " + " | ".join(_AP_KEYS) + " | iterations | final loss |",
        "|---|" + "---|" * (len(_AP_KEYS) + 2),
        *[
            f"| {r['run']} | "
            + " | ".join(_fmt(r.get(k)) for k in _AP_KEYS)
            + f" | {r['iterations']} | {_fmt(r['final_loss'], 3)} |"
            for init in inits
            for r in det[init]
        ],
        "",
        "![detection loss](plots/detection_loss.png)",
        "",
        *study_lines,
        "### Drawn detections",
        "",
        f"Predictions of the better detector ({drawn['init']}, run `{drawn['run']}`) on the "
        "first validation",
        f"images (never seen in training) {'with a' if drawn['drawn'] else 'and no'} box at "
        f"score >= {drawn['threshold']:.2f}: the lowest threshold at which at least 3 in 4 boxes "
        "are right, if any.",
        "Over the whole validation",
        f"split {drawn['precision'] * 100:.0f} % of the boxes at this threshold are right (same "
        "class,",
        f"IoU >= 0.5; {drawn['right']} of {drawn['drawn']}) and they find "
        f"{drawn['recall'] * 100:.0f} % of the objects.",
        "Each label gives the predicted class and its score in percent; box colours only tell "
        "boxes",
        "apart. The ground truth of the same images is on the right.",
        "",
        "| prediction | ground truth |",
        "|---|---|",
        *[
            f"| ![detections](detections/{p.name}) | ![ground truth](ground_truth/{p.name}) |"
            for p in pictures
        ],
        "",
        "## Sources",
        "",
        "Every figure above is read from these files of this run:",
        "",
        *[f"- `{s}`" for s in sources],
        "",
    ]
    report = root / "report.md"
    with atomic_write(report, "w") as f:
        f.write("\n".join(lines))
    summary = {
        "pretrain": pre,
        "transfer": transfer_rows,
        "transfer_comparison": [dict(c.to_dict(), shots=s) for s, c in transfer],
        "detection": det,
        "detection_comparison": dict(det_cmp.to_dict(), ratio=ratio),
        "drawn": drawn,
        "verdicts": verdicts,
        "study": study_summary,
        "timings": dict(timings),
        "settings": dict(settings),
    }
    write_json(root / "summary.json", summary)
    return report, verdicts
