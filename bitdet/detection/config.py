"""Config keys for BiT in Detectron2: ``add_bit_config(cfg)``.

Standard Detectron2 keys keep their meaning and are not duplicated here: freezing is
``MODEL.BACKBONE.FREEZE_AT`` (Detectron2's default 2; BiT configs set 0), the FPN and
RetinaNet head norms are ``MODEL.FPN.NORM`` and ``MODEL.RETINANET.NORM`` ("" or "GN"), the
weights are ``MODEL.WEIGHTS`` (which also accepts BiT weights of every format bitdet reads: an
official ``.npz`` or name, timm, bit_pytorch, transformers files, ``hf-hub:`` ids; see
:mod:`bitdet.detection.checkpointer`), and BiT's [-1, 1] input scaling is
``MODEL.PIXEL_MEAN = MODEL.PIXEL_STD = [127.5] * 3`` with ``INPUT.FORMAT = "RGB"``.
"""

from __future__ import annotations

from typing import Sequence

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from bitdet.config import CONFIGS_DIR, check_weights, merge_config, resolve_config_file
from bitdet.errors import ConfigError
from bitdet.models.resnetv2 import checkpointing_mode
from bitdet.numerics import WS_EPS

__all__ = [
    "AUGMENTATIONS",
    "CONFIGS_DIR",
    "add_bit_config",
    "fixed_input_size",
    "get_bit_cfg",
    "resolve_config_file",
]

# Values of INPUT.AUGMENTATION (see add_bit_config).
AUGMENTATIONS = ("multiscale", "fixed_size_jitter")


def add_bit_config(cfg: CN) -> None:
    """Add the ``MODEL.BIT``, ``MODEL.ACTIVATION_CHECKPOINTING``,
    ``SOLVER.{AMP.PRECISION,BATCH_SPLIT,CHANNELS_LAST,COMPILE,DETERMINISTIC}``,
    ``INPUT.{AUGMENTATION,FIXED_SIZE_JITTER}`` and ``DATASETS.COCO_FORMAT`` keys.

    Freezing is Detectron2's own ``MODEL.BACKBONE.FREEZE_AT``; ``MODEL.BIT.FREEZE_AT`` is
    registered as renamed to it, so a config that sets it is refused with the new name.
    """
    cfg.MODEL.BIT = CN()
    # Architecture from bitdet.list_models(): "R50x1" ... "R152x4", or a CPU variant such as
    # "R14-tiny" (not a paper model); the weights are MODEL.WEIGHTS. A "BiT-S-"/"BiT-M-" prefix
    # is allowed.
    cfg.MODEL.BIT.VARIANT = "R50x1"
    # Epsilon of Weight Standardization; 1e-10 reproduces the official checkpoints. Loading
    # timm or transformers weights (which compute with 1e-8) sets theirs on the model, and says so.
    cfg.MODEL.BIT.WS_EPS = WS_EPS
    # Stage outputs the backbone returns, any of "stem", "res2" ... "res5".
    cfg.MODEL.BIT.OUT_FEATURES = ["res3", "res4", "res5"]
    # What the backbone returns for each stage. BiT is pre-activation: a raw stage output is
    # an un-normalised residual sum whose scale grows with depth. "preact" returns
    # relu(GN(x)) using the pretrained norm that the next stage applies first anyway
    # (res5: the final pretrained GN), so the FPN sees normalised features with no new
    # parameters. "raw" returns the residual sums.
    cfg.MODEL.BIT.FEATURE_TAP = "preact"
    # Freezing is Detectron2's MODEL.BACKBONE.FREEZE_AT (0 trains all, 1 freezes the stem,
    # 2 the stem and res2, ... 5 the whole trunk); BiT configs set 0, as BiT fine-tunes every
    # layer. A config still naming the old key fails with a message naming the new one.
    cfg.register_renamed_key("MODEL.BIT.FREEZE_AT", "MODEL.BACKBONE.FREEZE_AT")

    # Activation checkpointing of the BiT trunk in training: "none", "stage" (keep each stage's
    # input, recompute the stage in backward) or "unit" (the same per bottleneck unit). Same
    # losses and gradients, less activation memory, about one more forward per step. Frozen
    # stages (MODEL.BACKBONE.FREEZE_AT) keep no activations and are not checkpointed.
    cfg.MODEL.ACTIVATION_CHECKPOINTING = "none"

    # Cache each standardized kernel where no gradient reaches it (evaluation, frozen
    # stages) until the weight changes; identical results. False standardizes every forward.
    cfg.MODEL.BIT.CACHE_WS = True
    # channels_last memory format for the model. Off: what Detectron2's users get; whether
    # it pays for GroupNorm + WS on a GPU is unmeasured (see docs/performance.md).
    cfg.SOLVER.CHANNELS_LAST = False
    # torch.compile the backbone and head (eager fall-back, with a log line, on failure).
    # Off by default: detection inputs change size from batch to batch (multi-scale
    # resize), so graphs recompile for new shapes.
    cfg.SOLVER.COMPILE = False

    # Micro-batches per process and step (gradient accumulation), as in pretraining and
    # fine-tuning: SOLVER.IMS_PER_BATCH stays the global batch, each process runs its share
    # (IMS_PER_BATCH / processes) as BATCH_SPLIT micro-batches and takes one optimizer step,
    # equal to the whole-batch step (RetinaNet only: micro-batches are padded as the share and
    # the loss normalizer counts the whole step). IMS_PER_BATCH must divide by processes x
    # BATCH_SPLIT. No automatic value (0): input sizes change from batch to batch.
    cfg.SOLVER.BATCH_SPLIT = 1
    # Autocast precision when SOLVER.AMP.ENABLED: "bf16" (no loss scaling needed on
    # Ampere and newer) or "fp16" (with loss scaling).
    cfg.SOLVER.AMP.PRECISION = "bf16"
    # PyTorch's deterministic algorithms (cuDNN included) so that GPU runs repeat bit for bit
    # (slower; needs CUDNN_BENCHMARK False). CPU runs repeat without it.
    cfg.SOLVER.DETERMINISTIC = False

    # Augmentation family of the training images, and how evaluation sizes them:
    # "multiscale": Detectron2's ResizeShortestEdge to INPUT.MIN_SIZE_TRAIN (at most
    #   INPUT.MAX_SIZE_TRAIN) + INPUT.RANDOM_FLIP; evaluation at INPUT.MIN/MAX_SIZE_TEST.
    # "fixed_size_jitter": the BiT paper's detection input (supplementary E, the tensorflow/tpu
    #   RetinaNet's resize_and_crop_image): INPUT.RANDOM_FLIP, then Detectron2's ResizeScale (the
    #   image fits a square of INPUT.FIXED_SIZE_JITTER.SIZE times a scale drawn from SCALE_RANGE)
    #   and FixedSizeCrop (a random SIZE x SIZE crop; boxes cropped out are dropped); the model
    #   pads every image to SIZE x SIZE (the backbone's padding_constraints: zeros after
    #   normalisation, as the TPU code). Evaluation resizes the long side to SIZE, so
    #   INPUT.MIN_SIZE_TEST and MAX_SIZE_TEST must both equal SIZE; INPUT.MIN_SIZE_TRAIN /
    #   MAX_SIZE_TRAIN are not read.
    cfg.INPUT.AUGMENTATION = "multiscale"
    cfg.INPUT.FIXED_SIZE_JITTER = CN()
    # Side of the square training crop and of the padded input, in pixels.
    cfg.INPUT.FIXED_SIZE_JITTER.SIZE = 1024
    # (min, max) of the uniform random scale applied to SIZE before fitting the image in it.
    cfg.INPUT.FIXED_SIZE_JITTER.SCALE_RANGE = (0.8, 1.2)

    # Extra COCO-format datasets to register, each [name, json_file, image_root]; e.g.
    # DATASETS.COCO_FORMAT "[['mine_train', 'ann/train.json', 'images/train']]".
    cfg.DATASETS.COCO_FORMAT = []


