"""How many threads NumPy's BLAS (OpenBLAS) uses, changed for a while.

The data-parallel training step (:mod:`zfnet.data_parallel`) gives each CPU thread
whole images, so each thread's GEMMs must run on one core: two threads that each
call a 2-thread GEMM at once share the cores worse than two 1-thread GEMMs side by
side (measured: 20 GEMMs of 256x2400 by 2400x5000, 10 in each of two Python
threads: 0.52 s with 2 BLAS threads, 0.44 s with 1; all 20 in one thread with 2
BLAS threads, 0.44 s).

OpenBLAS keeps one process-wide thread count (``openblas_set_num_threads``;
NumPy's wheels bundle it with a ``scipy_`` prefix and a ``64_`` suffix), so
:func:`blas_threads` sets it for the block it guards and restores it afterwards.
Where NumPy's BLAS is not an OpenBLAS we can find (MKL, Accelerate, a build
without the symbols), :func:`blas_threads` yields False and changes nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import threading

__all__ = ["blas_threads", "blas_thread_control"]

# (set, get) symbol pairs, most specific first: NumPy 2.x wheels, then plain OpenBLAS builds
_SYMBOLS = (
    ("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
    ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
    ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
    ("openblas_set_num_threads", "openblas_get_num_threads"),
)
_lock = threading.Lock()
_found: list = []  # [] not looked yet; [None] none; [(set, get)]
_found_path: list = [None]  # the library they belong to


def _candidate_paths() -> list[str]:
    """NumPy's own OpenBLAS (the wheel's ``numpy.libs``) first, then any other loaded
    library whose name says OpenBLAS (a NumPy built against a system OpenBLAS).

    NumPy's comes first because another package may bring its own OpenBLAS into the
    process (SciPy's wheels do): setting that one's thread count would not touch the
    GEMMs NumPy runs.
    """
    import numpy

    libs = os.path.join(os.path.dirname(os.path.dirname(numpy.__file__)), "numpy.libs", "*openblas*")
    paths = sorted(glob.glob(libs))
    try:
        with open("/proc/self/maps") as f:  # Linux: what is really loaded
            for line in f:
                path = line.split(maxsplit=5)[-1].strip()
                if "openblas" in os.path.basename(path).lower() and path not in paths:
                    paths.append(path)
    except OSError:
        pass
    return paths


def blas_thread_control():
    """``(set_num_threads, get_num_threads)`` of NumPy's OpenBLAS as ctypes functions, or None."""
    with _lock:
        if not _found:
            _found.append(None)
            import numpy  # noqa: F401  (loads the BLAS, so the maps list it)

            for path in _candidate_paths():
                try:
                    lib = ctypes.CDLL(path)  # already loaded: the same handle, nothing new runs
                except OSError:
                    continue
                for set_name, get_name in _SYMBOLS:
                    if hasattr(lib, set_name) and hasattr(lib, get_name):
                        setter, getter = getattr(lib, set_name), getattr(lib, get_name)
                        setter.argtypes, setter.restype = [ctypes.c_int], None
                        getter.argtypes, getter.restype = [], ctypes.c_int
                        _found[0] = (setter, getter)
                        _found_path[0] = path
                        break
                if _found[0] is not None:
                    break
        return _found[0]


@contextlib.contextmanager
def blas_threads(n: int):
    """Run the block with OpenBLAS on ``n`` threads; yield whether that was possible.

    Process-wide while the block runs (OpenBLAS has no per-thread count), so only
    one thread should use it at a time: the training step does, around its
    data-parallel parts.
    """
    control = blas_thread_control()
    if control is None:
        yield False
        return
    setter, getter = control
    old = getter()
    setter(int(n))
    try:
        yield True
    finally:
        setter(old)
