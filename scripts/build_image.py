#!/usr/bin/env python3
"""Build the image with podman (gameart/cli/build_image.py)."""

import sys

from gameart.cli.build_image import main

if __name__ == "__main__":
    sys.exit(main())
