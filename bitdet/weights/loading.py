"""The one weights loader behind every entry point: ``create_model(pretrained=...)``,
``load_weights``, Detectron2's ``MODEL.WEIGHTS`` (:class:`bitdet.detection.BiTCheckpointer`),
``bitdet-convert``, and fine-tuning / pretraining ``--weights``.

A weights source is a file path, an ``hf-hub:`` id, or an official BiT name
(``BiT-M-R50x1``). The container is sniffed from the file's bytes
(:mod:`bitdet.weights.sniff`), the key layout from its names
(:mod:`bitdet.weights.layouts`: official npz, bitdet, Detectron2, timm, the authors'
bit_pytorch, transformers), and the architecture from its shapes
(:mod:`bitdet.weights.architecture`). Loading then checks every trunk tensor of the model
against the file before changing anything: fewer than all of them is an error that names the
format, both architectures and what to set.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from bitdet.numerics import WS_EPS
from bitdet.utils.io import PathLike
from bitdet.weights.architecture import FileArchitecture, architecture_of
from bitdet.weights.checkpoint_file import (
    RUNNING_STATS,
    caffe2_weights,
    load_pickle,
    torch_load_safely,
)
from bitdet.weights.errors import CheckpointError, CheckpointMismatchError, WeightsNotFoundError
from bitdet.weights.hub import hub_weights, is_hub_id
from bitdet.weights.layouts import LAYOUTS, Layout, detect_layout, layout_keys
from bitdet.weights.npz import read_npz
from bitdet.weights.official import check_official, official_name, pretrained_path
from bitdet.weights.sniff import CONTAINERS, sniff_container

__all__ = [
    "LoadReport",
    "WeightsFile",
    "apply_weights",
    "check_trunk",
    "load_weights",
    "read_state_dict",
    "read_weights",
    "read_weights_file",
    "resolve_source",
    "set_ws_eps",
]

logger = logging.getLogger(__name__)

_HEAD = ("fc.weight", "fc.bias")
_EXAMPLES = 5
WeightsSource = Union[str, os.PathLike]


@dataclass
class LoadReport:
    """What a load did: the format, tensors loaded, the head, what was left at initialisation.

    ``new_head`` is True when the model's head was initialised here instead of loaded
    (``head`` says why); a headless model has none.
    """

    path: str
    loaded: int
    head: str
    not_in_file: List[str] = field(default_factory=list)
    format: str = ""
    ws_eps: Optional[float] = None
    new_head: bool = False

    def __str__(self) -> str:
        text = f"loaded {self.loaded} tensors from {self.path}" + (
            f" ({self.format})" if self.format else ""
        )
        text += f"; head: {self.head}"
        if self.not_in_file:
            text += f"; kept at initialisation (not in file): {', '.join(self.not_in_file)}"
        return text


@dataclass
class WeightsFile:
    """A weights file read and renamed to bitdet's parameter names.

    Attributes:
        source: what was asked for (a path, an ``hf-hub:`` id, a BiT name).
        path: the local file.
        container: see :data:`bitdet.weights.sniff.CONTAINERS`.
        layout: the key layout found.
        prefix: the prefix every BiT key carried (``module.``, ``backbone.bottom_up.``, ...).
        state: tensors under bitdet's names (trunk and head).
        file_keys: bitdet name -> the key in the file.
        unmapped: keys under ``prefix`` that are no BiT tensor (an error unless a caller allows
            them).
        other: keys outside ``prefix`` (a detector's FPN and head, for example).
        arch: the architecture read from the shapes.
        ws_eps: the weight-standardization epsilon that reproduces the source model, when the
            format or file says (timm, transformers: 1e-8; bitdet files record theirs); None
            leaves the model's own (the official 1e-10 unless configured otherwise).
        meta: the file's ``"meta"`` entry (bitdet checkpoints), if any.
        detectron2: the file is a Detectron2 checkpoint (BiT trunk under ``backbone.``).
        arrays: every tensor of the file under its own key.
        extras: the file's entries beside the state dict (``optimizer``, ``iteration``, ...).
    """

    source: str
    path: Path
    container: str
    layout: Layout
    prefix: str
    state: Dict[str, torch.Tensor]
    file_keys: Dict[str, str]
    unmapped: List[str]
    other: List[str]
    arch: FileArchitecture
    ws_eps: Optional[float]
    meta: Dict[str, Any] = field(default_factory=dict)
    detectron2: bool = False
    arrays: Dict[str, Any] = field(default_factory=dict, repr=False)
    extras: Dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def format(self) -> str:
        """The detected format in words, e.g. ``"timm resnetv2_*_bit state dict, safetensors
        file"``."""
        what = self.layout.description
        if self.detectron2:
            what = f"Detectron2 checkpoint with a {what.split(' (')[0]} trunk under {self.prefix!r}"
        elif self.prefix:
            what += f" under {self.prefix!r}"
        return f"{what}; {CONTAINERS[self.container]}"


def resolve_source(source: WeightsSource) -> Tuple[Path, Optional[Dict[str, Any]]]:
    """A local path for ``source`` and the hub ``config.json`` when it came from the hub.

    Args:
        source: a file path, ``hf-hub:<org>/<name>[@<revision>]``, or an official BiT name or
            bare file name (``BiT-M-R50x1``, ``BiT-M-R50x1.npz``: that file in the current
            folder, else in the bitdet cache, downloaded there if absent).

    Raises:
        WeightsNotFoundError: nothing exists at a path, or an official file is nowhere (the
            message names every place searched); the message lists the accepted forms.
    """
    text = str(source)
    if is_hub_id(text):
        found = hub_weights(text)
        return found.path, found.config
    path = Path(source).expanduser()
    if path.is_file():
        return path, None
    official = official_name(text)
    if official is not None:
        return pretrained_path(official, looked_at=[path]), None
    from bitdet.models.variants import PRETRAINED

    hint = ""
    if text.startswith("BiT-"):
        names = ", ".join(list(PRETRAINED)[:3])
        hint = f" ({text} is no official BiT checkpoint; those are {names}, ...)"
    raise WeightsNotFoundError(
        f"weights {text!r} not found: no such file{hint}. Give a weights file (official .npz, "
        "bitdet / Detectron2 / timm / bit_pytorch / transformers checkpoint), an official name "
        "such as BiT-M-R50x1, or a hub id such as hf-hub:timm/resnetv2_50x1_bit.goog_in21k"
    )


def _read_container(path: Path, container: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``(arrays by key, the wrapper's other entries)`` of a weights file."""
    if container == "npz":
        return read_npz(path), {}
    if container == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path)), {}
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(
                f"{path} is not a readable safetensors file (truncated?): {e}"
            ) from e
    if container == "pickle":
        obj = load_pickle(path)
        if isinstance(obj, dict):
            obj = caffe2_weights(obj)
    else:
        obj = torch_load_safely(path)
    wrapper: Dict[str, Any] = {}
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            wrapper = {k: v for k, v in obj.items() if k != key}
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a dict of tensors (a state dict)"
        )
    arrays = {
        k: v
        for k, v in obj.items()
        if isinstance(k, str) and (torch.is_tensor(v) or isinstance(v, np.ndarray))
    }
    if not arrays:
        raise CheckpointError(
            f"{path} holds no tensors (entries: {', '.join(map(str, list(obj)[:_EXAMPLES]))})"
        )
    return arrays, wrapper


