#!/usr/bin/env python
"""Same as ``python -m bitdet.tools.benchmark`` (see that module for usage)."""

from bitdet.tools.benchmark import cli

if __name__ == "__main__":
    cli()
