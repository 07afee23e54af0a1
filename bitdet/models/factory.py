"""``create_model``: a BiT model by name, optionally with weights."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Union

import torch

from bitdet.checkpoint.download import default_cache_dir, download
from bitdet.checkpoint.errors import CheckpointMismatchError
from bitdet.checkpoint.loading import load_weights
from bitdet.checkpoint.npz import npz_key_map, read_npz
from bitdet.models.resnetv2 import ResNetV2
from bitdet.models.variants import resolve

__all__ = ["check_npz_architecture", "create_model", "pretrained_path"]

logger = logging.getLogger(__name__)


def check_npz_architecture(path: os.PathLike, name: str) -> None:
    """Check that an official-layout npz holds exactly the parameters of model ``name``.

    Every array must be readable and every parameter of the architecture (head of the
    upstream class count included) present with its shape; nothing else may be there.

    Raises:
        CheckpointMismatchError: naming the missing, unexpected and misshapen keys.
    """
    arch_name, _, pre = resolve(name)
    arrays = read_npz(path)
    with torch.device("meta"):  # shapes only: no memory for the weights
        model = create_model(arch_name, num_classes=pre.num_classes if pre else 1000)
    params = dict(model.named_parameters())
    expected = {key: tuple(params[param].shape) for param, key in npz_key_map(model).items()}
    found = {key: (a.shape[3], a.shape[2], a.shape[0], a.shape[1]) if a.ndim == 4 else tuple(a.shape)
             for key, a in arrays.items()}  # HWIO kernels -> OIHW
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = [(k, expected[k], found[k]) for k in sorted(set(expected) & set(found)) if expected[k] != found[k]]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(path, missing, unexpected, mismatched)


def pretrained_path(name: str, cache_dir: Optional[os.PathLike] = None, progress: bool = True) -> Path:
    """Local path of a named official checkpoint, downloading it into the cache if absent.

    A download enters the cache only when it is complete (its ``Content-Length``), matches
    the recorded sha256 when there is one, and :func:`check_npz_architecture` accepts it.

    Args:
        name: e.g. ``"BiT-M-R50x1"``.
        cache_dir: defaults to :func:`bitdet.checkpoint.download.default_cache_dir`.
    """
    _, _, pre = resolve(name)
    if pre is None:
        raise KeyError(f"{name!r} has no official checkpoint; pass a weights file path instead")
    dest = Path(cache_dir or default_cache_dir()) / f"{name}.npz"
    return download(pre.url, dest, sha256=pre.sha256, validate=lambda p: check_npz_architecture(p, name),
                    progress=progress)


def create_model(
    name: str,
    num_classes: Optional[int] = None,
    pretrained: Union[None, bool, str, os.PathLike] = None,
    zero_head: Optional[bool] = None,
    **kwargs,
) -> ResNetV2:
    """Build a BiT ResNet-v2 by name.

    Args:
        name: ``"BiT-M-R101x3"``, ``"BiT-S-R50x1"``, a bare architecture ``"R50x1"``, or a
            small CPU variant such as ``"R14-tiny"`` (see :func:`bitdet.list_models`).
        num_classes: head size; 0 gives a headless backbone. Defaults to the upstream class
            count of a BiT-S/M name (1000 / 21843), else 1000.
        pretrained: None (random init), True (the named official checkpoint, from the cache
            or its public URL), or a path to an official ``.npz`` or a PyTorch checkpoint.
        zero_head: zero-initialise the head (BiT fine-tuning). Default: True when the head is
            new (``num_classes`` differs from the checkpoint's), which loading does anyway.
        **kwargs: passed to :class:`ResNetV2` (``norm``, ``weight_std``, ``ws_eps``, ...).

    Returns:
        The model, in training mode.
    """
    arch_name, arch, pre = resolve(name)
    if num_classes is None:
        num_classes = pre.num_classes if pre else 1000
    model = ResNetV2(
        arch.layers,
        width=arch.width,
        stem_width=arch.stem_width,
        num_classes=num_classes,
        zero_head=bool(zero_head),
        **kwargs,
    )
    model.name = name
    if pretrained is True:
        pretrained = pretrained_path(name)
    if pretrained:
        load_weights(model, pretrained, zero_head=bool(zero_head))
    return model
