"""The fast ops against the naive reference (tests/reference.py), their adjoint
identities, and PyTorch.

Tolerances: the ops run in float32, the reference accumulates in float64.  A sum
of K products of O(1) numbers carries a float32 rounding error of order
sqrt(K) * 6e-8 * K; for the shapes drawn here (K <= 3*5*5*... < 300) an absolute
tolerance of 1e-4 relative to the largest value leaves a wide margin while still
catching any indexing mistake (which produces O(1) errors).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference as ref
from zfnet import ops
from zfnet.errors import ShapeError, ZfnetError


def close(a, b, rel=1e-4):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = max(1.0, float(np.abs(b).max(initial=0.0)))
    np.testing.assert_allclose(a, b, rtol=0, atol=rel * scale)


@st.composite
def conv_case(draw, transpose_ok=True):
    """A random valid conv2d configuration: shapes, stride, padding, groups."""
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cg = draw(st.integers(1, 3))
    og = draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, kh - 1)), draw(st.integers(0, kw - 1))
    h = draw(st.integers(max(1, kh - 2 * ph), 11))
    w = draw(st.integers(max(1, kw - 2 * pw), 11))
    n = draw(st.integers(1, 2))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, cg * groups, h, w)).astype(np.float32)
    wt = rng.standard_normal((og * groups, cg, kh, kw)).astype(np.float32)
    b = rng.standard_normal(og * groups).astype(np.float32) if draw(st.booleans()) else None
    return x, wt, b, (sh, sw), (ph, pw), groups


@given(conv_case())
def test_conv2d_matches_reference(case):
    x, w, b, stride, padding, groups = case
    close(ops.conv2d(x, w, b, stride, padding, groups), ref.conv2d(x, w, b, stride, padding, groups))


@given(conv_case(), st.data())
def test_conv_transpose2d_matches_reference(case, data):
    x, w, _, stride, padding, groups = case
    y = ops.conv2d(x, w, None, stride, padding, groups)
    rng = np.random.default_rng(0)
    g = rng.standard_normal(y.shape).astype(np.float32)
    # no output_size (the smallest input the forward could have come from), or any of
    # the sizes it could have come from: H_min .. H_min + s - 1 per axis
    h_min = [(y.shape[2 + a] - 1) * stride[a] - 2 * padding[a] + w.shape[2 + a] for a in (0, 1)]
    if data.draw(st.booleans(), label="output_size given") or min(h_min) < 1:
        # (the forward's own input size lies in this range, so it is never empty)
        size = tuple(data.draw(st.integers(max(1, h_min[a]), h_min[a] + stride[a] - 1)) for a in (0, 1))
    else:
        size = None
    b = rng.standard_normal(x.shape[1]).astype(np.float32) if data.draw(st.booleans(), label="bias") else None
    close(ops.conv_transpose2d(g, w, b, stride, padding, groups, output_size=size),
          ref.conv_transpose2d(g, w, b, stride, padding, groups, output_size=size))


@given(conv_case())
def test_conv_transpose_is_adjoint_of_conv(case):
    """<conv2d(x, w), y> == <x, conv_transpose2d(y, w)> for every x, y (float64)."""
    x, w, _, stride, padding, groups = case
    x, w = x.astype(np.float64), w.astype(np.float64)
    y = np.random.default_rng(1).standard_normal(ops.conv2d(x, w, None, stride, padding, groups).shape)
    lhs = np.vdot(ops.conv2d(x, w, None, stride, padding, groups), y)
    rhs = np.vdot(x, ops.conv_transpose2d(y, w, None, stride, padding, groups, output_size=x.shape))
    assert lhs == pytest.approx(rhs, rel=1e-9, abs=1e-9)


@st.composite
def pool_case(draw):
    k = draw(st.integers(1, 4))
    s = draw(st.integers(1, 3))
    p = draw(st.integers(0, k // 2))
    ceil = draw(st.booleans())
    h, w = draw(st.integers(max(1, k - 2 * p), 12)), draw(st.integers(max(1, k - 2 * p), 12))
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    if draw(st.booleans()):  # small integers: many ties, the tie rule matters
        x = rng.integers(-2, 3, (n, c, h, w)).astype(np.float32)
    else:
        x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    return x, k, s, p, ceil


@given(pool_case())
def test_max_pool2d_matches_reference(case):
    x, k, s, p, ceil = case
    y, sw = ops.max_pool2d(x, k, s, p, ceil)
    yr, swr = ref.max_pool2d(x, k, s, p, ceil)
    np.testing.assert_array_equal(y, yr)
    np.testing.assert_array_equal(sw, swr)
    assert sw.dtype == np.int64


@given(pool_case())
def test_switches_point_at_the_maxima(case):
    x, k, s, p, ceil = case
    y, sw = ops.max_pool2d(x, k, s, p, ceil)
    n, c, h, w = x.shape
    picked = np.take_along_axis(x.reshape(n, c, h * w), sw.reshape(n, c, -1), axis=2).reshape(y.shape)
    np.testing.assert_array_equal(picked, y)
    # and each switch lies inside its own window
    rows, cols = sw // w, sw % w
    i = np.arange(y.shape[2]).reshape(-1, 1) * s - p
    j = np.arange(y.shape[3]).reshape(1, -1) * s - p
    assert ((rows >= i) & (rows < i + k) & (cols >= j) & (cols < j + k)).all()


@given(pool_case())
def test_unpool_is_adjoint_of_pool_selection(case):
    """<S(x), y> == <x, unpool(y)> where S picks x at the switches (scatter-ADD needed)."""
    x, k, s, p, ceil = case
    x = x.astype(np.float64)
    _, sw = ops.max_pool2d(x, k, s, p, ceil)
    n, c, h, w = x.shape
    y = np.random.default_rng(2).standard_normal(sw.shape)
    selected = np.take_along_axis(x.reshape(n, c, h * w), sw.reshape(n, c, -1), axis=2).reshape(sw.shape)
    assert np.vdot(selected, y) == pytest.approx(np.vdot(x, ops.max_unpool2d(y, sw, (h, w))), rel=1e-9, abs=1e-9)
    close(ops.max_unpool2d(y, sw, (h, w)), ref.max_unpool2d(y, sw, (h, w)))


def test_unpool_adds_when_switches_collide():
    # one big value wins both overlapping 3x3/2 windows of a 1x5 row
    x = np.zeros((1, 1, 3, 5), np.float32)
    x[0, 0, 1, 2] = 9.0
    y, sw = ops.max_pool2d(x, 3, 2)
    assert y.shape == (1, 1, 1, 2) and (sw == 1 * 5 + 2).all()
    up = ops.max_unpool2d(np.array([[[[1.0, 2.0]]]], np.float32), sw, (3, 5))
    assert up[0, 0, 1, 2] == 3.0 and up.sum() == 3.0


@given(st.integers(1, 7), st.floats(1e-5, 1.0), st.floats(0.1, 1.0), st.floats(0.5, 3.0), st.integers(0, 999))
@settings(max_examples=20)
def test_lrn_matches_reference(size, alpha, beta, k, seed):
    x = np.random.default_rng(seed).standard_normal((2, 6, 3, 4)).astype(np.float32) * 3
    close(ops.lrn(x, size, alpha, beta, k), ref.lrn(x, size, alpha, beta, k))


@given(st.integers(1, 5), st.integers(1, 9), st.integers(1, 9), st.booleans(),
       st.floats(0.1, 100.0), st.integers(0, 2**31 - 1))
def test_linear_relu_softmax_match_reference(n, d_in, d_out, bias, scale, seed):
    """Random sizes and scales (softmax up to logits of about +-400, where a softmax
    that does not subtract the maximum overflows float32)."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, d_in)) * scale).astype(np.float32)
    w = rng.standard_normal((d_out, d_in)).astype(np.float32)
    b = rng.standard_normal(d_out).astype(np.float32) if bias else None
    close(ops.linear(x, w, b), ref.linear(x, w, b))
    close(ops.relu(x), ref.relu(x))
    p = ops.softmax(x)
    close(p, ref.softmax(x))
    assert np.isfinite(p).all() and np.allclose(p.sum(axis=1), 1, atol=1e-5)


