"""Run a whole benchmark from a ``BENCH`` config: rows, ratios, targets, JSON."""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import platform
import time
from typing import Dict, List

import torch

from bitdet.benchmark.config import variant_levers
from bitdet.benchmark.data import measure_gpu_decode, measure_loader
from bitdet.benchmark.report import compute_ratios
from bitdet.benchmark.suite import get_spec
from bitdet.benchmark.timing import RunSettings, applicable, measure
from bitdet.config import check_device
from bitdet.utils.io import write_json

__all__ = ["run_benchmark", "resolve_device", "output_path"]

logger = logging.getLogger(__name__)

# The reference sizes of the GPU targets: targets are judged only on CUDA at these settings.
_REFERENCE = {"CLS_IMAGE_SIZE": 224, "DET_IMAGE_SIZE": [800, 1216], "DET_BATCH_SIZE": 8, "DET_INFER_BATCH_SIZE": 1}


def resolve_device(name: str) -> str:
    """``BENCH.DEVICE`` -> a torch device string; "cuda" without a GPU is an error."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    check_device(name, "BENCH.DEVICE")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"BENCH.DEVICE {name!r}: expected 'auto', 'cpu' or 'cuda[:N]'")
    return name


def output_path(cfg) -> str:
    path = cfg.BENCH.OUTPUT
    return path if os.path.isabs(path) else os.path.join(cfg.OUTPUT_DIR, path)


def _settings(cfg, device: str) -> RunSettings:
    b = cfg.BENCH
    return RunSettings(
        device=device, precision=b.PRECISION, compile_mode=b.COMPILE_MODE, cls_image_size=b.CLS_IMAGE_SIZE,
        cls_num_classes=b.CLS_NUM_CLASSES, cls_batch_size=b.CLS_BATCH_SIZE, det_image_size=tuple(b.DET_IMAGE_SIZE),
        det_batch_size=b.DET_BATCH_SIZE, det_infer_batch_size=b.DET_INFER_BATCH_SIZE,
        det_num_classes=b.DET_NUM_CLASSES, det_boxes_per_image=b.DET_BOXES_PER_IMAGE, accum_steps=b.ACCUM_STEPS,
        cpu_threads=b.CPU_THREADS,
        warmup_iters=b.WARMUP_ITERS, iters=b.ITERS, repeats=b.REPEATS, seed=b.SEED,
    )


def _meta(cfg, device: str) -> Dict:
    return {
        "device": device,
        "device_name": torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor() or "cpu",
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "precision": cfg.BENCH.PRECISION,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "config": json.loads(json.dumps(cfg, default=lambda o: dict(o))),
    }


def _targets(cfg, rows: List[Dict], device: str) -> List[Dict]:
    b = cfg.BENCH
    reference = (
        device.startswith("cuda") and b.PRECISION == "bfloat16" and b.CLS_BATCH_SIZE == 0 and b.ACCUM_STEPS == 1
        and all(list(b[k]) == v if isinstance(v, list) else b[k] == v for k, v in _REFERENCE.items())
    )
    out = []
    for name in dict.fromkeys(r["model"] for r in rows if r.get("model")):
        spec = get_spec(name)
        for metric, target in spec.targets.items():
            task, _, field = metric.partition("_")
            candidates = [r for r in rows if r.get("model") == name and r["task"] == task and r["status"] == "ok"]
            if not candidates:
                continue
            lower_is_better = field != "images_per_sec"
            best = (min if lower_is_better else max)(candidates, key=lambda r: r[field])
            met = None
            if reference:
                met = best[field] <= target if lower_is_better else best[field] >= target
            out.append({"model": name, "metric": metric, "variant": best["variant"], "target": target,
                        "measured": best[field], "met": met})
    return out


def _row_key(row: Dict) -> tuple:
    return (row.get("model") or row.get("loader"), row["task"], row.get("variant", ""))


def run_benchmark(cfg, resume: bool = False, log=print) -> Dict:
    """Run every (model, task, variant) and data loader of ``cfg.BENCH``; write the JSON.

    Args:
        cfg: a config from :func:`bitdet.benchmark.get_benchmark_cfg`.
        resume: keep finished rows of an existing results file with the same config.
        log: called with a one-line message as each row starts and ends.

    Returns:
        ``{"meta", "rows", "ratios", "targets"}`` (also written to ``output_path(cfg)``).
    """
    device = resolve_device(cfg.BENCH.DEVICE)
    settings = _settings(cfg, device)
    path = output_path(cfg)
    results = {"meta": _meta(cfg, device), "rows": [], "ratios": {}, "targets": []}
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
        results["ratios"] = compute_ratios(results["rows"])
        results["targets"] = _targets(cfg, results["rows"], device)
        write_json(path, results)

    def add(row: Dict) -> None:
        results["rows"].append(row)
        save()
        if row["status"] == "ok" and "sec_per_iter" in row:
            log(f"{row['model']:<28} {row['task']:<9} {row['variant']:<24} {row['images_per_sec']:10.1f} img/s")
        elif row["status"] != "ok":
            log(f"{_row_key(row)}: {row['status']}: {row['reason']}")

    for name in cfg.BENCH.MODELS:
        spec = get_spec(name)
        missing = spec.requires and importlib.util.find_spec(spec.requires) is None
        for task in [t for t in cfg.BENCH.TASKS if t != "data"]:
            for variant in cfg.BENCH.VARIANTS:
                base = {"model": name, "group": spec.group, "role": spec.role, "kind": spec.kind,
                        "task": task, "variant": variant, "device": device}
                if _row_key(base) in done:
                    add(done[_row_key(base)])
                    continue
                reason = f"needs the '{spec.requires}' package" if missing else applicable(
                    spec, variant_levers(variant), device)
                if reason:
                    add({**base, "status": "skipped", "reason": reason})
                    continue
                log(f"{name} {task} {variant}: measuring ({settings.warmup_iters} warm-up + "
                    f"{settings.repeats} x {settings.iters} iterations) ...")
                try:
                    add(measure(spec, task, variant, settings))
                except Exception as e:  # noqa: BLE001 - one failing row must not lose the run
                    logger.exception("benchmark row %s failed", _row_key(base))
                    add({**base, "status": "failed", "reason": f"{type(e).__name__}: {e}"})
                    if device.startswith("cuda"):
                        torch.cuda.empty_cache()

    if "data" in cfg.BENCH.TASKS:
        d = cfg.BENCH.DATA
        sizes = {"pretrain": d.PRETRAIN_IMAGE_SIZE, "detection": d.DETECTION_IMAGE_SIZE}
        for loader in d.LOADERS:
            if loader not in sizes:
                raise ValueError(f"BENCH.DATA.LOADERS: unknown loader {loader!r}; expected one of {sorted(sizes)}")
            log(f"{loader} data loader: decoding {d.ITERS} images ...")
            add(measure_loader(loader, d.NUM_IMAGES, d.ITERS, sizes[loader]))
        if d.GPU_DECODE and device.startswith("cuda"):
            try:
                add(measure_gpu_decode(d.NUM_IMAGES, d.ITERS, d.DETECTION_IMAGE_SIZE, device))
            except Exception as e:  # noqa: BLE001 - nvJPEG may be missing from a torchvision build
                add({"task": "data", "loader": "gpu-decode", "status": "failed", "reason": f"{type(e).__name__}: {e}"})
    save()
    return results
