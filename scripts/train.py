#!/usr/bin/env python3
"""Train the default model (the command line: gameart.pipeline.training)."""

import sys

from gameart.pipeline import training as command

if __name__ == "__main__":
    sys.exit(command.main())
