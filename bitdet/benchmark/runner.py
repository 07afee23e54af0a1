"""Run a whole benchmark from a ``BENCH`` config: rows, ratios, targets, JSON."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import math
import os
import statistics
import time
from typing import Dict, List, Optional

import torch

from bitdet.benchmark.config import default_variant, variant_levers
from bitdet.benchmark.data import LOADERS, measure_gpu_decode, measure_loader
from bitdet.benchmark.isolation import measure_named, peak_memory_pass, run_isolated
from bitdet.benchmark.report import compute_ratios
from bitdet.benchmark.suite import ModelSpec, get_spec
from bitdet.benchmark.timing import (
    RunSettings,
    applicable,
    finish,
    measure,
    prepare,
    release,
    time_block,
)
from bitdet.config import check_device
from bitdet.errors import ConfigError
from bitdet.utils.io import write_json
from bitdet.utils.machine import cpu_name

__all__ = ["run_benchmark", "resolve_device", "output_path"]

logger = logging.getLogger(__name__)

# A dry run (``--dry-run``): every row built and stepped once on CPU at these sizes, with each
# model's small stand-in (``ModelSpec.tiny``) and compile levers traced by Dynamo only.
DRY_RUN_SIZES = {
    "cls_image_size": 32,
    "cls_batch_size": 2,
    "det_image_size": (64, 64),
    "det_batch_size": 2,
    "det_infer_batch_size": 1,
}


def resolve_device(name: str) -> str:
    """``BENCH.DEVICE`` -> a torch device string; "cuda" without a GPU is an error."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    check_device(name, "BENCH.DEVICE")
    if name != "cpu" and not name.startswith("cuda"):
        raise ConfigError(f"BENCH.DEVICE {name!r}: expected 'auto', 'cpu' or 'cuda[:N]'")
    return name


def output_path(cfg, dry_run: bool = False) -> str:
    """The results file; a dry run writes ``<name>.dry-run.json`` beside it (never over real
    results)."""
    path = cfg.BENCH.OUTPUT
    path = path if os.path.isabs(path) else os.path.join(cfg.OUTPUT_DIR, path)
    return f"{os.path.splitext(path)[0]}.dry-run.json" if dry_run else path


def _dry_run_settings(s: RunSettings) -> RunSettings:
    return dataclasses.replace(
        s,
        device="cpu",
        cpu_threads=1,
        clock="wall",
        warmup_iters=0,
        iters=1,
        repeats=1,
        compile_backend="eager",
        **DRY_RUN_SIZES,
    )


def _memory_settings(cfg, s: RunSettings, side: int, batch: int) -> RunSettings:
    """A ``BENCH.MEMORY.ROWS`` entry's settings: its size and batch, one untimed then ITERS timed
    steps."""
    return dataclasses.replace(
        s,
        cls_image_size=side,
        cls_batch_size=batch,
        det_image_size=(side, side),
        det_batch_size=batch,
        accum_steps=1,
        warmup_iters=1,
        iters=cfg.BENCH.MEMORY.ITERS,
        repeats=1,
    )


def _settings(cfg, device: str) -> RunSettings:
    b = cfg.BENCH
    return RunSettings(
        device=device,
        precision=b.PRECISION,
        compile_mode=b.COMPILE_MODE,
        cls_image_size=b.CLS_IMAGE_SIZE,
        cls_num_classes=b.CLS_NUM_CLASSES,
        cls_batch_size=b.CLS_BATCH_SIZE,
        det_image_size=tuple(b.DET_IMAGE_SIZE),
        det_batch_size=b.DET_BATCH_SIZE,
        det_infer_batch_size=b.DET_INFER_BATCH_SIZE,
        det_num_classes=b.DET_NUM_CLASSES,
        det_boxes_per_image=b.DET_BOXES_PER_IMAGE,
        accum_steps=b.ACCUM_STEPS,
        cpu_threads=b.CPU_THREADS,
        clock=b.CLOCK,
        warmup_iters=b.WARMUP_ITERS,
        iters=b.ITERS,
        repeats=b.REPEATS,
        seed=b.SEED,
    )


def _meta(cfg, device: str) -> Dict:
    return {
        "device": device,
        "device_name": torch.cuda.get_device_name(device)
        if device.startswith("cuda")
        else cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "precision": cfg.BENCH.PRECISION,
        "clock": cfg.BENCH.CLOCK,
        "interleaved": cfg.BENCH.INTERLEAVE,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "config": json.loads(json.dumps(cfg, default=lambda o: dict(o))),
    }


