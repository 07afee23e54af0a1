"""Config keys for upstream pretraining: ``add_pretrain_config(cfg)`` and ``get_pretrain_cfg``.

A standalone Detectron2 ``CfgNode`` (detection keys would mean nothing here); keys shared in
spirit with Detectron2 keep its names (``SOLVER.IMS_PER_BATCH``, ``SOLVER.WARMUP_ITERS``,
``DATALOADER.NUM_WORKERS``, ``TEST.EVAL_PERIOD``, ``OUTPUT_DIR``, ``SEED``). YAML files may use
``_BASE_``.
"""

from __future__ import annotations

from typing import Sequence

from detectron2.config import CfgNode as CN

from bitdet.config import merge_config
from bitdet.engine.config import (
    add_engine_model_config,
    add_engine_solver_config,
    add_engine_test_config,
    check_engine_config,
)
from bitdet.engine.losses import LOSSES
from bitdet.errors import ConfigError

__all__ = ["DATASET_NAMES", "add_pretrain_config", "get_pretrain_cfg"]

DATASET_NAMES = ("fashion_mnist", "fashion_mnist_photos", "imagefolder", "labelfile", "webdataset")


def _dataset_node(name: str, root: str, split: str) -> CN:
    node = CN()
    # Source format: "fashion_mnist" (idx files), "fashion_mnist_photos" (the same items drawn
    # like the demo detection set's objects: random scale and position, tinted on photo crops;
    # see INPUT.ITEM_SCALE, INPUT.PHOTO_PROB), "imagefolder" (root/<class>/<image>),
    # "labelfile" (a text file of "relative/path<TAB>label[,label...]" lines, ROOT is the
    # file and images are relative to its folder), "webdataset" (tar shards, ROOT a brace
    # pattern such as "/data/shards/train-{000000..000127}.tar").
    node.NAME = name
    # Folder, file or shard pattern (see NAME). For fashion_mnist(_photos), the idx folder ("" =
    # /usr/share/datasets/fashion-mnist).
    node.ROOT = root
    # Split name for sources that hold several (fashion_mnist: "train" / "test").
    node.SPLIT = split
    # Use a fixed random subset of N samples (0 = all): quick runs, cheaper held-out evaluation.
    node.MAX_SAMPLES = 0
    return node


