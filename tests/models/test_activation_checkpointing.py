"""Activation checkpointing of the BiT trunk: same losses and gradients, fewer kept activations.

On CPU the recomputed forward runs the same kernels on the same inputs, so results are
bit-identical to the plain run (fp32 and bf16 autocast alike): the tests assert equality.
"""

import copy
import socket

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

import bitdet.models.resnetv2 as resnetv2
from bitdet import create_model
from bitdet.detection import get_bit_cfg
from bitdet.detection.determinism import repeatable_execution
from bitdet.pretrain.config import get_pretrain_cfg
from bitdet.transfer.config import get_finetune_cfg

MODES = ("stage", "unit")


def _classifier_step(model, x, y, precision="fp32"):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def _saved_bytes(step):
    """Bytes autograd keeps for backward outside checkpointed regions while ``step`` runs
    forward."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return total[0]


def _assert_same(result, reference):
    loss, grads = result
    ref_loss, ref_grads = reference
    assert torch.equal(loss, ref_loss)
    assert grads.keys() == ref_grads.keys() and grads
    for name in ref_grads:
        assert torch.equal(grads[name], ref_grads[name]), name


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    model = create_model("R14-tiny", num_classes=5, zero_head=False)
    return model, torch.randn(2, 3, 64, 64), torch.tensor([1, 3])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_classifier_losses_and_gradients_are_identical(classifier, mode, channels_last, precision):
    base, x, y = classifier
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = x.contiguous(memory_format=memory_format)
    reference = _classifier_step(
        copy.deepcopy(base).to(memory_format=memory_format), x, y, precision
    )
    model = copy.deepcopy(base).to(memory_format=memory_format).set_grad_checkpointing(mode)
    assert model.grad_checkpointing == mode
    _assert_same(_classifier_step(model, x, y, precision), reference)


def test_checkpointing_keeps_fewer_activations_unit_more_than_stage(classifier):
    base, x, y = classifier
    kept = {}
    for mode in ("none", "stage", "unit"):
        model = copy.deepcopy(base).set_grad_checkpointing(mode)
        kept[mode] = _saved_bytes(lambda: F.cross_entropy(model(x), y))
    # Outside checkpointed regions only the stem, the final norm and the head keep tensors.
    assert kept["stage"] < kept["none"] / 3
    assert kept["stage"] <= kept["unit"] < kept["none"]


def test_features_only_model_follows_the_trunk_mode(classifier):
    base, x, _ = classifier
    trunk = create_model("R14-tiny", num_classes=5, features_only=True)
    trunk.load_state_dict({k: v for k, v in base.state_dict().items() if k in trunk.state_dict()})
    reference = copy.deepcopy(trunk)
    trunk.set_grad_checkpointing("unit")
    outs, ref_outs = trunk(x), reference(x)
    sum(o.sum() for o in outs).backward()
    sum(o.sum() for o in ref_outs).backward()
    for (name, p), q in zip(trunk.named_parameters(), reference.parameters()):
        assert torch.equal(p.grad, q.grad), name


def test_timm_switch_and_unknown_modes():
    model = create_model("R14-tiny", num_classes=0)
    assert model.set_grad_checkpointing().grad_checkpointing == "unit"  # timm's True: every unit
    assert model.set_grad_checkpointing(False).grad_checkpointing == "none"
    with pytest.raises(ValueError, match="'off': expected one of 'none', 'stage', 'unit'"):
        model.set_grad_checkpointing("off")


@pytest.mark.parametrize("get_cfg", [get_pretrain_cfg, get_finetune_cfg, get_bit_cfg])
def test_config_key_is_validated_in_every_trainer(get_cfg):
    assert get_cfg(None).MODEL.ACTIVATION_CHECKPOINTING == "none"
    assert (
        get_cfg(None, ["MODEL.ACTIVATION_CHECKPOINTING", "stage"]).MODEL.ACTIVATION_CHECKPOINTING
        == "stage"
    )
    with pytest.raises(
        ValueError,
        match=r"^MODEL.ACTIVATION_CHECKPOINTING 'all': expected one of 'none', 'stage', 'unit'$",
    ):
        get_cfg(None, ["MODEL.ACTIVATION_CHECKPOINTING", "all"])


def test_pretraining_builder_applies_the_key():
    from bitdet.pretrain.runner import build_model as build_pretrain_model

    cfg = get_pretrain_cfg(
        None,
        [
            "MODEL.BIT.VARIANT",
            "R14-tiny",
            "MODEL.NUM_CLASSES",
            "3",
            "MODEL.ACTIVATION_CHECKPOINTING",
            "stage",
        ],
    )
    assert build_pretrain_model(cfg).grad_checkpointing == "stage"


def _sample(generator, num_boxes=2, size=64):
    image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator).float()
    inst = Instances((size, size))
    xy = torch.rand(num_boxes, 2, generator=generator) * size / 2
    inst.gt_boxes = Boxes(
        torch.cat([xy, xy + 12 + torch.rand(num_boxes, 2, generator=generator) * size / 3], 1)
    )
    inst.gt_classes = torch.randint(0, 10, (num_boxes,), generator=generator)
    return {"image": image, "instances": inst, "height": size, "width": size}


def _detector(mode, freeze_at=0, tap="preact"):
    cfg = get_bit_cfg(
        "quick_schedules/retinanet_bit_instant_test.yaml",
        [
            "MODEL.ACTIVATION_CHECKPOINTING",
            mode,
            "MODEL.BACKBONE.FREEZE_AT",
            freeze_at,
            "MODEL.BIT.FEATURE_TAP",
            tap,
            "MODEL.FPN.OUT_CHANNELS",
            32,
        ],
    )
    torch.manual_seed(0)
    return build_model(cfg)


def _detector_step(model, precision="fp32"):
    generator = torch.Generator().manual_seed(1)
    batch = [_sample(generator), _sample(generator, 1)]
    # Detectron2's TorchScript losses switch to an optimized graph after their first calls,
    # whose gradients differ in the last bit: run them unoptimized, as training does.
    with EventStorage(), repeatable_execution():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = sum(model(batch).values())
        loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "mode,freeze_at,tap,precision",
    [
        ("stage", 0, "preact", "fp32"),
        ("unit", 0, "preact", "fp32"),
        ("stage", 2, "preact", "fp32"),
        ("unit", 3, "preact", "fp32"),
        ("unit", 0, "raw", "fp32"),
        ("stage", 0, "preact", "bf16"),
        ("unit", 2, "preact", "bf16"),
    ],
)
def test_detector_losses_and_gradients_are_identical(mode, freeze_at, tap, precision):
    reference = _detector_step(_detector("none", freeze_at, tap), precision)
    model = _detector(mode, freeze_at, tap)
    assert model.backbone.bottom_up.grad_checkpointing == mode
    result = _detector_step(model, precision)
    if precision == "bf16":
        # PyTorch's bf16 CPU weight gradient of RetinaNet's P7 conv (3x3, stride 2, on a 1x1
        # map here) leaves the entries that only meet padding unrepeatable, with or without
        # checkpointing; the trunk, which checkpointing recomputes, is compared bit for bit.
        result, reference = (
            (loss, {n: g for n, g in grads.items() if n.startswith("backbone.bottom_up.")})
            for loss, grads in (result, reference)
        )
    _assert_same(result, reference)
    frozen = {
        f"backbone.bottom_up.{n}"
        for n, p in model.backbone.bottom_up.named_parameters()
        if not p.requires_grad
    }
    assert not frozen & result[1].keys() and bool(frozen) == (freeze_at > 0)


@pytest.mark.parametrize(
    "mode,freeze_at,expected",
    [
        ("stage", 0, ["block1", "block2", "block3", "block4"]),
        ("stage", 2, ["block2", "block3", "block4"]),
        ("unit", 3, ["block3.unit01", "block4.unit01"]),
        ("unit", 5, []),
    ],
)
def test_frozen_stages_are_not_checkpointed(monkeypatch, mode, freeze_at, expected):
    model = _detector(mode, freeze_at)
    names = {m: n for n, m in model.backbone.bottom_up.named_modules()}
    checkpointed = []
    real = resnetv2.checkpoint

    def spy(function, *args, **kwargs):
        assert kwargs["use_reentrant"] is False
        module = function if isinstance(function, torch.nn.Module) else args[0]
        checkpointed.append(names[module])
        return real(function, *args, **kwargs)

    monkeypatch.setattr(resnetv2, "checkpoint", spy)
    _detector_step(model)
    assert checkpointed == expected
    checkpointed.clear()
    with torch.no_grad():  # evaluation: nothing to recompute
        model.eval()([{"image": torch.zeros(3, 64, 64), "height": 64, "width": 64}])
    assert checkpointed == []


def test_ddp_single_process_gradients_are_identical(classifier):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    base, x, y = classifier
    reference = _classifier_step(copy.deepcopy(base), x, y)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        model = copy.deepcopy(base).set_grad_checkpointing("unit")
        ddp = DistributedDataParallel(model)
        loss = F.cross_entropy(ddp(x), y)
        loss.backward()
        _assert_same((loss.detach(), {n: p.grad for n, p in model.named_parameters()}), reference)
    finally:
        dist.destroy_process_group()


def test_checkpointed_model_compiles_into_one_graph(classifier):
    """Dynamo traces the checkpointed units and AOTAutograd partitions their recomputation
    (``aot_eager``: the whole compile stack but Inductor's C++ code generation, which takes
    minutes on CPU)."""
    base, x, y = classifier
    reference = _classifier_step(copy.deepcopy(base), x, y)
    model = copy.deepcopy(base).set_grad_checkpointing("unit")
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    loss = F.cross_entropy(compiled(x), y)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    torch.testing.assert_close(loss, reference[0], rtol=1e-6, atol=1e-6)
    for name, g in reference[1].items():
        torch.testing.assert_close(grads[name], g, rtol=1e-6, atol=1e-6, msg=name)


def test_finetuning_applies_the_key(tmp_path, monkeypatch):
    import bitdet.engine
    from bitdet.transfer.finetune import finetune

    seen = []

    class Stop(Exception):
        pass

    def trainer(model, *args, **kwargs):
        seen.append(model.grad_checkpointing)
        raise Stop

    monkeypatch.setattr(bitdet.engine, "ClassifierTrainer", trainer)
    cfg = get_finetune_cfg(
        "finetune/demo_digits.yaml",
        ["MODEL.ACTIVATION_CHECKPOINTING", "unit", "OUTPUT_DIR", str(tmp_path)],
    )
    with pytest.raises(Stop):
        finetune(cfg)
    assert seen == ["unit"]