def _targets(cfg, rows: List[Dict], device: str) -> List[Dict]:
    """``BENCH.TARGETS`` judged on each model's best variant (on CUDA only: they are GPU
    targets)."""
    out = []
    for name, metric, target in cfg.BENCH.TARGETS:
        task, _, field = metric.partition("_")
        candidates = [
            r for r in rows if r.get("model") == name and r["task"] == task and r["status"] == "ok"
        ]
        if not candidates:
            continue
        lower_is_better = field != "images_per_sec"
        best = (min if lower_is_better else max)(candidates, key=lambda r: r[field])
        met = None
        if device.startswith("cuda"):
            met = best[field] <= target if lower_is_better else best[field] >= target
        out.append(
            {
                "model": name,
                "metric": metric,
                "variant": best["variant"],
                "target": target,
                "measured": best[field],
                "met": met,
            }
        )
    return out


def _ratio_targets(cfg, rows: List[Dict]) -> List[Dict]:
    """``BENCH.RATIO_TARGETS`` judged on the rows of this run."""
    ok = {
        (r["model"], r["task"], r["variant"]): r
        for r in rows
        if r.get("status") == "ok" and "images_per_sec" in r
    }
    out = []
    for model, variant, task, peer, peer_variant, minimum in cfg.BENCH.RATIO_TARGETS:
        variant = default_variant(cfg, task) if variant == "default" else variant
        ours, theirs = ok.get((model, task, variant)), ok.get((peer, task, peer_variant))
        ratio = ours["images_per_sec"] / theirs["images_per_sec"] if ours and theirs else None
        out.append(
            {
                "task": task,
                "bitdet": f"{model}/{variant}",
                "peer": f"{peer}/{peer_variant}",
                "target": minimum,
                "ratio": ratio,
                "met": None if ratio is None else ratio >= minimum,
            }
        )
    return out


def _measure_interleaved(jobs: List[tuple], s: RunSettings, log) -> Dict[tuple, Dict]:
    """Time ``jobs`` ((spec, task, variant) each) with their blocks interleaved round-robin.

    Every job is built and warmed up first; then each of ``s.repeats`` rounds times one
    block of every job, starting at a different job each round. Returns rows by job.
    """
    out: Dict[tuple, Dict] = {}
    prepared = []
    for job in jobs:
        spec, task, variant = job
        try:
            p = prepare(spec, task, variant, s)
            with p.storage():
                for _ in range(s.warmup_iters):
                    p.step()
            prepared.append((job, p, []))
        except Exception as e:  # noqa: BLE001 - one failing row must not lose the run
            logger.exception("benchmark row %s failed", (spec.name, task, variant))
            out[job] = {"status": "failed", "reason": f"{type(e).__name__}: {e}"}
    log(f"interleaving {len(prepared)} rows: {s.repeats} rounds of {s.iters} iterations each")
    for round_ in range(s.repeats):
        shift = round_ % max(1, len(prepared))
        for job, p, blocks in prepared[shift:] + prepared[:shift]:
            with p.storage():
                blocks.append(time_block(p.step, s.device, s.iters, s.clock))
    compiled = False
    for job, p, blocks in prepared:
        out[job] = finish(p, statistics.median(blocks), s)
        compiled = compiled or bool(p.compiled)
    del prepared
    release(s.device, compiled)
    # The timed rows were held together: measure each row's peak memory on its own.
    for (spec, task, variant), row in out.items():
        if row.get("status") == "ok":
            row.update(_run_row(peak_memory_pass, spec.name, task, variant, s))
    return out


def _run_row(function, name: str, task: str, variant: str, s: RunSettings) -> Dict:
    """``function(name, task, variant, s)``: in a fresh process on CPU (its own peak memory),
    else here."""
    if s.device == "cpu":
        return run_isolated(function, name, task, variant, s)
    return function(name, task, variant, s)


def _base_row(spec, task: str, variant: str, device: str, **extra) -> Dict:
    """The fields that name a row of one model: what it is, what ran, where."""
    return {
        "model": spec.name,
        "group": spec.group,
        "role": spec.role,
        "kind": spec.kind,
        "task": task,
        "variant": variant,
        "device": device,
        **extra,
    }


def _row_key(row: Dict) -> tuple:
    return (
        row.get("model") or row.get("loader"),
        row["task"],
        row.get("variant", ""),
        *row.get("entry", ()),
    )


