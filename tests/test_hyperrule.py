"""The BiT-HyperRule table, boundaries included, written out by hand from the paper (section 3.3)
and the authors' code (bit_hyperrule.py)."""

import ast
import pathlib

import pytest

import bitdet.hyperrule as hr
from bitdet.hyperrule import Rule, get_rule
from tests.tools.tool_run import ROOT, run_python


@pytest.mark.parametrize(
    "size, steps, supports, mixup",
    [
        (1, 500, (100, 200, 300, 400), 0.0),
        (19_999, 500, (100, 200, 300, 400), 0.0),
        (20_000, 10_000, (500, 3000, 6000, 9000), 0.1),
        (499_999, 10_000, (500, 3000, 6000, 9000), 0.1),
        (500_000, 20_000, (500, 6000, 12_000, 18_000), 0.1),
        (14_200_000, 20_000, (500, 6000, 12_000, 18_000), 0.1),
    ],
)
def test_schedule_table(size, steps, supports, mixup):
    rule = get_rule(size, 32)
    assert rule.steps == steps
    assert (rule.warmup_steps, *rule.decay_steps) == supports
    assert rule.mixup_alpha == mixup
    assert (rule.base_lr, rule.batch_size) == (0.003, 512)


@pytest.mark.parametrize(
    "image_size, resolution, expected",
    [
        (32, "paper", (160, 128)),
        ((95, 97), "paper", (160, 128)),  # 9215 < 9216
        ((96, 96), "paper", (448, 384)),  # exactly 96x96 is not "below"
        ((96, 96), "public", (512, 480)),
        (500, "public", (512, 480)),
        ((8, 8), "public", (160, 128)),
    ],
)
def test_resolution(image_size, resolution, expected):
    rule = get_rule(1000, image_size, resolution=resolution)
    assert (rule.resize, rule.crop) == expected


def test_lr_schedule_boundaries():
    rule = get_rule(1000, 32)  # supports 100, 200, 300, 400, 500
    assert rule.lr_at(0) == 0.0
    assert rule.lr_at(50) == pytest.approx(0.0015)
    assert rule.lr_at(99) == pytest.approx(0.003 * 99 / 100)
    assert rule.lr_at(100) == pytest.approx(0.003)
    assert rule.lr_at(200) == pytest.approx(0.003)  # a decay applies once the step is PAST it
    assert rule.lr_at(201) == pytest.approx(0.0003)
    assert rule.lr_at(301) == pytest.approx(0.00003)
    assert rule.lr_at(401) == pytest.approx(0.000003)
    assert rule.lr_at(499) == pytest.approx(0.000003)


def test_lr_beyond_schedule_raises():
    rule = get_rule(1000, 32)
    with pytest.raises(ValueError, match="outside the schedule"):
        rule.lr_at(500)
    with pytest.raises(ValueError):
        rule.lr_at(-1)


def test_lr_is_monotone_after_warmup_and_never_none():
    rule = get_rule(100_000, 300)
    lrs = [rule.lr_at(s) for s in range(rule.steps)]
    assert all(isinstance(v, float) for v in lrs)
    peak = lrs.index(max(lrs))
    assert peak == rule.warmup_steps
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1 :]))


def test_with_steps_keeps_relative_positions():
    rule = get_rule(1000, 32).with_steps(50)
    assert (rule.steps, rule.warmup_steps, rule.decay_steps) == (50, 10, (20, 30, 40))
    assert rule.lr_at(49) == pytest.approx(0.003 * 1e-3)


def test_rule_validation_names_the_problem():
    with pytest.raises(ValueError, match="crop <= resize"):
        Rule(resize=100, crop=128, steps=10, warmup_steps=1, decay_steps=(), mixup_alpha=0)
    with pytest.raises(ValueError, match="decay_steps"):
        Rule(resize=160, crop=128, steps=10, warmup_steps=1, decay_steps=(5, 3), mixup_alpha=0)
    with pytest.raises(ValueError, match="dataset_size"):
        get_rule(0, 32)
    with pytest.raises(ValueError, match="resolution"):
        get_rule(10, 32, resolution="huge")


def test_rule_is_frozen_and_serialisable():
    rule = get_rule(1000, 32)
    with pytest.raises(Exception):
        rule.steps = 1
    assert Rule(**{**rule.to_dict()}) == rule


def test_hyperrule_imports_no_framework():
    tree = ast.parse(pathlib.Path(hr.__file__).read_text())
    imported = {
        a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    imported |= {
        n.module if n.module.startswith("bitdet.") else n.module.split(".")[0]
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and n.module
    }
    # bitdet.errors: the user-error classes, themselves free of imports
    assert imported <= {"__future__", "dataclasses", "typing", "bitdet.errors"}
    code = "import sys, bitdet.hyperrule; print(sorted(sys.modules))"
    loaded = run_python("-c", code, cwd=ROOT).stdout
    assert not {"torch", "numpy", "detectron2", "fvcore"} & set(ast.literal_eval(loaded))
