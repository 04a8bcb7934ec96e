"""Convolution by kernel rows (:mod:`zfnet.ops.kernel_rows`) against the readable im2col paths.

The forward, both gradients and the column layout are compared on random shapes,
strides, paddings, groups and dtypes.  In float64 the paths agree to 1e-10 relative
to the largest value (the sums are the same products in another order); float32
inputs are compared with a float64 reference at 2e-5 (a few float32 roundings per
sum of at most a few hundred terms).  Also: the BLAS helper that adds a product
into an array, how :func:`~zfnet.ops.conv2d` chooses the path, and what a training
layer saves.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zfnet import ops
from zfnet.errors import ShapeError
from zfnet.ops import _blas, _parallel
from zfnet.ops import conv as conv_mod
from zfnet.ops import kernel_rows as kr
from zfnet.ops._shape import conv_out_size


@st.composite
def conv_cases(draw):
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    h = draw(st.integers(max(1, kh - 2 * ph), 12))
    w = draw(st.integers(max(1, kw - 2 * pw), 12))
    groups = draw(st.integers(1, 3))
    cg, og = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    n = draw(st.integers(1, 3))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    x = rng.standard_normal((n, cg * groups, h, w)).astype(dtype)
    wt = rng.standard_normal((og * groups, cg, kh, kw)).astype(dtype)
    b = rng.standard_normal(og * groups).astype(dtype)
    if draw(st.booleans()):  # a non-contiguous input
        x = np.concatenate([x, x], axis=3)[:, :, :, ::2]
    return x, wt, b, (sh, sw), (ph, pw), groups


def _close(got, want, dtype):
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    tol = 1e-10 if dtype == np.float64 else 2e-5
    assert got.shape == want.shape
    assert float(np.abs(got.astype(np.float64) - want).max(initial=0.0)) <= tol * scale


@given(conv_cases(), st.booleans())
@settings(max_examples=120, deadline=None)
def test_forward_equals_im2col(case, relu):
    x, w, b, stride, padding, groups = case
    ho = conv_out_size(x.shape[2], w.shape[2], stride[0], padding[0])
    wo = conv_out_size(x.shape[3], w.shape[3], stride[1], padding[1])
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    act = (lambda v: np.maximum(v, 0)) if relu else (lambda v: v)
    got = kr.conv2d_rows(x, w, b, stride, padding, groups, relu=relu)
    assert got.dtype == x.dtype
    _close(got, act(conv_mod._conv2d_im2col(x64, w64, b.astype(np.float64), stride, padding, groups, (ho, wo))),
           x.dtype)
    got = kr.conv2d_rows(x, w, None, stride, padding, groups, relu=relu)
    _close(got, act(conv_mod._conv2d_im2col(x64, w64, None, stride, padding, groups, (ho, wo))), x.dtype)


@given(conv_cases(), st.booleans())
@settings(max_examples=120, deadline=None)
def test_gradients_equal_im2col(case, through_relu):
    x, w, _, stride, padding, groups = case
    n = x.shape[0]
    ho = conv_out_size(x.shape[2], w.shape[2], stride[0], padding[0])
    wo = conv_out_size(x.shape[3], w.shape[3], stride[1], padding[1])
    rng = np.random.default_rng(int(abs(x).sum() * 1000) % 2**31)
    dy = rng.standard_normal((n, w.shape[0], ho, wo)).astype(x.dtype)
    relu_out = np.maximum(rng.standard_normal(dy.shape), 0).astype(x.dtype) if through_relu else None
    dz_want = dy * (relu_out > 0) if through_relu else dy
    x64, w64, dz64 = x.astype(np.float64), w.astype(np.float64), dz_want.astype(np.float64)

    dw, dz = kr.conv2d_rows_weight_grad(x, dy, w.shape, stride, padding, groups, relu_output=relu_out)
    np.testing.assert_array_equal(dz, dz_want)  # the mask is exact
    _close(dw, conv_mod._conv2d_weight_grad_im2col(x64, dz64, w.shape, stride, padding, groups, (ho, wo)), x.dtype)

    dx = kr.conv2d_rows_input_grad(dz, w, stride, padding, groups, x.shape[2:])
    want = conv_mod._conv_transpose2d_col2im(dz64, w64, None, stride, padding, groups, x.shape[2:])
    _close(dx, want, x.dtype)


@given(st.data())
@settings(max_examples=60, deadline=None)
def test_row_columns_adjoint(data):
    """<row_columns(x), p> == <x, row_columns_adjoint(p)> in float64."""
    kh, kw = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5))
    sh, sw = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    ho, wo = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 6))
    c = data.draw(st.integers(1, 3))
    na, hq = min(sh, kh), ho + (kh - 1) // sh
    hp, wp = (hq - 1) * sh + na + data.draw(st.integers(0, 2)), (wo - 1) * sw + kw + data.draw(st.integers(0, 2))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1)))
    x = rng.standard_normal((c, hp, wp))
    p = rng.standard_normal((c, kw, na, hq, wo))
    cols = kr.row_columns(x, (kh, kw), (sh, sw), (ho, wo))
    back = kr.row_columns_adjoint(p, (sh, sw), np.zeros_like(x))
    assert np.isclose((cols * p).sum(), (x * back).sum(), rtol=1e-12, atol=1e-12)
    # and the layout itself, value by value
    q, j, v, a = hq - 1, wo - 1, kw - 1, na - 1
    assert cols[0, v, a, q, j] == x[0, q * sh + a, j * sw + v]


@pytest.mark.parametrize("spin", ["4", "28"])
def test_threads_agree_with_one_thread(monkeypatch, spin):
    """Images shared out among threads (each with its own buffers, where OpenBLAS's idle
    threads sleep soon), or all on the calling thread with threaded BLAS (its default
    spin): the one-thread result either way."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 8, 9, 9)).astype(np.float32)
    w = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((5, 6, 9, 9)).astype(np.float32)
    args = ((1, 1), (1, 1), 2)
    with _parallel.serial():
        one = (kr.conv2d_rows(x, w, None, *args), kr.conv2d_rows_weight_grad(x, dy, w.shape, *args)[0],
               kr.conv2d_rows_input_grad(dy, w, *args, (9, 9)))
    monkeypatch.setenv("ZFNET_NUM_THREADS", "3")
    monkeypatch.setenv("OPENBLAS_THREAD_TIMEOUT", spin)
    shared = []
    real = kr.parallel_range
    monkeypatch.setattr(kr, "parallel_range", lambda n, fn: shared.append(n) or real(n, fn))
    many = (kr.conv2d_rows(x, w, None, *args), kr.conv2d_rows_weight_grad(x, dy, w.shape, *args)[0],
            kr.conv2d_rows_input_grad(dy, w, *args, (9, 9)))
    # each image on its own: the same GEMMs (at these sizes one- and two-thread BLAS round alike)
    np.testing.assert_allclose(many[0], one[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(many[1], one[1], rtol=1e-5, atol=1e-5)  # per-thread sums, added in order
    np.testing.assert_allclose(many[2], one[2], rtol=0, atol=1e-6)
    assert shared == ([5, 5, 5] if spin == "4" and _blas.blas_thread_control() is not None else [])


def test_applies_to_the_networks_conv2_only():
    f32 = np.float32
    assert kr.kernel_rows_applies(48, (5, 5), (27, 27), f32)  # AlexNet conv2 (per group)
    assert kr.kernel_rows_applies(96, (5, 5), (26, 26), f32)  # ZFNet conv2
    assert not kr.kernel_rows_applies(3, (11, 11), (55, 55), f32)  # AlexNet conv1: 33 < 64
    assert not kr.kernel_rows_applies(3, (7, 7), (110, 110), f32)  # ZFNet conv1
    assert not kr.kernel_rows_applies(256, (3, 3), (13, 13), f32)  # small maps
    assert not kr.kernel_rows_applies(512, (1, 1), (55, 55), f32)  # 1x1
    assert not kr.kernel_rows_applies(48, (5, 5), (27, 27), np.int64)


def test_conv2d_takes_kernel_rows_and_can_be_switched_off(monkeypatch):
    calls = []
    real = conv_mod.conv2d_rows
    monkeypatch.setattr(conv_mod, "conv2d_rows", lambda *a, **k: calls.append(a[1].shape) or real(*a, **k))
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 32, 22, 22)).astype(np.float32)
    w = rng.standard_normal((8, 16, 3, 3)).astype(np.float32)  # C_g kW = 48 < 64 per group of 2
    ops.conv2d(x, w, None, 1, 1, groups=2)
    assert calls == []
    w = rng.standard_normal((8, 32, 3, 3)).astype(np.float32)  # 96 >= 64, 22x22 = 484 >= 400
    y = ops.conv2d(x, w, None, 1, 1)
    assert calls == [(8, 32, 3, 3)]
    monkeypatch.setenv("ZFNET_KERNEL_ROWS", "0")
    y_off = ops.conv2d(x, w, None, 1, 1)
    assert calls == [(8, 32, 3, 3)]
    np.testing.assert_allclose(y, y_off, rtol=1e-5, atol=1e-5)


