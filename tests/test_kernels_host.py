"""Every zfnet_* CUDA kernel, run on the CPU by host emulation, against the NumPy paths.

The kernel sources in ``zfnet/ops/_kernels.py`` are compiled UNCHANGED with the
system C++ compiler behind a shim (see ``tests/_cuda_host.py``): the CUDA index
variables become globals that a host loop steps through block by block, thread by
thread; ``atomicAdd`` is a plain add.  Each kernel runs

* on a deliberately small grid (3 blocks of 32 threads), so every grid-stride loop
  wraps several times, forwards and with blocks and threads in reverse order;
* on the grid the launcher would choose (``_kernels.launch``: 256 threads a block);

with every output poisoned (NaN, or a huge index) before the run and every array
in a guard zone that must survive.  The ops' ``if xp is cupy`` branches also run
end to end, with NumPy standing in for CuPy: the launchers in ``_kernels.py``
(``conv2d`` and the rest) allocate, reshape, multiply and launch on the grid they
choose, and each launch runs by host emulation.

Compared with the NumPy path: EXACTLY (equal values, NaN where NaN) for im2col,
col2im, the layout kernel, max-pool values and switches, unpooling and ReLU.
col2im sums its terms in the NumPy code's order, so its sums are identical;
unpooling's order depends on the grid (and on the device, on atomics), so it
scatters integer values, whose sums are exact in any order.  LRN is compared
within a tolerance: the kernel computes ``x * pow(s, -beta)`` where NumPy computes
``x / s**beta``, ``alpha / size`` rounds in T instead of in Python's double, and
``pow`` comes from another library; a few units in the last place (ulp) each, so
forward is held to 8 ulp of each value and backward (two terms that can cancel) to
16 ulp of the largest term.  On the device (the ``cuda`` runner, marked ``gpu``)
fused multiply-adds and CUDA's ``pow`` add a few ulp more: 64 and 128 ulp there.

What this does not check: CuPy's launch path (NVRTC, how CuPy marshals each
argument; ``tests/test_kernel_launch.py`` checks what the launchers pass), races
between threads that really run at once, device arithmetic, and speed.  Those
need the GPU: ``tests/test_kernels.py`` and ``benchmarks/gpu_check.sh``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import _cuda_host as host
from zfnet import ops
from zfnet.ops import _kernels
from zfnet.ops import pool as pool_mod
from zfnet.ops._shape import conv_out_size, conv_transpose_out_size, pool_out_size
from zfnet.ops.im2col import col2im, im2col

DTYPES = (np.float32, np.float64)
CONFIGS = ("small", "small-reversed", "launcher")  # see launch_config
COVERED = set()  # the kernels a test below runs; test_every_kernel_is_covered holds it to SOURCES

# the fixtures hold no per-example state (compiled modules; a launch log cleared per example)
few = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def covers(*names):
    COVERED.update(names)
    return lambda f: f


# -- runners: the host emulation, and (marked gpu) the real device --------------------------

@pytest.fixture(scope="session")
def compiler():
    cxx = host.find_compiler()
    if cxx is None:
        pytest.skip("host emulation of the CUDA kernels needs a C++ compiler ($CXX, g++, c++ or clang++); none found")
    return cxx


def _run_host(name, dtype, grid, block, args, reverse=False):
    host.host_module(dtype).get_function(name)(grid, block, args, reverse=reverse)


def _run_cuda(name, dtype, grid, block, args, reverse=False):
    import cupy

    problems = host.check_args(name, dtype, args)
    assert not problems, problems
    params = host.signature(name)
    # No memory pool: each array is its own cudaMalloc of its own size, so that
    # compute-sanitizer (benchmarks/gpu_check.sh) sees an access one past its end.
    with cupy.cuda.using_allocator(None):
        on_device = {}  # one device copy per host array, so an argument passed twice stays one buffer
        dev = [on_device.setdefault(id(a), cupy.asarray(a)) if isinstance(a, np.ndarray) else a for a in args]
        _kernels.kernel(name, _kernels.ctype(dtype))(tuple(grid), tuple(block), tuple(dev))
        cupy.cuda.get_current_stream().synchronize()
        for p, a, d in zip(params, args, dev):
            if p.pointer and not p.const:
                a[...] = cupy.asnumpy(d)


@dataclass(frozen=True)
class Runner:
    """``run(name, dtype, grid, block, args, reverse=False)`` writes outputs into the NumPy arrays;
    ``ulp`` scales the LRN tolerance (the device's ``pow`` and fused multiply-adds)."""

    run: object
    ulp: int
    ordered: bool  # whether the thread order can be chosen (the host's can, the device's cannot)


@pytest.fixture(scope="module", params=["host", pytest.param("cuda", marks=pytest.mark.gpu)])
def runner(request):
    if request.param == "host":
        cxx = request.getfixturevalue("compiler")
        for dtype in DTYPES:
            host.host_module(dtype, cxx)  # compile once per session; a compile error fails here
        return Runner(_run_host, 1, True)
    from zfnet.backend import cupy, gpu_available

    if cupy is None or not gpu_available():
        pytest.skip("the cuda runner needs CuPy and a CUDA device")
    return Runner(_run_cuda, 8, False)


def launch_config(config: str, total: int):
    """``(grid, block, reverse)`` for one of CONFIGS; 'launcher' is what ``_kernels.launch`` picks."""
    if config == "launcher":
        return (min(-(-total // _kernels._THREADS), _kernels._MAX_BLOCKS),), (_kernels._THREADS,), False
    return (3,), (32,), config == "small-reversed"


def run_all_configs(runner, name, dtype, make_args, check):
    """Run kernel ``name`` in each configuration on fresh poisoned outputs and ``check(args)``."""
    for config in CONFIGS:
        if config == "small-reversed" and not runner.ordered:
            continue  # the device picks its own order
        args = make_args()
        grid, block, reverse = launch_config(config, host.kernel_total(name, args))
        runner.run(name, dtype, grid, block, args, reverse=reverse)
        try:
            check(args)
        except AssertionError as e:
            raise AssertionError(f"{name} ({np.dtype(dtype).name}, grid {grid} x {block}, {config}): {e}") from None


def poisoned(shape, dtype):
    return np.full(shape, host.poison(dtype), dtype=dtype)


def same(got, want):
    """Exact equality: equal values, NaN exactly where NaN, same shape and dtype."""
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    np.testing.assert_array_equal(got, want, strict=True)


def ulp_close(got, want, ulps, scale=None):
    """Within ``ulps`` units of T's precision, of each value or of ``scale`` when given."""
    eps = np.finfo(want.dtype).eps
    got64, want64 = got.astype(np.float64), want.astype(np.float64)
    bound = ulps * eps * (np.abs(want64) if scale is None else scale)
    err = np.abs(got64 - want64)
    assert np.isfinite(got64).all() == np.isfinite(want64).all()
    bad = err > bound
    assert not bad.any(), f"{bad.sum()} of {bad.size} values off by more than {ulps} ulp; worst {err.max():.3g}"


# -- shapes -----------------------------------------------------------------------------------

@st.composite
def conv_geometry(draw):
    """Odd and even sizes, strides 1-3, padding up to k-1 (windows overhang), batch 1-3."""
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, kh - 1)), draw(st.integers(0, kw - 1))
    h, w = draw(st.integers(max(1, kh - 2 * ph), 13)), draw(st.integers(max(1, kw - 2 * pw), 13))
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**31 - 1))
    return dict(n=n, c=c, h=h, w=w, k=(kh, kw), s=(sh, sw), p=(ph, pw), dtype=dtype, seed=seed)


