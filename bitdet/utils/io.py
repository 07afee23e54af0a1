"""File helpers: the cache folder, and atomic writes (a temporary file in the target folder,
fsync, then rename).

A crash or a full disk mid-write leaves the previous file at ``path`` untouched. The file is
created with mode 0666 minus the process umask, as ``open()`` would (0644 under umask 022),
so that teammates and containers on shared storage can read checkpoints and results.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import secrets
import time
from pathlib import Path
from typing import IO, Any, Iterator, Union

PathLike = Union[str, os.PathLike]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file next to ``path``; on success it replaces ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temporary(path)
    try:
        with open(tmp, mode) as f:  # opened by name so that f.name is the temporary path
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _create_temporary(path: Path) -> str:
    """Create ``.<name>.<random>.tmp`` beside ``path`` exclusively, mode 0666 & ~umask.

    ``tempfile.mkstemp`` would create it 0600 whatever the umask; ``os.open`` lets the kernel
    apply the umask like ``open()`` does.
    """
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a unique temporary file beside {path}")


def remove_stale_temporaries(folder: PathLike, older_than_s: float = 3600.0) -> int:
    """Delete temporaries that :func:`atomic_write` left behind when its process was killed.

    Only files named like its temporaries (``.<name>.<random>.tmp``) that have not been
    written to for ``older_than_s`` seconds are removed, so a write in progress is never
    touched.

    Returns:
        How many files were removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    now = time.time()
    for path in folder.glob(".*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            if now - path.stat().st_mtime > older_than_s:
                path.unlink()
                removed += 1
    if removed:
        logger.info(
            "removed %d stale temporary file(s) of interrupted checkpoint writes in %s",
            removed,
            folder,
        )
    return removed


def _plain(value: Any) -> Any:
    """``value`` as plain JSON types: NumPy / torch values as lists or numbers, paths as strings,
    NaN and inf as None (JSON has no such numbers; ``null`` marks the value undefined)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # NumPy scalars and arrays, torch tensors
        return _plain(value.tolist())
    return value


def write_json(path: PathLike, payload: Any) -> None:
    """Write ``payload`` as indented JSON, atomically (NumPy / torch values converted; NaN and
    inf written as ``null``, never as the invalid JSON tokens ``NaN`` / ``Infinity``)."""
    try:
        text = json.dumps(_plain(payload), indent=2, allow_nan=False)
    except TypeError as e:
        raise TypeError(f"{path}: {e}") from None
    with atomic_write(path, "w") as f:
        f.write(text + "\n")


def default_cache_dir() -> Path:
    """``$BITDET_CACHE``, else ``$XDG_CACHE_HOME/bitdet``, else ``~/.cache/bitdet``."""
    if os.environ.get("BITDET_CACHE"):
        return Path(os.environ["BITDET_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bitdet"
