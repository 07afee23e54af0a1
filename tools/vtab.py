#!/usr/bin/env python
"""Same as ``python -m bitdet.tools.vtab`` (see that module for usage)."""

from bitdet.tools.vtab import cli

if __name__ == "__main__":
    cli()
