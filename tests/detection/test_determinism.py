"""SOLVER.DETERMINISTIC and the TorchScript setting that keeps a resumed run on track."""

import os

import pytest
import torch

from bitdet.detection import get_bit_cfg
from bitdet.detection.determinism import configure_determinism, repeatable_execution


@pytest.fixture
def restore_determinism():
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def test_deterministic_switch(restore_determinism, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    configure_determinism(get_bit_cfg(opts=["SOLVER.DETERMINISTIC", "True"]))
    assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_deterministic_switch_refuses_cudnn_benchmark(restore_determinism):
    with pytest.raises(ValueError, match="SOLVER.DETERMINISTIC True needs CUDNN_BENCHMARK False"):
        configure_determinism(
            get_bit_cfg(opts=["SOLVER.DETERMINISTIC", "True", "CUDNN_BENCHMARK", "True"])
        )
    assert not torch.are_deterministic_algorithms_enabled()


def test_off_by_default_changes_nothing(restore_determinism):
    configure_determinism(get_bit_cfg())
    assert not torch.are_deterministic_algorithms_enabled()


def test_scripted_focal_loss_repeats_its_first_call_inside():
    """Without the context, calls after the first (profiling) one run an optimized graph whose
    gradients differ in the last bit on this CPU build, so a resumed process would drift."""
    from fvcore.nn.focal_loss import sigmoid_focal_loss

    focal = torch.jit.script(sigmoid_focal_loss)  # fresh: no profiling history
    x = torch.randn(5000, requires_grad=True)
    targets = (torch.rand(5000) < 0.1).float()
    with repeatable_execution():
        grads = [torch.autograd.grad(focal(x, targets, 0.25, 2.0, "sum"), x)[0] for _ in range(4)]
    assert all(torch.equal(g, grads[0]) for g in grads)
    assert torch._C._get_graph_executor_optimize()  # restored on exit
