"""Gradient accumulation in detection (``SOLVER.BATCH_SPLIT``): micro-batch steps equal
whole-batch steps.

Tiny RetinaNet (the instant config, R14-tiny) in float32 on the CPU. The in-process runs
draw each image's short edge from (64, 96, 128), so micro-batches differ in size and must be
padded as the whole batch; the two-process run uses one size, as processes pad their own share.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
from detectron2.engine import HookBase

from bitdet.detection import BiTTrainer, get_bit_cfg, prepare_datasets
from bitdet.detection.accumulation import check_accumulation
from bitdet.detection.precision import AutocastTrainer
from bitdet.detection.sampler import micro_batch_size, split_micro_batches
from tests.reliability import detection_runs as runs
from tests.reliability.test_detection_faults import _assert_same_state

MULTI_SCALE = ["INPUT.MIN_SIZE_TRAIN", "(64, 96, 128)", "INPUT.MAX_SIZE_TRAIN", "128"]
# No warm-up, so that the first steps move the weights by a measurable amount.
STEP = ["SOLVER.WARMUP_ITERS", "0", "SOLVER.BASE_LR", "0.01"]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    before = os.environ.get("DETECTRON2_DATASETS")
    os.environ["DETECTRON2_DATASETS"] = str(root)
    yield root
    if before is None:
        del os.environ["DETECTRON2_DATASETS"]
    else:
        os.environ["DETECTRON2_DATASETS"] = before


class _Record(HookBase):
    """Registered on the step (``trainer._trainer``): the gradients of the last step, the
    micro-batches' image shapes and the backbone's input shapes."""

    def __init__(self) -> None:
        self.grads, self.micro_batches, self.backbone_inputs = {}, [], []

    def after_backward(self) -> None:
        self.grads = {
            n: p.grad.clone()
            for n, p in self.trainer.model.named_parameters()
            if p.grad is not None
        }


def _trainer(out: Path, *opts: str) -> BiTTrainer:
    cfg = get_bit_cfg(
        "quick_schedules/retinanet_bit_instant_test.yaml",
        [
            "OUTPUT_DIR",
            str(out),
            "SEED",
            "3",
            "DATASETS.TEST",
            "()",
            "SOLVER.CHECKPOINT_PERIOD",
            "2",
            *STEP,
            *opts,
        ],
    )
    prepare_datasets(cfg, cfg.DATASETS.TRAIN)
    torch.manual_seed(0)  # the same initial weights in every run
    return BiTTrainer(cfg)


def _train(out: Path, *opts: str) -> tuple:
    trainer = _trainer(out, *opts)
    record = _Record()
    trainer._trainer.register_hooks([record])
    trainer.model.register_forward_pre_hook(
        lambda m, args: record.micro_batches.append([tuple(x["image"].shape) for x in args[0]])
    )
    trainer.model.backbone.register_forward_pre_hook(
        lambda m, args: record.backbone_inputs.append(args[0].shape)
    )
    trainer.resume_or_load(resume=False)
    trainer.train()
    return trainer, record


def test_four_micro_batches_equal_one_batch_of_eight(tmp_path, datasets):
    opts = ["SOLVER.IMS_PER_BATCH", "8", "SOLVER.MAX_ITER", "2", *MULTI_SCALE]
    whole, whole_rec = _train(tmp_path / "whole", *opts)
    micro, micro_rec = _train(tmp_path / "micro", *opts, "SOLVER.BATCH_SPLIT", "4")

    assert isinstance(micro._trainer, AutocastTrainer) and micro._trainer.precision is None
    assert [len(b) for b in micro_rec.micro_batches] == [2] * 8 and [
        len(b) for b in whole_rec.micro_batches
    ] == [8] * 2

    # Some micro-batches' own largest image is smaller than the step's, yet every one reaches
    # the backbone padded as the whole batch of 8.
    def largest(batch):
        return max(shape[1] for shape in batch), max(shape[2] for shape in batch)

    first_step = micro_rec.micro_batches[:4]
    assert any(largest(batch) != largest(whole_rec.micro_batches[0]) for batch in first_step), (
        first_step
    )
    assert micro_rec.backbone_inputs[:4] == [torch.Size([2, *whole_rec.backbone_inputs[0][1:]])] * 4

    for name, grad in whole_rec.grads.items():  # the second step's gradients
        torch.testing.assert_close(micro_rec.grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    after, expected = micro.model.state_dict(), whole.model.state_dict()
    for name, value in expected.items():
        torch.testing.assert_close(after[name], value, rtol=0, atol=1e-6, msg=name)
    # The normalizer moved once per step, by the whole batch's positive anchors.
    assert micro.model.loss_normalizer == pytest.approx(whole.model.loss_normalizer, rel=1e-12)
    assert whole.model.loss_normalizer != pytest.approx(100.0)
    # One set of scalars per iteration, equal to the whole batch's.
    micro_hist, whole_hist = micro.storage.histories(), whole.storage.histories()
    for name in ("total_loss", "loss_cls", "loss_box_reg", "num_pos_anchors"):
        assert [i for _, i in micro_hist[name].values()] == [0, 1], name
        assert [v for v, _ in micro_hist[name].values()] == pytest.approx(
            [v for v, _ in whole_hist[name].values()], rel=1e-5
        ), name


@pytest.mark.slow
def test_two_processes_of_two_micro_batches_equal_one_process(tmp_path, datasets):
    """train_net: 2 gloo processes x 2 micro-batches of 2 against 1 process with the batch of 8."""
    extra = ["SOLVER.IMS_PER_BATCH", "8", "SOLVER.MAX_ITER", "2", *STEP]
    finals = {}
    for processes, split in ((1, 1), (2, 2)):
        out = tmp_path / f"p{processes}"
        cmd = runs.command(
            out, extra=[*extra, "SOLVER.BATCH_SPLIT", str(split)], num_gpus=processes
        )
        done = subprocess.run(
            cmd,
            cwd=runs.REPO,
            env=runs.environment(datasets),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        finals[processes] = runs.load(out / "model_final.pth")
    one, two = finals[1], finals[2]
    for name, value in one["model"].items():
        torch.testing.assert_close(two["model"][name], value, rtol=0, atol=1e-6, msg=name)
    normalizers = two["trainer"]["hooks"]["LossNormalizerState"]["per_rank"]
    assert (
        normalizers
        == [pytest.approx(one["trainer"]["hooks"]["LossNormalizerState"]["per_rank"][0])] * 2
    )


class _Interrupt(HookBase):
    """Ends the run with an error after iteration ``at``, as a lost machine would."""

    def __init__(self, at: int) -> None:
        self.at = at

    def after_step(self) -> None:
        if self.trainer.iter == self.at:
            raise KeyboardInterrupt(f"interrupted after iteration {self.at}")


def test_resume_with_micro_batches_is_bit_identical(tmp_path, datasets):
    opts = [
        "SOLVER.IMS_PER_BATCH",
        "4",
        "SOLVER.BATCH_SPLIT",
        "2",
        "SOLVER.MAX_ITER",
        "4",
        *MULTI_SCALE,
    ]
    reference = _trainer(tmp_path / "reference", *opts)
    reference.resume_or_load(resume=False)
    reference.train()

    interrupted = _trainer(tmp_path / "run", *opts)
    interrupted.register_hooks(
        [_Interrupt(at=2)]
    )  # after model_0000001.pth, before model_0000003.pth
    interrupted.resume_or_load(resume=False)
    with pytest.raises(KeyboardInterrupt):
        interrupted.train()
    assert not (tmp_path / "run" / "model_0000003.pth").exists()

    resumed = _trainer(tmp_path / "run", *opts)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2
    resumed.train()
    for name in ("model_0000003.pth", "model_final.pth"):
        _assert_same_state(
            runs.load(tmp_path / "run" / name), runs.load(tmp_path / "reference" / name), name
        )


def test_micro_batches_train_in_bf16_autocast(tmp_path, datasets):
    trainer = _trainer(
        tmp_path,
        "SOLVER.IMS_PER_BATCH",
        "4",
        "SOLVER.BATCH_SPLIT",
        "2",
        "SOLVER.MAX_ITER",
        "2",
        "SOLVER.AMP.ENABLED",
        "True",
        "SOLVER.AMP.PRECISION",
        "bf16",
    )
    assert trainer._trainer.precision == torch.bfloat16 and trainer._trainer.batch_split == 2
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.resume_or_load(resume=False)
    trainer.train()
    after = trainer.model.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    assert any(not torch.equal(before[k], after[k]) for k in after), (
        "two bf16 steps changed no weight"
    )
    assert [i for _, i in trainer.storage.histories()["total_loss"].values()] == [0, 1]


def test_batch_split_must_divide_the_batch_and_name_its_keys():
    assert micro_batch_size(16, 2, 4) == 2
    with pytest.raises(
        ValueError,
        match=r"^SOLVER.IMS_PER_BATCH=12 is not divisible by 2 process\(es\) x "
        r"SOLVER.BATCH_SPLIT=4$",
    ):
        micro_batch_size(12, 2, 4)
    with pytest.raises(
        ValueError, match=r"^SOLVER.BATCH_SPLIT must be a positive integer for detection, got 0"
    ):
        micro_batch_size(8, 1, 0)
    assert split_micro_batches(list(range(6)), 3) == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(ValueError, match="does not split into SOLVER.BATCH_SPLIT=4"):
        split_micro_batches(list(range(6)), 4)


def test_batch_split_is_refused_where_micro_batches_are_not_exact():
    check_accumulation("RetinaNet", 4)
    check_accumulation("GeneralizedRCNN", 1)
    with pytest.raises(
        ValueError,
        match=r"^SOLVER.BATCH_SPLIT=2 needs MODEL.META_ARCHITECTURE 'RetinaNet' \(got "
        r"'GeneralizedRCNN'.*set SOLVER.BATCH_SPLIT 1$",
    ):
        check_accumulation("GeneralizedRCNN", 2)


def test_indivisible_batch_stops_before_the_model_is_built(tmp_path, datasets):
    with pytest.raises(
        ValueError,
        match=r"SOLVER.IMS_PER_BATCH=6 is not divisible by 1 process\(es\) x "
        r"SOLVER.BATCH_SPLIT=4",
    ):
        _trainer(tmp_path, "SOLVER.IMS_PER_BATCH", "6", "SOLVER.BATCH_SPLIT", "4")
