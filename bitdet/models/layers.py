"""Building blocks of BiT's ResNet-v2: the weight-standardized conv and the norm factory."""

from __future__ import annotations

import functools
from typing import Callable, Optional, Tuple

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

    The statistics are per row of the kernel seen as ``(out, in*kh*kw)``, which is exactly
    ``F.layer_norm`` without affine parameters: one fused reduction kernel forward and one
    backward instead of separate mean, variance and arithmetic ops. A channels-last kernel is
    normalised through its ``(out, kh*kw*in)`` memory-order view, so neither direction copies it.

    Each row is first shifted by its first element, a constant to the gradient: the result
    and its gradient are those of the formula (standardizing is invariant to a per-row
    shift), but a row whose mean is large against its spread no longer loses its digits to
    cancellation. Unshifted, the row mean rounded to the working precision is off by up to
    half a unit in the last place of the mean, which is large relative to a small standard
    deviation; after the shift the values, and so that rounding, are of the order of the
    spread. The subtraction of two nearby floats is exact, so nothing is lost on the way.
    """
    out = weight.shape[0]
    if (
        weight.dim() == 4
        and not weight.is_contiguous()
        and weight.is_contiguous(memory_format=torch.channels_last)
    ):
        nhwc = weight.permute(0, 2, 3, 1)  # a view: channels-last memory is (out, kh, kw, in)
        flat = _shifted_rows(nhwc.reshape(out, -1))
        return F.layer_norm(flat, flat.shape[1:], eps=eps).view(nhwc.shape).permute(0, 3, 1, 2)
    flat = _shifted_rows(weight.reshape(out, -1))
    return F.layer_norm(flat, flat.shape[1:], eps=eps).view(weight.shape)


def _shifted_rows(flat: torch.Tensor) -> torch.Tensor:
    """``flat`` minus its first column, which is held constant for autograd (see
    :func:`standardize_weight`)."""
    return flat - flat[:, :1].detach()


class StdConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose kernel is weight-standardized on every forward (Qiao et al. 2019).

    Two opt-in fast paths leave the numerics unchanged (the same :func:`standardize_weight`
    runs, only less often); :mod:`bitdet.models.fast` switches them on for a whole model:

    * ``cache_weight``: when no gradient can flow to the kernel (``torch.no_grad``,
      ``torch.inference_mode``, or a frozen kernel), reuse the standardized kernel, already
      cast to the autocast dtype, until the parameter changes. A change is detected through
      its storage pointer, version counter (bumped by every in-place update: optimizer steps,
      ``load_state_dict``, ``copy_``), device and dtype. Writes through ``weight.data``
      bypass the version counter: call :meth:`clear_weight_cache` after those.
    * ``step_weight``: a standardized kernel supplied from outside for one optimizer step
      (see :class:`bitdet.models.fast.StandardizeOncePerStep`), used instead of recomputing.
    """

    def __init__(self, *args, eps: float = WS_EPS, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.eps = eps
        self.cache_weight = False
        self.step_weight: Optional[torch.Tensor] = None
        self._ws_cache: Optional[Tuple[tuple, torch.Tensor]] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(
            x,
            self.standardized_weight(),
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
        )

    def standardized_weight(self) -> torch.Tensor:
        """The kernel this forward uses: ``standardize_weight(self.weight, self.eps)``, or an equal
        tensor from the step slot or the inference cache."""
        if self.step_weight is not None:
            return self.step_weight
        if (
            self.cache_weight
            # compiled graphs fuse WS themselves; no guards on pointers
            and not torch.compiler.is_compiling()
            and not (torch.is_grad_enabled() and self.weight.requires_grad)
        ):
            return self._cached_weight()
        return standardize_weight(self.weight, self.eps)

    def _cached_weight(self) -> torch.Tensor:
        weight = self.weight
        device_type = weight.device.type
        target = (
            torch.get_autocast_dtype(device_type)
            if torch.is_autocast_enabled(device_type)
            else weight.dtype
        )
        key = (weight.data_ptr(), weight._version, weight.device, weight.dtype, target, self.eps)
        if self._ws_cache is not None and self._ws_cache[0] == key:
            return self._ws_cache[1]
        # Build the cache outside inference mode so that it stays usable in ordinary no-grad
        # code and as a constant next to inputs that require grad (frozen layers in training).
        with torch.inference_mode(False), torch.no_grad():
            cached = standardize_weight(weight, self.eps).to(target)
        self._ws_cache = (key, cached)
        return cached

    def clear_weight_cache(self) -> None:
        """Drop the cached standardized kernel (needed only after writes through
        ``weight.data``)."""
        self._ws_cache = None

    def __getstate__(self) -> dict:
        # The cache and the step slot are derived tensors: never pickle or deep-copy them.
        state = dict(super().__getstate__())
        state["_ws_cache"] = None
        state["step_weight"] = None
        return state

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, eps={self.eps:g}"


def make_conv_layer(ws_eps: float = WS_EPS) -> Callable[..., nn.Conv2d]:
    """Return a bias-free weight-standardized conv constructor (BiT)."""
    return functools.partial(StdConv2d, eps=ws_eps, bias=False)


def make_norm_layer() -> Callable[[int], nn.Module]:
    """Return a constructor ``f(channels) -> GroupNorm`` with BiT's groups and epsilon."""

    def group_norm(channels: int) -> nn.GroupNorm:
        if channels % GN_GROUPS:
            raise ValueError(
                f"GroupNorm with {GN_GROUPS} groups cannot split {channels} channels; "
                "choose a width whose channel counts are multiples of the group count"
            )
        return nn.GroupNorm(GN_GROUPS, channels, eps=GN_EPS)

    return group_norm
