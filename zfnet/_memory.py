"""How glibc's allocator hands memory back to the OS, and why training cares.

A training step allocates and frees several GB of large arrays (the trace of
activations, convolution columns, gradients).  glibc serves every block above its mmap
threshold (at most 32 MiB) with a fresh ``mmap`` and unmaps it on ``free``, so each
step the kernel zeroes and maps those pages again: measured on ZFNet at batch 32 (2
threads), 15,000-20,000 page faults and 0.2-0.8 s of system time per 2.2-2.7 s step.
Keeping freed blocks in the process (no mmap, no trimming) makes later steps reuse
them: 5-20 faults and no system time, steps of 2.13-2.24 s.  The cost is that the
process keeps its peak memory until it exits, which a training run reaches every
step anyway.

Both functions change process-wide ``mallopt`` settings for good (any such call also
switches off glibc's adaptive mmap threshold), do nothing where the C library is not
glibc, and return whether their setting is in effect.
"""

from __future__ import annotations

import os

__all__ = ["keep_freed_memory", "adaptive_malloc", "short_openblas_spin"]

# <malloc.h>
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -3, -4, -8
_done: set[str] = set()


def _mallopt(*settings: tuple[int, int]) -> bool:
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return all(libc.mallopt(param, value) == 1 for param, value in settings)
    except (OSError, AttributeError):  # not glibc: leave the allocator alone
        return False


def keep_freed_memory() -> bool:
    """Serve large arrays from the heap and never trim it (for training processes).

    ``M_MMAP_MAX = 0`` (the main heap serves every block), ``M_TRIM_THRESHOLD = -1``
    (freed memory is never returned) and ``M_ARENA_MAX = 1`` (threads started from
    now on allocate from the main heap too), as documented in ``mallopt(3)``.  A
    thread that allocated before the call keeps a heap of its own, which holds at most
    64 MiB: glibc maps larger blocks of such a thread anew each time, so a training
    loop should run on the main thread (as ``zfnet train`` does) and start its worker
    threads after the call (the data-parallel step's do; :mod:`zfnet.data_parallel`).  ``zfnet train`` calls
    it (``Trainer(..., keep_freed_memory=True)``), and so does ``python -m benchmarks
    --keep-freed-memory`` (per process: PyTorch, timed in the same process, gets it
    as well).  Call it only in a process of its own: it cannot be undone.
    """
    if "keep" not in _done and _mallopt((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1), (_M_ARENA_MAX, 1)):
        _done.add("keep")
    return "keep" in _done


def adaptive_malloc() -> bool:
    """Undo what ``MALLOC_TRIM_THRESHOLD_`` (set by Dask's nanny) does to NumPy's speed.

    Setting that variable switches off glibc's adaptive mmap threshold, so each large
    temporary array is mapped and zeroed anew (35% slower forward passes, measured).
    On a worker started with it (``dask worker`` does by default), raise the mmap and
    trim thresholds to glibc's adaptive ceiling (32 MiB) once per process.  Elsewhere
    (no variable, not glibc) nothing happens, nor after :func:`keep_freed_memory`,
    whose setting already keeps every block.
    """
    if "adaptive" not in _done and "keep" not in _done and "MALLOC_TRIM_THRESHOLD_" in os.environ:
        if _mallopt((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 64 << 20)):
            _done.add("adaptive")
    return "adaptive" in _done


def short_openblas_spin() -> bool:
    """Make OpenBLAS's idle threads sleep after 2**4 cycles instead of 2**28 (training).

    After every GEMM OpenBLAS's threads spin for about 0.1 s before they sleep, and on
    a small machine they take the cores from the threaded NumPy work that follows
    each GEMM in a training step (im2col, Winograd transforms, pooling, LRN;
    ``zfnet.ops._parallel``): a ZFNet step is 5% faster on 2 cores with the short
    spin.  Latency-bound work (one image, one projection: many small GEMMs in a row)
    is slower with it, since every GEMM then wakes sleeping threads, so only training
    asks for it (``zfnet train``, ``benchmarks/train_*.py``; ``docs/speed.md``).

    OpenBLAS reads ``OPENBLAS_THREAD_TIMEOUT`` once, when NumPy loads it: this sets it
    in ``os.environ`` (children inherit it) only if NumPy is not imported yet and the
    variable is not already set, and returns whether the process will run with it.
    """
    import sys

    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    return os.environ.get("OPENBLAS_THREAD_TIMEOUT") == "4" and "numpy" not in sys.modules
