"""Every shipped pretraining config loads; recipes carry the paper's numbers."""

import pytest

from bitdet.config import CONFIGS_DIR, shipped_configs
from bitdet.models import resolve
from bitdet.pretrain import get_pretrain_cfg

CONFIGS = [CONFIGS_DIR / name for name in shipped_configs("pretrain")]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads(path):
    cfg = get_pretrain_cfg(str(path))
    resolve(cfg.MODEL.BIT.VARIANT)  # a known architecture
    if cfg.SOLVER.LOSS == "sigmoid":
        assert cfg.DATASETS.MULTILABEL and cfg.MODEL.HEAD_BIAS == -10.0


@pytest.mark.parametrize(
    "name, epochs, decays, classes, loss",
    [
        ("bit_s_R50x1.yaml", 90, (30, 60, 80), 1000, "softmax"),
        ("bit_s_R101x3.yaml", 90, (30, 60, 80), 1000, "softmax"),
        ("bit_m_R50x1.yaml", 90, (30, 60, 80), 21843, "softmax"),
        ("bit_m_R101x3.yaml", 90, (30, 60, 80), 21843, "softmax"),
        ("bit_l_R50x1.yaml", 40, (10, 23, 30, 37), 18291, "sigmoid"),
        ("bit_l_R101x3.yaml", 40, (10, 23, 30, 37), 18291, "sigmoid"),
    ],
)
def test_recipes(name, epochs, decays, classes, loss):
    cfg = get_pretrain_cfg(f"pretrain/{name}")
    s = cfg.SOLVER
    assert (s.IMS_PER_BATCH, s.BASE_LR_PER_256, s.WARMUP_ITERS, s.WEIGHT_DECAY, s.MOMENTUM) == (
        4096,
        0.03,
        5000,
        1e-4,
        0.9,
    )
    assert (s.EPOCHS, tuple(s.DECAY_EPOCHS), cfg.MODEL.NUM_CLASSES, s.LOSS) == (
        epochs,
        decays,
        classes,
        loss,
    )
    assert cfg.INPUT.CROP_SIZE == 224 and cfg.MODEL.BIT.VARIANT == name.split("_")[2][:-5]


def test_overrides_and_errors():
    cfg = get_pretrain_cfg("pretrain/demo_fashion_mnist.yaml", ["SOLVER.IMS_PER_BATCH", "64"])
    assert cfg.SOLVER.IMS_PER_BATCH == 64
    with pytest.raises(ValueError, match="SOLVER.NOPE"):
        get_pretrain_cfg(None, ["SOLVER.NOPE", "1"])
    with pytest.raises(ValueError, match="DATASETS.TRAIN.NAME"):
        get_pretrain_cfg(None, ["DATASETS.TRAIN.NAME", "tfrecord"])
    with pytest.raises(FileNotFoundError, match="'pretrain/missing.yaml' not found"):
        get_pretrain_cfg("pretrain/missing.yaml")
