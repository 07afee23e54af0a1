#!/usr/bin/env python
"""Make ``detectron2`` importable in the current Python environment.

Detectron2 has no release on PyPI. This script:

1. keeps a detectron2 that already imports (for example your own source build, which also
   has the compiled ops), and says where it is;
2. otherwise installs the registry package ``sal-detectron2`` (a republish of detectron2's
   Python code): it downloads the wheel by name, removes its compiled ``_C`` extension
   (built for another Python, torch and CUDA) and its stray top-level ``tools`` package,
   re-tags it as a pure-Python wheel, lifts its dated ``numpy<2`` pin, and installs that.
   Detectron2 imports ``_C`` lazily, so model building, RetinaNet, FPN, the engine and
   pycocotools evaluation work without it; deformable conv, rotated boxes and the fast COCO
   evaluator need a source build;
3. checks the result: detectron2's modeling imports and ``torchvision.ops.nms`` runs.

Usage::

    python tools/install_detectron2.py [--constraint tools/constraints.txt] [--wheel-dir .whl]

Exit status 0 on success; otherwise an error says what failed and what to do.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "sal-detectron2"
VERSION = "0.7.2"
# Detectron2 needs these at run time but its republished metadata does not list them;
# its model zoo imports pkg_resources, which setuptools 81 removed.
EXTRA_REQUIREMENTS = ["fvcore>=0.1.5", "iopath>=0.1.7", "setuptools<81"]


def log(message: str) -> None:
    print(f"[install_detectron2] {message}", flush=True)


def check_import() -> str | None:
    """Return detectron2's location if it and its modeling code import in a fresh process."""
    code = (
        "import detectron2, detectron2.modeling, detectron2.engine, fvcore, pkg_resources;"
        "print(detectron2.__file__)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else None


def check_torchvision() -> None:
    """``torchvision.ops.nms`` must run: a torch / torchvision mismatch breaks detection."""
    code = (
        "import torch, torchvision;"
        "b = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.]]);"
        "assert torchvision.ops.nms(b, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0];"
        "print(torch.__version__, torchvision.__version__)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(
            "[install_detectron2] torchvision.ops.nms does not run: torch and torchvision do not "
            "match. Reinstall them together (pip install torch==2.14.1 torchvision==0.29.1).\n"
            + result.stderr[-2000:]
        )
    log(f"torch / torchvision {result.stdout.strip()}: nms runs")


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    log("$ " + " ".join(cmd))
    if subprocess.run(cmd).returncode != 0:
        raise SystemExit(f"[install_detectron2] pip failed: {' '.join(args)}")


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def repack_pure(wheel: Path, out_dir: Path) -> Path:
    """Rewrite ``wheel`` as ``py3-none-any`` without compiled files or the top-level ``tools``."""
    out = out_dir / f"{PACKAGE.replace('-', '_')}-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        record_name = next(n for n in src.namelist() if n.endswith(".dist-info/RECORD"))
        records = []
        for name in src.namelist():
            if name == record_name or name.startswith("tools/") or name.endswith((".so", ".pyd")):
                continue
            data = src.read(name)
            if name.endswith(".dist-info/WHEEL"):
                lines = [
                    "Root-Is-Purelib: true"
                    if line.startswith("Root-Is-Purelib")
                    else "Tag: py3-none-any"
                    if line.startswith("Tag:")
                    else line
                    for line in data.decode().splitlines()
                ]
                data = ("\n".join(lines) + "\n").encode()
            if name.endswith(".dist-info/top_level.txt"):
                data = b"detectron2\n"
            if name.endswith(".dist-info/METADATA"):
                # Its "numpy<2" pin predates numpy 2 support; detectron2's Python code runs
                # with numpy 2 (and current opencv requires it).
                data = data.replace(b"Requires-Dist: numpy<2\n", b"Requires-Dist: numpy\n")
            dst.writestr(name, data)
            records.append(_record_line(name, data))
        records.append(f"{record_name},,")
        dst.writestr(record_name, "\n".join(records) + "\n")
    return out


def install_from_registry(wheel_dir: Path, constraint: str | None, force: bool = False) -> None:
    wheel_dir.mkdir(parents=True, exist_ok=True)
    pure = wheel_dir / f"{PACKAGE.replace('-', '_')}-{VERSION}-py3-none-any.whl"
    if not pure.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            pip(
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--python-version",
                "3.10",
                f"{PACKAGE}=={VERSION}",
                "-d",
                tmp,
            )
            wheels = list(Path(tmp).glob("*.whl"))
            if not wheels:
                raise SystemExit(
                    f"[install_detectron2] pip downloaded no wheel of {PACKAGE}=={VERSION}"
                )
            repack_pure(wheels[0], wheel_dir)
        log(f"repacked {PACKAGE} {VERSION} as a pure-Python wheel: {pure}")
    extra = ["-c", constraint] if constraint else []
    pip("install", "--quiet", *extra, str(pure), *EXTRA_REQUIREMENTS)
    if force:  # same version number: pip keeps the installed copy unless told otherwise
        pip("install", "--quiet", "--force-reinstall", "--no-deps", str(pure))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--constraint", help="pip constraints file (keeps torch/torchvision pinned)"
    )
    parser.add_argument("--wheel-dir", default=".whl", help="where the repacked wheel is kept")
    parser.add_argument("--force", action="store_true", help="reinstall even if detectron2 imports")
    args = parser.parse_args(argv)

    check_torchvision()
    location = None if args.force else check_import()
    if location:
        log(f"keeping the detectron2 that imports from {location}")
    else:
        log(f"detectron2 not importable; installing {PACKAGE}=={VERSION} as pure Python")
        install_from_registry(Path(args.wheel_dir), args.constraint, force=args.force)
        location = check_import()
        if not location:
            raise SystemExit(
                "[install_detectron2] detectron2 still does not import after installation. "
                "Build it from source instead (pip install "
                "'git+https://github.com/facebookresearch/detectron2.git' "
                "where a network is available) and run this script again."
            )
        log(f"installed detectron2 at {location}")
    check_torchvision()  # nothing above may have replaced torch or torchvision
    has_c = subprocess.run(
        [
            sys.executable,
            "-c",
            "import importlib.util as u; print(u.find_spec('detectron2._C') is not None)",
        ],
        capture_output=True,
        text=True,
    ).stdout.strip()
    log(
        "compiled ops (detectron2._C): "
        + ("present" if has_c == "True" else "absent (pure-Python build)")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
