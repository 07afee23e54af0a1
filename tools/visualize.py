#!/usr/bin/env python
"""Same as ``python -m bitdet.tools.visualize`` (see that module for usage)."""

from bitdet.tools.visualize import cli

if __name__ == "__main__":
    cli()
