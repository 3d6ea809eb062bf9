#!/usr/bin/env python3
"""Show and scale a model's workers (gameart/cli/scale.py)."""

import sys

from gameart.cli.scale import main

if __name__ == "__main__":
    sys.exit(main())
