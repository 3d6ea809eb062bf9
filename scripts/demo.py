#!/usr/bin/env python3
"""The main job, end to end: make demo (gameart/cli/demo.py)."""

import sys

from gameart.cli.demo import main

if __name__ == "__main__":
    sys.exit(main())
