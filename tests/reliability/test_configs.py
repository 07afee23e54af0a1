"""Config errors name the key and the file: unknown keys, wrong types, missing files, bad YAML."""

from __future__ import annotations

import pytest

from bitdet.detection import get_bit_cfg

CASES = {
    "unknown_key": (
        "SOLVER:\n  NOT_A_KEY: 1\n",
        ValueError,
        r"config {path}: .*Non-existent config key: SOLVER.NOT_A_KEY",
    ),
    "wrong_type": (
        'SOLVER:\n  MAX_ITER: "abc"\n',
        ValueError,
        r"config {path}: Type mismatch .* for config key: SOLVER.MAX_ITER",
    ),
    "missing_base": (
        '_BASE_: "no_such_base.yaml"\n',
        FileNotFoundError,
        r"config {path}: its _BASE_ chain names a missing file: .*no_such_base.yaml",
    ),
    "bad_yaml": ("SOLVER: [\n", ValueError, r"config {path}: not valid YAML"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_config_file_names_key_and_file(tmp_path, case):
    text, error, pattern = CASES[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    with pytest.raises(error, match=pattern.format(path=path)):
        get_bit_cfg(str(path))


def test_missing_config_file_is_named():
    with pytest.raises(FileNotFoundError, match="config 'absent.yaml' not found"):
        get_bit_cfg("absent.yaml")


@pytest.mark.parametrize(
    "opts, pattern",
    [
        (["MODEL.BIT.NOT_A_KEY", "1"], "Non-existent (config )?key: MODEL.BIT.NOT_A_KEY"),
        (["SOLVER.MAX_ITER", "abc"], "Type mismatch .* for config key: SOLVER.MAX_ITER"),
        (["SOLVER.MAX_ITER"], "odd length"),
    ],
)
def test_bad_overrides_name_the_key(opts, pattern):
    with pytest.raises(ValueError, match=pattern):
        get_bit_cfg("quick_schedules/retinanet_bit_instant_test.yaml", opts)
