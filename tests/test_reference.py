"""Verify the specification itself: tests/reference.py against PyTorch on fixed cases.

The fast ops are tested against ``reference``; this file is what makes the reference
trustworthy.  The torch comparisons skip when torch is absent; the self-consistency
checks (adjoint identities, receptive fields of a 3x3 stack) always run.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests import reference as ref
from zfnet.errors import ShapeError



def _torch():
    return pytest.importorskip("torch", reason="torch is needed to check the reference against PyTorch")


def _t(a):
    torch = _torch()
    return torch.from_numpy(np.ascontiguousarray(a))


# (N, C, H, W, O, kernel, stride, padding, groups)
CONV_CASES = [
    (2, 3, 7, 6, 4, 3, 1, 0, 1),
    (1, 4, 9, 8, 6, (3, 2), (2, 1), (1, 0), 2),
    (2, 2, 8, 8, 4, 5, 2, 2, 2),
    (1, 3, 6, 5, 3, 3, 1, 1, 3),            # depthwise
    (1, 3, 17, 17, 2, 7, 2, 1, 1),          # ZFNet conv1 geometry, small image
    (1, 2, 10, 9, 2, 5, 2, 0, 1),           # ZFNet conv2 geometry
    (1, 1, 5, 5, 1, 1, 3, 0, 1),            # 1x1 kernel, stride > kernel
]


@pytest.mark.parametrize("N,C,H,W,O,k,s,p,g", CONV_CASES)
def test_conv2d_matches_torch(N, C, H, W, O, k, s, p, g, rng):
    torch = _torch()
    kh, kw = ref._pair(k, "k")
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((O, C // g, kh, kw))
    b = rng.standard_normal(O)
    got = ref.conv2d(x, w, b, stride=s, padding=p, groups=g)
    want = torch.nn.functional.conv2d(_t(x), _t(w), _t(b), stride=s, padding=p, groups=g).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("N,C,H,W,O,k,s,p,g", CONV_CASES)
def test_conv_transpose2d_matches_torch(N, C, H, W, O, k, s, p, g, rng):
    torch = _torch()
    kh, kw = ref._pair(k, "k")
    sh, sw = ref._pair(s, "s")
    ph, pw = ref._pair(p, "p")
    Ho, Wo = ref.conv_out_size(H, kh, sh, ph), ref.conv_out_size(W, kw, sw, pw)
    y = rng.standard_normal((N, O, Ho, Wo))
    w = rng.standard_normal((O, C // g, kh, kw))
    b = rng.standard_normal(C)
    # output_size=(H, W) recovers the forward input size; the output padding it implies
    # is the remainder the forward floor division dropped.
    op = ((H + 2 * ph - kh) % sh, (W + 2 * pw - kw) % sw)
    got = ref.conv_transpose2d(y, w, b, stride=s, padding=p, groups=g, output_size=(H, W))
    want = torch.nn.functional.conv_transpose2d(
        _t(y), _t(w), _t(b), stride=s, padding=p, output_padding=op, groups=g
    ).numpy()
    assert got.shape == want.shape == (N, C, H, W)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    # Without output_size the output padding is 0.
    got0 = ref.conv_transpose2d(y, w, None, stride=s, padding=p, groups=g)
    want0 = torch.nn.functional.conv_transpose2d(_t(y), _t(w), None, stride=s, padding=p, groups=g).numpy()
    np.testing.assert_allclose(got0, want0, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("N,C,H,W,O,k,s,p,g", CONV_CASES)
def test_conv_transpose2d_is_adjoint_of_conv2d(N, C, H, W, O, k, s, p, g, rng):
    kh, kw = ref._pair(k, "k")
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((O, C // g, kh, kw))
    y = rng.standard_normal(ref.conv2d(x, w, stride=s, padding=p, groups=g).shape)
    lhs = np.vdot(ref.conv2d(x, w, stride=s, padding=p, groups=g), y)
    rhs = np.vdot(x, ref.conv_transpose2d(y, w, stride=s, padding=p, groups=g, output_size=x.shape))
    assert lhs == pytest.approx(rhs, rel=1e-12, abs=1e-12)


def test_conv_transpose2d_rejects_unreachable_output_size():
    y = np.zeros((1, 1, 3, 3))
    w = np.zeros((1, 1, 3, 3))
    # (3 - 1) * 2 + 3 = 7; with stride 2 the reachable sizes are 7 and 8.
    assert ref.conv_transpose2d(y, w, stride=2, output_size=(8, 7)).shape == (1, 1, 8, 7)
    with pytest.raises(ShapeError, match="unreachable"):
        ref.conv_transpose2d(y, w, stride=2, output_size=(9, 7))
    with pytest.raises(ShapeError, match="unreachable"):
        ref.conv_transpose2d(y, w, stride=2, output_size=(6, 7))


def test_conv2d_shape_errors():
    with pytest.raises(ShapeError):
        ref.conv2d(np.zeros((1, 4, 5, 5)), np.zeros((2, 3, 3, 3)))        # C_in mismatch
    with pytest.raises(ShapeError):
        ref.conv2d(np.zeros((1, 4, 5, 5)), np.zeros((3, 2, 3, 3)), groups=2)  # O not divisible
    with pytest.raises(ShapeError):
        ref.conv2d(np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 3, 3)))        # empty output


# (H, W, kernel, stride, padding, ceil_mode)
POOL_CASES = [
    (11, 10, 3, 2, 0, True),     # ceil adds a partial window
    (11, 10, 3, 2, 0, False),
    (9, 9, 3, 2, 1, False),
    (5, 5, 2, 2, 1, True),       # ceil would add a window starting in the right padding: dropped
    (7, 6, 3, 1, 1, True),
    (8, 8, 2, 2, 0, False),      # non-overlapping
    (6, 7, (3, 2), (2, 1), (1, 0), True),
    (12, 12, 3, 2, 0, True),     # 12 -> 6 (ceil) vs 5 (floor)
]


@pytest.mark.parametrize("H,W,k,s,p,ceil", POOL_CASES)
def test_max_pool2d_matches_torch(H, W, k, s, p, ceil, rng):
    torch = _torch()
    x = rng.standard_normal((2, 3, H, W))
    y, sw = ref.max_pool2d(x, k, s, p, ceil)
    ty, tsw = torch.nn.functional.max_pool2d(_t(x), k, s, p, ceil_mode=ceil, return_indices=True)
    assert y.shape == tuple(ty.shape)
    np.testing.assert_array_equal(y, ty.numpy())
    np.testing.assert_array_equal(sw, tsw.numpy())
    assert sw.dtype == np.int64


@pytest.mark.parametrize("H,W,k,s,p,ceil", POOL_CASES)
def test_max_pool2d_ties_match_torch(H, W, k, s, p, ceil, rng):
    """Many equal values: the first maximum in row-major window order wins."""
    torch = _torch()
    x = rng.integers(0, 3, size=(1, 2, H, W)).astype(np.float64)
    y, sw = ref.max_pool2d(x, k, s, p, ceil)
    ty, tsw = torch.nn.functional.max_pool2d(_t(x), k, s, p, ceil_mode=ceil, return_indices=True)
    np.testing.assert_array_equal(y, ty.numpy())
    np.testing.assert_array_equal(sw, tsw.numpy())


def test_max_pool2d_nan_and_all_minus_inf_match_torch(rng):
    torch = _torch()
    x = rng.standard_normal((1, 1, 6, 6))
    x[0, 0, 1, 1] = x[0, 0, 2, 3] = np.nan
    x[0, 0, 4:, 4:] = -np.inf
    for args in [(3, 2, 0, True), (2, 2, 0, False), (3, 1, 1, False)]:
        y, sw = ref.max_pool2d(x, *args)
        ty, tsw = torch.nn.functional.max_pool2d(_t(x), *args[:3], ceil_mode=args[3], return_indices=True)
        np.testing.assert_array_equal(y, ty.numpy())
        np.testing.assert_array_equal(sw, tsw.numpy())


@pytest.mark.parametrize("H,expected", [(110, 55), (26, 13), (13, 6)])
def test_zfnet_ceil_mode_pool_sizes(H, expected):
    """The paper's map sizes need ceil mode: 110 -> 55, 26 -> 13, 13 -> 6 (floor gives 54, 12, 6)."""
    torch = _torch()
    assert ref.pool_out_size(H, 3, 2, 0, ceil_mode=True) == expected
    t = torch.nn.functional.max_pool2d(torch.zeros(1, 1, H, H), 3, 2, ceil_mode=True)
    assert t.shape[-1] == expected


