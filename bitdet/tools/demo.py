#!/usr/bin/env python
"""The BiT story on real data, on a CPU: pretrain -> classify -> detect, then a report.

1. upstream pretraining of a small BiT model on Fashion-MNIST, half the items in their plain
   look, half drawn like the detection set's objects (several scales, some tinted on photo
   crops; ``tools/pretrain.py``);
2. BiT-HyperRule transfer to scikit-learn's digits drawn like those object-like items (new
   classes, a look the upstream model has seen) at 1/5/10 shots and full data, from that
   checkpoint and from scratch, three seeds each (``tools/finetune.py``);
3. RetinaNet with the pretrained BiT backbone on the generated detection dataset (Fashion-MNIST
   items on scikit-image photos) against the same detector from scratch, three seeds each, COCO
   AP (``tools/train_net.py``); detections of the better detector drawn on validation images
   (``tools/visualize.py``);
4. ``OUTPUT/report.md``: mean ± std per initialisation, a 95 % t-interval of each gain and a
   verdict computed from it, plots; every figure is read from the run's files.

``--study`` tests the paper's second claim, that more upstream data transfers better (BiT-M
over BiT-S): a second upstream model trained on a tenth of the Fashion-MNIST items for as many
steps (the same compute), then transferred and detected like the first; the report sets the
gains of the two side by side. It adds one pretraining, one transfer sweep and one detection
run per seed.

Examples::

    python -m bitdet.tools.demo                       # make demo: 2 CPU cores, see docs/demo.md
    python -m bitdet.tools.demo --seed 1 --output output/demo_seed1   # another seed
    python -m bitdet.tools.demo --smoke               # every stage at toy size (the CI test)
    python -m bitdet.tools.demo --study               # also: 10 % vs 100 % of the upstream data
    python -m bitdet.tools.demo --force               # rerun stages whose outputs exist

Each stage is one of the documented tools with a config from ``configs/``; the same configs
scale up by override (see docs/demo.md). Finished stages are reused unless ``--force``. Up to
``--jobs`` stages run side by side (default: 2, or 1 on a 1-core machine; the scratch runs
start beside the pretraining), each with its share of the cores as threads. The expected
duration is printed first (``bitdet.demo.estimate``: step counts x per-step CPU cost); a live
line shows each running stage's iteration, ETA and metric, and the full output goes to
``OUTPUT/logs/<stage>.log``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from bitdet.demo import INITS
from bitdet.demo.estimate import estimate
from bitdet.demo.progress import Progress, StageFailed, Task, run_tasks
from bitdet.utils.io import write_json

# The demo model: a small BiT-style ResNet-v2 (GN + WS, pre-activation), not a paper model.
DEMO_MODEL = "R14-tiny"
# The default base seed: pretraining uses it, transfer and detection seeds S, S+1, S+2.
DEFAULT_SEED = 0
# --study: the upstream model trained on this share of the items (same steps), and its name.
STUDY_FRACTION = 0.1
STUDY_INIT = "upstream10"

# Per mode: configs and run counts. Smoke mode runs the instant-test configs.
MODES = {
    "full": {
        "pretrain": ("pretrain/demo_fashion_mnist.yaml", []),
        "transfer": ("finetune/demo_digits_on_photos.yaml", [], "1,5,10,full", 3),
        # Three runs per side: a t-interval from two has about one degree of freedom.
        "detection": ("demo/retinanet_bit_tiny_demo.yaml", [], 3),
    },
    "smoke": {
        "pretrain": (
            "quick_schedules/pretrain_fashion_mnist_instant_test.yaml",
            ["DATASETS.TRAIN.NAME", "fashion_mnist_photos"],
        ),
        "transfer": (
            "quick_schedules/finetune_instant_test.yaml",
            ["DATASETS.TRAIN.NAME", "digits_on_photos"],
            "1,full",
            2,
        ),
        "detection": ("quick_schedules/retinanet_bit_instant_test.yaml", [], 2),
    },
}


def _tool(name: str) -> List[str]:
    return [sys.executable, "-m", f"bitdet.tools.{name}"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="output/demo", help="demo folder (default output/demo)")
    parser.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help=f"base seed of every stage (default {DEFAULT_SEED}); other seeds check that the "
        "gains hold",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="toy sizes: checks every stage in a few minutes"
    )
    parser.add_argument("--force", action="store_true", help="rerun stages whose outputs exist")
    parser.add_argument(
        "--study",
        action="store_true",
        help=f"also pretrain on {STUDY_FRACTION * 100:.0f}%% of the upstream items (same steps) "
        "and compare what the two upstream models transfer",
    )
    parser.add_argument(
        "--detection-seeds",
        type=int,
        default=0,
        help="detection runs per initialisation (default 3; 2 saves a run per side but "
        "leaves a t-interval with about 1 degree of freedom)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=0,
        help="stages run side by side (default: min(2, cores)); each gets cores / jobs threads",
    )
    return parser.parse_args(argv)


def inits_of(study: bool) -> Tuple[str, ...]:
    """The initialisations compared downstream: upstream and scratch, plus the study's."""
    return INITS + ((STUDY_INIT,) if study else ())


