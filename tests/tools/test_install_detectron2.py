"""tools/install_detectron2.py: the registry wheel is repacked as pure Python, correctly."""

import base64
import hashlib
import importlib.util
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location(
    "install_detectron2", ROOT / "tools/install_detectron2.py"
)
install = importlib.util.module_from_spec(spec)
spec.loader.exec_module(install)


def _fake_registry_wheel(path: Path) -> None:
    info = "sal_detectron2-0.7.2.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("detectron2/__init__.py", "__version__ = '0.7.2'\n")
        z.writestr("detectron2/_C.cpython-310-x86_64-linux-gnu.so", b"\x7fELF")
        z.writestr("tools/train_net.py", "print('stray')\n")
        z.writestr(
            f"{info}/WHEEL",
            "Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: cp310-cp310-linux_x86_64\n",
        )
        z.writestr(
            f"{info}/METADATA",
            "Name: sal-detectron2\nRequires-Dist: numpy<2\nRequires-Dist: yacs\n",
        )
        z.writestr(f"{info}/top_level.txt", "detectron2\ntools\n")
        z.writestr(f"{info}/RECORD", "stale\n")


def test_repack_drops_compiled_and_stray_files_and_marks_pure(tmp_path):
    _fake_registry_wheel(tmp_path / "in.whl")
    out = install.repack_pure(tmp_path / "in.whl", tmp_path)
    assert out.name == "sal_detectron2-0.7.2-py3-none-any.whl"
    with zipfile.ZipFile(out) as z:
        names = set(z.namelist())
        info = "sal_detectron2-0.7.2.dist-info"
        assert "detectron2/__init__.py" in names
        assert not any(n.endswith(".so") or n.startswith("tools/") for n in names)
        wheel = z.read(f"{info}/WHEEL").decode()
        assert "Root-Is-Purelib: true" in wheel and "Tag: py3-none-any" in wheel
        assert "Requires-Dist: numpy\n" in z.read(f"{info}/METADATA").decode()
        assert z.read(f"{info}/top_level.txt") == b"detectron2\n"
        # every file but RECORD itself is listed with its true hash and size
        record = dict(line.split(",", 1) for line in z.read(f"{info}/RECORD").decode().splitlines())
        assert set(record) == names
        for name in names - {f"{info}/RECORD"}:
            data = z.read(name)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert record[name] == f"sha256={digest},{len(data)}", name


def test_the_installed_detectron2_imports_and_nms_runs():
    assert install.check_import() is not None
    install.check_torchvision()  # raises SystemExit on a torch/torchvision mismatch
