#!/usr/bin/env python3
"""CPU-vs-GPU benchmark: model, preprocessing, end to end."""

import sys

from gameart.measure import benchmark as command

if __name__ == "__main__":
    sys.exit(command.main())