def build_tasks(
    out: Path, mode: str, seed: int, detection_seeds: int = 0, study: bool = False
) -> List[Task]:
    """Every stage of the demo, in order, with its command, finished-marker and progress model
    (``detection_seeds``: runs per initialisation, 0 = the mode's default; ``study``: add the
    upstream model trained on ``STUDY_FRACTION`` of the items and its downstream runs)."""
    from bitdet.detection.config import get_bit_cfg
    from bitdet.pretrain import get_pretrain_cfg
    from bitdet.pretrain.runner import build_schedule
    from bitdet.transfer.config import get_finetune_cfg

    spec = MODES[mode]
    tasks: List[Task] = []

    config, extra = spec["pretrain"]
    common = [*extra, "MODEL.BIT.VARIANT", DEMO_MODEL, "SEED", str(seed)]
    pre_opts = [*common, "OUTPUT_DIR", str(out / "upstream")]
    pre_cfg = get_pretrain_cfg(config, pre_opts)
    # Fashion-MNIST's training split has 60,000 items (or MAX_SAMPLES of them).
    items = pre_cfg.DATASETS.TRAIN.MAX_SAMPLES or 60000
    schedule = build_schedule(pre_cfg, items)
    # Per initialisation, what finetune's --weights and Detectron2's MODEL.WEIGHTS are given
    # ("" = no weights, in every tool).
    weights = {"upstream": str(out / "upstream" / "model_final.pth"), "scratch": ""}
    tasks.append(
        Task(
            "pretrain",
            [*_tool("pretrain"), "--config-file", config, *pre_opts],
            Path(weights["upstream"]),
            Progress(schedule.total_steps),
        )
    )
    if study:  # the same schedule in steps, on a fixed random subset of the items
        opts = [
            *common,
            "OUTPUT_DIR",
            str(out / STUDY_INIT),
            "DATASETS.TRAIN.MAX_SAMPLES",
            str(round(items * STUDY_FRACTION)),
            "SOLVER.MAX_ITER",
            str(schedule.total_steps),
            "SOLVER.DECAY_STEPS",
            str(list(schedule.boundaries)),
        ]
        weights[STUDY_INIT] = str(out / STUDY_INIT / "model_final.pth")
        tasks.append(
            Task(
                f"pretrain_{STUDY_INIT}",
                [*_tool("pretrain"), "--config-file", config, *opts],
                Path(weights[STUDY_INIT]),
                Progress(schedule.total_steps),
            )
        )
    # Scratch runs need no upstream model: they start beside the pretraining.
    needs = {"upstream": ("pretrain",), "scratch": (), STUDY_INIT: (f"pretrain_{STUDY_INIT}",)}

    # Longest first: the detection runs, then the short transfer sweeps fill the gaps.
    config, extra, n_seeds = spec["detection"]
    n_seeds = detection_seeds or n_seeds
    max_iter = get_bit_cfg(config).SOLVER.MAX_ITER
    # A stage that did not finish starts over (no --resume): periodic checkpoints would never be
    # read, so a period beyond the run leaves model_final.pth alone; one evaluation, at the end.
    once = ["SOLVER.CHECKPOINT_PERIOD", str(max_iter + 1), "TEST.EVAL_PERIOD", str(max_iter)]
    for k in range(n_seeds):
        for init in inits_of(study):
            folder = out / "detection" / f"{init}_seed{seed + k}"
            tasks.append(
                Task(
                    f"detection_{init}_seed{seed + k}",
                    [
                        *_tool("train_net"),
                        "--config",
                        config,
                        *extra,
                        "MODEL.BIT.VARIANT",
                        DEMO_MODEL,
                        "MODEL.WEIGHTS",
                        weights[init],
                        *once,
                        "SEED",
                        str(seed + k),
                        "OUTPUT_DIR",
                        str(folder),
                    ],
                    folder / "model_final.pth",
                    Progress(max_iter),
                    needs=needs[init],
                )
            )

    config, extra, shots, n_seeds = spec["transfer"]
    seeds = ",".join(str(seed + k) for k in range(n_seeds))
    steps = get_finetune_cfg(config).HYPERRULE.STEPS
    for init in inits_of(study):
        folder = out / "transfer" / init
        tasks.append(
            Task(
                f"transfer_{init}",
                [
                    *_tool("finetune"),
                    "--config-file",
                    config,
                    "--weights",
                    weights[init],
                    "--shots",
                    shots,
                    "--seeds",
                    seeds,
                    *extra,
                    "MODEL.BIT.VARIANT",
                    DEMO_MODEL,
                    # runs start over too (no --resume): the final step's checkpoint only
                    "SOLVER.CHECKPOINT_PERIOD",
                    "0",
                    "OUTPUT_DIR",
                    str(folder),
                ],
                folder / "results.json",
                Progress(steps, runs=len(shots.split(",")) * n_seeds),
                needs=needs[init],
            )
        )
    return tasks


