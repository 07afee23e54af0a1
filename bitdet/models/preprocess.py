"""Preprocessing from a model's ``pretrained_cfg``: timm's ``resolve_data_config`` /
``create_transform``.

BiT models take RGB scaled to [-1, 1]; the transforms here produce exactly that from a PIL
image (``ToTensor`` then ``Normalize(mean=0.5, std=0.5)``, i.e. ``x / 127.5 - 1``) with
torchvision, resized as the config says.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Union

from PIL import Image
from torch import nn
from torchvision import transforms as T

from bitdet.models.variants import get_pretrained_cfg

__all__ = ["create_transform", "resolve_data_config"]

_DATA_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
_CROP_MODES = ("squash", "center")


def resolve_data_config(
    model: Union[nn.Module, str, None] = None, **overrides: Any
) -> Dict[str, Any]:
    """The preprocessing settings of a model: its ``pretrained_cfg``, with ``overrides`` applied.

    Args:
        model: a model from :func:`bitdet.create_model` (its ``pretrained_cfg``), a model name,
            or None (BiT's defaults).
        **overrides: any of ``input_size`` (an int side or ``(3, H, W)``), ``interpolation``,
            ``mean``, ``std``, ``crop_pct``, ``crop_mode``; None values are ignored.

    Returns:
        ``{"input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode"}``; for BiT
        ``mean = std = (0.5, 0.5, 0.5)``: input in [-1, 1].
    """
    if isinstance(model, str):
        cfg = get_pretrained_cfg(model).to_dict()
    elif model is not None and getattr(model, "pretrained_cfg", None):
        cfg = dict(model.pretrained_cfg)
    else:
        cfg = get_pretrained_cfg("R50x1").to_dict()
    unknown = set(overrides) - set(_DATA_KEYS)
    if unknown:
        raise KeyError(
            f"unknown preprocessing settings {sorted(unknown)}; expected some of {_DATA_KEYS}"
        )
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    if isinstance(cfg["input_size"], int):
        cfg["input_size"] = (3, cfg["input_size"], cfg["input_size"])
    return {k: (tuple(cfg[k]) if isinstance(cfg[k], list) else cfg[k]) for k in _DATA_KEYS}


class _ToRGB:
    """PIL image in any mode (grayscale, palette, RGBA) -> RGB, as BiT expects three channels."""

    def __call__(self, image: Image.Image) -> Image.Image:
        return image.convert("RGB")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def create_transform(
    input_size: Union[int, tuple] = (3, 224, 224),
    interpolation: str = "bilinear",
    mean: tuple = (0.5, 0.5, 0.5),
    std: tuple = (0.5, 0.5, 0.5),
    crop_pct: float = 1.0,
    crop_mode: str = "squash",
    is_training: bool = False,
) -> T.Compose:
    """A torchvision transform PIL image -> float tensor ``(3, H, W)``; call it with
    ``**data_config``.

    Evaluation: "squash" resizes to ``(H / crop_pct, W / crop_pct)`` ignoring the aspect ratio
    (BiT's test-time resize when ``crop_pct`` is 1), "center" resizes the shorter side to
    ``H / crop_pct``; then a centre crop to ``(H, W)``. Training: BiT's upstream augmentation,
    an Inception-style random-resized crop to ``(H, W)`` and a horizontal flip.

    Returns:
        The transform; with BiT's ``mean = std = 0.5`` its output is in [-1, 1].
    """
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size[-2:])
    if crop_mode not in _CROP_MODES:
        raise ValueError(f"crop_mode {crop_mode!r}: expected one of {_CROP_MODES}")
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct {crop_pct}: expected a fraction in (0, 1]")
    try:
        mode = T.InterpolationMode(interpolation)
    except ValueError:
        choices = [m.value for m in T.InterpolationMode]
        raise ValueError(f"interpolation {interpolation!r}: expected one of {choices}") from None
    if is_training:
        steps = [T.RandomResizedCrop(size, interpolation=mode), T.RandomHorizontalFlip()]
    else:
        scaled = tuple(math.floor(s / crop_pct) for s in size)
        resize = (
            T.Resize(scaled, interpolation=mode)
            if crop_mode == "squash"
            else T.Resize(scaled[0], interpolation=mode)
        )
        steps = [resize, T.CenterCrop(size)]
    return T.Compose([_ToRGB(), *steps, T.ToTensor(), T.Normalize(mean, std)])
