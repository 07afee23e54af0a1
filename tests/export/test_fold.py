"""Folding weight standardization: same function, plain convs, and graphs without WS ops."""

import io

import onnx
import pytest
import torch
from torch import nn

import bitdet
from bitdet.export import fold_weight_standardization, runtime_conv_weights
from bitdet.models import StdConv2d, standardize_weight


@pytest.fixture
def model():
    model = bitdet.create_model("R14-tiny", num_classes=5).eval()
    nn.init.normal_(model.fc.weight, std=0.05)  # the zero / tiny head would hide differences
    return model


def test_fold_replaces_every_std_conv_and_keeps_the_function(model):
    folded = fold_weight_standardization(model)
    assert not any(isinstance(m, StdConv2d) for m in folded.modules())
    plain = [m for m in folded.modules() if type(m) is nn.Conv2d]
    assert len(plain) == sum(isinstance(m, StdConv2d) for m in model.modules()) + 1  # + the head
    assert folded.state_dict().keys() == model.state_dict().keys()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(folded(x), model(x))  # the same kernels: bit-identical logits
    # the kernels are standardized: zero mean, unit variance per output channel
    conv = folded.block2.unit01.conv2
    assert torch.equal(conv.weight, standardize_weight(model.block2.unit01.conv2.weight))
    var, mean = torch.var_mean(conv.weight, dim=(1, 2, 3), unbiased=False)
    assert mean.abs().max() < 1e-6 and (var - 1).abs().max() < 1e-4


def test_fold_leaves_the_original_alone(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fold_weight_standardization(model)
    assert isinstance(model.stem.conv, StdConv2d)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _onnx(module, x):
    buffer = io.BytesIO()
    torch.onnx.export(module, (x,), buffer, dynamo=False, opset_version=17)
    return onnx.load_from_string(buffer.getvalue())


@pytest.mark.filterwarnings(
    "ignore::DeprecationWarning",
    "ignore::FutureWarning",
    "ignore::UserWarning",
    "ignore::torch.jit.TracerWarning",
)
def test_exported_graphs_of_a_folded_model_have_no_ws_ops(model):
    x = torch.randn(1, 3, 32, 32)
    folded = fold_weight_standardization(model)
    with torch.no_grad():
        traced, traced_unfolded = torch.jit.trace(folded, x), torch.jit.trace(model, x)
    num_convs = sum(isinstance(m, StdConv2d) for m in model.modules())
    # the check can fail: unfolded, every standardized conv computes its kernel in the graph
    assert len(runtime_conv_weights(traced_unfolded)) == num_convs
    assert len(runtime_conv_weights(_onnx(model, x))) == num_convs
    assert runtime_conv_weights(traced) == []
    assert runtime_conv_weights(_onnx(folded, x)) == []
    # weight standardization is a normalisation of the kernel (one fused layer_norm reduction)
    ws_ops = {"aten::layer_norm", "aten::var_mean", "aten::sqrt", "aten::div"}
    assert not {n.kind() for n in traced.inlined_graph.nodes()} & ws_ops
    assert {n.kind() for n in traced_unfolded.inlined_graph.nodes()} & ws_ops
