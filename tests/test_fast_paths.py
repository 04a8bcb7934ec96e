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
