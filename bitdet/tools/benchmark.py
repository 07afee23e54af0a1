#!/usr/bin/env python
"""Benchmark BiT against its peers: train-step and inference throughput, peak memory, data path.

Writes a JSON file (``OUTPUT_DIR/BENCH.OUTPUT``) and prints a table with ratios against each
peer and what each lever buys; each row is announced as it starts and printed as it ends. One
device is measured (per-GPU throughput); the harness does not launch several processes.

Examples::

    # the full table on one GPU, with the H100 targets (bf16, 224 px; R50x1 batch 128,
    # R101x3 batch 32; RetinaNet batch 8 at 800x1216)
    python -m bitdet.tools.benchmark --config-file benchmark/h100.yaml
    # continue an interrupted run, keeping its finished rows
    python -m bitdet.tools.benchmark --config-file benchmark/h100.yaml --resume
    # bitdet's defaults and levers vs the peers on one CPU core (interleaved), with targets;
    # what `make bench` runs on a CPU
    python -m bitdet.tools.benchmark --config-file benchmark/cpu_levers.yaml
    # a quick CPU smoke run with tiny models
    python -m bitdet.tools.benchmark --config-file benchmark/cpu_tiny.yaml BENCH.ITERS 2
    # peak memory of a training step with and without activation checkpointing, on this CPU
    python -m bitdet.tools.benchmark --config-file benchmark/memory.yaml
    # check that a preset runs (every row built and stepped once, tiny, on this CPU)
    python -m bitdet.tools.benchmark --config-file benchmark/h100.yaml --dry-run
"""

from detectron2.utils import comm

from bitdet.benchmark import format_table, get_benchmark_cfg, run_benchmark
from bitdet.benchmark.runner import output_path
from bitdet.tools.cli import argument_parser, run_launched, setup_cfg

# KEY VALUE overrides shown in --help (keys of the benchmark config).
OVERRIDES_EXAMPLE = "BENCH.ITERS 2 BENCH.DEVICE cpu"


def setup(args):
    """Config from file + ``KEY VALUE`` overrides, device checked, frozen; output folder locked,
    logging set up. A dry run runs on this CPU whatever ``BENCH.DEVICE`` says."""
    if args.dry_run:
        return setup_cfg(
            args,
            lambda path, opts: get_benchmark_cfg(path, [*opts, "BENCH.DEVICE", "cpu"]),
            config_kind="benchmark",
        )
    return setup_cfg(args, get_benchmark_cfg, config_kind="benchmark")


def main(args):
    if comm.get_world_size() > 1:
        raise SystemExit(
            f"benchmark.py measures one device but was started as {comm.get_world_size()} "
            "processes: run it as one process (no torchrun or srun tasks)"
        )
    dry_run_for = None
    if args.dry_run:  # judge the rows as on the preset's device
        dry_run_for = (
            "cpu"
            if get_benchmark_cfg(args.config_file, args.opts).BENCH.DEVICE == "cpu"
            else "cuda"
        )
    cfg = setup(args)
    results = run_benchmark(
        cfg, resume=args.resume, log=lambda line: print(line, flush=True), dry_run_for=dry_run_for
    )
    print(format_table(results))
    print(f"\nresults: {output_path(cfg, dry_run=args.dry_run)}")
    return results


def parse_args(argv=None):
    parser = argument_parser(
        __doc__,
        overrides_example=OVERRIDES_EXAMPLE,
        eval_only=False,
        launcher=False,
        resume_help="keep the finished rows of an earlier run with the same settings",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="build and step every row once at tiny size on this CPU (small stand-in models, "
        "no timing claims): check that a preset runs before spending GPU time on it",
    )
    parser.set_defaults(num_gpus=1, num_machines=1, machine_rank=0, dist_url="auto")  # one process
    return parser.parse_args(argv)


def cli(argv=None):
    """Console-script entry point."""
    run_launched("benchmark", main, parse_args(argv))


if __name__ == "__main__":
    cli()