def test_im2col_col2im_adjoint():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 9, 8))
    cols = ops.im2col(x, (3, 2), (2, 3), (1, 1))
    c = rng.standard_normal(cols.shape)
    assert np.vdot(cols, c) == pytest.approx(np.vdot(x, ops.col2im(c, (9, 8), (2, 3), (1, 1))))


@pytest.mark.parametrize(
    "n,k,s,p,ceil,expected",
    [(224, 7, 2, 1, False, 110), (110, 3, 2, 0, True, 55), (55, 5, 2, 0, False, 26), (26, 3, 2, 0, True, 13),
     (13, 3, 2, 0, True, 6), (13, 3, 2, 0, False, 6), (227, 11, 4, 0, False, 55), (6, 3, 2, 0, True, 3),
     (5, 2, 2, 1, True, 3)],
)
def test_output_sizes(n, k, s, p, ceil, expected):
    size = ops.pool_out_size(n, k, s, p, ceil) if ceil else ops.conv_out_size(n, k, s, p)
    assert size == expected == ref.pool_out_size(n, k, s, p, ceil)


def test_bad_shapes_raise_zfnet_errors():
    x = np.zeros((1, 4, 5, 5), np.float32)
    with pytest.raises(ShapeError, match="channels"):
        ops.conv2d(x, np.zeros((2, 3, 3, 3), np.float32))
    with pytest.raises(ShapeError, match="4-D"):
        ops.conv2d(x[0], np.zeros((2, 4, 3, 3), np.float32))
    with pytest.raises(ShapeError, match="smaller than the kernel"):
        ops.conv2d(x, np.zeros((2, 4, 7, 7), np.float32))
    with pytest.raises(ShapeError, match="output_size"):
        ops.conv_transpose2d(np.zeros((1, 2, 3, 3), np.float32), np.zeros((2, 4, 3, 3), np.float32), output_size=(9, 9))
    with pytest.raises(ShapeError, match="switches"):
        ops.max_unpool2d(np.zeros((1, 1, 2, 2)), np.full((1, 1, 2, 2), 99), (3, 3))
    with pytest.raises(ZfnetError):
        ops.max_pool2d(x, 3, 2, padding=2)


