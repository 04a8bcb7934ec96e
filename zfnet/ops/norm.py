"""Local response normalisation: across channels (AlexNet's and ZFNet's LRN) and within
one channel (Caffe's ``norm_region: WITHIN_CHANNEL``, used by the py-faster-rcnn ZF net).

Both divide each activation by a power of the local energy around it; they differ in
where "around" is: neighbouring channels at the same position, or neighbouring
positions in the same channel.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ..backend import cupy, get_array_module
from ..errors import ShapeError
from . import _kernels
from ._parallel import parallel_pieces

__all__ = [
    "lrn",
    "lrn_backward",
    "lrn_saving_scale",
    "LRNScale",
    "lrn_within_channel",
    "lrn_within_channel_backward",
]


def lrn(x, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0):
    """Local response normalisation across channels, PyTorch/Caffe semantics.

    .. math::

        y_c = x_c \\Big/ \\Big(k + \\frac{\\alpha}{n} \\sum_{c'=c-\\lfloor n/2 \\rfloor}^{c+\\lfloor (n-1)/2 \\rfloor} x_{c'}^2\\Big)^{\\beta}

    with ``n = size`` and channels outside ``[0, C)`` counted as zero.  Note that
    ``alpha`` is divided by ``size`` (as in ``torch.nn.LocalResponseNorm`` and Caffe;
    the AlexNet paper writes the formula without the division).

    Parameters
    ----------
    x : array, shape (N, C, H, W) (or any (N, C, ...))
    size : int
        Number of neighbouring channels summed over.
    alpha, beta, k : float
        ZFNet uses (1e-4, 0.75, 2); Caffe's AlexNet (1e-4, 0.75, 1).

    Returns
    -------
    y : array, same shape as ``x``

    Notes
    -----
    The deconvnet passes signals through LRN unchanged (paper section 2.1 projects
    only through unpooling, rectification and filtering).
    """
    xp = get_array_module(x)
    if x.ndim < 3:
        raise ShapeError(f"lrn: input must be (N, C, ...), got shape {tuple(x.shape)}")
    if size < 1:
        raise ShapeError(f"lrn: size must be >= 1, got {size}")
    if xp is cupy and x.dtype in _kernels.DTYPES:  # CUDA kernel zfnet_lrn_forward; this code is its reference
        return _kernels.lrn(x, size, alpha, beta, k)
    if xp is np and x.dtype.kind == "f":
        return _by_images(lambda xc: _lrn(np, xc, size, alpha, beta, k), x)
    return _lrn(xp, x, size, alpha, beta, k)


def _lrn(xp, x, size, alpha, beta, k):
    """The formula of :func:`lrn` on a whole array."""
    return _lrn_parts(xp, x, size, alpha, beta, k)[0]


def _lrn_parts(xp, x, size, alpha, beta, k):
    """``(y, s, s**beta)``: the output and the two intermediate maps of :func:`lrn`."""
    window = _window_sum(xp, x * x, size // 2, (size - 1) // 2)  # channel c sees c - n//2 .. c + (n-1)//2
    s = k + (alpha / size) * window
    sb = s**beta
    return x / sb, s, sb


class LRNScale(NamedTuple):
    """What :func:`lrn_saving_scale` keeps for :func:`lrn_backward`: ``s`` and ``s**beta``,
    each shaped like the input."""

    s: Any
    s_beta: Any


def lrn_saving_scale(x, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0):
    """:func:`lrn`, and the denominator it divided by, for training.

    Returns ``(y, scale)``: ``y`` exactly as :func:`lrn` computes it, and
    :class:`LRNScale` ``(s, s**beta)`` with
    ``s_c = k + (alpha / n) sum_{c' in W(c)} x_{c'}^2``, which
    ``lrn_backward(..., scale=scale)`` uses instead of computing them again (half the
    passes of the backward, for two maps of memory).  On CuPy ``scale`` is None.
    """
    xp = get_array_module(x)
    if xp is np and x.dtype.kind == "f" and x.ndim >= 3 and size >= 1:
        y, s, sb = _by_images(lambda xc: _lrn_parts(np, xc, size, alpha, beta, k), x, outputs=3)
        return y, LRNScale(s, sb)
    return lrn(x, size, alpha, beta, k), None


_CHUNK_BYTES = 1 << 20  # images per piece of the NumPy path: about this many bytes of each input


def _by_images(fn, *arrays, outputs: int = 1):
    """``fn(*arrays)`` computed a few images at a time, the pieces shared out among CPU threads.

    LRN and its gradient are a dozen elementwise passes with as many temporaries; on
    a whole batch each pass streams the arrays through memory, on a piece of about
    ``_CHUNK_BYTES`` they stay in cache.  Every value is computed by the same float
    operations in the same order as on the whole array: the result is identical.
    Floating-point inputs only (the output takes their common dtype; integer inputs
    give float64 through the whole-array formula).
    """
    first = arrays[0]
    outs = [np.empty(first.shape, dtype=np.result_type(*arrays)) for _ in range(outputs)]

    def piece(lo, hi):
        got = fn(*(a[lo:hi] for a in arrays))
        for out, value in zip(outs, got if outputs > 1 else (got,)):
            out[lo:hi] = value

    parallel_pieces(len(first), first[0].nbytes if len(first) else 1, piece, _CHUNK_BYTES)
    return outs[0] if outputs == 1 else tuple(outs)


def _window_sum(xp, a, before: int, after: int):
    """``out[:, c] = sum_{c' = c - before}^{c + after} a[:, c']`` with zeros outside ``[0, C)``.

    Added from ``c - before`` up, the terms outside ``[0, C)`` skipped (adding 0 changes
    no sum), by channel slices of ``a`` itself rather than a zero-padded copy.
    """
    c = a.shape[1]
    out = xp.empty_like(a)
    first = min(before, c)  # the first term, a[c - before], is outside the channels below `first`
    out[:, :first] = 0
    out[:, first:] = a[:, : c - first]
    for shift in range(1 - before, after + 1):  # the term a[c + shift]
        if shift < 0 and -shift < c:
            out[:, -shift:] += a[:, : c + shift]
        elif 0 <= shift < c:
            out[:, : c - shift] += a[:, shift:]
    return out


def lrn_backward(x, y, dy, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0, scale=None):
    """Gradient of :func:`lrn` with respect to its input.

    With ``s_c = k + (alpha / n) sum_{c' in W(c)} x_{c'}^2`` and ``y_c = x_c s_c^{-beta}``,
    where ``W(c) = [c - floor(n/2), c + floor((n-1)/2)]``:

    .. math::

        \\frac{\\partial L}{\\partial x_j} = \\frac{\\partial L}{\\partial y_j} s_j^{-\\beta}
          - \\frac{2 \\alpha \\beta}{n} x_j \\sum_{c:\\, j \\in W(c)}
            \\frac{\\partial L}{\\partial y_c} \\frac{y_c}{s_c}

    The first term is the direct path; the second is every output whose window
    contains channel ``j``.  ``j in W(c)`` means ``c in [j - floor((n-1)/2),
    j + floor(n/2)]``: the window reflected, which matters for even ``n``.

    Parameters
    ----------
    x : array, shape (N, C, H, W) (or any (N, C, ...))
        The forward input.
    y : array, same shape
        The forward output ``lrn(x, ...)``.
    dy : array, same shape
        Gradient with respect to ``y``.
    size, alpha, beta, k :
        As in :func:`lrn`.
    scale : LRNScale, optional
        ``(s, s**beta)`` from :func:`lrn_saving_scale` on the same ``x``: then they are
        not computed again (the result is the same, bit for bit).

    Returns
    -------
    dx : array, same shape as ``x``

    Paired with
    -----------
    :func:`lrn`.  (The deconvnet passes signals through LRN unchanged instead.)
    """
    xp = get_array_module(x, y, dy)
    if not (x.shape == y.shape == dy.shape) or x.ndim < 3:
        raise ShapeError(
            f"lrn_backward: x, y and dy must share one (N, C, ...) shape, got "
            f"{tuple(x.shape)}, {tuple(y.shape)}, {tuple(dy.shape)}"
        )
    if xp is cupy and x.dtype in _kernels.DTYPES:  # CUDA kernel zfnet_lrn_backward; this code is its reference
        return _kernels.lrn_backward(x, y, dy, size, alpha, beta, k)
    if scale is not None:
        s, sb = scale
        if not (s.shape == sb.shape == x.shape):
            raise ShapeError(f"lrn_backward: the saved scale {tuple(s.shape)} is not of the input's shape {tuple(x.shape)}")
        if xp is np and all(a.dtype.kind == "f" for a in (x, y, dy, s, sb)):
            return _by_images(lambda xc, yc, dyc, sc, sbc: _lrn_backward(np, xc, yc, dyc, size, alpha, beta, k, sc, sbc),
                              x, y, dy, s, sb)
        return _lrn_backward(xp, x, y, dy, size, alpha, beta, k, s, sb)
    if xp is np and all(a.dtype.kind == "f" for a in (x, y, dy)):
        return _by_images(lambda xc, yc, dyc: _lrn_backward(np, xc, yc, dyc, size, alpha, beta, k), x, y, dy)
    return _lrn_backward(xp, x, y, dy, size, alpha, beta, k)


def _lrn_backward(xp, x, y, dy, size, alpha, beta, k, s=None, sb=None):
    """The formula of :func:`lrn_backward` on whole arrays (``s``, ``s**beta`` computed if not given)."""
    before, after = size // 2, (size - 1) // 2
    if s is None:
        _, s, sb = _lrn_parts(xp, x, size, alpha, beta, k)  # the forward's denominator base and its power
    t = dy * y / s  # dL/dy_c * y_c / s_c
    back = _window_sum(xp, t, after, before)  # sum over the outputs c whose window holds j
    return dy / sb - (2.0 * alpha * beta / size) * x * back


# --------------------------------------------------------------------- within channel


def _check_within(x, size: int, what: str) -> None:
    if x.ndim != 4:
        raise ShapeError(f"{what}: input must be (N, C, H, W), got shape {tuple(x.shape)}")
    if size < 1 or size % 2 == 0:
        raise ShapeError(f"{what}: size must be odd and >= 1 (Caffe's rule: the window is centred), got {size}")


def _box_sum(xp, a, size: int):
    """``out[..., i, j] = sum of a[..., i+u, j+v]`` over ``|u|, |v| <= size // 2``, zeros outside the map.

    Separable: a running sum down the rows, then along the columns.  ``a`` is
    (N, C, H, W); so is the result.
    """
    r = size // 2
    h, w = a.shape[2:]
    a = xp.pad(a, ((0, 0), (0, 0), (r, r), (r, r)))  # (N, C, H + 2r, W + 2r), zero padded
    rows = a[:, :, 0:h].copy()
    for d in range(1, size):  # rows i-r .. i+r of the padded map
        rows += a[:, :, d : d + h]
    out = rows[:, :, :, 0:w].copy()
    for d in range(1, size):  # then columns j-r .. j+r
        out += rows[:, :, :, d : d + w]
    return out


def lrn_within_channel(x, size: int, alpha: float = 1.0, beta: float = 0.75, k: float = 1.0):
    """Local response normalisation within each channel (Caffe's ``WITHIN_CHANNEL``).

    .. math::

        y_{c,i,j} = x_{c,i,j} \\Big/ \\Big(k + \\frac{\\alpha}{n^2}
            \\sum_{|u| \\le r} \\sum_{|v| \\le r} x_{c,i+u,j+v}^2\\Big)^{\\beta},
        \\qquad r = \\frac{n - 1}{2}

    with ``n = size`` (odd) and positions outside the map counted as zero: ``alpha``
    times the *mean* of ``x^2`` over the ``n x n`` window, the divisor ``n^2`` even
    where the window overhangs the border.  That is Caffe's definition: its LRN layer
    builds WITHIN_CHANNEL from an AVE pooling of ``x^2`` (kernel ``n``, stride 1,
    pad ``r``, whose divisor counts the padding) and a power layer
    ``(1 + alpha * s)^(-beta)``.  Caffe fixes the shift at 1 and ignores its ``k``
    for this region; the network builder passes ``k=1`` (the parameter is here so
    the formula reads like :func:`lrn`'s).

    Parameters
    ----------
    x : array, shape (N, C, H, W)
    size : int
        Side ``n`` of the square window; odd (Caffe refuses even sizes).
    alpha, beta, k : float
        The py-faster-rcnn ZF net uses ``size=3, alpha=5e-5, beta=0.75``.

    Returns
    -------
    y : array, same shape as ``x``

    Paired with
    -----------
    :func:`lrn_within_channel_backward`.  The deconvnet passes signals through it
    unchanged, as for :func:`lrn`.

    References
    ----------
    Caffe, ``src/caffe/layers/lrn_layer.cpp`` (``WithinChannelForward``) and
    ``pooling_layer.cpp`` (AVE pooling's divisor).
    """
    xp = get_array_module(x)
    _check_within(x, size, "lrn_within_channel")
    s = k + (alpha / (size * size)) * _box_sum(xp, x * x, size)  # (N, C, H, W)
    return x * s ** (-beta)


def lrn_within_channel_backward(x, y, dy, size: int, alpha: float = 1.0, beta: float = 0.75, k: float = 1.0):
    """Gradient of :func:`lrn_within_channel` with respect to its input.

    With ``s_p = k + (alpha / n^2) sum_{q in B(p)} x_q^2`` (``B(p)`` the ``n x n``
    box around position ``p``) and ``y_p = x_p s_p^{-beta}``:

    .. math::

        \\frac{\\partial L}{\\partial x_q} = \\frac{\\partial L}{\\partial y_q} s_q^{-\\beta}
          - \\frac{2 \\alpha \\beta}{n^2} x_q \\sum_{p:\\, q \\in B(p)}
            \\frac{\\partial L}{\\partial y_p} \\frac{y_p}{s_p}

    The box is centred, so ``q in B(p)`` exactly when ``p in B(q)``: the second sum
    is the same box sum, taken of ``dL/dy * y / s``.

    Parameters
    ----------
    x, y, dy : arrays, shape (N, C, H, W)
        Forward input, forward output, and the gradient with respect to ``y``.
    size, alpha, beta, k :
        As in :func:`lrn_within_channel`.

    Returns
    -------
    dx : array, same shape as ``x``
    """
    xp = get_array_module(x, y, dy)
    if not (x.shape == y.shape == dy.shape):
        raise ShapeError(f"lrn_within_channel_backward: x, y and dy must share one shape, got "
                         f"{tuple(x.shape)}, {tuple(y.shape)}, {tuple(dy.shape)}")
    _check_within(x, size, "lrn_within_channel_backward")
    n2 = size * size
    s = k + (alpha / n2) * _box_sum(xp, x * x, size)
    back = _box_sum(xp, dy * y / s, size)  # sum over the outputs p whose box holds q
    return dy * s ** (-beta) - (2.0 * alpha * beta / n2) * x * back
