#!/usr/bin/env python
"""Fine-tune a BiT model on a classification dataset with the BiT-HyperRule.

The rule (resolution, steps, warm-up, decays, MixUp, lr 0.003, batch 512) is chosen from the
training-set size and image size and printed; any ``HYPERRULE.*`` key overrides it. Results
(top-1, top-5, per-class accuracy, confusion, the rule, steps, wall time) go to
``OUTPUT_DIR/results.json`` with PNG plots; a shots sweep adds ``results.md`` and
``accuracy_vs_shots.png`` across all runs.

Examples::

    # BiT-M-R50x1 on CIFAR-10 (official python pickle files in ~/data), paper HyperRule
    python tools/finetune.py --config-file finetune/cifar10.yaml --data-root ~/data \\
        --weights BiT-M-R50x1 OUTPUT_DIR output/finetune/cifar10
    # 8 GPUs; re-running the command continues an interrupted run; the 512 batch is kept by
    # gradient accumulation when memory is short
    python tools/finetune.py --config-file finetune/cifar10.yaml --data-root ~/data \\
        --weights BiT-M-R50x1 --num-gpus 8
    # few-shot: 1/5/10/25 examples per class, three seeds -> mean ± std
    python tools/finetune.py --config-file finetune/cifar100.yaml --data-root ~/data \\
        --weights BiT-M-R50x1 --shots 1,5,10,25 --seeds 0,1,2
    # evaluate a fine-tuned checkpoint (results.json names the final one)
    python tools/finetune.py --config-file finetune/cifar10.yaml --data-root ~/data \\
        --eval-only --weights output/finetune/cifar10/model_0009999.pth

Upstream vs from scratch on sklearn's digits at 1/5/10 shots and full data (CPU, R14-tiny at
32 px, 100 steps of 32 per run); the upstream checkpoint comes from the Fashion-MNIST demo
pretraining. One table in ``output/finetune/digits_transfer/results.md`` (the upstream rows are
labelled ``demo_fashion_mnist``, the checkpoint's folder), plus ``accuracy_vs_shots.png``;
finished runs are reported, not repeated, and an interrupted one continues from its last
checkpoint, so a stopped sweep continues where it stopped; a run folder of other settings is
refused, naming them (``--force`` starts every run over). Every shots count and seed is checked
against the data, and every run folder against its settings, before the first run::

    python tools/pretrain.py --config-file configs/pretrain/demo_fashion_mnist.yaml
    OMP_NUM_THREADS=1 python tools/finetune.py --config-file finetune/demo_digits.yaml \\
        --weights output/pretrain/demo_fashion_mnist/model_final.pth, \\
        --shots 1,5,10,full --seeds 0,1,2 OUTPUT_DIR output/finetune/digits_transfer

(``OMP_NUM_THREADS=1`` only where the 2 CPU cores are shared with other jobs: there, more
threads than free cores make a tiny model slower.)

A table across datasets and initialisations from earlier runs (no training)::

    python tools/finetune.py --config-file finetune/cifar10.yaml --collect output/finetune \\
        OUTPUT_DIR output/finetune

``--weights`` (``MODEL.WEIGHTS``) takes an official BiT name such as ``BiT-M-R50x1`` (downloaded
into the cache) or ``.npz``, a bitdet / Detectron2 ``.pth``, an ``hf-hub:`` id, or ``''`` for no
weights (random initialisation); a comma list compares them, an empty entry being no weights
(``model_final.pth,`` above).
"""

from pathlib import Path

from bitdet.config import check_weights
from bitdet.tools.cli import argument_parser, run_launched, setup_cfg
from bitdet.transfer.config import get_finetune_cfg
from bitdet.transfer.fewshot import parse_shots

# KEY VALUE overrides shown in --help (keys of the fine-tuning config).
OVERRIDES_EXAMPLE = "HYPERRULE.STEPS 500 SOLVER.IMS_PER_BATCH 256 MODEL.DEVICE cpu"