def _examples(keys: Sequence[str]) -> str:
    keys = list(keys)
    more = f", ... ({len(keys) - _EXAMPLES} more)" if len(keys) > _EXAMPLES else ""
    return ", ".join(keys[:_EXAMPLES]) + more


def _check_transformers(path: Path, keys: Sequence[str], config: Optional[Dict[str, Any]]) -> None:
    """Only transformers' pre-activation BiT (``layer_type="preactivation"``, symmetric padding,
    output stride 32) is BiT's network; its ViT-hybrid ``bottleneck`` variant is not."""
    if any(k.endswith("bit.embedder.norm.weight") or ".downsample.norm." in k for k in keys):
        raise CheckpointError(
            f"{path}: a transformers BiT checkpoint with layer_type 'bottleneck' (the ViT-hybrid "
            "backbone): not BiT's pre-activation ResNet-v2, so bitdet does not load it"
        )
    if config is None:
        sibling = path.parent / "config.json"
        if not sibling.is_file():
            raise CheckpointError(
                f"{path}: a transformers BiT checkpoint needs its config.json beside it "
                "(save_pretrained writes both) to tell whether it is BiT's network "
                "(layer_type, global_padding)"
            )
        import json

        config = json.loads(sibling.read_text())
    differs = {
        "layer_type": (config.get("layer_type", "preactivation"), "preactivation"),
        "global_padding": (str(config.get("global_padding")).upper(), "NONE"),
        "embedding_dynamic_padding": (bool(config.get("embedding_dynamic_padding", False)), False),
        "output_stride": (config.get("output_stride", 32), 32),
    }
    bad = {k: v for k, (v, want) in differs.items() if v != want}
    if bad:
        raise CheckpointError(
            f"{path}: transformers BiT config {bad} is not BiT's network (bitdet reads layer_type "
            "'preactivation', global_padding null, embedding_dynamic_padding false, "
            "output_stride 32: the configs of the google/bit-* checkpoints)"
        )


