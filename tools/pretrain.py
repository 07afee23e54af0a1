#!/usr/bin/env python
"""Same as ``python -m bitdet.tools.pretrain`` (see that module for usage)."""

from bitdet.tools.pretrain import cli

if __name__ == "__main__":
    cli()
