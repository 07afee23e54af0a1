#!/usr/bin/env python
"""Same as ``python -m bitdet.tools.train_net`` (see that module for usage)."""

from bitdet.tools.train_net import cli

if __name__ == "__main__":
    cli()
