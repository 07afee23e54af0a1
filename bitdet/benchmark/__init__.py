"""Benchmark harness: BiT vs peers, train/inference throughput, memory, data path.

``python -m bitdet.tools.benchmark`` is the entry point; this package holds the pieces it composes:
``config`` (keys), ``suite`` (models and peers), ``timing`` (train/inference steps),
``isolation`` (a CPU row in a fresh process, for its own peak memory), ``data`` (decode +
augment throughput) and ``report`` (JSON, ratios, table).
"""

from bitdet.benchmark.config import add_benchmark_config, get_benchmark_cfg
from bitdet.benchmark.report import compute_ratios, format_table
from bitdet.benchmark.runner import run_benchmark
from bitdet.benchmark.suite import SUITE, ModelSpec

__all__ = [
    "SUITE",
    "ModelSpec",
    "add_benchmark_config",
    "compute_ratios",
    "format_table",
    "get_benchmark_cfg",
    "run_benchmark",
]
