"""Read pickled weight files (Detectron2 / Caffe2 model-zoo ``.pkl``) without running code.

Those files are dicts of numpy arrays. Unpickling may only rebuild numpy arrays, dtypes and
plain containers; anything else (a function, a class, ``os.system``) is refused with an error
naming the object. ``BITDET_ALLOW_UNSAFE_PICKLE=1`` opts out for a file you trust.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

from bitdet.utils.io import PathLike
from bitdet.weights.errors import CheckpointError

__all__ = ["safe_pickle_load", "unsafe_pickle_allowed"]

_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # how protocol-2 pickles spell bytes
}


def unsafe_pickle_allowed() -> bool:
    """Whether the user opted in to full unpickling (``BITDET_ALLOW_UNSAFE_PICKLE=1``)."""
    return os.environ.get("BITDET_ALLOW_UNSAFE_PICKLE", "") == "1"


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file, path: str) -> None:
        super().__init__(file, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise CheckpointError(
            f"refusing to load {self.path}: it asks to import {module}.{name}, and a weights file "
            "needs only numpy arrays (unpickling other objects can run code). If you trust the "
            "file, set BITDET_ALLOW_UNSAFE_PICKLE=1."
        )


def safe_pickle_load(path: PathLike) -> Any:
    """Unpickle ``path`` allowing only numpy arrays and plain containers.

    Raises:
        CheckpointError: the file asks for any other object, or is not a readable pickle.
    """
    with open(path, "rb") as f:
        try:
            return _NumpyOnlyUnpickler(f, str(path)).load()
        except CheckpointError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
            raise CheckpointError(f"{path} is not a readable pickle of arrays: {e}") from e