def add_arguments(parser):
    """The fine-tuning flags on top of Detectron2's standard ones."""
    parser.add_argument(
        "--dataset", help="dataset name (DATASETS.TRAIN.NAME), e.g. cifar10, digits, vtab/dtd"
    )
    parser.add_argument(
        "--data-root", help="data folder in the dataset's official layout (DATASETS.TRAIN.ROOT)"
    )
    parser.add_argument(
        "--download",
        action="store_true",
        help="let torchvision download a missing dataset (DATASETS.DOWNLOAD)",
    )
    parser.add_argument(
        "--weights",
        help="upstream weights (MODEL.WEIGHTS): an official name such as BiT-M-R50x1, .npz, "
        ".pth, or '' for none; a comma list compares several",
    )
    parser.add_argument("--model", help="architecture, e.g. R50x1, R14-tiny (MODEL.BIT.VARIANT)")
    parser.add_argument("--shots", help="examples per class, e.g. 1,5,10,full (FEWSHOT.SHOTS)")
    parser.add_argument("--seeds", help="comma list of seeds, e.g. 0,1,2 (FEWSHOT.SEEDS)")
    parser.add_argument(
        "--collect",
        nargs="+",
        metavar="DIR",
        help="no training: tabulate every run's results.json under DIR... into "
        "OUTPUT_DIR/results_all.md",
    )
    return parser


RESUME_HELP = "the default: a run of the same settings continues from its last checkpoint"
FORCE_HELP = (
    "start over: delete the run's checkpoints and results.json (a finished run is otherwise "
    "reported, an interrupted one continued, one of other settings refused)"
)


def parse_args(argv=None):
    return add_arguments(
        argument_parser(
            __doc__,
            overrides_example=OVERRIDES_EXAMPLE,
            resume_help=RESUME_HELP,
            force_help=FORCE_HELP,
        )
    ).parse_args(argv)


def _flag_overrides(args):
    opts = []
    for flag, key in (
        ("dataset", "DATASETS.TRAIN.NAME"),
        ("data_root", "DATASETS.TRAIN.ROOT"),
        ("model", "MODEL.BIT.VARIANT"),
    ):
        value = getattr(args, flag)
        if value is not None:
            opts += [key, value]
    if args.download:
        opts += ["DATASETS.DOWNLOAD", "True"]
    if args.shots is not None:  # validated here so that a typo fails before any training
        opts += ["FEWSHOT.SHOTS", str(parse_shots(args.shots))]
    if args.seeds is not None:
        opts += ["FEWSHOT.SEEDS", str([int(s) for s in args.seeds.split(",") if s.strip()])]
    if args.weights is not None:  # each entry checked here: a typo fails before any training
        weights = [check_weights(w, "--weights") for w in args.weights.split(",")]
        if len(weights) == 1:
            opts += ["MODEL.WEIGHTS", weights[0]]
    return opts


def setup(args):
    """Config from file + flags + trailing KEY VALUE overrides, frozen; logging and OUTPUT_DIR set
    up."""
    # config.yaml: each run records its own (bitdet.engine.run_folder); --collect has none
    return setup_cfg(
        args, get_finetune_cfg, _flag_overrides(args), config_name=None, config_kind="finetune"
    )


def collect(folders, out):
    """Markdown table (and accuracy-vs-shots plot) across every finished run under ``folders``."""
    from bitdet.transfer.report import (
        accuracy_vs_shots_plot,
        collect_runs,
        results_table,
        summarize_runs,
    )
    from bitdet.utils.io import atomic_write

    rows = summarize_runs(collect_runs(folders))
    table = results_table(rows)
    with atomic_write(out / "results_all.md", "w") as f:
        f.write(table)
    accuracy_vs_shots_plot(rows, out / "accuracy_vs_shots_all.png")
    print(table, flush=True)
    return rows


def main(args):
    from bitdet.transfer.finetune import evaluate_only, finetune, finetune_sweep

    cfg = setup(args)
    if args.collect:
        return collect(args.collect, Path(cfg.OUTPUT_DIR))
    if args.eval_only:
        return evaluate_only(cfg)
    weights_list = args.weights.split(",") if args.weights and "," in args.weights else []
    if cfg.FEWSHOT.SHOTS or weights_list or len(cfg.FEWSHOT.SEEDS) > 1:
        shots = parse_shots(cfg.FEWSHOT.SHOTS) if cfg.FEWSHOT.SHOTS else ["full"]
        return finetune_sweep(cfg, shots, cfg.FEWSHOT.SEEDS, weights_list, force=args.force)
    return finetune(cfg, force=args.force)


def cli(argv=None):
    """Console-script entry point."""
    run_launched("finetune", main, parse_args(argv))


if __name__ == "__main__":
    cli()
