#!/usr/bin/env python
"""Benchmark BiT against its peers: train-step and inference throughput, peak memory, data path.

Writes a JSON file (``OUTPUT_DIR/BENCH.OUTPUT``) and prints a table with ratios against each
peer and what each lever buys. One GPU is measured (per-GPU throughput); the harness does
not use more.

Examples::

    # the full table on one GPU, with the H100 targets (bf16, 224 px; R50x1 batch 128,
    # R101x3 batch 32; RetinaNet batch 8 at 800x1216)
    python -m bitdet.tools.benchmark --config-file benchmark/h100.yaml
    # continue an interrupted run, keeping its finished rows
    python -m bitdet.tools.benchmark --config-file benchmark/h100.yaml --resume
    # bitdet's defaults and levers vs the peers on one CPU core (interleaved), with targets
    python -m bitdet.tools.benchmark --config-file benchmark/cpu_levers.yaml
    # a quick CPU smoke run with tiny models
    python -m bitdet.tools.benchmark --config-file benchmark/cpu_tiny.yaml BENCH.ITERS 2
"""
import logging

from detectron2.engine import default_argument_parser, launch
from detectron2.utils.logger import setup_logger

from bitdet.benchmark import format_table, get_benchmark_cfg, run_benchmark
from bitdet.benchmark.runner import output_path


def setup(args):
    """Config from file + ``KEY VALUE`` overrides, frozen; logging set up."""
    cfg = get_benchmark_cfg(args.config_file or None, args.opts)
    cfg.freeze()
    setup_logger(cfg.OUTPUT_DIR, name="bitdet")
    logging.getLogger("bitdet").setLevel(logging.INFO)
    return cfg


def main(args):
    if args.num_gpus > 1 or args.num_machines > 1:
        raise SystemExit("benchmark.py measures one GPU: run it with --num-gpus 1 (the default)")
    cfg = setup(args)
    results = run_benchmark(cfg, resume=args.resume)
    print(format_table(results))
    print(f"\nresults: {output_path(cfg)}")
    return results


def cli(argv=None):
    """Console-script entry point."""
    args = default_argument_parser().parse_args(argv)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))


if __name__ == "__main__":
    cli()
