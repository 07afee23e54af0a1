"""Per-row peak memory: a CPU row runs in a fresh process, whose peak resident set is its own.

A process's peak resident set size (``ru_maxrss``) only grows, so rows measured one after
another in one process would all report the largest so far. On CPU each row therefore runs in
a freshly spawned interpreter; its row also records that process's peak before the row
(``base_mem_mb``: the interpreter and libraries), so ``peak_mem_mb - base_mem_mb`` is what
the row itself needed. On CUDA the peak statistics are reset before each row instead.
"""

from __future__ import annotations

import gc
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Dict

import torch

from bitdet.benchmark.suite import get_spec
from bitdet.benchmark.timing import RunSettings, measure, peak_memory, prepare, release

__all__ = ["measure_named", "peak_memory_pass", "run_isolated"]


def measure_named(name: str, task: str, variant: str, s: RunSettings) -> Dict:
    """:func:`bitdet.benchmark.timing.measure` of the suite entry ``name`` (picklable by name)."""
    return measure(get_spec(name), task, variant, s)


def peak_memory_pass(name: str, task: str, variant: str, s: RunSettings) -> Dict:
    """Peak memory of a row without timing it: build, then two steps of training (the second
    holds the optimizer state too) or one of inference.

    Returns:
        ``{"peak_mem_mb", "peak_mem_kind"}``.
    """
    if s.device.startswith("cuda"):
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(s.device)
    p = prepare(get_spec(name), task, variant, s)
    with p.storage():
        for _ in range(2 if task == "train" else 1):
            p.step()
    peak_mb, kind = peak_memory(s.device)
    compiled = bool(p.compiled)
    del p
    release(s.device, compiled)
    return {"peak_mem_mb": peak_mb, "peak_mem_kind": kind}


def _in_child(function: Callable[..., Dict], *args) -> Dict:
    base_mb, _ = peak_memory("cpu")
    row = function(*args)
    peak_mb, _ = peak_memory("cpu")
    row.update(peak_mem_mb=peak_mb, base_mem_mb=base_mb, peak_mem_kind="cpu_row_max_rss")
    return row


def run_isolated(function: Callable[..., Dict], *args) -> Dict:
    """``function(*args)`` (a module-level function returning a row) in a freshly spawned
    process; the row gains that process's peak resident memory (``cpu_row_max_rss``).

    Raises:
        MemoryError: the process died (e.g. killed for memory) before returning its row.
        Whatever ``function`` raised, re-raised here.
    """
    # not fork: a fork starts with this process's pages
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        try:
            return pool.submit(_in_child, function, *args).result()
        except BrokenProcessPool as e:
            raise MemoryError(
                f"the row's process died before it finished (out of memory?): {e}"
            ) from e
