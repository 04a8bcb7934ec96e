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

from ..backend import cupy, get_array_module
from ..errors import ShapeError
from ._shape import pair, pool_out_size
from . import _kernels
from ._parallel import parallel_pieces, parallel_range
from .im2col import split_phase

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

    Notes
    -----
    The readable algorithm is :func:`_max_pool2d_windows` (one pass per window
    offset).  On NumPy, floating inputs take :func:`_max_pool2d_polyphase`, which
    returns the identical maxima and switches several times faster (separable
    passes over contiguous polyphase buffers); see the comment above it.
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
    if xp is cupy and x.dtype in _kernels.DTYPES:  # CUDA kernel zfnet_max_pool2d: the readable loop, per output
        return _kernels.max_pool2d(x, (kh, kw), (sh, sw), (ph, pw), (ho, wo))
    if xp is np and x.dtype.kind == "f" and kw < 256:
        y, switches = _max_pool2d_polyphase(x, (kh, kw), (sh, sw), (ph, pw), (ho, wo))
        if y is not None:
            return y, switches
        # a window held NaN: fall through to the readable loop, whose NaN rule is PyTorch's
    return _max_pool2d_windows(x, (kh, kw), (sh, sw), (ph, pw), (ho, wo))


def _max_pool2d_windows(x, kernel_size, stride, padding, out_size):
    """The readable max-pool: visit the ``kH * kW`` window offsets in row-major order.

    This is the reference for every faster path (see :func:`_max_pool2d_polyphase`).
    Each offset ``(u, v)`` is one strided view of the padded input, holding that
    offset of every window at once; a strict ``>`` keeps the first maximum.
    """
    xp = get_array_module(x)
    (kh, kw), (sh, sw), (ph, pw), (ho, wo) = kernel_size, stride, padding, out_size
    h, w = x.shape[2:]
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


# -- the fast NumPy path -------------------------------------------------------------
#
# The readable loop above makes kH*kW passes, each over strided views (stride sH, sW)
# and each rewriting an int64 index array with `where`.  On a CPU that is slow for
# two reasons: strided views run NumPy's inner loop one short row at a time, and
# `where` on a random mask is branchy.  The fast path changes the arithmetic order,
# not the result:
#
# 1. Separable: the first maximum of a window in row-major order is found by taking,
#    in each window row, the first maximum along W (pass 1), then the first row whose
#    maximum beats the earlier rows (pass 2).  kH + kW comparisons per output, not kH*kW.
# 2. Polyphase: split the padded input into sH*sW "phases", phase (a, b)[r, q] =
#    x_pad[r*sH + a, q*sW + b].  Window offset v = (v // sW)*sW + v % sW then reads
#    phase (., v % sW) shifted by v // sW columns, and in a phase stored with rows of
#    Wq = W_out + (kW-1)//sW values a column shift is a shift of the FLAT array.  Every
#    comparison becomes one contiguous 1-D operation over a whole chunk of planes;
#    outputs in the last (kW-1)//sW columns of each phase row read across the row end
#    and are dropped.  (The same layout as the convolution's columns, see
#    zfnet.ops.im2col.im2col_phases, with -inf instead of zero padding.)
# 3. Branch-free index tracking: offsets are visited in increasing order, so "take
#    offset v where the candidate wins" equals max(offset, wins * v).
#
# Work goes in chunks of planes (about _CHUNK_BYTES of input) to stay in cache, and the
# planes are shared out among CPU threads (zfnet.ops._parallel).

_CHUNK_BYTES = 1 << 21