def read_weights(source: WeightsSource) -> WeightsFile:
    """Read a weights file of any supported format into bitdet's names (see the module docstring).

    Raises:
        WeightsNotFoundError: no such file or name.
        CheckpointError: not a weights file (says what it is), unsafe, unreadable, of an
            unknown key layout (shows its keys), or an official checkpoint (by name, or the
            cache's file) without the official architecture and head.
    """
    path, hub_config = resolve_source(source)
    weights = read_weights_file(path, str(source), hub_config)
    official = None if is_hub_id(str(source)) else official_name(source) or official_name(path)
    if official is not None:
        check_official(weights, official)
    return weights


def read_weights_file(
    path: Path, source: Optional[str] = None, hub_config: Optional[Dict[str, Any]] = None
) -> WeightsFile:
    """Read the local weights file ``path`` as it is: no name lookup, no official-checkpoint check.

    Args:
        path: the file.
        source: what was asked for, named in messages (default: ``path``).
        hub_config: the hub ``config.json`` of a hub file.
    """
    container = sniff_container(path)
    arrays, wrapper = _read_container(path, container)
    return _as_weights(source or str(path), path, container, arrays, wrapper, hub_config)


def _as_weights(
    source: str,
    path: Path,
    container: str,
    arrays: Dict[str, Any],
    wrapper: Dict[str, Any],
    hub_config: Optional[Dict[str, Any]] = None,
) -> WeightsFile:
    """Detect the layout of ``arrays`` and rename them to bitdet's names."""
    found = detect_layout(arrays)
    if found is None:
        raise CheckpointError(
            f"{source}: no BiT key layout recognised in {CONTAINERS[container]} of "
            f"{len(arrays)} tensors (keys: {_examples(sorted(arrays))}). bitdet reads: "
            + "; ".join(layout.description for layout in LAYOUTS.values())
            + "; and Detectron2 checkpoints of bitdet detectors. "
            "Convert other files to one of these."
        )
    layout, prefix = found
    if layout.name == "transformers":
        _check_transformers(path, list(arrays), hub_config)
    names = layout_keys(arrays, layout, prefix)
    state, file_keys, unmapped, other = {}, {}, [], []
    for key, name in names.items():
        if name is None:
            (unmapped if key.startswith(prefix) else other).append(key)
            continue
        state[name] = layout.to_bitdet_tensor(name, arrays[key])
        file_keys[name] = key
    meta = wrapper.get("meta") if isinstance(wrapper.get("meta"), dict) else {}
    ws_eps = layout.ws_eps
    if layout.name == "bitdet" and meta.get("ws_eps") is not None:
        ws_eps = float(meta["ws_eps"])
    detectron2 = "backbone" in prefix or "__author__" in wrapper
    return WeightsFile(
        source,
        path,
        container,
        layout,
        prefix,
        state,
        file_keys,
        sorted(unmapped),
        sorted(other),
        architecture_of(state),
        ws_eps,
        meta,
        detectron2,
        arrays,
        wrapper,
    )


