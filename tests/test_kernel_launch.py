"""What each launcher in ``zfnet/ops/_kernels.py`` passes to its kernel, checked without a GPU.

NumPy stands in for CuPy and a recording object for ``cupy.RawKernel``
(``tests/_cuda_host.py``): every op's ``if xp is cupy`` branch runs on NumPy arrays,
calls its launcher, and each launch is logged instead of run.  Then, for every launch:

* each scalar has the exact C type of the kernel's signature, read off the source
  text: ``numpy.int64`` for ``long long``, ``numpy.int32`` for ``int``, the array
  dtype's scalar for ``T``.  CuPy sends a NumPy scalar by its own width and a Python
  scalar by its own conversion rule, so a Python ``int`` or a ``float64`` for a
  ``float T`` would reach the kernel as the wrong bytes;
* each array has the pointee's dtype, is C-contiguous (the kernels index flat
  memory) and, when written, writeable; no written array overlaps another argument
  (the kernels say ``__restrict__``), except the unused bias pointer of
  ``zfnet_cnp_to_ncp`` without a bias;
* the grid is the one ``_kernels.launch`` promises, 256-thread blocks and
  ``min(ceil(total / 256), 65536)`` blocks, with ``total`` the kernel's own loop
  count evaluated on the passed scalars, so the launcher's ``total`` agrees with the
  kernel; every output the kernel assigns has exactly ``total`` elements;
* an output the kernel scatter-adds into (``atomicAdd``) is all zeros at launch;
  every other output is allocated uninitialised (here: poisoned) and must not need
  zeros.

Not checked here: the values the kernels compute (``tests/test_kernels_host.py``
runs them by host emulation), and CuPy itself.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

import _cuda_host as host
from zfnet import ops
from zfnet.ops import _kernels

# a written argument that may alias a read one: (kernel, written, read, condition on the scalars)
ALLOWED_ALIASES = {("zfnet_cnp_to_ncp", "y", "bias"): lambda s: s["has_bias"] == 0}  # bias unused then


def _rng():
    return np.random.default_rng(0)


def _f32(*shape):
    return _rng().standard_normal(shape).astype(np.float32)


def _f64(*shape):
    return _rng().standard_normal(shape)


def _strided(a):
    """The same values in a non-contiguous view (last two axes transposed in memory)."""
    return np.ascontiguousarray(a.swapaxes(-1, -2)).swapaxes(-1, -2)


def _switches(x, k, s, p=0):
    return ops.max_pool2d(x, k, s, p, True)[1]


CONV = ["zfnet_im2col", "zfnet_cnp_to_ncp"]  # conv2d: columns, GEMM, back to NCHW
X = (2, 7, 3, 3)

# (id, op, arguments, the kernels it must launch); each runs through the op's CUDA branch
CASES = [
    ("conv2d", ops.conv2d, lambda: (_f32(2, 3, 11, 11), _f32(4, 3, 3, 3), _f32(4), 2, 1), CONV),
    ("conv2d-groups-nobias", ops.conv2d, lambda: (_f32(1, 4, 9, 7), _f32(6, 2, 3, 2), None, (2, 1), (1, 0), 2), CONV),
    ("conv2d-float64", ops.conv2d, lambda: (_f64(2, 2, 8, 8), _f64(3, 2, 5, 5), _f64(3), 1, 2), CONV),
    ("conv2d-mixed-strided", ops.conv2d, lambda: (_strided(_f32(2, 2, 9, 6)), _f64(3, 2, 3, 3), None, 2), CONV),
    ("conv_transpose2d", ops.conv_transpose2d, lambda: (_f32(2, 4, 5, 5), _f32(4, 3, 3, 3), None, 2, 1, 1, (10, 10)),
     ["zfnet_col2im"]),
    ("conv_transpose2d-groups-bias", ops.conv_transpose2d,
     lambda: (_strided(_f32(1, 6, 4, 5)), _f32(6, 2, 3, 3), _f32(6), 1, 0, 3), ["zfnet_col2im"]),
    ("max_pool2d", ops.max_pool2d, lambda: (_f32(2, 3, 13, 13), 3, 2, 0, False), ["zfnet_max_pool2d"]),
    ("max_pool2d-ceil-pad-float64", ops.max_pool2d,
     lambda: (_strided(_f64(1, 2, 10, 9)), (3, 2), (2, 2), (1, 1), True), ["zfnet_max_pool2d"]),
    ("max_unpool2d", ops.max_unpool2d, lambda: (_f32(2, 3, 6, 6), _switches(_f32(2, 3, 13, 13), 3, 2), (13, 13)),
     ["zfnet_max_unpool2d"]),
    ("max_unpool2d-strided-float64", ops.max_unpool2d,
     lambda: (_strided(_f64(1, 2, 5, 5)), _strided(_switches(_f64(1, 2, 9, 9), 3, 2, 1)), (1, 2, 9, 9)),
     ["zfnet_max_unpool2d"]),
    ("lrn", ops.lrn, lambda: (_f32(2, 7, 5, 5), 5, 1e-4, 0.75, 2.0), ["zfnet_lrn_forward"]),
    ("lrn-3d-float64-intparams", ops.lrn, lambda: (_f64(2, 6, 9), 4, 1, 1, 1), ["zfnet_lrn_forward"]),
    ("lrn_backward", ops.lrn_backward, lambda: (_f32(*X), _f32(*X), _f32(*X), 5, 1e-4, 0.75, 2.0),
     ["zfnet_lrn_backward"]),
    ("lrn_backward-strided-float64", ops.lrn_backward,
     lambda: (_strided(_f64(*X)), _f64(*X), _strided(_f64(*X)), 2, 1e-3, 0.5, 1), ["zfnet_lrn_backward"]),
    ("relu", ops.relu, lambda: (_f32(3, 5, 7),), ["zfnet_relu"]),
    ("relu-strided-float64", ops.relu, lambda: (_strided(_f64(2, 3, 4)),), ["zfnet_relu"]),
]


def check_launch(launch) -> list[str]:
    """Every problem with one recorded launch (empty when it is as the kernel expects)."""
    name, args = launch.name, launch.args
    problems = host.check_args(name, launch.dtype, args)
    if problems:
        return problems  # the rest reads the scalars as the signature says
    params = host.signature(name)
    scalars = {p.name: int(a) for p, a in zip(params, args) if not p.pointer}
    total = host.kernel_total(name, args)
    want_grid = (min(-(-total // _kernels._THREADS), _kernels._MAX_BLOCKS),)
    if launch.grid != want_grid or launch.block != (_kernels._THREADS,):
        problems.append(f"{name}: grid {launch.grid} x block {launch.block}, expected {want_grid} x "
                        f"({_kernels._THREADS},) for {total} outputs")
    scatter = host.scatter_targets(name)
    for p, a in zip(params, args):
        if not p.pointer or p.const:
            continue
        if p.name in scatter:
            if not launch.zero_at_launch[p.name]:
                problems.append(f"{name}({p.name}): scatter-add target not zeroed before the launch")
        elif a.size != total:
            problems.append(f"{name}({p.name}): output has {a.size} elements, the kernel writes {total}")
        for q, b in zip(params, args):
            if q is p or not q.pointer or not np.may_share_memory(a, b):
                continue
            allowed = ALLOWED_ALIASES.get((name, p.name, q.name))
            if allowed is None or not allowed(scalars):
                problems.append(f"{name}({p.name}): written array overlaps argument {q.name!r}")
    return problems


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_launch_arguments(case, monkeypatch):
    _, op, make_args, kernels = case
    args = make_args()  # on the NumPy path (the unpooling cases pool first)
    rec = host.cuda_branch(monkeypatch)  # record only: no kernel runs, outputs stay poisoned
    op(*args)
    assert [launch.name for launch in rec.launches] == kernels
    for launch in rec.launches:
        assert not check_launch(launch), check_launch(launch)
    for launch in rec.launches:  # one T per launch, the one it was compiled for
        floats = {a.dtype for a in launch.args if isinstance(a, np.ndarray) and a.dtype.kind == "f"}
        assert floats == {launch.dtype}, (launch.name, floats, launch.dtype)


def test_every_kernel_is_launched_by_some_op():
    assert {k for case in CASES for k in case[3]} == set(_kernels.SOURCES)


def test_launch_grid(monkeypatch):
    """``launch``: nothing for no outputs, one block for a few, the cap for many (grid-stride beyond)."""
    calls = []
    def kernel(name, t):
        return lambda grid, block, args: calls.append((name, t, grid, block))

    monkeypatch.setattr(_kernels, "kernel", kernel)
    for total in (0, 1, 256, 257, 256 * 65536, 256 * 65536 + 1, 10**12):
        _kernels.launch("zfnet_relu", np.float64, total, ())
    assert [c[2] for c in calls] == [(1,), (1,), (2,), (65536,), (65536,), (65536,)]
    assert {(c[0], c[1], c[3]) for c in calls} == {("zfnet_relu", "double", (256,))}


def test_kernel_compiles_each_source_with_its_typedef(monkeypatch):
    """``kernel(name, t)`` hands NVRTC ``typedef t T;`` plus the named source, and asks for that function."""
    seen = []

    class RawModule:
        def __init__(self, code, options=()):
            seen.append((code, options))

        def get_function(self, name):
            seen.append(name)
            return name

    fake = host.fake_cupy()
    fake.RawModule = RawModule
    monkeypatch.setitem(sys.modules, "cupy", fake)
    uncached = _kernels.kernel.__wrapped__  # the lru_cache would keep these fakes for real GPU runs
    for name, src in _kernels.SOURCES.items():
        for t in ("float", "double"):
            seen.clear()
            assert uncached(name, t) == name
            (code, options), fn = seen
            assert code == f"typedef {t} T;\n" + src and fn == name and "--std=c++14" in options


def test_the_checks_catch_wrong_arguments():
    """The checker is not vacuous: each kind of wrong argument is named."""
    x = np.zeros(10, np.float32)
    bad = [
        ((x, x.copy(), 10), "long long needs numpy.int64, got builtins.int"),
        ((x, x.copy(), np.int32(10)), "long long needs numpy.int64, got numpy.int32"),
        ((x.astype(np.float64), x.copy(), np.int64(10)), "array of float64"),
        ((np.zeros((4, 5), np.float32).T, x.copy(), np.int64(10)), "not C-contiguous"),
        ((x, 3.0, np.int64(10)), "expected an array"),
    ]
    for args, message in bad:
        problems = host.check_args("zfnet_relu", np.float32, args)
        assert any(message in p for p in problems), (message, problems)
    assert host.check_args("zfnet_lrn_forward", np.float32, (x, x.copy()) + _kernels._i64(1, 10, 1, 5) + (
        np.float32(1e-4), np.float64(0.75), 2.0)) == [
        "zfnet_lrn_forward(beta): T needs numpy.float32, got numpy.float64 0.75",
        "zfnet_lrn_forward(k): T needs numpy.float32, got builtins.float 2.0",
    ]
    # grid / zeroing / aliasing / output size
    y = np.ones(10, np.float32)
    launch = host.Launch("zfnet_max_unpool2d", np.dtype(np.float32), (1,), (256,),
                         (x, np.zeros(10, np.int64), y) + _kernels._i64(1, 10, 10), {"x": False})
    assert check_launch(launch) == ["zfnet_max_unpool2d(x): scatter-add target not zeroed before the launch"]
    launch = host.Launch("zfnet_relu", np.dtype(np.float32), (2,), (256,), (x, x, np.int64(10)), {})
    assert check_launch(launch) == [
        "zfnet_relu: grid (2,) x block (256,), expected (1,) x (256,) for 10 outputs",
        "zfnet_relu(y): written array overlaps argument 'x'",
    ]
    launch = host.Launch("zfnet_relu", np.dtype(np.float32), (1,), (256,),
                         (x, np.zeros(20, np.float32), np.int64(10)), {})
    assert check_launch(launch) == ["zfnet_relu(y): output has 20 elements, the kernel writes 10"]