@st.composite
def pool_geometry(draw):
    """As the pooling op allows: padding up to k//2, floor or ceil mode (last window overhangs)."""
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    h, w = draw(st.integers(max(1, kh - 2 * ph), 13)), draw(st.integers(max(1, kw - 2 * pw), 13))
    ceil = draw(st.booleans())
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kind = draw(st.sampled_from(["normal", "ties", "inf", "nan"]))
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    x = rng.standard_normal((n, c, h, w)) if kind == "normal" else rng.integers(-2, 3, (n, c, h, w)).astype(float)
    if kind == "inf":
        x[x == 2], x[x == -2] = np.inf, -np.inf
    if kind == "nan":
        x[x == 2] = np.nan
    out = (pool_out_size(h, kh, sh, ph, ceil), pool_out_size(w, kw, sw, pw, ceil))
    return x.astype(dtype), (kh, kw), (sh, sw), (ph, pw), out


# -- the kernels one by one, on the runner --------------------------------------------------

@covers("zfnet_im2col")
@given(g=conv_geometry())
@few
def test_im2col(runner, g):
    n, c, h, w, (kh, kw), (sh, sw), (ph, pw), dtype = (g[k] for k in ("n", "c", "h", "w", "k", "s", "p", "dtype"))
    x = np.random.default_rng(g["seed"]).standard_normal((n, c, h, w)).astype(dtype)
    ho, wo = conv_out_size(h, kh, sh, ph), conv_out_size(w, kw, sw, pw)
    want = im2col(x, (kh, kw), (sh, sw), (ph, pw)).transpose(1, 2, 3, 0, 4, 5)  # (C, kH, kW, N, H_out, W_out)

    def make():
        return (x, poisoned(want.shape, dtype)) + _kernels._i64(n, c, h, w, kh, kw, sh, sw, ph, pw, ho, wo)

    run_all_configs(runner, "zfnet_im2col", dtype, make, lambda a: same(a[1], np.ascontiguousarray(want)))


