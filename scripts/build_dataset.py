#!/usr/bin/env python3
"""Build the game-art dataset from Debian packages (gameart/cli/build_dataset.py)."""

import sys

from gameart.cli.build_dataset import main

if __name__ == "__main__":
    sys.exit(main())