@pytest.mark.parametrize("H,W,k,s,p,ceil", POOL_CASES)
def test_max_unpool2d_equals_max_pool_gradient(H, W, k, s, p, ceil, rng):
    """Scatter-add unpooling of g through the switches == d<max_pool(x), g>/dx (torch autograd)."""
    torch = _torch()
    x = rng.standard_normal((2, 2, H, W))
    y, sw = ref.max_pool2d(x, k, s, p, ceil)
    g = rng.standard_normal(y.shape)
    got = ref.max_unpool2d(g, sw, (H, W))
    tx = _t(x).requires_grad_(True)
    torch.nn.functional.max_pool2d(tx, k, s, p, ceil_mode=ceil).backward(_t(g))
    np.testing.assert_allclose(got, tx.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_max_unpool2d_overlap_adds_and_matches_torch_when_disjoint(rng):
    torch = _torch()
    # Overlapping 3x3/2 pools on a plane with one big value: both windows pick it.
    x = np.zeros((1, 1, 5, 3))
    x[0, 0, 2, 1] = 9.0
    y, sw = ref.max_pool2d(x, 3, 2)
    assert y.shape == (1, 1, 2, 1) and (sw == 2 * 3 + 1).all()
    up = ref.max_unpool2d(np.array([[[[1.0], [2.0]]]]), sw, (5, 3))
    assert up[0, 0, 2, 1] == 3.0 and up.sum() == 3.0
    # Non-overlapping windows: scatter-add == torch's (overwriting) max_unpool2d.
    x = rng.standard_normal((2, 3, 8, 6))
    y, sw = ref.max_pool2d(x, 2)
    want = torch.nn.functional.max_unpool2d(_t(y), _t(sw), 2, output_size=(8, 6)).numpy()
    np.testing.assert_array_equal(ref.max_unpool2d(y, sw, (8, 6)), want)


def test_pool_unpool_adjoint(rng):
    """<x.flat[switches], g> == <x, unpool(g, switches)>: the selection and the scatter-add."""
    x = rng.standard_normal((2, 3, 9, 9))
    y, sw = ref.max_pool2d(x, 3, 2, 0, True)
    g = rng.standard_normal(y.shape)
    assert np.vdot(y, g) == pytest.approx(np.vdot(x, ref.max_unpool2d(g, sw, (9, 9))), rel=1e-12)


def test_max_unpool2d_rejects_bad_switch():
    with pytest.raises(ShapeError, match="outside"):
        ref.max_unpool2d(np.ones((1, 1, 1, 1)), np.array([[[[16]]]]), (4, 4))


@pytest.mark.parametrize("size,alpha,beta,k", [(5, 1e-4, 0.75, 2.0), (5, 0.5, 0.75, 1.0), (4, 0.3, 0.6, 1.5),
                                               (1, 0.2, 1.0, 1.0), (9, 0.4, 0.75, 2.0)])
def test_lrn_matches_torch(size, alpha, beta, k, rng):
    torch = _torch()
    x = rng.standard_normal((2, 6, 4, 3)) * 3
    got = ref.lrn(x, size, alpha, beta, k)
    want = torch.nn.functional.local_response_norm(_t(x), size, alpha, beta, k).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_linear_softmax_relu_match_torch(rng):
    torch = _torch()
    x = rng.standard_normal((3, 7))
    w = rng.standard_normal((5, 7))
    b = rng.standard_normal(5)
    np.testing.assert_allclose(ref.linear(x, w, b),
                               torch.nn.functional.linear(_t(x), _t(w), _t(b)).numpy(), rtol=1e-12)
    np.testing.assert_allclose(ref.linear(x, w), x @ w.T, rtol=1e-12)
    z = rng.standard_normal((2, 3, 4)) * 50  # large logits: needs the max shift
    for axis in (-1, 1, 0):
        np.testing.assert_allclose(ref.softmax(z, axis=axis),
                                   torch.softmax(_t(z), dim=axis).numpy(), rtol=1e-12, atol=1e-300)
    a = np.array([[-1.0, 0.0, 2.5, np.nan]])
    np.testing.assert_array_equal(ref.relu(a), torch.relu(_t(a)).numpy())
    np.testing.assert_array_equal(ref.relu(rng.standard_normal((2, 3, 4, 4))) >= 0, True)


def test_float32_in_float32_out(rng):
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    assert ref.conv2d(x, w).dtype == np.float32
    assert ref.conv_transpose2d(ref.conv2d(x, w), w).dtype == np.float32
    assert ref.lrn(x, 5).dtype == np.float32
    assert ref.max_pool2d(x, 2)[0].dtype == np.float32


def test_brute_force_receptive_field_of_3x3_stack(rng):
    """The lecture's example: stacked 3x3 convolutions see 3, 5, 7 pixels."""
    x = rng.standard_normal((1, 1, 11, 11))
    w = np.ones((1, 1, 3, 3))

    def stack(depth):
        def f(a):
            for _ in range(depth):
                a = ref.conv2d(a, w, padding=1)
            return a
        return f

    for depth, size in [(1, 3), (2, 5), (3, 7)]:
        mask = ref.brute_force_receptive_field(stack(depth), x, (0, 0, 5, 5))
        r = size // 2
        assert ref.mask_box(mask) == (5 - r, 5 - r, 5 + r + 1, 5 + r + 1)
        assert mask.sum() == size * size
    # At the corner, zero padding clips the box to the image.
    assert ref.mask_box(ref.brute_force_receptive_field(stack(2), x, (0, 0, 0, 0))) == (0, 0, 3, 3)


def test_brute_force_receptive_field_through_relu_and_pool(rng):
    """conv 3x3 -> ReLU -> max-pool 2x2/2: unit (1, 1) sees input rows/cols 2..5 (size 3 + 1 = 4).

    Every pixel of the window must be found, so no weight may hide one: the weights
    are positive (each tap's channel sum >= 0.2) and the perturbation is large enough
    (1e6) that the perturbed conv output wins its pooling window whatever the data.
    With signed random weights a tap whose channel sum is near zero hides its pixel
    (that made this test depend on the random draw).
    """
    x = rng.standard_normal((1, 2, 8, 8))
    w = np.abs(rng.standard_normal((3, 2, 3, 3))) + 0.1

    def f(a):
        return ref.max_pool2d(ref.relu(ref.conv2d(a, w)), 2)[0]

    mask = ref.brute_force_receptive_field(f, x, (0, 1, 1, 1), delta=1e6)
    assert ref.mask_box(mask) == (2, 2, 6, 6)
    assert mask.sum() == 16
