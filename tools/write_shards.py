#!/usr/bin/env python
"""Same as ``python -m bitdet.tools.write_shards`` (see that module for usage)."""

from bitdet.tools.write_shards import cli

if __name__ == "__main__":
    cli()
