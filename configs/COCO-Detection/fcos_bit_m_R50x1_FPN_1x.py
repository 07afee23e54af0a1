"""FCOS, BiT-M-R50x1 + FPN (P3-P7), COCO-2017, 1x schedule (90k iterations at batch 16):
Detectron2's ``COCO-Detection/fcos_R_50_FPN_1x.py`` with the BiT trunk, BiT's input
and bf16 autocast.

    python tools/train_net.py --config COCO-Detection/fcos_bit_m_R50x1_FPN_1x.py --num-gpus 8
"""

from detectron2 import model_zoo

from bitdet.detection.mapper import SkippingDatasetMapper
from bitdet.detection.trainer import has_compiled_ops

from ..common.models.fcos_bit import model  # noqa: F401 (a LazyConfig's entries are its names)

dataloader = model_zoo.get_config("common/data/coco.py").dataloader
dataloader.train.mapper._target_ = (
    SkippingDatasetMapper  # unreadable images are skipped and counted
)
dataloader.train.mapper.use_instance_mask = False
dataloader.train.mapper.image_format = "RGB"  # the test mapper follows the train mapper
# The fast evaluator needs detectron2's compiled ops; pycocotools' gives the same AP.
dataloader.evaluator.use_fast_impl = has_compiled_ops()

optimizer = model_zoo.get_config("common/optim.py").SGD
optimizer.lr = 0.01
lr_multiplier = model_zoo.get_config("common/coco_schedule.py").lr_multiplier_1x

train = model_zoo.get_config("common/train.py").train
train.init_checkpoint = "BiT-M-R50x1"  # any BiT weights bitdet reads (MODEL.WEIGHTS' formats)
# Autocast on train.device (the CPU included); bf16 needs no loss scaling.
train.amp = dict(enabled=True, precision="bf16")
train.eval_period = 0  # evaluate once, at the end
train.seed = 0
train.output_dir = "output/COCO-Detection/fcos_bit_m_R50x1_FPN_1x"
