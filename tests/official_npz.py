"""An independent writer of the official BiT npz layout and a reference forward pass.

Written from the layout of the authors' released files (google-research/big_transfer), without
using bitdet's mapping code, so that loading tests compare bitdet against a second implementation.
"""

import numpy as np
import torch
import torch.nn.functional as F

TINY_LAYERS = (1, 1, 1, 1)  # R14-tiny
TINY_STEM = 32


def write_official_npz(
    path, layers=TINY_LAYERS, stem=TINY_STEM, num_classes=5, seed=0, conv_suffix=""
):
    """Random arrays in the official layout: HWIO kernels, (C,) GroupNorm params."""
    rng = np.random.default_rng(seed)
    conv = f"standardized_conv2d{conv_suffix}/kernel"
    arrays = {}

    def kernel(key, k, cin, cout):
        arrays[key] = rng.normal(size=(k, k, cin, cout)).astype(np.float32)

    def gn(scope, c):
        arrays[f"{scope}/group_norm/gamma"] = (1 + 0.1 * rng.normal(size=c)).astype(np.float32)
        arrays[f"{scope}/group_norm/beta"] = (0.1 * rng.normal(size=c)).astype(np.float32)

    kernel(f"resnet/root_block/{conv}", 7, 3, stem)
    cin = stem
    for b, units in enumerate(layers, start=1):
        cout = 4 * stem * 2 ** (b - 1)
        mid = cout // 4
        for u in range(1, units + 1):
            scope = f"resnet/block{b}/unit{u:02d}"
            gn(f"{scope}/a", cin)
            kernel(f"{scope}/a/{conv}", 1, cin, mid)
            gn(f"{scope}/b", mid)
            kernel(f"{scope}/b/{conv}", 3, mid, mid)
            gn(f"{scope}/c", mid)
            kernel(f"{scope}/c/{conv}", 1, mid, cout)
            if u == 1:
                kernel(f"{scope}/a/proj/{conv}", 1, cin, cout)
            cin = cout
    gn("resnet", cin)
    if num_classes:
        arrays["resnet/head/conv2d/kernel"] = (
            0.01 * rng.normal(size=(1, 1, cin, num_classes))
        ).astype(np.float32)
        arrays["resnet/head/conv2d/bias"] = rng.normal(size=num_classes).astype(np.float32)
    np.savez(path, **arrays)
    return arrays


def reference_forward(arrays, x, layers=TINY_LAYERS):
    """BiT ResNet-v2 logits computed straight from the npz arrays (float64)."""
    x = x.double()

    def conv(key, x, stride=1, padding=0):
        w = torch.from_numpy(arrays[key]).double().permute(3, 2, 0, 1)
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = ((w - mean) ** 2).mean(dim=(1, 2, 3), keepdim=True)
        return F.conv2d(x, (w - mean) / torch.sqrt(var + 1e-10), stride=stride, padding=padding)

    def gn_relu(scope, x):
        g = torch.from_numpy(arrays[f"{scope}/group_norm/gamma"]).double()
        b = torch.from_numpy(arrays[f"{scope}/group_norm/beta"]).double()
        return F.relu(F.group_norm(x, 32, g, b, eps=1e-5))

    k = "standardized_conv2d/kernel"
    x = conv(f"resnet/root_block/{k}", x, stride=2, padding=3)
    x = F.max_pool2d(F.pad(x, (1, 1, 1, 1), value=0.0), kernel_size=3, stride=2)
    for b, units in enumerate(layers, start=1):
        for u in range(1, units + 1):
            scope = f"resnet/block{b}/unit{u:02d}"
            stride = 2 if (b > 1 and u == 1) else 1
            out = gn_relu(f"{scope}/a", x)
            shortcut = conv(f"{scope}/a/proj/{k}", out, stride) if u == 1 else x
            out = conv(f"{scope}/a/{k}", out)
            out = conv(f"{scope}/b/{k}", gn_relu(f"{scope}/b", out), stride, 1)
            out = conv(f"{scope}/c/{k}", gn_relu(f"{scope}/c", out))
            x = out + shortcut
    feats = gn_relu("resnet", x).mean(dim=(2, 3))
    w = torch.from_numpy(arrays["resnet/head/conv2d/kernel"][0, 0]).double()
    return feats @ w + torch.from_numpy(arrays["resnet/head/conv2d/bias"]).double()
