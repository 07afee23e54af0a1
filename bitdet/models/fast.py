"""Fast paths for BiT models that keep the eager numerics: WS caching, once-per-step WS, compile.

Group Normalization and Weight Standardization cost BiT speed in eager PyTorch: every
forward re-standardizes every kernel (several small kernels per conv, and as many again in
backward), and GroupNorm + ReLU run as separate passes over the activations. The levers
here remove that overhead without changing module names, state-dict keys or results:

* :func:`cache_standardized_weights` / :func:`standardized_weight_cache`: inference (and
  frozen layers) standardize each kernel once, then reuse it until the weight changes.
* :class:`StandardizeOncePerStep`: with gradient accumulation, standardize once per optimizer
  step instead of once per micro-batch, and back-propagate through WS once per step.
* :func:`compile_model`: ``torch.compile`` (Inductor fuses WS into one kernel per conv and
  GroupNorm + ReLU into channels-last reductions; ``mode="reduce-overhead"`` adds CUDA
  graphs) with a clean fall-back to eager when compilation fails
  (:class:`CompiledWithFallback`, also the classification trainer's).
* :func:`optimize_for_inference` combines them for inference.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import Callable, Iterator, List, Optional

import torch
from torch import nn

from bitdet.models.layers import StdConv2d, standardize_weight

__all__ = [
    "CompiledWithFallback",
    "StandardizeOncePerStep",
    "cache_standardized_weights",
    "clear_weight_cache",
    "compile_model",
    "is_compiled",
    "optimize_for_inference",
    "standardized_weight_cache",
    "std_convs",
]

logger = logging.getLogger(__name__)


def std_convs(model: nn.Module) -> List[StdConv2d]:
    """Every weight-standardized conv of ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, StdConv2d)]


def cache_standardized_weights(model: nn.Module, enabled: bool = True) -> int:
    """Switch the standardized-kernel cache of every :class:`StdConv2d` on or off.

    The cache is used only where no gradient can reach the kernel (no-grad / inference mode,
    or a frozen kernel) and is rebuilt when the parameter changes; see :class:`StdConv2d`.
    It holds one extra copy of the kernels (in the autocast dtype when autocast is on).

    Args:
        model: any module; non-BiT modules are left alone.
        enabled: False also frees the cached kernels.

    Returns:
        The number of convs switched.
    """
    convs = std_convs(model)
    for conv in convs:
        conv.cache_weight = enabled
        if not enabled:
            conv.clear_weight_cache()
    return len(convs)


def clear_weight_cache(model: nn.Module) -> None:
    """Free every cached standardized kernel (after writing weights through ``.data``)."""
    for conv in std_convs(model):
        conv.clear_weight_cache()


@contextlib.contextmanager
def standardized_weight_cache(model: nn.Module) -> Iterator[nn.Module]:
    """Cache standardized kernels inside the ``with`` block only; the previous state is restored.

    Example::

        with torch.inference_mode(), standardized_weight_cache(model):
            for batch in loader:
                outputs.append(model(batch))
    """
    convs = std_convs(model)
    previous = [c.cache_weight for c in convs]
    for conv in convs:
        conv.cache_weight = True
    try:
        yield model
    finally:
        for conv, was in zip(convs, previous):
            conv.cache_weight = was
            if not was:
                conv.clear_weight_cache()


class StandardizeOncePerStep:
    """Standardize every kernel once per optimizer step, for gradient accumulation.

    Inside :meth:`step`, each :class:`StdConv2d` uses a detached copy ``V`` of its
    standardized kernel as a leaf tensor; each micro-batch's backward accumulates
    ``dL/dV`` there instead of re-running WS forward and backward. When the block exits
    normally, one backward through WS turns the summed ``dL/dV`` into ``weight.grad``. As WS
    is a function of the weight alone, and the weight is constant within a step, the
    gradients equal those of per-use standardization (up to float summation order).

    DDP: wrap the model in ``DistributedDataParallel`` as usual and run the last
    micro-batch without ``no_sync()``. The weight gradients, and therefore DDP's all-reduce
    hooks, fire during the closing backward at the end of the block, which also ends DDP's
    reduction for the step. Exiting the block with an exception discards the step's
    gradients for the convs.

    Example::

        once = StandardizeOncePerStep(model)
        for micro_batches in loader:
            with once.step():
                for x, y in micro_batches:
                    (loss_fn(model(x), y) / len(micro_batches)).backward()
            optimizer.step()
            optimizer.zero_grad()

    Args:
        model: the model (or its DDP wrapper) whose :class:`StdConv2d` layers to drive.
    """

    def __init__(self, model: nn.Module) -> None:
        self.convs = std_convs(model)
        if not self.convs:
            raise ValueError(
                f"{type(model).__name__} has no StdConv2d layers: nothing to standardize once per "
                "step"
            )

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """Run one optimizer step's forwards and backwards inside this block."""
        graphs: List[Optional[torch.Tensor]] = []
        leaves: List[torch.Tensor] = []
        # The WS graph must be recorded even if the caller is in no-grad code.
        with torch.enable_grad():
            for conv in self.convs:
                if conv.weight.requires_grad:
                    graph = standardize_weight(conv.weight, conv.eps)
                    leaf = graph.detach().requires_grad_(True)
                else:  # frozen: a constant, no gradient to carry
                    graph, leaf = None, standardize_weight(conv.weight.detach(), conv.eps)
                graphs.append(graph)
                leaves.append(leaf)
                conv.step_weight = leaf
        try:
            yield
        except BaseException:
            self._release()
            raise
        self._release()
        outputs, grads = [], []
        for graph, leaf in zip(graphs, leaves):
            if graph is not None and leaf.grad is not None:
                outputs.append(graph)
                grads.append(leaf.grad)
        if outputs:
            torch.autograd.backward(outputs, grads)

    def _release(self) -> None:
        for conv in self.convs:
            conv.step_weight = None


