#!/usr/bin/env python3
"""Build the game-art dataset from Debian packages (the command line: gameart.pipeline.dataset)."""

import sys

from gameart.pipeline import dataset as command

if __name__ == "__main__":
    sys.exit(command.main())
