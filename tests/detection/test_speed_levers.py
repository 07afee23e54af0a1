"""Speed levers of the detection trainer: each config key switches its lever, results unchanged."""

import torch

from bitdet.detection import BiTTrainer, get_bit_cfg
from bitdet.models.fast import is_compiled, std_convs


def _cfg(*opts):
    return get_bit_cfg("quick_schedules/retinanet_bit_instant_test.yaml", list(opts))


def _channels_last(model):
    # A 3x3 kernel: channels-last and contiguous strides differ.
    w = next(c.weight for c in std_convs(model) if c.kernel_size == (3, 3))
    return w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()


def test_defaults_are_cached_ws_only():
    cfg = _cfg()  # channels-last and compile are opt-in on every device
    assert (cfg.SOLVER.CHANNELS_LAST, cfg.MODEL.BIT.CACHE_WS, cfg.SOLVER.COMPILE) == (
        False,
        True,
        False,
    )
    model = BiTTrainer.build_model(cfg)
    assert not _channels_last(model) and all(c.cache_weight for c in std_convs(model))
    assert not is_compiled(model.backbone)


def test_each_lever_switches_off_and_outputs_match():
    torch.manual_seed(0)
    fast = BiTTrainer.build_model(_cfg("SOLVER.COMPILE", True, "SOLVER.CHANNELS_LAST", True))
    assert _channels_last(fast)
    plain = BiTTrainer.build_model(_cfg("SOLVER.CHANNELS_LAST", False, "MODEL.BIT.CACHE_WS", False))
    assert is_compiled(fast.backbone) and is_compiled(fast.head)  # compiled lazily, on first call
    assert not _channels_last(plain) and not any(c.cache_weight for c in std_convs(plain))
    plain.load_state_dict(fast.state_dict())  # module names and keys are unchanged by the levers
    image = {
        "image": torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8),
        "height": 64,
        "width": 96,
    }
    fast_eager = BiTTrainer.build_model(_cfg("SOLVER.CHANNELS_LAST", True))
    fast_eager.load_state_dict(fast.state_dict())
    fast_eager.eval(), plain.eval()
    with torch.no_grad():
        a = fast_eager.backbone(fast_eager.preprocess_image([image]).tensor)
        b = plain.backbone(plain.preprocess_image([image]).tensor)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-4)
