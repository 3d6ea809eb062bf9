#!/usr/bin/env python3
"""Package an export into a TorchServe .mar (the command line: gameart.pipeline.archive)."""

import sys

from gameart.pipeline import archive as command

if __name__ == "__main__":
    sys.exit(command.main())