def _measure_job(spec: ModelSpec, task: str, variant: str, s: RunSettings, dry_run: bool) -> Dict:
    """One row: in a fresh process on CPU; a dry run builds the model's stand-in, here."""
    if dry_run:
        built = get_spec(spec.tiny) if spec.tiny else spec
        return {
            **measure(built, task, variant, s),
            "model": spec.name,
            "built": built.name,
            "dry_run": True,
        }
    return _run_row(measure_named, spec.name, task, variant, s)


def run_benchmark(cfg, resume: bool = False, log=print, dry_run_for: Optional[str] = None) -> Dict:
    """Run every (model, task, variant), memory row and data loader of ``cfg.BENCH``; write
    the JSON.

    Args:
        cfg: a config from :func:`bitdet.benchmark.get_benchmark_cfg`.
        resume: keep finished rows of an existing results file with the same config.
        log: called with a one-line message as each row starts and ends.
        dry_run_for: "cuda" or "cpu": instead of measuring, build and step every row once on
            this CPU at tiny size, each model's small stand-in in its place, judging which
            rows apply as on that device (no timing or memory claims): a check that a preset
            meant for that device runs.

    Returns:
        ``{"meta", "rows", "ratios", "targets", "ratio_targets", "defaults"}`` (also written to
        ``output_path(cfg, dry_run)``).
    """
    dry_run = dry_run_for is not None
    device = "cpu" if dry_run else resolve_device(cfg.BENCH.DEVICE)
    target_device = dry_run_for or device
    if cfg.BENCH.CLOCK == "cpu" and device != "cpu":
        raise ConfigError(
            f"BENCH.CLOCK 'cpu' (process CPU time) cannot time device {device!r}; use 'wall'"
        )
    settings = _settings(cfg, device)
    if dry_run:
        settings = _dry_run_settings(settings)
    if device == "cpu" and settings.cpu_threads > 0:
        torch.set_num_threads(settings.cpu_threads)
    path = output_path(cfg, dry_run)
    defaults = {task: default_variant(cfg, task) for task in ("train", "inference")}
    results = {
        "meta": {**_meta(cfg, device), "dry_run": dry_run},
        "rows": [],
        "ratios": {},
        "targets": [],
        "ratio_targets": [],
        "defaults": defaults,
    }
    done: Dict[tuple, Dict] = {}
    if resume and os.path.isfile(path):
        with open(path) as f:
            previous = json.load(f)
        if previous.get("meta", {}).get("config") == results["meta"]["config"]:
            done = {_row_key(r): r for r in previous.get("rows", []) if r["status"] != "failed"}
            log(f"resuming: {len(done)} finished rows from {path}")
        else:
            log(f"not resuming: {path} was written with a different config")

    def save() -> None:
        if not dry_run:  # a dry run's figures mean nothing: no ratios, no targets
            results["ratios"] = compute_ratios(results["rows"], defaults)
            results["targets"] = _targets(cfg, results["rows"], device)
            results["ratio_targets"] = _ratio_targets(cfg, results["rows"])
        write_json(path, results)

    def add(row: Dict) -> None:
        results["rows"].append(row)
        save()
        if row["status"] == "ok" and row.get("dry_run"):
            log(
                f"{row['model']:<28} {row['task']:<9} {row['variant']:<24} "
                f"built ({row['built']}) and stepped"
            )
        elif row["status"] == "ok" and row["task"] == "memory":
            log(
                f"{row['model']:<28} {row['task']:<9} {row['variant']:<24} "
                f"{row['sec_per_iter']:10.2f} s/iter"
                f" {row['peak_mem_mb']:10.0f} MB peak"
            )
        elif row["status"] == "ok" and "sec_per_iter" in row:
            log(
                f"{row['model']:<28} {row['task']:<9} {row['variant']:<24} "
                f"{row['images_per_sec']:10.1f} img/s"
                f" {row['peak_mem_mb']:10.0f} MB peak"
            )
        elif row["status"] != "ok":
            log(f"{_row_key(row)}: {row['status']}: {row['reason']}")

    tasks = [t for t in cfg.BENCH.TASKS if t != "data"]
    # Interleaved runs time a whole task at once; sequential runs one row at a time.
    batches = (
        [[(n, t) for n in cfg.BENCH.MODELS] for t in tasks]
        if cfg.BENCH.INTERLEAVE
        else [[(n, t)] for n in cfg.BENCH.MODELS for t in tasks]
    )
    for batch in batches:
        ordered, jobs = [], []
        for name, task in batch:
            spec = get_spec(name)
            missing = spec.requires and importlib.util.find_spec(spec.requires) is None
            variants = (
                cfg.BENCH.VARIANTS
                if spec.role == "bitdet"
                else cfg.BENCH.PEER_VARIANTS or cfg.BENCH.VARIANTS
            )
            for variant in variants:
                base = _base_row(spec, task, variant, device)
                ordered.append(base)
                if _row_key(base) in done:
                    continue
                reason = (
                    f"needs the '{spec.requires}' package"
                    if missing
                    else applicable(spec, variant_levers(variant), target_device, task)
                )
                if reason:
                    done[_row_key(base)] = {**base, "status": "skipped", "reason": reason}
                else:
                    jobs.append((spec, task, variant))
        if cfg.BENCH.INTERLEAVE and jobs and not dry_run:
            measured = _measure_interleaved(jobs, settings, log)
        else:
            measured = {
                job: _guarded(_measure_job, *job, settings, dry_run, device=device) for job in jobs
            }
        by_key = {
            (spec.name, task, variant): row for (spec, task, variant), row in measured.items()
        }
        for base in ordered:
            key = _row_key(base)
            add(done[key] if key in done else {**base, **by_key[key]})

    # Peak memory of one training step per BENCH.MEMORY.ROWS entry and variant.
    for name, side, batch in cfg.BENCH.MEMORY.ROWS:
        spec = get_spec(name)
        variants = cfg.BENCH.MEMORY.VARIANTS if spec.role == "bitdet" else ["eager"]
        row_settings = _memory_settings(cfg, settings, side, batch)
        if dry_run:
            row_settings = _dry_run_settings(row_settings)
        for variant in variants:
            base = _base_row(spec, "memory", variant, device, entry=[side, batch])
            if _row_key(base) in done:
                add(done[_row_key(base)])
                continue
            reason = applicable(spec, variant_levers(variant), target_device, "train")
            if reason:
                add({**base, "status": "skipped", "reason": reason})
                continue
            log(f"{name:<28} memory    {variant:<24} {side}x{side}, batch {batch}: measuring")
            row = _guarded(
                _measure_job, spec, "train", variant, row_settings, dry_run, device=device
            )
            add({**row, **base})

    if "data" in cfg.BENCH.TASKS:
        d = cfg.BENCH.DATA
        if dry_run:  # a few small images: the loaders' code paths, no throughput claims
            d = d.clone()
            d.defrost()
            d.NUM_IMAGES, d.ITERS, d.PRETRAIN_IMAGE_SIZE, d.DETECTION_IMAGE_SIZE = (
                2,
                2,
                [96, 128],
                [96, 128],
            )
        consumed = {name: float(rate) for name, rate in d.GPU_IMAGES_PER_SEC}
        for loader in d.LOADERS:
            if loader not in LOADERS:
                raise ConfigError(
                    f"BENCH.DATA.LOADERS: unknown loader {loader!r}; expected one of {LOADERS}"
                )
            size = d.DETECTION_IMAGE_SIZE if loader == "detection" else d.PRETRAIN_IMAGE_SIZE
            row = measure_loader(loader, d.NUM_IMAGES, d.ITERS, size, cfg.BENCH.CLOCK)
            if loader in consumed:
                row["gpu_images_per_sec"] = consumed[loader]
                row["cores_per_gpu"] = math.ceil(consumed[loader] / row["images_per_sec_per_core"])
            add(row)
        if d.GPU_DECODE and device.startswith("cuda"):
            try:
                add(measure_gpu_decode(d.NUM_IMAGES, d.ITERS, d.DETECTION_IMAGE_SIZE, device))
            except Exception as e:  # noqa: BLE001 - nvJPEG may be missing from a torchvision build
                add(
                    {
                        "task": "data",
                        "loader": "gpu-decode",
                        "status": "failed",
                        "reason": f"{type(e).__name__}: {e}",
                    }
                )
    save()
    return results


def _guarded(function, *args, device: str) -> Dict:
    """``function(*args)``, or a "failed" row naming the error (one failing row must not lose
    the run)."""
    try:
        return function(*args)
    except Exception as e:  # noqa: BLE001
        logger.exception("benchmark row %s failed", (args[0].name, *args[1:3]))
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        return {"status": "failed", "reason": f"{type(e).__name__}: {e}"}
