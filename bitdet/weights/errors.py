"""Checkpoint errors: each names the file and what to fix."""

from __future__ import annotations

from typing import Optional

from bitdet.errors import UserError

_EXAMPLES = 5


class CheckpointError(UserError, ValueError):
    """A checkpoint file cannot be used (unreadable, unsafe, or not for this model)."""


class WeightsNotFoundError(CheckpointError, FileNotFoundError):
    """No weights file, official name or hub id matches what was asked for."""


def _listing(keys) -> str:
    more = f", ... ({len(keys) - _EXAMPLES} more)" if len(keys) > _EXAMPLES else ""
    return ", ".join(keys[:_EXAMPLES]) + more


class CheckpointMismatchError(CheckpointError):
    """A checkpoint's tensors do not match the model: missing, unexpected or misshapen keys.

    The message is one line: the file, its detected format, the file's and the model's
    architecture when they differ (with the setting to change), how many keys differ and the
    first of them. ``details`` lists up to five example keys of each kind; it is attached as
    a note, so that tracebacks (the tools' log file) show it and the console line stays short.
    """

    def __init__(
        self,
        path,
        missing=(),
        unexpected=(),
        shape_mismatches=(),
        format: str = "",
        advice: Optional[str] = None,
        trunk_total: Optional[int] = None,
    ):
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.shape_mismatches = list(shape_mismatches)
        self.advice = advice
        what = f" ({format})" if format else ""
        kinds = [
            (len(self.shape_mismatches), "misshapen"),
            (len(self.missing), "missing"),
            (len(self.unexpected), "unexpected"),
        ]
        counts = ", ".join(f"{n} {kind}" for n, kind in kinds if n)
        total = sum(n for n, _ in kinds)
        if self.shape_mismatches:
            key, expected, found = self.shape_mismatches[0]
            first = f"{key}: expected {tuple(expected)}, found {tuple(found)}"
        elif self.missing:
            first = f"{self.missing[0]} not in the file"
        elif self.unexpected:
            first = f"{self.unexpected[0]} not in the model"
        else:
            first = "none"
        super().__init__(
            f"weights {path}{what} do not fit the model"
            + (f": {advice}" if advice else "")
            + f"; {total} keys differ ({counts}), first: {first}"
        )
        self.details = self._details(trunk_total)
        if hasattr(self, "add_note"):  # Python 3.11+: tracebacks show it, str() does not
            self.add_note(self.details)

    def _details(self, trunk_total: Optional[int]) -> str:
        lines = []
        if self.missing:
            total = f"; the model's trunk has {trunk_total} tensors" if trunk_total else ""
            lines.append(
                f"  missing keys ({len(self.missing)} not in the file{total}): "
                f"{_listing(self.missing)}"
            )
        if self.unexpected:
            lines.append(
                f"  unexpected keys ({len(self.unexpected)} in the file, not in the model): "
                f"{_listing(self.unexpected)}"
            )
        for key, expected, found in self.shape_mismatches[:_EXAMPLES]:
            lines.append(f"  shape of {key}: expected {tuple(expected)}, found {tuple(found)}")
        if len(self.shape_mismatches) > _EXAMPLES:
            lines.append(
                f"  ... and {len(self.shape_mismatches) - _EXAMPLES} more shape mismatches"
            )
        return "\n".join(lines)
