"""Fold weight standardization into plain convolution weights, and check graphs for it.

At inference a weight-standardized kernel (:class:`bitdet.models.StdConv2d`) is a constant:
``standardize_weight(W)`` depends on the weight alone. Exporting the module as it is would
put the standardization (mean, variance, square root, division) into the graph and run it on
every call. :func:`fold_weight_standardization` instead swaps each ``StdConv2d`` for an
``nn.Conv2d`` that stores the standardized kernel, in a copy of the model; the copy computes
the same function with bit-identical kernels, and its state-dict keys are unchanged.
"""

from __future__ import annotations

import copy
from typing import List, Union

import torch
from torch import nn

from bitdet.models.layers import StdConv2d

__all__ = ["fold_weight_standardization", "runtime_conv_weights"]


def _plain_conv(conv: StdConv2d) -> nn.Conv2d:
    plain = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        # the very kernel the layer's forward uses (standardize_weight(W, eps))
        plain.weight.copy_(conv.standardized_weight())
        if conv.bias is not None:
            plain.bias.copy_(conv.bias)
    plain.weight.requires_grad_(False)
    if plain.bias is not None:
        plain.bias.requires_grad_(False)
    plain.train(conv.training)
    return plain


def fold_weight_standardization(model: nn.Module, inplace: bool = False) -> nn.Module:
    """A copy of ``model`` with every :class:`StdConv2d` replaced by a plain ``nn.Conv2d``
    holding the standardized kernel (``(W - mean) / sqrt(var + eps)``, per output channel).

    The copy is for inference and export: its kernels no longer follow the original weights,
    and training it would train plain convs. ``model`` itself is left unchanged.

    Args:
        model: any module; one without ``StdConv2d`` layers is copied unchanged.
        inplace: fold ``model`` itself instead of a copy (no second set of weights in memory;
            the benchmark's "fold" lever).

    Returns:
        The folded copy (``model`` when ``inplace``), in the same train/eval mode as ``model``.
    """
    folded = model if inplace else copy.deepcopy(model)
    for parent in list(folded.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, StdConv2d):
                setattr(parent, name, _plain_conv(child))
    return folded


def _onnx_conv_weights(model_proto) -> List[str]:
    constants = {init.name for init in model_proto.graph.initializer}
    constants.update(
        out for node in model_proto.graph.node if node.op_type == "Constant" for out in node.output
    )
    return [
        f"{node.name or node.op_type} (weight {node.input[1]!r})"
        for node in model_proto.graph.node
        if node.op_type in ("Conv", "ConvTranspose") and node.input[1] not in constants
    ]


def _torchscript_conv_weights(module: torch.jit.ScriptModule) -> List[str]:
    found = []
    convs = [
        n
        for n in module.inlined_graph.nodes()
        if n.kind() in ("aten::_convolution", "aten::conv2d")
    ]
    for index, node in enumerate(convs):
        source = list(node.inputs())[1].node()
        if source.kind() not in ("prim::GetAttr", "prim::Constant"):
            found.append(f"convolution {index} (weight from {source.kind()})")
    return found


def runtime_conv_weights(graph: Union[torch.jit.ScriptModule, "onnx.ModelProto"]) -> List[str]:  # noqa: F821
    """Convolutions of an exported graph whose kernel is computed at run time.

    In a graph exported from a folded model every conv reads its kernel from a stored
    constant (a TorchScript attribute or an ONNX initializer); a weight-standardized conv
    exported unfolded computes its kernel with graph ops and is listed here.

    Args:
        graph: a traced / scripted TorchScript module or an ``onnx.ModelProto``.

    Returns:
        One description per offending conv; empty when every kernel is a constant.
    """
    if isinstance(graph, torch.jit.ScriptModule):
        return _torchscript_conv_weights(graph)
    if hasattr(graph, "graph") and hasattr(graph.graph, "initializer"):
        return _onnx_conv_weights(graph)
    raise TypeError(
        f"expected a TorchScript module or an onnx.ModelProto, got {type(graph).__name__}"
    )
