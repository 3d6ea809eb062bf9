#!/usr/bin/env python3
"""CPU-vs-GPU benchmark: model, preprocessing, end to end (gameart/cli/benchmark.py)."""

import sys

from gameart.cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
