"""bitdet's command-line tools, each runnable as ``python -m bitdet.tools.<name>`` or as the
console script installed with the package (``bitdet-train``, ``bitdet-pretrain``, ...).

``tools/*.py`` in a checkout are thin wrappers around these modules."""
