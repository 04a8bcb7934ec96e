"""The CUDA kernels (zfnet.ops._kernels) against the NumPy paths: backend parity.

Each test runs once per backend through the ``xp`` fixture: on NumPy it only checks
that the op round-trips plain arrays; on CuPy (marked ``gpu``, skipped without a
device) every kernel is compared with the readable NumPy code on random shapes,
strides, paddings and awkward values (ties, infinities, NaN).  Max-pool values and
switches must be identical; sums agree to float rounding (atomic adds in unpooling
and cuBLAS's summation order differ from NumPy's).

Without a GPU the same kernels still run in CI: ``tests/test_kernels_host.py``
compiles each source for the CPU and runs its whole grid there (its ``cuda``
runner repeats those checks on the device, on grids small enough to wrap), and
``tests/test_kernel_launch.py`` checks what each launcher passes to its kernel.
``benchmarks/gpu_check.sh`` runs everything marked ``gpu`` on a lent machine.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zfnet import ops
from zfnet.backend import asnumpy
from zfnet.ops import pool as pool_mod
from zfnet.ops._shape import pool_out_size

gpu_settings = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def close(a, b, rel=1e-5):
    a, b = np.asarray(asnumpy(a), np.float64), np.asarray(asnumpy(b), np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_allclose(a, b, rtol=0, atol=rel * max(1.0, float(np.abs(b).max(initial=0.0))))


def test_every_kernel_compiles(xp):
    """All sources compile for float and double (NVRTC through CuPy)."""
    if xp is np:
        pytest.skip("compiling CUDA needs CuPy")
    from zfnet.ops import _kernels

    for name in _kernels.SOURCES:
        for t in ("float", "double"):
            assert _kernels.kernel(name, t) is not None


@st.composite
def conv_setups(draw):
    groups = draw(st.sampled_from([1, 2, 3]))
    cg, og = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, kh - 1)), draw(st.integers(0, kw - 1))
    h, w = draw(st.integers(max(1, kh - 2 * ph), 15)), draw(st.integers(max(1, kw - 2 * pw), 15))
    n = draw(st.integers(1, 3))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    x = rng.standard_normal((n, cg * groups, h, w)).astype(dtype)
    wt = rng.standard_normal((og * groups, cg, kh, kw)).astype(dtype)
    b = rng.standard_normal(og * groups).astype(dtype) if draw(st.booleans()) else None
    return x, wt, b, (sh, sw), (ph, pw), groups


@given(setup=conv_setups())
@gpu_settings
def test_conv_kernels_match_numpy(xp, setup):
    x, w, b, stride, padding, groups = setup
    X, W = xp.asarray(x), xp.asarray(w)
    B = None if b is None else xp.asarray(b)
    y = ops.conv2d(X, W, B, stride, padding, groups)
    assert type(y) is type(X) and y.dtype == x.dtype
    close(y, ops.conv2d(x, w, b, stride, padding, groups))
    g = np.random.default_rng(1).standard_normal(y.shape).astype(x.dtype)
    for dh in range(stride[0]):  # every output size the forward could have come from
        size = (x.shape[2] + dh, x.shape[3])
        if ops.conv_out_size(size[0], w.shape[2], stride[0], padding[0]) != y.shape[2]:
            continue
        got = ops.conv_transpose2d(xp.asarray(g), W, None, stride, padding, groups, output_size=size)
        close(got, ops.conv_transpose2d(g, w, None, stride, padding, groups, output_size=size))


@st.composite
def pool_setups(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    ceil = draw(st.booleans())
    h, w = draw(st.integers(max(1, kh - 2 * ph), 13)), draw(st.integers(max(1, kw - 2 * pw), 13))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    kind = draw(st.sampled_from(["normal", "ties", "inf", "nan"]))
    x = rng.standard_normal((2, 3, h, w)) if kind == "normal" else rng.integers(-2, 3, (2, 3, h, w)).astype(float)
    if kind == "inf":
        x[x == 2], x[x == -2] = np.inf, -np.inf
    if kind == "nan":
        x[x == 2] = np.nan
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return x.astype(dtype), (kh, kw), (sh, sw), (ph, pw), ceil


@given(setup=pool_setups())
@gpu_settings
def test_pool_kernels_match_numpy(xp, setup):
    x, k, s, p, ceil = setup
    y, sw = ops.max_pool2d(xp.asarray(x), k, s, p, ceil)
    out = tuple(pool_out_size(n, kk, ss, pp, ceil) for n, kk, ss, pp in zip(x.shape[2:], k, s, p))
    yr, swr = pool_mod._max_pool2d_windows(x, k, s, p, out)  # the readable loop
    np.testing.assert_array_equal(asnumpy(y), yr)
    np.testing.assert_array_equal(asnumpy(sw), swr)
    assert asnumpy(sw).dtype == np.int64
    if np.isnan(x).any() or (swr < 0).any() or (swr >= x.shape[2] * x.shape[3]).any():
        return  # unpooling needs switches inside the planes
    g = np.random.default_rng(2).standard_normal(yr.shape).astype(x.dtype)
    close(ops.max_unpool2d(xp.asarray(g), sw, x.shape), ops.max_unpool2d(g, swr, x.shape))


@given(size=st.integers(1, 7), alpha=st.floats(1e-5, 1.0), beta=st.floats(0.1, 1.0), k=st.floats(0.5, 3.0),
       seed=st.integers(0, 999), dtype=st.sampled_from([np.float32, np.float64]))
@gpu_settings
def test_lrn_kernels_match_numpy(xp, size, alpha, beta, k, seed, dtype):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((2, 9, 4, 3)) * 3).astype(dtype)
    y = ops.lrn(xp.asarray(x), size, alpha, beta, k)
    yr = ops.lrn(x, size, alpha, beta, k)
    close(y, yr)
    dy = rng.standard_normal(x.shape).astype(dtype)
    close(ops.lrn_backward(xp.asarray(x), y, xp.asarray(dy), size, alpha, beta, k),
          ops.lrn_backward(x, yr, dy, size, alpha, beta, k))


def test_relu_kernel_matches_numpy(xp):
    x = np.array([[-1.5, 0.0, 2.0, np.nan, -np.inf, np.inf]], np.float32)
    np.testing.assert_array_equal(asnumpy(ops.relu(xp.asarray(x))), np.maximum(x, 0))


def test_networks_and_projection_match_numpy(xp):
    """ZFNet's forward and a windowed projection on the backend equal the NumPy ones."""
    from zfnet.deconvnet import project_units
    from zfnet.deconvnet.windowed import project_units_windowed
    from zfnet.models import zfnet

    x = np.random.default_rng(3).standard_normal((2, 3, 224, 224)).astype(np.float32)
    cpu = zfnet()
    trace = cpu.forward(x, upto="conv5")
    dev = zfnet().to("gpu" if xp is not np else "cpu")
    dtrace = dev.forward(xp.asarray(x), upto="conv5")
    for name in ("conv1", "pool1", "norm1", "conv2", "pool2", "conv5"):
        close(dtrace.activations[name], trace.activations[name], 1e-4)
    for name in ("pool1", "pool2"):  # switches may differ only where float rounding breaks a tie
        same = asnumpy(dtrace.switches[name]) == trace.switches[name]
        assert same.mean() > 0.999
    act = trace.activations["conv5"]
    units = np.array([[0, int(act[0, :, 0, 0].argmax()), 0, 0], [1, int(act[1, :, 6, 6].argmax()), 6, 6]])
    # the reference projects through the backend's own switches: where rounding broke a tie
    # differently, both sides then unpool to the same place and only the arithmetic differs
    trace.switches = {name: asnumpy(s) for name, s in dtrace.switches.items()}
    close(project_units_windowed(dev, dtrace, "conv5", units), project_units(cpu, trace, "conv5", units), 1e-4)
