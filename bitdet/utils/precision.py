"""One vocabulary for numeric precision in every config: ``"fp32"``, ``"bf16"``, ``"fp16"``."""

from __future__ import annotations

from typing import Sequence

import torch

from bitdet.errors import ConfigError

__all__ = ["PRECISIONS", "precision_dtype"]

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_TORCH_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def precision_dtype(name: str, key: str, allowed: Sequence[str] = tuple(PRECISIONS)) -> torch.dtype:
    """The dtype a precision name stands for.

    Args:
        name: the config's value.
        key: the config key it came from, for the error.
        allowed: the names this key accepts.

    Raises:
        ValueError: naming the key, the accepted names, and the spelling to use for torch's
            dtype names (``"bfloat16"`` is written ``"bf16"``).
    """
    if name in allowed:
        return PRECISIONS[name]
    hint = (
        f" ({name!r} is written {_TORCH_NAMES[name]!r})"
        if _TORCH_NAMES.get(name) in allowed
        else ""
    )
    raise ConfigError(f"{key} {name!r}: expected one of {list(allowed)}{hint}")
