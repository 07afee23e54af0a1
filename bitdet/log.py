"""Where bitdet's log lines go: the console for what a user acts on, the log file for the rest."""

from __future__ import annotations

import io
import logging
import warnings

__all__ = ["FILE_LOGGER", "LogStream", "ignore_third_party_warnings"]

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


def ignore_third_party_warnings() -> None:
    """Hide two warnings that say nothing a bitdet user can act on: Detectron2's anchor and point
    generators call ``torch.meshgrid`` without ``indexing`` (its "ij" default, the one they rely
    on), and Detectron2's LazyConfig loader imports ``pkg_resources``."""
    warnings.filterwarnings(
        "ignore",
        message=r"torch\.meshgrid: in an upcoming release, it will be required to "
        r"pass the indexing argument",
        category=UserWarning,
        module=r"torch\.functional",
    )
    warnings.filterwarnings(
        "ignore", message=r"pkg_resources is deprecated as an API", category=UserWarning
    )
