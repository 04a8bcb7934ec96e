"""The fast CPU paths of the ops against their readable versions (issue 6, "Speed").

Every trick in :mod:`zfnet.ops` sits beside a readable implementation that stays the
reference.  Here the two are compared on random shapes, strides, paddings and on
inputs chosen to stress the tricks: many ties (small integers), infinities, NaN,
non-contiguous inputs, float64, and chunk boundaries (the chunk size is shrunk so
that several chunks run even on tiny inputs).  Maxima and switches must be
IDENTICAL; convolutions agree to float32 rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zfnet import ops
from zfnet.ops import pool as pool_mod
from zfnet.ops._shape import pool_out_size


@st.composite
def pool_inputs(draw):
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    ceil = draw(st.booleans())
    h = draw(st.integers(max(1, kh - 2 * ph), 14))
    w = draw(st.integers(max(1, kw - 2 * pw), 14))
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    kind = draw(st.sampled_from(["normal", "ties", "inf", "nan"]))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    if kind == "normal":
        x = rng.standard_normal((n, c, h, w))
    else:
        x = rng.integers(-2, 3, (n, c, h, w)).astype(np.float64)
        if kind == "inf":
            x[x == 2] = np.inf
            x[x == -2] = -np.inf
        if kind == "nan":
            x[x == 2] = np.nan
    x = x.astype(dtype)
    if draw(st.booleans()):  # a non-contiguous view of the same values
        x = np.concatenate([x, x], axis=3)[:, :, :, ::2]
    return x, (kh, kw), (sh, sw), (ph, pw), ceil


@given(pool_inputs(), st.sampled_from([64, 1 << 21]))
@settings(max_examples=150, deadline=None)
def test_fast_max_pool_equals_readable(case, chunk_bytes):
    x, k, s, p, ceil = case
    old = pool_mod._CHUNK_BYTES
    pool_mod._CHUNK_BYTES = chunk_bytes  # 64 bytes: one plane per chunk, many chunks
    try:
        y, sw = ops.max_pool2d(x, k, s, p, ceil)
    finally:
        pool_mod._CHUNK_BYTES = old
    out = tuple(pool_out_size(n, kk, ss, pp, ceil) for n, kk, ss, pp in zip(x.shape[2:], k, s, p))
    yr, swr = pool_mod._max_pool2d_windows(x, k, s, p, out)
    np.testing.assert_array_equal(y, yr)  # NaN == NaN for assert_array_equal
    np.testing.assert_array_equal(sw, swr)
    assert y.dtype == x.dtype and sw.dtype == np.int64
    assert y.shape == sw.shape == x.shape[:2] + out


def test_fast_max_pool_zfnet_shapes():
    """The three ZFNet pools (3x3/2, ceil mode) on realistic map sizes."""
    rng = np.random.default_rng(0)
    for h in (110, 26, 13):
        x = np.maximum(rng.standard_normal((2, 5, h, h)).astype(np.float32), 0)  # ReLU output: many zeros tie
        out = (pool_out_size(h, 3, 2, 0, True),) * 2
        y, sw = ops.max_pool2d(x, 3, 2, 0, True)
        yr, swr = pool_mod._max_pool2d_windows(x, (3, 3), (2, 2), (0, 0), out)
        np.testing.assert_array_equal(y, yr)
        np.testing.assert_array_equal(sw, swr)


def test_polyphase_reports_nan():
    x = np.zeros((1, 1, 5, 5), np.float32)
    x[0, 0, 2, 2] = np.nan
    assert pool_mod._max_pool2d_polyphase(x, (3, 3), (2, 2), (0, 0), (2, 2)) == (None, None)
    y, sw = ops.max_pool2d(x, 3, 2)
    assert np.isnan(y).all() and (sw == 12).all()  # NaN wins, as in PyTorch


# --- convolution: flat-shift columns against the readable im2col / col2im -------------


@st.composite
def conv_inputs(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cg, og = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    sh, sw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    ph, pw = draw(st.integers(0, kh)), draw(st.integers(0, kw))
    h = draw(st.integers(max(1, kh - 2 * ph), 13))
    w = draw(st.integers(max(1, kw - 2 * pw), 13))
    n = draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    x = rng.standard_normal((n, cg * groups, h, w))
    wt = rng.standard_normal((og * groups, cg, kh, kw))
    b = rng.standard_normal(og * groups) if draw(st.booleans()) else None
    return x, wt, b, (sh, sw), (ph, pw), groups


def readable_conv2d(x, w, b, stride, padding, groups):
    """The readable path of ops.conv2d (``_conv2d_im2col``: im2col, one batched GEMM per group)."""
    from zfnet.ops._shape import conv_out_size
    from zfnet.ops.conv import _conv2d_im2col

    kh, kw = w.shape[2:]
    size = tuple(conv_out_size(n, k, s, p) for n, k, s, p in zip(x.shape[2:], (kh, kw), stride, padding))
    return _conv2d_im2col(x, w, b, stride, padding, groups, size)


def readable_conv_transpose2d(y, w, stride, padding, groups, size):
    """The readable path of ops.conv_transpose2d (``_conv_transpose2d_col2im``)."""
    from zfnet.ops.conv import _conv_transpose2d_col2im

    return _conv_transpose2d_col2im(y, w, None, stride, padding, groups, tuple(size))


@given(conv_inputs(), st.sampled_from([1, 1 << 23]))
@settings(max_examples=120, deadline=None)
def test_fast_conv_equals_readable(case, chunk_bytes):
    from zfnet.ops import conv as conv_mod

    x, w, b, stride, padding, groups = case
    old = conv_mod._COLS_CHUNK_BYTES
    conv_mod._COLS_CHUNK_BYTES = chunk_bytes  # 1 byte: one image per GEMM chunk
    try:
        y = ops.conv2d(x, w, b, stride, padding, groups)
    finally:
        conv_mod._COLS_CHUNK_BYTES = old
    np.testing.assert_allclose(y, readable_conv2d(x, w, b, stride, padding, groups), rtol=1e-10, atol=1e-10)
    # the transposed convolution, for every output size the forward could have come from
    g = np.random.default_rng(1).standard_normal(y.shape)
    for dh in range(stride[0]):
        for dw in range(stride[1]):
            size = (x.shape[2] + dh, x.shape[3] + dw)
            if ops.conv_out_size(size[0], w.shape[2], stride[0], padding[0]) != y.shape[2] or \
                    ops.conv_out_size(size[1], w.shape[3], stride[1], padding[1]) != y.shape[3]:
                continue
            got = ops.conv_transpose2d(g, w, None, stride, padding, groups, output_size=size)
            want = readable_conv_transpose2d(g, w, stride, padding, groups, size)
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


@given(conv_inputs(), st.sampled_from([1, 1 << 25]), st.booleans())
@settings(max_examples=120, deadline=None)
def test_fast_weight_grad_equals_readable(case, chunk_bytes, strided_dy):
    """The chunked long-GEMM weight gradient equals one GEMM per image summed over the batch."""
    from zfnet.ops import conv as conv_mod

    x, w, _, stride, padding, groups = case
    n, c = x.shape[:2]
    o, cg, kh, kw = w.shape
    ho = ops.conv_out_size(x.shape[2], kh, stride[0], padding[0])
    wo = ops.conv_out_size(x.shape[3], kw, stride[1], padding[1])
    dy = np.random.default_rng(2).standard_normal((n, o, ho, wo))
    if strided_dy:  # a trimmed view, as a layer's saved output is
        dy = np.concatenate([dy, dy], axis=3)[..., ::2]
    want = conv_mod._conv2d_weight_grad_im2col(x, dy, w.shape, stride, padding, groups, (ho, wo))
    old = conv_mod._WGRAD_CHUNK_BYTES
    conv_mod._WGRAD_CHUNK_BYTES = chunk_bytes  # 1 byte: one image per chunk, many chunks
    try:
        got = ops.conv2d_weight_grad(x, dy, w.shape, stride, padding, groups)
    finally:
        conv_mod._WGRAD_CHUNK_BYTES = old
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_fast_conv_float32_and_views():
    """float32 in, float32 out; a strided (non-contiguous) input gives the same result."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 21, 40)).astype(np.float32)[:, :, :, ::2]  # (2, 3, 21, 20) view
    w = rng.standard_normal((5, 3, 7, 7)).astype(np.float32)
    y = ops.conv2d(x, w, None, 2, 1)
    assert y.dtype == np.float32
    want = readable_conv2d(x.astype(np.float64), w.astype(np.float64), None, (2, 2), (1, 1), 1)
    np.testing.assert_allclose(y, want, rtol=0, atol=1e-4 * np.abs(want).max())
    g = rng.standard_normal(y.shape).astype(np.float32)
    xt = ops.conv_transpose2d(g, w, None, 2, 1, output_size=x.shape)
    assert xt.dtype == np.float32 and xt.shape == x.shape


