"""``BiTTrainer``: Detectron2's DefaultTrainer with BiT checkpoints, bf16 AMP and COCO evaluation."""
from __future__ import annotations

import importlib.util
import os
import weakref

import torch
from detectron2.data import build_detection_train_loader
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator

from bitdet.detection.checkpointer import BiTCheckpointer
from bitdet.detection.hooks import PreemptionCheckpointer
from bitdet.detection.mapper import SkippingDatasetMapper
from bitdet.detection.speed import apply_speed_levers

__all__ = ["BiTTrainer", "has_compiled_ops"]


def has_compiled_ops() -> bool:
    """Whether Detectron2's compiled extension (``detectron2._C``) is installed."""
    return importlib.util.find_spec("detectron2._C") is not None


class BiTTrainer(DefaultTrainer):
    """DefaultTrainer whose checkpointer reads BiT weights and writes atomically.

    Hooks, writers (console with ETA, ``metrics.json``, TensorBoard) and the training loop
    are Detectron2's, plus :class:`PreemptionCheckpointer` (SIGTERM: checkpoint and exit 0).
    With ``SOLVER.AMP.ENABLED`` autocast uses ``SOLVER.AMP.PRECISION``.
    """

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        if cfg.SOLVER.AMP.ENABLED:
            self._trainer.precision = getattr(torch, cfg.SOLVER.AMP.PRECISION)
            if self._trainer.precision == torch.bfloat16:
                # bf16 has float32's exponent range: loss scaling only costs time.
                self._trainer.grad_scaler = torch.amp.GradScaler("cuda", enabled=False)

    @classmethod
    def build_model(cls, cfg):
        # Channels-last, torch.compile and cached WS, each switched by its config key.
        return apply_speed_levers(super().build_model(cfg), cfg)

    def build_hooks(self):
        # DefaultTrainer built a DetectionCheckpointer just before calling this; swap it
        # for ours before the PeriodicCheckpointer hook captures it.
        self.checkpointer = BiTCheckpointer(self._trainer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        # Last, so that a SIGTERM checkpoint follows the step's evaluation and log writes.
        return [*super().build_hooks(), PreemptionCheckpointer(self.checkpointer)]

    @classmethod
    def build_train_loader(cls, cfg):
        # Unreadable images are skipped and counted instead of ending the run.
        return build_detection_train_loader(cfg, mapper=SkippingDatasetMapper(cfg, is_train=True))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str, output_folder: str | None = None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        # The fast evaluator needs detectron2._C; pycocotools' evaluator gives the same AP.
        return COCOEvaluator(dataset_name, output_dir=output_folder, use_fast_impl=has_compiled_ops())
