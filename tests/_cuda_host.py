"""Run zfnet's CUDA kernels on the CPU: the host emulation behind ``tests/test_kernels_host.py``.

Every kernel in :mod:`zfnet.ops._kernels` is a grid-stride loop with one thread per
output, no shared memory and no barriers.  Such a kernel means the same thing when
its threads run one after another, so the host compiler can run it: the source text
is compiled UNCHANGED with the system C++ compiler behind a small shim,

* ``__global__`` (and ``__device__``) expand to nothing, ``__restrict__`` and
  ``extern "C"`` are plain C++;
* ``blockIdx``, ``blockDim``, ``gridDim`` and ``threadIdx`` are global variables of
  CUDA's own types (``unsigned int`` fields), which a generated host loop sets
  before it calls the kernel function once per (block, thread);
* ``atomicAdd`` is a plain read-add-write (threads never overlap on the host);
* ``__longlong_as_double`` is a bit copy; ``isnan`` and ``pow`` are the C++ library's;
* ``typedef float T;`` or ``typedef double T;`` goes in front, as
  :func:`zfnet.ops._kernels.kernel` does for NVRTC,

and the grid loop is called through ``ctypes`` on NumPy buffers.  Each array
argument is copied into the middle of a buffer with guard zones on both sides, as
long as the array (at least 64 elements), filled with a value naming the buffer
(see :func:`_guard`): a write outside the array shows as a changed guard, a read
outside it as a NaN or a wrong switch in the result.

What this cannot see: CuPy's launch path (NVRTC, argument marshalling, streams),
races between threads that really run at once, accesses beyond the guard zones,
the device's own ``pow`` and fused multiply-adds (so LRN is compared within a
tolerance), and speed.

This module is test support, not part of the package.  :func:`fake_cupy`,
:func:`cuda_branch` and :class:`RecordingKernel` (used by
``tests/test_kernel_launch.py`` too) stand in for CuPy, so that the ops' CUDA
branches and the launchers in ``_kernels.py`` run without a GPU.
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zfnet.ops import _kernels

__all__ = ["SHIM", "Param", "signature", "kernel_total", "scatter_targets", "find_compiler", "check_args",
           "HostModule", "HostKernel", "host_module", "fake_cupy", "cuda_branch", "RecordingKernel", "poison"]

SHIM = r"""// host shim: the CUDA names the zfnet kernels use, for a sequential run on the CPU
#include <cmath>
#include <cstring>
#define __global__
#define __device__
#define __forceinline__ inline
struct zfnet_host_uint3 { unsigned int x, y, z; };  // CUDA's uint3 / dim3 fields are unsigned int
static zfnet_host_uint3 blockIdx, threadIdx, blockDim, gridDim;
using std::isnan;
using std::pow;
static inline double __longlong_as_double(long long bits) { double d; std::memcpy(&d, &bits, sizeof d); return d; }
template <typename V> static inline V atomicAdd(V* address, V value)
{ V old = *address; *address = old + value; return old; }  // threads never overlap on the host
"""

# the flags: no fast-math and no contraction into fused multiply-adds, so that host
# arithmetic rounds like NumPy's (the device contracts; see the LRN tolerance)
_FLAGS = ("-std=c++14", "-O1", "-shared", "-fPIC", "-ffp-contract=off", "-fno-fast-math", "-Wall")


@dataclass(frozen=True)
class Param:
    """One kernel parameter: ``kind`` is ``"T*"``, ``"long long*"``, ``"long long"``, ``"int"`` or ``"T"``."""

    name: str
    kind: str
    const: bool = False

    @property
    def pointer(self) -> bool:
        return self.kind.endswith("*")


def signature(name: str, sources: dict | None = None) -> list[Param]:
    """The parameters of kernel ``name``, read off its source text in ``_kernels.SOURCES``."""
    src = (sources or _kernels.SOURCES)[name]
    m = re.search(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\((.*?)\)\s*\{', src, re.S)
    if not m or m.group(1) != name:
        raise ValueError(f"{name}: no extern \"C\" __global__ signature named {name} in its source")
    params = []
    for text in m.group(2).split(","):
        words = text.replace("*", " * ").split()
        words = [w for w in words if w != "__restrict__"]
        const = words[0] == "const"
        words = words[1:] if const else words
        pname, ctype = words[-1], " ".join(words[:-1]).replace(" *", "*")
        if ctype not in ("T*", "long long*", "long long", "int", "T"):
            raise ValueError(f"{name}: parameter {pname!r} has type {ctype!r}, which the host shim does not map")
        params.append(Param(pname, ctype, const))
    return params


def kernel_total(name: str, args: tuple) -> int:
    """The number of loop iterations (outputs) kernel ``name`` runs for these arguments.

    Either a ``total`` parameter, or the kernel's own ``long long total = a * b * ...;``
    evaluated on the scalar arguments, so a launcher's grid can be held to it.
    """
    params = signature(name)
    values = {p.name: int(a) for p, a in zip(params, args) if not p.pointer}
    if "total" in values:
        return values["total"]
    m = re.search(r"long long total\s*=\s*([\w\s*]+);", _kernels.SOURCES[name])
    if not m:
        raise ValueError(f"{name}: no 'long long total = ...;' product in its source")
    total = 1
    for factor in m.group(1).split("*"):
        total *= values[factor.strip()]
    return total


def scatter_targets(name: str) -> set[str]:
    """Pointer parameters that kernel ``name`` atomically adds into (the caller must zero them)."""
    return set(re.findall(r"atomicAdd\(\s*(\w+)", _kernels.SOURCES[name]))


_SCALAR_TYPES = {"long long": np.int64, "int": np.int32}


def check_args(name: str, dtype, args: tuple, params: list[Param] | None = None) -> list[str]:
    """Every way ``args`` mismatch the C signature of kernel ``name`` compiled for ``dtype``.

    CuPy marshals each argument by its own type: an array as a device pointer (its
    dtype and layout unseen by the kernel), a NumPy scalar by its exact width.  So an
    array must have the pointee's dtype and be C-contiguous (the kernels index flat
    memory), a written one must be writeable, and each scalar must be exactly
    ``numpy.int64`` for ``long long``, ``numpy.int32`` for ``int`` and the array dtype's
    scalar type for ``T``.  A Python ``int`` or ``float`` would leave the width to
    CuPy's conversion rules, and a ``float64`` for a ``float T`` is 8 bytes where the
    kernel reads 4.
    """
    dtype = np.dtype(dtype)
    params = params or signature(name)
    if len(args) != len(params):
        return [f"{name}: {len(args)} arguments for {len(params)} parameters"]
    problems = []
    for p, a in zip(params, args):
        where = f"{name}({p.name})"
        if p.pointer:
            want = dtype if p.kind == "T*" else np.dtype(np.int64)
            if not isinstance(a, np.ndarray):
                problems.append(f"{where}: expected an array for {p.kind}, got {type(a).__name__}")
                continue
            if a.dtype != want:
                problems.append(f"{where}: array of {a.dtype} for {p.kind} (want {want})")
            if not a.flags.c_contiguous:
                problems.append(f"{where}: array is not C-contiguous (shape {a.shape}, strides {a.strides})")
            if not p.const and not a.flags.writeable:
                problems.append(f"{where}: output array is read-only")
        else:
            want = dtype.type if p.kind == "T" else _SCALAR_TYPES[p.kind]
            if type(a) is not want:
                problems.append(f"{where}: {p.kind} needs numpy.{want.__name__}, got {type(a).__module__}."
                                f"{type(a).__name__} {a}")
    return problems


def find_compiler() -> str | None:
    """The C++ compiler to use: ``$CXX``, else the first of g++, c++, clang++ on the PATH."""
    for cand in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if cand and shutil.which(cand):
            return shutil.which(cand)
    return None


def _driver(name: str, params: list[Param]) -> str:
    """A host function that runs kernel ``name`` over a whole 1-D grid, block by block."""
    decl = ", ".join(f"{'const ' if p.const else ''}{p.kind} {p.name}" for p in params)
    call = ", ".join(p.name for p in params)
    # the driver's own names carry a zfnet_host_ prefix so no kernel parameter can shadow them
    return f"""
