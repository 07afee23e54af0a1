#!/usr/bin/env python
"""Same as ``python -m bitdet.tools.generate_detection_data`` (see that module for usage)."""

from bitdet.tools.generate_detection_data import cli

if __name__ == "__main__":
    cli()
