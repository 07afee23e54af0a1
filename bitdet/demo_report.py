"""The demo's report: read what each stage wrote, draw the plots, write ``report.md``.

Every figure in the report is read from a result file of the run (listed under *Sources*),
never typed in, so the report cannot disagree with the run it describes.
"""
from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence

from bitdet.transfer.report import read_metrics, training_curve_plot
from bitdet.utils.io import PathLike, atomic_write, write_json

__all__ = ["detection_results", "loss_curves_plot", "write_report"]

_AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _read_json(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"the demo expected {path}; did its stage finish? (see the logs folder)")
    return json.loads(path.read_text())


def detection_results(output_dir: PathLike) -> Dict[str, Any]:
    """COCO box AP and training facts from a ``tools/train_net.py`` output folder.

    Reads Detectron2's ``metrics.json``: the last record holding ``bbox/AP`` (evaluation at
    the end of training), and the last iteration's ``total_loss``.
    """
    metrics = read_metrics(Path(output_dir) / "metrics.json")
    evals = [m for m in metrics if "bbox/AP" in m]
    if not evals:
        raise ValueError(f"{output_dir}/metrics.json has no bbox/AP record: set TEST.EVAL_PERIOD to MAX_ITER")
    train = [m for m in metrics if "total_loss" in m]
    result = {k: evals[-1][f"bbox/{k}"] for k in _AP_KEYS if f"bbox/{k}" in evals[-1]}
    result["iterations"] = (train[-1]["iteration"] + 1) if train else 0
    result["final_loss"] = train[-1]["total_loss"] if train else float("nan")
    return result


def loss_curves_plot(curves: Mapping[str, PathLike], out_png: PathLike, key: str = "total_loss",
                     title: str = "") -> Path:
    """One loss-vs-iteration line per labelled ``metrics.json`` (Detectron2 or bitdet engine)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, path in curves.items():
        points = [(m["iteration"], m[key]) for m in read_metrics(path) if key in m and "iteration" in m]
        if points:
            ax.plot(*zip(*points), label=label)
    ax.set_xlabel("iteration")
    ax.set_ylabel(key)
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def _fmt(value: Any, digits: int = 1) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else str(value)


def write_report(root: PathLike, timings: Mapping[str, float], settings: Mapping[str, Any],
                 detection_images: Sequence[PathLike] = ()) -> Path:
    """Write ``root/report.md`` from the stage outputs under ``root``.

    Args:
        root: the demo folder (``pretrain/``, ``transfer/``, ``detection/{pretrained,scratch}/``).
        timings: wall seconds per stage.
        settings: what was run (model, sizes, smoke or full), printed in the header.
        detection_images: PNGs of drawn detections to show.

    Returns:
        The report's path.
    """
    root = Path(root)
    sources: List[str] = []

    def source(path: Path) -> Path:
        sources.append(str(path.relative_to(root)))
        return path

    pre = _read_json(source(root / "pretrain" / "final.json"))
    transfer_md = source(root / "transfer" / "results.md").read_text()
    transfer = _read_json(source(root / "transfer" / "results.json"))
    det = {init: detection_results(root / "detection" / init) for init in ("pretrained", "scratch")}
    for init in det:
        source(root / "detection" / init / "metrics.json")

    plots = root / "plots"
    training_curve_plot(root / "pretrain" / "metrics.json", plots / "pretrain_curve.png",
                        title="upstream pretraining on Fashion-MNIST")
    loss_curves_plot({init: root / "detection" / init / "metrics.json" for init in det},
                     plots / "detection_loss.png", title="RetinaNet training loss")

    lines = [
        "# bitdet demo: pretrain -> classify -> detect",
        "",
        f"Machine: {platform.machine()} CPU, {settings.get('cpus', '?')} cores, torch {settings.get('torch', '?')}; "
        f"mode: {settings.get('mode', '?')}; total wall time {sum(timings.values()) / 60:.1f} min.",
        f"Model: {settings.get('model', '?')} (a small BiT-style ResNet-v2 with GN+WS, not a paper model).",
        "",
        "| stage | wall time (s) |",
        "|---|---|",
        *[f"| {stage} | {seconds:.0f} |" for stage, seconds in timings.items()],
        "",
        "## 1. Upstream pretraining on Fashion-MNIST",
        "",
        "| held-out top-1 (%) | top-5 (%) | steps | img/s |",
        "|---|---|---|---|",
        f"| {_fmt(pre.get('top1'))} | {_fmt(pre.get('top5'))} | {pre.get('steps', pre.get('step', '?'))} "
        f"| {_fmt(pre.get('img_per_s'))} |",
        "",
        "![pretraining curve](plots/pretrain_curve.png)",
        "",
        "## 2. BiT-HyperRule transfer to scikit-learn digits: upstream vs from scratch",
        "",
        transfer_md.strip(),
        "",
        "![accuracy vs shots](transfer/accuracy_vs_shots.png)",
        "",
        "## 3. RetinaNet on the generated detection dataset (COCO box AP, val split)",
        "",
        "| backbone init | " + " | ".join(k for k in _AP_KEYS) + " | iterations | final loss |",
        "|---|" + "---|" * (len(_AP_KEYS) + 2),
        *[
            f"| {init} | " + " | ".join(_fmt(r.get(k)) for k in _AP_KEYS)
            + f" | {r['iterations']} | {_fmt(r['final_loss'], 3)} |"
            for init, r in det.items()
        ],
        "",
        "![detection loss](plots/detection_loss.png)",
        "",
        *[f"![detections]({Path(p).relative_to(root)})" for p in detection_images],
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
    summary = {"pretrain": pre, "transfer": transfer.get("summary", []), "detection": det,
               "timings": dict(timings), "settings": dict(settings)}
    write_json(root / "summary.json", summary)
    return report
