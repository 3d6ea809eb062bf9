#!/usr/bin/env python3
"""Show and scale a model's workers (the command line: gameart.ops.scaling)."""

import sys

from gameart.ops import scaling as command

if __name__ == "__main__":
    sys.exit(command.main())