@covers("zfnet_col2im")
@given(g=conv_geometry(), extra=st.integers(0, 2))
@few
def test_col2im(runner, g, extra):
    """The gather adds, for each output pixel, the columns that read it, in (i, j) order."""
    n, c, h, w, (kh, kw), (sh, sw), (ph, pw), dtype = (g[k] for k in ("n", "c", "h", "w", "k", "s", "p", "dtype"))
    hi, wi = conv_out_size(h, kh, sh, ph), conv_out_size(w, kw, sw, pw)
    # any output size whose forward convolution gives (hi, wi): rows past the last window get zero
    sizes_h = range(max(1, conv_transpose_out_size(hi, kh, sh, ph)), conv_transpose_out_size(hi, kh, sh, ph) + sh)
    sizes_w = range(max(1, conv_transpose_out_size(wi, kw, sw, pw)), conv_transpose_out_size(wi, kw, sw, pw) + sw)
    h, w = sizes_h[extra % len(sizes_h)], sizes_w[extra % len(sizes_w)]
    cols = np.random.default_rng(g["seed"]).standard_normal((c, kh, kw, n, hi, wi)).astype(dtype)
    want = col2im(cols.transpose(3, 0, 1, 2, 4, 5), (h, w), (sh, sw), (ph, pw))  # (N, C, H, W)

    def make():
        return (cols, poisoned((n, c, h, w), dtype)) + _kernels._i64(n, c, h, w, kh, kw, sh, sw, ph, pw, hi, wi)

    run_all_configs(runner, "zfnet_col2im", dtype, make, lambda a: same(a[1], np.ascontiguousarray(want)))


