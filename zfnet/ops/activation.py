"""Rectification and softmax."""

from __future__ import annotations

import numpy as np

from ..backend import cupy, get_array_module
from . import _kernels
from ._parallel import parallel_pieces, parallel_range

__all__ = ["relu", "relu_backward", "softmax"]


def relu(x):
    """Rectified linear unit, ``max(x, 0)`` elementwise, any shape.

    In the deconvnet the same function rectifies the signal coming DOWN (paper
    section 2.1, "Rectification"); see :func:`zfnet.nn.relu_rule` for the three rules.
    """
    xp = get_array_module(x)
    if xp is cupy and x.dtype in _kernels.DTYPES:  # CUDA kernel zfnet_relu
        return _kernels.relu(x)
    if xp is np and x.ndim >= 3 and x.size >= 1 << 18:  # a big map: rows shared out among CPU threads
        base = _trimmed_base(x)
        if base is not None:  # rectify the whole contiguous buffer, return the same view of it
            return relu(base)[..., : x.shape[-1]]
        y = np.empty_like(x)
        xs, ys = (x, y) if len(x) > 1 else (x[0], y[0])
        parallel_range(len(xs), lambda lo, hi: np.maximum(xs[lo:hi], 0, out=ys[lo:hi]))
        return y
    return xp.maximum(x, 0)


def _trimmed_base(x):
    """The C-contiguous buffer ``x`` is the view ``buffer[..., :W]`` of, if it is one (else None).

    NumPy convolutions return such views (they drop a few wrap-around columns, see
    :func:`zfnet.ops.im2col.im2col_phases`); an elementwise op is much faster on the
    contiguous buffer than row by row on the view.
    """
    base = x.base
    if x.flags.c_contiguous:
        return None
    rows = x.size // x.shape[-1] if x.shape[-1] else 0
    if not isinstance(base, np.ndarray) or not base.flags.c_contiguous or rows == 0 or base.size % rows:
        return None
    base = base.reshape(x.shape[:-1] + (base.size // rows,))  # the buffer as rows of its full width
    same_start = base.__array_interface__["data"][0] == x.__array_interface__["data"][0]
    if not same_start or base.strides != x.strides or base.size > 1.2 * x.size:
        return None
    return base


def relu_backward(dy, y):
    """Gradient of :func:`relu`: ``dx = dy * [y > 0]``.

    ``y`` may be the ReLU's output or its input: ``relu(z) > 0`` exactly where
    ``z > 0``, so the rectified activation the forward pass keeps is enough.  At
    ``z = 0`` the subgradient 0 is taken (as PyTorch does).

    Parameters
    ----------
    dy : array
        Gradient with respect to the ReLU's output.
    y : array, same shape
        The ReLU's output (or input) from the forward pass.

    Returns
    -------
    dx : array, same shape as ``dy``

    Paired with
    -----------
    :func:`relu`.  This is the ``"backprop"`` rule of :func:`zfnet.nn.relu_rule`;
    the deconvnet instead rectifies ``dy`` itself.
    """
    if isinstance(dy, np.ndarray) and isinstance(y, np.ndarray) and dy.ndim >= 2 and dy.size >= 1 << 18 \
            and dy.shape == y.shape:  # a big map: a few images at a time (in cache), shared among CPU threads
        dx = np.empty(dy.shape, dtype=np.result_type(dy.dtype, np.bool_))
        parallel_pieces(len(dy), dy[0].nbytes,
                        lambda lo, hi: np.multiply(dy[lo:hi], y[lo:hi] > 0, out=dx[lo:hi]))  # the same products as below
        return dx
    return dy * (y > 0)


def softmax(x, axis: int = -1):
    """``softmax(x)_i = exp(x_i - max x) / sum_j exp(x_j - max x)`` along ``axis``.

    Subtracting the maximum changes nothing mathematically and keeps ``exp`` from
    overflowing in float32.
    """
    xp = get_array_module(x)
    z = xp.exp(x - x.max(axis=axis, keepdims=True))
    return z / z.sum(axis=axis, keepdims=True)
