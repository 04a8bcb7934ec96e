"""Winograd F(2x2, 3x3) (:mod:`zfnet.ops.winograd`) against the naive reference.

The forward, the filter gradient and the input gradient are compared with the
loop-level convolution of ``tests/reference.py`` (and its adjoint) on random shapes,
groups and paddings, in float64 (where they must agree to rounding, 1e-10 relative)
and float32 (where the transforms round differently from a direct sum: agreement to
2e-6 of the scale ``sum |w| |x|``, the size of the terms being added; the worst seen
over 150 random cases was 1.8e-7).  The pieces the transforms are cut into are
shrunk, and two threads asked for, so that several pieces run on both threads even
on tiny inputs.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zfnet import ops
from zfnet.errors import ShapeError
from zfnet.ops import winograd as wg

import reference as ref


@pytest.fixture(autouse=True)
def _small_pieces(monkeypatch):
    monkeypatch.setattr(wg, "_PIECE_BYTES", 512)  # several pieces on tiny inputs
    monkeypatch.setenv("ZFNET_NUM_THREADS", "2")  # and both threads, whatever the machine


@st.composite
def conv_cases(draw):
    groups = draw(st.integers(1, 3))
    cg, og = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    p = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    h = draw(st.integers(max(1, 3 - 2 * p[0]), 11))
    w = draw(st.integers(max(1, 3 - 2 * p[1]), 11))
    n = draw(st.integers(1, 3))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    x = rng.standard_normal((n, cg * groups, h, w)).astype(dtype)
    wt = rng.standard_normal((og * groups, cg, 3, 3)).astype(dtype)
    b = rng.standard_normal(og * groups).astype(dtype) if draw(st.booleans()) else None
    return x, wt, b, p, groups


def _tol(dtype, scale):
    return (1e-10 if dtype == np.float64 else 2e-6) * max(1.0, float(scale))


@settings(deadline=None)
@given(conv_cases())
def test_forward_matches_reference(case):
    x, w, b, p, groups = case
    want = ref.conv2d(x.astype(np.float64), w.astype(np.float64), None if b is None else b.astype(np.float64),
                      1, p, groups)
    got = wg.winograd_conv2d(x, w, b, p, groups)
    assert got.shape == want.shape and got.dtype == x.dtype
    scale = ref.conv2d(np.abs(x).astype(np.float64), np.abs(w).astype(np.float64), None, 1, p, groups).max()
    np.testing.assert_allclose(got, want, rtol=0, atol=_tol(x.dtype, scale))


@settings(deadline=None)
@given(conv_cases())
def test_gradients_match_reference(case):
    """Filter gradient ``sum dy x_pad`` and input gradient ``conv_transpose2d(dy, w)``."""
    x, w, _, p, groups = case
    rng = np.random.default_rng(1)
    out_size = (x.shape[2] + 2 * p[0] - 2, x.shape[3] + 2 * p[1] - 2)
    dy = rng.standard_normal((x.shape[0], w.shape[0], *out_size)).astype(x.dtype)
    x64, w64, dy64 = (a.astype(np.float64) for a in (x, w, dy))
    # dw[o, c, u, v] = sum_{n,i,j} dy[n, o, i, j] x_pad[n, g C_g + c, i + u, j + v], written out
    xpad = np.pad(x64, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])))
    og, cg = w.shape[0] // groups, w.shape[1]
    want_dw = np.zeros(w.shape)
    for o in range(w.shape[0]):
        g = o // og
        for u in range(3):
            for v in range(3):
                win = xpad[:, g * cg : (g + 1) * cg, u : u + out_size[0], v : v + out_size[1]]
                want_dw[o, :, u, v] = np.einsum("nij,ncij->c", dy64[:, o], win)
    got_dw = wg.winograd_weight_grad(x, dy, w.shape, p, groups)
    assert got_dw.shape == w.shape and got_dw.dtype == x.dtype
    scale_w = np.abs(dy64).sum(axis=(0, 2, 3)).max() * np.abs(x64).max()  # bounds sum |dy| |x_pad|
    np.testing.assert_allclose(got_dw, want_dw, rtol=0, atol=_tol(x.dtype, scale_w))
    want_dx = ref.conv_transpose2d(dy64, w64, None, 1, p, groups, output_size=x.shape[2:])
    got_dx = wg.winograd_input_grad(dy, w, p, groups)
    scale_x = ref.conv_transpose2d(np.abs(dy64), np.abs(w64), None, 1, p, groups, output_size=x.shape[2:]).max()
    assert got_dx.shape == x.shape and got_dx.dtype == x.dtype
    np.testing.assert_allclose(got_dx, want_dx, rtol=0, atol=_tol(x.dtype, scale_x))


@settings(deadline=None)
@given(conv_cases())
def test_input_grad_is_the_adjoint(case):
    """``<conv(x), y> == <x, input_grad(y)>``: the adjoint rule, in float64."""
    x, w, _, p, groups = case
    x, w = x.astype(np.float64), w.astype(np.float64)
    y = np.random.default_rng(2).standard_normal(wg.winograd_conv2d(x, w, None, p, groups).shape)
    lhs = np.vdot(wg.winograd_conv2d(x, w, None, p, groups), y)
    rhs = np.vdot(x, wg.winograd_input_grad(y, w, p, groups))
    assert abs(lhs - rhs) <= 1e-9 * max(1.0, abs(lhs))


def test_transforms_are_the_matrices():
    """The written-out transforms equal ``G g G^T``, ``B^T d B`` and ``A^T M A`` as matrix products."""
    rng = np.random.default_rng(3)
    g = rng.standard_normal((2, 3, 3, 3))
    u = wg.filter_transform(g)  # (16, 2, 3)
    want_u = np.einsum("ai,ocij,bj->aboc", wg.G, g, wg.G).reshape(16, 2, 3)
    np.testing.assert_allclose(u, want_u, rtol=1e-14, atol=1e-14)
    x = rng.standard_normal((2, 3, 5, 6))  # padding 1 -> output 5x6 -> 3x3 tiles
    v = wg.input_transform(x, (1, 1), (5, 6))  # (16, C, tH, tW, N)
    xpad = np.zeros((2, 3, 8, 8))
    xpad[:, :, 1:6, 1:7] = x
    for ty in range(3):
        for tx in range(3):
            d = xpad[:, :, 2 * ty : 2 * ty + 4, 2 * tx : 2 * tx + 4]  # (N, C, 4, 4)
            want = np.einsum("ki,ncij,lj->klcn", wg.BT, d, wg.BT).reshape(16, 3, 2)
            np.testing.assert_allclose(v[:, :, ty, tx, :], want, rtol=1e-13, atol=1e-13)
    m = rng.standard_normal((16, 3, 3, 3, 2))  # (16, C_out, tH, tW, N)
    y = wg.output_transform(m, (5, 6))
    for ty in range(3):
        for tx in range(3):
            tile = np.einsum("ak,kl...,bl->ab...", wg.AT, m[:, :, ty, tx].reshape(4, 4, 3, 2), wg.AT)  # (2, 2, C, N)
            rows, cols = slice(2 * ty, min(2 * ty + 2, 5)), slice(2 * tx, min(2 * tx + 2, 6))
            want = tile[: rows.stop - rows.start, : cols.stop - cols.start].transpose(3, 2, 0, 1)
            np.testing.assert_allclose(y[:, :, rows, cols], want, rtol=1e-13, atol=1e-13)


def test_output_transform_adjoint():
    """``<output_transform(m), dy> == <m, output_transform_adjoint(dy)>``."""
    rng = np.random.default_rng(4)
    m = rng.standard_normal((16, 3, 4, 3, 2))
    y = wg.output_transform(m, (7, 5))  # odd sides: the last tiles are cut
    dy = rng.standard_normal(y.shape)
    assert abs(np.vdot(y, dy) - np.vdot(m, wg.output_transform_adjoint(dy, (7, 5)))) < 1e-10


def test_applies():
    a = wg.winograd_applies
    assert a(384, 384, (3, 3), (1, 1), (1, 1), (13, 13), np.float32)
    assert a(192, 128, (3, 3), (1, 1), (1, 1), (13, 13), np.float64)  # AlexNet's grouped conv5
    assert not a(384, 384, (3, 3), (1, 1), (1, 1), (13, 13), np.float16)
    assert not a(384, 384, (5, 5), (1, 1), (2, 2), (13, 13), np.float32)
    assert not a(384, 384, (3, 3), (2, 2), (1, 1), (7, 7), np.float32)
    assert not a(384, 384, (3, 3), (1, 1), (3, 3), (17, 17), np.float32)
    assert not a(384, 384, (3, 3), (1, 1), (1, 1), (3, 13), np.float32)  # tiles mostly padding
    assert not a(32, 32, (3, 3), (1, 1), (1, 1), (55, 55), np.float32)  # transforms would dominate
    assert a(96, 96, (3, 3), (1, 1), (1, 1), (13, 13), np.float32)  # the threshold: 96*96 / 192 = 48
    assert not a(95, 96, (3, 3), (1, 1), (1, 1), (13, 13), np.float32)  # just below it


@pytest.mark.parametrize("value", ["0", "false", "OFF", " no "])
def test_applies_switch(monkeypatch, value):
    monkeypatch.setenv("ZFNET_WINOGRAD", value)
    assert not wg.winograd_applies(384, 384, (3, 3), (1, 1), (1, 1), (13, 13), np.float32)


def _spy(monkeypatch):
    calls = []
    for name in ("winograd_conv2d", "winograd_input_grad", "winograd_weight_grad"):
        fn = getattr(wg, name)
        monkeypatch.setattr(ops.conv, name, lambda *a, _fn=fn, _name=name, **k: calls.append(_name) or _fn(*a, **k))
    return calls


@pytest.mark.parametrize("padding", [0, 1, 2])
@pytest.mark.parametrize("kind", ["float32", "float64", "mixed", "views"])
def test_ops_dispatch(monkeypatch, padding, kind):
    """``ops.conv2d`` / ``conv_transpose2d`` / ``conv2d_weight_grad`` take the Winograd path
    where it applies and give what the readable im2col path gives, with its dtype."""
    calls = _spy(monkeypatch)
    rng = np.random.default_rng(5)
    dtype = np.float64 if kind == "float64" else np.float32
    x = rng.standard_normal((2, 192, 6, 7)).astype(dtype)
    w = (rng.standard_normal((192, 96, 3, 3)) * 0.05).astype(np.float64 if kind == "mixed" else dtype)
    b = rng.standard_normal(192).astype(dtype)  # 96 -> 96 per group: score 48
    if kind == "views":  # non-contiguous input and filters
        x = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
        w = np.ascontiguousarray(w[..., ::-1])[..., ::-1]
    out = (6 + 2 * padding - 2, 7 + 2 * padding - 2)
    pp = (padding, padding)

    def close(got, want):
        assert got.shape == want.shape and got.dtype == want.dtype
        tol = 1e-12 if got.dtype == np.float64 else 2e-6
        np.testing.assert_allclose(got, want, rtol=0, atol=tol * np.abs(want).max())

    y = ops.conv2d(x, w, b, 1, padding, groups=2)
    close(y, ops.conv._conv2d_im2col(x, w, b, (1, 1), pp, 2, out))
    dy = y[..., ::-1]  # a view, as the layers pass
    close(ops.conv_transpose2d(dy, w, b, 1, padding, groups=2, output_size=x.shape),
          ops.conv._conv_transpose2d_col2im(dy, w, b, (1, 1), pp, 2, (6, 7)))
    dy = dy.astype(x.dtype)
    close(ops.conv2d_weight_grad(x, dy, w.shape, 1, padding, groups=2),
          ops.conv._conv2d_weight_grad_im2col(x, dy, w.shape, (1, 1), pp, 2, out))
    assert calls == ["winograd_conv2d", "winograd_input_grad", "winograd_weight_grad"]


def test_ops_dispatch_switched_off(monkeypatch):
    calls = _spy(monkeypatch)
    monkeypatch.setenv("ZFNET_WINOGRAD", "0")
    x = np.ones((1, 192, 6, 7), np.float32)
    w = np.ones((192, 96, 3, 3), np.float32)
    y = ops.conv2d(x, w, None, 1, 1, groups=2)
    ops.conv_transpose2d(y, w, None, 1, 1, groups=2, output_size=x.shape)
    ops.conv2d_weight_grad(x, y, w.shape, 1, 1, groups=2)
    assert calls == []  # every one took the im2col path


def test_bad_shapes():
    x = np.zeros((1, 4, 6, 6), np.float32)
    with pytest.raises(ShapeError, match="3x3"):
        wg.winograd_conv2d(x, np.zeros((2, 4, 5, 5), np.float32))
    with pytest.raises(ShapeError, match="groups"):
        wg.winograd_conv2d(x, np.zeros((3, 2, 3, 3), np.float32), groups=2)
    with pytest.raises(ShapeError, match="smaller than the kernel"):
        wg.winograd_conv2d(np.zeros((1, 4, 1, 1), np.float32), np.zeros((2, 4, 3, 3), np.float32), padding=(0, 0))
    with pytest.raises(ShapeError, match="dy must have shape"):
        wg.winograd_weight_grad(x, np.zeros((1, 2, 5, 5), np.float32), (2, 4, 3, 3))
