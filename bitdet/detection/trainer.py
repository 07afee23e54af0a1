"""``BiTTrainer``: Detectron2's DefaultTrainer with BiT checkpoints, bf16 AMP and COCO
evaluation."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import weakref

from detectron2.data import build_detection_test_loader
from detectron2.engine import DefaultTrainer, create_ddp_model
from detectron2.engine import defaults as d2_defaults
from detectron2.evaluation import COCOEvaluator
from detectron2.modeling import build_model
from detectron2.utils import comm

from bitdet.detection.accumulation import check_accumulation
from bitdet.detection.checkpointer import BiTCheckpointer
from bitdet.detection.determinism import configure_determinism, repeatable_execution
from bitdet.detection.hooks import LossNormalizerState, NonFiniteLossStop, PreemptionCheckpointer
from bitdet.detection.mapper import BiTDatasetMapper, SkippingDatasetMapper
from bitdet.detection.precision import AutocastTrainer, autocast_dtype
from bitdet.detection.sampler import DataStreamState, build_resumable_train_loader, micro_batch_size
from bitdet.detection.speed import apply_speed_levers
from bitdet.log import FILE_LOGGER, LogStream

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
                logger.info(
                    "data share of rank %d of %d: first batch holds image ids %s",
                    comm.get_rank(),
                    comm.get_world_size(),
                    [d.get("image_id") for d in batch],
                )
            yield batch


class BiTTrainer(DefaultTrainer):
    """DefaultTrainer whose checkpointer reads BiT weights and writes atomically.

    Hooks, writers (console with ETA, ``metrics.json``, TensorBoard) and the training loop
    are Detectron2's, plus :class:`PreemptionCheckpointer` (SIGTERM or Ctrl-C: checkpoint, exit
    0 or 130), :class:`NonFiniteLossStop` (a NaN / inf loss stops every rank before the weights
    change) and :class:`DataStreamState` (the data stream's position, for an exact ``--resume``).
    With ``SOLVER.AMP.ENABLED`` the step autocasts to ``SOLVER.AMP.PRECISION`` on
    ``MODEL.DEVICE``, CPU included; with ``SOLVER.BATCH_SPLIT`` > 1 each process runs its
    share of ``SOLVER.IMS_PER_BATCH`` as micro-batches, one optimizer step per iteration
    (:class:`AutocastTrainer`). With several processes or micro-batches, RetinaNet's loss
    normalizer is counted over the whole step (:mod:`bitdet.detection.accumulation`).
    """

    def __init__(self, cfg) -> None:
        configure_determinism(cfg)
        batch_split, world_size = cfg.SOLVER.BATCH_SPLIT, comm.get_world_size()
        micro_batch_size(cfg.SOLVER.IMS_PER_BATCH, world_size, batch_split)
        check_accumulation(cfg.MODEL.META_ARCHITECTURE, batch_split)
        with _cpu_capable_ddp():
            super().__init__(cfg)
        if cfg.SOLVER.AMP.ENABLED or batch_split > 1 or world_size > 1:
            # DefaultTrainer picks SimpleTrainer or CUDA-only AMPTrainer; the step is replaced
            # as a whole, built from DefaultTrainer's public model / data_loader / optimizer.
            precision = autocast_dtype(cfg.SOLVER.AMP.PRECISION) if cfg.SOLVER.AMP.ENABLED else None
            self._trainer = AutocastTrainer(
                self.model,
                self.data_loader,
                self.optimizer,
                precision,
                cfg.MODEL.DEVICE,
                batch_split,
            )

    def build_hooks(self):
        # DefaultTrainer built a DetectionCheckpointer just before calling this; swap it
        # for ours before the PeriodicCheckpointer hook captures it.
        self.checkpointer = BiTCheckpointer(
            self._trainer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        # Last, so that a SIGTERM checkpoint follows the step's evaluation and log writes.
        # LossNormalizerState first: checkpoints taken after a step must see that step's value.
        return [
            LossNormalizerState(),
            NonFiniteLossStop(self.checkpointer),
            *super().build_hooks(),
            DataStreamState(),
            PreemptionCheckpointer(self.checkpointer),
        ]

    def train(self):
        with repeatable_execution():  # a resumed run computes as the uninterrupted one
            return super().train()

    @classmethod
    def build_model(cls, cfg):
        """Detectron2's ``build_model`` with the speed levers (channels-last, torch.compile, cached
        WS; each switched by its config key); the printout goes to the log file, not the console."""
        model = build_model(cfg)
        logging.getLogger(FILE_LOGGER).info("Model:\n%s", model)
        return apply_speed_levers(model, cfg)

    @classmethod
    def build_train_loader(cls, cfg):
        # Unreadable images are replaced and counted instead of ending the run; the stream
        # resumes exactly (bitdet.detection.sampler). A batch is this process's whole share of
        # the step; the step splits it into SOLVER.BATCH_SPLIT micro-batches.
        return _LogFirstBatch(
            build_resumable_train_loader(cfg, SkippingDatasetMapper(cfg, is_train=True))
        )

    @classmethod
    def build_test_loader(cls, cfg, dataset_name: str):
        # Sized as INPUT.AUGMENTATION says; every image is evaluated (none skipped).
        return build_detection_test_loader(
            cfg, dataset_name, mapper=BiTDatasetMapper(cfg, is_train=False)
        )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str, output_folder: str | None = None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        # The fast evaluator needs detectron2._C; pycocotools' evaluator gives the same AP.
        return COCOEvaluator(
            dataset_name, output_dir=output_folder, use_fast_impl=has_compiled_ops()
        )

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Detectron2's evaluation; what pycocotools prints (its progress and its own AP summary,
        the numbers of Detectron2's table on the console) goes to the log file."""
        stream = LogStream(logging.getLogger(FILE_LOGGER))
        try:
            with contextlib.redirect_stdout(stream):
                return super().test(cfg, model, evaluators)
        finally:
            stream.flush()
