#!/usr/bin/env python
"""VTAB-1k with the BiT-HyperRule: fine-tune on each task's train800val200 split (1,000
examples: 500 steps), evaluate on its test split; report every task and the mean.

Data: per task a CSV ``ROOT/<task>.csv`` (image,label,split) or folders
``ROOT/<task>/<split>/<label>/`` (see :mod:`bitdet.transfer.vtab`).

Examples::

    python tools/vtab.py --config-file finetune/vtab.yaml --data-root ~/vtab \\
        --weights BiT-M-R50x1
    # a subset of tasks, model selection on train800 -> val200, 8 GPUs
    python tools/vtab.py --config-file finetune/vtab.yaml --data-root ~/vtab --tasks dtd,svhn \\
        --num-gpus 8 DATASETS.TRAIN.SPLIT train800 DATASETS.TEST.SPLIT val200

Writes ``OUTPUT_DIR/<task>/results.json`` per task, ``OUTPUT_DIR/vtab_results.json`` and
``OUTPUT_DIR/vtab_results.md``. Finished tasks are reported, not repeated; an interrupted one
continues from its last checkpoint; a task folder of other settings is refused, naming them;
``--force`` starts every task over.
"""

from pathlib import Path

from detectron2.utils import comm

from bitdet.tools.cli import argument_parser, run_launched
from bitdet.tools.finetune import RESUME_HELP, setup  # fine-tuning's config, flags, logging

# KEY VALUE overrides shown in --help (keys of the fine-tuning config).
OVERRIDES_EXAMPLE = "SOLVER.IMS_PER_BATCH 256 MODEL.DEVICE cpu"


def parse_args(argv=None):
    parser = argument_parser(
        __doc__,
        overrides_example=OVERRIDES_EXAMPLE,
        eval_only=False,
        resume_help=RESUME_HELP,
        force_help="start every task over (delete its checkpoints and results)",
    )
    parser.add_argument("--data-root", help="VTAB root (DATASETS.TRAIN.ROOT)")
    parser.add_argument(
        "--weights",
        help="upstream weights (MODEL.WEIGHTS): an official name such as BiT-M-R50x1, .npz, "
        ".pth, or '' for none",
    )
    parser.add_argument("--model", help="architecture, e.g. R50x1 (MODEL.BIT.VARIANT)")
    parser.add_argument("--tasks", help="comma list of tasks (default: all 19)")
    args = parser.parse_args(argv)
    # setup() of tools/finetune.py reads these flags too.
    args.dataset = args.shots = args.seeds = None
    args.download = False
    return args


def main(args):
    from bitdet.engine.run_folder import check_runs, record_config
    from bitdet.transfer.fewshot import FULL
    from bitdet.transfer.finetune import RESULTS_FILE, finetune, run_config
    from bitdet.transfer.vtab import VTAB_TASKS, check_tasks, run_vtab
    from bitdet.utils.io import atomic_write, write_json

    cfg = setup(args)
    out = Path(cfg.OUTPUT_DIR)
    tasks = [t.strip() for t in args.tasks.split(",")] if args.tasks else list(VTAB_TASKS)
    # every missing folder in one message, before any training
    check_tasks(cfg.DATASETS.TRAIN.ROOT, tasks)

    def task_config(task):
        task_cfg = cfg.clone()
        task_cfg.defrost()
        task_cfg.DATASETS.TRAIN.NAME = f"vtab/{task}"
        return task_cfg

    check_runs(
        [(out / t, run_config(task_config(t), FULL, cfg.SEED, str(out / t))) for t in tasks],
        RESULTS_FILE,
        force=args.force,
    )

    def run_task(task):
        return finetune(task_config(task), output_dir=str(out / task), force=args.force)

    summary = run_vtab(run_task, tasks)
    if comm.is_main_process():
        record_config(out, cfg)  # every task folder records its own
        compact = {
            t: ({"top1": r["top1"], "top5": r["top5"]} if "top1" in r else r)
            for t, r in summary["tasks"].items()
        }
        write_json(out / "vtab_results.json", dict(summary, tasks=compact))
        lines = ["| task | group | top-1 (%) |", "|---|---|---|"]
        for task, r in compact.items():
            lines.append(
                f"| {task} | {VTAB_TASKS[task].group} | {r['top1']:.1f} |"
                if "top1" in r
                else f"| {task} | {VTAB_TASKS[task].group} | failed: {r['error']} |"
            )
        lines += [
            f"| **mean** ({len([r for r in compact.values() if 'top1' in r])} tasks) | | "
            f"**{summary['mean']:.1f}** |"
        ]
        with atomic_write(out / "vtab_results.md", "w") as f:
            f.write("\n".join(lines) + "\n")
        print("\n".join(lines), flush=True)
    return summary


def cli(argv=None):
    """Console-script entry point."""
    run_launched("vtab", main, parse_args(argv))


if __name__ == "__main__":
    cli()
