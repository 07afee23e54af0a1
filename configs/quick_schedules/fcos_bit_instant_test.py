"""A few CPU iterations of the FCOS LazyConfig on the small generated dataset: exercises training,
checkpointing and COCO evaluation end to end. R14-tiny is not a paper model."""

import os

from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig
from detectron2.data import transforms as T
from detectron2.layers import ShapeSpec

# The full config, by path: "COCO-Detection" is not a Python name for a relative import.
_full = LazyConfig.load(
    os.path.join(os.path.dirname(__file__), "..", "COCO-Detection", "fcos_bit_m_R50x1_FPN_1x.py")
)
dataloader, lr_multiplier, model = _full.dataloader, _full.lr_multiplier, _full.model
optimizer, train = _full.optimizer, _full.train

model.backbone.bottom_up.variant = "R14-tiny"
model.backbone.out_channels = 32
model.head.input_shape = [ShapeSpec(channels=32)] * 5
# 64 channels: the head's GroupNorm (32 groups) needs two values per group on P7, 1x1 at 128 pixels.
model.head.conv_dims = [64, 64]
model.num_classes = 10
# After a few iterations every score is below FCOS's 0.2: keep all candidates so that COCO
# evaluation reports a number rather than nan.
model.test_score_thresh = 0.0

dataloader.train.dataset.names = "bitdet_demo_mini_train"
dataloader.test.dataset.names = "bitdet_demo_mini_val"
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=(128,), max_size=128, sample_style="choice"),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=128, max_size=128)
]
dataloader.train.total_batch_size = 2
dataloader.train.num_workers = 0
dataloader.test.num_workers = 0

optimizer.lr = 0.005
train.init_checkpoint = ""
train.device = "cpu"
train.amp.enabled = False
train.max_iter = 4
train.checkpointer.period = 2
train.log_period = 1
train.output_dir = "output/quick_schedules/fcos_bit_instant_test"
