#!/usr/bin/env python3
"""Load-test a running server (the command line: gameart.measure.loadtest)."""

import sys

from gameart.measure import loadtest as command

if __name__ == "__main__":
    sys.exit(command.main())
