"""Local response normalisation across channels (AlexNet's and ZFNet's LRN)."""

from __future__ import annotations

from ..backend import get_array_module
from ..errors import ShapeError

__all__ = ["lrn"]


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