# --- threads -------------------------------------------------------------------------


def test_parallel_range_covers_every_item_once_and_raises():
    from zfnet.ops._parallel import parallel_range

    seen = np.zeros(1000, int)

    def mark(lo, hi):
        seen[lo:hi] += 1

    parallel_range(1000, mark)
    assert (seen == 1).all()
    parallel_range(0, mark)  # nothing to do
    with pytest.raises(ValueError, match="boom"):
        parallel_range(10, lambda lo, hi: (_ for _ in ()).throw(ValueError("boom")))


def test_parallel_pieces_cover_every_item_once_in_pieces_of_the_asked_size(monkeypatch):
    from zfnet.ops._parallel import parallel_pieces

    monkeypatch.setenv("ZFNET_NUM_THREADS", "2")
    seen = np.zeros(100, int)
    sizes = []

    def mark(lo, hi):
        seen[lo:hi] += 1
        sizes.append(hi - lo)

    parallel_pieces(100, 8, mark, piece_bytes=80)  # 10 items a piece
    assert (seen == 1).all() and max(sizes) == 10 and len(sizes) == 10
    sizes.clear()
    parallel_pieces(3, 1 << 30, mark, piece_bytes=1 << 20)  # items bigger than a piece: one each
    assert sorted(sizes) == [1, 1, 1]
    parallel_pieces(0, 8, mark)  # nothing to do


