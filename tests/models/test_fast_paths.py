"""Every fast path of bitdet.models.fast matches the eager reference."""

import copy
import logging
import pickle

import pytest
import torch
import torch.nn.functional as F

from bitdet import create_model
from bitdet.models import StdConv2d
from bitdet.models.fast import (
    StandardizeOncePerStep,
    cache_standardized_weights,
    clear_weight_cache,
    compile_model,
    is_compiled,
    optimize_for_inference,
    standardized_weight_cache,
    std_convs,
)


def _tiny(**kw):
    return create_model("R14-tiny", num_classes=5, zero_head=False, **kw)


def test_cached_inference_is_bitwise_equal_and_reuses_the_kernel():
    model = _tiny().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    assert (
        cache_standardized_weights(model) == len(std_convs(model)) == 17
    )  # stem + 4 units x 3 + 4 projections
    with torch.inference_mode():
        first = model(x)
        kernels = [c._ws_cache[1] for c in std_convs(model)]
        second = model(x)
    assert torch.equal(first, ref) and torch.equal(second, ref)
    assert all(
        c._ws_cache[1] is k for c, k in zip(std_convs(model), kernels)
    )  # reused, not recomputed
    cache_standardized_weights(model, False)
    assert all(c._ws_cache is None for c in std_convs(model))


def test_cache_invalidates_after_optimizer_step_and_load_state_dict():
    model = _tiny()
    cache_standardized_weights(model)
    x = torch.randn(2, 3, 32, 32)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    with torch.no_grad():
        model(x)  # fills the cache
    F.cross_entropy(model(x), torch.tensor([0, 1])).backward()  # grad mode: the cache is bypassed
    opt.step()
    reference = _tiny()
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)
        other = _tiny()
        model.load_state_dict(other.state_dict())
        assert torch.equal(model(x), other(x))


def test_cache_is_not_used_where_gradients_flow_and_serves_frozen_layers():
    model = _tiny()
    cache_standardized_weights(model)
    model.stem.conv.weight.requires_grad_(False)  # frozen stem: cache allowed in training
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    model(x).sum().backward()
    assert model.stem.conv._ws_cache is not None
    assert (
        model.block1.unit01.conv1._ws_cache is None
        and model.block1.unit01.conv1.weight.grad is not None
    )
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_data_writes_need_an_explicit_clear():
    conv = StdConv2d(4, 8, 3, bias=False)
    conv.cache_weight = True
    x = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        before = conv(x)
        conv.weight.data.mul_(2).add_(1)  # bypasses the version counter
        clear_weight_cache(conv)
        after = conv(x)
    expected = StdConv2d(4, 8, 3, bias=False)
    expected.weight.data.copy_(conv.weight.data)
    assert not torch.equal(before, after)
    assert torch.equal(after, expected(x).detach())


def test_cache_follows_autocast_dtype_and_context_manager_restores_state():
    model = _tiny().eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad(), standardized_weight_cache(model):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
        assert model.stem.conv._ws_cache[1].dtype == torch.bfloat16
        full = model(x)  # autocast off: a float32 kernel replaces the bf16 one
        assert model.stem.conv._ws_cache[1].dtype == torch.float32
    assert not any(c.cache_weight or c._ws_cache is not None for c in std_convs(model))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(low, model(x))
    with torch.no_grad():
        assert torch.equal(full, model(x))


def test_cache_is_dropped_by_deepcopy_and_pickle_and_absent_from_state_dict():
    model = optimize_for_inference(_tiny(), channels_last=False)
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert set(model.state_dict()) == set(_tiny().state_dict())
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert all(c._ws_cache is None and c.cache_weight for c in std_convs(clone))


def test_optimize_for_inference_matches_eager_in_channels_last():
    model = _tiny().eval()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        ref = model(x)
    fast = optimize_for_inference(copy.deepcopy(model))
    with torch.inference_mode():
        out = fast(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def _accumulated_grads(model, batches, once=None):
    model.zero_grad(set_to_none=True)
    ctx = once.step() if once is not None else torch.enable_grad()
    with ctx:
        for x, y in batches:
            (F.cross_entropy(model(x), y) / len(batches)).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_standardize_once_per_step_gives_per_use_gradients():
    model = _tiny().double()
    batches = [
        (torch.randn(2, 3, 32, 32, dtype=torch.float64), torch.tensor([k, 4 - k])) for k in range(3)
    ]
    ref = _accumulated_grads(model, batches)
    once = StandardizeOncePerStep(model)
    got = _accumulated_grads(model, batches, once)
    assert ref.keys() == got.keys()
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-9, atol=1e-12, msg=name)
    assert all(c.step_weight is None for c in std_convs(model))  # released after the step


