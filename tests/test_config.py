"""_BASE_ resolution: relative to the file, then by name under the shipped configs."""
from __future__ import annotations

import re
import shutil

import pytest
from detectron2.modeling import build_model

from bitdet.config import CONFIGS_DIR
from bitdet.detection import get_bit_cfg
from bitdet.transfer.config import get_finetune_cfg

INSTANT = CONFIGS_DIR / "quick_schedules" / "retinanet_bit_instant_test.yaml"


def test_copied_and_edited_config_runs_from_another_directory(tmp_path, monkeypatch):
    mine = tmp_path / "elsewhere" / "my.yaml"
    mine.parent.mkdir()
    shutil.copy(INSTANT, mine)  # its _BASE_ is "../Base-RetinaNet-BiT.yaml": absent beside the copy
    mine.write_text(mine.read_text().replace("MAX_ITER: 4", "MAX_ITER: 7"))
    monkeypatch.chdir(tmp_path)
    cfg = get_bit_cfg("elsewhere/my.yaml")
    assert cfg.SOLVER.MAX_ITER == 7  # the edit
    assert cfg.MODEL.META_ARCHITECTURE == "RetinaNet" and cfg.MODEL.PIXEL_STD == [127.5] * 3  # the base
    assert cfg.MODEL.BIT.VARIANT == "R14-tiny" and cfg.MODEL.BACKBONE.FREEZE_AT == 0
    model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("base", ["Base-RetinaNet-BiT.yaml", "configs/Base-RetinaNet-BiT.yaml", "../Base-RetinaNet-BiT.yaml"])
def test_base_by_bare_name_or_configs_relative(tmp_path, base):
    path = tmp_path / "leaf.yaml"
    path.write_text(f'_BASE_: "{base}"\nSOLVER:\n  MAX_ITER: 3\n')
    cfg = get_bit_cfg(str(path))
    assert cfg.SOLVER.MAX_ITER == 3 and cfg.SOLVER.BASE_LR == 0.01


def test_local_base_wins_over_a_shipped_one(tmp_path):
    (tmp_path / "Base-RetinaNet-BiT.yaml").write_text(
        (CONFIGS_DIR / "Base-RetinaNet-BiT.yaml").read_text().replace("BASE_LR: 0.01", "BASE_LR: 0.02"))
    (tmp_path / "leaf.yaml").write_text('_BASE_: "Base-RetinaNet-BiT.yaml"\n')
    assert get_bit_cfg(str(tmp_path / "leaf.yaml")).SOLVER.BASE_LR == 0.02


def test_nested_chain_of_a_copied_finetune_config(tmp_path):
    shutil.copy(CONFIGS_DIR / "finetune" / "quick_schedules" / "finetune_fewshot_instant_test.yaml", tmp_path)
    shutil.copy(CONFIGS_DIR / "finetune" / "quick_schedules" / "finetune_instant_test.yaml", tmp_path)
    local = get_finetune_cfg(str(tmp_path / "finetune_fewshot_instant_test.yaml"))
    shipped = get_finetune_cfg("finetune/quick_schedules/finetune_fewshot_instant_test.yaml")
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
    """One output root: ``configs/<path>.yaml`` writes to ``output/<path>`` (Base-* files set none)."""
    wrong = {}
    for path in sorted(CONFIGS_DIR.rglob("*.yaml")):
        match = re.search(r'^OUTPUT_DIR: "([^"]*)"', path.read_text(), re.M)
        expected = None if path.name.startswith("Base-") else f"output/{path.relative_to(CONFIGS_DIR).with_suffix('')}"
        if (match and match.group(1)) != expected:
            wrong[str(path.relative_to(CONFIGS_DIR))] = match and match.group(1)
    assert not wrong, f"OUTPUT_DIR not output/<config path>: {wrong}"