def test_threaded_relu_equals_maximum():
    rng = np.random.default_rng(5)
    for shape in [(1, 9, 128, 130), (3, 4, 100, 200)]:
        x = rng.standard_normal(shape).astype(np.float32)
        x[0, 0, 0, :3] = [np.nan, -0.0, np.inf]
        view = np.concatenate([x, x], axis=3)[..., ::2]  # same values, strided
        for a in (x, view):
            y = ops.relu(a)
            np.testing.assert_array_equal(y, np.maximum(a, 0))
            assert y.dtype == a.dtype and y.shape == a.shape


def test_parallel_range_after_fork():
    """A forked child must not wait on the parent's (absent) pool threads."""
    import multiprocessing as mp

    from zfnet.ops._parallel import parallel_range

    parallel_range(4, lambda lo, hi: None)  # the parent's pool exists now
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        assert pool.apply_async(_child_sum).get(timeout=60) == 45


def _child_sum():
    from zfnet.ops._parallel import parallel_range

    out = np.zeros(10, int)

    def fill(lo, hi):
        out[lo:hi] = np.arange(lo, hi)

    parallel_range(10, fill)
    return int(out.sum())


def test_threaded_paths_on_big_shapes():
    """Shapes big enough for the threaded branches: unpooling, col2im, im2col, pooling."""
    rng = np.random.default_rng(6)
    x = np.maximum(rng.standard_normal((1, 96, 110, 110)), 0)  # ZFNet's pool1 input; many ties at 0
    y, sw = ops.max_pool2d(x, 3, 2, 0, True)
    yr, swr = pool_mod._max_pool2d_windows(x, (3, 3), (2, 2), (0, 0), y.shape[2:])
    np.testing.assert_array_equal(y, yr)
    np.testing.assert_array_equal(sw, swr)
    g = rng.standard_normal(y.shape)
    up = ops.max_unpool2d(g, sw, x.shape)
    want = np.zeros(x.size)
    np.add.at(want, (sw.reshape(96, -1) + np.arange(96)[:, None] * 110 * 110).ravel(), g.ravel())
    np.testing.assert_allclose(up.ravel(), want, rtol=0, atol=1e-12)
    x = rng.standard_normal((2, 48, 55, 55))
    w = rng.standard_normal((24, 48, 5, 5))
    yc = ops.conv2d(x, w, None, 2, 1)
    np.testing.assert_allclose(yc, readable_conv2d(x, w, None, (2, 2), (1, 1), 1), rtol=1e-10, atol=1e-9)
    gc = rng.standard_normal(yc.shape)
    np.testing.assert_allclose(ops.conv_transpose2d(gc, w, None, 2, 1, output_size=x.shape),
                               readable_conv_transpose2d(gc, w, (2, 2), (1, 1), 1, x.shape[2:]), rtol=1e-10, atol=1e-9)


