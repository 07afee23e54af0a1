"""``ClassifierTrainer``: SGD training of an image classifier on Detectron2's engine.

Built on ``detectron2.engine.TrainerBase`` (hooks, ``EventStorage``) with Detectron2's writers
(console line with ETA, ``metrics.json``, TensorBoard). Adds what upstream pretraining and
BiT fine-tuning need: DDP, gradient accumulation, bf16 autocast, channels_last, optional
``torch.compile``, exact resume, SIGTERM / Ctrl-C handling (:mod:`bitdet.engine.stop_signals`) and a
non-finite-loss stop.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch
from detectron2.engine import HookBase, TrainerBase, hooks
from detectron2.utils import comm
from detectron2.utils.events import (
    CommonMetricPrinter,
    EventStorage,
    JSONWriter,
    TensorboardXWriter,
)
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, IterableDataset

from bitdet.engine.checkpoint import TrainingCheckpointer, restore_rng_state
from bitdet.engine.data import SeededDataset, StepBatchSampler, collate_skip_none, step_seed
from bitdet.engine.losses import build_loss
from bitdet.engine.stop_signals import CheckpointOnStop, ignore_stop_signals
from bitdet.errors import ConfigError, DataError, NonFiniteError
from bitdet.models.fast import CompiledWithFallback
from bitdet.utils.precision import precision_dtype

__all__ = ["ClassifierTrainer", "choose_batch_split"]

logger = logging.getLogger(__name__)

BatchHook = Callable[
    [torch.Tensor, torch.Tensor, torch.Generator], Tuple[torch.Tensor, torch.Tensor]
]
_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def choose_batch_split(
    step_fn: Callable[[int], None],
    local_batch: int,
    start: int = 1,
) -> int:
    """Smallest power-of-two split of ``local_batch`` whose micro-batch survives ``step_fn``.

    Args:
        step_fn: runs one forward/backward on a micro-batch of the given size; raises
            ``torch.cuda.OutOfMemoryError`` when it does not fit.
        local_batch: this rank's samples per step.
        start: first split to try.

    Returns:
        The number of micro-batches per step.

    Raises:
        RuntimeError: even a micro-batch of one sample does not fit.
    """
    split = start
    while True:
        micro = math.ceil(local_batch / split)
        try:
            step_fn(micro)
            return split
        except torch.cuda.OutOfMemoryError:
            if micro == 1:
                raise RuntimeError(
                    "out of memory with a micro-batch of 1 sample; use a smaller model, "
                    "lower resolution or precision='bf16'"
                ) from None
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            logger.info(
                "micro-batch of %d does not fit in memory; trying %d",
                micro,
                math.ceil(local_batch / (split * 2)),
            )
            split *= 2


class _CheckpointHook(HookBase):
    """Periodic checkpoint (and one at the end); only the main process writes."""

    def __init__(self, period: int) -> None:
        self.period = period

    def after_step(self) -> None:
        done = self.trainer.iter + 1
        if (self.period > 0 and done % self.period == 0) or done == self.trainer.max_iter:
            self.trainer.save_checkpoint(done)


class _EvalHook(HookBase):
    """Runs ``evaluate(model)`` on the main process every ``period`` steps and at the end."""

    def __init__(self, period: int, evaluate: Callable[[torch.nn.Module], Dict[str, Any]]) -> None:
        self.period, self.evaluate = period, evaluate

    def _run(self, done: int) -> None:
        trainer = self.trainer
        if comm.is_main_process():
            model = trainer.model
            was_training = model.training
            model.eval()
            try:
                with torch.no_grad():
                    results = dict(self.evaluate(model) or {})
            finally:
                model.train(was_training)
            scalars = {
                f"eval/{k}": float(v)
                for k, v in results.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            }
            trainer.storage.put_scalars(**scalars, smoothing_hint=False)
            trainer.last_eval = results
            logger.info(
                "evaluation after %d steps: %s",
                done,
                ", ".join(f"{k[5:]}={v:.4g}" for k, v in scalars.items()),
            )
        comm.synchronize()  # the other ranks wait instead of running ahead

    def after_step(self) -> None:
        done = self.trainer.iter + 1
        if self.period > 0 and done % self.period == 0 and done != self.trainer.max_iter:
            self._run(done)

    def after_train(self) -> None:
        if self.trainer.finished:
            self._run(self.trainer.max_iter)


class ClassifierTrainer(TrainerBase):
    """SGD (momentum) training of a classifier; see :mod:`bitdet.engine` for an example.

    Args:
        model: the classifier (e.g. a bitdet ``ResNetV2`` with weights loaded), on CPU; the
            trainer moves it to ``device`` and wraps it in DDP when distributed.
        train_set: map-style dataset of ``(image CHW float tensor, target)``; target is a
            class index or a multi-hot float vector. A sample (or image) ``None`` is skipped.
        output_dir: checkpoints, ``metrics.json``, TensorBoard events.
        max_steps: optimizer steps to train for.
        global_batch: samples per optimizer step over all processes.
        lr_at: ``lr_at(step) -> lr`` for the optimizer step ``step`` (0-based).
        loss: ``"softmax"`` (single label or soft targets) or ``"sigmoid"`` (multi-label).
        momentum, weight_decay: SGD; weight decay applies to conv/linear weights only (not
            to norm parameters or biases).
        batch_split: micro-batches per step (gradient accumulation); ``"auto"`` finds the
            smallest power-of-two split that fits in CUDA memory before training (1 on CPU).
        precision: ``"fp32"`` or ``"bf16"`` (autocast; loss and optimizer in fp32).
        channels_last: NHWC memory format for the model and its inputs.
        compile: wrap the model in ``torch.compile``; on a compile error (forward or the
            first step's backward) the trainer logs it and continues in eager mode
            (:class:`bitdet.models.fast.CompiledWithFallback`).
        batch_hook: ``(images, targets, generator) -> (images, targets)`` on each CPU batch,
            e.g. MixUp; ``generator`` is seeded from (seed, step, rank).
        evaluate: ``evaluate(model) -> dict``, run on the main process every ``eval_period``
            steps (0: only at the end); its numbers are logged as ``eval/<key>``.
        checkpoint_period: steps between checkpoints (a checkpoint is also written at the end).
        keep_last: periodic checkpoints to keep (0: all).
        log_period: steps between console / JSON / TensorBoard writes.
        seed: base seed of data order, augmentation and batch hooks.
        num_workers: DataLoader worker processes per rank.
        device: default ``cuda:<local rank>`` when CUDA is available, else CPU.
        meta: plain values stored in every checkpoint (e.g. the model name).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        train_set: Dataset,
        *,
        output_dir: Union[str, os.PathLike],
        max_steps: int,
        global_batch: int,
        lr_at: Callable[[int], float],
        loss: str = "softmax",
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        batch_split: Union[int, str] = 1,
        precision: str = "fp32",
        channels_last: bool = False,
        compile: bool = False,
        batch_hook: Optional[BatchHook] = None,
        evaluate: Optional[Callable[[torch.nn.Module], Dict[str, Any]]] = None,
        eval_period: int = 0,
        checkpoint_period: int = 1000,
        keep_last: int = 3,
        log_period: int = 20,
        seed: int = 0,
        num_workers: int = 2,
        device: Optional[Union[str, torch.device]] = None,
        meta: Optional[Dict[str, Any]] = None,
    ) -> None:
        super().__init__()
        self.rank, self.world_size = comm.get_rank(), comm.get_world_size()
        if max_steps <= 0:
            raise ConfigError(f"max_steps must be positive, got {max_steps}")
        if global_batch % self.world_size:
            raise ConfigError(
                f"global_batch {global_batch} must be divisible by the {self.world_size} processes"
            )
        self.local_batch = global_batch // self.world_size
        if batch_split != "auto" and (
            not isinstance(batch_split, int) or not 1 <= batch_split <= self.local_batch
        ):
            raise ConfigError(
                f"batch_split must be 'auto' or an int in [1, {self.local_batch}] "
                f"(the per-process batch), got {batch_split!r}"
            )
        # SOLVER.AMP in configs (bitdet.engine.config.engine_precision)
        precision_dtype(precision, "precision", allowed=tuple(_PRECISIONS))
        # A streamed training set (an IterableDataset with ``for_rank``, e.g. bitdet's
        # StreamingShards) gives each rank its own endless, resumable stream instead.
        self.streaming = isinstance(train_set, IterableDataset)
        if self.streaming and not hasattr(train_set, "for_rank"):
            raise TypeError(
                f"{type(train_set).__name__} is an IterableDataset without for_rank(rank, "
                "world_size, local_batch, start_step, seed) (returning a stream with "
                "describe_share(num_workers)): the trainer cannot split or resume it"
            )
        if not self.streaming and len(train_set) == 0:  # type: ignore[arg-type]
            raise DataError("the training set is empty")
        self.loss_fn = build_loss(loss)

        if device is None:
            device = f"cuda:{comm.get_local_rank()}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.model.train()

        decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim > 1]
        no_decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim <= 1]
        self.optimizer = torch.optim.SGD(
            [
                {"params": decay, "weight_decay": weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=0.0,
            momentum=momentum,
        )
        self.ddp: Optional[DistributedDataParallel] = None
        if self.world_size > 1:
            # broadcast_buffers=False: GroupNorm has no buffers to broadcast.
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids, broadcast_buffers=False)
        self._module: torch.nn.Module = self.ddp if self.ddp is not None else self.model
        self._compiled: Optional[CompiledWithFallback] = None
        if compile:  # dynamic=None: torch.compile's default (dynamic shapes after a size change)
            self._compiled = CompiledWithFallback(self._module, type(model).__name__, dynamic=None)
        self._compile_verified = False

        self.train_set = train_set
        self.output_dir = Path(output_dir)
        self.max_iter = self.max_steps = int(max_steps)
        self.global_batch, self.lr_at = int(global_batch), lr_at
        self.batch_split = batch_split
        self.autocast_dtype = _PRECISIONS[precision]
        self.precision = precision
        self.batch_hook, self.seed, self.num_workers = batch_hook, int(seed), int(num_workers)
        self.meta = dict(meta or {})
        self.checkpointer = TrainingCheckpointer(self.output_dir, keep_last)
        self.last_eval: Dict[str, Any] = {}
        self.finished = False
        self.stop_hook = CheckpointOnStop(self._save_stopped, lambda done: f"step {done}")
        self._last_saved_step = -1
        self._skipped_total = 0
        self._image_shape: Optional[torch.Size] = None
        self._timing = [0.0, 0]  # seconds and images over the run, excluding the first steps

        writers = []
        if comm.is_main_process():
            self.output_dir.mkdir(parents=True, exist_ok=True)
            writers = [
                CommonMetricPrinter(self.max_steps),
                JSONWriter(str(self.output_dir / "metrics.json")),
            ]
            try:
                importlib.import_module("torch.utils.tensorboard")
                writers.append(TensorboardXWriter(str(self.output_dir)))
            except ImportError as e:
                logger.warning(
                    "TensorBoard events disabled (%s); install `tensorboard` for them", e
                )
        self.register_hooks(
            [
                hooks.IterationTimer(),
                _CheckpointHook(checkpoint_period),
                _EvalHook(eval_period, evaluate) if evaluate is not None else None,
                hooks.PeriodicWriter(writers, period=log_period) if writers else None,
                self.stop_hook,  # last: a stop step's checkpoint follows its evaluation and logs
            ]
        )

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, step: int) -> Optional[Path]:
        """Write the checkpoint after ``step`` completed steps (only the main process writes)."""
        path = None
        if step != self._last_saved_step and comm.is_main_process():
            path = self.checkpointer.save(
                step, self.model, self.optimizer, meta=self.meta, data=self._data_layout()
            )
        self._last_saved_step = step
        return path

    def _save_stopped(self, step: int) -> Optional[Path]:
        """:meth:`save_checkpoint` for a stop: the checkpoint's path (main process), None
        elsewhere."""
        path = self.save_checkpoint(step)
        return (path or self.checkpointer.path_for(step)) if comm.is_main_process() else None

    def _data_layout(self) -> Dict[str, int]:
        """What the data stream depends on besides (seed, step), stored in each checkpoint."""
        layout = {"world_size": self.world_size}
        if self.streaming:  # every (process, worker) pair reads its own shards
            layout["num_workers"] = self.num_workers
        return layout

    def _check_data_layout(self, saved: Dict[str, int], path: Path) -> None:
        """Resume only where the data stream continues as the interrupted run's would have.

        The global batch of a map-style set is a function of (seed, step) alone, split in
        contiguous slices: any process count reads the same samples with the same augmentations.
        Streamed shards and a batch hook (MixUp pairs samples within a process's batch) are not.
        """
        world, workers = (
            saved.get("world_size", self.world_size),
            saved.get("num_workers", self.num_workers),
        )
        if world == self.world_size and (not self.streaming or workers == self.num_workers):
            return
        was, now = f"{world} process(es)", f"{self.world_size}"
        if self.streaming or self.batch_hook is not None:
            if self.streaming:
                was, now = f"{was} x {workers} data-loader worker(s)", f"{now} x {self.num_workers}"
                why = "each process and worker streams its own shards"
            else:
                why = "the batch hook (e.g. MixUp) mixes samples within each process's batch"
            raise ConfigError(
                f"{path} was written by a run of {was} and this run has {now}: {why}, so the data "
                f"would differ from the interrupted run's; resume with {world} process(es)"
                + (f" and DATALOADER.NUM_WORKERS {workers}" if self.streaming else "")
                + ", or start over in a new OUTPUT_DIR"
            )
        logger.warning(
            "resuming a run of %d process(es) with %d: every step reads the same samples and "
            "augmentations (the gradient is summed in another order, so the weights differ in "
            "rounding)",
            world,
            self.world_size,
        )

    def resume(self) -> int:
        """Load the newest readable checkpoint of ``output_dir`` if any; returns the step to start
        at.

        Raises:
            CheckpointError: checkpoints exist but none reads whole.
            ConfigError: the checkpoint's data stream cannot continue with this process count.
        """
        path = self.checkpointer.resume_file()
        if path is None:
            logger.info("no checkpoint in %s: training from step 0", self.output_dir)
            return 0
        state = self.checkpointer.load(path)
        self._check_data_layout(state.get("data", {}), path)
        self.model.load_state_dict(state["model"])
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
        else:
            logger.warning("%s has no optimizer state: momentum restarts from zero", path)
        if "rng" in state:
            restore_rng_state(state["rng"])
        self._last_saved_step = int(state["step"])
        logger.info("resumed from %s at step %d", path, state["step"])
        return int(state["step"])

    # ------------------------------------------------------------------ training loop
    def train(self, resume: bool = True) -> Dict[str, Any]:  # type: ignore[override]
        """Train to ``max_steps`` (resuming from ``output_dir`` when ``resume``).

        Returns:
            ``{"step", "loss", "lr", "img_per_s", "train_time_s", "skipped_images", "eval"}``
            (``eval``: the last ``evaluate`` result, ``{}`` without one; ``loss``, ``lr`` and
            ``img_per_s`` are None when no step ran in this call, e.g. resuming a finished run).

        Raises:
            FloatingPointError: non-finite loss (names the step; parameters are not updated
                and the last checkpoint stays intact).
            TrainingStopped: after SIGTERM (status 0) or Ctrl-C (status 130), once the
                checkpoint of the current step is saved (:mod:`bitdet.engine.stop_signals`).
        """
        start = self.resume() if resume else 0
        self.start_iter = self.iter = start
        if self.batch_split == "auto":
            self.batch_split = self._auto_batch_split()
        loader_options = dict(
            num_workers=self.num_workers,
            collate_fn=collate_skip_none,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=ignore_stop_signals,
        )
        if self.streaming:
            stream = self.train_set.for_rank(
                self.rank, self.world_size, self.local_batch, start, self.seed
            )
            loader = DataLoader(stream, batch_size=self.local_batch, **loader_options)
            size = getattr(self.train_set, "num_samples", None)
            self.epoch_at = lambda step: step * self.global_batch / size if size else float("nan")
            share = stream.describe_share(self.num_workers)
        else:
            sampler = StepBatchSampler(
                len(self.train_set),
                self.global_batch,
                self.seed,
                self.rank,
                self.world_size,
                start,
                self.max_steps,
            )
            self.epoch_at = sampler.epoch_at
            loader = DataLoader(
                SeededDataset(self.train_set), batch_sampler=sampler, **loader_options
            )
            first = [index for index, _ in sampler.batch(start)] if start < self.max_steps else []
            share = f"step {start} reads samples {first}"
        self._data_iter = iter(loader)
        logger.info(
            "training steps %d..%d: global batch %d (%d per process, %s micro-batches), %s, %d "
            "process(es)",
            start,
            self.max_steps,
            self.global_batch,
            self.local_batch,
            self.batch_split,
            self.precision,
            self.world_size,
        )
        # each rank logs (log.txt.rank<r>) which data it reads
        logger.info("data share of rank %d of %d: %s", self.rank, self.world_size, share)
        t_start = time.perf_counter()
        with EventStorage(start) as self.storage:
            try:
                self.before_train()
                for self.iter in range(start, self.max_steps):
                    self.before_step()
                    self.run_step()
                    self.after_step()
                self.iter = self.max_steps
                self.finished = True
            except Exception:
                logger.exception("training failed at step %d", self.iter)
                raise
            finally:
                self.after_train()
                del self._data_iter
        elapsed = time.perf_counter() - t_start
        latest = self.storage.latest()
        return {
            "step": self.max_steps,
            "loss": latest["loss"][0] if "loss" in latest else None,
            "lr": latest["lr"][0] if "lr" in latest else None,
            "img_per_s": self._timing[1] / self._timing[0] if self._timing[0] > 0 else None,
            "train_time_s": elapsed,
            "skipped_images": self._skipped_total,
            "eval": self.last_eval,
        }

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _auto_batch_split(self) -> int:
        if self.device.type != "cuda":
            logger.info("batch_split='auto': 1 on %s (no memory probe off CUDA)", self.device)
            return 1
        x0, y0 = (
            next(s for s in self.train_set if s is not None)
            if self.streaming
            else SeededDataset(self.train_set)[(0, 0)]
        )
        y = torch.as_tensor(y0)

        def probe(micro: int) -> None:
            x = (
                torch.as_tensor(x0)[None]
                .expand(micro, *x0.shape)
                .to(self.device, memory_format=self.memory_format)
            )
            t = y[None].expand(micro, *y.shape).to(self.device)
            with self._autocast():
                out = self.model(x)  # the bare model: a probe must not trigger DDP's all-reduce
            self.loss_fn(out, t).backward()
            self.model.zero_grad(set_to_none=True)

        split = choose_batch_split(probe, self.local_batch)
        if self.world_size > 1:  # all ranks must accumulate the same way
            t = torch.tensor([split], device=self.device)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            split = int(t.item())
        torch.cuda.empty_cache()
        logger.info(
            "batch_split='auto': %d micro-batch(es) of %d",
            split,
            math.ceil(self.local_batch / split),
        )
        return split

    def _forward_backward(self, images: torch.Tensor, targets: torch.Tensor) -> float:
        """Accumulate gradients over micro-batches; returns the batch's mean loss."""
        n = len(images)
        micro = math.ceil(n / int(self.batch_split))
        chunks = list(zip(images.split(micro), targets.split(micro)))
        total = 0.0
        for i, (x, t) in enumerate(chunks):
            last = i == len(chunks) - 1
            sync = contextlib.nullcontext() if self.ddp is None or last else self.ddp.no_sync()
            with sync:
                with self._autocast():
                    out = self._compiled(x) if self._compiled is not None else self._module(x)
                loss = self.loss_fn(out, t)
                # Weighted by size so that the step equals one full-batch step (same mean).
                (loss * (len(x) / n)).backward()
            total += loss.item() * len(x) / n
        return total

    def run_step(self) -> None:
        step = self.iter
        t0 = time.perf_counter()
        images, targets, skipped = next(self._data_iter)
        data_time = time.perf_counter() - t0
        lr = float(self.lr_at(step))
        if not math.isfinite(lr) or lr < 0:
            raise ConfigError(
                f"lr_at({step}) returned {lr}; learning rates must be finite and >= 0"
            )
        for group in self.optimizer.param_groups:
            group["lr"] = lr

        empty = images.numel() == 0
        if empty:
            # Every sample of this rank's batch was unusable; still take part in DDP's
            # all-reduce (with zero weight) so the other ranks do not wait forever.
            if self._image_shape is None:
                raise RuntimeError(
                    f"step {step}: every image of the first batch is unusable; check the data"
                )
            images = torch.zeros(1, *self._image_shape)
            targets = self._last_target[:1]
        else:
            self._image_shape, self._last_target = images.shape[1:], targets
            if self.batch_hook is not None:
                gen = torch.Generator().manual_seed(step_seed(self.seed, step, self.rank))
                images, targets = self.batch_hook(images, targets, gen)
        images = images.to(self.device, non_blocking=True).contiguous(
            memory_format=self.memory_format
        )
        targets = targets.to(self.device, non_blocking=True)

        self.optimizer.zero_grad(set_to_none=True)
        try:
            loss = self._step_with_compile_fallback(images, targets, empty)
        except torch.cuda.OutOfMemoryError as e:
            raise RuntimeError(
                f"CUDA out of memory at step {step} with micro-batches of "
                f"{math.ceil(len(images) / int(self.batch_split))}: raise batch_split "
                f"(now {self.batch_split}) or use batch_split='auto'"
            ) from e
        # One all-reduce for everything the ranks must agree on: loss, skips, stop signals.
        stats = torch.tensor(
            [
                0.0 if empty else loss,
                float(skipped),
                float(not empty),
                *self.stop_hook.signals.pending(),
            ],
            dtype=torch.float64,
            device=self.device,
        )
        if self.world_size > 1:
            torch.distributed.all_reduce(stats)
        loss_sum, skipped_all, contributing, *stops = stats.tolist()
        mean_loss = loss_sum / max(contributing, 1.0)
        if not math.isfinite(mean_loss):
            last = self.checkpointer.latest()
            raise NonFiniteError(
                f"loss is {mean_loss} at step {step} (lr {lr:.4g}): the weights were not updated; "
                f"last good checkpoint: {last or 'none yet'}. Lower the learning rate or check "
                "the data"
            )
        self.optimizer.step()
        self.stop_hook.summed(stops)
        self._skipped_total += int(skipped_all)
        if skipped_all:
            logger.warning(
                "step %d: skipped %d unusable image(s) (%d so far)",
                step,
                skipped_all,
                self._skipped_total,
            )

        seconds = time.perf_counter() - t0
        if step - self.start_iter >= 2:  # the first steps include start-up and compilation
            self._timing[0] += seconds
            self._timing[1] += self.global_batch
        self.storage.put_scalars(
            loss=mean_loss,
            lr=lr,
            data_time=data_time,
            img_per_s=self.global_batch / seconds,
            epoch=self.epoch_at(step + 1),
            skipped_images=self._skipped_total,
            smoothing_hint=False,
        )  # raw values in metrics.json / TensorBoard; the console smooths

    def _step_with_compile_fallback(
        self, images: torch.Tensor, targets: torch.Tensor, empty: bool
    ) -> float:
        if empty:  # a zero-weight step that still reaches DDP's reducer
            with self._autocast():
                out = self._module(images)
            (self.loss_fn(out, targets) * 0.0).backward()
            return 0.0
        if self._compiled is None or self._compiled.failed or self._compile_verified:
            return self._forward_backward(images, targets)
        try:  # the first compiled step: the compiled backward can fail too
            loss = self._forward_backward(images, targets)
            self._compile_verified = True
            return loss
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as e:
            self._compiled.fall_back(e)
            self.optimizer.zero_grad(set_to_none=True)
            return self._forward_backward(images, targets)
