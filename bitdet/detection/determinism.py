"""What makes a detection run repeatable, so that ``--resume`` continues it bit for bit.

- Detectron2's losses call TorchScript functions (fvcore's ``sigmoid_focal_loss_jit``, the
  box-delta encoding). TorchScript's executor profiles the first calls in a process and
  then switches to an optimized graph whose gradients differ in the last bit, so a resumed
  process would compute its first iterations differently from the uninterrupted one.
  :func:`repeatable_execution` runs them unoptimized during training (the loss is a tiny
  part of a step).
- On a GPU, cuDNN and atomics-based kernels are nondeterministic: two runs differ in the
  last bits from the first step. ``SOLVER.DETERMINISTIC True`` switches on PyTorch's
  deterministic algorithms (slower; kernels without a deterministic version warn) and
  needs Detectron2's ``CUDNN_BENCHMARK False``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

import torch

from bitdet.errors import ConfigError

__all__ = ["configure_determinism", "repeatable_execution"]

logger = logging.getLogger(__name__)


def configure_determinism(cfg) -> None:
    """Apply ``SOLVER.DETERMINISTIC`` to this process (before any CUDA work)."""
    if not cfg.SOLVER.DETERMINISTIC:
        return
    if cfg.CUDNN_BENCHMARK:
        raise ConfigError(
            "SOLVER.DETERMINISTIC True needs CUDNN_BENCHMARK False "
            "(benchmarking picks kernels by timing)"
        )
    # cuBLAS is deterministic only with a fixed workspace; read when CUDA first initialises.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)
    logger.info("SOLVER.DETERMINISTIC: deterministic algorithms on (kernels without one warn)")


@contextlib.contextmanager
def repeatable_execution() -> Iterator[None]:
    """TorchScript functions run unoptimized inside (see the module docstring)."""
    with torch.jit.optimized_execution(False):
        yield
