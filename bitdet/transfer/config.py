"""Config keys for classification fine-tuning: ``add_finetune_config(cfg)``.

The BiT-HyperRule supplies every training hyperparameter; a ``HYPERRULE.*`` key (or the batch,
``SOLVER.IMS_PER_BATCH``) overrides one of them only when it is set (``0``, ``""``, ``[]`` or,
for MixUp, a negative alpha mean "from the rule"), so a config says exactly what departs from
the paper.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence, Tuple

from detectron2.config import CfgNode as CN

from bitdet.config import merge_config
from bitdet.engine.config import (
    add_engine_model_config,
    add_engine_solver_config,
    add_engine_test_config,
    check_engine_config,
)
from bitdet.errors import ConfigError
from bitdet.hyperrule import Rule, get_rule

__all__ = ["add_finetune_config", "get_finetune_cfg", "rule_from_config", "tri_state"]


# Keys of earlier versions, each refused with its new name.
_RENAMED_DATASET_KEYS = {
    "DATASET.NAME": "DATASETS.TRAIN.NAME",
    "DATASET.ROOT": "DATASETS.TRAIN.ROOT",
    "DATASET.TRAIN_SPLIT": "DATASETS.TRAIN.SPLIT",
    "DATASET.TEST_SPLIT": "DATASETS.TEST.SPLIT",
    "DATASET.DOWNLOAD": "DATASETS.DOWNLOAD",
    "DATASET.RANDOM_CROP": "INPUT.RANDOM_CROP",
    "DATASET.FLIP": "INPUT.RANDOM_FLIP",
}


def add_finetune_config(cfg: CN) -> None:
    """Add the ``MODEL``, ``DATASETS``, ``INPUT``, ``HYPERRULE``, ``SOLVER``, ``FEWSHOT``,
    ``DATALOADER``, ``TEST`` sections and the top-level keys used by ``tools/finetune.py`` and
    ``tools/vtab.py``."""
    cfg.MODEL = CN()
    add_engine_model_config(
        cfg,
        "R50x1",
        "the architecture, e.g. R50x1; an official checkpoint such as BiT-M-R50x1 goes in "
        "MODEL.WEIGHTS",
    )
    # Upstream weights: an official BiT name (e.g. "BiT-M-R50x1", downloaded into the cache) or
    # .npz, a bitdet / Detectron2 .pth, an hf-hub: id; "" = none (random initialisation).
    cfg.MODEL.WEIGHTS = ""

    cfg.DATASETS = CN()
    cfg.DATASETS.TRAIN = CN()
    # A name from bitdet.transfer.list_datasets() (e.g. "cifar10", "digits", "vtab/dtd").
    cfg.DATASETS.TRAIN.NAME = "cifar10"
    # Data folder in the dataset's official layout; "" uses the dataset's default, if any.
    cfg.DATASETS.TRAIN.ROOT = ""
    # Training split; "" uses the dataset's default (e.g. "train", VTAB: "train800val200").
    cfg.DATASETS.TRAIN.SPLIT = ""
    cfg.DATASETS.TEST = CN()
    # "" = the training dataset (DATASETS.TRAIN.NAME), evaluated on its test split: fine-tuning
    # evaluates where it trains, so another name is refused.
    cfg.DATASETS.TEST.NAME = ""
    # Data folder of the test split; "" = DATASETS.TRAIN.ROOT.
    cfg.DATASETS.TEST.ROOT = ""
    # Evaluation split; "" uses the dataset's default (e.g. "test", ImageNet: "val").
    cfg.DATASETS.TEST.SPLIT = ""
    # Let torchvision download a missing dataset (needs the network; off on clusters).
    cfg.DATASETS.DOWNLOAD = False
    for old, new in _RENAMED_DATASET_KEYS.items():
        cfg.register_renamed_key(old, new)

    cfg.INPUT = CN()
    # Random crop during training: "" = the dataset's default (off where it changes the
    # label, e.g. counting), "on" or "off".
    cfg.INPUT.RANDOM_CROP = ""
    # Random horizontal flip during training: "" = the dataset's default, "on" or "off".
    cfg.INPUT.RANDOM_FLIP = ""

    cfg.HYPERRULE = CN()
    # Resolution preset for images of 96x96 and larger: "paper" (448 -> 384) or "public"
    # (512 -> 480).
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

    cfg.SOLVER = CN()
    # Global batch over all processes; 0 = from the rule (512). Gradient accumulation
    # (SOLVER.BATCH_SPLIT) keeps it whatever the memory.
    cfg.SOLVER.IMS_PER_BATCH = 0
    cfg.register_renamed_key("HYPERRULE.BATCH_SIZE", "SOLVER.IMS_PER_BATCH")
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
    cfg.register_renamed_key("TEST.BATCH_SIZE", "TEST.IMS_PER_BATCH")
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
    """Fine-tuning defaults merged with a config file (``_BASE_`` allowed) and ``KEY VALUE``
    overrides.

    Raises:
        ValueError: an unknown key or a bad value, naming the file or override.
    """
    cfg = CN()
    add_finetune_config(cfg)
    merge_config(cfg, config_file, opts, kind="finetune")
    check_engine_config(cfg)
    test_name = cfg.DATASETS.TEST.NAME
    if test_name and test_name != cfg.DATASETS.TRAIN.NAME:
        raise ConfigError(
            f"DATASETS.TEST.NAME {test_name!r}: fine-tuning evaluates on the test split of its "
            f"training dataset ({cfg.DATASETS.TRAIN.NAME!r}); leave it '' and choose the split "
            "with DATASETS.TEST.SPLIT"
        )
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
    raise ConfigError(f"{key} must be '', 'on' or 'off', got {value!r}")


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
    ):
        if h[key]:
            changes[field] = h[key]
    if cfg.SOLVER.IMS_PER_BATCH:
        changes["batch_size"] = cfg.SOLVER.IMS_PER_BATCH
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
        raise ConfigError(
            f"HYPERRULE / SOLVER.IMS_PER_BATCH overrides {changes} give an invalid rule: {e}"
        ) from e
