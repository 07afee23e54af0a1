"""Config loading: the lookup (a path, a path under configs/, a unique file name), _BASE_
resolution (relative to the file, then under the shipped configs), the closest key or config
named on a typo, the instant configs' fixed seeds, every shipped config loading."""

from __future__ import annotations

import re
import shutil

import pytest
from detectron2.modeling import build_model

from bitdet.benchmark import get_benchmark_cfg
from bitdet.config import CONFIG_KINDS, CONFIGS_DIR, resolve_config_file, shipped_configs
from bitdet.detection import get_bit_cfg
from bitdet.detection.lazy import load_lazy_config
from bitdet.errors import ConfigError
from bitdet.pretrain import get_pretrain_cfg
from bitdet.transfer.config import get_finetune_cfg

LOADERS = {
    "detection": get_bit_cfg,
    "pretrain": get_pretrain_cfg,
    "finetune": get_finetune_cfg,
    "benchmark": get_benchmark_cfg,
}

INSTANT = CONFIGS_DIR / "quick_schedules" / "retinanet_bit_instant_test.yaml"


def test_copied_and_edited_config_runs_from_another_directory(tmp_path, monkeypatch):
    mine = tmp_path / "elsewhere" / "my.yaml"
    mine.parent.mkdir()
    shutil.copy(INSTANT, mine)  # its _BASE_ is "../Base-RetinaNet-BiT.yaml": absent beside the copy
    mine.write_text(mine.read_text().replace("MAX_ITER: 4", "MAX_ITER: 7"))
    monkeypatch.chdir(tmp_path)
    cfg = get_bit_cfg("elsewhere/my.yaml")
    assert cfg.SOLVER.MAX_ITER == 7  # the edit
    assert (
        cfg.MODEL.META_ARCHITECTURE == "RetinaNet" and cfg.MODEL.PIXEL_STD == [127.5] * 3
    )  # the base
    assert cfg.MODEL.BIT.VARIANT == "R14-tiny" and cfg.MODEL.BACKBONE.FREEZE_AT == 0
    model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize(
    "base",
    ["Base-RetinaNet-BiT.yaml", "configs/Base-RetinaNet-BiT.yaml", "../Base-RetinaNet-BiT.yaml"],
)
def test_base_by_bare_name_or_configs_relative(tmp_path, base):
    path = tmp_path / "leaf.yaml"
    path.write_text(f'_BASE_: "{base}"\nSOLVER:\n  MAX_ITER: 3\n')
    cfg = get_bit_cfg(str(path))
    assert cfg.SOLVER.MAX_ITER == 3 and cfg.SOLVER.BASE_LR == 0.01


def test_local_base_wins_over_a_shipped_one(tmp_path):
    (tmp_path / "Base-RetinaNet-BiT.yaml").write_text(
        (CONFIGS_DIR / "Base-RetinaNet-BiT.yaml")
        .read_text()
        .replace("BASE_LR: 0.01", "BASE_LR: 0.02")
    )
    (tmp_path / "leaf.yaml").write_text('_BASE_: "Base-RetinaNet-BiT.yaml"\n')
    assert get_bit_cfg(str(tmp_path / "leaf.yaml")).SOLVER.BASE_LR == 0.02


def test_nested_chain_of_a_copied_finetune_config(tmp_path):
    shutil.copy(CONFIGS_DIR / "quick_schedules" / "finetune_fewshot_instant_test.yaml", tmp_path)
    shutil.copy(CONFIGS_DIR / "quick_schedules" / "finetune_instant_test.yaml", tmp_path)
    local = get_finetune_cfg(str(tmp_path / "finetune_fewshot_instant_test.yaml"))
    shipped = get_finetune_cfg("quick_schedules/finetune_fewshot_instant_test.yaml")
    assert local.dump() == shipped.dump()


def test_base_cycle_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text('_BASE_: "b.yaml"\n')
    (tmp_path / "b.yaml").write_text('_BASE_: "a.yaml"\n')
    with pytest.raises(ValueError, match="_BASE_ chain loops back"):
        get_bit_cfg(str(tmp_path / "a.yaml"))


def test_unsafe_tag_in_a_base_is_refused(tmp_path):
    (tmp_path / "evil.yaml").write_text("SOLVER: !!python/object/apply:os.system ['true']\n")
    (tmp_path / "leaf.yaml").write_text('_BASE_: "evil.yaml"\n')
    with pytest.raises(ValueError, match="evil.yaml: refusing a YAML tag"):
        get_bit_cfg(str(tmp_path / "leaf.yaml"))


