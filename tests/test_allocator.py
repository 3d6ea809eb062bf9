"""keep_freed_memory: big allocations stop page-faulting on every reuse."""

from __future__ import annotations

import subprocess
import sys

CHURN = """
import resource, sys
import numpy as np
if sys.argv[1] == "tuned":
    from handler.allocator import keep_freed_memory
    assert keep_freed_memory()
for _ in range(3):  # settle
    np.ones(16 * 2**20 // 8)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):  # allocate, touch and free 64 MiB, as a forward pass does with activations
    np.ones(64 * 2**20 // 8)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    result = subprocess.run(
        [sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True
    )
    return int(result.stdout.strip())


def test_freed_memory_is_reused_without_page_faults():
    """Page faults are counted by the kernel, not timed: the same on a busy or idle machine."""
    default, tuned = faults("default"), faults("tuned")
    # 20 x 64 MiB of fresh pages: at least one fault per 2 MiB even with transparent huge pages
    assert default >= 20 * 32
    assert tuned < default / 10
