#!/usr/bin/env python
"""Same as ``python -m bitdet.tools.finetune`` (see that module for usage)."""

from bitdet.tools.finetune import cli

if __name__ == "__main__":
    cli()
