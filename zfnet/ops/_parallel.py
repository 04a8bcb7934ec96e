"""Split an op's independent work across CPU threads.

BLAS already runs the GEMMs on every core; the rest of a forward pass (max-pooling,
LRN, rectification, building convolution columns) is NumPy elementwise work that runs
on one core unless we split it.  NumPy releases the GIL inside its loops, so plain
threads working on disjoint slices of the same arrays run in parallel.

The number of threads is ``ZFNET_NUM_THREADS``, else ``OMP_NUM_THREADS`` (the variable
BLAS libraries read), else the number of cores this process may use.  Set it to 1 to
run everything on the calling thread.

Inside :func:`serial` a thread runs every op on itself: the data-parallel training
step (:mod:`zfnet.data_parallel`) gives each thread whole images instead.
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Callable

__all__ = ["num_threads", "parallel_range", "parallel_pieces", "serial", "run_here_and_on_pool"]

_lock = threading.Lock()
# thread-name prefix -> (pool, size, pid); a forked child inherits a pool object but not
# its threads, so a pool from another pid is replaced
_pools: dict[str, tuple[ThreadPoolExecutor, int, int]] = {}
_local = threading.local()  # .serial: this thread runs the ops' parts itself (see serial())


def num_threads() -> int:
    """Threads the ops may use (see the module docstring)."""
    for var in ("ZFNET_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def serial():
    """Within the block, :func:`parallel_range` on this thread runs every part itself."""
    before = getattr(_local, "serial", False)
    _local.serial = True
    try:
        yield
    finally:
        _local.serial = before


def _on_one_thread() -> bool:
    """True in a pool thread (no nesting) or inside :func:`serial`."""
    return getattr(_local, "serial", False) or threading.current_thread().name.startswith("zfnet")


def _executor(workers: int, prefix: str = "zfnet") -> ThreadPoolExecutor:
    """The pool of at least ``workers`` threads named ``prefix_N``, started on first use.

    Every name starts with "zfnet", so ops called on a pool thread run on it alone
    (no nesting; :func:`parallel_range`).
    """
    with _lock:
        pool, size, pid = _pools.get(prefix, (None, 0, 0))
        if pool is None or size < workers or pid != os.getpid():
            pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=prefix)
            _pools[prefix] = (pool, workers, os.getpid())
        return pool


def run_here_and_on_pool(first: Callable[[], None], others: list[Callable[[], None]], prefix: str = "zfnet") -> None:
    """Call ``first()`` on this thread and each of ``others`` on a thread of the pool ``prefix``.

    Returns when all are done; if any raised, re-raises the first exception (in the
    order ``first``, ``others``) only after every call has finished, so none is
    still running when the caller goes on.
    """
    pool = _executor(len(others), prefix) if others else None
    futures = [pool.submit(fn) for fn in others]
    error = None
    try:
        first()
    except BaseException as e:  # noqa: BLE001  (re-raised below, after the others)
        error = e
    if futures:
        wait(futures)
    if error is not None:
        raise error
    for f in futures:
        f.result()


def parallel_range(n: int, fn: Callable[[int, int], None], min_items: int = 1) -> None:
    """Call ``fn(lo, hi)`` on contiguous parts of ``range(n)``, one part per thread.

    Parts have at least ``min_items`` items (so small jobs stay on one thread).  The
    calling thread does the first part itself; the call returns when every part is
    done, and re-raises the first exception.  ``fn`` must only write where no other
    part writes.
    """
    parts = min(num_threads(), n // max(1, min_items))
    if parts <= 1 or _on_one_thread():
        if n > 0:
            fn(0, n)
        return
    bounds = [n * i // parts for i in range(parts + 1)]
    run_here_and_on_pool(lambda: fn(bounds[0], bounds[1]),
                         [lambda i=i: fn(bounds[i], bounds[i + 1]) for i in range(1, parts)])


def parallel_pieces(n: int, item_bytes: int, fn: Callable[[int, int], None], piece_bytes: int = 1 << 20) -> None:
    """Call ``fn(lo, hi)`` on pieces of ``range(n)`` of about ``piece_bytes`` each.

    Each piece has at least one item of ``item_bytes``; the pieces are shared out
    among threads as :func:`parallel_range` shares items (a contiguous run of pieces
    per thread).  For elementwise work on big maps: a piece's temporaries stay in
    cache where a whole batch would stream through memory once per operation.
    """
    step = max(1, piece_bytes // max(1, item_bytes))

    def run(lo, hi):
        for i0 in range(lo, hi, step):
            fn(i0, min(i0 + step, hi))

    parallel_range(n, run, min_items=step)
