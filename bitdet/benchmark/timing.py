"""Train-step and inference timing of one (model, variant) on one device.

A train step is forward, backward and an SGD step (momentum 0.9, weight decay 1e-4, as in
BiT's recipe) on a fixed synthetic batch that already sits on the device, so the numbers
measure the model, not the data path (``bitdet.benchmark.data`` measures that).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import resource
import statistics
import time
from dataclasses import dataclass
from typing import Callable, ContextManager, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from bitdet.benchmark.config import variant_levers
from bitdet.benchmark.suite import ModelSpec
from bitdet.export.fold import fold_weight_standardization
from bitdet.models.fast import (
    StandardizeOncePerStep,
    cache_standardized_weights,
    compile_model,
    is_compiled,
    std_convs,
)
from bitdet.utils.precision import PRECISIONS

__all__ = [
    "CLOCKS",
    "Prepared",
    "RunSettings",
    "applicable",
    "finish",
    "measure",
    "peak_memory",
    "prepare",
    "time_block",
    "time_blocks",
]


@dataclass(frozen=True)
class RunSettings:
    """What one row needs beyond the model and variant (read from ``BENCH`` by the runner)."""

    device: str
    precision: str
    compile_mode: str
    cls_image_size: int
    cls_num_classes: int
    cls_batch_size: int  # 0: the spec's reference batch
    det_image_size: Tuple[int, int]
    det_batch_size: int
    det_infer_batch_size: int
    det_num_classes: int
    det_boxes_per_image: int
    accum_steps: int
    cpu_threads: int
    clock: str
    warmup_iters: int
    iters: int
    repeats: int
    seed: int
    # torch.compile backend of the compile levers: "inductor", or "eager" (Dynamo tracing
    # only, for dry runs on CPU; compile modes then do not apply).
    compile_backend: str = "inductor"


def applicable(
    spec: ModelSpec, levers: Sequence[str], device: str, task: str = "inference"
) -> Optional[str]:
    """None if the variant can run, else the reason it is skipped."""
    if "cudagraphs" in levers and not device.startswith("cuda"):
        return "cudagraphs need CUDA"
    if "ws" in levers and spec.role != "bitdet":
        return "ws is bitdet's weight-standardization lever"
    if "ws" in levers and ("compile" in levers or "cudagraphs" in levers):
        return "compiled graphs standardize inside the graph; ws applies to eager"
    if "fold" in levers and (spec.role != "bitdet" or task != "inference"):
        return "fold (plain convs holding standardized kernels) is a bitdet inference lever"
    if "fold" in levers and "ws" in levers:
        return "fold already removes weight standardization; ws has nothing to cache"
    checkpointing = [lever for lever in levers if lever.startswith("ckpt-")]
    if checkpointing and (spec.role != "bitdet" or task != "train"):
        return "activation checkpointing (ckpt-stage, ckpt-unit) is a bitdet training lever"
    if len(checkpointing) > 1:
        return "choose one of ckpt-stage and ckpt-unit"
    return None


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def time_blocks(
    step: Callable[[], None],
    device: str,
    warmup: int,
    iters: int,
    repeats: int,
    clock: str = "wall",
) -> float:
    """Median seconds per call of ``step`` over ``repeats`` timed blocks of ``iters`` calls.

    Blocks (not single calls) are timed so that host-side timing does not serialise the
    GPU; the device is synchronised only at block ends.
    """
    for _ in range(warmup):
        step()
    _sync(device)
    return statistics.median(time_block(step, device, iters, clock) for _ in range(repeats))


# BENCH.CLOCK: wall-clock time, or this process's CPU time (CPU runs on a shared machine).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def time_block(step: Callable[[], None], device: str, iters: int, clock: str = "wall") -> float:
    """Seconds per call of ``step`` over one block of ``iters`` calls (device synchronised at the
    end)."""
    now = CLOCKS[clock]
    start = now()
    for _ in range(iters):
        step()
    _sync(device)
    return (now() - start) / iters


def _autocast(device: str, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=PRECISIONS[precision])


def _detector_inputs(n: int, s: RunSettings, train: bool, device: str) -> List[Dict]:
    from detectron2.structures import Boxes, Instances

    h, w = s.det_image_size
    inputs = []
    for _ in range(n):
        item = {
            "image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8, device=device),
            "height": h,
            "width": w,
        }
        if train:
            k = s.det_boxes_per_image
            xy = torch.rand(k, 2, device=device) * torch.tensor([w * 0.7, h * 0.7], device=device)
            wh = (torch.rand(k, 2, device=device) * 0.25 + 0.05) * torch.tensor(
                [w, h], device=device
            )
            inst = Instances((h, w))
            inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
            inst.gt_classes = torch.randint(0, s.det_num_classes, (k,), device=device)
            item["instances"] = inst
        inputs.append(item)
    return inputs


def _apply_compile(
    model: nn.Module, spec: ModelSpec, levers: Sequence[str], s: RunSettings
) -> List[nn.Module]:
    if "compile" not in levers and "cudagraphs" not in levers:
        return []
    mode = "reduce-overhead" if "cudagraphs" in levers else s.compile_mode
    # Detectors: compile the dense parts (backbone + FPN, head); box matching, losses and
    # NMS are data-dependent and stay eager.
    targets = [model.backbone, model.head] if spec.kind == "detector" else [model]
    for module in targets:
        compile_model(module, mode=mode, backend=s.compile_backend)
    return targets


@dataclass
class Prepared:
    """One (model, task, variant) ready to time: its ``step`` and what its row reports."""

    spec: ModelSpec
    task: str
    variant: str
    levers: List[str]
    model: nn.Module
    step: Callable[[], None]
    images_per_step: int
    size: Tuple[int, ...]
    compiled: List[nn.Module]
    storage: Callable[[], ContextManager]  # a fresh context around every timed block


def prepare(spec: ModelSpec, task: str, variant: str, s: RunSettings) -> Prepared:
    """Build ``spec`` and apply the variant's levers; the returned ``step`` runs one iteration of
    ``task``."""
    levers = variant_levers(variant)
    device = s.device
    if not device.startswith("cuda") and s.cpu_threads > 0:
        torch.set_num_threads(s.cpu_threads)
    torch.manual_seed(s.seed)
    num_classes = s.cls_num_classes if spec.kind == "classifier" else s.det_num_classes
    model = spec.build(num_classes, device)
    train = task == "train"
    model.train(train)
    if "fold" in levers:  # the deployment form: plain convs holding the standardized kernels
        fold_weight_standardization(model, inplace=True)
    channels_last = "cl" in levers
    if channels_last:
        model.to(memory_format=torch.channels_last)
    for lever in levers:
        if lever.startswith("ckpt-"):  # the BiT trunk: the classifier, or the detector's bottom-up
            trunk = model.backbone.bottom_up if spec.kind == "detector" else model
            trunk.set_grad_checkpointing(lever.partition("-")[2])
    compiled = _apply_compile(model, spec, levers, s)
    ws = "ws" in levers

    if spec.kind == "classifier":
        batch = s.cls_batch_size or spec.batch_size
        size = (s.cls_image_size, s.cls_image_size)
        x = torch.randn(batch, 3, *size, device=device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, num_classes, (batch,), device=device)

        def loss_fn() -> torch.Tensor:
            return F.cross_entropy(model(x), y)

        infer_batch = batch
    else:
        batch = s.det_batch_size
        size = tuple(s.det_image_size)
        train_inputs = _detector_inputs(batch, s, True, device) if train else None
        infer_batch = s.det_infer_batch_size
        infer_inputs = None if train else _detector_inputs(infer_batch, s, False, device)

        def loss_fn() -> torch.Tensor:
            return sum(model(train_inputs).values())

    if train:
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9, weight_decay=1e-4)
        once = StandardizeOncePerStep(model) if ws else None
        accum = max(1, s.accum_steps)

        def step() -> None:
            with once.step() if once is not None else contextlib.nullcontext():
                for _ in range(accum):
                    with _autocast(device, s.precision):
                        loss = loss_fn() / accum
                    loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        images_per_step = batch * accum
    else:
        if ws:
            cache_standardized_weights(model, True)

        def step() -> None:
            with torch.inference_mode(), _autocast(device, s.precision):
                model(x) if spec.kind == "classifier" else model(infer_inputs)

        images_per_step = infer_batch

    storage: Callable[[], ContextManager] = contextlib.nullcontext
    if spec.kind == "detector":  # Detectron2 models log training statistics to an EventStorage
        from detectron2.utils.events import EventStorage

        storage = functools.partial(EventStorage, 0)
    return Prepared(
        spec, task, variant, levers, model, step, images_per_step, size, compiled, storage
    )


def peak_memory(device: str) -> Tuple[float, str]:
    """(MB, kind): CUDA's peak allocated memory since its last reset, or on CPU this process's
    peak resident set size (Linux reports KiB); a row's own only in a process of its own."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_process_max_rss"


