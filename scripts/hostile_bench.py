#!/usr/bin/env python3
"""What each hostile input costs, guarded and not (gameart/cli/hostile_bench.py)."""

import sys

from gameart.cli.hostile_bench import main

if __name__ == "__main__":
    sys.exit(main())