def drawing_placeholders(out: Path, tasks: Sequence[Task]) -> List[Task]:
    """The drawing stages as the estimate sees them: their inputs are chosen from the detection
    results (:func:`draw_tasks`), so here they are commands-less stages after ``tasks``."""
    return [
        Task(name, (), out / folder, Progress(0), needs=tuple(t.name for t in tasks))
        for name, folder in (("visualize", "detections"), ("ground_truth", "ground_truth"))
    ]


def draw_tasks(
    out: Path, mode: str, env: Dict[str, str], detection_dirs: Dict[str, Sequence[Path]]
) -> List[Task]:
    """Draw validation detections of the better initialisation's best run (by mean AP, then AP),
    at the lowest score threshold whose boxes are mostly right, and the same images' ground
    truth."""
    from detectron2.data import MetadataCatalog

    from bitdet.demo.report import detection_results, draw_threshold
    from bitdet.detection.config import get_bit_cfg

    config = MODES[mode]["detection"][0]
    dataset = get_bit_cfg(config).DATASETS.TEST[0]
    results = {
        init: [(detection_results(d)["AP"], d) for d in dirs]
        for init, dirs in detection_dirs.items()
    }
    best_init = max(results, key=lambda i: sum(ap for ap, _ in results[i]) / len(results[i]))
    best_dir = max(results[best_init], key=lambda r: r[0])[1]
    records = _validation_records(dataset, env)
    chosen = draw_threshold(
        best_dir / "inference" / dataset / "coco_instances_results.json",
        MetadataCatalog.get(dataset).json_file,
    )
    images = [Path(r["file_name"]) for r in records if r["image_id"] in chosen["image_ids"]]
    write_json(out / "detections_source.json", dict(chosen, init=best_init, run=best_dir.name))
    return [
        Task(
            "visualize",
            [
                *_tool("visualize"),
                "--config",
                config,
                "--input",
                *map(str, images),
                "--output",
                str(out / "detections"),
                "--confidence-threshold",
                str(chosen["threshold"]),
                "MODEL.BIT.VARIANT",
                DEMO_MODEL,
                "MODEL.WEIGHTS",
                str(best_dir / "model_final.pth"),
            ],
            out / "detections",
            Progress(0),
        ),
        Task(
            "ground_truth",
            [
                *_tool("visualize"),
                "--config",
                config,
                "--dataset",
                dataset,
                "--image-ids",
                *map(str, chosen["image_ids"]),
                "--output",
                str(out / "ground_truth"),
            ],
            out / "ground_truth",
            Progress(0),
        ),
    ]


