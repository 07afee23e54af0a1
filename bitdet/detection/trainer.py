"""``BiTTrainer``: Detectron2's DefaultTrainer with BiT checkpoints, bf16 AMP and COCO evaluation."""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import weakref

import torch
from detectron2.data import build_detection_train_loader
from detectron2.engine import DefaultTrainer, create_ddp_model
from detectron2.engine import defaults as d2_defaults
from detectron2.evaluation import COCOEvaluator
from detectron2.modeling import build_model
from detectron2.utils import comm

from bitdet.detection.checkpointer import BiTCheckpointer
from bitdet.detection.hooks import PreemptionCheckpointer
from bitdet.detection.mapper import SkippingDatasetMapper
from bitdet.log import FILE_LOGGER

__all__ = ["BiTTrainer", "has_compiled_ops"]

logger = logging.getLogger(__name__)


def has_compiled_ops() -> bool:
    """Whether Detectron2's compiled extension (``detectron2._C``) is installed."""
    return importlib.util.find_spec("detectron2._C") is not None


def _create_ddp_model_any_device(model, **kwargs):
    """Detectron2's ``create_ddp_model``, without ``device_ids`` for a CPU model (gloo DDP):
    Detectron2 always passes ``[local_rank]``, which DDP rejects for CPU parameters."""
    if comm.get_world_size() > 1 and next(model.parameters()).device.type == "cpu":
        kwargs.setdefault("device_ids", None)
    return create_ddp_model(model, **kwargs)


@contextlib.contextmanager
def _cpu_capable_ddp():
    """DefaultTrainer's constructor wraps the model with the function above."""
    original = d2_defaults.create_ddp_model
    d2_defaults.create_ddp_model = _create_ddp_model_any_device
    try:
        yield
    finally:
        d2_defaults.create_ddp_model = original


class _LogFirstBatch:
    """Passes a data loader through, logging which images the first batch of this rank holds."""

    def __init__(self, loader) -> None:
        self.loader = loader

    def __getattr__(self, name: str):  # the wrapped loader's attributes (sampler, dataset, ...)
        return getattr(self.__dict__["loader"], name)

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i == 0:
                logger.info("data share of rank %d of %d: first batch holds image ids %s", comm.get_rank(),
                            comm.get_world_size(), [d.get("image_id") for d in batch])
            yield batch


class BiTTrainer(DefaultTrainer):
    """DefaultTrainer whose checkpointer reads BiT weights and writes atomically.

    Hooks, writers (console with ETA, ``metrics.json``, TensorBoard) and the training loop
    are Detectron2's, plus :class:`PreemptionCheckpointer` (SIGTERM: checkpoint and exit 0).
    With ``SOLVER.AMP.ENABLED`` autocast uses ``SOLVER.AMP.PRECISION``.
    """

    def __init__(self, cfg) -> None:
        with _cpu_capable_ddp():
            super().__init__(cfg)
        if cfg.SOLVER.AMP.ENABLED:
            self._trainer.precision = getattr(torch, cfg.SOLVER.AMP.PRECISION)
            if self._trainer.precision == torch.bfloat16:
                # bf16 has float32's exponent range: loss scaling only costs time.
                self._trainer.grad_scaler = torch.amp.GradScaler("cuda", enabled=False)

    def build_hooks(self):
        # DefaultTrainer built a DetectionCheckpointer just before calling this; swap it
        # for ours before the PeriodicCheckpointer hook captures it.
        self.checkpointer = BiTCheckpointer(self._trainer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        # Last, so that a SIGTERM checkpoint follows the step's evaluation and log writes.
        return [*super().build_hooks(), PreemptionCheckpointer(self.checkpointer)]

    @classmethod
    def build_model(cls, cfg):
        """Detectron2's ``build_model``; the model's printout goes to the log file, not the console."""
        model = build_model(cfg)
        logging.getLogger(FILE_LOGGER).info("Model:\n%s", model)
        return model

    @classmethod
    def build_train_loader(cls, cfg):
        # Unreadable images are skipped and counted instead of ending the run.
        return _LogFirstBatch(build_detection_train_loader(cfg, mapper=SkippingDatasetMapper(cfg, is_train=True)))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str, output_folder: str | None = None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        # The fast evaluator needs detectron2._C; pycocotools' evaluator gives the same AP.
        return COCOEvaluator(dataset_name, output_dir=output_folder, use_fast_impl=has_compiled_ops())