def test_training_layer_saves_the_input_and_gets_the_same_gradients():
    """conv2d_relu(keep_columns) on a kernel-rows shape keeps the input; the gradients
    from it equal the im2col formula's; a dy of the wrong shape is refused."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 32, 25, 25)).astype(np.float32)
    w = (rng.standard_normal((16, 16, 5, 5)) * 0.1).astype(np.float32)  # C_g kW = 80 per group
    b = rng.standard_normal(16).astype(np.float32)
    y, saved = conv_mod.conv2d_relu(x, w, b, 1, 2, groups=2, keep_columns=True)
    assert isinstance(saved, conv_mod.SavedInput) and saved.x is x
    np.testing.assert_allclose(y, np.maximum(ops.conv2d(x, w, b, 1, 2, 2), 0), rtol=0, atol=1e-5)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dw, db, dz = conv_mod.conv2d_grads_from_columns(saved, dy, w.shape, relu_output=y)
    assert db is None
    np.testing.assert_array_equal(dz, dy * (y > 0))
    want = conv_mod._conv2d_weight_grad_im2col(x.astype(np.float64), dz.astype(np.float64), w.shape, (1, 1), (2, 2), 2,
                                               (25, 25))
    _close(dw, want, np.float32)
    with pytest.raises(ShapeError, match="does not match the saved input"):
        conv_mod.conv2d_grads_from_columns(saved, dy[:, :, :-1], w.shape)


def test_conv_transpose2d_resolves_the_stride_ambiguity(monkeypatch):
    """A strided layer whose input had an extra row and column no window read: those get zero."""
    calls = []
    real = conv_mod.conv2d_rows_input_grad
    monkeypatch.setattr(conv_mod, "conv2d_rows_input_grad", lambda *a, **k: calls.append(1) or real(*a, **k))
    rng = np.random.default_rng(4)
    w = rng.standard_normal((8, 32, 3, 3))
    y = rng.standard_normal((2, 8, 21, 21))
    for size in ((41, 41), (42, 42), (41, 42)):  # all give 21 outputs at stride 2
        got = ops.conv_transpose2d(y, w, None, 2, 1, output_size=size)
        want = conv_mod._conv_transpose2d_col2im(y, w, None, (2, 2), (1, 1), 1, size)
        _close(got, want, np.float64)
    assert len(calls) == 3  # the kernel-rows path did it (C_g kW = 96, 21 x 21 outputs)


def test_weight_grad_takes_kernel_rows_with_mixed_dtypes_and_strided_dy(monkeypatch):
    """conv2d_weight_grad dispatches here; float32 data with float64 filters, and a
    gradient that is a non-contiguous view, give the reference's values."""
    calls = []
    real = conv_mod.conv2d_rows_weight_grad
    monkeypatch.setattr(conv_mod, "conv2d_rows_weight_grad", lambda *a, **k: calls.append(1) or real(*a, **k))
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 24, 24, 24)).astype(np.float32)
    w = rng.standard_normal((6, 24, 3, 3))  # float64 filters
    dy = rng.standard_normal((2, 6, 24, 48)).astype(np.float32)[..., ::2]  # (2, 6, 24, 24), strided
    dw = ops.conv2d_weight_grad(x, dy, w.shape, 1, 1)
    assert calls == [1]
    want = conv_mod._conv2d_weight_grad_im2col(x.astype(np.float64), dy.astype(np.float64), w.shape, (1, 1), (1, 1),
                                               1, (24, 24))
    _close(dw, want, np.float32)
    y = kr.conv2d_rows(x, w, None, (1, 1), (1, 1), 1)  # float32 x float64 -> float64
    assert y.dtype == np.float64
    _close(y, conv_mod._conv2d_im2col(x.astype(np.float64), w, None, (1, 1), (1, 1), 1, (24, 24)), np.float64)
    dx = kr.conv2d_rows_input_grad(dy, w, (1, 1), (1, 1), 1, (24, 24))
    _close(dx, conv_mod._conv_transpose2d_col2im(dy.astype(np.float64), w, None, (1, 1), (1, 1), 1, (24, 24)),
           np.float64)
    with pytest.raises(ShapeError, match="gives 24x24"):
        kr.conv2d_rows_input_grad(dy[..., :-1], w, (1, 1), (1, 1), 1, (24, 24))


