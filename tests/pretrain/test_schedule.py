"""Schedule math as tables: epochs -> steps, warm-up, decays."""

import pytest

from bitdet.pretrain import StepSchedule, epochs_to_steps, scaled_lr


@pytest.mark.parametrize(
    "epochs, size, batch, steps",
    [
        (90, 1_281_167, 4096, 28_151),  # BiT-S: ILSVRC-2012
        (30, 1_281_167, 4096, 9_384),  # its first decay
        (90, 14_197_122, 4096, 311_949),  # BiT-M: ImageNet-21k
        (40, 300_000_000, 4096, 2_929_688),  # BiT-L style: JFT-300M
        (1, 10, 4, 3),  # partial last batch rounds up
        (0.5, 60_000, 128, 235),  # the CPU demo
    ],
)
def test_epochs_to_steps(epochs, size, batch, steps):
    assert epochs_to_steps(epochs, size, batch) == steps


def test_linear_scaling_rule():
    assert scaled_lr(0.03, 4096) == pytest.approx(0.48)
    assert scaled_lr(0.03, 256) == pytest.approx(0.03)


@pytest.mark.parametrize(
    "step, lr",
    [
        (0, 0.1),
        (1, 0.2),
        (4, 0.5),  # linear warm-up over 10 steps, no zero-lr step
        (9, 1.0),
        (10, 1.0),
        (19, 1.0),  # peak
        (20, 0.1),
        (29, 0.1),  # a decay applies from its boundary step on
        (30, 0.01),
        (39, 0.01),
        (40, 0.001),
        (1000, 0.001),
    ],
)
def test_warmup_then_step_decays(step, lr):
    schedule = StepSchedule(
        base_lr=1.0, warmup_steps=10, boundaries=(20, 30, 40), factor=0.1, total_steps=50
    )
    assert schedule(step) == pytest.approx(lr)


def test_bit_s_recipe_from_epochs():
    s = StepSchedule.from_epochs(0.48, 5000, 90, (30, 60, 80), 1_281_167, 4096)
    assert s.boundaries == (9_384, 18_768, 25_023) and s.total_steps == 28_151
    assert s(4999) == pytest.approx(0.48) and s(9_383) == pytest.approx(0.48)
    assert s(9_384) == pytest.approx(0.048) and s(28_150) == pytest.approx(0.00048)


def test_bit_l_recipe_has_four_decays():
    s = StepSchedule.from_epochs(0.48, 5000, 40, (10, 23, 30, 37), 300_000_000, 4096)
    assert len(s.boundaries) == 4 and s(s.total_steps - 1) == pytest.approx(0.48e-4)


def test_warmup_longer_than_a_decay_takes_the_smaller_lr():
    s = StepSchedule(1.0, warmup_steps=100, boundaries=(10,), factor=0.1)
    assert s(5) == pytest.approx(0.06) and s(50) == pytest.approx(0.1)


def test_bad_schedules_are_rejected():
    with pytest.raises(ValueError, match="increase"):
        StepSchedule(1.0, 0, (30, 10))
    with pytest.raises(ValueError, match="outside"):
        StepSchedule.from_epochs(1.0, 0, 10, (5, 12), 100, 10)