def test_every_shipped_config_writes_under_output_by_its_own_name():
    """One output root: ``configs/<path>.yaml`` writes to ``output/<path>`` (Base-* files set
    none)."""
    wrong = {}
    for path in sorted(CONFIGS_DIR.rglob("*.yaml")):
        match = re.search(r'^OUTPUT_DIR: "([^"]*)"', path.read_text(), re.M)
        expected = (
            None
            if path.name.startswith("Base-")
            else f"output/{path.relative_to(CONFIGS_DIR).with_suffix('')}"
        )
        if (match and match.group(1)) != expected:
            wrong[str(path.relative_to(CONFIGS_DIR))] = match and match.group(1)
    assert not wrong, f"OUTPUT_DIR not output/<config path>: {wrong}"


def test_an_unknown_override_key_names_the_closest_key():
    with pytest.raises(ValueError) as error:
        get_bit_cfg(str(INSTANT), ["MODEL.RETINANET.NUM_CLASSE", "3"])
    message = str(error.value)
    assert "\n" not in message and message.endswith(
        "Non-existent key: MODEL.RETINANET.NUM_CLASSE (did you mean MODEL.RETINANET.NUM_CLASSES?)"
    )
    with pytest.raises(ValueError, match=r"HYPERRULE\.STEP \(did you mean HYPERRULE\.STEPS\?\)"):
        get_finetune_cfg(None, ["HYPERRULE.STEP", "10"])
    with pytest.raises(ValueError) as error:  # nothing close: no guess
        get_bit_cfg(None, ["COMPLETELY.DIFFERENT", "1"])
    assert "did you mean" not in str(error.value)


def test_an_unknown_key_in_a_yaml_file_names_the_closest_key(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text(
        '_BASE_: "quick_schedules/pretrain_fashion_mnist_instant_test.yaml"\n'
        "SOLVER:\n  BASE_LR_PER256: 0.1\n"
    )
    with pytest.raises(ValueError) as error:
        get_pretrain_cfg(str(path))
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"config {path}: ")
    assert message.endswith("SOLVER.BASE_LR_PER256 (did you mean SOLVER.BASE_LR_PER_256?)")


def test_shipped_configs_are_split_by_kind():
    kinds = {kind: set(shipped_configs(kind)) for kind in CONFIG_KINDS}
    everything = set(shipped_configs())
    assert set.union(*kinds.values()) == everything and sum(map(len, kinds.values())) == len(
        everything
    )
    assert (
        "COCO-Detection/retinanet_bit_m.yaml" in kinds["detection"]
        and "demo/retinanet_bit_tiny_demo.yaml" in kinds["detection"]
    )
    for kind in ("pretrain", "finetune", "benchmark"):
        assert kinds[kind] and all(
            name.startswith((f"{kind}/", f"quick_schedules/{kind}_")) for name in kinds[kind]
        )
    assert "quick_schedules/pretrain_fashion_mnist_instant_test.yaml" in kinds["pretrain"]
    assert "quick_schedules/finetune_fewshot_instant_test.yaml" in kinds["finetune"]


@pytest.mark.parametrize(
    "kind, typo, closest",
    [
        (
            "detection",
            "retinanet_bit_s_R50x1_1.yaml",
            "COCO-Detection/retinanet_bit_s_R50x1_1x.yaml",
        ),
        ("pretrain", "bit_s_r50x1.yaml", "pretrain/bit_s_R50x1.yaml"),
        ("finetune", "cifar11.yaml", "finetune/cifar10.yaml"),
        ("benchmark", "h100x.yaml", "benchmark/h100.yaml"),
    ],
)
def test_a_missing_config_names_the_closest_of_its_kind(kind, typo, closest):
    with pytest.raises(FileNotFoundError) as error:
        resolve_config_file(typo, kind=kind)
    message = str(error.value)
    assert message.endswith(f"; did you mean {closest}?") and len(message) < 200


def test_a_bare_name_typo_is_compared_with_file_names_not_folders():
    with pytest.raises(FileNotFoundError) as error:
        resolve_config_file("retinanet_bit_mm.yaml", kind="detection")
    assert str(error.value).endswith("; did you mean COCO-Detection/retinanet_bit_m.yaml?")


@pytest.mark.parametrize(
    "path, kind, other",
    [
        ("finetune/cifar10.yaml", "detection", "finetune"),
        ("configs/COCO-Detection/retinanet_bit_m.yaml", "finetune", "detection"),
        ("quick_schedules/finetune_instant_test.yaml", "pretrain", "finetune"),
    ],
)
def test_a_shipped_config_of_another_kind_is_refused_naming_its_kind(path, kind, other):
    with pytest.raises(ConfigError) as error:
        resolve_config_file(path, kind=kind)
    message = str(error.value)
    assert f"is a {other} config, not a {kind} one" in message and "\n" not in message


