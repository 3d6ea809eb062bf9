#!/usr/bin/env python3
"""The main job, end to end: make demo (the command line: gameart.demo)."""

import sys

from gameart import demo as command

if __name__ == "__main__":
    sys.exit(command.main())