class CompiledWithFallback:
    """``torch.compile(fn)`` that falls back to ``fn`` itself, for good, when compiling fails.

    Compilation is lazy: it happens at the first call. If ``torch.compile`` itself or a compiled
    call raises, ``fn`` runs on the same inputs: if it succeeds, the compile error is logged
    once and every later call is eager; if it fails too, its own error is raised (it is the
    caller's error, not the compiler's). A failure the call cannot see (in the compiled
    backward, raised by ``loss.backward()``) is handed to :meth:`fall_back` by the caller.

    Args:
        fn: the eager callable (a module or its ``forward``).
        name: what the log line calls it.
        mode, dynamic, backend: as for ``torch.compile``; ``mode`` "default" is None, and
            modes apply to the "inductor" backend only.
        fallback: False: no eager safety net, compile errors propagate.
    """

    def __init__(
        self,
        fn: Callable,
        name: str,
        mode: Optional[str] = None,
        dynamic: Optional[bool] = False,
        backend: str = "inductor",
        fallback: bool = True,
    ) -> None:
        self.eager, self.name, self.fallback, self.failed = fn, name, fallback, False
        if backend != "inductor" or mode == "default":
            mode = None
        self.compiled: Optional[Callable] = None
        try:
            self.compiled = torch.compile(fn, mode=mode, dynamic=dynamic, backend=backend)
        except Exception as e:  # e.g. a Python version Dynamo does not support
            if not fallback:
                raise
            self.fall_back(e)

    def fall_back(self, error: BaseException) -> None:
        """Run eagerly from now on; logs ``error`` (the first line of its message)."""
        self.failed = True
        first_line = str(error).splitlines()[0] if str(error) else ""
        logger.warning(
            "torch.compile failed (%s: %s); running %s eagerly from now on",
            type(error).__name__,
            first_line,
            self.name,
        )

    def __call__(self, *args, **kwargs):
        if self.failed:
            return self.eager(*args, **kwargs)
        if not self.fallback:
            return self.compiled(*args, **kwargs)
        try:
            return self.compiled(*args, **kwargs)
        except Exception as compile_error:  # noqa: BLE001 - decided below by re-running eagerly
            out = self.eager(*args, **kwargs)  # raises the caller's own error, if it is one
            self.fall_back(compile_error)
            return out


def is_compiled(module: nn.Module) -> bool:
    """Whether :func:`compile_model` compiled ``module`` and compilation has not failed."""
    state = getattr(module, "_bitdet_compile", None)
    return state is not None and not state.failed


def compile_model(
    module: nn.Module,
    mode: Optional[str] = None,
    dynamic: Optional[bool] = False,
    fallback: bool = True,
    backend: str = "inductor",
) -> nn.Module:
    """``torch.compile`` ``module`` in place, falling back to eager if compilation fails.

    The module object, its parameter names and state-dict keys stay as they were (only its
    ``forward`` is replaced, by a :class:`CompiledWithFallback` of it).

    Args:
        module: the module to compile.
        mode: ``torch.compile`` mode: None/"default", "max-autotune-no-cudagraphs", or
            "reduce-overhead" (CUDA graphs; CUDA only).
        dynamic: passed to ``torch.compile``; False specialises on input shapes.
        fallback: False compiles without the eager safety net (errors propagate).
        backend: ``torch.compile`` backend; modes apply to "inductor" only ("eager" traces
            with Dynamo and runs the captured graphs eagerly: a quick check that a model
            compiles).

    Returns:
        ``module`` itself.
    """
    if getattr(module, "_bitdet_compile", None) is not None:
        return module
    compiled = CompiledWithFallback(
        module.forward, type(module).__name__, mode, dynamic, backend, fallback
    )
    module.forward = functools.update_wrapper(compiled, compiled.eager)
    module._bitdet_compile = compiled
    return module


def optimize_for_inference(
    model: nn.Module,
    channels_last: bool = True,
    cache_weights: bool = True,
    compile: bool = False,
    compile_mode: Optional[str] = None,
) -> nn.Module:
    """Eval mode, channels-last, cached standardized kernels, optionally ``torch.compile``.

    Run the model under ``torch.inference_mode()`` (or ``no_grad``) for the cache to apply.
    Compiled graphs standardize inside the graph and do not use the cache.

    Returns:
        ``model``, modified in place.
    """
    model.eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if cache_weights:
        cache_standardized_weights(model, True)
    if compile:
        compile_model(model, mode=compile_mode)
    return model
