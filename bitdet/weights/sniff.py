"""What kind of file a weights path holds, decided from its first bytes (never its name).

Containers bitdet reads: an ``.npz`` (a zip of ``.npy`` members), a PyTorch checkpoint (a zip
with ``data.pkl``, or the legacy pickle stream that starts with torch's magic number), a
``safetensors`` file (a little-endian header length, then a JSON header) and a plain pickle
(Detectron2 / Caffe2 ``.pkl``). Anything else is called what it is: empty, text, HTML, gzip,
HDF5, a zip of something else, or unknown bytes.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

from bitdet.utils.io import PathLike
from bitdet.weights.errors import CheckpointError

__all__ = ["CONTAINERS", "sniff_container"]

# Container names returned by sniff_container, with the words used in messages.
CONTAINERS = {
    "npz": "a NumPy .npz archive",
    "torch": "a PyTorch checkpoint (zip)",
    "torch-legacy": "a PyTorch checkpoint (legacy pickle stream)",
    "safetensors": "a safetensors file",
    "pickle": "a pickle",
}

# torch.save's legacy format starts with the pickled magic number 0x1950a86a20f9469cfc6c.
_TORCH_LEGACY_MAGIC = b"\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_OTHER_MAGIC = (
    (b"\x1f\x8b", "a gzip-compressed file (unpack it first)"),
    (
        b"\x89HDF\r\n\x1a\n",
        "an HDF5 file (a Keras / TensorFlow .h5 model, not a BiT weights file bitdet reads)",
    ),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"BZh", "a bzip2-compressed file (unpack it first)"),
    (b"\xfd7zXZ", "an xz-compressed file (unpack it first)"),
    (b"version https://git-lfs", "a Git LFS pointer (run `git lfs pull` to fetch the real file)"),
)


def _zip_kind(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile as e:
        raise CheckpointError(
            f"{path} is a truncated or corrupt zip archive (an interrupted download?): {e}"
        ) from e
    if names and all(n.endswith(".npy") for n in names):
        return "npz"
    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        return "torch"
    shown = ", ".join(names[:5]) or "no members"
    raise CheckpointError(
        f"{path} is not a weights file: it is a zip archive of other files ({shown})"
    )


def _is_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return 2 <= length <= size - 8 and head[8:9] == b"{"


def _describe_other(head: bytes) -> str:
    for magic, what in _OTHER_MAGIC:
        if head.startswith(magic):
            return what
    text = head.decode("utf-8", errors="ignore")  # a read may end inside a multi-byte character
    printable = sum(c.isprintable() or c in "\r\n\t" for c in text)
    if len(text) < 0.9 * len(head) or printable < 0.95 * len(text):
        return f"of an unknown kind (first bytes {head[:8].hex(' ')})"
    stripped = text.lstrip().lower()
    if stripped.startswith(("<!doctype html", "<html", "<?xml")):
        return "an HTML / XML page (a login or error page saved instead of the weights?)"
    if stripped.startswith(("{", "[")):
        return "a JSON / text file"
    first = text.strip().splitlines()[0][:40] if text.strip() else ""
    return f"a text file (it starts {first!r})"


def sniff_container(path: PathLike) -> str:
    """The container kind of ``path``: one of :data:`CONTAINERS`.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file is none of them; the message says what it is instead.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head:
        raise CheckpointError(f"{path} is not a weights file: it is empty (0 bytes)")
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return _zip_kind(path)
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "torch-legacy" if head[2:14] == _TORCH_LEGACY_MAGIC else "pickle"
    if _is_safetensors(head, size):
        try:
            (length,) = struct.unpack("<Q", head[:8])
            with open(path, "rb") as f:
                f.seek(8)
                json.loads(f.read(length))
        except (ValueError, UnicodeDecodeError) as e:
            raise CheckpointError(
                f"{path} looks like a safetensors file but its header is corrupt: {e}"
            ) from e
        return "safetensors"
    raise CheckpointError(f"{path} is not a weights file: it is {_describe_other(head)}")
