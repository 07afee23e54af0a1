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

from bitdet.config import CONFIGS_DIR, merge_config, resolve_config_file
from bitdet.models.resnetv2 import checkpointing_mode
from bitdet.numerics import GN_GROUPS, WS_EPS

__all__ = ["CONFIGS_DIR", "add_bit_config", "get_bit_cfg", "resolve_config_file"]


def add_bit_config(cfg: CN) -> None:
    """Add the ``MODEL.BIT``, ``MODEL.ACTIVATION_CHECKPOINTING``,
    ``SOLVER.{AMP.PRECISION,CHANNELS_LAST,COMPILE,DETERMINISTIC}`` and ``DATASETS.COCO_FORMAT`` keys.

    Freezing is Detectron2's own ``MODEL.BACKBONE.FREEZE_AT``; ``MODEL.BIT.FREEZE_AT`` is
    registered as renamed to it, so a config that sets it is refused with the new name.
    """
    cfg.MODEL.BIT = CN()
    # Architecture name from bitdet.list_models(): "R50x1" ... "R152x4", or a CPU
    # variant such as "R14-tiny" (not a paper model). A "BiT-S-"/"BiT-M-" prefix is allowed.
    cfg.MODEL.BIT.VARIANT = "R50x1"
    # Epsilon of Weight Standardization; 1e-10 reproduces the official checkpoints. Loading
    # timm or transformers weights (which compute with 1e-8) sets theirs on the model, and says so.
    cfg.MODEL.BIT.WS_EPS = WS_EPS
    # Weight-standardize every conv (BiT). False gives plain convs, for ablations only.
    cfg.MODEL.BIT.WEIGHT_STD = True
    # Backbone norm: "GN" (BiT) or "BN" (ablation; frozen as FrozenBatchNorm when frozen).
    cfg.MODEL.BIT.NORM = "GN"
    # GroupNorm groups in the backbone.
    cfg.MODEL.BIT.GN_GROUPS = GN_GROUPS
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
    # it pays for GroupNorm + WS on a GPU is unmeasured (see the README).
    cfg.SOLVER.CHANNELS_LAST = False
    # torch.compile the backbone and head (eager fall-back, with a log line, on failure).
    # Off by default: detection inputs change size from batch to batch (multi-scale
    # resize), so graphs recompile for new shapes.
    cfg.SOLVER.COMPILE = False

    # Autocast precision when SOLVER.AMP.ENABLED: "bf16" (no loss scaling needed on
    # Ampere and newer) or "fp16" (with loss scaling).
    cfg.SOLVER.AMP.PRECISION = "bf16"
    # PyTorch's deterministic algorithms (cuDNN included) so that GPU runs repeat bit for bit
    # (slower; needs CUDNN_BENCHMARK False). CPU runs repeat without it.
    cfg.SOLVER.DETERMINISTIC = False

    # Extra COCO-format datasets to register, each [name, json_file, image_root]; e.g.
    # DATASETS.COCO_FORMAT "[['mine_train', 'ann/train.json', 'images/train']]".
    cfg.DATASETS.COCO_FORMAT = []


def get_bit_cfg(config_file: str | None = None, opts: Sequence[str] = ()) -> CN:
    """Detectron2's default config + BiT keys, merged with a config file and ``KEY VALUE`` overrides."""
    cfg = get_cfg()
    add_bit_config(cfg)
    merge_config(cfg, config_file, opts)
    checkpointing_mode(cfg.MODEL.ACTIVATION_CHECKPOINTING, "MODEL.ACTIVATION_CHECKPOINTING")
    return cfg