extern "C" void zfnet_host_grid_{name}(unsigned int zfnet_host_g, unsigned int zfnet_host_bl,
                                       int zfnet_host_rev, {decl})
{{
    gridDim.x = zfnet_host_g; gridDim.y = gridDim.z = 1;
    blockDim.x = zfnet_host_bl; blockDim.y = blockDim.z = 1;
    blockIdx.y = blockIdx.z = threadIdx.y = threadIdx.z = 0;
    for (unsigned int zfnet_host_b = 0; zfnet_host_b < zfnet_host_g; ++zfnet_host_b) {{
        for (unsigned int zfnet_host_t = 0; zfnet_host_t < zfnet_host_bl; ++zfnet_host_t) {{
            blockIdx.x = zfnet_host_rev ? zfnet_host_g - 1 - zfnet_host_b : zfnet_host_b;
            threadIdx.x = zfnet_host_rev ? zfnet_host_bl - 1 - zfnet_host_t : zfnet_host_t;
            {name}({call});
        }}
    }}
}}
"""


def translation_unit(ctype: str, sources: dict | None = None) -> str:
    """Shim, ``typedef``, every kernel source unchanged (under a ``#line`` naming it), drivers."""
    sources = sources or _kernels.SOURCES
    parts = [SHIM, f"typedef {ctype} T;\n"]
    for name, src in sources.items():
        parts.append(f'#line 1 "_kernels.py:{name}"\n{src}\n')
    parts.append('#line 1 "host-drivers"\n')
    parts += [_driver(name, signature(name, sources)) for name in sources]
    return "".join(parts)


_CTYPES = {"long long": ctypes.c_longlong, "int": ctypes.c_int}


def _guard(dtype, index: int):
    """The guard value of the ``index``-th buffer of a launch.

    Floating buffers: a quiet NaN whose payload names the buffer, so that a value
    read past the end of one buffer and written past the end of another still
    changes the second one's guard, and NaN spreads through any arithmetic on it.
    Index buffers: ``-1 - index``, so a switch read past the end scatters just
    before its plane (into the output's own guard for the first plane).
    """
    dtype = np.dtype(dtype)
    if dtype == np.float32:
        return np.array([0x7FC05A00 + index], np.uint32).view(np.float32)[0]
    if dtype == np.float64:
        return np.array([0x7FF8005A00000000 + index], np.uint64).view(np.float64)[0]
    return -1 - index


def poison(dtype) -> float | int:
    """The value unwritten memory is filled with: NaN, or a huge index for int64 buffers."""
    return np.nan if np.dtype(dtype).kind == "f" else -(1 << 62)


class HostKernel:
    """Kernel ``name`` compiled for the host; called like ``cupy.RawKernel``: ``k(grid, block, args)``."""

    def __init__(self, lib, name: str, dtype, sources: dict | None = None):
        self.name, self.dtype = name, np.dtype(dtype)
        self.params = signature(name, sources)
        self._fn = getattr(lib, f"zfnet_host_grid_{name}")
        tcls = ctypes.c_float if self.dtype == np.float32 else ctypes.c_double
        self._fn.argtypes = [ctypes.c_uint, ctypes.c_uint, ctypes.c_int] + [
            ctypes.c_void_p if p.pointer else (tcls if p.kind == "T" else _CTYPES[p.kind]) for p in self.params
        ]
        self._fn.restype = None

    def __call__(self, grid, block, args, *, reverse: bool = False):
        grid, block = tuple(grid), tuple(block)
        if len(grid) < 1 or any(g != 1 for g in grid[1:]) or len(block) < 1 or any(b != 1 for b in block[1:]):
            raise ValueError(f"{self.name}: the kernels index x only; got grid {grid}, block {block}")
        gx, bx = int(grid[0]), int(block[0])
        if not (1 <= gx < 2**31 and 1 <= bx <= 1024):
            raise ValueError(f"{self.name}: grid {gx} x block {bx} is not a valid CUDA launch")
        problems = check_args(self.name, self.dtype, tuple(args), self.params)
        if problems:
            raise TypeError("; ".join(problems))

        # Guarded copies: one per distinct buffer (an argument passed twice shares its copy).
        bufs, cargs = {}, []  # key -> [array, guarded buffer, pad, parameters passed it]
        for p, a in zip(self.params, args):
            if not p.pointer:
                cargs.append(a.item())
                continue
            key = (a.__array_interface__["data"][0], a.nbytes, a.dtype.str)
            if key not in bufs:
                for other in bufs.values():
                    if np.may_share_memory(a, other[0]):
                        raise ValueError(f"{self.name}({p.name}): overlaps another argument without being it")
                pad = max(64, a.size)
                buf = np.full(a.size + 2 * pad, _guard(a.dtype, len(bufs)), dtype=a.dtype)
                buf[pad:pad + a.size] = a.reshape(-1)
                bufs[key] = [a, buf, pad, []]
            a0, buf, pad, users = bufs[key]
            users.append(p)
            cargs.append(buf.ctypes.data + pad * buf.itemsize)

        def guards(buf, pad, size):
            return np.concatenate([buf[:pad], buf[pad + size:]]).view(np.uint8).copy()

        before = [guards(buf, pad, a.size) for a, buf, pad, _ in bufs.values()]
        self._fn(gx, bx, int(reverse), *cargs)

        for (a, buf, pad, users), guard in zip(bufs.values(), before):
            names = "/".join(p.name for p in users)
            if not np.array_equal(guard, guards(buf, pad, a.size)):
                raise AssertionError(f"{self.name}: wrote outside argument {names!r} ({a.size} elements)")
            inside = buf[pad:pad + a.size]
            if all(p.const for p in users):
                if not np.array_equal(inside.view(np.uint8), np.ascontiguousarray(a).reshape(-1).view(np.uint8)):
                    raise AssertionError(f"{self.name}: changed its const argument {names!r}")
            else:
                a.reshape(-1)[...] = inside


class HostModule:
    """All kernels of ``_kernels.SOURCES`` compiled into one shared library for one dtype."""

    def __init__(self, path: Path, dtype, sources: dict | None = None, warnings: str = ""):
        self.path, self.dtype, self.sources, self.warnings = path, np.dtype(dtype), sources, warnings
        self._lib = ctypes.CDLL(str(path))
        self._kernels = {}

    def get_function(self, name: str) -> HostKernel:
        if name not in self._kernels:
            self._kernels[name] = HostKernel(self._lib, name, self.dtype, self.sources)
        return self._kernels[name]


_MODULES: dict = {}
_CACHE_DIR: list = []


def host_module(dtype, compiler: str | None = None, sources: dict | None = None) -> HostModule:
    """Compile (once per process and source text) and load the host kernels for ``dtype``.

    ``sources`` (name -> text) replaces ``_kernels.SOURCES``, for the tests that plant a
    bug to show the emulation catches it.  The shared library is cached in a temporary
    folder of this process, named by a hash of the translation unit, the compiler and
    its flags.  Compiler errors are raised with the compiler's own message (``#line``
    names the kernel and the line in its source).
    """
    ctype = _kernels.ctype(dtype)
    compiler = compiler or find_compiler()
    if compiler is None:
        raise RuntimeError("no C++ compiler found (tried $CXX, g++, c++, clang++)")
    code = translation_unit(ctype, sources)
    digest = hashlib.sha256("\0".join((code, compiler) + _FLAGS).encode()).hexdigest()[:16]
    if digest in _MODULES:
        return _MODULES[digest]
    if not _CACHE_DIR:  # one folder per process, removed at exit (a loaded library may be unlinked)
        _CACHE_DIR.append(Path(tempfile.mkdtemp(prefix="zfnet-host-kernels-")))
        atexit.register(shutil.rmtree, _CACHE_DIR[0], True)
    so = _CACHE_DIR[0] / f"zfnet_{ctype}_{digest}.so"
    cpp = so.with_suffix(".cpp")
    cpp.write_text(code)
    proc = subprocess.run([compiler, *_FLAGS, str(cpp), "-o", str(so)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"host compile of the zfnet kernels ({ctype}) failed:\n{proc.stderr}")
    module = _MODULES[digest] = HostModule(so, dtype, sources, proc.stderr)
    return module


# -- CuPy stand-ins, so the launchers in _kernels.py run on NumPy arrays ------------------

def fake_cupy() -> types.ModuleType:
    """A module named ``cupy`` that is NumPy, except that ``empty``/``empty_like`` are poisoned.

    Installed as ``sys.modules["cupy"]`` it lets ``_kernels.conv2d`` & co. run on the
    host.  Fresh "uninitialised" arrays are filled with :func:`poison` values, so an
    output that a kernel should write but does not shows up, and an output a kernel
    scatter-adds into is visibly not zeroed unless the launcher asked for ``zeros``.
    """
    mod = types.ModuleType("cupy")
    mod.__doc__ = "NumPy standing in for CuPy (tests only)"

    def empty(shape, dtype=float, order="C"):
        return np.full(shape, poison(dtype), dtype=dtype, order=order)

    def empty_like(a, dtype=None, order="K", shape=None):
        out = np.empty_like(a, dtype=dtype, order=order, shape=shape)
        out[...] = poison(out.dtype)
        return out

    mod.empty, mod.empty_like = empty, empty_like
    mod.ndarray, mod.asnumpy = np.ndarray, np.asarray
    mod.__getattr__ = lambda attr: getattr(np, attr)  # everything else: NumPy's (PEP 562)
    return mod


_OPS_WITH_A_CUDA_BRANCH = ("zfnet.ops.conv", "zfnet.ops.pool", "zfnet.ops.norm", "zfnet.ops.activation")


def cuda_branch(monkeypatch, runner=None) -> "RecordingKernel":
    """Make NumPy arrays take the ops' ``if xp is cupy`` branches, with kernels recorded (and run).

    Installs :func:`fake_cupy` as ``sys.modules["cupy"]`` (the launchers import it),
    as ``zfnet.backend.cupy`` (so ``get_array_module`` returns it for NumPy arrays) and
    as the ``cupy`` each op module imported; ``_kernels.kernel`` becomes a
    :class:`RecordingKernel` factory.  ``runner(name, dtype)`` (e.g. a host module's
    ``get_function``) runs each launch; without it outputs keep their poison.
    ``monkeypatch`` undoes all of it after the test.
    """
    import importlib
    import sys

    fake = fake_cupy()
    rec = RecordingKernel(runner)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(importlib.import_module("zfnet.backend"), "cupy", fake)
    for name in _OPS_WITH_A_CUDA_BRANCH:
        monkeypatch.setattr(importlib.import_module(name), "cupy", fake)
    monkeypatch.setattr(_kernels, "kernel", rec.factory)
    return rec


@dataclass
class Launch:
    """What a launcher passed to one kernel: the recorded call (args as passed, not copied)."""

    name: str
    dtype: np.dtype
    grid: tuple
    block: tuple
    args: tuple
    zero_at_launch: dict  # scatter target parameter name -> bool (all zero when launched)


class RecordingKernel:
    """A stand-in for ``cupy.RawKernel`` that records each launch, and runs it on ``runner`` if given.

    ``runner(name, dtype)`` returns something called like a RawKernel (a
    :class:`HostKernel`); without one nothing runs and outputs keep their poison.
    """

    def __init__(self, runner=None):
        self.launches: list[Launch] = []
        self.runner = runner

    def factory(self, name: str, dtype_name: str):
        """Replacement for ``_kernels.kernel(name, dtype_name)``."""
        dtype = np.dtype({"float": np.float32, "double": np.float64}[dtype_name])

        def call(grid, block, args, **kwargs):
            if kwargs:
                raise TypeError(f"{name}: unexpected launch options {sorted(kwargs)}")
            params = signature(name)
            zero = {p.name: bool(isinstance(a, np.ndarray) and not np.any(a))
                    for p, a in zip(params, args) if p.name in scatter_targets(name)}
            self.launches.append(Launch(name, dtype, tuple(grid), tuple(block), tuple(args), zero))
            if self.runner is not None:
                self.runner(name, dtype)(grid, block, args)

        return call
