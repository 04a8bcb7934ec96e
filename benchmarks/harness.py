"""Timing helpers: interleaved repetitions, medians with ranges, a quiet-machine check.

Habits (after llm.c's ``dev/cuda`` benchmarks): check results against a reference
before timing; warm up; time the contenders of a case alternately, in rotating order,
so that a burst of load from elsewhere hits both; report the median and the range;
record what else the machine was doing (load average, a fixed GEMM's speed before and
after the run).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class Timing:
    """Seconds of each repetition of one contender."""

    samples: list = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def lo(self) -> float:
        return min(self.samples)

    @property
    def hi(self) -> float:
        return max(self.samples)

    def ms(self) -> str:
        """``median (min-max)`` in milliseconds."""
        return f"{self.median * 1e3:.1f} ({self.lo * 1e3:.1f}-{self.hi * 1e3:.1f})"


def interleaved(contenders: dict[str, Callable[[], object]], reps: int = 5, warmup: int = 1,
                gap: float = 0.25) -> dict[str, Timing]:
    """Time every contender ``reps`` times, alternating between them.

    Repetition ``r`` runs the contenders in an order rotated by ``r``, so neither
    side is always first after a pause.  ``warmup`` untimed calls each come first
    (allocator, caches, lazy initialisation).  Before each timed call the process
    sleeps ``gap`` seconds: BLAS and OpenMP worker threads keep spinning for a while
    after a call (OpenBLAS about 0.1 s), and without the pause one library's idle
    spinning would steal a core from the other's timed run.
    """
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    out = {name: Timing() for name in names}
    for r in range(reps):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            time.sleep(gap)
            t0 = time.perf_counter()
            contenders[name]()
            out[name].samples.append(time.perf_counter() - t0)
    return out


def gemm_check(n: int = 1024, reps: int = 7) -> Timing:
    """Time a fixed float32 GEMM (n x n x n) with NumPy: the machine's pulse."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    t = Timing()
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        t.samples.append(time.perf_counter() - t0)
    return t


def gflops(t: Timing, n: int = 1024) -> str:
    """The GEMM check as GFLOP/s: median (slowest-fastest)."""
    f = 2.0 * n**3 / 1e9
    return f"{f / t.median:.0f} ({f / t.hi:.0f}-{f / t.lo:.0f})"


def loadavg() -> str:
    try:
        return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:  # pragma: no cover - not on every platform
        return "n/a"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover
        pass
    return platform.processor() or platform.machine()


def blas_name() -> str:
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # pragma: no cover - older NumPy
        return "unknown"


def environment(threads: int) -> dict[str, str]:
    """What the numbers were measured on."""
    import torch

    return {
        "cpu": f"{cpu_model()}, {os.cpu_count()} logical cores",
        "python": platform.python_version(),
        "numpy": f"{np.__version__} ({blas_name()})",
        "torch": f"{torch.__version__} (intra-op threads {torch.get_num_threads()}, "
                 f"inter-op {torch.get_num_interop_threads()})",
        "threads": f"{threads} (OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}, "
                   f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
                   f"MKL_NUM_THREADS={os.environ.get('MKL_NUM_THREADS')}, "
                   f"OPENBLAS_THREAD_TIMEOUT={os.environ.get('OPENBLAS_THREAD_TIMEOUT')}, "
                   f"ZFNET_WINOGRAD={os.environ.get('ZFNET_WINOGRAD', '(unset: on)')})",
    }
