"""Write a target as TorchScript or ONNX, and load the file back as a callable.

TorchScript: ``torch.jit.trace`` of the folded module (for detectors, through Detectron2's
``TracingAdapter``). Traced graphs record tensor shapes symbolically, so batch and image
size stay free.

ONNX: torch's TorchScript-based exporter, ``torch.onnx.export(..., dynamo=False)``, with
dynamic axes and opset 17 by default. GroupNorm exports as ``InstanceNormalization`` over
``(N, groups, -1)`` plus the per-channel affine, which every runtime has; ONNX's own
``GroupNormalization`` (opset 18) defined per-group scale and bias and was redefined in
opset 21, so it is not relied on. torch's newer exporter (``dynamo=True``, the default since
torch 2.9) exports the classifier, but not the detector: ``torch.export`` meets Detectron2's
traced padding (the padded height and width become data-dependent symbols) and stops in
``F.group_norm``'s batch check (``GuardOnDataDependentSymNode``), so one exporter, the one
that handles every target, is used.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Callable, Iterator, List, Sequence, Union

import numpy as np
import torch

from bitdet.errors import ConfigError, MissingPackageError
from bitdet.export.fold import runtime_conv_weights
from bitdet.export.targets import ExportTarget
from bitdet.utils.io import atomic_write

__all__ = [
    "DEFAULT_OPSET",
    "FILE_NAMES",
    "FORMATS",
    "export",
    "check_onnx_size",
    "load_runner",
    "outputs_as_numpy",
    "require_onnx",
]

logger = logging.getLogger(__name__)

FORMATS = ("torchscript", "onnx")
# File names as in Detectron2's tools/deploy/export_model.py.
FILE_NAMES = {"torchscript": "model.ts", "onnx": "model.onnx"}
DEFAULT_OPSET = 17

Runner = Callable[..., List[np.ndarray]]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Tracing Detectron2 warns about every Python-side shape decision (expected: exported
    graphs are checked against eager instead); keep the console readable."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # torch 2.14 marks torch.jit as deprecated; tracing is still Detectron2's export path
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        yield


def _check_folded(graph, path: Path) -> None:
    computed = runtime_conv_weights(graph)
    if computed:
        raise RuntimeError(
            f"{path}: {len(computed)} convolutions compute their kernel at run time (weight "
            f"standardization was not folded), e.g. {computed[0]}"
        )


def export_torchscript(target: ExportTarget, path: Path) -> torch.jit.ScriptModule:
    """Trace ``target.module`` on ``target.samples[0]`` and save it atomically at ``path``."""
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(target.module, target.samples[0], check_trace=False)
    _check_folded(traced, path)
    with atomic_write(path) as f, _quiet():
        torch.jit.save(traced, f)
    return traced


def require_onnx(runtime: bool = False) -> None:
    """Raise a :class:`~bitdet.errors.MissingPackageError` (an ``ImportError``) naming the
    install command if ONNX (or ONNX Runtime) is missing."""
    import importlib.util

    missing = [
        m
        for m in ("onnx", "onnxruntime")[: 2 if runtime else 1]
        if importlib.util.find_spec(m) is None
    ]
    if missing:
        raise MissingPackageError(
            f"ONNX export needs {' and '.join(missing)}: pip install 'bitdet[export]'"
        )


# protobuf, which stores an ONNX model, cannot serialise a message of 2 GiB or more.
_ONNX_MAX_BYTES = 2**31 - 2**26


def check_onnx_size(target: ExportTarget) -> None:
    """Raise a ``ValueError`` if the weights alone exceed what one ONNX file can hold."""
    size = sum(t.numel() * t.element_size() for t in target.module.state_dict().values())
    if size > _ONNX_MAX_BYTES:
        raise ConfigError(
            f"the {target.kind}'s weights take {size / 2**30:.1f} GiB; an ONNX file holds under 2 "
            "GiB (protobuf's limit): export --format torchscript instead"
        )


def export_onnx(target: ExportTarget, path: Path, opset: int = DEFAULT_OPSET):
    """Export ``target.module`` to ONNX with dynamic axes and save it atomically at ``path``."""
    require_onnx()
    check_onnx_size(target)
    import onnx

    buffer = io.BytesIO()
    with _quiet(), torch.no_grad():
        torch.onnx.export(
            target.module,
            target.samples[0],
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=target.input_names,
            output_names=target.output_names,
            dynamic_axes=target.dynamic_axes,
        )
    model_proto = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(model_proto)
    _check_folded(model_proto, path)
    with atomic_write(path) as f:
        f.write(buffer.getvalue())
    return model_proto


def export(
    target: ExportTarget, fmt: str, folder: Union[str, Path], opset: int = DEFAULT_OPSET
) -> Path:
    """Export ``target`` in format ``fmt`` into ``folder``; returns the file written.

    Raises:
        RuntimeError: the graph still computes a conv kernel at run time.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}: expected one of {FORMATS}")
    path = Path(folder) / FILE_NAMES[fmt]
    path.parent.mkdir(parents=True, exist_ok=True)
    # Inference graphs: torch.onnx.export restores the mode the module had, and a wrapper
    # such as TracingAdapter starts in training mode, which would put the detector in it.
    target.module.eval()
    if fmt == "torchscript":
        export_torchscript(target, path)
    else:
        export_onnx(target, path, opset)
    logger.info("wrote %s (%s, %s, %.1f MB)", path, fmt, target.kind, path.stat().st_size / 2**20)
    return path


def load_runner(path: Union[str, Path], fmt: str, threads: int = 0) -> Runner:
    """Load an exported file; the result maps input tensors to a list of numpy outputs.

    Args:
        path: a file written by :func:`export`.
        fmt: its format.
        threads: ONNX Runtime intra-op threads (0: ONNX Runtime's default); TorchScript uses
            torch's thread setting.
    """
    if fmt == "torchscript":
        with _quiet():
            module = torch.jit.load(str(path), map_location="cpu").eval()

        def run_torchscript(*inputs: torch.Tensor) -> List[np.ndarray]:
            with torch.no_grad():
                out = module(*inputs)
            return [t.numpy() for t in (out if isinstance(out, (tuple, list)) else (out,))]

        return run_torchscript
    if fmt == "onnx":
        require_onnx(runtime=True)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3  # errors only
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]

        def run_onnx(*inputs: torch.Tensor) -> List[np.ndarray]:
            if len(inputs) != len(names):
                raise ValueError(f"{path} takes {len(names)} inputs {names}, got {len(inputs)}")
            return session.run(None, {n: t.numpy() for n, t in zip(names, inputs)})

        return run_onnx
    raise ConfigError(f"unknown export format {fmt!r}: expected one of {FORMATS}")


def outputs_as_numpy(outputs: Sequence[torch.Tensor]) -> List[np.ndarray]:
    """Eager outputs in the runners' form."""
    return [t.detach().cpu().numpy() for t in outputs]