@covers("zfnet_cnp_to_ncp")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", ["bias", "none", "none-aliased"])
@pytest.mark.parametrize("n, c, p", [(1, 1, 1), (3, 5, 7), (2, 6, 169), (4, 3, 55)])
def test_cnp_to_ncp(runner, dtype, bias, n, c, p):
    """(C, N, P) -> (N, C, P) plus bias; without a bias the bias pointer is never read."""
    rng = np.random.default_rng(n * 100 + c * 10 + p)
    t = rng.standard_normal((c, n, p)).astype(dtype)
    b = rng.standard_normal(c).astype(dtype) if bias == "bias" else np.full(c, np.nan, dtype)
    want = t.transpose(1, 0, 2) + (b.reshape(1, c, 1) if bias == "bias" else 0)

    def make():
        y = poisoned((n, c, p), dtype)
        return (t, y if bias == "none-aliased" else b, y) + _kernels._i64(n, c, p) + (np.int32(bias == "bias"),)

    run_all_configs(runner, "zfnet_cnp_to_ncp", dtype, make, lambda a: same(a[2], want.astype(dtype)))


@covers("zfnet_max_pool2d")
@given(setup=pool_geometry())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_max_pool2d(runner, setup):
    """Values and switches identical to the readable loop, the reference of every pooling path."""
    x, (kh, kw), (sh, sw), (ph, pw), (ho, wo) = setup
    n, c, h, w = x.shape
    yr, swr = pool_mod._max_pool2d_windows(x, (kh, kw), (sh, sw), (ph, pw), (ho, wo))

    def make():
        return (x, poisoned((n, c, ho, wo), x.dtype), poisoned((n, c, ho, wo), np.int64)) + _kernels._i64(
            n * c, h, w, ho, wo, kh, kw, sh, sw, ph, pw)

    def check(a):
        same(a[1], yr)
        same(a[2], swr)

    run_all_configs(runner, "zfnet_max_pool2d", x.dtype, make, check)


@covers("zfnet_max_unpool2d")
@given(setup=pool_geometry(), random_switches=st.booleans())
@few
def test_max_unpool2d(runner, setup, random_switches):
    """Scatter-add: colliding switches add.  Integer values, so every summation order is exact."""
    x, k, s, p, (ho, wo) = setup
    n, c, h, w = x.shape
    rng = np.random.default_rng(int(np.nansum(np.abs(x[np.isfinite(x)]) * 1000)) % 2**31)
    _, switches = pool_mod._max_pool2d_windows(x, k, s, p, (ho, wo))
    if random_switches:  # many collisions: a few targets per plane
        switches = rng.integers(0, min(3, h * w), (n, c, ho, wo)).astype(np.int64)
    if (switches < 0).any() or (switches >= h * w).any():
        switches = np.clip(switches, 0, h * w - 1)  # an all-padding window's switch: not for unpooling
    y = rng.integers(-8, 9, (n, c, ho, wo)).astype(x.dtype)
    want = ops.max_unpool2d(y, switches, (h, w))

    def make():
        return (y, switches, np.zeros((n, c, h, w), x.dtype)) + _kernels._i64(n * c, ho * wo, h * w)

    run_all_configs(runner, "zfnet_max_unpool2d", x.dtype, make, lambda a: same(a[2], want))


