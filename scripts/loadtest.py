#!/usr/bin/env python3
"""Load-test a running TorchServe model (gameart/cli/loadtest.py)."""

import sys

from gameart.cli.loadtest import main

if __name__ == "__main__":
    sys.exit(main())
