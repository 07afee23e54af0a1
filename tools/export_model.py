#!/usr/bin/env python
"""Same as ``python -m bitdet.tools.export_model`` (see that module for usage)."""

from bitdet.tools.export_model import cli

if __name__ == "__main__":
    cli()
