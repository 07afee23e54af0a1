"""ResNet-v2 with Group Normalization and Weight Standardization, as used by Big Transfer.

Kolesnikov et al., "Big Transfer (BiT): General Visual Representation Learning", ECCV 2020
(arXiv 1912.11370). Pre-activation bottlenecks (He et al. 2016, "Identity Mappings in Deep
Residual Networks"); every conv is weight-standardized and every norm is a 32-group GroupNorm.

Stage names: parameters keep the official checkpoints' names
(``block{i}.unit{jj}.{gn,conv}{1,2,3}``, ``downsample``), so that ``bitdet.weights`` maps
the authors' files with a plain table; features use Detectron2's names (``FEATURE_NAMES``):
the output of ``block{i}`` is ``res{i+1}``.
Both are external formats; this is the one place that relates them.

Activation checkpointing (:meth:`ResNetV2.set_grad_checkpointing`, timm's name) keeps only
each stage's or each unit's input during the forward and recomputes the rest in backward
(non-reentrant ``torch.utils.checkpoint``): the same results for less memory.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from bitdet.errors import ConfigError
from bitdet.models.layers import make_conv_layer, make_norm_layer
from bitdet.numerics import STEM_POOL_PAD, WS_EPS

__all__ = [
    "CHECKPOINTING_MODES",
    "FEATURE_NAMES",
    "FeatureInfo",
    "GradCheckpointing",
    "PreActBottleneck",
    "ResNetV2",
    "ResNetV2Features",
    "StemMaxPool2d",
    "checkpointing_mode",
    "run_stage",
]

# Stage feature names, Detectron2's convention: res{k} has stride 2**k.
FEATURE_NAMES = ("stem", "res2", "res3", "res4", "res5")

# Activation checkpointing: none, each stage (fewest kept inputs, one stage's activations
# live at a time in backward), or each unit (more kept inputs, one unit's at a time).
CHECKPOINTING_MODES = ("none", "stage", "unit")


class StemMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` that pools an NCHW CPU tensor through a channels-last copy.

    PyTorch's channels-last CPU max-pool kernel is faster than its NCHW one, copies included
    (docs/performance.md); the maximum is exact, so the output is identical and stays NCHW.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dim() == 4 and x.is_contiguous() and x.shape[1] > 1:
            return super().forward(x.contiguous(memory_format=torch.channels_last)).contiguous()
        return super().forward(x)


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck: ``x + conv3(relu(gn3(conv2(relu(gn2(conv1(relu(gn1(x)))))))))``.

    The projection shortcut (``downsample``) is applied to the *pre-activated* input
    ``relu(gn1(x))``, not to ``x``. The stride sits on the 3x3 conv (``conv2``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        mid_channels: int,
        stride: int,
        conv_layer: Callable[..., nn.Conv2d],
        norm_layer: Callable[[int], nn.Module],
    ) -> None:
        super().__init__()
        self.gn1 = norm_layer(in_channels)
        self.conv1 = conv_layer(in_channels, mid_channels, kernel_size=1)
        self.gn2 = norm_layer(mid_channels)
        self.conv2 = conv_layer(mid_channels, mid_channels, kernel_size=3, stride=stride, padding=1)
        self.gn3 = norm_layer(mid_channels)
        self.conv3 = conv_layer(mid_channels, out_channels, kernel_size=1)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: Optional[nn.Module] = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = conv_layer(in_channels, out_channels, kernel_size=1, stride=stride)

    def forward(self, x: torch.Tensor, preact: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Args: x: unit input; preact: ``relu(gn1(x))`` if the caller already computed it."""
        out = self.relu(self.gn1(x)) if preact is None else preact
        shortcut = x if self.downsample is None else self.downsample(out)
        out = self.conv1(out)
        out = self.conv2(self.relu(self.gn2(out)))
        out = self.conv3(self.relu(self.gn3(out)))
        # In place: conv3's output is a fresh tensor that its backward does not need.
        return out.add_(shortcut)


