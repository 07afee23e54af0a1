"""BiT in Detectron2: backbones (registered on import), config keys, checkpointer, trainer.

Shipped detectors (``configs/``): RetinaNet (``Base-RetinaNet-BiT.yaml``, P3-P7), Faster / Mask
R-CNN (``Base-RCNN-FPN-BiT.yaml``, P2-P6) and FCOS as a LazyConfig
(``COCO-Detection/fcos_bit_m_R50x1_FPN_1x.py``); ``tools/train_net.py`` runs them all.

A custom detector in a yacs config: any Detectron2 meta-architecture with a BiT backbone by
name, ``build_bit_fpn_backbone`` (P2-P6, P6 max-pooled from P5),
``build_retinanet_bit_fpn_backbone`` (P3-P7 from C5) or ``build_bit_backbone`` (the trunk
alone), read from ``MODEL.BIT``::

    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model
    from bitdet.detection import add_bit_config

    cfg = get_cfg(); add_bit_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"))
    cfg.MODEL.BACKBONE.NAME = "build_bit_fpn_backbone"
    # what the zoo's FPN.IN_FEATURES ask for
    cfg.MODEL.BIT.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    model = build_model(cfg)

The runnable version in docs/detection.md adds BiT's input scaling and freezing and runs a
training step.

In a LazyConfig, :class:`BiTBackbone` is the ``bottom_up`` of Detectron2's ``FPN`` (no config
object involved)::

    model.backbone = L(FPN)(
        bottom_up=L(BiTBackbone)(variant="R50x1", out_features=["res3", "res4", "res5"]),
        in_features=["res3", "res4", "res5"],
        out_channels=256,
        top_block=L(LastLevelP6P7)(in_channels=256, out_channels=256, in_feature="p5"),
    )

Load BiT weights of any format (``.npz``, timm, bitdet, ``hf-hub:`` ids) with
:class:`BiTCheckpointer`; Detectron2's ``DefaultPredictor`` interface is :class:`BiTPredictor`.
The demo datasets (``bitdet_demo_*``, with boxes and instance masks) are registered on import.
"""

from bitdet.detection.backbone import (
    BiTBackbone,
    build_bit_backbone,
    build_bit_fpn_backbone,
    build_retinanet_bit_fpn_backbone,
)
from bitdet.detection.checkpointer import BiTCheckpointer
from bitdet.detection.config import add_bit_config, get_bit_cfg, resolve_config_file
from bitdet.detection.datasets import prepare_datasets, register_coco_format, register_demo_datasets
from bitdet.detection.predictor import BiTPredictor
from bitdet.detection.trainer import BiTTrainer

# Detectron2's stock DatasetCatalog / DefaultTrainer find the demo sets after
# `import bitdet.detection`.
register_demo_datasets()

__all__ = [
    "BiTBackbone",
    "BiTCheckpointer",
    "BiTPredictor",
    "BiTTrainer",
    "add_bit_config",
    "build_bit_backbone",
    "build_bit_fpn_backbone",
    "build_retinanet_bit_fpn_backbone",
    "get_bit_cfg",
    "prepare_datasets",
    "register_coco_format",
    "register_demo_datasets",
    "resolve_config_file",
]
