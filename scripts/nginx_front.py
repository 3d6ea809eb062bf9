#!/usr/bin/env python3
"""nginx in front of TorchServe: rate limits, inference only (gameart/cli/nginx_front.py)."""

import sys

from gameart.cli.nginx_front import main

if __name__ == "__main__":
    sys.exit(main())