def test_a_missing_bare_name_of_another_kind_names_that_config():
    with pytest.raises(FileNotFoundError) as error:
        resolve_config_file("cifar10.yaml", kind="detection")
    assert "finetune/cifar10.yaml is a finetune config, not a detection one" in str(error.value)


@pytest.mark.parametrize("kind", CONFIG_KINDS)
def test_a_missing_config_far_from_all_lists_only_its_kind(kind):
    with pytest.raises(FileNotFoundError) as error:
        resolve_config_file("zzz.yaml", kind=kind)
    listed = str(error.value).split(f"shipped {kind} configs: ")[1].split(", ")
    assert (
        listed == [n for n in shipped_configs(kind) if not n.split("/")[-1].startswith("Base-")]
        and listed
    )


INSTANT_CONFIGS = [
    (kind, name)
    for kind in CONFIG_KINDS
    for name in shipped_configs(kind)
    if name.startswith("quick_schedules/") and name.endswith(".yaml")
]


@pytest.mark.parametrize("kind, name", INSTANT_CONFIGS)
def test_instant_configs_have_a_fixed_seed(kind, name):
    assert LOADERS[kind](name).SEED >= 0


def test_every_config_file_name_is_unique():
    """A bare file name and a "did you mean" name one config."""
    seen = {}
    for path in sorted(CONFIGS_DIR.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            seen.setdefault(path.name, []).append(str(path.relative_to(CONFIGS_DIR)))
    assert {name: paths for name, paths in seen.items() if len(paths) > 1} == {}


def test_every_shipped_config_loads_through_its_tools_loader():
    loaded = 0
    for kind in CONFIG_KINDS:
        for name in shipped_configs(kind):
            if name.endswith(".py"):
                load_lazy_config(resolve_config_file(name), ["train.device=cpu"])
            else:
                LOADERS[kind](name)
            loaded += 1
    assert loaded == len(shipped_configs()) > 40


def test_a_config_is_a_path_under_configs_or_a_unique_file_name(tmp_path):
    assert resolve_config_file("COCO-Detection/retinanet_bit_m.yaml") == str(
        CONFIGS_DIR / "COCO-Detection" / "retinanet_bit_m.yaml"
    )
    assert resolve_config_file("retinanet_bit_m.yaml", kind="detection") == str(
        CONFIGS_DIR / "COCO-Detection" / "retinanet_bit_m.yaml"
    )
    # A bare name is looked for among the tool's kind only.
    with pytest.raises(FileNotFoundError, match="did you mean pretrain/"):
        resolve_config_file("retinanet_bit_m.yaml", kind="pretrain")
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "same.yaml").write_text("SEED: 1\n")
    with pytest.raises(ValueError) as error:
        resolve_config_file("same.yaml", configs_dir=tmp_path)
    message = str(error.value)
    assert "\n" not in message and "a/same.yaml and b/same.yaml" in message
    assert resolve_config_file("a/same.yaml", configs_dir=tmp_path) == str(tmp_path / "a/same.yaml")


# Keys of earlier versions, per trainer: (old key, a value, the new key the error names).
RENAMED = {
    "pretrain": [
        ("MODEL.NAME", "R14-tiny", "MODEL.BIT.VARIANT"),
        ("DATASETS.TRAIN.KIND", "imagefolder", "DATASETS.TRAIN.NAME"),
        ("DATASETS.TRAIN.PATH", "data/train", "DATASETS.TRAIN.ROOT"),
        ("DATASETS.TEST.KIND", "imagefolder", "DATASETS.TEST.NAME"),
        ("DATASETS.TEST.PATH", "data/val", "DATASETS.TEST.ROOT"),
        ("SOLVER.PRECISION", "bf16", "SOLVER.AMP.ENABLED"),
    ],
    "finetune": [
        ("MODEL.NAME", "BiT-M-R50x1", "MODEL.BIT.VARIANT"),
        ("DATASET.NAME", "digits", "DATASETS.TRAIN.NAME"),
        ("DATASET.ROOT", "data", "DATASETS.TRAIN.ROOT"),
        ("DATASET.TRAIN_SPLIT", "train", "DATASETS.TRAIN.SPLIT"),
        ("DATASET.TEST_SPLIT", "test", "DATASETS.TEST.SPLIT"),
        ("DATASET.DOWNLOAD", "True", "DATASETS.DOWNLOAD"),
        ("DATASET.RANDOM_CROP", "off", "INPUT.RANDOM_CROP"),
        ("DATASET.FLIP", "off", "INPUT.RANDOM_FLIP"),
        ("HYPERRULE.BATCH_SIZE", "32", "SOLVER.IMS_PER_BATCH"),
        ("TEST.BATCH_SIZE", "64", "TEST.IMS_PER_BATCH"),
        ("SOLVER.PRECISION", "fp32", "SOLVER.AMP.ENABLED"),
    ],
    "detection": [("MODEL.BIT.FREEZE_AT", "2", "MODEL.BACKBONE.FREEZE_AT")],
}
RENAMED_CASES = [(kind, *case) for kind, cases in RENAMED.items() for case in cases]


