"""``BiTPredictor``: Detectron2's ``DefaultPredictor`` whose ``MODEL.WEIGHTS`` may be BiT weights
of any format.

Detectron2's own predictor loads ``MODEL.WEIGHTS`` with its stock checkpointer, which does not
read an official ``.npz`` and skips keys it does not know (a bitdet or timm file then loads
nothing, silently). This one loads through :class:`BiTCheckpointer`, so every format bitdet
reads works and a file that does not fit the BiT trunk is an error::

    import cv2
    from bitdet.detection import BiTPredictor, get_bit_cfg

    cfg = get_bit_cfg(
        "COCO-Detection/retinanet_bit_m_R50x1_1x.yaml", ["MODEL.WEIGHTS", "output/model_final.pth"]
    )
    predictor = BiTPredictor(cfg)
    outputs = predictor(cv2.imread("input.jpg"))   # BGR, as DefaultPredictor takes
    print(outputs["instances"].pred_boxes)
"""

from __future__ import annotations

import logging

from detectron2.engine import DefaultPredictor

from bitdet.detection.checkpointer import BiTCheckpointer

__all__ = ["BiTPredictor"]

logger = logging.getLogger(__name__)


class BiTPredictor(DefaultPredictor):
    """``DefaultPredictor`` (same arguments, call and attributes) loading weights with
    :class:`BiTCheckpointer`.

    Args:
        cfg: a config with bitdet's keys (:func:`bitdet.detection.get_bit_cfg`); ``MODEL.WEIGHTS``
            is any weights source bitdet reads (empty: an untrained model, with a warning).
    """

    def __init__(self, cfg) -> None:
        without_weights = cfg.clone()
        without_weights.defrost()
        without_weights.MODEL.WEIGHTS = ""  # DefaultPredictor's own load becomes a no-op
        super().__init__(without_weights)
        self.cfg = cfg.clone()
        if cfg.MODEL.WEIGHTS:
            BiTCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
        else:
            logger.warning("MODEL.WEIGHTS is empty: BiTPredictor runs an untrained model")
