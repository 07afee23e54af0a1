"""FCOS with a BiT ResNet-v2 + FPN backbone (P3-P7): Detectron2's ``common/models/fcos.py`` with
the trunk and input replaced. A LazyConfig: run it through ``tools/train_net.py --config *.py``."""

from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.modeling import FPN
from detectron2.modeling.backbone.fpn import LastLevelP6P7

from bitdet.detection import BiTBackbone

model = model_zoo.get_config("common/models/fcos.py").model
model.backbone = L(FPN)(
    bottom_up=L(BiTBackbone)(
        variant="R50x1",
        out_features=["res3", "res4", "res5"],
        # relu(GN(x)) with the pretrained norm that comes next in the network
        # (MODEL.BIT.FEATURE_TAP).
        feature_tap="preact",
        # BiT fine-tunes every layer (Detectron2's R-50 configs freeze the stem and res2).
        freeze_at=0,
    ),
    in_features=["res3", "res4", "res5"],
    out_channels=256,
    # FCOS computes P6 and P7 from P5, not C5 (Tian et al., arXiv 2006.09214, section 2.2).
    top_block=L(LastLevelP6P7)(
        in_channels="${..out_channels}", out_channels="${..out_channels}", in_feature="p5"
    ),
)
# BiT input: RGB scaled to [-1, 1]; the data loader's mapper reads RGB.
model.pixel_mean = [127.5, 127.5, 127.5]
model.pixel_std = [127.5, 127.5, 127.5]