def _max_pool2d_chunk(x, kernel_size, stride, padding, out_size):
    """Separable polyphase max-pool of planes ``x`` (P, H, W).

    Returns the maxima (P, H_out, W_out) and, for each, the winner's offset
    ``u * W + v`` inside its window as int32 (both strided views of padded buffers).
    """
    (kh, kw), (sh, sw), (ho, wo) = kernel_size, stride, out_size
    p, h, w = x.shape
    qh, qw = (kh - 1) // sh, (kw - 1) // sw  # how many phase rows / columns a window spans beyond its first
    hq, wq = ho + qh, wo + qw
    m = p * hq * wq  # length of one flat phase
    phases: dict = {}

    def phase(a, b):  # flat (P*Hq*Wq,), built on first use
        if (a, b) not in phases:
            out = np.empty((p, hq, wq), x.dtype)  # (P, Hq, Wq), contiguous so it can shift flat
            split_phase(out, x, a, b, stride, padding, fill=-np.inf)
            phases[a, b] = out.reshape(-1)
        return phases[a, b]

    wins = np.empty(m, bool)
    tmp8 = np.empty(m, np.uint8)
    # Pass 1, along W, for each row phase a:  rmax[a][f] = max_v phase(a, v % sW)[f + v // sW]
    # and rarg[a][f] = the first v attaining it.  Positions past n1 only hold padding.
    rmax, rarg = {}, {}
    n1 = m - qw
    for a in sorted({u % sh for u in range(kh)}):
        best = np.empty(m, x.dtype)
        best[n1:] = -np.inf
        arg = np.zeros(m, np.uint8)
        bv, av, wv, tv = best[:n1], arg[:n1], wins[:n1], tmp8[:n1]
        np.copyto(bv, phase(a, 0)[:n1])  # offset v = 0
        for v in range(1, kw):
            d = v // sw
            cand = phase(a, v % sw)[d : d + n1]
            np.greater(cand, bv, out=wv)  # strict: an equal later value does not win
            np.multiply(wv, np.uint8(v), out=tv)
            np.maximum(av, tv, out=av)  # v grows, so "v where it wins" is a maximum
            np.maximum(bv, cand, out=bv)
        rmax[a], rarg[a] = best, arg

    # Pass 2, along H:  y[f] = max_u rmax[u % sH][f + (u // sH) * Wq], and the winner's
    # offset u * W + v (v from pass 1).  It grows with u because v < W, so again a maximum.
    n2 = m - qh * wq
    y = np.empty(m, x.dtype)
    off = np.empty(m, np.int32)
    tmp32 = np.empty(m, np.int32)
    yv, ov, wv, tv = y[:n2], off[:n2], wins[:n2], tmp32[:n2]
    np.copyto(yv, rmax[0][:n2])  # row u = 0
    np.copyto(ov, rarg[0][:n2])
    for u in range(1, kh):
        d = (u // sh) * wq
        cand = rmax[u % sh][d : d + n2]
        np.greater(cand, yv, out=wv)
        np.add(rarg[u % sh][d : d + n2], np.int32(u * w), out=tv)
        np.multiply(tv, wv, out=tv)
        np.maximum(ov, tv, out=ov)
        np.maximum(yv, cand, out=yv)
    y = y.reshape(p, hq, wq)[:, :ho, :wo]  # (P, H_out, W_out) view; the rest is padding
    off = off.reshape(p, hq, wq)[:, :ho, :wo]
    return y, off


def _max_pool2d_polyphase(x, kernel_size, stride, padding, out_size):
    """Fast NumPy max-pool; the same ``(y, switches)`` as :func:`_max_pool2d_windows`.

    Returns ``(None, None)`` when a window holds NaN: the caller then uses the
    readable loop, which implements PyTorch's "NaN wins" rule (a NaN anywhere in a
    window makes its maximum NaN, so checking the output is enough).
    """
    (kh, kw), (sh, sw), (ph, pw), (ho, wo) = kernel_size, stride, padding, out_size
    n, c, h, w = x.shape
    planes = x.reshape(n * c, h, w)  # (N*C, H, W)
    y = np.empty((n * c, ho, wo), x.dtype)
    switches = np.empty((n * c, ho, wo), np.int64)
    # flat index of each window's top-left corner in the unpadded plane (it may be negative)
    corner = (np.arange(ho)[:, None] * sh - ph) * w + np.arange(wo) * sw - pw  # (H_out, W_out)
    step = max(1, _CHUNK_BYTES // (h * w * x.itemsize))

    def work(lo, hi):  # planes [lo, hi), a chunk at a time
        for p0 in range(lo, hi, step):
            p1 = min(p0 + step, hi)
            yc, offc = _max_pool2d_chunk(planes[p0:p1], (kh, kw), (sh, sw), (ph, pw), (ho, wo))
            y[p0:p1] = yc
            np.add(offc, corner, out=switches[p0:p1])  # switch = corner + u * W + v

    parallel_range(n * c, work, min_items=max(1, (1 << 18) // (h * w)))  # threads take disjoint planes
    if np.isnan(y).any():
        return None, None
    return y.reshape(n, c, ho, wo), switches.reshape(n, c, ho, wo)


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
    if xp is cupy and y.dtype in _kernels.DTYPES:  # CUDA kernel zfnet_max_unpool2d (atomic adds)
        return _kernels.max_unpool2d(y, switches, (h, w))
    if xp is np and y.size >= 1 << 16:
        return _max_unpool2d_chunked(y, switches, (h, w))
    x = xp.zeros(n * c * h * w, dtype=y.dtype)  # the (n, c) planes of H*W values, one after another
    start = xp.arange(n * c, dtype=xp.int64).reshape(n * c, 1) * (h * w)  # where each plane starts
    flat = switches.reshape(n * c, -1) + start  # (N*C, H_out*W_out) indices into x
    # add.at accumulates repeated indices (a plain fancy-index assignment would keep only one);
    # with one flat index array it also takes NumPy's fast 1-D path
    xp.add.at(x, flat.reshape(-1), y.reshape(-1))
    return x.reshape(n, c, h, w)


def _max_unpool2d_chunked(y, switches, size):
    """:func:`max_unpool2d` on NumPy, a few planes at a time, shared among CPU threads.

    The same ``np.add.at`` over the same indices in the same order, so the same sums;
    but each piece of about ``_CHUNK_BYTES`` of output is zeroed and filled while it
    is in cache, instead of scattering into a whole-batch buffer (ZFNet's pool1
    gradient at batch 32 is 148 MB).  Planes are disjoint, so threads never share a
    value.
    """
    n, c = y.shape[:2]
    h, w = size
    planes, per = n * c, y.size // max(1, n * c)
    x = np.empty((planes, h * w), dtype=y.dtype)  # (N*C, H*W)
    flat, yr = switches.reshape(planes, per), y.reshape(planes, per)

    def piece(lo, hi):  # planes [lo, hi)
        out = x[lo:hi]
        out.fill(0)
        start = np.arange(hi - lo, dtype=np.int64).reshape(-1, 1) * (h * w)  # each plane's start in the piece
        np.add.at(out.reshape(-1), (flat[lo:hi] + start).reshape(-1), yr[lo:hi].reshape(-1))

    parallel_pieces(planes, h * w * y.itemsize, piece, _CHUNK_BYTES)
    return x.reshape(n, c, h, w)
