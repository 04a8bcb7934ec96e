"""Average pooling with Caffe's divisor, and its adjoint (which is also its gradient).

Caffe's AVE pooling divides each window's sum by the number of positions the window
covers in the *padded* image, ``(min(start + k, n + p) - start)`` per axis: padding
counts, but a last window that (in ceil mode) runs past the padding does not count
the overhang.  PyTorch's ``avg_pool2d(..., ceil_mode=True, count_include_pad=True)``
uses the same divisor.

Average pooling is linear, so the deconvnet has nothing to remember (no switches):
going down, each value is spread evenly back over its window, the adjoint of the
averaging.  That adjoint is also the exact gradient.

References
----------
Caffe, ``src/caffe/layers/pooling_layer.cpp`` (``PoolingParameter_PoolMethod_AVE``).
"""

from __future__ import annotations

from ..backend import get_array_module
from ..errors import ShapeError
from ._shape import pair, pool_out_size

__all__ = ["avg_pool2d", "avg_unpool2d", "avg_pool_divisor"]


def avg_pool_divisor(xp, in_size: tuple[int, int], kernel_size, stride, padding, out_size):
    """Caffe's divisor of every output position: ``(H_out, W_out)`` float array.

    Along one axis, window ``i`` starts at ``a = i*s - p`` and its divisor is
    ``min(a + k, n + p) - a``: the window clipped to the *padded* extent.
    """
    (h, w), (kh, kw), (sh, sw), (ph, pw), (ho, wo) = in_size, kernel_size, stride, padding, out_size
    start_h = xp.arange(ho) * sh - ph
    start_w = xp.arange(wo) * sw - pw
    dh = xp.minimum(start_h + kh, h + ph) - start_h  # (H_out,)
    dw = xp.minimum(start_w + kw, w + pw) - start_w  # (W_out,)
    return (dh.reshape(-1, 1) * dw.reshape(1, -1)).astype(xp.float32)  # (H_out, W_out)


def _geometry(shape, kernel_size, stride, padding, ceil_mode):
    if len(shape) != 4:
        raise ShapeError(f"avg_pool2d: input must be 4-D (N, C, H, W), got shape {tuple(shape)}")
    kh, kw = pair(kernel_size, "kernel_size")
    sh, sw = pair(kernel_size if stride is None else stride, "stride")
    ph, pw = pair(padding, "padding")
    h, w = shape[2:]
    ho = pool_out_size(h, kh, sh, ph, ceil_mode)
    wo = pool_out_size(w, kw, sw, pw, ceil_mode)
    # the padded extent the windows touch: p on the left, on the right whatever the last window needs
    bottom = max((ho - 1) * sh + kh - h - ph, 0)
    right = max((wo - 1) * sw + kw - w - pw, 0)
    return (kh, kw), (sh, sw), (ph, pw), (ho, wo), (bottom, right)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False):
    """Average pooling, Caffe's AVE: window sums over a zero-padded input, Caffe's divisor.

    ``y[n, c, i, j] = (1 / d_ij) sum_{u < kH, v < kW} x_pad[n, c, i*sH + u, j*sW + v]``
    with ``x_pad`` zero padded and ``d_ij`` from :func:`avg_pool_divisor`.

    Output size as for :func:`~zfnet.ops.max_pool2d` (``ceil_mode`` for Caffe).

    Parameters
    ----------
    x : array, shape (N, C, H, W)
    kernel_size, stride, padding : int or (int, int)
    ceil_mode : bool

    Returns
    -------
    y : array, shape (N, C, H_out, W_out)

    Paired with
    -----------
    :func:`avg_unpool2d` (adjoint and gradient).
    """
    xp = get_array_module(x)
    (kh, kw), (sh, sw), (ph, pw), (ho, wo), (bottom, right) = _geometry(
        x.shape, kernel_size, stride, padding, ceil_mode)
    h, w = x.shape[2:]
    xpad = xp.pad(x, ((0, 0), (0, 0), (ph, bottom), (pw, right)))  # (N, C, H_pad, W_pad)
    acc = xpad[:, :, 0 : sh * ho : sh, 0 : sw * wo : sw].copy()  # window offset (0, 0)
    for u in range(kh):
        for v in range(kw):
            if u or v:
                acc += xpad[:, :, u : u + sh * ho : sh, v : v + sw * wo : sw]  # (N, C, H_out, W_out)
    div = avg_pool_divisor(xp, (h, w), (kh, kw), (sh, sw), (ph, pw), (ho, wo))
    return acc / div.astype(x.dtype)


def avg_unpool2d(y, input_size, kernel_size, stride=None, padding=0, ceil_mode=False):
    """The adjoint of :func:`avg_pool2d`: spread each value evenly over its window.

    ``x[n, c, h, w] = sum over windows (i, j) holding (h, w) of y[n, c, i, j] / d_ij``,
    so that ``<avg_pool2d(x), y> == <x, avg_unpool2d(y)>``.  Averaging is linear,
    so this is also its exact gradient.

    Parameters
    ----------
    y : array, shape (N, C, H_out, W_out)
    input_size : (int, int)
        ``(H, W)`` of the forward input.
    kernel_size, stride, padding, ceil_mode :
        As in :func:`avg_pool2d`.

    Returns
    -------
    x : array, shape (N, C, H, W)
    """
    xp = get_array_module(y)
    h, w = input_size
    (kh, kw), (sh, sw), (ph, pw), (ho, wo), (bottom, right) = _geometry(
        (0, 0, h, w), kernel_size, stride, padding, ceil_mode)
    if tuple(y.shape[2:]) != (ho, wo) or y.ndim != 4:
        raise ShapeError(f"avg_unpool2d: y has shape {tuple(y.shape)}, pooling {h}x{w} gives "
                         f"(N, C, {ho}, {wo})")
    div = avg_pool_divisor(xp, (h, w), (kh, kw), (sh, sw), (ph, pw), (ho, wo))
    share = y / div.astype(y.dtype)  # (N, C, H_out, W_out): each position's part of its window
    xpad = xp.zeros(y.shape[:2] + (h + ph + bottom, w + pw + right), dtype=y.dtype)
    for u in range(kh):
        for v in range(kw):
            xpad[:, :, u : u + sh * ho : sh, v : v + sw * wo : sw] += share
    return xpad[:, :, ph : ph + h, pw : pw + w]  # drop the padding
