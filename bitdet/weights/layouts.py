"""Key layouts of BiT ResNet-v2 weights as other code bases name them, mapped to bitdet's.

Every layout is a table of key templates that correspond one to one with bitdet's module
names (which keep the official checkpoints' ``block{i}.unit{jj}.{gn,conv}{1,2,3}``), so a
file's keys are renamed, never guessed. Placeholders: ``{s1}`` / ``{s0}`` the stage (1- or
0-based), ``{u2}`` the unit (1-based, two digits) / ``{u0}`` (0-based), ``{k}`` / ``{abc}`` the
conv or norm of a unit (1-3 / a-c), ``{p}`` weight / bias, ``{gb}`` gamma / beta,
``{kb}`` kernel / bias.

Layouts:

- ``bitdet``: :class:`bitdet.models.ResNetV2` (also inside bitdet's Detectron2 detectors,
  under ``backbone.bottom_up.``).
- ``npz``: the official checkpoints (``BiT-M-R50x1.npz``; HWIO kernels).
- ``timm``: timm's ``resnetv2_*_bit`` models (``stages.{i}.blocks.{j}``, ``head.fc``);
  timm's weight standardization uses eps 1e-8.
- ``bit_pytorch``: the authors' PyTorch model (google-research/big_transfer,
  ``bit_pytorch/models.py``: ``root``, ``body.block{i}.unit{jj}``, ``head.gn``, ``head.conv``).
- ``transformers``: Hugging Face ``BitForImageClassification`` with
  ``layer_type="preactivation"`` (``bit.embedder``, ``bit.encoder.stages``, ``classifier.1``);
  eps 1e-8 as well.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Optional, Tuple

import numpy as np
import torch

__all__ = ["LAYOUTS", "Layout", "detect_layout", "layout_keys"]

# Placeholder -> (regex, canonical variable, to canonical, from canonical).
_ABC = "abc"
_PLACEHOLDERS: Dict[str, Tuple[str, str, Callable[[str], object], Callable[[object], str]]] = {
    "s1": (r"[1-4]", "s", int, str),
    "s0": (r"[0-3]", "s", lambda v: int(v) + 1, lambda s: str(s - 1)),
    "u2": (r"\d{2,}", "u", int, lambda u: f"{u:02d}"),
    "u0": (r"\d+", "u", lambda v: int(v) + 1, lambda u: str(u - 1)),
    "k": (r"[1-3]", "k", int, str),
    "abc": (r"[abc]", "k", lambda v: _ABC.index(v) + 1, lambda k: _ABC[k - 1]),
    "p": (r"weight|bias", "p", str, str),
    "gb": (
        r"gamma|beta",
        "p",
        lambda v: {"gamma": "weight", "beta": "bias"}[v],
        lambda p: {"weight": "gamma", "bias": "beta"}[p],
    ),
    "kb": (
        r"kernel|bias",
        "p",
        lambda v: {"kernel": "weight", "bias": "bias"}[v],
        lambda p: {"weight": "kernel", "bias": "bias"}[p],
    ),
}
_FIELD = re.compile(r"\{(\w+)\}")

# bitdet's own names, in the order of _TEMPLATES' rows below.
_BITDET = (
    "stem.conv.weight",
    "block{s1}.unit{u2}.conv{k}.weight",
    "block{s1}.unit{u2}.gn{k}.{p}",
    "block{s1}.unit{u2}.downsample.weight",
    "norm.{p}",
    "fc.{p}",
)


class _Template:
    """One key template: parses a key into canonical fields and formats them back."""

    def __init__(self, template: str) -> None:
        self.template = template
        self.fields = _FIELD.findall(template)
        pattern = ""
        pos = 0
        for match in _FIELD.finditer(template):
            pattern += (
                re.escape(template[pos : match.start()]) + f"({_PLACEHOLDERS[match.group(1)][0]})"
            )
            pos = match.end()
        self.regex = re.compile("^" + pattern + re.escape(template[pos:]) + "$")

    def parse(self, key: str) -> Optional[Dict[str, object]]:
        match = self.regex.match(key)
        if match is None:
            return None
        return {
            _PLACEHOLDERS[f][1]: _PLACEHOLDERS[f][2](v) for f, v in zip(self.fields, match.groups())
        }

    def format(self, values: Dict[str, object]) -> str:
        return _FIELD.sub(
            lambda m: _PLACEHOLDERS[m.group(1)][3](values[_PLACEHOLDERS[m.group(1)][1]]),
            self.template,
        )


@dataclass(frozen=True)
class Layout:
    """A naming of BiT ResNet-v2 weights.

    Attributes:
        name: short name used in messages and ``--to``.
        description: what produces files in this layout.
        templates: one key template per row of bitdet's names (stem, conv, norm,
            projection, final norm, head).
        ws_eps: the weight-standardization epsilon that the code using this layout computes
            with, when it differs from BiT's official 1e-10 (None: the official value).
    """

    name: str
    description: str
    templates: Tuple[str, ...]
    ws_eps: Optional[float] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "_own", tuple(_Template(t) for t in self.templates))
        object.__setattr__(self, "_bitdet", tuple(_Template(t) for t in _BITDET))

    def to_bitdet_key(self, key: str) -> Optional[str]:
        """bitdet's name for ``key`` of this layout, or None if ``key`` is not one of its names."""
        for own, ours in zip(self._own, self._bitdet):
            values = own.parse(key)
            if values is not None:
                return ours.format(values)
        return None

    def from_bitdet_key(self, name: str) -> str:
        """This layout's key for bitdet's parameter ``name``."""
        for own, ours in zip(self._own, self._bitdet):
            values = ours.parse(name)
            if values is not None:
                return own.format(values)
        raise KeyError(f"{name!r} is not a BiT ResNet-v2 parameter name")

    def to_bitdet_tensor(self, name: str, value) -> torch.Tensor:
        """``value`` (this layout's array) as bitdet's tensor for parameter ``name``."""
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if self.name == "npz":
            if value.dim() == 4:  # HWIO -> OIHW
                value = value.permute(3, 2, 0, 1)
            elif value.dim() > 1 and value.numel() == max(value.shape):  # (1, 1, 1, C) norm params
                value = value.reshape(-1)
            return value.to(torch.float32).contiguous()
        if self.name == "transformers" and name == "fc.weight" and value.dim() == 2:
            value = value[:, :, None, None]  # Linear -> the 1x1 conv head
        return value

    def from_bitdet_tensor(self, name: str, value: torch.Tensor):
        """bitdet's tensor for ``name`` as this layout stores it (numpy HWIO for ``npz``)."""
        value = value.detach().cpu()
        if self.name == "npz":
            array = value.to(torch.float32).numpy()
            return np.ascontiguousarray(array.transpose(2, 3, 1, 0)) if array.ndim == 4 else array
        if self.name == "transformers" and name == "fc.weight":
            return value.flatten(1).clone()
        return value.clone()


