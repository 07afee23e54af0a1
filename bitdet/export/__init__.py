"""Deployment: BiT classifiers and detectors to TorchScript and ONNX, weight standardization
folded into plain conv kernels, outputs checked against eager (``tools/export_model.py``)."""

from bitdet.export.fold import fold_weight_standardization, runtime_conv_weights
from bitdet.export.formats import DEFAULT_OPSET, FILE_NAMES, FORMATS, export, load_runner
from bitdet.export.targets import (
    KINDS,
    ExportTarget,
    backbone_target,
    classifier_target,
    detector_target,
    sample_photos,
)
from bitdet.export.verify import Comparison, compare_outputs, verify

__all__ = [
    "DEFAULT_OPSET",
    "FILE_NAMES",
    "FORMATS",
    "KINDS",
    "Comparison",
    "ExportTarget",
    "backbone_target",
    "classifier_target",
    "compare_outputs",
    "detector_target",
    "export",
    "fold_weight_standardization",
    "load_runner",
    "runtime_conv_weights",
    "sample_photos",
    "verify",
]
