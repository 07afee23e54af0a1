"""Held-out evaluation of a classifier: top-1/top-5, per-class accuracy and confusion matrix,
or precision@1 and mAP for multi-label data. All accuracies are percentages."""

from __future__ import annotations

import contextlib
from typing import Dict, Optional, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from bitdet.engine.data import collate_skip_none
from bitdet.errors import DataError
from bitdet.models.fast import standardized_weight_cache

__all__ = ["classification_metrics", "evaluate_classifier", "multilabel_metrics", "predict"]


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    dataset: Dataset,
    batch_size: int = 256,
    num_workers: int = 0,
    device: Optional[Union[str, torch.device]] = None,
    precision: str = "fp32",
    cache_ws: bool = True,
) -> Dict[str, object]:
    """Logits and targets for a whole dataset (unusable samples skipped and counted).

    Inputs take the model's memory format (channels-last when its kernels are); with
    ``cache_ws`` each weight-standardized kernel is standardized once for the whole pass
    instead of once per batch (same results, see :class:`bitdet.models.StdConv2d`).

    Returns:
        ``{"logits": (N, C) float32, "targets": (N,) or (N, C), "skipped": int}``.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_skip_none,
        pin_memory=device.type == "cuda",
    )
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if precision == "bf16"
        else contextlib.nullcontext()
    )
    memory_format = _memory_format(model)
    logits, targets, skipped = [], [], 0
    try:
        with standardized_weight_cache(model) if cache_ws else contextlib.nullcontext():
            for images, target, n_skip in loader:
                skipped += n_skip
                if images.numel() == 0:
                    continue
                with autocast:
                    out = model(
                        images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
                    )
                logits.append(out.float().cpu())
                targets.append(target)
    finally:
        model.train(was_training)
    if not logits:
        raise DataError(f"no usable samples in the evaluation set ({skipped} skipped)")
    return {"logits": torch.cat(logits), "targets": torch.cat(targets), "skipped": skipped}


def _memory_format(model: torch.nn.Module) -> torch.memory_format:
    """Channels-last when the model's first conv kernel is (e.g. after
    ``model.to(memory_format=...)``)."""
    for p in model.parameters():
        if p.dim() == 4:
            channels_last = (
                p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
            )
            return torch.channels_last if channels_last else torch.contiguous_format
    return torch.contiguous_format


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor) -> Dict[str, object]:
    """Single-label metrics from logits ``(N, C)`` and class indices ``(N,)``.

    Returns:
        ``top1``, ``top5`` (percent; top-5 is top-C when C < 5), ``mean_per_class_acc``,
        ``per_class_acc`` (list, percent; NaN for classes absent from ``targets``),
        ``confusion`` (C x C list, rows = true class), ``num_samples``.
    """
    num_classes = logits.shape[1]
    k = min(5, num_classes)
    topk = logits.topk(k, dim=1).indices
    correct = topk == targets[:, None]
    pred = topk[:, 0]
    confusion = torch.bincount(targets * num_classes + pred, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )
    support = confusion.sum(1).double()
    per_class = (confusion.diag().double() / support * 100).tolist()
    present = [v for v, s in zip(per_class, support.tolist()) if s > 0]
    return {
        "top1": correct[:, 0].double().mean().item() * 100,
        "top5": correct.any(1).double().mean().item() * 100,
        "mean_per_class_acc": float(np.mean(present)) if present else float("nan"),
        "per_class_acc": per_class,
        "confusion": confusion.tolist(),
        "num_samples": int(len(targets)),
    }


def _average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """AP of one class: mean of the precision at the rank of each positive (no interpolation)."""
    order = np.argsort(-scores, kind="stable")
    hits = positives[order]
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision_at[hits].mean())


def multilabel_metrics(logits: torch.Tensor, targets: torch.Tensor) -> Dict[str, object]:
    """Multi-label metrics from logits ``(N, C)`` and multi-hot targets ``(N, C)``.

    Returns:
        ``precision@1`` (percent of images whose top-scoring class is a true label), ``mAP``
        (percent; mean over classes that have at least one positive), ``num_samples``.
    """
    positives = targets > 0.5
    top1 = logits.argmax(1)
    p_at_1 = positives[torch.arange(len(top1)), top1].double().mean().item() * 100
    scores, pos = logits.double().numpy(), positives.numpy()
    aps = [
        _average_precision(scores[:, c], pos[:, c]) for c in range(pos.shape[1]) if pos[:, c].any()
    ]
    return {
        "precision@1": p_at_1,
        "mAP": float(np.mean(aps)) * 100 if aps else float("nan"),
        "num_samples": int(len(targets)),
    }


def evaluate_classifier(
    model: torch.nn.Module,
    dataset: Dataset,
    batch_size: int = 256,
    multilabel: bool = False,
    num_workers: int = 0,
    device: Optional[Union[str, torch.device]] = None,
    precision: str = "fp32",
    cache_ws: bool = True,
) -> Dict[str, object]:
    """Evaluate ``model`` on ``dataset`` of ``(image, target)`` pairs.

    Args:
        model: a classifier returning logits ``(N, C)``; restored to its train/eval mode after.
        dataset: targets are class indices, or multi-hot vectors when ``multilabel``.
        batch_size, num_workers: DataLoader settings.
        device: default: the model's device.
        precision: ``"fp32"`` or ``"bf16"`` (autocast).
        cache_ws: standardize each kernel once for the whole pass (see :func:`predict`).

    Returns:
        :func:`classification_metrics` or :func:`multilabel_metrics`, plus ``skipped`` (unusable
        images).
    """
    out = predict(model, dataset, batch_size, num_workers, device, precision, cache_ws)
    metrics = (multilabel_metrics if multilabel else classification_metrics)(
        out["logits"], out["targets"]
    )
    metrics["skipped"] = out["skipped"]
    return metrics
