#!/usr/bin/env python3
"""Start, stop and inspect TorchServe (the command line: gameart.ops.server)."""

import sys

from gameart.ops import server as command

if __name__ == "__main__":
    sys.exit(command.main())