# ----------------------------------------------------------------------- the BLAS helper


def test_gemm_finds_numpys_openblas():
    """Where NumPy's OpenBLAS is found (its thread count can be set), its cblas_?gemm is
    found too: a wheel that renamed them would otherwise make kernel rows run through
    temporaries without a word."""
    if _blas.blas_thread_control() is None:
        pytest.skip("NumPy's BLAS is not an OpenBLAS zfnet can find")
    found = _blas._gemm_functions()
    assert found is not None and set(found) == {np.dtype(np.float32), np.dtype(np.float64)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_sets_and_adds_through_views(dtype):
    rng = np.random.default_rng(5)
    big = rng.standard_normal((12, 30)).astype(dtype)
    a = big[:5, 3:10]  # (5, 7), a row-major view with leading dimension 30
    b = big[5:12, 20:26]  # (7, 6), likewise
    bt = rng.standard_normal((6, 7)).astype(dtype).T  # (7, 6), a transposed view: column-major
    out = np.ones((5, 6), dtype=dtype)
    want = 1 + a.astype(np.float64) @ b
    _blas.gemm(a, b, out, accumulate=True)
    np.testing.assert_allclose(out, want, rtol=1e-5 if dtype == np.float32 else 1e-12)
    _blas.gemm(a, bt, out)
    np.testing.assert_allclose(out, a.astype(np.float64) @ bt, rtol=1e-5 if dtype == np.float32 else 1e-12)


def test_gemm_falls_back_to_numpy():
    rng = np.random.default_rng(6)
    a = rng.standard_normal((4, 10))[:, ::2]  # no unit stride: NumPy
    b = rng.standard_normal((5, 3))
    out = np.full((4, 3), 2.0)
    _blas.gemm(a, b, out, accumulate=True)
    np.testing.assert_allclose(out, 2 + a @ b, rtol=1e-12)
    b32 = b.astype(np.float32)  # mixed dtypes: NumPy
    _blas.gemm(np.ascontiguousarray(a), b32, out)
    np.testing.assert_allclose(out, a @ b32.astype(np.float64), rtol=1e-6)
    m = rng.standard_normal((4, 4))
    want = m @ m
    _blas.gemm(m, m, m)  # out is an input: NumPy, which handles the overlap
    np.testing.assert_allclose(m, want, rtol=1e-12)
    frozen = np.zeros((4, 3))
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):  # never written behind NumPy's back
        _blas.gemm(a, b, frozen)
    assert not frozen.any()
    with pytest.raises(ValueError, match="do not match"):
        _blas.gemm(a, b[:4], out)


def test_blas_threads_is_held_by_one_thread_at_a_time():
    """While one thread holds BLAS's thread count, another's ``wait=False`` gets False and
    changes nothing (the kernel-rows path then keeps its images on its own thread); the
    holder itself may nest blocks, each restoring what it found."""
    if _blas.blas_thread_control() is None:
        pytest.skip("NumPy's BLAS is not an OpenBLAS zfnet can find")
    import threading

    _, get = _blas.blas_thread_control()
    before = get()
    seen = []

    def other():
        with _blas.blas_threads(3, wait=False) as ok:
            seen.append((ok, get()))

    with _blas.blas_threads(1) as ok:
        assert ok and get() == 1
        t = threading.Thread(target=other)
        t.start()
        t.join()
        with _blas.blas_threads(2) as nested:
            assert nested and get() == 2
        assert get() == 1
    assert seen == [(False, 1)]
    assert get() == before
    t = threading.Thread(target=other)  # free again: the other thread gets it
    t.start()
    t.join()
    assert seen[1] == (True, 3) and get() == before