def _nested_yaml(key: str, value: str) -> str:
    *sections, name = key.split(".")
    lines = [f"{'  ' * depth}{section}:" for depth, section in enumerate(sections)]
    return "\n".join([*lines, f"{'  ' * len(sections)}{name}: {value!r}"]) + "\n"


@pytest.mark.parametrize("kind, old, value, new", RENAMED_CASES)
def test_an_old_key_in_a_file_is_one_line_naming_the_new_key(kind, old, value, new, tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text(_nested_yaml(old, value))
    with pytest.raises(ConfigError) as error:
        LOADERS[kind](str(path))
    message = str(error.value)
    assert message.startswith(f"config {path}: {old} was renamed to {new}")
    assert "\n" not in message


@pytest.mark.parametrize("kind, old, value, new", RENAMED_CASES)
def test_an_old_key_in_an_override_is_one_line_naming_the_new_key(kind, old, value, new):
    with pytest.raises(ConfigError) as error:
        LOADERS[kind](None, [old, value])
    message = str(error.value)
    assert message.startswith(f"config override {[old, value]}: {old} was renamed to {new}")
    assert "\n" not in message


def test_notes_of_renamed_keys_say_what_the_values_become():
    with pytest.raises(ConfigError, match="an official checkpoint such as BiT-M-R50x1 goes in "):
        get_finetune_cfg(None, ["MODEL.NAME", "BiT-M-R50x1"])
    with pytest.raises(ConfigError, match="'bf16' is SOLVER.AMP.ENABLED True with SOLVER.AMP"):
        get_pretrain_cfg(None, ["SOLVER.PRECISION", "bf16"])


@pytest.mark.parametrize("kind", ["detection", "pretrain", "finetune"])
@pytest.mark.parametrize("spelling", ["scratch", "official"])
def test_no_weights_is_the_empty_string_in_every_trainer(kind, spelling):
    assert LOADERS[kind](None, ["MODEL.WEIGHTS", ""]).MODEL.WEIGHTS == ""
    hint = {
        "scratch": "no weights (random initialisation) is ''",
        "official": "name the official checkpoint, e.g. BiT-M-R50x1",
    }[spelling]
    with pytest.raises(ConfigError, match=re.escape(f"MODEL.WEIGHTS '{spelling}': {hint}")):
        LOADERS[kind](None, ["MODEL.WEIGHTS", spelling])


@pytest.mark.parametrize("kind", ["detection", "pretrain", "finetune"])
def test_one_vocabulary_across_the_trainers(kind):
    cfg = LOADERS[kind](None)
    for key in ("MODEL.BIT.VARIANT", "MODEL.WEIGHTS", "MODEL.DEVICE", "OUTPUT_DIR", "SEED"):
        node = cfg
        for part in key.split("."):
            assert part in node, f"{kind}: no {key}"
            node = node[part]
    assert isinstance(cfg.SOLVER.IMS_PER_BATCH, int)
    assert set(cfg.SOLVER.AMP) == {"ENABLED", "PRECISION"}
    if kind != "detection":  # Detectron2's DATASETS.TRAIN is a tuple of registered names
        assert {"NAME", "ROOT", "SPLIT"} <= set(cfg.DATASETS.TRAIN) <= set(cfg.DATASETS.TEST)
        assert isinstance(cfg.TEST.IMS_PER_BATCH, int)


def test_finetuning_evaluates_on_its_training_dataset():
    cfg = get_finetune_cfg("finetune/demo_digits.yaml", ["DATASETS.TEST.NAME", "digits"])
    assert cfg.DATASETS.TEST.NAME == "digits"
    with pytest.raises(ConfigError, match="DATASETS.TEST.NAME 'mnist': fine-tuning evaluates on"):
        get_finetune_cfg("finetune/demo_digits.yaml", ["DATASETS.TEST.NAME", "mnist"])