def fixed_input_size(cfg: CN) -> int:
    """The square side every input is padded to: ``INPUT.FIXED_SIZE_JITTER.SIZE`` under
    ``INPUT.AUGMENTATION "fixed_size_jitter"``, 0 (no square padding) under "multiscale".

    Raises:
        ValueError: (one line, naming the key) an unknown ``INPUT.AUGMENTATION``; under
            "fixed_size_jitter" a non-positive size, a scale range that is not ``0 < min <= max``,
            a test size other than ``SIZE``, or ``INPUT.CROP.ENABLED`` (FixedSizeCrop crops).
    """
    family = cfg.INPUT.AUGMENTATION
    if family not in AUGMENTATIONS:
        raise ConfigError(
            f"INPUT.AUGMENTATION {family!r} is unknown; allowed: "
            f"{', '.join(map(repr, AUGMENTATIONS))}"
        )
    if family == "multiscale":
        return 0
    size, scales = cfg.INPUT.FIXED_SIZE_JITTER.SIZE, tuple(cfg.INPUT.FIXED_SIZE_JITTER.SCALE_RANGE)
    if not (isinstance(size, int) and size > 0):
        raise ConfigError(
            f"INPUT.FIXED_SIZE_JITTER.SIZE {size!r}: expected a positive number of pixels"
        )
    if len(scales) != 2 or not 0 < scales[0] <= scales[1]:
        raise ConfigError(
            f"INPUT.FIXED_SIZE_JITTER.SCALE_RANGE {scales}: expected (min, max) with 0 < min <= max"
        )
    test_sizes = (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    if test_sizes != (size, size):
        raise ConfigError(
            "INPUT.AUGMENTATION 'fixed_size_jitter' evaluates with the long side at "
            f"INPUT.FIXED_SIZE_JITTER.SIZE {size}: set INPUT.MIN_SIZE_TEST and INPUT.MAX_SIZE_TEST "
            f"to {size} (they are {test_sizes[0]}, {test_sizes[1]})"
        )
    if cfg.INPUT.CROP.ENABLED:
        raise ConfigError(
            "INPUT.CROP.ENABLED adds a second crop to INPUT.AUGMENTATION 'fixed_size_jitter' "
            "(whose FixedSizeCrop crops): set it False"
        )
    return size


def get_bit_cfg(config_file: str | None = None, opts: Sequence[str] = ()) -> CN:
    """Detectron2's default config + BiT keys, merged with a config file and ``KEY VALUE``
    overrides."""
    cfg = get_cfg()
    add_bit_config(cfg)
    merge_config(cfg, config_file, opts, kind="detection")
    checkpointing_mode(cfg.MODEL.ACTIVATION_CHECKPOINTING, "MODEL.ACTIVATION_CHECKPOINTING")
    check_weights(cfg.MODEL.WEIGHTS)
    if cfg.SOLVER.MAX_ITER < 1:  # Detectron2's lr schedule fails on it with a bare ValueError
        raise ConfigError(
            f"SOLVER.MAX_ITER {cfg.SOLVER.MAX_ITER}: expected at least 1 iteration "
            "(--eval-only evaluates MODEL.WEIGHTS without training)"
        )
    return cfg
