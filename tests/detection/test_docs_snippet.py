"""The custom-detector block of docs/detection.md runs as written: a BiT-backbone Faster R-CNN
trains a step and infers."""

import math
import re
from pathlib import Path

import torch
from detectron2.structures import Instances

DOC = Path(__file__).resolve().parents[2] / "docs" / "detection.md"
MARKER = "<!-- runnable: custom-detector -->"


def _block(marker: str) -> str:
    text = DOC.read_text()
    assert marker in text, f"{DOC} lost the marker {marker}"
    match = re.match(r"\s*```python\n(.*?)\n```", text.split(marker, 1)[1], re.S)
    assert match, f"no ```python block right after {marker}"
    return match.group(1)


def test_docs_custom_detector_block_runs():
    namespace: dict = {}
    exec(compile(_block(MARKER), f"{DOC}:{MARKER}", "exec"), namespace)
    model, losses, detections = namespace["model"], namespace["losses"], namespace["detections"]
    assert type(model.backbone.bottom_up).__name__ == "BiTBackbone"
    assert {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"} <= set(losses)
    assert all(math.isfinite(v.item()) for v in losses.values())
    trunk_grad = model.backbone.bottom_up.stem.conv.weight.grad
    assert trunk_grad is not None and trunk_grad.abs().sum() > 0  # the step reached the BiT trunk
    assert isinstance(detections, Instances) and detections.image_size == (128, 160)
    assert not model.training and torch.isfinite(detections.scores).all()
