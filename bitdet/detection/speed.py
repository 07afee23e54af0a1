"""Speed levers of a BiT detector, each a config key: channels-last, torch.compile, cached WS."""

from __future__ import annotations

import torch
from torch import nn

from bitdet.models.fast import cache_standardized_weights, compile_model

__all__ = ["apply_speed_levers"]


def apply_speed_levers(model: nn.Module, cfg) -> nn.Module:
    """Apply ``SOLVER.CHANNELS_LAST``, ``SOLVER.COMPILE`` and ``MODEL.BIT.CACHE_WS`` to a built
    detector.

    Module names and state-dict keys are unchanged. Compilation covers the dense parts
    (``backbone``, and ``head`` when the detector has one: RetinaNet); box matching, losses
    and NMS are data-dependent and stay eager. It falls back to eager, with one log line,
    if it fails.

    Returns:
        ``model``, modified in place.
    """
    if cfg.SOLVER.CHANNELS_LAST:
        model.to(memory_format=torch.channels_last)
    if cfg.MODEL.BIT.CACHE_WS:
        cache_standardized_weights(model, True)
    if cfg.SOLVER.COMPILE:
        # Detection batches change size (multi-scale resize, padding): dynamic shapes.
        for part in (model.backbone, getattr(model, "head", None)):
            if part is not None:
                compile_model(part, dynamic=None)
    return model