def test_relu_of_trimmed_views():
    """ReLU of a view that drops the last columns of a buffer (a conv output) and of other views."""
    from zfnet.ops.activation import _trimmed_base

    rng = np.random.default_rng(7)
    y = ops.conv2d(rng.standard_normal((2, 3, 100, 100)).astype(np.float32),
                   rng.standard_normal((8, 3, 7, 7)).astype(np.float32), None, 2, 1)
    assert _trimmed_base(y) is not None  # the conv's wrap-around columns are trimmed off a buffer
    a = rng.standard_normal((4, 5, 60, 70)).astype(np.float32)
    for v in (y, a[..., :60], a[..., 5:], a[..., ::2], a[:2], a.transpose(0, 1, 3, 2)[..., :50], a[..., :30],
              a[:, :3, :, :60], a[:1, :, :, :64]):
        r = ops.relu(v)
        np.testing.assert_array_equal(r, np.maximum(v, 0))
        assert r.shape == v.shape


def test_col2im_phases_checks_its_kernel_size():
    """``kernel_size`` is checked against the columns' window shape, not ignored."""
    from zfnet.errors import ShapeError
    from zfnet.ops.im2col import col2im_phases, im2col_phases

    x = np.arange(2 * 3 * 9 * 9, dtype=np.float32).reshape(2, 3, 9, 9)
    cols, wq = im2col_phases(x, (3, 3), (2, 2), (1, 1))
    back = col2im_phases(cols, (9, 9), (3, 3), (2, 2), (1, 1), wq)
    assert back.shape == x.shape
    with pytest.raises(ShapeError, match="3x3 windows"):
        col2im_phases(cols, (9, 9), (5, 5), (2, 2), (1, 1), wq)


@given(st.integers(1, 5), st.integers(1, 12), st.integers(1, 9), st.sampled_from([1, 2, 3, 5]),
       st.sampled_from([64, 1 << 20]), st.booleans(), st.integers(0, 2**31 - 1))
@settings(max_examples=60, deadline=None)
def test_lrn_by_images_equals_whole_batch(n, c, hw, size, chunk_bytes, strided, seed):
    """LRN and its gradient computed a few images at a time (the NumPy path) give the
    very same values as the formula on the whole batch: the same float operations."""
    import os

    from zfnet.ops import norm

    os.environ["ZFNET_NUM_THREADS"] = "2"  # two threads even on a one-core runner (restored below)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, hw, hw + 1)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    if strided:
        x = np.concatenate([x, x], axis=3)[..., ::2]
    old = norm._CHUNK_BYTES
    norm._CHUNK_BYTES = chunk_bytes  # 64 bytes: one image per piece, several pieces and threads
    try:
        y = ops.lrn(x, size, 1e-2, 0.75, 2.0)
        dx = ops.lrn_backward(x, y, dy, size, 1e-2, 0.75, 2.0)
    finally:
        norm._CHUNK_BYTES = old
        os.environ.pop("ZFNET_NUM_THREADS", None)
    np.testing.assert_array_equal(y, norm._lrn(np, x, size, 1e-2, 0.75, 2.0))
    np.testing.assert_array_equal(dx, norm._lrn_backward(np, x, y, dy, size, 1e-2, 0.75, 2.0))
    assert y.dtype == dx.dtype == np.float32