def test_standardize_once_per_step_discards_on_error_and_rejects_plain_models():
    model = _tiny()
    once = StandardizeOncePerStep(model)
    with pytest.raises(RuntimeError, match="boom"):
        with once.step():
            model(torch.randn(1, 3, 32, 32)).sum().backward()
            raise RuntimeError("boom")
    assert all(c.step_weight is None and c.weight.grad is None for c in std_convs(model))
    with pytest.raises(ValueError, match="no StdConv2d"):
        StandardizeOncePerStep(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)))


def test_compile_falls_back_to_eager_and_reraises_caller_errors(monkeypatch):
    model = _tiny().eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)

    def broken_compile(fn, **kwargs):
        def run(*args, **kw):
            raise RuntimeError("inductor exploded")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    compile_model(model)
    assert is_compiled(model)
    with torch.no_grad():
        assert torch.equal(model(x), ref)
    assert not is_compiled(model)  # failed once: eager from now on
    assert set(model.state_dict()) == set(_tiny().state_dict())
    other = compile_model(_tiny())
    with pytest.raises(RuntimeError, match="channels"):  # eager's own error, not the compiler's
        other(torch.randn(1, 4, 32, 32))
    assert is_compiled(other)


def test_compile_that_cannot_start_runs_eagerly_with_one_warning(monkeypatch, caplog):
    """``torch.compile`` itself raising (e.g. a Python version Dynamo does not support)."""
    model = _tiny().eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)

    def unsupported(fn, **kwargs):
        raise RuntimeError("Dynamo is not supported on this Python")

    monkeypatch.setattr(torch, "compile", unsupported)
    with caplog.at_level(logging.WARNING, logger="bitdet.models.fast"):
        compile_model(model)
    assert not is_compiled(model)
    assert "torch.compile failed (RuntimeError: Dynamo is not supported" in caplog.text
    with torch.no_grad():
        assert torch.equal(model(x), ref)
    with pytest.raises(RuntimeError, match="not supported"):  # no safety net asked for
        compile_model(_tiny(), fallback=False)


@pytest.mark.slow
def test_compiled_unit_matches_eager_forward_and_backward():
    torch._dynamo.reset()
    unit = create_model("R14-tiny", num_classes=0).block2.unit01
    x = torch.randn(2, unit.gn1.num_channels, 8, 8)
    x_ref, x_c = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref = unit(x_ref)
    ref.square().sum().backward()
    ref_grads = [p.grad.clone() for p in unit.parameters()]
    unit.zero_grad()
    compile_model(unit, fallback=False)
    out = unit(x_c)
    out.square().sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(x_c.grad, x_ref.grad, rtol=1e-3, atol=1e-3)
    for p, g in zip(unit.parameters(), ref_grads):
        # fused kernels reorder float32 reductions; WS divides by a per-channel std, which
        # amplifies that noise in the kernels' gradients: compare relative to their scale
        torch.testing.assert_close(p.grad, g, rtol=1e-2, atol=1e-3 * g.abs().max().item())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_channels_last_cached_matches_eager():
    model = _tiny().cuda().eval()
    x = torch.randn(4, 3, 64, 64, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        ref = model(x).float()
    optimize_for_inference(model)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(x.to(memory_format=torch.channels_last)).float()
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)


def _ddp_worker(rank: int, world: int, port: int, queue) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        torch.manual_seed(0)
        model = create_model("R14-tiny", num_classes=5, zero_head=False).double()
        ddp = DDP(model)
        once = StandardizeOncePerStep(ddp)
        gen = torch.Generator().manual_seed(100 + rank)
        batches = [
            (torch.randn(2, 3, 32, 32, generator=gen, dtype=torch.float64), torch.tensor([rank, 2]))
            for _ in range(2)
        ]
        with once.step():
            with ddp.no_sync():
                (F.cross_entropy(ddp(batches[0][0]), batches[0][1]) / 2).backward()
            (F.cross_entropy(ddp(batches[1][0]), batches[1][1]) / 2).backward()
        # numpy: pickled by value (torch tensors would be shared memory that dies with this process)
        queue.put((rank, {n: p.grad.numpy().copy() for n, p in model.named_parameters()}))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_standardize_once_per_step_under_ddp_matches_single_process_average():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    grads = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    # Reference: plain per-use WS, each rank's two micro-batches, averaged over ranks.
    torch.manual_seed(0)
    model = create_model("R14-tiny", num_classes=5, zero_head=False).double()
    total = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for rank in range(2):
        gen = torch.Generator().manual_seed(100 + rank)
        batches = [
            (torch.randn(2, 3, 32, 32, generator=gen, dtype=torch.float64), torch.tensor([rank, 2]))
            for _ in range(2)
        ]
        for name, g in _accumulated_grads(model, batches).items():
            total[name] += g / 2
    for rank in range(2):
        for name in total:
            torch.testing.assert_close(
                torch.from_numpy(grads[rank][name]),
                total[name],
                rtol=1e-9,
                atol=1e-12,
                msg=f"rank {rank} {name}",
            )
