"""The CPU demo's parts: the stage runner with live progress (:mod:`.progress`), the statistics
of upstream-vs-scratch comparisons (:mod:`.stats`) and the report (:mod:`.report`). The
pipeline itself is the ``bitdet-demo`` tool (:mod:`bitdet.tools.demo`)."""

__all__ = ["INITS"]

# The two initialisations compared at every downstream stage (folder names under transfer/ and
# detection/ of a demo run).
INITS = ("upstream", "scratch")
