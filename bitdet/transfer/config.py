"""Config keys for classification fine-tuning: ``add_finetune_config(cfg)``.

The BiT-HyperRule supplies every training hyperparameter; a ``HYPERRULE.*`` key overrides
one of them only when it is set (``0``, ``""``, ``[]`` or, for MixUp, a negative alpha mean
"from the rule"), so a config says exactly what departs from the paper.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence, Tuple

from detectron2.config import CfgNode as CN

from bitdet.config import merge_config
from bitdet.engine.config import add_engine_solver_config, add_engine_test_config
from bitdet.hyperrule import Rule, get_rule
from bitdet.models.resnetv2 import checkpointing_mode

__all__ = ["add_finetune_config", "get_finetune_cfg", "rule_from_config", "tri_state"]


def add_finetune_config(cfg: CN) -> None:
    """Add the ``MODEL``, ``DATASET``, ``HYPERRULE``, ``SOLVER``, ``FEWSHOT``, ``DATALOADER``,
    ``TEST`` sections and the top-level keys used by ``tools/finetune.py`` and ``tools/vtab.py``."""
    cfg.MODEL = CN()
    # Model name from bitdet.list_models(): "BiT-M-R50x1", "R101x3", or a CPU variant
    # such as "R14-tiny" / "R26-tiny" (not paper models).
    cfg.MODEL.NAME = "BiT-M-R50x1"
    # Upstream weights: an official BiT .npz, a bitdet / Detectron2 .pth, "official" for the
    # named BiT checkpoint (downloaded into the cache), or "" to train from scratch.
    cfg.MODEL.WEIGHTS = ""
    # "cuda", "cpu", or "" for CUDA when available.
    cfg.MODEL.DEVICE = ""
    # Activation checkpointing of the BiT trunk in training: "none", "stage" (keep each stage's
    # input, recompute the stage in backward) or "unit" (the same per bottleneck unit). Same
    # losses and gradients, less activation memory, about one more forward per step.
    cfg.MODEL.ACTIVATION_CHECKPOINTING = "none"

    cfg.DATASET = CN()
    # A name from bitdet.transfer.list_datasets() (e.g. "cifar10", "digits", "vtab/dtd").
    cfg.DATASET.NAME = "cifar10"
    # Data folder in the dataset's official layout; "" uses the dataset's default, if any.
    cfg.DATASET.ROOT = ""
    # Let torchvision download a missing dataset (needs the network; off on clusters).
    cfg.DATASET.DOWNLOAD = False
    # Training split; "" uses the dataset's default (e.g. "train", VTAB: "train800val200").
    cfg.DATASET.TRAIN_SPLIT = ""
    # Evaluation split; "" uses the dataset's default (e.g. "test", ImageNet: "val").
    cfg.DATASET.TEST_SPLIT = ""
    # Random crop during training: "" = the dataset's default (off where it changes the
    # label, e.g. counting), "on" or "off".
    cfg.DATASET.RANDOM_CROP = ""
    # Random horizontal flip during training: "" = the dataset's default, "on" or "off".
    cfg.DATASET.FLIP = ""

    cfg.HYPERRULE = CN()
    # Resolution preset for images of 96x96 and larger: "paper" (448 -> 384) or "public" (512 -> 480).
    cfg.HYPERRULE.RESOLUTION = "paper"
    # Training resize side; 0 = from the rule.
    cfg.HYPERRULE.RESIZE = 0
    # Training crop side and evaluation resize side; 0 = from the rule.
    cfg.HYPERRULE.CROP = 0
    # Optimizer steps; 0 = from the rule. Setting only this stretches the rule's warm-up and
    # decays to the new length.
    cfg.HYPERRULE.STEPS = 0
    # Linear warm-up steps; 0 = from the rule.
    cfg.HYPERRULE.WARMUP_STEPS = 0
    # Steps after which the rate is divided by 10; [] = from the rule.
    cfg.HYPERRULE.DECAY_STEPS = []
    # MixUp alpha; negative = from the rule (0.1 from 20k examples on), 0 = no MixUp.
    cfg.HYPERRULE.MIXUP_ALPHA = -1.0
    # Peak learning rate; 0 = from the rule (0.003).
    cfg.HYPERRULE.BASE_LR = 0.0
    # Global batch size; 0 = from the rule (512). Gradient accumulation keeps it whatever the memory.
    cfg.HYPERRULE.BATCH_SIZE = 0

    cfg.SOLVER = CN()
    # SGD momentum (BiT: 0.9).
    cfg.SOLVER.MOMENTUM = 0.9
    # Weight decay on conv weights (BiT fine-tuning: none).
    cfg.SOLVER.WEIGHT_DECAY = 0.0
    # "softmax" (single-label) or "sigmoid" (multi-label) cross-entropy.
    cfg.SOLVER.LOSS = "softmax"
    add_engine_solver_config(cfg, batch_split=0, checkpoint_period=100, keep_last=2)

    cfg.FEWSHOT = CN()
    # Training examples per class: [] = one run on the whole training set; else a list of k
    # and "full", e.g. [1, 5, 10, "full"]: one run per entry and seed, plus a results table.
    cfg.FEWSHOT.SHOTS = []
    # Seeds of the few-shot draws (and of the training runs); several give mean ± std.
    cfg.FEWSHOT.SEEDS = [0]

    cfg.DATALOADER = CN()
    # DataLoader worker processes per GPU / process.
    cfg.DATALOADER.NUM_WORKERS = 4

    cfg.TEST = CN()
    # Evaluation batch size.
    cfg.TEST.BATCH_SIZE = 256
    # Steps between evaluations on the test split during training (0: only at the end).
    cfg.TEST.EVAL_PERIOD = 0
    add_engine_test_config(cfg)

    # Results, checkpoints, metrics.json, plots.
    cfg.OUTPUT_DIR = "output/finetune"
    # Base seed of data order and augmentation (a few-shot run uses its draw's seed).
    cfg.SEED = 0
    # cudnn.benchmark: faster convs for the fixed HyperRule input size.
    cfg.CUDNN_BENCHMARK = True
    # Config format version; Detectron2's CfgNode requires it to merge files (its latest is 2).
    cfg.VERSION = 2


def get_finetune_cfg(config_file: str = "", opts: Sequence[str] = ()) -> CN:
    """Fine-tuning defaults merged with a config file (``_BASE_`` allowed) and ``KEY VALUE`` overrides.

    Raises:
        ValueError: an unknown key or a bad value, naming the file or override.
    """
    cfg = CN()
    add_finetune_config(cfg)
    merge_config(cfg, config_file, opts, kind="finetune")
    checkpointing_mode(cfg.MODEL.ACTIVATION_CHECKPOINTING, "MODEL.ACTIVATION_CHECKPOINTING")
    return cfg


def tri_state(value: str, default: bool, key: str) -> bool:
    """``""`` -> ``default``, ``"on"``/``"off"`` (or true/false, yes/no, 1/0) -> bool.

    Raises:
        ValueError: naming ``key``.
    """
    text = str(value).strip().lower()
    if text == "":
        return default
    if text in ("on", "true", "yes", "1"):
        return True
    if text in ("off", "false", "no", "0"):
        return False
    raise ValueError(f"{key} must be '', 'on' or 'off', got {value!r}")


def rule_from_config(cfg: CN, dataset_size: int, image_size: Tuple[int, int]) -> Rule:
    """The HyperRule for a dataset, with the config's ``HYPERRULE.*`` overrides applied.

    Args:
        cfg: a config with :func:`add_finetune_config` keys.
        dataset_size: training examples (after few-shot sampling).
        image_size: typical ``(height, width)`` of the source images.

    Returns:
        The final :class:`~bitdet.hyperrule.Rule` (validated).
    """
    h = cfg.HYPERRULE
    rule = get_rule(dataset_size, image_size, resolution=h.RESOLUTION)
    if h.STEPS and not h.WARMUP_STEPS and not h.DECAY_STEPS:
        rule = rule.with_steps(h.STEPS)
    changes = {}
    for field, key in (
        ("resize", "RESIZE"),
        ("crop", "CROP"),
        ("steps", "STEPS"),
        ("warmup_steps", "WARMUP_STEPS"),
        ("base_lr", "BASE_LR"),
        ("batch_size", "BATCH_SIZE"),
    ):
        if h[key]:
            changes[field] = h[key]
    if h.DECAY_STEPS:
        changes["decay_steps"] = tuple(h.DECAY_STEPS)
    if h.MIXUP_ALPHA >= 0:
        changes["mixup_alpha"] = float(h.MIXUP_ALPHA)
    if h.CROP and not h.RESIZE:
        # Keep the rule's resize/crop ratio (160/128 = 1.25) for a custom crop.
        changes["resize"] = max(h.CROP, round(h.CROP * rule.resize / rule.crop))
    try:
        return dataclasses.replace(rule, **changes)
    except ValueError as e:
        raise ValueError(f"HYPERRULE overrides {changes} give an invalid rule: {e}") from e
