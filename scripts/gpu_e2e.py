#!/usr/bin/env python3
"""GPU end to end: ours vs stock vs a no-op handler (gameart/cli/gpu_e2e.py)."""

import sys

from gameart.cli.gpu_e2e import main

if __name__ == "__main__":
    sys.exit(main())
