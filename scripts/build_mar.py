#!/usr/bin/env python3
"""Package an export into a TorchServe .mar with our handler (gameart/cli/build_mar.py)."""

import sys

from gameart.cli.build_mar import main

if __name__ == "__main__":
    sys.exit(main())
