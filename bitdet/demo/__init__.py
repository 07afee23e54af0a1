"""The CPU demo's parts: the stage runner with live progress (:mod:`.progress`), the statistics
of upstream-vs-scratch comparisons (:mod:`.stats`) and the report (:mod:`.report`). The
pipeline itself is the ``bitdet-demo`` tool (:mod:`bitdet.tools.demo`)."""
