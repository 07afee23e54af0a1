"""Detection config checks done when the config is loaded: one-line errors naming the key."""

from __future__ import annotations

import pytest

from bitdet.detection import get_bit_cfg
from bitdet.errors import ConfigError


@pytest.mark.parametrize("max_iter", ["0", "-1"])
def test_a_training_length_below_one_iteration_is_refused_naming_the_key(max_iter):
    with pytest.raises(ConfigError, match=rf"^SOLVER.MAX_ITER {max_iter}: expected at least 1"):
        get_bit_cfg(
            "quick_schedules/retinanet_bit_instant_test.yaml", ["SOLVER.MAX_ITER", max_iter]
        )
    cfg = get_bit_cfg("quick_schedules/retinanet_bit_instant_test.yaml", ["SOLVER.MAX_ITER", "1"])
    assert cfg.SOLVER.MAX_ITER == 1
