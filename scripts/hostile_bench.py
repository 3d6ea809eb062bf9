#!/usr/bin/env python3
"""What each hostile input costs, guarded and not."""

import sys

from gameart.measure import hostile_bench as command

if __name__ == "__main__":
    sys.exit(command.main())
