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

:func:`gemm` calls the same library's ``cblas_sgemm``/``cblas_dgemm`` for one thing
NumPy's ``matmul`` cannot do: add the product into an existing array (``beta = 1``),
which the convolution by kernel rows (:mod:`zfnet.ops.kernel_rows`) does once per
row of the filter.  Without the library it computes the same sum through a
temporary.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import threading

__all__ = ["blas_threads", "blas_thread_control", "gemm"]

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
_gemm_found: list = []  # [] not looked yet; [None] none; [{dtype: cblas function}] (appended once, complete)


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
    if _found:  # looked up already: no lock on the way to every GEMM (gemm asks first)
        return _found[0]
    with _lock:
        if not _found:
            import numpy  # noqa: F401  (loads the BLAS, so the maps list it)

            control = None
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
                        control = (setter, getter)
                        _found_path[0] = path
                        break
                if control is not None:
                    break
            _found.append(control)  # once, complete: readers without the lock see all or nothing
        return _found[0]


_holder = threading.RLock()  # held by the thread inside a blas_threads block


@contextlib.contextmanager
def blas_threads(n: int, wait: bool = True):
    """Run the block with OpenBLAS on ``n`` threads; yield whether that was possible.

    Process-wide while the block runs (OpenBLAS has no per-thread count), so one
    thread at a time holds it: another thread's ``blas_threads`` waits for the block
    to end, or with ``wait=False`` yields False at once and changes nothing (the
    caller then runs as it would without).  The same thread may nest blocks.  The
    training step holds it around its data-parallel parts, the kernel-rows
    convolution around images it shares out among threads.
    """
    control = blas_thread_control()
    if control is None or not _holder.acquire(blocking=wait):
        yield False
        return
    try:
        setter, getter = control
        old = getter()
        setter(int(n))
        try:
            yield True
        finally:
            setter(old)
    finally:
        _holder.release()


# cblas_?gemm symbol pairs and the integer type of their sizes: the ``64_`` builds take
# 64-bit integers; a plain name takes 64-bit ones only where the library's
# configuration says USE64BITINT (checked below)
_GEMM_SYMBOLS = (
    ("scipy_cblas_sgemm64_", "scipy_cblas_dgemm64_", "scipy_openblas_get_config64_"),
    ("scipy_cblas_sgemm", "scipy_cblas_dgemm", "scipy_openblas_get_config"),
    ("cblas_sgemm64_", "cblas_dgemm64_", "openblas_get_config64_"),
    ("cblas_sgemm", "cblas_dgemm", "openblas_get_config"),
)
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112  # the CBLAS enum values
_INT_LIMIT = {ctypes.c_int32: 2**31 - 1, ctypes.c_int64: 2**63 - 1}  # sizes the library's integers hold


def _gemm_functions():
    """``{np.float32: cblas_sgemm, np.float64: cblas_dgemm}`` of NumPy's OpenBLAS, or None."""
    if _gemm_found:  # looked up already: called on every GEMM, so no lock here
        return _gemm_found[0]
    if blas_thread_control() is None:  # finds the library (_found_path) first
        return None
    with _lock:
        if not _gemm_found:
            _gemm_found.append(_find_gemm(_found_path[0]))  # once, complete
        return _gemm_found[0]


def _find_gemm(path):
    """The cblas_?gemm pair in the library at ``path`` (see :func:`_gemm_functions`), or None."""
    import numpy as np

    try:
        lib = ctypes.CDLL(path)
    except OSError:
        return None
    for s_name, d_name, config_name in _GEMM_SYMBOLS:
        if not all(hasattr(lib, name) for name in (s_name, d_name, config_name)):
            continue
        config = getattr(lib, config_name)
        config.argtypes, config.restype = [], ctypes.c_char_p
        wide = s_name.endswith("64_") or b"USE64BITINT" in (config() or b"")
        integer = ctypes.c_int64 if wide else ctypes.c_int32
        found = {}
        for dtype, name, scalar in ((np.float32, s_name, ctypes.c_float), (np.float64, d_name, ctypes.c_double)):
            fn = getattr(lib, name)
            fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, integer, integer, integer, scalar,
                           ctypes.c_void_p, integer, ctypes.c_void_p, integer, scalar, ctypes.c_void_p, integer]
            fn.restype = None
            found[np.dtype(dtype)] = fn
        return found
    return None


def _operand(m):
    """``(transpose flag, leading dimension)`` of a 2-D view for CBLAS (row-major), or None.

    Row-major rows ``(s, 1)`` strides: not transposed, ``ld = s``; column-major
    ``(1, s)``: transposed, ``ld = s``.  ``ld`` must cover the other axis.
    """
    item = m.itemsize
    r, c = m.shape
    s0, s1 = m.strides
    if (s1 == item or c == 1) and s0 % item == 0 and s0 // item >= max(1, c):
        return _NO_TRANS, s0 // item
    if (s0 == item or r == 1) and s1 % item == 0 and s1 // item >= max(1, r):
        return _TRANS, s1 // item
    return None


def gemm(a, b, out, accumulate: bool = False) -> None:
    """``out = a @ b``, or with ``accumulate`` ``out += a @ b``; 2-D NumPy arrays (views too).

    ``a`` (M, K), ``b`` (K, N), ``out`` (M, N).  Where NumPy's OpenBLAS is found, the
    three share a native float dtype (float32 or float64), are aligned, each has one
    unit stride (``out`` along its rows), ``out`` is writeable and shares no memory
    with ``a`` or ``b``, and every size fits the library's integers, one
    ``cblas_?gemm`` call with ``beta = accumulate`` does it in place: the product is
    added while each tile of ``out`` is in registers.  Otherwise NumPy computes it
    (through a temporary when accumulating); the result is the same up to float
    rounding.
    """
    import numpy as np

    (m, k), (k2, n) = a.shape, b.shape
    if k != k2 or out.shape != (m, n):
        raise ValueError(f"gemm: shapes {a.shape} @ {b.shape} -> {out.shape} do not match")
    functions = _gemm_functions() if a.dtype == b.dtype == out.dtype else None
    fn = functions.get(out.dtype) if functions else None
    if (fn is not None and m and n and out.flags.writeable and all(v.flags.aligned for v in (a, b, out))
            and not np.may_share_memory(out, a) and not np.may_share_memory(out, b)):
        ta, tb, tc = _operand(a), _operand(b), _operand(out)
        limit = _INT_LIMIT[fn.argtypes[3]]
        if (ta is not None and tb is not None and tc is not None and tc[0] == _NO_TRANS
                and max(m, n, k, ta[1], tb[1], tc[1]) <= limit):
            if k == 0:
                if not accumulate:
                    out[...] = 0
                return
            fn(_ROW_MAJOR, ta[0], tb[0], m, n, k, 1.0, a.ctypes.data, ta[1], b.ctypes.data, tb[1],
               1.0 if accumulate else 0.0, out.ctypes.data, tc[1])
            return
    if accumulate:
        out += a @ b
    else:
        np.matmul(a, b, out=out)
