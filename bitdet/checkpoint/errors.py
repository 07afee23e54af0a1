"""Checkpoint errors: each names the file and what to fix."""


class CheckpointError(ValueError):
    """A checkpoint file cannot be used (unreadable, unsafe, or not for this model)."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint's tensors do not match the model: missing, unexpected or misshapen keys."""

    def __init__(self, path, missing=(), unexpected=(), shape_mismatches=()):
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.shape_mismatches = list(shape_mismatches)
        lines = [f"checkpoint {path} does not match the model:"]
        if self.missing:
            lines.append(f"  missing keys ({len(self.missing)}): " + ", ".join(self.missing[:20]))
        if self.unexpected:
            lines.append(
                f"  unexpected keys ({len(self.unexpected)}): " + ", ".join(self.unexpected[:20])
            )
        for key, expected, found in self.shape_mismatches[:20]:
            lines.append(f"  shape of {key}: expected {tuple(expected)}, found {tuple(found)}")
        if len(self.shape_mismatches) > 20:
            lines.append(f"  ... and {len(self.shape_mismatches) - 20} more shape mismatches")
        super().__init__("\n".join(lines))
