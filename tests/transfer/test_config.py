"""Fine-tuning config: every key commented, every shipped YAML loads, HyperRule overrides."""

import ast
import pathlib

import pytest

import bitdet.transfer.config as config_module
from bitdet.config import CONFIGS_DIR, shipped_configs
from bitdet.engine.config import engine_precision
from bitdet.hyperrule import get_rule
from bitdet.transfer.config import get_finetune_cfg, rule_from_config, tri_state


def test_every_key_has_a_comment_above_it():
    lines = pathlib.Path(config_module.__file__).read_text().splitlines()
    source = "\n".join(lines)
    fn = next(
        n
        for n in ast.walk(ast.parse(source))
        if isinstance(n, ast.FunctionDef) and n.name == "add_finetune_config"
    )
    for node in fn.body:
        if isinstance(node, ast.Assign) and "CN()" not in ast.unparse(node.value):
            above = lines[node.lineno - 2].strip()
            assert above.startswith("#"), (
                f"line {node.lineno} ({ast.unparse(node.targets[0])}) has no comment above"
            )


@pytest.mark.parametrize(
    "path",
    [CONFIGS_DIR / name for name in shipped_configs("finetune")],
    ids=lambda p: str(p.relative_to(CONFIGS_DIR)),
)
def test_shipped_configs_load(path):
    cfg = get_finetune_cfg(str(path))
    assert cfg.DATASETS.TRAIN.NAME and cfg.MODEL.BIT.VARIANT


def test_bad_keys_name_the_source():
    with pytest.raises(ValueError, match="override"):
        get_finetune_cfg("", ["HYPERRULE.STEP", 10])


def _cfg(*opts):
    return get_finetune_cfg("", list(opts))


def test_rule_defaults_to_the_hyperrule():
    assert rule_from_config(_cfg(), 50_000, (32, 32)) == get_rule(50_000, (32, 32))
    assert rule_from_config(_cfg("HYPERRULE.RESOLUTION", "public"), 100, (300, 300)).crop == 480


def test_overrides_apply_only_when_set():
    rule = rule_from_config(
        _cfg("HYPERRULE.STEPS", 50, "SOLVER.IMS_PER_BATCH", 32, "HYPERRULE.CROP", 32), 1000, (8, 8)
    )
    # STEPS alone stretches the warm-up and decays; CROP alone keeps the rule's resize ratio.
    assert (rule.steps, rule.warmup_steps, rule.decay_steps) == (50, 10, (20, 30, 40))
    assert (rule.resize, rule.crop, rule.batch_size, rule.base_lr) == (40, 32, 32, 0.003)
    explicit = rule_from_config(
        _cfg("HYPERRULE.STEPS", 50, "HYPERRULE.WARMUP_STEPS", 5, "HYPERRULE.DECAY_STEPS", [30]),
        1000,
        (8, 8),
    )
    assert (explicit.warmup_steps, explicit.decay_steps) == (5, (30,))


def test_mixup_override_distinguishes_rule_and_off():
    assert rule_from_config(_cfg(), 30_000, (32, 32)).mixup_alpha == 0.1
    assert rule_from_config(_cfg("HYPERRULE.MIXUP_ALPHA", 0.0), 30_000, (32, 32)).mixup_alpha == 0.0
    assert rule_from_config(_cfg("HYPERRULE.MIXUP_ALPHA", 0.2), 100, (32, 32)).mixup_alpha == 0.2


def test_invalid_override_is_reported():
    with pytest.raises(ValueError, match="HYPERRULE / SOLVER.IMS_PER_BATCH overrides"):
        rule_from_config(_cfg("HYPERRULE.RESIZE", 100, "HYPERRULE.CROP", 128), 100, (32, 32))


def test_tri_state():
    assert (
        tri_state("", True, "K") is True
        and tri_state("off", True, "K") is False
        and tri_state("on", False, "K")
    )
    with pytest.raises(ValueError, match="INPUT.RANDOM_FLIP"):
        tri_state("maybe", True, "INPUT.RANDOM_FLIP")


def test_hyperrule_configs_train_in_fp32_unless_they_opt_in():
    """The authors' fine-tuning code trains in float32; only an explicit SOLVER.AMP.ENABLED opts
    in to bf16."""
    finetune_configs = [CONFIGS_DIR / name for name in shipped_configs("finetune")]
    assert finetune_configs
    for path in finetune_configs:
        cfg = get_finetune_cfg(str(path))
        assert engine_precision(cfg) == "fp32", path.name
    cfg = get_finetune_cfg("finetune/cifar10.yaml", ["SOLVER.AMP.ENABLED", True])
    assert engine_precision(cfg) == "bf16"
    with pytest.raises(
        ValueError, match="SOLVER.AMP.PRECISION 'fp16': pretraining and fine-tuning"
    ):
        get_finetune_cfg("finetune/cifar10.yaml", ["SOLVER.AMP.PRECISION", "fp16"])
