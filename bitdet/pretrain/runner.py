"""One pretraining run from a config: data, model, schedule, trainer, exports."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from detectron2.utils import comm
from torch.utils.data import Dataset, IterableDataset

from bitdet.config import resolve_device
from bitdet.engine import ClassifierTrainer, evaluate_classifier
from bitdet.engine.config import engine_precision
from bitdet.engine.run_folder import open_run
from bitdet.errors import ConfigError
from bitdet.factory import create_model
from bitdet.models.resnetv2 import ResNetV2
from bitdet.pretrain.data import build_dataset
from bitdet.pretrain.schedule import StepSchedule, scaled_lr
from bitdet.utils.io import write_json
from bitdet.weights import load_weights, save_checkpoint, state_dict_to_npz, write_npz

__all__ = ["build_datasets", "build_model", "build_schedule", "evaluator", "run_pretraining"]

logger = logging.getLogger(__name__)


def build_model(cfg) -> ResNetV2:
    """The ``MODEL.BIT.VARIANT`` network with ``MODEL.NUM_CLASSES`` outputs, head bias, optional
    weights and ``MODEL.ACTIVATION_CHECKPOINTING``."""
    model = create_model(
        cfg.MODEL.BIT.VARIANT, num_classes=cfg.MODEL.NUM_CLASSES, head_bias=cfg.MODEL.HEAD_BIAS
    )
    model.set_grad_checkpointing(cfg.MODEL.ACTIVATION_CHECKPOINTING)
    if cfg.MODEL.WEIGHTS:  # any format, an hf-hub: id or an official name (BiT-M-R50x1)
        load_weights(model, cfg.MODEL.WEIGHTS, variant_option="MODEL.BIT.VARIANT")
    return model


def build_schedule(cfg, dataset_size: int) -> StepSchedule:
    """Steps and lr from ``SOLVER.*``: epochs -> steps via the dataset size, unless MAX_ITER > 0."""
    s = cfg.SOLVER
    lr = scaled_lr(s.BASE_LR_PER_256, s.IMS_PER_BATCH)
    if s.MAX_ITER > 0:
        return StepSchedule(
            lr, s.WARMUP_ITERS, tuple(int(b) for b in s.DECAY_STEPS), s.DECAY_FACTOR, s.MAX_ITER
        )
    if s.EPOCHS <= 0:
        raise ConfigError(
            f"SOLVER.EPOCHS is {s.EPOCHS} and SOLVER.MAX_ITER is {s.MAX_ITER}: no training length; "
            "set SOLVER.EPOCHS > 0 (decays at SOLVER.DECAY_EPOCHS) or SOLVER.MAX_ITER > 0 "
            "(decays at SOLVER.DECAY_STEPS)"
        )
    bad = [e for e in s.DECAY_EPOCHS if not 0 < e < s.EPOCHS]
    if bad:
        raise ConfigError(
            f"SOLVER.DECAY_EPOCHS {bad} are outside (0, SOLVER.EPOCHS = {s.EPOCHS}): "
            "list the epochs at which the lr decays, each below SOLVER.EPOCHS"
        )
    return StepSchedule.from_epochs(
        lr, s.WARMUP_ITERS, s.EPOCHS, s.DECAY_EPOCHS, dataset_size, s.IMS_PER_BATCH, s.DECAY_FACTOR
    )


def evaluator(cfg, test_set: Dataset):
    """``evaluate(model) -> metrics`` on the held-out set (top-1/top-5, or precision@1/mAP)."""

    def evaluate(model: torch.nn.Module) -> Dict[str, Any]:
        return evaluate_classifier(
            model,
            test_set,
            batch_size=cfg.TEST.IMS_PER_BATCH,
            multilabel=cfg.DATASETS.MULTILABEL,
            num_workers=min(cfg.DATALOADER.NUM_WORKERS, 4),
            precision=engine_precision(cfg),
            cache_ws=cfg.TEST.CACHE_WS,
        )

    return evaluate


def build_datasets(cfg) -> Tuple[Dataset, Optional[Dataset]]:
    """``(train_set, test_set)`` from ``DATASETS.TRAIN`` / ``DATASETS.TEST`` (test None when its
    NAME is "")."""
    train_set = build_dataset(cfg.DATASETS.TRAIN, train=True, cfg=cfg)
    test_set = (
        build_dataset(cfg.DATASETS.TEST, train=False, cfg=cfg) if cfg.DATASETS.TEST.NAME else None
    )
    return train_set, test_set


FINAL_FILES = ("final.json", "model_final.pth", "model_final.npz")


def run_pretraining(cfg, force: bool = False) -> Dict[str, Any]:
    """Train per ``cfg``; the main process writes ``model_final.pth``, ``model_final.npz``,
    ``final.json``.

    ``OUTPUT_DIR`` opens by :func:`bitdet.engine.run_folder.open_run`: a run of this config
    continues from its newest checkpoint, a finished one (``final.json``) is reported as is, a
    run of another config is refused.

    Args:
        cfg: the pretraining config.
        force: start over: delete the checkpoints and final files first.

    Returns:
        The contents of ``final.json``: held-out metrics (scalars), images/s, steps, wall time.
    """
    wall_start = time.perf_counter()
    out = Path(cfg.OUTPUT_DIR)
    finished = open_run(out, cfg, "final.json", force=force, clear=FINAL_FILES)
    if finished is not None:
        return finished
    train_set, test_set = build_datasets(cfg)
    size = len(train_set) if not isinstance(train_set, IterableDataset) else None
    if size is None and cfg.SOLVER.MAX_ITER <= 0:
        raise ConfigError(
            f"the streamed shards {cfg.DATASETS.TRAIN.ROOT!r} have no known size to turn "
            "SOLVER.EPOCHS into steps: set SOLVER.MAX_ITER"
        )
    schedule = build_schedule(cfg, size or 0)
    logger.info(
        "pretraining %s on %s images (%s): %s",
        cfg.MODEL.BIT.VARIANT,
        size if size is not None else "streamed",
        cfg.DATASETS.TRAIN.NAME,
        schedule.describe(),
    )
    model = build_model(cfg)
    split = cfg.SOLVER.BATCH_SPLIT
    trainer = ClassifierTrainer(
        model,
        train_set,
        output_dir=cfg.OUTPUT_DIR,
        max_steps=schedule.total_steps,
        global_batch=cfg.SOLVER.IMS_PER_BATCH,
        lr_at=schedule,
        loss=cfg.SOLVER.LOSS,
        momentum=cfg.SOLVER.MOMENTUM,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        batch_split="auto" if split == 0 else split,
        precision=engine_precision(cfg),
        channels_last=cfg.SOLVER.CHANNELS_LAST,
        compile=cfg.SOLVER.COMPILE,
        evaluate=evaluator(cfg, test_set) if test_set is not None else None,
        eval_period=cfg.TEST.EVAL_PERIOD,
        checkpoint_period=cfg.SOLVER.CHECKPOINT_PERIOD,
        keep_last=cfg.SOLVER.KEEP_LAST,
        log_period=cfg.SOLVER.LOG_PERIOD,
        seed=cfg.SEED,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        device=resolve_device(cfg.MODEL.DEVICE),
        meta={"arch": cfg.MODEL.BIT.VARIANT, "num_classes": cfg.MODEL.NUM_CLASSES},
    )
    result = trainer.train(resume=True)
    final = {k: v for k, v in result["eval"].items() if isinstance(v, (int, float))}
    final.update(
        arch=cfg.MODEL.BIT.VARIANT,
        steps=result["step"],
        train_images=size,
        global_batch=cfg.SOLVER.IMS_PER_BATCH,
        img_per_s=result["img_per_s"],
        train_time_s=result["train_time_s"],
        final_loss=result["loss"],
        skipped_images=result["skipped_images"],
        wall_time_s=time.perf_counter() - wall_start,
        processes=comm.get_world_size(),
    )
    if comm.is_main_process():
        model = trainer.model.cpu().float()
        save_checkpoint(
            out / "model_final.pth",
            model,
            arch=cfg.MODEL.BIT.VARIANT,
            num_classes=cfg.MODEL.NUM_CLASSES,
            steps=result["step"],
        )
        write_npz(out / "model_final.npz", state_dict_to_npz(model))
        write_json(out / "final.json", final)
        logger.info("final: %s", json.dumps(final))
    comm.synchronize()
    return final
