"""Where bitdet's log lines go: the console for what a user acts on, the log file for the rest."""
from __future__ import annotations

import io
import logging

__all__ = ["FILE_LOGGER", "LogStream"]

# A logger whose records go to OUTPUT_DIR/log.txt only (set up by the tools): the environment,
# the command line, the full config, the model's printout and tracebacks of user errors.
FILE_LOGGER = "bitdet.logfile"


class LogStream(io.TextIOBase):
    """A text stream that logs each line written to it, for ``contextlib.redirect_stdout`` of a
    library that prints (e.g. pycocotools) where its output belongs in a log."""

    def __init__(self, logger: logging.Logger, level: int = logging.INFO) -> None:
        self.logger, self.level, self._partial = logger, level, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            self.logger.log(self.level, "%s", line)
        return len(text)

    def flush(self) -> None:
        if self._partial:
            self.logger.log(self.level, "%s", self._partial)
            self._partial = ""
