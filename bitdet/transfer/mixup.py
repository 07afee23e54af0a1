"""MixUp (Zhang et al. 2018) as used by the BiT-HyperRule: one Beta(alpha, alpha) coefficient
per batch, each image mixed with another of the same batch, labels mixed alike."""

from __future__ import annotations

from typing import Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from bitdet.errors import DataError

__all__ = ["MixUp"]

Generator = Union[None, torch.Generator, np.random.Generator]


class MixUp:
    """Batch hook: ``(images, labels, generator) -> (mixed images, soft labels (N, C))``.

    Args:
        alpha: Beta(alpha, alpha) parameter; small values (BiT: 0.1) keep most mixes close
            to one of the two images.
        num_classes: width of the soft labels.

    The pairing is a random permutation of the batch (an image may be paired with itself,
    which is a plain example). ``generator`` makes it reproducible: a ``torch.Generator``
    (seeded per step by the trainer), a NumPy generator, or None for the global RNGs.
    """

    def __init__(self, alpha: float, num_classes: int) -> None:
        if alpha <= 0:
            raise ValueError(f"MixUp alpha must be > 0 (0 means: do not use MixUp), got {alpha}")
        if num_classes < 2:
            raise DataError(f"MixUp needs num_classes >= 2, got {num_classes}")
        self.alpha, self.num_classes = float(alpha), int(num_classes)

    def sample(self, batch_size: int, generator: Generator = None) -> Tuple[float, torch.Tensor]:
        """The mixing coefficient and the partner permutation for a batch."""
        if isinstance(generator, np.random.Generator):
            rng = generator
        else:  # a torch.Generator, or None for torch's global RNG
            rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
        lam = float(rng.beta(self.alpha, self.alpha))
        return lam, torch.from_numpy(rng.permutation(batch_size))

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, generator: Generator = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mix a batch.

        Args:
            images: ``(N, C, H, W)``.
            labels: ``(N,)`` class indices or ``(N, num_classes)`` soft labels.
            generator: see the class docstring.

        Returns:
            Mixed images (same dtype) and float soft labels ``(N, num_classes)``.
        """
        lam, perm = self.sample(images.shape[0], generator)
        perm = perm.to(images.device)
        if labels.dim() == 1:
            labels = F.one_hot(labels.long(), self.num_classes)
        labels = labels.float()
        if labels.shape[1] != self.num_classes:
            raise ValueError(
                f"labels have {labels.shape[1]} classes, MixUp was built for {self.num_classes}"
            )
        mixed = images.mul(lam).add_(images[perm], alpha=1.0 - lam)
        return mixed, labels.mul(lam).add_(labels[perm], alpha=1.0 - lam)

    def __repr__(self) -> str:
        return f"MixUp(alpha={self.alpha}, num_classes={self.num_classes})"
