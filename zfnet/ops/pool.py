"""Max pooling that remembers where each maximum came from, and unpooling.

The deconvnet cannot invert max pooling, but it can approximately invert it by
remembering, for every pooling window, which input won: the *switches*.  Unpooling
puts each value back at its switch location and leaves zeros elsewhere.

Switches here are int64 flat indices ``h * W + w`` into each ``(n, c)`` input plane,
exactly as ``torch.nn.functional.max_pool2d(..., return_indices=True)`` returns them.

References
----------
Zeiler & Fergus (2014), section 2.1 ("Unpooling") and Fig. 1 (bottom).
"""

from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from ..errors import ShapeError
from ._shape import pair, pool_out_size

__all__ = ["max_pool2d", "max_unpool2d"]


def max_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False):
    """Max pooling returning the pooled map and the switches.

    ``y[n, c, i, j] = max_{u < kH, v < kW} x_pad[n, c, i*sH + u, j*sW + v]`` with
    ``x_pad`` padded by ``-inf``; ``switches[n, c, i, j]`` is the flat index
    ``h * W + w`` of that maximum in the unpadded ``(H, W)`` plane.  Ties go to the
    first maximum in row-major window order (PyTorch's rule); NaN wins, as in PyTorch.

    Output size: ``floor((H + 2p - k) / s) + 1``, or with ``ceil_mode`` the division
    rounded up, dropping a last window that would start in the right padding.

    Parameters
    ----------
    x : array, shape (N, C, H, W)
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Defaults to ``kernel_size``.  ZFNet and AlexNet use overlapping 3x3 windows
        at stride 2.
    padding : int or (int, int)
        At most half the kernel.
    ceil_mode : bool
        Caffe's (and the paper's) rounding: 110 -> 55 and 26 -> 13 in ZFNet.

    Returns
    -------
    y : array, shape (N, C, H_out, W_out)
    switches : int64 array, shape (N, C, H_out, W_out)

    Paired with
    -----------
    :func:`max_unpool2d`.
    """
    xp = get_array_module(x)
    if x.ndim != 4:
        raise ShapeError(f"max_pool2d: input must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    kh, kw = pair(kernel_size, "kernel_size")
    sh, sw = pair(kernel_size if stride is None else stride, "stride")
    ph, pw = pair(padding, "padding")
    n, c, h, w = x.shape
    ho = pool_out_size(h, kh, sh, ph, ceil_mode)
    wo = pool_out_size(w, kw, sw, pw, ceil_mode)

    # Pad with -inf: on the left by p, on the right by whatever the last window needs.
    bottom = (ho - 1) * sh + kh - h - ph
    right = (wo - 1) * sw + kw - w - pw
    if ph or pw or bottom > 0 or right > 0:
        fill = -np.inf if xp.issubdtype(x.dtype, xp.floating) else xp.iinfo(x.dtype).min
        x = xp.pad(
            x, ((0, 0), (0, 0), (ph, max(bottom, 0)), (pw, max(right, 0))), constant_values=fill
        )  # (N, C, H_pad, W_pad)

    best = x[:, :, 0 : sh * ho : sh, 0 : sw * wo : sw].copy()  # window offset (0, 0)
    best_off = xp.zeros(best.shape, dtype=xp.int64)  # winning offset u * kW + v
    for u in range(kh):
        for v in range(kw):
            if u == 0 and v == 0:
                continue
            cand = x[:, :, u : u + sh * ho : sh, v : v + sw * wo : sw]  # (N, C, H_out, W_out)
            wins = (cand > best) | xp.isnan(cand)  # strict '>': the first maximum keeps its place
            best = xp.where(wins, cand, best)
            best_off = xp.where(wins, u * kw + v, best_off)

    # Window (i, j) starts at padded (i*sH, j*sW), i.e. unpadded (i*sH - pH, j*sW - pW).
    rows = xp.arange(ho, dtype=xp.int64).reshape(ho, 1) * sh - ph + best_off // kw  # (N, C, H_out, W_out)
    cols = xp.arange(wo, dtype=xp.int64).reshape(1, wo) * sw - pw + best_off % kw
    switches = rows * w + cols
    return best, switches


def max_unpool2d(y, switches, output_size):
    """Unpooling: scatter-ADD each value to its switch location, zeros elsewhere.

    ``x[n, c].flat[switches[n, c, i, j]] += y[n, c, i, j]``.

    Adding (rather than assigning) matters with overlapping pools such as ZFNet's
    3x3 windows at stride 2: one input can win two neighbouring windows, and its
    unpooled value is then the sum of both.  With addition, unpooling is the exact
    adjoint of the pooling *selection* ``S(x)[n,c,i,j] = x[n,c].flat[switches]``,
    ``<S(x), y> == <x, max_unpool2d(y)>``, and therefore equals the gradient of max
    pooling.  (``torch.nn.functional.max_unpool2d`` assigns instead, so it differs
    from this exactly where switches collide.)

    Parameters
    ----------
    y : array, shape (N, C, H_out, W_out)
    switches : int64 array, shape (N, C, H_out, W_out)
        From :func:`max_pool2d` on the SAME image.
    output_size : (H, W) or (N, C, H, W)
        The size of the pooling layer's input.

    Returns
    -------
    x : array, shape (N, C, H, W)

    Paired with
    -----------
    :func:`max_pool2d`.

    References
    ----------
    Zeiler & Fergus (2014), section 2.1 ("Unpooling").
    """
    xp = get_array_module(y, switches)
    if y.ndim != 4 or tuple(switches.shape) != tuple(y.shape):
        raise ShapeError(
            f"max_unpool2d: y and switches must be 4-D of one shape, got {tuple(y.shape)} and {tuple(switches.shape)}"
        )
    n, c = y.shape[:2]
    h, w = (int(v) for v in tuple(output_size)[-2:])
    if switches.size and (int(switches.min()) < 0 or int(switches.max()) >= h * w):
        raise ShapeError(f"max_unpool2d: switches point outside an output plane of size {(h, w)}")
    x = xp.zeros((n * c, h * w), dtype=y.dtype)  # (N*C, H*W)
    plane = xp.arange(n * c, dtype=xp.int64).reshape(n * c, 1)  # which (n, c) plane each row is
    # add.at accumulates repeated indices (a plain fancy-index assignment would keep only one)
    xp.add.at(x, (plane, switches.reshape(n * c, -1)), y.reshape(n * c, -1))
    return x.reshape(n, c, h, w)
