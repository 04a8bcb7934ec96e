"""The ops and layers Caffe graphs added: within-channel LRN, Caffe's average pooling,
dilated convolution, standalone ReLU, softmax, concatenation.

Each op against the naive reference (tests/reference.py), its gradient against float64
central differences, its adjoint identity where it is linear, and PyTorch where
installed (skipped cleanly without torch).

Tolerances: float32 ops against float64 references, ``atol = 1e-4 * max|reference|``
(as in test_ops.py); float64 gradients against central differences ``rtol 1e-6``.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference as ref
from zfnet import nn
from zfnet.errors import ShapeError
from zfnet.nn import Trace
from zfnet.ops.avg_pool import avg_pool2d, avg_unpool2d
from zfnet.ops.norm import lrn_within_channel, lrn_within_channel_backward


def close(a, b, rel=1e-4):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = max(1.0, float(np.abs(b).max(initial=0.0)))
    np.testing.assert_allclose(a, b, rtol=0, atol=rel * scale)


# ------------------------------------------------------------------ within-channel LRN


@given(size=st.sampled_from([1, 3, 5, 7]), alpha=st.floats(1e-5, 1.0), beta=st.floats(0.1, 1.0),
       k=st.floats(0.5, 3.0), h=st.integers(1, 7), w=st.integers(1, 7), seed=st.integers(0, 999))
@settings(max_examples=25, deadline=None)
def test_lrn_within_channel_matches_reference(size, alpha, beta, k, h, w, seed):
    x = np.random.default_rng(seed).standard_normal((2, 3, h, w)).astype(np.float32) * 3
    close(lrn_within_channel(x, size, alpha, beta, k), ref.lrn_within_channel(x, size, alpha, beta, k))


def test_lrn_within_channel_divides_by_the_full_window_at_the_border():
    """Caffe's divisor is size^2 everywhere: a lone value in a corner sees alpha * v^2 / 9."""
    x = np.zeros((1, 1, 4, 4), np.float64)
    x[0, 0, 0, 0] = 2.0
    y = lrn_within_channel(x, 3, alpha=0.9, beta=1.0, k=1.0)
    assert y[0, 0, 0, 0] == pytest.approx(2.0 / (1 + 0.9 * 4.0 / 9))
    with pytest.raises(ShapeError, match="odd"):
        lrn_within_channel(x, 4)


