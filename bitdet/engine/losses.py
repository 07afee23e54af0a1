"""Classification losses: softmax cross-entropy (single label) and sigmoid cross-entropy
(multi-label)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from bitdet.errors import ConfigError

__all__ = ["LOSSES", "build_loss", "sigmoid_cross_entropy", "softmax_cross_entropy"]


def softmax_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean softmax cross-entropy.

    Args:
        logits: ``(N, C)``.
        targets: ``(N,)`` class indices, or ``(N, C)`` probabilities (soft labels, e.g. MixUp).

    Returns:
        Scalar loss, computed in float32 whatever the logits' dtype.
    """
    return F.cross_entropy(
        logits.float(), targets if targets.dtype == torch.int64 else targets.float()
    )


def sigmoid_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sigmoid cross-entropy summed over classes, averaged over the batch.

    Summing over classes (rather than averaging) keeps the gradient of the few positive
    labels from being diluted by thousands of negatives; with a head bias initialised to
    about -10 (BiT's multi-label upstream) the initial loss is small and training stable.

    Args:
        logits: ``(N, C)``.
        targets: ``(N, C)`` multi-hot (or soft) labels in [0, 1], or ``(N,)`` class indices
            (turned into one-hot).

    Returns:
        Scalar loss in float32.
    """
    logits = logits.float()
    if targets.dtype == torch.int64 and targets.dim() == 1:
        targets = F.one_hot(targets, logits.shape[1])
    per_class = F.binary_cross_entropy_with_logits(logits, targets.float(), reduction="none")
    return per_class.sum(dim=1).mean()


LOSSES = {"softmax": softmax_cross_entropy, "sigmoid": sigmoid_cross_entropy}


def build_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss function called ``name`` (``"softmax"`` or ``"sigmoid"``)."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ConfigError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}") from None
