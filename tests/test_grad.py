"""Gradients of the ops: finite differences in float64, and PyTorch autograd.

Each backward op is checked by a central difference along random directions
``v``: ``(L(a + eps v) - L(a - eps v)) / (2 eps) == <dL/da, v>`` with
``L = <f(a), r>`` for a random output weighting ``r``.  Two evaluations per
direction keep the tests fast while still testing every entry of the gradient
(a wrong entry changes the inner product for almost every ``v``).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zfnet.errors import ShapeError
from zfnet.ops import (
    conv2d,
    conv2d_bias_grad,
    conv2d_weight_grad,
    conv_out_size,
    conv_transpose2d,
    dropout,
    dropout_backward,
    linear,
    linear_backward,
    lrn,
    lrn_backward,
    max_pool2d,
    max_unpool2d,
    relu,
    relu_backward,
    softmax,
    softmax_cross_entropy,
)


def directional_check(f, a, grad, rng, n_dirs=3, eps=1e-6, rtol=1e-6, atol=1e-9):
    """Assert ``<grad, v>`` equals the central difference of scalar ``f`` along ``v``.

    The difference quotient carries a rounding error of about ``1e-16 |f| / eps`` (two
    values of size ``|f|`` subtracted, divided by ``eps``), so the absolute tolerance
    grows with ``|f(a)|``: with eps = 1e-6 that is ~1e-10 |f|, and 1e-8 |f| is a safe
    bound that still catches any wrong gradient (which is off by O(|<grad, v>|)).
    """
    atol = max(atol, 1e-8 * abs(float(f(a))))
    for _ in range(n_dirs):
        v = rng.standard_normal(a.shape)
        fd = (f(a + eps * v) - f(a - eps * v)) / (2 * eps)
        an = float(np.sum(grad * v))
        assert np.isclose(fd, an, rtol=rtol, atol=atol), (fd, an)


conv_cases = st.fixed_dictionaries(
    {
        "n": st.integers(1, 2),
        "groups": st.integers(1, 2),
        "cg": st.integers(1, 2),
        "og": st.integers(1, 3),
        "k": st.integers(1, 3),
        "stride": st.integers(1, 3),
        "padding": st.integers(0, 2),
        "h": st.integers(3, 7),
        "w": st.integers(3, 7),
        "seed": st.integers(0, 2**16),
    }
)


@settings(max_examples=25, deadline=None)
@given(conv_cases)
def test_conv2d_gradients_finite_differences(case):
    rng = np.random.default_rng(case["seed"])
    g, k = case["groups"], case["k"]
    c, o = case["cg"] * g, case["og"] * g
    x = rng.standard_normal((case["n"], c, case["h"], case["w"]))
    w = rng.standard_normal((o, case["cg"], k, k))
    b = rng.standard_normal(o)
    s, p = case["stride"], case["padding"]
    ho, wo = conv_out_size(case["h"], k, s, p), conv_out_size(case["w"], k, s, p)
    r = rng.standard_normal((case["n"], o, ho, wo))  # dL/dy for L = <y, r>

    dw = conv2d_weight_grad(x, r, w.shape, s, p, g)
    db = conv2d_bias_grad(r)
    dx = conv_transpose2d(r, w, None, s, p, g, output_size=x.shape)  # the input gradient
    assert dw.shape == w.shape and db.shape == b.shape and dx.shape == x.shape

    directional_check(lambda w_: np.sum(conv2d(x, w_, b, s, p, g) * r), w, dw, rng)
    directional_check(lambda b_: np.sum(conv2d(x, w, b_, s, p, g) * r), b, db, rng)
    directional_check(lambda x_: np.sum(conv2d(x_, w, b, s, p, g) * r), x, dx, rng)


def test_conv2d_weight_grad_rejects_bad_shapes():
    x = np.zeros((1, 4, 5, 5))
    with pytest.raises(ShapeError, match="groups"):
        conv2d_weight_grad(x, np.zeros((1, 3, 3, 3)), (3, 4, 3, 3), groups=2)
    with pytest.raises(ShapeError, match="expects"):
        conv2d_weight_grad(x, np.zeros((1, 2, 3, 3)), (2, 3, 3, 3))
    with pytest.raises(ShapeError, match="dy must have shape"):
        conv2d_weight_grad(x, np.zeros((1, 2, 4, 4)), (2, 4, 3, 3))
    with pytest.raises(ShapeError, match="4-D"):
        conv2d_bias_grad(np.zeros((2, 3)))


@settings(max_examples=20, deadline=None)
@given(
    k=st.integers(2, 3),
    s=st.integers(1, 3),
    p=st.integers(0, 1),
    ceil=st.booleans(),
    h=st.integers(4, 8),
    w=st.integers(4, 8),
    seed=st.integers(0, 2**16),
)
def test_max_pool_gradient_is_unpooling(k, s, p, ceil, h, w, seed):
    rng = np.random.default_rng(seed)
    # distinct values spaced well apart, so a tiny step never changes a switch
    x = rng.permutation(2 * h * w * 2).reshape(2, 2, h, w).astype(np.float64)
    y, sw = max_pool2d(x, k, s, p, ceil)
    r = rng.standard_normal(y.shape)
    dx = max_unpool2d(r, sw, x.shape)  # scatter-add = the gradient, also for overlapping windows
    directional_check(lambda x_: np.sum(max_pool2d(x_, k, s, p, ceil)[0] * r), x, dx, rng, eps=1e-3)


def test_relu_backward():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 5))
    x[np.abs(x) < 1e-3] = 0.5  # keep away from the kink
    r = rng.standard_normal(x.shape)
    dx = relu_backward(r, relu(x))
    directional_check(lambda x_: np.sum(relu(x_) * r), x, dx, rng)
    assert np.array_equal(relu_backward(r, x), dx)  # the input gives the same mask as the output


@settings(max_examples=20, deadline=None)
@given(
    size=st.integers(1, 6),
    c=st.integers(1, 7),
    k=st.sampled_from([1.0, 2.0]),
    seed=st.integers(0, 2**16),
)
def test_lrn_backward_finite_differences(size, c, k, seed):
    rng = np.random.default_rng(seed)
    # alpha large enough that the cross-channel term is far from negligible
    alpha, beta = 0.5, 0.75
    x = rng.standard_normal((2, c, 3, 2)) * 2
    y = lrn(x, size, alpha, beta, k)
    r = rng.standard_normal(x.shape)
    dx = lrn_backward(x, y, r, size, alpha, beta, k)
    directional_check(lambda x_: np.sum(lrn(x_, size, alpha, beta, k) * r), x, dx, rng)


def test_lrn_backward_rejects_mismatched_shapes():
    with pytest.raises(ShapeError, match="lrn_backward"):
        lrn_backward(np.zeros((1, 3, 2, 2)), np.zeros((1, 3, 2, 2)), np.zeros((1, 4, 2, 2)), 5)


def test_linear_backward():
    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal((4, 6)), rng.standard_normal((3, 6)), rng.standard_normal(3)
    r = rng.standard_normal((4, 3))
    dx, dw, db = linear_backward(x, w, r)
    directional_check(lambda x_: np.sum(linear(x_, w, b) * r), x, dx, rng)
    directional_check(lambda w_: np.sum(linear(x, w_, b) * r), w, dw, rng)
    directional_check(lambda b_: np.sum(linear(x, w, b_) * r), b, db, rng)
    with pytest.raises(ShapeError, match="linear_backward"):
        linear_backward(x, w, r.T)


def test_dropout_backward_is_the_adjoint():
    rng = np.random.default_rng(2)
    x, r = rng.standard_normal((5, 8)), rng.standard_normal((5, 8))
    keep = rng.random((5, 8)) >= 0.5
    y = dropout(x, keep, 0.5)
    assert np.array_equal(y, np.where(keep, 2 * x, 0))
    # linear in x, so the gradient is exact: <dropout(x), r> == <x, dropout_backward(r)>
    assert np.isclose(np.sum(y * r), np.sum(x * dropout_backward(r, keep, 0.5)))
    with pytest.raises(ShapeError, match="mask"):
        dropout_backward(r, keep[:, :4], 0.5)
    with pytest.raises(ShapeError, match="p=1"):
        dropout(x, keep, 1)


def test_softmax_cross_entropy_value_and_gradient():
    rng = np.random.default_rng(3)
    z = rng.standard_normal((6, 5)) * 3
    t = rng.integers(0, 5, 6)
    loss, dz = softmax_cross_entropy(z, t)
    assert np.isclose(float(loss), -np.mean(np.log(softmax(z)[np.arange(6), t])))
    directional_check(lambda z_: float(softmax_cross_entropy(z_, t)[0]), z, dz, rng)
    assert np.allclose(dz.sum(axis=1), 0)  # softmax minus one-hot sums to zero per row


def test_softmax_cross_entropy_is_stable_and_checks_labels():
    z = np.array([[1e4, 0.0, -1e4], [0.0, 0.0, 0.0]], np.float32)
    loss, dz = softmax_cross_entropy(z, np.array([1, 2]))
    assert np.isfinite(float(loss)) and np.all(np.isfinite(dz))
    assert np.isclose(float(loss), (1e4 + np.log(3)) / 2, rtol=1e-5)
    with pytest.raises(ShapeError, match="labels must lie"):
        softmax_cross_entropy(z, np.array([0, 3]))
    with pytest.raises(ShapeError, match="logits must be"):
        softmax_cross_entropy(z, np.array([0]))


# -- PyTorch autograd agreement (float32, the training dtype) ---------------------------


@pytest.mark.parametrize(
    "n,c,o,k,s,p,g,h",
    [(2, 3, 4, 7, 2, 1, 1, 15), (2, 4, 6, 5, 1, 2, 2, 9), (1, 2, 2, 3, 3, 0, 1, 8)],
)
def test_conv_grads_match_torch(n, c, o, k, s, p, g, h):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(4)
    x = rng.standard_normal((n, c, h, h)).astype(np.float32)
    w = rng.standard_normal((o, c // g, k, k)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    yt = F.conv2d(xt, wt, bt, s, p, 1, g)
    r = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
    yt.backward(torch.tensor(r))
    np.testing.assert_allclose(conv2d_weight_grad(x, r, w.shape, s, p, g), wt.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(conv2d_bias_grad(r), bt.grad.numpy(), rtol=1e-4, atol=1e-4)
    dx = conv_transpose2d(r, w, None, s, p, g, output_size=x.shape)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size,k", [(5, 2.0), (5, 1.0), (4, 1.0)])
def test_lrn_pool_relu_grads_match_torch(size, k):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((2, 7, 11, 11)) * 30).astype(np.float32)  # large enough for LRN to bite
    xt = torch.tensor(x, requires_grad=True)
    a = F.relu(xt)
    yt = F.local_response_norm(a, size, 1e-4, 0.75, k)
    zt = F.max_pool2d(yt, 3, 2, 0, 1, True)
    r = rng.standard_normal(tuple(zt.shape)).astype(np.float32)
    zt.backward(torch.tensor(r))

    a_np = relu(x)
    y_np = lrn(a_np, size, 1e-4, 0.75, k)
    z_np, sw = max_pool2d(y_np, 3, 2, 0, True)
    dy = max_unpool2d(r, sw, y_np.shape)
    da = lrn_backward(a_np, y_np, dy, size, 1e-4, 0.75, k)
    dx = relu_backward(da, a_np)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_cross_entropy_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    z = (rng.standard_normal((8, 10)) * 4).astype(np.float32)
    t = rng.integers(0, 10, 8)
    zt = torch.tensor(z, requires_grad=True)
    lt = torch.nn.functional.cross_entropy(zt, torch.tensor(t))
    lt.backward()
    loss, dz = softmax_cross_entropy(z, t)
    assert np.isclose(float(loss), lt.item(), rtol=1e-5)
    np.testing.assert_allclose(dz, zt.grad.numpy(), rtol=1e-5, atol=1e-7)