def test_lrn_of_integers_and_float64_keeps_the_formulas_dtype():
    """Integer inputs are not squeezed into an integer buffer: float64, as the formula gives."""
    x = np.arange(2 * 3 * 2 * 4).reshape(2, 3, 2, 4)
    y = ops.lrn(x, 3)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, x / (1.0 + (1e-4 / 3) * _channel_window(x * x, 1, 1)) ** 0.75, rtol=1e-12)
    dx = ops.lrn_backward(x, x, x, 3)
    assert dx.dtype == np.float64
    xf = x.astype(np.float64) / 7
    np.testing.assert_array_equal(ops.lrn(xf, 3), ops.norm._lrn(np, xf, 3, 1e-4, 0.75, 1.0))


def _channel_window(a, before, after):
    out = np.zeros(a.shape, np.float64)
    for c in range(a.shape[1]):
        out[:, c] = a[:, max(0, c - before): c + after + 1].sum(axis=1)
    return out


def test_chunked_unpool_and_relu_backward_equal_readable(monkeypatch):
    """The threaded, piecewise unpooling and ReLU gradient on ZFNet-sized maps (many
    pieces, two threads) equal one whole-batch np.add.at and ``dy * (y > 0)``."""
    monkeypatch.setenv("ZFNET_NUM_THREADS", "2")  # two threads even on a one-core runner
    rng = np.random.default_rng(8)
    x = np.maximum(rng.standard_normal((3, 40, 110, 110)), 0).astype(np.float32)  # many ties at 0
    y, sw = ops.max_pool2d(x, 3, 2, 0, True)
    g = rng.standard_normal(y.shape).astype(np.float32)
    up = ops.max_unpool2d(g, sw, x.shape)
    want = np.zeros(x.size, np.float32)
    np.add.at(want, (sw.reshape(120, -1) + np.arange(120)[:, None] * 110 * 110).ravel(), g.ravel())
    np.testing.assert_array_equal(up.ravel(), want)  # the same adds in the same order
    assert up.dtype == np.float32
    dy = rng.standard_normal(x.shape).astype(np.float32)
    z = rng.standard_normal(x.shape).astype(np.float32)
    for a in (z, np.concatenate([z, z], axis=3)[..., ::2]):  # contiguous and strided forward maps
        got = ops.relu_backward(dy, a)
        np.testing.assert_array_equal(got, dy * (a > 0))
        assert got.dtype == np.float32 and got.shape == dy.shape


