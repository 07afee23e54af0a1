#!/usr/bin/env python
"""Same as ``python -m bitdet.tools.demo`` (see that module for usage)."""

from bitdet.tools.demo import cli

if __name__ == "__main__":
    cli()