def add_pretrain_config(cfg: CN) -> None:
    """Add every pretraining key, with its default, to ``cfg`` (in place)."""
    # Detectron2's config version: its CfgNode.merge_from_file requires the current one.
    cfg.VERSION = 2
    cfg.MODEL = CN()
    add_engine_model_config(cfg, "R50x1")
    # Upstream classes: 1000 (ILSVRC-2012), 21843 (ImageNet-21k), 18291 (JFT-300M).
    cfg.MODEL.NUM_CLASSES = 1000
    # Initial head bias. -10 with SOLVER.LOSS "sigmoid" over many classes keeps the first
    # steps stable (each class starts at p = 4.5e-5); 0 for softmax.
    cfg.MODEL.HEAD_BIAS = 0.0
    # Initial weights (bitdet .pth, official .npz or a BiT name such as "BiT-S-R50x1");
    # "" = none (random initialisation). Resuming from OUTPUT_DIR takes precedence.
    cfg.MODEL.WEIGHTS = ""

    cfg.DATASETS = CN()
    # Training data (see NAME for the formats).
    cfg.DATASETS.TRAIN = _dataset_node("imagefolder", "", "train")
    # Held-out data for evaluation during and after training; NAME "" = no held-out evaluation.
    cfg.DATASETS.TEST = _dataset_node("", "", "test")
    for split in ("TRAIN", "TEST"):
        cfg.register_renamed_key(f"DATASETS.{split}.KIND", f"DATASETS.{split}.NAME")
        cfg.register_renamed_key(f"DATASETS.{split}.PATH", f"DATASETS.{split}.ROOT")
    # Targets are multi-hot vectors (several labels per image): use SOLVER.LOSS "sigmoid";
    # evaluation reports precision@1 and mAP instead of top-1/top-5.
    cfg.DATASETS.MULTILABEL = False

    cfg.INPUT = CN()
    # Training crop (Inception-style random-resized crop), pixels. BiT: 224.
    cfg.INPUT.CROP_SIZE = 224
    # Inception crop: the crop covers this fraction range of the image area.
    cfg.INPUT.CROP_SCALE = (0.08, 1.0)
    # Random horizontal flip during training.
    cfg.INPUT.RANDOM_FLIP = True
    # Evaluation: resize the shorter side to this, then centre-crop INPUT.CROP_SIZE.
    cfg.INPUT.TEST_RESIZE = 256
    # NAME "fashion_mnist_photos": the item's side as a fraction of the INPUT.CROP_SIZE canvas
    # (replaces the Inception crop for that source).
    cfg.INPUT.ITEM_SCALE = (0.4, 1.0)
    # NAME "fashion_mnist_photos": probability that an item keeps the plain Fashion-MNIST look
    # (the whole frame, grey on black, as in the test split); the others are drawn at ITEM_SCALE.
    cfg.INPUT.PLAIN_PROB = 0.0
    # NAME "fashion_mnist_photos": probability that an item drawn at ITEM_SCALE is tinted and
    # pasted on a photo crop (else grey on black).
    cfg.INPUT.PHOTO_PROB = 0.75

    cfg.SOLVER = CN()
    # "softmax" cross-entropy (one label per image) or "sigmoid" cross-entropy (multi-label).
    cfg.SOLVER.LOSS = "softmax"
    # Global batch over all processes. BiT: 4096.
    cfg.SOLVER.IMS_PER_BATCH = 4096
    # Learning rate per 256 images: lr = BASE_LR_PER_256 * IMS_PER_BATCH / 256. BiT: 0.03.
    cfg.SOLVER.BASE_LR_PER_256 = 0.03
    # Training length in epochs over DATASETS.TRAIN (converted to steps from its size).
    cfg.SOLVER.EPOCHS = 90.0
    # Training length in steps; > 0 overrides SOLVER.EPOCHS (and DECAY_STEPS replace DECAY_EPOCHS).
    cfg.SOLVER.MAX_ITER = 0
    # Epochs at which the lr is multiplied by DECAY_FACTOR. BiT-S/M: 30, 60, 80.
    cfg.SOLVER.DECAY_EPOCHS = (30.0, 60.0, 80.0)
    # Steps at which the lr decays, used when SOLVER.MAX_ITER > 0.
    cfg.SOLVER.DECAY_STEPS = ()
    # Factor applied at each decay boundary (once the step index reaches it).
    cfg.SOLVER.DECAY_FACTOR = 0.1
    # Linear warm-up steps from ~0 to the base lr. BiT: 5000.
    cfg.SOLVER.WARMUP_ITERS = 5000
    # SGD momentum.
    cfg.SOLVER.MOMENTUM = 0.9
    # Weight decay on conv/linear weights (not norms, biases). BiT: 1e-4 (lower ends worse).
    cfg.SOLVER.WEIGHT_DECAY = 1e-4
    add_engine_solver_config(cfg, batch_split=1, checkpoint_period=5000, keep_last=3)

    cfg.TEST = CN()
    # Steps between held-out evaluations (0 = only at the end).
    cfg.TEST.EVAL_PERIOD = 0
    add_engine_test_config(cfg)

    cfg.DATALOADER = CN()
    # DataLoader worker processes per training process.
    cfg.DATALOADER.NUM_WORKERS = 8

    # Checkpoints, logs, metrics.json, TensorBoard events, final model and final.json.
    cfg.OUTPUT_DIR = "output/pretrain"
    # Base seed of data order and augmentation (a resumed run continues the same stream).
    cfg.SEED = 0


def get_pretrain_cfg(config_file: str | None = None, opts: Sequence[str] = ()) -> CN:
    """Default pretraining config merged with a YAML file (path, or name under ``configs/``) and
    overrides.

    Raises:
        ValueError: an unknown key or a value of the wrong type, naming the file or override.
    """
    cfg = CN(new_allowed=False)
    add_pretrain_config(cfg)
    merge_config(cfg, config_file, opts, kind="pretrain")
    for split in ("TRAIN", "TEST"):
        name = cfg.DATASETS[split].NAME
        if (name or split == "TRAIN") and name not in DATASET_NAMES:
            none = " (or '' for none)" if split == "TEST" else ""
            raise ConfigError(
                f"DATASETS.{split}.NAME is {name!r}; choose one of {DATASET_NAMES}{none}"
            )
    if cfg.SOLVER.LOSS not in LOSSES:
        raise ConfigError(f"SOLVER.LOSS must be one of {sorted(LOSSES)}, got {cfg.SOLVER.LOSS!r}")
    check_engine_config(cfg)
    return cfg