@pytest.mark.parametrize("shape", [
    # (N, C, H, C_out, k, stride, pad, groups): conv1- and conv2-like layers on maps wide
    # enough for flat-shift columns, conv3-5 on 13x13 maps (compact columns), a grouped
    # AlexNet-like layer, a 1x1 convolution
    (2, 3, 71, 8, 7, 2, 1, 1), (2, 6, 55, 8, 5, 2, 0, 1), (3, 16, 13, 12, 3, 1, 1, 1), (2, 16, 13, 12, 3, 1, 1, 2),
    (3, 8, 9, 6, 1, 1, 0, 1),
])
def test_weight_grad_columns_in_gemm_layout(shape, monkeypatch):
    """The weight gradient writes its columns straight into the GEMM's channel-major
    layout (both column kinds, groups, several chunks): equal to the readable
    one-GEMM-per-image version to float64 rounding."""
    from zfnet.ops import conv as conv_mod

    n, c, h, o, k, s, p, g = shape
    rng = np.random.default_rng(11)
    x = rng.standard_normal((n, c, h, h))
    ho = ops.conv_out_size(h, k, s, p)
    dy = rng.standard_normal((n, o, ho, ho))
    monkeypatch.setattr(conv_mod, "_WGRAD_CHUNK_BYTES", 1)  # one image per chunk: several chunks
    got = ops.conv2d_weight_grad(x, dy, (o, c // g, k, k), s, p, g)
    want = conv_mod._conv2d_weight_grad_im2col(x, dy, (o, c // g, k, k), (s, s), (p, p), g, (ho, ho))
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


# --- the forward's columns kept for the filter gradient (training) --------------------


@st.composite
def saved_column_inputs(draw):
    """Shapes for the flat-shift columns (maps wide enough for the layout) and the compact ones."""
    groups = draw(st.sampled_from([1, 1, 2]))
    cg, og = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(2, 5))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    h = draw(st.integers(max(1, kh - 2 * ph), 20))
    w = draw(st.sampled_from([  # flat-shift columns (W_out >= 10 (Wq - W_out)) or compact ones (small maps)
        draw(st.integers(10 * ((kw - 1) // sw) * sw + kw, 10 * ((kw - 1) // sw) * sw + kw + 12)),
        draw(st.integers(max(1, kw - 2 * pw), 9))]))
    n = draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    x_dtype, w_dtype = draw(st.sampled_from([(np.float64, np.float64), (np.float32, np.float32),
                                             (np.float32, np.float64)]))  # mixed: the result is float64
    x = rng.standard_normal((n, cg * groups, h, w)).astype(x_dtype)
    wt = rng.standard_normal((og * groups, cg, kh, kw)).astype(w_dtype)
    b = rng.standard_normal(og * groups).astype(w_dtype) if draw(st.booleans()) else None
    return x, wt, b, (sh, sw), (ph, pw), groups, draw(st.booleans())


@given(saved_column_inputs(), st.sampled_from([1, 1 << 23]))
@settings(max_examples=120, deadline=None)
def test_saved_columns_give_the_gradients_of_conv2d_weight_grad(case, chunk_bytes):
    """conv2d_relu returns relu(conv2d(...)) (or conv2d's output) bit for bit; its saved
    columns give conv2d_weight_grad's filter gradient, conv2d_bias_grad's bias gradient
    and relu_backward's dz."""
    from zfnet.ops import conv as conv_mod

    x, w, b, stride, padding, groups, relu = case
    old = conv_mod._COLS_CHUNK_BYTES
    conv_mod._COLS_CHUNK_BYTES = chunk_bytes  # 1 byte: one image per GEMM chunk
    try:
        y, saved = ops.conv.conv2d_relu(x, w, b, stride, padding, groups, relu=relu, keep_columns=True)
        y2, none = ops.conv.conv2d_relu(x, w, b, stride, padding, groups, relu=relu)
    finally:
        conv_mod._COLS_CHUNK_BYTES = old
    plain = ops.conv2d(x, w, b, stride, padding, groups)
    np.testing.assert_array_equal(y, ops.relu(plain) if relu else plain)
    np.testing.assert_array_equal(y2, y)
    assert none is None  # nothing kept unless asked
    one_by_one = w.shape[2:] == (1, 1) and stride == (1, 1) and padding == (0, 0)
    assert (saved is None) == one_by_one
    if saved is None:
        return
    from zfnet.ops.im2col import phase_geometry

    wo = saved.out_size[1]
    compact = phase_geometry(saved.out_size, w.shape[2:], stride)[1] - wo > 0.1 * wo  # small maps: compact columns
    assert saved.wq == (wo if compact else phase_geometry(saved.out_size, w.shape[2:], stride)[1])
    assert saved.ones_row == (b is not None and groups == 1 and not compact)
    dy = np.random.default_rng(2).standard_normal(y.shape)
    dw, db, dz = ops.conv.conv2d_grads_from_columns(saved, dy, w.shape, y if relu else None)
    want_dz = ops.relu_backward(dy, y) if relu else dy
    np.testing.assert_array_equal(dz, want_dz)
    # float64 sums agree to rounding; float32 ones (a different order of additions) to 1e-5
    # of the largest term, |dy| |x| summed over at most a few hundred positions and images
    tol = 1e-10 if x.dtype == np.float64 else 1e-5 * float(np.abs(want_dz).max() * np.abs(x).max()) * want_dz[0, 0].size
    np.testing.assert_allclose(dw, ops.conv2d_weight_grad(x, want_dz, w.shape, stride, padding, groups),
                               rtol=1e-10 if tol == 1e-10 else 1e-5, atol=tol)
    if saved.ones_row:
        np.testing.assert_allclose(db, ops.conv2d_bias_grad(want_dz), rtol=1e-10 if tol == 1e-10 else 1e-5,
                                   atol=tol)
    else:
        assert db is None


@pytest.mark.parametrize("groups", [1, 2])
def test_winograd_layers_keep_their_input_tiles(groups):
    """A Winograd convolution saves its transformed input (SavedTiles); the filter
    gradient from them is winograd_weight_grad's, the ReLU is fused exactly."""
    from zfnet.ops.conv import SavedTiles, conv2d_grads_from_columns, conv2d_relu

    rng = np.random.default_rng(groups)
    c = 128 * groups  # 128 channels in and out per group: Winograd's case
    x = rng.standard_normal((3, c, 9, 9))
    w = rng.standard_normal((c, 128, 3, 3))
    b = rng.standard_normal(c)
    y, saved = conv2d_relu(x, w, b, 1, 1, groups, relu=True, keep_columns=True)
    assert isinstance(saved, SavedTiles) and saved.tiles.shape == (16, c, 5, 5, 3)
    np.testing.assert_array_equal(y, ops.relu(ops.conv2d(x, w, b, 1, 1, groups)))
    dy = rng.standard_normal(y.shape)
    dw, db, dz = conv2d_grads_from_columns(saved, dy, w.shape, y)
    np.testing.assert_array_equal(dz, ops.relu_backward(dy, y))
    assert db is None  # the layer takes conv2d_bias_grad
    np.testing.assert_allclose(dw, ops.conv2d_weight_grad(x, dz, w.shape, 1, 1, groups), rtol=1e-9, atol=1e-9)
    from zfnet.errors import ShapeError
    from zfnet.ops.winograd import winograd_weight_grad

    with pytest.raises(ShapeError, match="tiles of shape"):
        winograd_weight_grad(x[:2], dz[:2], w.shape, (1, 1), groups, tiles=saved.tiles)
    # the input gradient from the forward's transformed filters (permuted for the flip): the same bits
    from zfnet.ops.conv import conv2d_input_grad
    from zfnet.ops.winograd import filter_transform, winograd_input_grad

    np.testing.assert_array_equal(saved.u, filter_transform(w))
    dx = conv2d_input_grad(dz, w, (1, 1), (1, 1), groups, x.shape, saved)
    np.testing.assert_array_equal(dx, ops.conv_transpose2d(dz, w, None, 1, 1, groups, output_size=x.shape))
    with pytest.raises(ShapeError, match="transformed filters"):
        winograd_input_grad(dz, w, (1, 1), groups, u=saved.u[:, :-1])


def test_saved_columns_only_where_the_flat_shift_path_runs():
    """Small maps save their compact columns, 1x1 convolutions nothing; a shape
    mismatch in the gradient is an error naming both shapes."""
    from zfnet.errors import ShapeError
    from zfnet.ops.conv import conv2d_grads_from_columns, conv2d_relu

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 64, 16, 16)).astype(np.float32)
    small = conv2d_relu(x[:, :, :6, :6], rng.standard_normal((4, 64, 3, 3)), None, 1, 0, keep_columns=True)[1]
    assert small.wq == 4 and small.cols.shape == (2, 64 * 9, 4 * 4)  # compact columns: no wrap-around
    assert conv2d_relu(x, rng.standard_normal((4, 64, 1, 1)), keep_columns=True)[1] is None
    wide = rng.standard_normal((2, 3, 16, 32))  # W_out 32, 2 wrap-around columns: the flat-shift layout
    y, saved = conv2d_relu(wide, rng.standard_normal((5, 3, 3, 3)), np.zeros(5), 1, 1, keep_columns=True)
    assert saved is not None and saved.cols.shape == (2, 3 * 9 + 1, 16 * 34) and y.shape == (2, 5, 16, 32)
    with pytest.raises(ShapeError, match=r"\(5, 3, 5, 5\)"):  # filters of another size than the columns'
        conv2d_grads_from_columns(saved, np.zeros((2, 5, 16, 32)), (5, 3, 5, 5))
    with pytest.raises(ShapeError, match=r"\(2, 5, 16, 30\)"):  # dy of another size than the output
        conv2d_grads_from_columns(saved, np.zeros((2, 5, 16, 30)), (5, 3, 3, 3))


@given(st.integers(1, 5), st.integers(1, 12), st.integers(1, 9), st.sampled_from([1, 2, 3, 5]),
       st.sampled_from([64, 1 << 20]), st.sampled_from([np.float32, np.float64]), st.integers(0, 2**31 - 1))
@settings(max_examples=40, deadline=None)
def test_lrn_saved_scale_gives_the_same_bits(n, c, hw, size, chunk_bytes, dtype, seed):
    """lrn_saving_scale's output is lrn's; lrn_backward with the saved (s, s**beta) is the
    same as without it, bit for bit, whole batch or in pieces."""
    from zfnet.ops import norm

    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, c, hw, hw)) * 3).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    old = norm._CHUNK_BYTES
    norm._CHUNK_BYTES = chunk_bytes  # 64 bytes: one image a piece
    try:
        y, scale = norm.lrn_saving_scale(x, size, 1e-2, 0.75, 2.0)
        want = ops.lrn_backward(x, y, dy, size, 1e-2, 0.75, 2.0)
        got = ops.lrn_backward(x, y, dy, size, 1e-2, 0.75, 2.0, scale=scale)
    finally:
        norm._CHUNK_BYTES = old
    np.testing.assert_array_equal(y, ops.lrn(x, size, 1e-2, 0.75, 2.0))
    s = 2.0 + 1e-2 / size * norm._window_sum(np, x.astype(np.float64) ** 2, size // 2, (size - 1) // 2)
    np.testing.assert_allclose(scale.s, s, rtol=1e-6)
    np.testing.assert_allclose(scale.s_beta, s**0.75, rtol=1e-6)
    np.testing.assert_array_equal(got, want)
    from zfnet.errors import ShapeError

    with pytest.raises(ShapeError, match="saved scale"):
        ops.lrn_backward(x, y, dy, size, 1e-2, 0.75, 2.0, scale=norm.LRNScale(scale.s[:, :, :0], scale.s_beta[:, :, :0]))


def test_lrn_window_sum_without_padding_equals_the_padded_sum():
    """The window sum over channels by slices gives the zero-padded sum's bits, for every
    window around every channel count (windows longer than the channels included)."""
    from zfnet.ops.norm import _window_sum

    def padded(a, before, after):
        c = a.shape[1]
        p = np.pad(a, [(0, 0), (before, after), (0, 0), (0, 0)])
        out = p[:, 0:c].copy()
        for d in range(1, before + after + 1):
            out += p[:, d : d + c]
        return out

    rng = np.random.default_rng(0)
    for c in range(1, 10):
        for before in range(5):
            for after in range(5):
                a = (rng.standard_normal((2, c, 3, 4)) * 10.0 ** rng.integers(-3, 3, (2, c, 3, 4))).astype(np.float32)
                assert padded(a, before, after).tobytes() == _window_sum(np, a, before, after).tobytes(), \
                    (c, before, after)
