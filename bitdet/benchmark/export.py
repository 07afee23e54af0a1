"""Inference throughput of exported graphs (TorchScript, ONNX Runtime) against eager, on the CPU.

Every variant runs the same sample batch of an :class:`bitdet.export.ExportTarget` with the
same thread count: eager as built (weights standardized on every forward), eager with
bitdet's inference fast path (:func:`bitdet.models.fast.optimize_for_inference`: cached
standardized kernels, and channels-last for classifiers), and each exported file loaded
the way a deployment would load it. Variants run in interleaved rounds and both wall time
and process CPU time are reported, so that figures from a shared machine stay comparable.
"""

from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

from bitdet.export.formats import load_runner
from bitdet.export.targets import ExportTarget
from bitdet.models.fast import optimize_for_inference

__all__ = ["export_throughput", "format_throughput"]

_RUNTIME = {"torchscript": "TorchScript", "onnx": "ONNX Runtime"}


def _eager_step(target: ExportTarget, fast: bool) -> Callable[[], None]:
    model, inputs = target.model, target.samples[0]
    if fast:
        classifier = target.kind == "classifier"
        model = optimize_for_inference(copy.deepcopy(model), channels_last=classifier)
        if classifier:
            inputs = tuple(x.contiguous(memory_format=torch.channels_last) for x in inputs)

    def step() -> None:
        with torch.inference_mode():
            target.call(model, *inputs)

    return step


def export_throughput(
    target: ExportTarget,
    files: Dict[str, Path],
    threads: int = 1,
    warmup: int = 2,
    iters: int = 5,
    repeats: int = 3,
) -> List[Dict]:
    """Time eager and exported inference on ``target.samples[0]``.

    Args:
        target: what was exported (its eager model and sample batch).
        files: exported file per format (``"torchscript"``, ``"onnx"``).
        threads: CPU threads for torch and ONNX Runtime alike.
        warmup: untimed calls per variant.
        iters, repeats: each of ``repeats`` rounds times ``iters`` calls of every variant in
            turn; a variant's figure is the median over rounds.

    Returns:
        One row per variant: ``variant``, ``batch_size``, ``input_shape``, ``threads``, wall
        ``sec_per_batch`` / ``images_per_sec`` / ``speedup`` over plain eager, and the same
        in process CPU time (``cpu_sec_per_batch``, ``images_per_cpu_sec``, ``cpu_speedup``).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        variants = [
            ("eager", _eager_step(target, False)),
            ("eager, fast path", _eager_step(target, True)),
        ]
        for fmt, path in files.items():
            run = load_runner(path, fmt, threads=threads)
            inputs = target.samples[0]
            variants.append((_RUNTIME[fmt], lambda run=run, inputs=inputs: run(*inputs)))
        images = 1 if target.kind == "detector" else int(target.samples[0][0].shape[0])
        for _, step in variants:
            for _ in range(warmup):
                step()
        # Interleaved: each round times one block of every variant, so that load from other
        # processes drifts over all variants alike. CPU time is recorded next to wall time: on
        # a shared machine it still measures the work done (with one thread the two agree
        # on an idle machine).
        wall: Dict[str, List[float]] = {name: [] for name, _ in variants}
        cpu: Dict[str, List[float]] = {name: [] for name, _ in variants}
        for _ in range(repeats):
            for name, step in variants:
                start_wall, start_cpu = time.perf_counter(), time.process_time()
                for _ in range(iters):
                    step()
                wall[name].append((time.perf_counter() - start_wall) / iters)
                cpu[name].append((time.process_time() - start_cpu) / iters)
        rows = []
        for name, _ in variants:
            sec, cpu_sec = statistics.median(wall[name]), statistics.median(cpu[name])
            rows.append(
                {
                    "variant": name,
                    "kind": target.kind,
                    "batch_size": images,
                    "input_shape": list(target.samples[0][0].shape),
                    "threads": threads,
                    "iters": iters,
                    "repeats": repeats,
                    "sec_per_batch": sec,
                    "images_per_sec": images / sec,
                    "cpu_sec_per_batch": cpu_sec,
                    "images_per_cpu_sec": images / cpu_sec,
                }
            )
    finally:
        torch.set_num_threads(previous)
    for row in rows:
        row["speedup"] = rows[0]["sec_per_batch"] / row["sec_per_batch"]
        row["cpu_speedup"] = rows[0]["cpu_sec_per_batch"] / row["cpu_sec_per_batch"]
    return rows


def format_throughput(rows: List[Dict]) -> str:
    """A Markdown table of :func:`export_throughput` rows."""
    lines = [
        "| variant | images/s | vs eager | images per CPU-second | vs eager |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['variant']} | {row['images_per_sec']:.2f} | {row['speedup']:.2f}x | "
            f"{row['images_per_cpu_sec']:.2f} | {row['cpu_speedup']:.2f}x |"
        )
    return "\n".join(lines)
