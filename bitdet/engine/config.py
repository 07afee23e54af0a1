"""Config keys of the classification engine, shared by pretraining and fine-tuning."""

from __future__ import annotations

from detectron2.config import CfgNode as CN

__all__ = ["add_engine_solver_config", "add_engine_test_config"]


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
    # "fp32" or "bf16" (autocast; loss and optimizer in fp32, no loss scaling needed).
    cfg.SOLVER.PRECISION = "fp32"
    # channels_last memory format for model and inputs. Off: what timm's and torchvision's
    # users get; whether it pays for GroupNorm + WS on a GPU is unmeasured (see docs/performance.md).
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


def add_engine_test_config(cfg: CN) -> None:
    """Add the ``TEST`` keys that :func:`bitdet.engine.evaluate_classifier` reads."""
    # Evaluation standardizes each weight-standardized kernel once per pass instead of once
    # per batch (identical results); False recomputes it every batch.
    cfg.TEST.CACHE_WS = True
