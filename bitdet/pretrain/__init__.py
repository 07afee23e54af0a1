"""Upstream (BiT-S / BiT-M / BiT-L style) pretraining: config, schedule, data, shards, runner.

Run it with ``tools/pretrain.py --config-file configs/pretrain/<recipe>.yaml``; the training
loop is :class:`bitdet.engine.ClassifierTrainer`, the losses :mod:`bitdet.engine.losses`.
"""

from bitdet.pretrain.config import DATASET_NAMES, add_pretrain_config, get_pretrain_cfg
from bitdet.pretrain.data import (
    ImageFolderDataset,
    LabelFileDataset,
    build_dataset,
    eval_transform,
    read_label_file,
    train_transform,
)
from bitdet.pretrain.runner import (
    build_datasets,
    build_model,
    build_schedule,
    evaluator,
    run_pretraining,
)
from bitdet.pretrain.schedule import StepSchedule, epochs_to_steps, scaled_lr
from bitdet.pretrain.shards import ShardDataset, StreamingShards, expand_shards, write_shards

__all__ = [
    "DATASET_NAMES",
    "ImageFolderDataset",
    "LabelFileDataset",
    "ShardDataset",
    "StepSchedule",
    "StreamingShards",
    "add_pretrain_config",
    "build_dataset",
    "build_datasets",
    "build_model",
    "build_schedule",
    "epochs_to_steps",
    "eval_transform",
    "evaluator",
    "expand_shards",
    "get_pretrain_cfg",
    "read_label_file",
    "run_pretraining",
    "scaled_lr",
    "train_transform",
    "write_shards",
]
