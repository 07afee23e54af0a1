"""Detectron2's training step on any device, in mixed precision and over micro-batches:
``AutocastTrainer``.

Detectron2's ``AMPTrainer`` requires CUDA and picks its autocast through
``torch.cuda.amp``. ``AutocastTrainer`` keeps its checkpoint format (``grad_scaler`` next to
the optimizer) and its step, with ``torch.autocast(device_type, dtype)``: bf16 autocast runs
on the CPU through the same code path as on a GPU. Loss scaling is used only for float16
(bf16 has float32's exponent range, so scaling would only cost time). With ``precision``
``None`` the step runs in float32.

The step runs this process's batch as ``batch_split`` micro-batches (gradient accumulation)
and takes one optimizer step; :mod:`bitdet.detection.accumulation` makes it the whole-batch step.
"""

from __future__ import annotations

import contextlib
import time
from typing import Dict, Optional

import torch
from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.utils import comm
from torch.nn.parallel import DistributedDataParallel

from bitdet.detection.accumulation import accumulation_step, one_scalar_set_per_step
from bitdet.detection.sampler import split_micro_batches
from bitdet.utils.precision import precision_dtype

__all__ = ["AutocastTrainer", "autocast_dtype"]


def autocast_dtype(precision: str) -> torch.dtype:
    """The dtype named by ``SOLVER.AMP.PRECISION`` ("bf16" or "fp16")."""
    return precision_dtype(precision, "SOLVER.AMP.PRECISION", allowed=("bf16", "fp16"))


class AutocastTrainer(AMPTrainer):
    """``AMPTrainer`` with ``torch.autocast`` on ``device_type`` (``"cuda"`` or ``"cpu"``) and
    micro-batches.

    Each iteration reads this process's batch, runs it as ``batch_split`` micro-batches
    (gradients accumulate; DDP synchronises only on the last), writes one set of losses (the
    step's) and takes one optimizer step, so hooks see one iteration per step.

    Args:
        model, data_loader, optimizer: as for Detectron2's ``SimpleTrainer``.
        precision: the autocast dtype (``torch.bfloat16`` or ``torch.float16``); ``None``: float32.
        device_type: where the model runs, e.g. ``cfg.MODEL.DEVICE`` ("cuda:1" counts as "cuda").
        batch_split: micro-batches per step (``SOLVER.BATCH_SPLIT``); must divide the batch.
    """

    def __init__(
        self,
        model,
        data_loader,
        optimizer,
        precision: Optional[torch.dtype],
        device_type: str,
        batch_split: int = 1,
    ) -> None:
        self.device_type = torch.device(device_type).type
        scaler = torch.amp.GradScaler(self.device_type, enabled=precision == torch.float16)
        super().__init__(model, data_loader, optimizer, grad_scaler=scaler, precision=precision)
        self.batch_split = batch_split

    def _autocast(self):
        if self.precision is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.precision)

    def _gradient_sync(self, last: bool):
        """DDP all-reduces gradients in the last micro-batch's backward only."""
        if last or not isinstance(self.model, DistributedDataParallel):
            return contextlib.nullcontext()
        return self.model.no_sync()

    def run_step(self) -> None:
        assert self.model.training, "[AutocastTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        micro_batches = split_micro_batches(data, self.batch_split)
        detector = getattr(self.model, "module", self.model)  # DDP wraps the detector
        self.optimizer.zero_grad()
        step_losses: Dict[str, torch.Tensor] = {}
        # With several micro-batches, what the model logs reaches the storage once per step.
        scalars = one_scalar_set_per_step() if len(micro_batches) > 1 else contextlib.nullcontext()
        with (
            scalars as micro_storage,
            accumulation_step(detector, micro_batches, comm.get_world_size()) as weight,
        ):
            for i, batch in enumerate(micro_batches):
                logged = micro_storage if micro_storage is not None else contextlib.nullcontext()
                with self._gradient_sync(last=i == len(micro_batches) - 1):
                    with logged, self._autocast():
                        loss_dict = self.model(batch)
                        if isinstance(loss_dict, torch.Tensor):
                            loss_dict = {"total_loss": loss_dict}
                        if weight != 1.0:
                            loss_dict = {name: loss * weight for name, loss in loss_dict.items()}
                        losses = sum(loss_dict.values())
                    self.grad_scaler.scale(losses).backward()
                for name, loss in loss_dict.items():
                    loss = loss.detach()
                    step_losses[name] = step_losses[name] + loss if name in step_losses else loss
        self.after_backward()
        self._write_metrics(step_losses, data_time)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()

    def load_state_dict(self, state_dict) -> None:
        if "grad_scaler" in state_dict or self.grad_scaler.is_enabled():
            super().load_state_dict(state_dict)
        else:  # a float32 checkpoint of Detectron2's SimpleTrainer
            SimpleTrainer.load_state_dict(self, state_dict)
