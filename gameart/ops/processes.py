"""Helper processes this project starts beside a server (the key renewer, the nginx front's key
watcher): stopping one by a recorded pid, safely."""

from __future__ import annotations

import contextlib

import psutil


def terminate_if_ours(pid: int | None, marker: str) -> bool:
    """SIGTERM `pid` only while its command line still contains `marker`: a recorded pid may
    have been reused by another process since. True if it was sent."""
    if not pid:
        return False
    with contextlib.suppress(psutil.Error):  # gone, a zombie, or not ours to read
        process = psutil.Process(pid)
        if marker in " ".join(process.cmdline()):
            process.terminate()
            return True
    return False
