#!/usr/bin/env python
"""Benchmark BiT against its peers: train-step and inference throughput, peak memory, data path.

Writes a JSON file (``OUTPUT_DIR/BENCH.OUTPUT``) and prints a table with ratios against each
peer and what each lever buys. One GPU is measured (per-GPU throughput); the harness does
not use more.

Examples::

    # the full issue-6 table on one GPU (bf16, 224 px; R50x1 batch 128, R101x3 batch 32;
    # RetinaNet batch 8 at 800x1216)
    python tools/benchmark.py --config-file benchmark/h100.yaml
    # continue an interrupted run, keeping its finished rows
    python tools/benchmark.py --config-file benchmark/h100.yaml --resume
    # what the levers buy on this CPU at a moderate size
    python tools/benchmark.py --config-file benchmark/cpu_levers.yaml
    # a quick CPU smoke run with tiny models
    python tools/benchmark.py --config-file benchmark/cpu_tiny.yaml BENCH.ITERS 2
"""
from detectron2.engine import default_argument_parser
from detectron2.utils import comm

from bitdet.benchmark import format_table, get_benchmark_cfg, run_benchmark
from bitdet.benchmark.runner import output_path
from bitdet.tools.cli import launch_main, lock_output_dir, setup_logging


def setup(args):
    """Config from file + ``KEY VALUE`` overrides, frozen; output folder locked, logging set up."""
    cfg = get_benchmark_cfg(args.config_file or None, args.opts)
    cfg.freeze()
    lock_output_dir(cfg.OUTPUT_DIR)
    setup_logging(cfg.OUTPUT_DIR)
    return cfg


def main(args):
    if comm.get_world_size() > 1:
        raise SystemExit(f"benchmark.py measures one GPU but was started as {comm.get_world_size()} processes: "
                         "run it as one process (--num-gpus 1, no torchrun or srun tasks)")
    cfg = setup(args)
    results = run_benchmark(cfg, resume=args.resume)
    print(format_table(results))
    print(f"\nresults: {output_path(cfg)}")
    return results


def cli(argv=None):
    """Console-script entry point."""
    args = default_argument_parser().parse_args(argv)
    if args.num_gpus > 1 or args.num_machines > 1:
        raise SystemExit("benchmark.py measures one GPU: run it with --num-gpus 1 (the default)")
    launch_main(main, args)


if __name__ == "__main__":
    cli()
