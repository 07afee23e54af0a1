#!/usr/bin/env python
"""Same as ``python -m bitdet.tools.convert_weights`` (see that module for usage)."""

from bitdet.tools.convert_weights import cli

if __name__ == "__main__":
    cli()
