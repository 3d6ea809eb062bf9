#!/usr/bin/env python3
"""Check (and with --install, install) what pip cannot: Java and the programs the tests start.

Runs with the system Python before the virtual environment exists, so it puts the checkout on
sys.path itself; gameart.ops.environment uses the standard library only.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gameart.cli import check_env

if __name__ == "__main__":
    sys.exit(check_env.main())
