"""Mixed-precision training step for Detectron2 on any device: ``AutocastTrainer``.

Detectron2's ``AMPTrainer`` requires CUDA and picks its autocast through
``torch.cuda.amp``. ``AutocastTrainer`` keeps its checkpoint format (``grad_scaler`` next to
the optimizer) and its step, with ``torch.autocast(device_type, dtype)``: bf16 autocast runs
on the CPU through the same code path as on a GPU. Loss scaling is used only for float16
(bf16 has float32's exponent range, so scaling would only cost time).
"""
from __future__ import annotations

import time

import torch
from detectron2.engine import AMPTrainer

from bitdet.utils.precision import precision_dtype

__all__ = ["AutocastTrainer", "autocast_dtype"]


def autocast_dtype(precision: str) -> torch.dtype:
    """The dtype named by ``SOLVER.AMP.PRECISION`` ("bf16" or "fp16")."""
    return precision_dtype(precision, "SOLVER.AMP.PRECISION", allowed=("bf16", "fp16"))


class AutocastTrainer(AMPTrainer):
    """``AMPTrainer`` with ``torch.autocast`` on ``device_type`` (``"cuda"`` or ``"cpu"``).

    Args:
        model, data_loader, optimizer: as for Detectron2's ``SimpleTrainer``.
        precision: the autocast dtype (``torch.bfloat16`` or ``torch.float16``).
        device_type: where the model runs, e.g. ``cfg.MODEL.DEVICE`` ("cuda:1" counts as "cuda").
    """

    def __init__(self, model, data_loader, optimizer, precision: torch.dtype, device_type: str) -> None:
        self.device_type = torch.device(device_type).type
        scaler = torch.amp.GradScaler(self.device_type, enabled=precision == torch.float16)
        super().__init__(model, data_loader, optimizer, grad_scaler=scaler, precision=precision)

    def run_step(self) -> None:
        assert self.model.training, "[AutocastTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        with torch.autocast(self.device_type, dtype=self.precision):
            loss_dict = self.model(data)
            if isinstance(loss_dict, torch.Tensor):
                loss_dict = {"total_loss": loss_dict}
            losses = sum(loss_dict.values())
        self.optimizer.zero_grad()
        self.grad_scaler.scale(losses).backward()
        self.after_backward()
        self._write_metrics(loss_dict, data_time)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