@st.composite
def lrn_setups(draw):
    n, c, h, w = draw(st.integers(1, 3)), draw(st.integers(1, 9)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
    size = draw(st.integers(1, 7))  # even sizes: the window is asymmetric (size/2 before, (size-1)/2 after)
    alpha, beta = draw(st.floats(1e-5, 1.0)), draw(st.floats(0.1, 1.0))
    k = draw(st.floats(0.5, 3.0))
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    x = (rng.standard_normal((n, c, h, w)) * 3).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    return x, dy, size, alpha, beta, k


@covers("zfnet_lrn_forward")
@given(setup=lrn_setups())
@few
def test_lrn_forward(runner, setup):
    x, _, size, alpha, beta, k = setup
    n, c = x.shape[:2]
    p = x[0, 0].size
    want = ops.lrn(x, size, alpha, beta, k)
    f = x.dtype.type

    def make():
        return (x, poisoned(x.shape, x.dtype)) + _kernels._i64(n, c, p, size) + (f(alpha), f(beta), f(k))

    run_all_configs(runner, "zfnet_lrn_forward", x.dtype, make, lambda a: ulp_close(a[1], want, 8 * runner.ulp))


@covers("zfnet_lrn_backward")
@given(setup=lrn_setups())
@few
def test_lrn_backward(runner, setup):
    x, dy, size, alpha, beta, k = setup
    n, c = x.shape[:2]
    p = x[0, 0].size
    y = ops.lrn(x, size, alpha, beta, k)
    want = ops.lrn_backward(x, y, dy, size, alpha, beta, k)
    # dx = a - b: held to the size of the larger term, not of the (possibly cancelled) difference
    direct = np.abs(dy.astype(np.float64)) * k ** -beta
    scale = np.maximum(direct, np.abs(want.astype(np.float64))).max()
    f = x.dtype.type

    def make():
        return (x, y, dy, poisoned(x.shape, x.dtype)) + _kernels._i64(n, c, p, size) + (f(alpha), f(beta), f(k))

    run_all_configs(runner, "zfnet_lrn_backward", x.dtype, make,
                    lambda a: ulp_close(a[3], want, 16 * runner.ulp, scale=scale))


@covers("zfnet_relu")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [1, 31, 97, 1000])
def test_relu(runner, dtype, size):
    x = np.random.default_rng(size).standard_normal(size).astype(dtype)
    x[::7] = np.nan
    x[1::11], x[2::13], x[3::5] = np.inf, -np.inf, -0.0
    run_all_configs(runner, "zfnet_relu", dtype, lambda: (x, poisoned(size, dtype), np.int64(size)),
                    lambda a: same(a[1], np.maximum(x, 0)))


def test_every_kernel_is_covered():
    """A kernel added to _kernels.SOURCES needs a host test here."""
    assert COVERED == set(_kernels.SOURCES), f"not run by host emulation: {set(_kernels.SOURCES) - COVERED}"


# -- the ops' CUDA branches end to end: launchers, their grids, host-emulated kernels ------

@pytest.fixture
def on_cuda(compiler, monkeypatch):
    """``on_cuda(op, *args)``: ``op``'s ``if xp is cupy`` branch on NumPy arrays, kernels run on the host.

    NumPy stands in for CuPy (``_cuda_host.cuda_branch``): the op computes its sizes,
    calls its launcher in ``_kernels.py``, which allocates, reshapes, multiplies and
    launches on the grid ``_kernels.launch`` chooses; each launch runs by host
    emulation.  ``on_cuda.launches`` logs them (tests clear it per example).
    """
    def run(name, dtype):
        return host.host_module(dtype, compiler).get_function(name)

    def call(op, *args, **kwargs):
        with monkeypatch.context() as m:
            rec = host.cuda_branch(m, runner=run)
            out = op(*args, **kwargs)
        call.launches.extend(rec.launches)
        return out

    call.launches = []
    return call


def close(got, want):
    """Two GEMMs of different shapes round differently: 1e-5 (float32) / 1e-12 (float64) of the largest value."""
    rel = 1e-5 if want.dtype == np.float32 else 1e-12
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
    np.testing.assert_allclose(got, want, rtol=0, atol=rel * max(1.0, float(np.abs(want).max(initial=0))))


@given(g=conv_geometry(), groups=st.sampled_from([1, 2, 3]), og=st.integers(1, 3), has_bias=st.booleans(),
       layout=st.sampled_from(["contiguous", "strided", "float64 weights"]))