def main(argv=None) -> int:
    start = time.monotonic()
    args = parse_args(argv)
    mode = "smoke" if args.smoke else "full"
    out = Path(args.output).resolve()
    if args.force and out.exists():
        shutil.rmtree(out)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    # Detectron2's default root
    env.setdefault("DETECTRON2_DATASETS", str(Path("datasets").resolve()))
    jobs = args.jobs or min(2, os.cpu_count() or 1)
    timings_file = out / "timings.json"
    timings: Dict[str, Dict[str, float]] = (
        json.loads(timings_file.read_text()) if timings_file.is_file() else {}
    )

    def record(ran: Sequence[Task]) -> None:
        for task in ran:
            timings[task.name] = {"wall_s": task.wall_s, "cpu_s": task.cpu_s}
        write_json(timings_file, timings)

    try:
        if args.detection_seeds < 0:
            raise SystemExit(f"--detection-seeds {args.detection_seeds}: expected a positive count")
        tasks = build_tasks(out, mode, args.seed, args.detection_seeds, args.study)
        planned = tasks + drawing_placeholders(out, tasks)
        print(f"[demo] {estimate(planned, jobs, os.cpu_count() or 1).describe()}", flush=True)
        record(run_tasks(tasks, logs, env, jobs))
        dirs = {
            init: [t.done.parent for t in tasks if t.name.startswith(f"detection_{init}_seed")]
            for init in INITS
        }
        record(run_tasks(draw_tasks(out, mode, env, dirs), logs, env, jobs))
    except StageFailed as e:
        raise SystemExit(str(e)) from None

    import torch

    from bitdet.demo.report import write_report
    from bitdet.utils.machine import cpu_name

    settings = {
        "mode": mode,
        "model": DEMO_MODEL,
        "seed": args.seed,
        "cpu": cpu_name(),
        "cpus": os.cpu_count(),
        "jobs": jobs,
        "torch": torch.__version__,
        "wall_s": time.monotonic() - start,
        "study": {"init": STUDY_INIT, "fraction": STUDY_FRACTION} if args.study else None,
    }
    report, verdicts = write_report(out, timings, settings)
    print(
        f"[demo] wall time {settings['wall_s'] / 60:.1f} min; CPU time of the stages "
        f"{sum(t['cpu_s'] for t in timings.values()) / 60:.1f} min"
    )
    for line in verdicts:
        print(f"[demo] {line}")
    print(f"[demo] report: {report}", flush=True)
    return 0


def _validation_records(dataset: str, env: Dict[str, str]) -> List[Dict]:
    """The records of a registered COCO-format dataset (demo sets: generated)."""
    os.environ["DETECTRON2_DATASETS"] = env["DETECTRON2_DATASETS"]
    from detectron2.data import DatasetCatalog

    from bitdet.detection.datasets import register_demo_datasets

    register_demo_datasets()
    return DatasetCatalog.get(dataset)


def cli(argv=None):
    """Console-script entry point."""
    sys.exit(main(argv))


if __name__ == "__main__":
    cli()
