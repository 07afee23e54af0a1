"""The package works when installed: build the wheel from a clean copy of the checkout, install it
into a temporary target, and from another folder look up a config (with a ``_BASE_`` chain)
and make an instant training run with the installed console script.

Slow (its time: docs/testing.md): it builds a wheel and trains for one iteration.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _clean_copy(dst: Path) -> Path:
    """The tracked files of the checkout (a fresh clone's content), symlinks kept as symlinks."""
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True
    )
    for name in filter(None, listed.stdout.decode().split("\0")):
        src, out = ROOT / name, dst / name
        out.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            out.symlink_to(os.readlink(src))
        elif src.is_file():  # deleted but not yet committed files are skipped
            shutil.copy2(src, out)
    return dst


@pytest.mark.slow
def test_installed_wheel_finds_its_configs_and_runs_tools(tmp_path):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to copy its tracked files")
    source = _clean_copy(tmp_path / "src")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [
            *pip,
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            str(source),
            "-w",
            str(tmp_path / "dist"),
        ],
        check=True,
        capture_output=True,
        cwd=str(tmp_path),
    )
    (wheel,) = (tmp_path / "dist").glob("bitdet-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert (
        "bitdet/configs/Base-RetinaNet-BiT.yaml" in names and "bitdet/tools/train_net.py" in names
    )
    site = tmp_path / "site"
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(
        os.environ,
        PYTHONPATH=str(site),
        OMP_NUM_THREADS="1",
        DETECTRON2_DATASETS=str(tmp_path / "data"),
    )
    lookup = """
import bitdet, bitdet.config
from bitdet.detection import get_bit_cfg
assert bitdet.__file__.startswith({site!r}), bitdet.__file__
cfg = get_bit_cfg("retinanet_bit_m.yaml")  # a bare name, whose _BASE_ chain is package data too
print(bitdet.config.CONFIGS_DIR, cfg.MODEL.BIT.VARIANT,
      cfg.MODEL.BACKBONE.NAME, cfg.MODEL.PIXEL_STD)
""".format(site=str(site))
    out = subprocess.run(
        [sys.executable, "-c", lookup], capture_output=True, text=True, env=env, cwd=str(elsewhere)
    )
    assert out.returncode == 0, out.stderr[-3000:]
    configs_dir, variant, backbone, pixel_std = out.stdout.split(maxsplit=3)
    assert configs_dir.startswith(str(site)) and variant == "R101x3"
    assert (
        backbone == "build_retinanet_bit_fpn_backbone"
        and pixel_std.strip() == "[127.5, 127.5, 127.5]"
    )

    run = subprocess.run(
        [
            str(site / "bin" / "bitdet-train"),
            "--config",
            "quick_schedules/retinanet_bit_instant_test.yaml",
            "SOLVER.MAX_ITER",
            "1",
            "DATASETS.TEST",
            "()",
            "OUTPUT_DIR",
            str(elsewhere / "out"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(elsewhere),
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert (elsewhere / "out" / "model_final.pth").is_file()
    assert not (elsewhere / "configs").exists()  # nothing was looked up in the working folder
