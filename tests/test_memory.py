"""zfnet._memory: keeping freed memory in a training process (glibc only)."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHILD = r"""
import resource, sys
import numpy as np
if sys.argv[1] == "keep":
    from zfnet._memory import keep_freed_memory
    assert keep_freed_memory() and keep_freed_memory()  # idempotent
faults = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = np.ones(16 << 20, np.float32)  # 64 MiB: above glibc's largest mmap threshold
    del a
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults[1:]))
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's; this test needs Linux")
def test_keep_freed_memory_reuses_big_blocks():
    """Without it every 64 MiB array is mapped and faulted in anew; with it the freed
    block is reused: after the first array, (almost) no page faults."""
    import ctypes.util

    if "musl" in (ctypes.util.find_library("c") or ""):
        pytest.skip("not glibc")
    plain, kept = _faults("plain"), _faults("keep")
    assert plain >= 100  # 5 arrays x 64 MiB of fresh pages: 16,384 faults of 4 KiB each, 32 of 2 MiB huge pages
    assert kept < plain / 10
