"""The specification: naive loop implementations of every op in :mod:`zfnet.ops`.

Each function here is written straight from its defining formula, with explicit
Python loops and float64 accumulation, and independently of the fast ops (no
im2col, no GEMM, no shared helpers).  It is slow and meant for tiny shapes; its
only job is to be obviously right.  The fast ops are tested against it, and it is
itself checked against PyTorch in ``tests/test_reference.py``.

Signatures match :mod:`zfnet.ops`.  Inputs are NumPy arrays (call
``zfnet.backend.asnumpy`` first for CuPy arrays).  Results are computed in float64
and returned in the floating dtype of the inputs (``np.result_type``), so passing
float64 arrays gives a float64 answer to compare against.

Conventions (see ``DESIGN.md``): arrays are NCHW, convolution weights are OIHW
``(C_out, C_in / groups, kH, kW)``, max-pool switches are int64 flat indices
``h * W + w`` into each unpadded ``(n, c)`` input plane.

References
----------
Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014
(arXiv 1311.2901), section 2.1.  Dumoulin & Visin, "A guide to convolution
arithmetic for deep learning", 2016 (arXiv 1603.07285).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from zfnet.errors import ShapeError

__all__ = [
    "conv2d",
    "conv_transpose2d",
    "max_pool2d",
    "max_unpool2d",
    "relu",
    "lrn",
    "lrn_within_channel",
    "avg_pool2d",
    "linear",
    "softmax",
    "conv_out_size",
    "conv_transpose_out_size",
    "pool_out_size",
    "brute_force_receptive_field",
    "mask_box",
]


# ----------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------


def _pair(v, name: str) -> tuple[int, int]:
    """``3 -> (3, 3)``; ``(3, 2) -> (3, 2)``; anything else is an error."""
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    t = tuple(int(a) for a in v)
    if len(t) != 2:
        raise ShapeError(f"{name} must be an int or a pair of ints, got {v!r}")
    return t


def _out_dtype(*arrays) -> np.dtype:
    """The floating dtype results are returned in (float64 for integer inputs)."""
    dt = np.result_type(*[a.dtype for a in arrays if a is not None])
    return dt if np.issubdtype(dt, np.floating) else np.dtype(np.float64)


def _check_ndim(a: np.ndarray, ndim: int, name: str, layout: str) -> None:
    if a.ndim != ndim:
        raise ShapeError(f"{name} must be {ndim}-D {layout}, got shape {a.shape}")


def conv_out_size(n: int, k: int, s: int, p: int) -> int:
    """Convolution output length: ``floor((n + 2p - k) / s) + 1``."""
    return (n + 2 * p - k) // s + 1


def conv_transpose_out_size(n: int, k: int, s: int, p: int, output_padding: int = 0) -> int:
    """Transposed-convolution output length: ``(n - 1) s - 2p + k + output_padding``."""
    return (n - 1) * s - 2 * p + k + output_padding


def pool_out_size(n: int, k: int, s: int, p: int, ceil_mode: bool = False) -> int:
    """Pooling output length, PyTorch's rule.

    Floor mode: ``floor((n + 2p - k) / s) + 1``.  Ceil mode:
    ``ceil((n + 2p - k) / s) + 1``, minus one when the last window would start at or
    beyond ``n + p`` (i.e. entirely in the right padding): every window must start
    inside the input or the left padding.
    """
    if ceil_mode:
        out = -(-(n + 2 * p - k) // s) + 1  # ceil division
        if (out - 1) * s >= n + p:
            out -= 1
        return out
    return (n + 2 * p - k) // s + 1


# ----------------------------------------------------------------------------
# convolution and its adjoint
# ----------------------------------------------------------------------------


def conv2d(x, w, b=None, stride=1, padding=0, groups=1):
    r"""Naive 2-D cross-correlation with zero padding and groups.

    .. math::

        y[n, o, i, j] = b[o] + \sum_{c=0}^{C_g - 1} \sum_{u=0}^{k_H - 1}
            \sum_{v=0}^{k_W - 1} w[o, c, u, v]\,
            \tilde x[n, g(o) C_g + c, i s_H + u, j s_W + v]

    where :math:`\tilde x` is ``x`` zero-padded by ``p`` on every side,
    :math:`C_g = C / \text{groups}` and :math:`g(o) = \lfloor o / (O / \text{groups}) \rfloor`
    is the group of output channel ``o``.  Output size
    :math:`H_o = \lfloor (H + 2 p_H - k_H) / s_H \rfloor + 1` (same for W).

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    w : ndarray, shape (O, C / groups, kH, kW)
    b : ndarray, shape (O,), optional
    stride, padding : int or (int, int)
    groups : int

    Returns
    -------
    y : ndarray, shape (N, O, Ho, Wo)

    Paired with
    -----------
    :func:`conv_transpose2d` (its adjoint, same ``w``).
    """
    x = np.asarray(x)
    w = np.asarray(w)
    b = None if b is None else np.asarray(b)
    _check_ndim(x, 4, "conv2d input x", "(N, C, H, W)")
    _check_ndim(w, 4, "conv2d weight w", "(O, C/groups, kH, kW)")
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    if sh < 1 or sw < 1 or ph < 0 or pw < 0 or groups < 1:
        raise ShapeError(f"conv2d: need stride >= 1, padding >= 0, groups >= 1; got "
                         f"stride={stride!r}, padding={padding!r}, groups={groups!r}")
    N, C, H, W = x.shape
    O, Cg, kH, kW = w.shape
    if C % groups or O % groups or Cg != C // groups:
        raise ShapeError(f"conv2d: input has {C} channels, weight {w.shape} with groups={groups}: "
                         f"expected C divisible by groups, O divisible by groups and "
                         f"w.shape[1] == C / groups")
    if b is not None and b.shape != (O,):
        raise ShapeError(f"conv2d: bias shape {b.shape}, expected ({O},)")
    Ho = conv_out_size(H, kH, sh, ph)
    Wo = conv_out_size(W, kW, sw, pw)
    if Ho < 1 or Wo < 1:
        raise ShapeError(f"conv2d: input {H}x{W} with kernel {kH}x{kW}, padding {(ph, pw)} "
                         f"gives an empty output {Ho}x{Wo}")

    xp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=np.float64)
    xp[:, :, ph:ph + H, pw:pw + W] = x
    w64 = w.astype(np.float64)
    Og = O // groups
    y = np.zeros((N, O, Ho, Wo), dtype=np.float64)
    for n in range(N):
        for o in range(O):
            g = o // Og
            for i in range(Ho):
                for j in range(Wo):
                    acc = 0.0 if b is None else float(b[o])
                    for c in range(Cg):
                        window = xp[n, g * Cg + c, i * sh:i * sh + kH, j * sw:j * sw + kW]
                        acc += np.sum(window * w64[o, c])  # sum over (kh, kw)
                    y[n, o, i, j] = acc
    return y.astype(_out_dtype(x, w, b))


def conv_transpose2d(y, w, b=None, stride=1, padding=0, groups=1, output_size=None):
    r"""Naive transposed convolution by its scatter definition.

    Every input value ``y[n, o, i, j]`` adds ``y[n, o, i, j] * w[o, c, :, :]`` into a
    zero-initialised, padded output plane of channel ``g(o) C_g + c`` at rows
    ``i s_H .. i s_H + k_H - 1`` and columns ``j s_W .. j s_W + k_W - 1``; then ``p``
    is cropped from every side:

    .. math::

        x[n, g(o) C_g + c, i s_H + u - p_H, j s_W + v - p_W]
            \mathrel{+}= y[n, o, i, j]\, w[o, c, u, v]

    Output size :math:`H = (H_o - 1) s_H - 2 p_H + k_H + a_H` with the output
    padding :math:`0 \le a_H < s_H` inferred from ``output_size`` (0 when it is
    None).  This is the exact adjoint of :func:`conv2d` with the same ``w``,
    ``stride``, ``padding``, ``groups``: ``<conv2d(x, w), y> == <x, conv_transpose2d(y, w)>``.

    Parameters
    ----------
    y : ndarray, shape (N, O, Ho, Wo)
    w : ndarray, shape (O, C / groups, kH, kW), the forward weight unchanged
    b : ndarray, shape (C,), optional
    stride, padding : int or (int, int)
    groups : int
    output_size : (H, W) or (N, C, H, W), optional

    Returns
    -------
    x : ndarray, shape (N, C, H, W), C = groups * w.shape[1]

    Raises
    ------
    ShapeError
        When ``output_size`` needs an output padding outside ``[0, stride)``.

    Paired with
    -----------
    :func:`conv2d`.
    """
    y = np.asarray(y)
    w = np.asarray(w)
    b = None if b is None else np.asarray(b)
    _check_ndim(y, 4, "conv_transpose2d input y", "(N, O, Ho, Wo)")
    _check_ndim(w, 4, "conv_transpose2d weight w", "(O, C/groups, kH, kW)")
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    if sh < 1 or sw < 1 or ph < 0 or pw < 0 or groups < 1:
        raise ShapeError(f"conv_transpose2d: need stride >= 1, padding >= 0, groups >= 1; got "
                         f"stride={stride!r}, padding={padding!r}, groups={groups!r}")
    N, O, Ho, Wo = y.shape
    O_w, Cg, kH, kW = w.shape
    if O_w != O or O % groups:
        raise ShapeError(f"conv_transpose2d: input has {O} channels, weight {w.shape} with "
                         f"groups={groups}: expected w.shape[0] == {O}, divisible by groups")
    C = Cg * groups
    if b is not None and b.shape != (C,):
        raise ShapeError(f"conv_transpose2d: bias shape {b.shape}, expected ({C},)")

    base_h = conv_transpose_out_size(Ho, kH, sh, ph)
    base_w = conv_transpose_out_size(Wo, kW, sw, pw)
    if output_size is None:
        ah = aw = 0
    else:
        size = tuple(int(v) for v in output_size)
        if len(size) not in (2, 4):
            raise ShapeError(f"conv_transpose2d: output_size must be (H, W) or (N, C, H, W), "
                             f"got {output_size!r}")
        ah, aw = size[-2] - base_h, size[-1] - base_w
        if not (0 <= ah < sh and 0 <= aw < sw):
            raise ShapeError(
                f"conv_transpose2d: output_size {size[-2:]} is unreachable from input "
                f"{Ho}x{Wo} with kernel {kH}x{kW}, stride {(sh, sw)}, padding {(ph, pw)}: "
                f"expected H in [{base_h}, {base_h + sh - 1}] and W in [{base_w}, {base_w + sw - 1}]")
    H, W = base_h + ah, base_w + aw
    if H < 1 or W < 1:
        raise ShapeError(f"conv_transpose2d: output size {H}x{W} is empty")

    # Padded buffer of size H + 2p; every scatter lands inside it (max row (Ho-1)s + kH - 1).
    out = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=np.float64)
    w64 = w.astype(np.float64)
    Og = O // groups
    for n in range(N):
        for o in range(O):
            g = o // Og
            for i in range(Ho):
                for j in range(Wo):
                    v = float(y[n, o, i, j])
                    for c in range(Cg):
                        out[n, g * Cg + c, i * sh:i * sh + kH, j * sw:j * sw + kW] += v * w64[o, c]
    x = out[:, :, ph:ph + H, pw:pw + W]
    if b is not None:
        x = x + b.astype(np.float64)[None, :, None, None]
    return x.astype(_out_dtype(y, w, b))


# ----------------------------------------------------------------------------
# pooling with switches and unpooling
# ----------------------------------------------------------------------------


def max_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False):
    r"""Naive max pooling returning the switches (argmax locations).

    .. math::

        y[n, c, i, j] = \max_{0 \le u < k_H,\ 0 \le v < k_W}
            \tilde x[n, c, i s_H - p_H + u, j s_W - p_W + v]

    with :math:`\tilde x = -\infty` outside the input.  The switch is the flat index
    ``h * W + w`` of the maximum in the unpadded ``(n, c)`` plane.  Ties: the first
    maximum in row-major window order wins (PyTorch's rule; a NaN always wins, as in
    PyTorch's CPU kernel).  Output size: :func:`pool_out_size` (floor, or ceil with
    the rule that the last window starts inside the input or left padding).

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    kernel_size : int or (int, int)
    stride : int or (int, int), optional, default ``kernel_size``
    padding : int or (int, int), at most half the kernel
    ceil_mode : bool

    Returns
    -------
    y : ndarray, shape (N, C, Ho, Wo)
    switches : ndarray of int64, shape (N, C, Ho, Wo)

    Paired with
    -----------
    :func:`max_unpool2d`.
    """
    x = np.asarray(x)
    _check_ndim(x, 4, "max_pool2d input x", "(N, C, H, W)")
    kH, kW = _pair(kernel_size, "kernel_size")
    sh, sw = _pair(kernel_size if stride is None else stride, "stride")
    ph, pw = _pair(padding, "padding")
    if kH < 1 or kW < 1 or sh < 1 or sw < 1 or ph < 0 or pw < 0:
        raise ShapeError(f"max_pool2d: need kernel >= 1, stride >= 1, padding >= 0; got "
                         f"kernel_size={kernel_size!r}, stride={stride!r}, padding={padding!r}")
    if 2 * ph > kH or 2 * pw > kW:
        raise ShapeError(f"max_pool2d: padding {(ph, pw)} must be at most half the kernel {(kH, kW)}")
    N, C, H, W = x.shape
    Ho = pool_out_size(H, kH, sh, ph, ceil_mode)
    Wo = pool_out_size(W, kW, sw, pw, ceil_mode)
    if Ho < 1 or Wo < 1:
        raise ShapeError(f"max_pool2d: input {H}x{W} is too small for kernel {(kH, kW)} "
                         f"with padding {(ph, pw)}")

    y = np.empty((N, C, Ho, Wo), dtype=x.dtype)
    switches = np.empty((N, C, Ho, Wo), dtype=np.int64)
    for n in range(N):
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    h0, w0 = i * sh - ph, j * sw - pw
                    best, arg = -math.inf, -1
                    for u in range(kH):          # row-major window order
                        for v in range(kW):
                            h, ww = h0 + u, w0 + v
                            if not (0 <= h < H and 0 <= ww < W):
                                continue         # padding is -inf: never selected
                            val = float(x[n, c, h, ww])
                            if arg < 0:           # first in-bounds element starts the search
                                best, arg = val, h * W + ww
                            elif val > best or math.isnan(val):
                                best, arg = val, h * W + ww
                    y[n, c, i, j] = best
                    switches[n, c, i, j] = arg
    return y, switches


def max_unpool2d(y, switches, output_size):
    r"""Naive unpooling by scatter-ADD through the switches.

    .. math::

        x[n, c, h, w] = \sum_{(i, j)\,:\ \text{switches}[n, c, i, j] = h W + w} y[n, c, i, j]

    Adding (not overwriting) matters for overlapping pools (3x3 stride 2), where
    two outputs can select the same input: the sum makes unpooling the exact adjoint
    of the selection ``x -> x.flat[switches]`` and equal to the gradient of
    max-pooling with respect to its input.

    Parameters
    ----------
    y : ndarray, shape (N, C, Ho, Wo)
    switches : int ndarray, shape (N, C, Ho, Wo), flat indices into H*W
    output_size : (H, W) or (N, C, H, W)

    Returns
    -------
    x : ndarray, shape (N, C, H, W)

    Paired with
    -----------
    :func:`max_pool2d`.
    """
    y = np.asarray(y)
    switches = np.asarray(switches)
    _check_ndim(y, 4, "max_unpool2d input y", "(N, C, Ho, Wo)")
    if switches.shape != y.shape:
        raise ShapeError(f"max_unpool2d: switches shape {switches.shape} != input shape {y.shape}")
    size = tuple(int(v) for v in output_size)
    if len(size) not in (2, 4):
        raise ShapeError(f"max_unpool2d: output_size must be (H, W) or (N, C, H, W), got {output_size!r}")
    H, W = size[-2:]
    N, C, Ho, Wo = y.shape
    x = np.zeros((N, C, H * W), dtype=np.float64)
    for n in range(N):
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    k = int(switches[n, c, i, j])
                    if not 0 <= k < H * W:
                        raise ShapeError(f"max_unpool2d: switch {k} at {(n, c, i, j)} is outside "
                                         f"the {H}x{W} output plane")
                    x[n, c, k] += float(y[n, c, i, j])
    return x.reshape(N, C, H, W).astype(_out_dtype(y))  # (N, C, H, W)


# ----------------------------------------------------------------------------
# pointwise, normalisation, dense
# ----------------------------------------------------------------------------


def relu(x):
    r"""Rectifier :math:`\max(x, 0)`, element by element (a NaN stays NaN, as in PyTorch)."""
    x = np.asarray(x)
    out = np.empty_like(x)
    flat_in, flat_out = x.reshape(-1), out.reshape(-1)
    for t in range(flat_in.size):
        flat_out[t] = 0 if flat_in[t] <= 0 else flat_in[t]
    return out


def lrn(x, size, alpha=1e-4, beta=0.75, k=1.0):
    r"""Local response normalisation across channels (PyTorch ``LocalResponseNorm``).

    .. math::

        b[n, c, h, w] = a[n, c, h, w] \Big/ \Big(k + \frac{\alpha}{\text{size}}
            \sum_{c' = c - \lfloor \text{size}/2 \rfloor}^{c + \lfloor (\text{size}-1)/2 \rfloor}
            a[n, c', h, w]^2\Big)^{\beta}

    Channels outside ``[0, C)`` count as zero.  Note ``alpha`` is divided by
    ``size`` (PyTorch and Caffe); the paper's LRN uses size 5.

    Parameters
    ----------
    x : ndarray, shape (N, C, ...) (usually (N, C, H, W))

    Returns
    -------
    ndarray, same shape as ``x``
    """
    x = np.asarray(x)
    if x.ndim < 2:
        raise ShapeError(f"lrn: input must be at least 2-D (N, C, ...), got shape {x.shape}")
    x64 = x.astype(np.float64)
    C = x.shape[1]
    out = np.empty_like(x64)
    for c in range(C):
        lo, hi = c - size // 2, c + (size - 1) // 2   # inclusive window, clipped below
        acc = np.zeros_like(x64[:, 0])
        for c2 in range(max(lo, 0), min(hi, C - 1) + 1):
            acc += x64[:, c2] ** 2
        out[:, c] = x64[:, c] / (k + alpha / size * acc) ** beta
    return out.astype(_out_dtype(x))


def lrn_within_channel(x, size, alpha=1.0, beta=0.75, k=1.0):
    r"""Local response normalisation within each channel (Caffe's ``WITHIN_CHANNEL``).

    .. math::

        b[n, c, h, w] = a[n, c, h, w] \Big/ \Big(k + \frac{\alpha}{\text{size}^2}
            \sum_{h' = h - r}^{h + r} \sum_{w' = w - r}^{w + r} a[n, c, h', w']^2\Big)^{\beta},
        \qquad r = (\text{size} - 1) / 2

    Positions outside the map count as zero, and the divisor is always
    ``size^2`` (Caffe averages ``a^2`` with an AVE pooling whose divisor counts the
    padding).  ``size`` is odd.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)

    Returns
    -------
    ndarray, same shape as ``x``
    """
    x = np.asarray(x)
    _check_ndim(x, 4, "lrn_within_channel input", "(N, C, H, W)")
    if size % 2 == 0:
        raise ShapeError(f"lrn_within_channel: size must be odd, got {size}")
    x64 = x.astype(np.float64)
    N, C, H, W = x.shape
    r = (size - 1) // 2
    out = np.empty_like(x64)
    for n in range(N):
        for c in range(C):
            for h in range(H):
                for w in range(W):
                    acc = 0.0
                    for h2 in range(max(h - r, 0), min(h + r, H - 1) + 1):
                        for w2 in range(max(w - r, 0), min(w + r, W - 1) + 1):
                            acc += x64[n, c, h2, w2] ** 2
                    out[n, c, h, w] = x64[n, c, h, w] / (k + alpha / (size * size) * acc) ** beta
    return out.astype(_out_dtype(x))


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False):
    r"""Naive average pooling with Caffe's divisor (``AVE``).

    .. math::

        y[n, c, i, j] = \frac{1}{d_{ij}} \sum_{h = \max(a, 0)}^{\min(a + k_H, H) - 1}
            \sum_{w = \max(b, 0)}^{\min(b + k_W, W) - 1} x[n, c, h, w],
        \qquad a = i s_H - p_H,\ b = j s_W - p_W

    with ``d_ij = (min(a + kH, H + pH) - a) * (min(b + kW, W + pW) - b)``: the window
    clipped to the *padded* map, so padding counts and a ceil-mode overhang past it
    does not (Caffe's ``pooling_layer.cpp``).  Output size: :func:`pool_out_size`.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)

    Returns
    -------
    y : ndarray, shape (N, C, H_out, W_out)
    """
    x = np.asarray(x)
    _check_ndim(x, 4, "avg_pool2d input", "(N, C, H, W)")
    kh, kw = _pair(kernel_size, "kernel_size")
    sh, sw = _pair(kernel_size if stride is None else stride, "stride")
    ph, pw = _pair(padding, "padding")
    N, C, H, W = x.shape
    Ho, Wo = pool_out_size(H, kh, sh, ph, ceil_mode), pool_out_size(W, kw, sw, pw, ceil_mode)
    x64 = x.astype(np.float64)
    y = np.zeros((N, C, Ho, Wo), np.float64)
    for i in range(Ho):
        for j in range(Wo):
            a, b = i * sh - ph, j * sw - pw
            d = (min(a + kh, H + ph) - a) * (min(b + kw, W + pw) - b)
            for n in range(N):
                for c in range(C):
                    acc = 0.0
                    for h in range(max(a, 0), min(a + kh, H)):
                        for w in range(max(b, 0), min(b + kw, W)):
                            acc += x64[n, c, h, w]
                    y[n, c, i, j] = acc / d
    return y.astype(_out_dtype(x))


def linear(x, w, b=None):
    r"""Fully connected layer :math:`y[n, o] = b[o] + \sum_i w[o, i] x[n, i]`.

    Parameters
    ----------
    x : ndarray, shape (N, in)
    w : ndarray, shape (out, in)
    b : ndarray, shape (out,), optional

    Returns
    -------
    y : ndarray, shape (N, out)
    """
    x = np.asarray(x)
    w = np.asarray(w)
    b = None if b is None else np.asarray(b)
    _check_ndim(x, 2, "linear input x", "(N, in)")
    _check_ndim(w, 2, "linear weight w", "(out, in)")
    N, I = x.shape
    O, I_w = w.shape
    if I_w != I:
        raise ShapeError(f"linear: input has {I} features, weight {w.shape} expects {I_w}")
    if b is not None and b.shape != (O,):
        raise ShapeError(f"linear: bias shape {b.shape}, expected ({O},)")
    y = np.zeros((N, O), dtype=np.float64)
    for n in range(N):
        for o in range(O):
            acc = 0.0 if b is None else float(b[o])
            for i in range(I):
                acc += float(w[o, i]) * float(x[n, i])
            y[n, o] = acc
    return y.astype(_out_dtype(x, w, b))


def softmax(x, axis=-1):
    r"""Softmax :math:`e^{x_i - m} / \sum_j e^{x_j - m}` along ``axis``, ``m = \max_j x_j``."""
    x = np.asarray(x)
    x64 = np.moveaxis(x.astype(np.float64), axis, -1)
    out = np.empty_like(x64)
    for idx in np.ndindex(*x64.shape[:-1]):
        row = x64[idx]
        e = np.array([math.exp(v - row.max()) for v in row])
        out[idx] = e / e.sum()
    return np.moveaxis(out, -1, axis).astype(_out_dtype(x))


# ----------------------------------------------------------------------------
# receptive field by brute force
# ----------------------------------------------------------------------------


def brute_force_receptive_field(
    f: Callable[[np.ndarray], np.ndarray],
    x,
    index: Sequence[int],
    delta: float | None = None,
    atol: float = 0.0,
) -> np.ndarray:
    """The input pixels whose perturbation changes one output value.

    For every pixel ``(h, w)`` of ``x`` (shape ``(..., H, W)``), add ``+delta`` and
    then ``-delta`` to ``x[..., h, w]`` (all images and channels at once) and
    report the pixel when either changes ``f(x)[index]`` by more than ``atol``.
    Two signs are used because a max or a ReLU can hide a change of one sign.

    This is the *domain of dependence* of the output, measured rather than
    computed: receptive-field arithmetic must predict a box that contains it (and,
    for linear layers with nonzero weights, equals it, clipped to the image).

    Parameters
    ----------
    f : callable mapping an array shaped like ``x`` to an array
    x : ndarray, shape (..., H, W)
    index : tuple of int, an index into ``f(x)``, e.g. ``(n, c, i, j)``
    delta : float, optional
        Size of the perturbation; default ``10 * (1 + max |x|)``.
    atol : float
        A change larger than this counts.  The default 0 asks for exact
        independence, which holds for convolution/pool/ReLU networks: a value
        outside the window is never read.

    Returns
    -------
    mask : ndarray of bool, shape (H, W)
    """
    x = np.asarray(x, dtype=np.float64)
    index = tuple(int(i) for i in index)
    if delta is None:
        delta = 10.0 * (1.0 + float(np.max(np.abs(x))))
    base = float(np.asarray(f(x))[index])
    H, W = x.shape[-2:]
    mask = np.zeros((H, W), dtype=bool)
    for h in range(H):
        for w in range(W):
            for sign in (1.0, -1.0):
                xp = x.copy()
                xp[..., h, w] += sign * delta
                if abs(float(np.asarray(f(xp))[index]) - base) > atol:
                    mask[h, w] = True
                    break
    return mask


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Bounding box ``(y0, x0, y1, x1)`` (half-open) of the True pixels, or None if none."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    return int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1