def checkpointing_mode(mode: Union[bool, str], key: str = "activation checkpointing") -> str:
    """``mode`` as one of :data:`CHECKPOINTING_MODES`; True (timm's switch) means ``"unit"``,
    False ``"none"``.

    Raises:
        ConfigError: one line naming ``key`` (the config key, for trainers) and the allowed values.
    """
    if isinstance(mode, bool):
        return "unit" if mode else "none"
    if mode not in CHECKPOINTING_MODES:
        raise ConfigError(
            f"{key} {mode!r}: expected one of {', '.join(repr(m) for m in CHECKPOINTING_MODES)}"
        )
    return mode


def _needs_grad(module: nn.Module, *inputs: Optional[torch.Tensor]) -> bool:
    """Whether backward reaches ``module``: grad mode on and a trainable parameter or input."""
    if not torch.is_grad_enabled():
        return False
    return any(t is not None and t.requires_grad for t in inputs) or any(
        p.requires_grad for p in module.parameters()
    )


def _run_units(
    units: nn.Sequential, x: torch.Tensor, preact: Optional[torch.Tensor] = None
) -> torch.Tensor:
    x = units[0](x, preact)
    for unit in units[1:]:
        x = unit(x)
    return x


def run_stage(
    stage: nn.Sequential, x: torch.Tensor, mode: str = "none", preact: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Run a stage of :class:`PreActBottleneck` units, checkpointing it whole or unit by unit.

    A stage (or unit) that no gradient reaches (frozen parameters, no-grad input or no-grad
    mode) runs plainly: it keeps no activations, so there is nothing to recompute.

    Args:
        stage: the stage's units.
        x: the stage input.
        mode: one of :data:`CHECKPOINTING_MODES`.
        preact: ``relu(gn1(x))`` of the first unit if the caller computed it (a feature tap).
    """
    if mode == "none" or not _needs_grad(stage, x, preact):
        return _run_units(stage, x, preact)
    if mode == "stage":
        return checkpoint(_run_units, stage, x, preact, use_reentrant=False)
    for i, unit in enumerate(stage):
        first_preact = preact if i == 0 else None
        if _needs_grad(unit, x, first_preact):
            x = checkpoint(unit, x, first_preact, use_reentrant=False)
        else:
            x = unit(x, first_preact)
    return x


class GradCheckpointing:
    """Mixin: the ``grad_checkpointing`` mode of a BiT trunk and timm's
    ``set_grad_checkpointing``."""

    grad_checkpointing: str = "none"

    def set_grad_checkpointing(self, mode: Union[bool, str] = True) -> "GradCheckpointing":
        """Checkpoint activations per ``"stage"`` or per ``"unit"`` in training, or ``"none"``.

        Same losses and gradients, less activation memory, one more forward per step.
        ``True`` (timm's call) is ``"unit"``, ``False`` is ``"none"``.

        Returns:
            The model itself.
        """
        self.grad_checkpointing = checkpointing_mode(mode)
        return self


class ResNetV2(GradCheckpointing, nn.Module):
    """BiT ResNet-v2 classifier / backbone.

    Input: RGB images ``(N, 3, H, W)`` scaled to [-1, 1] (``x / 127.5 - 1`` on 0..255 pixels,
    or ``Normalize(mean=0.5, std=0.5)`` on [0, 1] tensors; see ``model.pretrained_cfg`` and
    :func:`bitdet.models.create_transform`). Any H, W from 32 up works.

    Args:
        layers: units per stage, e.g. ``(3, 4, 6, 3)`` for R50.
        width: width multiplier ``w`` (stage outputs 256w ... 2048w).
        num_classes: size of the 1x1-conv head; 0 builds a headless backbone (the final
            GroupNorm is kept: it belongs to the pretrained trunk).
        stem_width: stem channels before the width multiplier.
        ws_eps: weight-standardization epsilon.
        zero_head: initialise the head's weight and bias to zero (BiT fine-tuning).
        head_bias: initial value of the head bias when not zero-initialised (e.g. -10 for
            sigmoid cross-entropy over many classes).

    ``set_grad_checkpointing("stage" | "unit")`` trades compute for activation memory.
    """

    def __init__(
        self,
        layers: Sequence[int],
        width: int = 1,
        num_classes: int = 1000,
        stem_width: int = 64,
        ws_eps: float = WS_EPS,
        zero_head: bool = False,
        head_bias: float = 0.0,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"layers must list 4 stages, got {tuple(layers)}")
        conv = make_conv_layer(ws_eps)
        norm_layer = make_norm_layer()
        self.num_classes = num_classes

        stem_channels = stem_width * width
        self.stem = nn.Sequential(
            OrderedDict(
                conv=conv(in_channels, stem_channels, kernel_size=7, stride=2, padding=3),
                pad=nn.ConstantPad2d(STEM_POOL_PAD, 0.0),
                pool=StemMaxPool2d(kernel_size=3, stride=2, padding=0),
            )
        )
        self.feature_info: Dict[str, Tuple[int, int]] = {"stem": (stem_channels, 4)}

        in_ch = stem_channels
        for i, num_units in enumerate(layers):
            out_ch = 4 * stem_channels * 2**i
            stride = 1 if i == 0 else 2
            units = OrderedDict()
            for j in range(num_units):
                units[f"unit{j + 1:02d}"] = PreActBottleneck(
                    in_ch, out_ch, out_ch // 4, stride if j == 0 else 1, conv, norm_layer
                )
                in_ch = out_ch
            self.add_module(f"block{i + 1}", nn.Sequential(units))
            self.feature_info[f"res{i + 2}"] = (out_ch, 4 * 2**i)
        self.num_features = in_ch

        # Final pre-activation norm: the last unit's output is not normalised otherwise.
        self.norm = norm_layer(in_ch)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Conv2d(in_ch, num_classes, kernel_size=1, bias=True) if num_classes else None
        self.init_weights(zero_head=zero_head, head_bias=head_bias)

    @property
    def stages(self) -> Tuple[nn.Sequential, ...]:
        return (self.block1, self.block2, self.block3, self.block4)

    def init_weights(self, zero_head: bool = False, head_bias: float = 0.0) -> None:
        """Kaiming-normal convs, unit norms, and a zero or small-normal head."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m is not self.fc:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.fc is not None:
            self.reset_head(zero=zero_head, bias=head_bias)

    @torch.no_grad()
    def reset_head(self, zero: bool = True, bias: float = 0.0) -> None:
        """Re-initialise the classification head (zero, as BiT fine-tuning does, by default)."""
        if self.fc is None:
            return
        if zero:
            nn.init.zeros_(self.fc.weight)
        else:
            nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.constant_(self.fc.bias, bias)

    def forward_features(
        self, x: torch.Tensor, out_features: Union[str, Iterable[str]] = FEATURE_NAMES[1:]
    ) -> Union[torch.Tensor, Dict[str, torch.Tensor]]:
        """Raw stage outputs (pre-activation: not normalised), ``stem`` and ``res2``..``res5``.

        Args:
            x: RGB ``(N, 3, H, W)`` in [-1, 1] (``x / 127.5 - 1`` on 0..255 pixels).
            out_features: one name (``"res4"``) or several (``("res2", "res5")``); computing
                stops after the last requested stage.

        Returns:
            The tensor for one name; a dict ``{name: tensor}`` for several. ``res{k}`` has
            stride ``2**k``, the stem stride 4.
        """
        single = isinstance(out_features, str)
        wanted = {out_features} if single else set(out_features)
        unknown = wanted - set(FEATURE_NAMES)
        if unknown or not wanted:
            raise KeyError(
                f"unknown features {sorted(unknown) or 'none requested'}; "
                f"available: {FEATURE_NAMES}"
            )
        outputs: Dict[str, torch.Tensor] = {}
        x = self.stem(x)
        if "stem" in wanted:
            outputs["stem"] = x
        for name, stage in zip(FEATURE_NAMES[1:], self.stages):
            if len(outputs) == len(wanted):
                break
            x = run_stage(stage, x, self.grad_checkpointing)
            if name in wanted:
                outputs[name] = x
        return outputs[out_features] if single else outputs

    def forward_pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Globally pooled, normalised features ``(N, num_features)`` of RGB input in [-1, 1]."""
        x = self.forward_features(x, "res5")
        return self.relu(self.norm(x)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)``, or pooled features when the model is headless.

        Args:
            x: RGB ``(N, 3, H, W)`` scaled to [-1, 1] (``x / 127.5 - 1`` on 0..255 pixels).
        """
        x = self.forward_pre_logits(x)
        if self.fc is None:
            return x
        return self.fc(x[:, :, None, None]).flatten(1)


class FeatureInfo(list):
    """timm's ``feature_info``: one dict per returned feature, ``num_chs``, ``reduction``,
    ``module``.

    ``channels()`` / ``reduction()`` / ``module_name()`` list one field; given an index, one value.
    """

    def _field(self, key: str, idx: Optional[int]):
        return [f[key] for f in self] if idx is None else self[idx][key]

    def channels(self, idx: Optional[int] = None):
        return self._field("num_chs", idx)

    def reduction(self, idx: Optional[int] = None):
        return self._field("reduction", idx)

    def module_name(self, idx: Optional[int] = None):
        return self._field("module", idx)


class ResNetV2Features(GradCheckpointing, nn.Module):
    """A BiT trunk returning a list of feature maps: ``create_model(..., features_only=True)``.

    Keeps the trunk's module names (``stem``, ``block1``...), so a checkpoint of the full model
    loads with ``strict=False``; stages after the last requested one, the final norm and the
    head are dropped. Features are the raw stage outputs of :meth:`ResNetV2.forward_features`.

    Args:
        model: the :class:`ResNetV2` to take the trunk from (weights already loaded).
        out_indices: positions in ``FEATURE_NAMES`` (0 = stem, 1..4 = res2..res5).

    Input: RGB ``(N, 3, H, W)`` scaled to [-1, 1] (``x / 127.5 - 1`` on 0..255 pixels).
    """

    def __init__(self, model: ResNetV2, out_indices: Sequence[int] = (0, 1, 2, 3, 4)) -> None:
        super().__init__()
        out_indices = tuple(out_indices)
        bad = [i for i in out_indices if not 0 <= i < len(FEATURE_NAMES)]
        if bad or not out_indices or len(set(out_indices)) != len(out_indices):
            raise ValueError(
                f"out_indices {out_indices}: distinct positions in 0..{len(FEATURE_NAMES) - 1} "
                f"of {FEATURE_NAMES}"
            )
        self.out_features = [FEATURE_NAMES[i] for i in out_indices]
        self.stem = model.stem
        for i in range(1, max(out_indices) + 1):
            self.add_module(f"block{i}", getattr(model, f"block{i}"))
        self.feature_info = FeatureInfo(
            {
                "num_chs": model.feature_info[n][0],
                "reduction": model.feature_info[n][1],
                "module": n,
            }
            for n in self.out_features
        )
        self.pretrained_cfg = getattr(model, "pretrained_cfg", None)
        self.grad_checkpointing = model.grad_checkpointing

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Feature maps in ``out_indices`` order."""
        outputs = {}
        x = self.stem(x)
        outputs["stem"] = x
        for i, name in enumerate(FEATURE_NAMES[1:], start=1):
            block = getattr(self, f"block{i}", None)
            if block is None:
                break
            x = run_stage(block, x, self.grad_checkpointing)
            outputs[name] = x
        return [outputs[n] for n in self.out_features]
