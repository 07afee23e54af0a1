"""Source models of each weights format, built independently of bitdet's mapping code.

- timm's own ``resnetv2_50x1_bit`` (timm is a dev dependency);
- the authors' PyTorch layout (google-research/big_transfer, ``bit_pytorch/models.py``),
  rebuilt here with the same module names: ``root``, ``body.block{i}.unit{jj}``, ``head``;
- transformers' ``BitForImageClassification`` (pre-activation, the google/bit-* configs).

Weights are randomised with small conv kernels (variance ~1e-6), so that the
weight-standardization epsilon (timm, transformers: 1e-8; official: 1e-10) changes the logits
far beyond the comparison tolerance: a loader that kept the wrong epsilon fails the tests.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random conv kernels (std 1e-3), norm scales around 1, small biases and head."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen)
        head = any(h in name for h in ("head.fc.", "head.conv.", "classifier.", "fc."))
        if p.dim() >= 2:
            p.copy_((0.05 if head else 1e-3) * noise)
        else:
            p.copy_(1 + 0.2 * noise if name.endswith("weight") else 0.2 * noise)
    return model


def max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| divided by the logit scale max |b|."""
    return ((a - b).abs().max() / b.abs().max()).item()


class AuthorsStdConv2d(nn.Conv2d):
    """Weight-standardized conv as the authors' code computes it (eps 1e-10)."""

    def forward(self, x):
        var, mean = torch.var_mean(self.weight, dim=[1, 2, 3], keepdim=True, unbiased=False)
        return F.conv2d(
            x, (self.weight - mean) / torch.sqrt(var + 1e-10), self.bias, self.stride, self.padding
        )


class AuthorsUnit(nn.Module):
    """Pre-activation bottleneck with the authors' names (gn1, conv1, ..., downsample)."""

    def __init__(self, cin: int, cout: int, cmid: int, stride: int) -> None:
        super().__init__()
        self.gn1, self.conv1 = nn.GroupNorm(32, cin), AuthorsStdConv2d(cin, cmid, 1, bias=False)
        self.gn2 = nn.GroupNorm(32, cmid)
        self.conv2 = AuthorsStdConv2d(cmid, cmid, 3, stride=stride, padding=1, bias=False)
        self.gn3, self.conv3 = nn.GroupNorm(32, cmid), AuthorsStdConv2d(cmid, cout, 1, bias=False)
        if stride != 1 or cin != cout:
            self.downsample = AuthorsStdConv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x):
        out = F.relu(self.gn1(x))
        shortcut = self.downsample(out) if hasattr(self, "downsample") else x
        out = self.conv2(F.relu(self.gn2(self.conv1(out))))
        return self.conv3(F.relu(self.gn3(out))) + shortcut


class AuthorsResNetV2(nn.Module):
    """The authors' ResNetV2 module tree (``root``, ``body``, ``head``), any stem width."""

    def __init__(self, units=(1, 1, 1, 1), stem: int = 32, head_size: int = 7) -> None:
        super().__init__()
        self.root = nn.Sequential(
            OrderedDict(
                conv=AuthorsStdConv2d(3, stem, 7, stride=2, padding=3, bias=False),
                pad=nn.ConstantPad2d(1, 0.0),
                pool=nn.MaxPool2d(3, stride=2),
            )
        )
        blocks, cin = OrderedDict(), stem
        for i, n in enumerate(units):
            cout = 4 * stem * 2**i
            blocks[f"block{i + 1}"] = nn.Sequential(
                OrderedDict(
                    (
                        f"unit{j + 1:02d}",
                        AuthorsUnit(
                            cin if j == 0 else cout, cout, cout // 4, 2 if (i and not j) else 1
                        ),
                    )
                    for j in range(n)
                )
            )
            cin = cout
        self.body = nn.Sequential(blocks)
        self.head = nn.Sequential(
            OrderedDict(
                gn=nn.GroupNorm(32, cin),
                relu=nn.ReLU(),
                avg=nn.AdaptiveAvgPool2d(1),
                conv=nn.Conv2d(cin, head_size, 1),
            )
        )

    def forward(self, x):
        return self.head(self.body(self.root(x)))[..., 0, 0]