def read_state_dict(path: PathLike) -> Dict[str, torch.Tensor]:
    """The tensors of any supported weights file under bitdet's parameter names."""
    return read_weights(path).state


def _fix_hint(arch: Optional[str], variant_option: Optional[str]) -> str:
    if variant_option and variant_option.startswith("-"):  # a command-line flag
        return f"pass {variant_option} {arch}"
    if variant_option:
        return f"set {variant_option} {arch}"
    return f"build the model as {arch!r} (bitdet.create_model({arch!r}, ...))"


def check_trunk(
    weights: WeightsFile,
    own: Dict[str, torch.Size],
    model_arch: Optional[FileArchitecture],
    ignorable: Callable[[str], bool] = lambda name: False,
    variant_option: Optional[str] = None,
    allow_other: Optional[bool] = None,
) -> List[str]:
    """Check that the file holds every trunk tensor of a model, each with the model's shape.

    Args:
        weights: the file.
        own: the model's trunk parameter names (bitdet naming, head excluded) and shapes.
        model_arch: the model's architecture, for the message.
        ignorable: file tensors the model lacks on purpose (stages a detector does not build).
        variant_option: the setting that picks the architecture (``MODEL.BIT.VARIANT``, or a
            tool's flag such as ``--model``), for the message; None: "build the model as ...".
        allow_other: keys outside the BiT prefix may exist (a detector's FPN and head);
            default: when the file is a Detectron2 checkpoint.

    Returns:
        The file's tensors the model does not use (head, unbuilt stages).

    Raises:
        CheckpointMismatchError: a trunk tensor is missing or misshapen, or the file has
            tensors the model cannot hold; nothing has been changed.
    """
    state = weights.state
    if allow_other is None:
        allow_other = weights.detectron2
    required = [k for k in own if not k.endswith(RUNNING_STATS)]
    missing = sorted(k for k in required if k not in state)
    mismatched = [
        (k, own[k], state[k].shape)
        for k in own
        if k in state and tuple(own[k]) != tuple(state[k].shape)
    ]
    unused = sorted(k for k in state if k not in own)
    unexpected = [weights.file_keys[k] for k in unused if k not in _HEAD and not ignorable(k)]
    unexpected += weights.unmapped + ([] if allow_other else weights.other)
    if missing or mismatched or unexpected:
        advice = None
        file_arch = weights.arch
        built = len(model_arch.layers) if model_arch is not None else 0
        if (
            file_arch is not None
            and model_arch is not None
            and (
                (file_arch.layers[:built], file_arch.stem_channels)
                != (model_arch.layers, model_arch.stem_channels)
            )
        ):
            advice = f"this file is {file_arch.describe()}; the model is {model_arch.describe()}"
            if file_arch.name is not None:
                advice += f": {_fix_hint(file_arch.name, variant_option)}"
        elif missing and not mismatched and not unexpected:
            advice = (
                f"the file lacks {len(missing)} of the model's {len(required)} trunk tensors: "
                "it is incomplete (a partial export?); nothing was loaded"
            )
        raise CheckpointMismatchError(
            weights.source,
            missing,
            unexpected,
            mismatched,
            format=weights.format,
            advice=advice,
            trunk_total=len(required),
        )
    return unused


