#!/usr/bin/env python3
"""The nginx front: TLS, rate limits, body limits (the command line: gameart.ops.nginx)."""

import sys

from gameart.ops import nginx as command

if __name__ == "__main__":
    sys.exit(command.main())
