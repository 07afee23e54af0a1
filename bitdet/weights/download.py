"""Fetch an official checkpoint into a local cache: only files that pass the checks.

The file is streamed to a temporary name in the cache folder, checked, and only then
renamed into place, so an interrupted download never leaves a file that looks cached. The
checks: the byte count equals the server's ``Content-Length`` (when sent), the SHA-256
equals the expected one (when the caller has one: the official BiT files have none
recorded), and the caller's validator accepts the file (for official weights: every array
reads and the parameter names and shapes match the architecture).

Many processes asking for the same file (the ranks of a job) take a file lock beside it: the
first downloads while the others wait, then all find it cached. That is one download per
machine with a machine-local cache, and one per cluster when the cache is on shared storage.
``$BITDET_WEIGHTS_URL`` replaces the base address of the official checkpoints (a mirror, or
a ``file://`` folder on an air-gapped cluster); the file names stay the same.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional

from filelock import FileLock

from bitdet.utils.io import atomic_write
from bitdet.weights.errors import CheckpointError

__all__ = ["download", "mirrored"]

logger = logging.getLogger(__name__)
_CHUNK = 1 << 20


def mirrored(url: str) -> str:
    """``url``, or the same file name under ``$BITDET_WEIGHTS_URL`` when that is set."""
    base = os.environ.get("BITDET_WEIGHTS_URL", "").strip()
    return f"{base.rstrip('/')}/{url.rsplit('/', 1)[-1]}" if base else url


def download(
    url: str,
    dest: os.PathLike,
    sha256: Optional[str] = None,
    validate: Optional[Callable[[Path], object]] = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest`` unless ``dest`` already exists (one process at a time).

    Args:
        url: ``http(s)://`` or ``file://`` address.
        dest: final path; its folder is created.
        sha256: expected hex digest, checked before the file is moved into place.
        validate: called with the temporary path; raise to reject the file.
        progress: show a progress bar (tqdm) on stderr.
        timeout: socket timeout in seconds.

    Returns:
        ``dest``.

    Raises:
        CheckpointError: the download failed, was incomplete, or failed a check.
    """
    dest = Path(dest)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(
        dest.with_name(f".{dest.name}.lock")
    ):  # the lock file stays: removing it would race
        if dest.is_file():  # another process fetched it while this one waited
            logger.info("%s was downloaded by another process", dest)
            return dest
        _fetch(url, dest, sha256, validate, progress, timeout)
    return dest


def _fetch(
    url: str,
    dest: Path,
    sha256: Optional[str],
    validate: Optional[Callable[[Path], object]],
    progress: bool,
    timeout: float,
) -> None:
    logger.info("downloading %s -> %s", url, dest)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            digest = hashlib.sha256()
            received = 0
            with atomic_write(dest) as f, _progress(total, dest.name, progress) as bar:
                while chunk := response.read(_CHUNK):
                    f.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                if total is not None and received != total:
                    raise CheckpointError(
                        f"incomplete download of {url}: {received} of {total} bytes"
                    )
                if sha256 and digest.hexdigest() != sha256.lower():
                    raise CheckpointError(
                        f"checksum mismatch for {url}: expected sha256 {sha256}, "
                        f"got {digest.hexdigest()}"
                    )
                if validate is not None:
                    f.flush()
                    validate(Path(f.name))
    except (urllib.error.URLError, OSError) as e:
        raise CheckpointError(
            f"could not download {url}: {e}. Without network access, download the file "
            f"elsewhere and place it at {dest} (or pass its path as the weights, or set "
            "BITDET_WEIGHTS_URL to a mirror)."
        ) from e


def _progress(total: Optional[int], name: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc=name, disable=not enabled, leave=False)
