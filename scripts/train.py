#!/usr/bin/env python3
"""Train the default model, or any ImageFolder classifier (gameart/cli/train.py)."""

import sys

from gameart.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
