"""Local response normalisation across channels (AlexNet's and ZFNet's LRN)."""

from __future__ import annotations

from ..backend import cupy, get_array_module
from ..errors import ShapeError
from . import _kernels

__all__ = ["lrn", "lrn_backward"]


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
    c = x.shape[1]
    sq = x * x
    before, after = size // 2, (size - 1) // 2
    pad = [(0, 0)] * x.ndim
    pad[1] = (before, after)
    sq = xp.pad(sq, pad)  # (N, C + size - 1, ...)
    window = sq[:, 0:c].copy()
    for d in range(1, size):  # sum of `size` channel-shifted copies: channel c sees c-before .. c+after
        window += sq[:, d : d + c]
    return x / (k + (alpha / size) * window) ** beta


def _window_sum(xp, a, before: int, after: int):
    """``out[:, c] = sum_{c' = c - before}^{c + after} a[:, c']`` with zeros outside ``[0, C)``."""
    c = a.shape[1]
    pad = [(0, 0)] * a.ndim
    pad[1] = (before, after)
    a = xp.pad(a, pad)  # (N, C + before + after, ...)
    out = a[:, 0:c].copy()
    for d in range(1, before + after + 1):
        out += a[:, d : d + c]
    return out


def lrn_backward(x, y, dy, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0):
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
    before, after = size // 2, (size - 1) // 2
    s = k + (alpha / size) * _window_sum(xp, x * x, before, after)  # the forward denominator base
    t = dy * y / s  # dL/dy_c * y_c / s_c
    back = _window_sum(xp, t, after, before)  # sum over the outputs c whose window holds j
    return dy * s ** (-beta) - (2.0 * alpha * beta / size) * x * back
