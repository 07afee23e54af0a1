"""Config keys of the classification engine, shared by pretraining and fine-tuning."""

from __future__ import annotations

from typing import Optional

from detectron2.config import CfgNode as CN

from bitdet.config import check_weights
from bitdet.errors import ConfigError
from bitdet.models.resnetv2 import checkpointing_mode

__all__ = [
    "add_engine_model_config",
    "add_engine_solver_config",
    "add_engine_test_config",
    "check_engine_config",
    "engine_precision",
]


def add_engine_model_config(cfg: CN, variant: str, renamed_note: Optional[str] = None) -> None:
    """Add the ``MODEL`` keys both classification trainers read, but ``MODEL.WEIGHTS`` (whose
    meaning each trainer states), and refuse the old ``MODEL.NAME`` (``renamed_note``: what
    values become, if more than the key)."""
    cfg.MODEL.BIT = CN()
    # Architecture from bitdet.list_models(): "R50x1" ... "R152x4", or a CPU variant such as
    # "R14-tiny" / "R26-tiny" (not paper models); the weights are MODEL.WEIGHTS.
    cfg.MODEL.BIT.VARIANT = variant
    cfg.register_renamed_key("MODEL.NAME", "MODEL.BIT.VARIANT", renamed_note)
    # "cuda" (each process on its local GPU), "cpu", or "" for CUDA when available.
    cfg.MODEL.DEVICE = ""
    # Activation checkpointing of the BiT trunk in training: "none", "stage" (keep each stage's
    # input, recompute the stage in backward) or "unit" (the same per bottleneck unit). Same
    # losses and gradients, less activation memory, about one more forward per step.
    cfg.MODEL.ACTIVATION_CHECKPOINTING = "none"


def add_engine_solver_config(
    cfg: CN, batch_split: int, checkpoint_period: int, keep_last: int
) -> None:
    """Add the ``SOLVER`` keys that :class:`bitdet.engine.ClassifierTrainer` reads.

    Args:
        cfg: a config with a ``SOLVER`` node.
        batch_split, checkpoint_period, keep_last: the caller's defaults for those keys.
    """
    # Micro-batches per step (gradient accumulation) when the per-GPU batch does not fit;
    # 0 = automatic: the smallest power of two that fits in CUDA memory (1 on CPU).
    cfg.SOLVER.BATCH_SPLIT = batch_split
    # Mixed precision, Detectron2's keys: ENABLED autocasts the forward pass to PRECISION (the
    # loss and the optimizer stay in fp32); False trains in fp32.
    cfg.SOLVER.AMP = CN()
    cfg.SOLVER.AMP.ENABLED = False
    # "bf16" (no loss scaling needed). Detectron2's other value, "fp16", needs loss scaling,
    # which this engine does not do: it is refused.
    cfg.SOLVER.AMP.PRECISION = "bf16"
    cfg.register_renamed_key(
        "SOLVER.PRECISION",
        "SOLVER.AMP.ENABLED",
        "'fp32' is SOLVER.AMP.ENABLED False, 'bf16' is SOLVER.AMP.ENABLED True with "
        "SOLVER.AMP.PRECISION bf16",
    )
    # channels_last memory format for model and inputs. Off: what timm's and torchvision's
    # users get; whether it pays for GroupNorm + WS on a GPU is unmeasured (see
    # docs/performance.md).
    cfg.SOLVER.CHANNELS_LAST = False
    # torch.compile the model, falling back to eager (with a log line) if compilation fails.
    # Off: eager, like the peers; compiling takes minutes and its gain on a GPU is unmeasured.
    cfg.SOLVER.COMPILE = False
    # Steps between resumable checkpoints (one is also written at the end).
    cfg.SOLVER.CHECKPOINT_PERIOD = checkpoint_period
    # Periodic checkpoints to keep (0 = all).
    cfg.SOLVER.KEEP_LAST = keep_last
    # Steps between console (with ETA) / metrics.json / TensorBoard writes.
    cfg.SOLVER.LOG_PERIOD = 20


def engine_precision(cfg: CN) -> str:
    """The engine's precision for ``SOLVER.AMP``: ``"bf16"`` when enabled, else ``"fp32"``.

    Raises:
        ConfigError: ``SOLVER.AMP.PRECISION`` other than ``"bf16"`` (``"fp16"`` included: the
            engine does no loss scaling).
    """
    precision = cfg.SOLVER.AMP.PRECISION
    if precision != "bf16":
        raise ConfigError(
            f"SOLVER.AMP.PRECISION {precision!r}: pretraining and fine-tuning autocast to 'bf16' "
            "only (no loss scaling); set 'bf16', or SOLVER.AMP.ENABLED False for fp32"
        )
    return "bf16" if cfg.SOLVER.AMP.ENABLED else "fp32"


def check_engine_config(cfg: CN) -> None:
    """Check the merged engine keys both trainers share (``MODEL.ACTIVATION_CHECKPOINTING``,
    ``MODEL.WEIGHTS``, ``SOLVER.AMP``), raising a one-line :class:`ConfigError` naming the key."""
    checkpointing_mode(cfg.MODEL.ACTIVATION_CHECKPOINTING, "MODEL.ACTIVATION_CHECKPOINTING")
    check_weights(cfg.MODEL.WEIGHTS)
    engine_precision(cfg)


def add_engine_test_config(cfg: CN) -> None:
    """Add the ``TEST`` keys that :func:`bitdet.engine.evaluate_classifier` reads."""
    # Evaluation batch size (evaluation runs on the main process).
    cfg.TEST.IMS_PER_BATCH = 256
    # Evaluation standardizes each weight-standardized kernel once per pass instead of once
    # per batch (identical results); False recomputes it every batch.
    cfg.TEST.CACHE_WS = True
