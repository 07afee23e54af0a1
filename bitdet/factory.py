"""``create_model``: a BiT model by name, optionally with weights.

It sits above :mod:`bitdet.models` (the networks) and :mod:`bitdet.weights` (the files):
weights may build a model, but ``bitdet.models`` never imports ``bitdet.weights``.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence, Union

from bitdet.models.resnetv2 import ResNetV2, ResNetV2Features
from bitdet.models.variants import get_pretrained_cfg, resolve
from bitdet.weights.errors import CheckpointError
from bitdet.weights.hub import is_hub_id
from bitdet.weights.loading import WeightsFile, load_weights, read_weights
from bitdet.weights.official import pretrained_path

__all__ = ["create_model", "head_of"]


def head_of(weights: WeightsFile) -> int:
    """The head size a model built for ``weights`` gets by default: the file's (0: it has none)."""
    return weights.arch.num_classes if weights.arch is not None else 0


def create_model(
    name: str,
    num_classes: Optional[int] = None,
    pretrained: Union[None, bool, str, os.PathLike, WeightsFile] = None,
    zero_head: Optional[bool] = None,
    features_only: bool = False,
    out_indices: Sequence[int] = (0, 1, 2, 3, 4),
    **kwargs,
) -> Union[ResNetV2, ResNetV2Features]:
    """Build a BiT ResNet-v2 by name, as timm's ``create_model``.

    The model takes RGB ``(N, 3, H, W)`` scaled to [-1, 1] (``x / 127.5 - 1`` on 0..255
    pixels); ``model.pretrained_cfg`` says so (mean = std = 0.5, input size, interpolation) and
    :func:`bitdet.models.resolve_data_config` + :func:`bitdet.models.create_transform` turn it
    into preprocessing.

    Args:
        name: ``"BiT-M-R101x3"``, ``"BiT-S-R50x1"``, a bare architecture ``"R50x1"``, a
            small CPU variant such as ``"R14-tiny"`` (see :func:`bitdet.list_models`), or a
            hub id (``"hf-hub:timm/resnetv2_50x1_bit.goog_in21k"``): the architecture, head
            size and weight-standardization epsilon then come from its weights, which are
            loaded unless ``pretrained=False``.
        num_classes: head size; 0 gives a headless backbone. Defaults to the head of the
            weights (``pretrained`` or a hub id's file; 0 for a headless file), else the
            upstream class count of a BiT-S/M name (1000 / 21843), else 1000. A size other
            than the file's gives a new head.
        pretrained: None (random init), True (the named official checkpoint, from the cache
            or its public URL), or weights in any format bitdet reads: a path (official
            ``.npz``, bitdet, Detectron2, timm, bit_pytorch or transformers file), an
            ``hf-hub:`` id, an official name or file name (``"BiT-M-R50x1"``,
            ``"BiT-M-R50x1.npz"``: the current folder, then the cache), or a
            :class:`~bitdet.weights.WeightsFile` already read (see
            :func:`bitdet.weights.load_weights`). An official checkpoint must hold the
            official architecture and head, else :class:`~bitdet.weights.CheckpointError`.
        zero_head: zero-initialise the head (BiT fine-tuning). Default: True when the head is
            new (``num_classes`` differs from the checkpoint's), which loading does anyway.
        features_only: return a :class:`ResNetV2Features` (a list of feature maps, with
            ``feature_info.channels()`` / ``.reduction()``) instead of the classifier.
        out_indices: with ``features_only``, positions in ``("stem", "res2", ..., "res5")``.
        **kwargs: passed to :class:`ResNetV2` (``ws_eps``, ``in_channels``, ...).

    Returns:
        The model, in training mode.
    """
    if is_hub_id(name):
        model = _create_from_hub(
            name, 0 if features_only else num_classes, pretrained, zero_head, **kwargs
        )
        return ResNetV2Features(model, out_indices) if features_only else model
    arch_name, arch, pre = resolve(name)
    if pretrained is True:  # the cache's file: read_weights checks its architecture and head
        pretrained = pretrained_path(name)
    weights = None
    if pretrained:
        weights = pretrained if isinstance(pretrained, WeightsFile) else read_weights(pretrained)
    if features_only:
        num_classes = 0  # headless: loading ignores a file's head
    if num_classes is None:
        num_classes = head_of(weights) if weights is not None else pre.num_classes if pre else 1000
    model = ResNetV2(
        arch.layers,
        width=arch.width,
        stem_width=arch.stem_width,
        num_classes=num_classes,
        zero_head=bool(zero_head),
        **kwargs,
    )
    model.name = name
    model.pretrained_cfg = get_pretrained_cfg(name).to_dict()
    if weights is not None:
        load_weights(model, weights, zero_head=bool(zero_head))
    return ResNetV2Features(model, out_indices) if features_only else model


def _create_from_hub(
    name: str, num_classes: Optional[int], pretrained, zero_head: Optional[bool], **kwargs
) -> ResNetV2:
    """``create_model`` for an ``hf-hub:`` id: the network is the one its weights file describes."""
    if pretrained not in (None, True, False):
        raise ValueError(
            f"create_model({name!r}): the hub id names the weights; pass "
            f"pretrained=None/True/False, not {pretrained!r}"
        )
    weights = read_weights(name)
    arch = weights.arch
    if arch is None or len(arch.layers) != 4:
        raise CheckpointError(f"{name} ({weights.format}) does not hold a complete BiT ResNet-v2")
    if weights.ws_eps is not None:
        kwargs.setdefault("ws_eps", weights.ws_eps)
    model = ResNetV2(
        arch.layers,
        width=1,
        stem_width=arch.stem_channels,
        num_classes=head_of(weights) if num_classes is None else num_classes,
        zero_head=bool(zero_head),
        **kwargs,
    )
    model.name = name
    if pretrained is not False:
        load_weights(model, weights, zero_head=bool(zero_head))
    return model