_NPZ_CONV = "standardized_conv2d/kernel"
LAYOUTS: Dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout("bitdet", "bitdet (ResNetV2 state dict)", _BITDET),
        Layout(
            "npz",
            "official BiT .npz (google-research/big_transfer)",
            (
                f"resnet/root_block/{_NPZ_CONV}",
                "resnet/block{s1}/unit{u2}/{abc}/" + _NPZ_CONV,
                "resnet/block{s1}/unit{u2}/{abc}/group_norm/{gb}",
                "resnet/block{s1}/unit{u2}/a/proj/" + _NPZ_CONV,
                "resnet/group_norm/{gb}",
                "resnet/head/conv2d/{kb}",
            ),
        ),
        Layout(
            "timm",
            "timm resnetv2_*_bit state dict",
            (
                "stem.conv.weight",
                "stages.{s0}.blocks.{u0}.conv{k}.weight",
                "stages.{s0}.blocks.{u0}.norm{k}.{p}",
                "stages.{s0}.blocks.{u0}.downsample.conv.weight",
                "norm.{p}",
                "head.fc.{p}",
            ),
            ws_eps=1e-8,
        ),
        Layout(
            "bit_pytorch",
            "the authors' bit_pytorch ResNetV2 (google-research/big_transfer)",
            (
                "root.conv.weight",
                "body.block{s1}.unit{u2}.conv{k}.weight",
                "body.block{s1}.unit{u2}.gn{k}.{p}",
                "body.block{s1}.unit{u2}.downsample.weight",
                "head.gn.{p}",
                "head.conv.{p}",
            ),
        ),
        Layout(
            "transformers",
            "Hugging Face transformers BitForImageClassification (pre-activation)",
            (
                "bit.embedder.convolution.weight",
                "bit.encoder.stages.{s0}.layers.{u0}.conv{k}.weight",
                "bit.encoder.stages.{s0}.layers.{u0}.norm{k}.{p}",
                "bit.encoder.stages.{s0}.layers.{u0}.downsample.conv.weight",
                "bit.norm.{p}",
                "classifier.1.{p}",
            ),
            ws_eps=1e-8,
        ),
    )
}

# Telltale keys: a layout is recognised by its stem (every BiT file has one).
_STEMS = {name: layout.templates[0] for name, layout in LAYOUTS.items()}


def detect_layout(keys: Iterable[str]) -> Optional[Tuple[Layout, str]]:
    """The layout of ``keys`` and the prefix they carry (``module.``, ``backbone.bottom_up.``, ...).

    Every layout whose stem key appears (under any prefix) is a candidate; the one that names
    the most keys wins (timm and bitdet share the stem's name).

    Returns:
        ``(layout, prefix)``, or None when no layout's stem key is among ``keys``.
    """
    keys = list(keys)
    candidates = set()
    for key in keys:
        for name, stem in _STEMS.items():
            prefix = key[: len(key) - len(stem)]
            if key.endswith(stem) and (not prefix or prefix.endswith((".", "/"))):
                candidates.add((name, prefix))
    if not candidates:
        return None

    def score(candidate):
        name, prefix = candidate
        named = sum(
            k.startswith(prefix) and LAYOUTS[name].to_bitdet_key(k[len(prefix) :]) is not None
            for k in keys
        )
        return named, name == "bitdet", -len(prefix)

    name, prefix = max(sorted(candidates), key=score)
    return LAYOUTS[name], prefix


def layout_keys(keys: Iterable[str], layout: Layout, prefix: str) -> Dict[str, Optional[str]]:
    """Map each file key to bitdet's name (None: the key is not a BiT trunk or head tensor)."""
    out = {}
    for key in keys:
        out[key] = layout.to_bitdet_key(key[len(prefix) :]) if key.startswith(prefix) else None
    return out