def set_ws_eps(model: torch.nn.Module, eps: Optional[float], source: str, layout: str) -> int:
    """Set the weight-standardization epsilon of every :class:`StdConv2d` in ``model``; log a
    change.

    ``eps`` None (the format does not say) leaves the model as it is.
    """
    from bitdet.models.layers import StdConv2d

    if eps is None:
        return 0
    convs = [m for m in model.modules() if isinstance(m, StdConv2d)]
    changed = [m for m in convs if m.eps != eps]
    for conv in changed:
        conv.eps = eps
        conv.clear_weight_cache()
    if changed:
        logger.warning(
            "%s: weights in the %s layout were computed with weight-standardization eps %g (the "
            "official BiT checkpoints use %g); set it on %d convs so that the model reproduces "
            "the source's logits",
            source,
            layout,
            eps,
            WS_EPS,
            len(changed),
        )
    return len(changed)


def apply_weights(
    model: torch.nn.Module,
    weights: WeightsFile,
    zero_head: bool = False,
    variant_option: Optional[str] = None,
) -> LoadReport:
    """Copy ``weights`` into a :class:`bitdet.models.ResNetV2` after checking every tensor.

    The head is loaded when the file has one of the model's size and ``zero_head`` is False;
    otherwise it is zero-initialised (BiT fine-tuning) and the report says why. A headless
    model ignores the file's head. BatchNorm running statistics may be absent. The
    weight-standardization epsilon is set to the source's (timm and transformers: 1e-8).

    Raises:
        CheckpointMismatchError: see :func:`check_trunk` (nothing is changed).
    """
    own_state = model.state_dict()
    trunk = {k: v.shape for k, v in own_state.items() if k not in _HEAD}
    check_trunk(weights, trunk, architecture_of(own_state), variant_option=variant_option)
    if weights.other:
        logger.info(
            "%s: %d tensors outside the BiT trunk (%s) not used",
            weights.source,
            len(weights.other),
            _examples(weights.other),
        )
    state = weights.state
    body = {k: v for k, v in state.items() if k in trunk}

    file_head = tuple(state.get(k) for k in _HEAD)
    if getattr(model, "fc", None) is None:
        head = "none (headless model)" + (
            "; the file's head was ignored" if file_head[0] is not None else ""
        )
    elif zero_head:
        head = "zero-initialised (requested)"
    elif file_head[0] is None:
        head = "zero-initialised (the file has no head)"
    elif any(v is None or v.shape != own_state[k].shape for k, v in zip(_HEAD, file_head)):
        head = (
            f"zero-initialised (the file's head has {file_head[0].shape[0]} classes, "
            f"the model {model.fc.out_channels})"
        )
    else:
        head = f"loaded ({model.fc.out_channels} classes)"
        body.update(zip(_HEAD, file_head))

    with torch.no_grad():
        for name, value in body.items():
            own_state[name].copy_(value)
    if head.startswith("zero"):
        model.reset_head(zero=True)
    set_ws_eps(model, weights.ws_eps, weights.source, weights.layout.name)
    not_in_file = sorted(k for k in trunk if k.endswith(RUNNING_STATS[:2]) and k not in body)
    report = LoadReport(
        weights.source,
        len(body),
        head,
        not_in_file,
        weights.format,
        weights.ws_eps,
        new_head=head.startswith("zero"),
    )
    logger.info("%s", report)
    return report


def load_weights(
    model: torch.nn.Module,
    source: Union[WeightsSource, WeightsFile],
    zero_head: bool = False,
    variant_option: Optional[str] = None,
) -> LoadReport:
    """Load weights of any supported format (chosen by content) into a bitdet ResNet-v2.

    Args:
        model: a :class:`bitdet.models.ResNetV2`.
        source: a path, ``hf-hub:`` id, official BiT name, or an already read :class:`WeightsFile`.
        zero_head: zero-initialise the head even when the file's fits.
        variant_option: the setting that picks the architecture, named in a mismatch error
            (e.g. ``"MODEL.BIT.VARIANT"``).
    """
    weights = source if isinstance(source, WeightsFile) else read_weights(source)
    return apply_weights(model, weights, zero_head=zero_head, variant_option=variant_option)