@few
def test_conv_ops_on_the_cuda_branch(on_cuda, g, groups, og, has_bias, layout):
    """conv2d = im2col kernel + GEMM + layout kernel; conv_transpose2d = GEMM + col2im kernel."""
    on_cuda.launches.clear()
    n, c, h, w, k, s, p, dtype = (g[key] for key in ("n", "c", "h", "w", "k", "s", "p", "dtype"))
    rng = np.random.default_rng(g["seed"])
    x = rng.standard_normal((n, c * groups, h, w)).astype(dtype)
    wt = rng.standard_normal((og * groups, c, *k)).astype(dtype)
    if layout == "strided":  # a view the launcher must make contiguous
        x = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)[:, ::-1]
    if layout == "float64 weights":
        wt = wt.astype(np.float64)
    b = rng.standard_normal(og * groups).astype(dtype) if has_bias else None
    y = on_cuda(ops.conv2d, x, wt, b, s, p, groups)
    close(y, ops.conv2d(x, wt, b, s, p, groups))
    gy = rng.standard_normal(y.shape).astype(y.dtype)
    bx = rng.standard_normal(c * groups).astype(dtype) if has_bias else None
    got = on_cuda(ops.conv_transpose2d, gy, wt, bx, s, p, groups, output_size=(h, w))
    close(got, ops.conv_transpose2d(gy, wt, bx, s, p, groups, output_size=(h, w)))
    assert [launch.name for launch in on_cuda.launches] == ["zfnet_im2col", "zfnet_cnp_to_ncp", "zfnet_col2im"]


@given(x=pool_geometry().map(lambda t: t[0]), k=st.integers(1, 4), s=st.integers(1, 3), ceil=st.booleans(),
       data=st.data())
@few
def test_pool_ops_on_the_cuda_branch(on_cuda, x, k, s, ceil, data):
    p = data.draw(st.integers(0, k // 2))
    h, w = x.shape[2:]
    if min(h, w) + 2 * p < k:
        x = np.pad(x, ((0, 0), (0, 0), (0, k), (0, k)))
        h, w = x.shape[2:]
    y, sw = on_cuda(ops.max_pool2d, x, k, s, p, ceil)
    yr, swr = ops.max_pool2d(x, k, s, p, ceil)
    same(y, yr)
    same(sw, swr)
    if (sw < 0).any() or (sw >= h * w).any():
        return  # an all-padding window: unpooling refuses such switches (on both branches)
    g = np.random.default_rng(3).integers(-8, 9, y.shape).astype(x.dtype)
    same(on_cuda(ops.max_unpool2d, g, sw, x.shape), ops.max_unpool2d(g, sw, x.shape))


@given(setup=lrn_setups(), shape=st.sampled_from(["4-D", "3-D", "5-D"]))
@few
def test_lrn_and_relu_ops_on_the_cuda_branch(on_cuda, setup, shape):
    x, dy, size, alpha, beta, k = setup
    if shape != "4-D":  # LRN takes any (N, C, ...)
        new = x.shape[:2] + ((-1,) if shape == "3-D" else (x.shape[2], 1, x.shape[3]))
        x, dy = x.reshape(new), dy.reshape(new)
    y = on_cuda(ops.lrn, x, size, alpha, beta, k)
    ulp_close(y, ops.lrn(x, size, alpha, beta, k), 8)
    want = ops.lrn_backward(x, y, dy, size, alpha, beta, k)
    scale = np.maximum(np.abs(dy.astype(np.float64)) * k ** -beta, np.abs(want.astype(np.float64))).max()
    ulp_close(on_cuda(ops.lrn_backward, x, y, dy, size, alpha, beta, k), want, 16, scale=scale)
    same(on_cuda(ops.relu, x), ops.relu(x))


def test_ops_on_a_grid_that_wraps(on_cuda, monkeypatch):
    """ZFNet-like layers with the launcher's grid capped at 2 blocks of 32: its loops wrap too."""
    monkeypatch.setattr(_kernels, "_MAX_BLOCKS", 2)
    monkeypatch.setattr(_kernels, "_THREADS", 32)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 6, 27, 27)).astype(np.float32)
    wt = rng.standard_normal((4, 3, 5, 5)).astype(np.float32)
    y = on_cuda(ops.conv2d, x, wt, None, 2, 2, 2)
    close(y, ops.conv2d(x, wt, None, 2, 2, 2))
    close(on_cuda(ops.conv_transpose2d, y, wt, None, 2, 2, 2, output_size=(27, 27)),
          ops.conv_transpose2d(y, wt, None, 2, 2, 2, output_size=(27, 27)))
    pooled, sw = on_cuda(ops.max_pool2d, x, 3, 2, 0, True)
    same(pooled, ops.max_pool2d(x, 3, 2, 0, True)[0])
    ones = np.ones_like(pooled)
    same(on_cuda(ops.max_unpool2d, ones, sw, x.shape), ops.max_unpool2d(ones, sw, x.shape))
    ulp_close(on_cuda(ops.lrn, x, 5, 1e-4, 0.75, 2.0), ops.lrn(x, 5, 1e-4, 0.75, 2.0), 8)
    same(on_cuda(ops.relu, x), ops.relu(x))
    assert len(on_cuda.launches) == 7
    assert all(launch.grid == (2,) and launch.block == (32,) for launch in on_cuda.launches)


