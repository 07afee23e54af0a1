"""setup.py's version floors are honest: the package uses no torch API newer than its floor."""

import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

# torch APIs that bitdet may use, with the first torch release that has them (torch's release
# notes).
TORCH_API_SINCE = {
    r"torch\.get_autocast_dtype\(": (2, 4),
    r"torch\.is_autocast_enabled\(\s*\w": (2, 4),  # with a device-type argument
    r"torch\.compiler\.is_compiling\(": (2, 3),
    r"torch\.amp\.GradScaler\(": (2, 3),
    r"torch\.amp\.autocast\(": (2, 0),
    r"torch\.export\.": (2, 1),
    r"torch\.compile\(": (2, 0),
}


def _floor(requirement: str) -> tuple:
    setup = (ROOT / "setup.py").read_text()
    match = re.search(rf'"{requirement}>=(\d+)\.(\d+)', setup)
    assert match, f"setup.py names no floor for {requirement}"
    return int(match[1]), int(match[2])


def test_torch_floor_covers_every_api_used():
    floor = _floor("torch")
    sources = {p: p.read_text() for p in (ROOT / "bitdet").rglob("*.py")}
    too_new = [
        f"{p.relative_to(ROOT)}: {pattern} needs torch {since[0]}.{since[1]}"
        for pattern, since in TORCH_API_SINCE.items()
        if since > floor
        for p, text in sources.items()
        if re.search(pattern, text)
    ]
    assert not too_new, f"setup.py says torch>={floor[0]}.{floor[1]}, but: {too_new}"


def test_installed_torch_meets_the_floor():
    installed = tuple(int(x) for x in re.match(r"(\d+)\.(\d+)", torch.__version__).groups())
    assert installed >= _floor("torch")