# --- PyTorch --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason="PyTorch comparisons need torch (pip install zfnet[torch])")


@given(case=conv_case())
@settings(max_examples=15)
def test_conv_ops_match_torch(torch, case):
    import torch.nn.functional as F

    x, w, b, stride, padding, groups = case
    tb = None if b is None else torch.tensor(b)
    yt = F.conv2d(torch.tensor(x), torch.tensor(w), tb, stride, padding, 1, groups).numpy()
    close(ops.conv2d(x, w, b, stride, padding, groups), yt)
    g = np.random.default_rng(5).standard_normal(yt.shape).astype(np.float32)
    xr = torch.tensor(x, requires_grad=True)
    F.conv2d(xr, torch.tensor(w), None, stride, padding, 1, groups).backward(torch.tensor(g))
    close(ops.conv_transpose2d(g, w, None, stride, padding, groups, output_size=x.shape), xr.grad.numpy())


@given(case=pool_case())
@settings(max_examples=15)
def test_pool_ops_match_torch(torch, case):
    import torch.nn.functional as F

    x, k, s, p, ceil = case
    xr = torch.tensor(x, requires_grad=True)
    yt, it = F.max_pool2d(xr, k, s, p, 1, ceil, return_indices=True)
    y, sw = ops.max_pool2d(x, k, s, p, ceil)
    np.testing.assert_array_equal(y, yt.detach().numpy())
    np.testing.assert_array_equal(sw, it.numpy())
    g = np.random.default_rng(6).standard_normal(y.shape).astype(np.float32)
    yt.backward(torch.tensor(g))
    close(ops.max_unpool2d(g, sw, x.shape), xr.grad.numpy())  # unpooling == max-pool gradient


def test_lrn_linear_softmax_match_torch(torch):
    import torch.nn.functional as F

    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 10, 5, 5)).astype(np.float32) * 4
    close(ops.lrn(x, 5, 1e-4, 0.75, 2.0), F.local_response_norm(torch.tensor(x), 5, 1e-4, 0.75, 2.0).numpy())
    close(ops.lrn(x, 4, 1e-2, 0.5, 1.0), torch.nn.LocalResponseNorm(4, 1e-2, 0.5, 1.0)(torch.tensor(x)).numpy())
    a, w, b = (rng.standard_normal(s).astype(np.float32) for s in [(3, 8), (4, 8), (4,)])
    close(ops.linear(a, w, b), F.linear(torch.tensor(a), torch.tensor(w), torch.tensor(b)).numpy())
    close(ops.softmax(a), F.softmax(torch.tensor(a), dim=1).numpy())
    close(ops.relu(a), F.relu(torch.tensor(a)).numpy())


# --- backends ---------------------------------------------------------------------------


def test_ops_agree_across_backends(xp):
    """The same op on NumPy and on the ``xp`` backend gives the same numbers.

    On NumPy this checks that the ops accept and return plain arrays; on CuPy (marked
    gpu, skipped without a device) it checks every CuPy fast path against the NumPy one.
    """
    from zfnet.backend import asnumpy

    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 4, 15, 13)).astype(np.float32)
    w = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    X, W, B = xp.asarray(x), xp.asarray(w), xp.asarray(b)
    y = ops.conv2d(X, W, B, 2, 1, 2)
    assert type(y) is type(X)
    close(asnumpy(y), ops.conv2d(x, w, b, 2, 1, 2))
    g = rng.standard_normal(y.shape).astype(np.float32)
    close(asnumpy(ops.conv_transpose2d(xp.asarray(g), W, None, 2, 1, 2, output_size=(15, 13))),
          ops.conv_transpose2d(g, w, None, 2, 1, 2, output_size=(15, 13)))
    yp, sw = ops.max_pool2d(X, 3, 2, 0, True)
    yp0, sw0 = ops.max_pool2d(x, 3, 2, 0, True)
    np.testing.assert_array_equal(asnumpy(yp), yp0)
    np.testing.assert_array_equal(asnumpy(sw), sw0)
    close(asnumpy(ops.max_unpool2d(yp, sw, (15, 13))), ops.max_unpool2d(yp0, sw0, (15, 13)))
    close(asnumpy(ops.lrn(X, 5, 1e-4, 0.75, 2.0)), ops.lrn(x, 5, 1e-4, 0.75, 2.0))
    close(asnumpy(ops.relu(X)), ops.relu(x))
