"""Checkpoint errors: each names the file and what to fix."""
from __future__ import annotations

from typing import Optional

_EXAMPLES = 5


class CheckpointError(ValueError):
    """A checkpoint file cannot be used (unreadable, unsafe, or not for this model)."""


class WeightsNotFoundError(CheckpointError, FileNotFoundError):
    """No weights file, official name or hub id matches what was asked for."""


def _listing(keys) -> str:
    more = f", ... ({len(keys) - _EXAMPLES} more)" if len(keys) > _EXAMPLES else ""
    return ", ".join(keys[:_EXAMPLES]) + more


class CheckpointMismatchError(CheckpointError):
    """A checkpoint's tensors do not match the model: missing, unexpected or misshapen keys.

    The message names the detected format, the file's and the model's architecture when they
    differ (with the setting to change), and up to five example keys on each side.
    """

    def __init__(self, path, missing=(), unexpected=(), shape_mismatches=(), format: str = "",
                 advice: Optional[str] = None, trunk_total: Optional[int] = None):
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.shape_mismatches = list(shape_mismatches)
        self.advice = advice
        what = f" ({format})" if format else ""
        lines = [f"weights {path}{what} do not fit the model" + (f": {advice}" if advice else ":")]
        if self.missing:
            total = f"; the model's trunk has {trunk_total} tensors" if trunk_total else ""
            lines.append(f"  missing keys ({len(self.missing)} not in the file{total}): {_listing(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected keys ({len(self.unexpected)} in the file, not in the model): "
                         f"{_listing(self.unexpected)}")
        for key, expected, found in self.shape_mismatches[:_EXAMPLES]:
            lines.append(f"  shape of {key}: expected {tuple(expected)}, found {tuple(found)}")
        if len(self.shape_mismatches) > _EXAMPLES:
            lines.append(f"  ... and {len(self.shape_mismatches) - _EXAMPLES} more shape mismatches")
        super().__init__("\n".join(lines))
