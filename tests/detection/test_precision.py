"""The shipped detection configs' mixed precision (bf16 autocast) trains on the CPU.

``Base-RetinaNet-BiT.yaml`` (every COCO config) sets ``SOLVER.AMP``; these tests run the
instant config with exactly those AMP settings, through ``BiTTrainer`` and the same
:class:`AutocastTrainer` step a GPU uses, only with ``device_type`` "cpu". The instant
config's 128 px input is kept: at 64 px P6 and P7 are 1x1 maps, where CPU bf16 convolution
intermittently gave a NaN P7 weight gradient on this machine (the next step's loss check
stops such a run).
"""

import os

import pytest
import torch
import yaml

from bitdet.config import CONFIGS_DIR
from bitdet.detection import BiTTrainer, get_bit_cfg, prepare_datasets
from bitdet.detection.precision import AutocastTrainer, autocast_dtype
from bitdet.models.layers import StdConv2d

SHIPPED_AMP = yaml.safe_load((CONFIGS_DIR / "Base-RetinaNet-BiT.yaml").read_text())["SOLVER"]["AMP"]


def _cfg(tmp_path, *opts):
    return get_bit_cfg(
        "quick_schedules/retinanet_bit_instant_test.yaml",
        [
            "OUTPUT_DIR",
            str(tmp_path / "out"),
            "SEED",
            "3",
            "SOLVER.MAX_ITER",
            "2",
            "SOLVER.CHECKPOINT_PERIOD",
            "100",
            "DATASETS.TEST",
            "()",
            "SOLVER.AMP.ENABLED",
            str(SHIPPED_AMP["ENABLED"]),
            "SOLVER.AMP.PRECISION",
            SHIPPED_AMP["PRECISION"],
            *opts,
        ],
    )


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    # Demo datasets register once per process, so one folder serves the module.
    before = os.environ.get("DETECTRON2_DATASETS")
    os.environ["DETECTRON2_DATASETS"] = str(tmp_path_factory.mktemp("datasets"))
    yield
    if before is None:
        del os.environ["DETECTRON2_DATASETS"]
    else:
        os.environ["DETECTRON2_DATASETS"] = before


def test_shipped_configs_enable_bf16_amp():
    assert SHIPPED_AMP == {"ENABLED": True, "PRECISION": "bf16"}


def test_bf16_autocast_trains_on_cpu(tmp_path, datasets):
    cfg = _cfg(tmp_path)
    prepare_datasets(cfg, cfg.DATASETS.TRAIN)
    trainer = BiTTrainer(cfg)
    assert isinstance(trainer._trainer, AutocastTrainer)
    assert (
        trainer._trainer.precision == torch.bfloat16
        and not trainer._trainer.grad_scaler.is_enabled()
    )

    seen = set()
    convs = [m for m in trainer.model.modules() if isinstance(m, StdConv2d)]
    handles = [m.register_forward_hook(lambda mod, inp, out: seen.add(out.dtype)) for m in convs]
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.resume_or_load(resume=False)
    trainer.train()
    for h in handles:
        h.remove()

    assert seen == {torch.bfloat16}, "the backbone convs did not run in bf16"
    after = trainer.model.state_dict()
    assert all(v.dtype == torch.float32 for v in after.values() if v.is_floating_point()), (
        "weights must stay fp32"
    )
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    assert any(not torch.equal(before[k], after[k]) for k in after), (
        "two bf16 steps changed no weight"
    )
    state = torch.load(tmp_path / "out" / "model_final.pth", weights_only=True)
    assert (
        "grad_scaler" in state["trainer"]["_trainer"]
        and "optimizer" in state["trainer"]["_trainer"]
    )


def test_fp32_when_amp_is_off(tmp_path, datasets):
    cfg = _cfg(tmp_path, "SOLVER.AMP.ENABLED", "False")
    prepare_datasets(cfg, cfg.DATASETS.TRAIN)
    trainer = BiTTrainer(cfg)
    assert not isinstance(trainer._trainer, AutocastTrainer)


def test_unknown_precision_is_named():
    with pytest.raises(
        ValueError,
        match=r"SOLVER.AMP.PRECISION 'bfloat16': expected one of \['bf16', 'fp16'\] "
        r"\('bfloat16' is written 'bf16'\)",
    ):
        autocast_dtype("bfloat16")
    with pytest.raises(
        ValueError, match=r"SOLVER.AMP.PRECISION 'fp32': expected one of \['bf16', 'fp16'\]$"
    ):
        autocast_dtype("fp32")
