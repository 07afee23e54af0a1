"""bitdet's command-line tools, each runnable as ``python -m bitdet.tools.<name>`` or as the
console script installed with the package (``bitdet-train``, ``bitdet-pretrain``, ...).

``tools/*.py`` in a checkout are thin wrappers around these modules."""

import warnings

# Detectron2's import scripts a few helpers with torch.jit.script, which torch deprecates:
# a warning about a dependency, not about the user's command, so the tools do not print it.
warnings.filterwarnings(
    "ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning
)
