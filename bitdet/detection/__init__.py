"""BiT in Detectron2: backbones (registered on import), config keys, checkpointer, trainer.

Python API for a custom detector::

    from detectron2.config import get_cfg
    from detectron2.modeling import build_model
    from bitdet.detection import add_bit_config

    cfg = get_cfg(); add_bit_config(cfg)
    cfg.merge_from_file("configs/Base-RetinaNet-BiT.yaml")   # or set MODEL.BACKBONE.NAME
    model = build_model(cfg)

Detectron2's ``DefaultPredictor`` interface with BiT weights of any format (``.npz``, timm,
bitdet, ``hf-hub:`` ids): :class:`BiTPredictor`. The demo datasets (``bitdet_demo_*``) are
registered on import.
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

# Detectron2's stock DatasetCatalog / DefaultTrainer find the demo sets after `import bitdet.detection`.
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
