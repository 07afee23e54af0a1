"""Building blocks of BiT's ResNet-v2: the weight-standardized conv and the norm factory."""
from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from bitdet.numerics import GN_EPS, GN_GROUPS, WS_EPS

__all__ = ["StdConv2d", "standardize_weight", "make_conv_layer", "make_norm_layer"]


def standardize_weight(weight: torch.Tensor, eps: float = WS_EPS) -> torch.Tensor:
    """Standardize a conv kernel per output channel: ``(W - mean) / sqrt(var + eps)``.

    Mean and (biased) variance are taken over the input-channel and spatial axes.

    Args:
        weight: kernel of shape ``(out, in, kh, kw)``.
        eps: added to the variance; BiT uses 1e-10.

    Returns:
        The standardized kernel, same shape and memory format.
    """
    var, mean = torch.var_mean(weight, dim=(1, 2, 3), keepdim=True, unbiased=False)
    return (weight - mean) / torch.sqrt(var + eps)


class StdConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose kernel is weight-standardized on every forward (Qiao et al. 2019)."""

    def __init__(self, *args, eps: float = WS_EPS, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = standardize_weight(self.weight, self.eps)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, eps={self.eps:g}"


def make_conv_layer(weight_std: bool = True, ws_eps: float = WS_EPS) -> Callable[..., nn.Conv2d]:
    """Return a bias-free conv constructor: weight-standardized (BiT) or plain (ablation)."""
    if weight_std:
        return functools.partial(StdConv2d, eps=ws_eps, bias=False)
    return functools.partial(nn.Conv2d, bias=False)


def make_norm_layer(norm: str = "GN", num_groups: int = GN_GROUPS) -> Callable[[int], nn.Module]:
    """Return a constructor ``f(channels) -> norm module``.

    Args:
        norm: ``"GN"`` (BiT), or ``"BN"`` for BatchNorm ablations.
        num_groups: groups for GroupNorm; must divide every channel count of the model.
    """
    norm = norm.upper()
    if norm == "GN":

        def group_norm(channels: int) -> nn.GroupNorm:
            if channels % num_groups:
                raise ValueError(
                    f"GroupNorm with {num_groups} groups cannot split {channels} channels; "
                    "choose a width whose channel counts are multiples of the group count"
                )
            return nn.GroupNorm(num_groups, channels, eps=GN_EPS)

        return group_norm
    if norm == "BN":
        return nn.BatchNorm2d
    raise ValueError(f"unknown norm {norm!r}: expected 'GN' or 'BN'")
