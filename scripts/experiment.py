#!/usr/bin/env python3
"""Serving-configuration experiment: workers, batching, a full queue (gameart/cli/experiment.py)."""

import sys

from gameart.cli.experiment import main

if __name__ == "__main__":
    sys.exit(main())