# -- the same sources through CUDA's own compiler, where one is installed --------------------

@pytest.mark.parametrize("ctype", ["float", "double"])
def test_sources_compile_with_nvcc(ctype, tmp_path):
    """Each source, as ``kernel()`` hands it to NVRTC, compiles for sm_90 with warnings as errors.

    nvcc is not NVRTC (CuPy's compiler), but both take the same CUDA C++ front end; this
    catches a source that the host shim accepts and CUDA would not.  Skips without nvcc.
    """
    import shutil
    import subprocess

    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found: the CUDA compile check needs the CUDA toolkit (the host emulation does not)")
    for name, src in _kernels.SOURCES.items():
        (tmp_path / f"{name}.cu").write_text(f"typedef {ctype} T;\n" + src)
    cmd = [nvcc, "-std=c++14", "-arch=sm_90", "-ptx", "-Werror", "all-warnings"]
    for name in _kernels.SOURCES:
        cmd_one = cmd + [str(tmp_path / f"{name}.cu"), "-o", str(tmp_path / f"{name}.ptx")]
        proc = subprocess.run(cmd_one, capture_output=True, text=True)
        assert proc.returncode == 0, f"{name} ({ctype}):\n{proc.stderr}"
        assert f".entry {name}(" in (tmp_path / f"{name}.ptx").read_text()


# -- the emulation itself: it must catch what it claims to catch ------------------------------

def test_emulation_catches_planted_bugs(compiler):
    """An overrun, a loop that does not stride over the grid, and an unzeroed scatter are caught."""
    relu = _kernels.SOURCES["zfnet_relu"]
    planted = {
        "zfnet_relu_overrun": relu.replace("zfnet_relu", "zfnet_relu_overrun").replace("t < total;", "t <= total;"),
        "zfnet_relu_no_stride": relu.replace("zfnet_relu", "zfnet_relu_no_stride").replace(
            "t += (long long)blockDim.x * gridDim.x", "t += total"),
    }
    assert all(src != relu for src in planted.values())
    mod = host.host_module(np.float32, compiler, sources=planted)
    x = np.arange(-50, 50, dtype=np.float32)
    y = poisoned(100, np.float32)
    with pytest.raises(AssertionError, match="wrote outside argument 'y'"):
        mod.get_function("zfnet_relu_overrun")((3,), (32,), (x, y, np.int64(100)))
    y = poisoned(100, np.float32)
    mod.get_function("zfnet_relu_no_stride")((3,), (32,), (x, y, np.int64(100)))
    assert np.isnan(y[96:]).all() and not np.isnan(y[:96]).any()  # 3 x 32 threads wrote 96 values only
    with pytest.raises(TypeError, match=r"long long needs numpy.int64, got builtins.int"):
        host.host_module(np.float32, compiler).get_function("zfnet_relu")((1,), (32,), (x, y, 100))
    with pytest.raises(TypeError, match="array of float64"):
        host.host_module(np.float32, compiler).get_function("zfnet_relu")((1,), (32,), (x.astype(float), y,
                                                                                     np.int64(100)))