@given(size=st.sampled_from([1, 3, 5]), beta=st.floats(0.2, 1.0), seed=st.integers(0, 999))
@settings(max_examples=10, deadline=None)
def test_lrn_within_channel_backward_is_the_gradient(size, beta, seed):
    """Against central differences of the float64 op (rtol 1e-6)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, 2, 4, 5)) * 2
    dy = rng.standard_normal(x.shape)
    alpha, k = 0.7, 1.3
    y = lrn_within_channel(x, size, alpha, beta, k)
    dx = lrn_within_channel_backward(x, y, dy, size, alpha, beta, k)
    eps = 1e-6
    num = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        num[idx] = ((lrn_within_channel(xp, size, alpha, beta, k) - lrn_within_channel(xm, size, alpha, beta, k))
                    * dy).sum() / (2 * eps)
    np.testing.assert_allclose(dx, num, rtol=1e-6, atol=1e-8)


def test_lrn_layer_regions_and_deconv_rule():
    x = np.random.default_rng(0).standard_normal((1, 4, 6, 6)).astype(np.float32)
    within = nn.LRN("n", 3, 5e-5, 0.75, 1.0, region="within_channel")
    np.testing.assert_array_equal(within.forward(x), lrn_within_channel(x, 3, 5e-5, 0.75, 1.0))
    assert within.rf() == (3, 1, 1) and nn.LRN("a", 5).rf() == (1, 1, 0)
    sig = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    np.testing.assert_array_equal(within.deconv(sig, Trace()), sig)  # passed through, as across channels
    assert nn.layer_from_spec(within.spec()).spec() == within.spec()


# ------------------------------------------------------------------ average pooling


@st.composite
def pool_case(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    h = draw(st.integers(max(1, kh - 2 * ph), 9))
    w = draw(st.integers(max(1, kw - 2 * pw), 9))
    return (kh, kw), (sh, sw), (ph, pw), h, w, draw(st.booleans()), draw(st.integers(0, 999))


@given(pool_case())
@settings(max_examples=40, deadline=None)
def test_avg_pool_matches_reference_and_its_adjoint(case):
    k, s, p, h, w, ceil, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
    y = avg_pool2d(x, k, s, p, ceil)
    close(y, ref.avg_pool2d(x, k, s, p, ceil))
    g = rng.standard_normal(y.shape)
    x64 = x.astype(np.float64)
    lhs = float((avg_pool2d(x64, k, s, p, ceil) * g).sum())
    rhs = float((x64 * avg_unpool2d(g, (h, w), k, s, p, ceil)).sum())
    assert lhs == pytest.approx(rhs, rel=1e-10, abs=1e-10)


# ------------------------------------------------------------------------- PyTorch


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def test_within_channel_lrn_and_avg_pool_match_torch(torch):
    """Independent torch formulations: LRN as x / (1 + alpha * avg_pool(x^2, count_include_pad))^beta."""
    import torch.nn.functional as F

    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 5, 11, 9)).astype(np.float32) * 4
    xt = torch.tensor(x, requires_grad=True)
    yt = xt / (1 + 5e-2 * F.avg_pool2d(xt * xt, 3, 1, 1, count_include_pad=True)) ** 0.75
    close(lrn_within_channel(x, 3, 5e-2, 0.75), yt.detach().numpy())
    dy = rng.standard_normal(x.shape).astype(np.float32)
    yt.backward(torch.from_numpy(dy))
    y = lrn_within_channel(x, 3, 5e-2, 0.75)
    close(lrn_within_channel_backward(x, y, dy, 3, 5e-2, 0.75), xt.grad.numpy())
    for k, s, p in [(3, 2, 1), (2, 2, 0), (3, 3, 1), (5, 1, 2)]:
        want = F.avg_pool2d(torch.tensor(x), k, s, p, ceil_mode=True, count_include_pad=True).numpy()
        close(avg_pool2d(x, k, s, p, True), want)


def test_dilated_conv_matches_torch(torch):
    import torch.nn.functional as F

    rng = np.random.default_rng(4)
    conv = nn.Conv2d("c", 4, 6, 3, stride=2, padding=2, groups=2, dilation=2, rng=rng)
    conv.bias = rng.standard_normal(6).astype(np.float32)
    x = rng.standard_normal((2, 4, 13, 12)).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(conv.weight, requires_grad=True)
    yt = F.relu(F.conv2d(xt, wt, torch.tensor(conv.bias), 2, 2, 2, 2))
    conv.training = True
    tr = Trace()
    y = conv.forward(x, tr)
    close(y, yt.detach().numpy())
    assert conv.output_shape(x.shape) == y.shape and conv.rf() == (5, 2, 2)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    yt.backward(torch.from_numpy(dy))
    close(conv.backward(dy, tr), xt.grad.numpy())
    close(conv.grads["weight"], wt.grad.numpy())


def test_relu_softmax_concat_layers_backward_match_torch(torch):
    """A concatenation of (conv -> avg-pool), (relu), (conv) branches, then a softmax."""
    import torch.nn.functional as F

    rng = np.random.default_rng(5)
    a = nn.Conv2d("a", 3, 4, 3, padding=1, rng=rng)
    pool = nn.AvgPool2d("ap", 3, 1, 1, ceil_mode=True)
    r = nn.ReLU("r")
    b = nn.Conv2d("b", 3, 2, 1, relu=False, rng=rng)
    cat = nn.Concat("cat", [[a, pool], [r], [b]])
    sm = nn.Softmax("prob")
    x = rng.standard_normal((2, 3, 6, 7)).astype(np.float32)
    for layer in (cat, sm):
        layer.training = True
    tr = Trace()
    y = sm.forward(cat.forward(x, tr), tr)
    xt = torch.tensor(x, requires_grad=True)
    at, bt = torch.tensor(a.weight, requires_grad=True), torch.tensor(b.weight, requires_grad=True)
    branch_a = F.avg_pool2d(F.relu(F.conv2d(xt, at, torch.tensor(a.bias), 1, 1)), 3, 1, 1,
                            ceil_mode=True, count_include_pad=True)
    yt = F.softmax(torch.cat([branch_a, F.relu(xt), F.conv2d(xt, bt, torch.tensor(b.bias))], 1), dim=1)
    close(y, yt.detach().numpy())
    assert cat.output_shape(x.shape) == (2, 9, 6, 7) and cat.rf() == (5, 1, 2)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    yt.backward(torch.from_numpy(dy))
    dx = cat.backward(sm.backward(dy, tr), tr)
    close(dx, xt.grad.numpy())
    close(cat.grads["a.weight"], at.grad.numpy())
    close(cat.grads["b.weight"], bt.grad.numpy())


# ------------------------------------------------------------------- backend parity


def test_new_ops_agree_across_backends(xp):
    """The readable xp code on CuPy (no kernels of their own yet) equals NumPy's (atol 1e-5 relative)."""
    from zfnet.backend import asnumpy

    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32) * 3
    X = xp.asarray(x)
    close(asnumpy(lrn_within_channel(X, 3, 0.1, 0.75)), lrn_within_channel(x, 3, 0.1, 0.75), 1e-5)
    y = lrn_within_channel(x, 3, 0.1, 0.75)
    close(asnumpy(lrn_within_channel_backward(X, xp.asarray(y), X, 3, 0.1, 0.75)),
          lrn_within_channel_backward(x, y, x, 3, 0.1, 0.75), 1e-5)
    close(asnumpy(avg_pool2d(X, 3, 2, 1, True)), avg_pool2d(x, 3, 2, 1, True), 1e-5)
    g = avg_pool2d(x, 3, 2, 1, True)
    close(asnumpy(avg_unpool2d(xp.asarray(g), (9, 8), 3, 2, 1, True)), avg_unpool2d(g, (9, 8), 3, 2, 1, True), 1e-5)
    conv = nn.Conv2d("c", 3, 4, 3, padding=2, dilation=2)
    want = conv.forward(x)
    conv.weight, conv.bias = xp.asarray(conv.weight), xp.asarray(conv.bias)
    close(asnumpy(conv.forward(X)), want, 1e-5)
