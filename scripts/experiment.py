#!/usr/bin/env python3
"""Serving-configuration experiment: workers, batching."""

import sys

from gameart.measure import experiment as command

if __name__ == "__main__":
    sys.exit(command.main())
