#!/usr/bin/env python3
"""Start, stop and inspect TorchServe (gameart/cli/serve.py)."""

import sys

from gameart.cli.serve import main

if __name__ == "__main__":
    sys.exit(main())