def finish(p: Prepared, sec: float, s: RunSettings) -> Dict:
    """The result row of a prepared run timed at ``sec`` seconds per iteration."""
    device = s.device
    peak_mb, peak_kind = peak_memory(device)
    fell_back = [type(m).__name__ for m in p.compiled if not is_compiled(m)]
    train = p.task == "train"
    return {
        "model": p.spec.name,
        "group": p.spec.group,
        "role": p.spec.role,
        "kind": p.spec.kind,
        "task": p.task,
        "variant": p.variant,
        "levers": p.levers,
        "device": device,
        "precision": s.precision,
        "batch_size": p.images_per_step,
        "accum_steps": s.accum_steps if train else 1,
        "image_size": list(p.size),
        "iters": s.iters,
        "repeats": s.repeats,
        "clock": s.clock,
        "sec_per_iter": sec,
        "images_per_sec": p.images_per_step / sec,
        "ms_per_image": 1000 * sec / p.images_per_step,
        "peak_mem_mb": peak_mb,
        "peak_mem_kind": peak_kind,
        "ws_convs": len(std_convs(p.model)),
        "status": "failed" if fell_back else "ok",
        "reason": f"torch.compile fell back to eager for {fell_back}" if fell_back else None,
    }


def release(device: str, compiled: bool) -> None:
    """Free what finished rows held: compiled graphs (and CUDA graph pools), cached memory."""
    gc.collect()
    if compiled:
        torch._dynamo.reset()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def measure(spec: ModelSpec, task: str, variant: str, s: RunSettings) -> Dict:
    """Build ``spec``, apply the variant's levers, time ``task`` ("train" / "inference") on its own.

    Returns:
        A result row: batch, sizes, ``sec_per_iter``, ``images_per_sec``, ``ms_per_image``,
        ``peak_mem_mb`` (:func:`peak_memory`; CUDA: this row's, its statistics reset first)
        and ``status`` "ok" (or "failed" with ``reason`` if compilation fell back to eager).
    """
    if s.device.startswith("cuda"):
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(s.device)
    p = prepare(spec, task, variant, s)
    with p.storage():
        sec = time_blocks(p.step, s.device, s.warmup_iters, s.iters, s.repeats, s.clock)
    row = finish(p, sec, s)
    compiled = bool(p.compiled)
    del p
    release(s.device, compiled)
    return row
