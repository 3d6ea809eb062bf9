#!/usr/bin/env python3
"""GPU end to end: ours vs stock vs a no-op handler (the command line: gameart.measure.gpu_e2e)."""

import sys

from gameart.measure import gpu_e2e as command

if __name__ == "__main__":
    sys.exit(command.main())
