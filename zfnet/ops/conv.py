"""2-D convolution and its exact adjoint, the transposed convolution.

Deep-learning "convolution" is cross-correlation:

.. math::

    y[n, o, i, j] = b[o] + \\sum_{c, u, v} w[o, c, u, v]\\,
                    x_{pad}[n, g(o) C_g + c, i s + u, j s + v]

with ``x_pad`` the input zero-padded by ``p`` and ``g(o)`` the group of output
channel ``o``.  The transposed convolution is the linear map ``T`` with
``<conv2d(x, w), y> = <x, T(y, w)>`` for all ``x, y``: in matrix terms it multiplies
by the transpose of the convolution matrix, which is where the paper's "filtering
with transposed versions of the same filters" comes from.  Written as a correlation
it would use the spatially flipped filter; we never flip explicitly because
``col2im`` scatters each column back to where ``im2col`` read it.

References
----------
Zeiler & Fergus (2014), section 2.1 ("Filtering"). Dumoulin & Visin (2016).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..backend import cupy, get_array_module
from ..errors import ShapeError
from . import _kernels
from ._shape import conv_out_size, conv_transpose_out_size, pair
from .im2col import col2im, col2im_phases, im2col, im2col_phases, phase_geometry
from .activation import relu as relu_op
from .activation import relu_backward
from .kernel_rows import (conv2d_rows, conv2d_rows_input_grad, conv2d_rows_weight_grad,
                          kernel_rows_applies)
from .winograd import winograd_applies, winograd_conv2d, winograd_input_grad, winograd_weight_grad

__all__ = [
    "conv2d",
    "conv_transpose2d",
    "conv2d_weight_grad",
    "conv2d_bias_grad",
    "conv2d_relu",
    "conv2d_grads_from_columns",
    "conv2d_input_grad",
    "SavedColumns",
    "SavedTiles",
    "SavedInput",
]


def _check(x, w, groups: int, what: str) -> None:
    if x.ndim != 4:
        raise ShapeError(f"{what}: input must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if w.ndim != 4:
        raise ShapeError(f"{what}: weight must be 4-D (C_out, C_in/groups, kH, kW), got shape {tuple(w.shape)}")
    if groups < 1 or w.shape[0] % groups:
        raise ShapeError(f"{what}: C_out={w.shape[0]} is not divisible by groups={groups}")


def conv2d(x, w, b=None, stride=1, padding=0, groups=1):
    """2-D cross-correlation (the convolution layer), NCHW with OIHW filters.

    ``y[n, o, i, j] = b[o] + sum_{c,u,v} w[o, c, u, v] * x_pad[n, g*C_g + c, i*sH + u, j*sW + v]``
    where ``g = o // (C_out / groups)`` and ``C_g = C_in / groups``.

    Output size: ``H_out = floor((H + 2 pH - kH) / sH) + 1`` (likewise W_out).

    Parameters
    ----------
    x : array, shape (N, C_in, H, W)
    w : array, shape (C_out, C_in/groups, kH, kW)
    b : array, shape (C_out,), optional
    stride, padding : int or (int, int)
    groups : int
        Input and output channels are split into ``groups`` independent blocks
        (AlexNet's two-GPU layout uses ``groups=2``).

    Returns
    -------
    y : array, shape (N, C_out, H_out, W_out)

    Paired with
    -----------
    :func:`conv_transpose2d` (its adjoint, same ``w``).

    Notes
    -----
    im2col + one batched GEMM per group; see :mod:`zfnet.ops.im2col`.  On NumPy the
    same GEMM runs on columns in the flat-shift layout (:func:`~zfnet.ops.im2col.im2col_phases`,
    one contiguous copy per kernel offset), image by image to stay in cache; the
    result is then a strided view that skips the layout's wrap-around columns.
    3x3 stride-1 layers with many channels (ZFNet's and AlexNet's conv3-conv5) take
    Winograd's F(2x2, 3x3) instead (:mod:`zfnet.ops.winograd`; ``ZFNET_WINOGRAD=0``
    switches it off), and layers with many channels on larger maps (both networks'
    conv2) one GEMM per filter row on columns of one image
    (:mod:`zfnet.ops.kernel_rows`; ``ZFNET_KERNEL_ROWS=0``); both agree to float32
    rounding.
    """
    return _conv2d(x, w, b, stride, padding, groups, keep_columns=False, relu=False)[0]


def conv2d_relu(x, w, b=None, stride=1, padding=0, groups=1, relu=True, keep_columns=False):
    """:func:`conv2d`, then ``max(y, 0)`` if ``relu``; with ``keep_columns``, what the
    filter gradient needs; for layers (:class:`~zfnet.nn.Conv2d`).

    The ReLU is applied inside the fast paths, to each chunk of the output while it
    is in cache (the flat-shift GEMMs, Winograd's output transform), instead of as a
    pass over the whole map.

    Returns ``(y, saved)``: ``y`` as ``relu(conv2d(x, w, b, ...))`` computes it, and
    ``saved`` what :func:`conv2d_grads_from_columns` turns into the filter (and bias)
    gradient without building it a second time: the flat-shift columns the GEMM
    multiplied (:class:`SavedColumns`: flat-shift, or compact on small maps), the
    Winograd input tiles and transformed filters (:class:`SavedTiles`), the input
    itself for the kernel-rows path (:class:`SavedInput`: its columns are one image's,
    built again image by image), or None (``keep_columns`` False; 1x1 convolutions,
    CuPy).  Saving costs memory until the backward pass: ZFNet's conv1 at batch 32,
    236 MB.
    """
    return _conv2d(x, w, b, stride, padding, groups, keep_columns=keep_columns, relu=relu)


def _conv2d(x, w, b, stride, padding, groups, keep_columns: bool, relu: bool):
    """:func:`conv2d` (rectified if ``relu``), and with ``keep_columns`` what the fast path saves (else None)."""
    xp = get_array_module(x, w)
    _check(x, w, groups, "conv2d")
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    if cg * groups != c:
        raise ShapeError(
            f"conv2d: input has {c} channels but weight {tuple(w.shape)} with groups={groups} expects {cg * groups}"
        )
    if b is not None and tuple(b.shape) != (o,):
        raise ShapeError(f"conv2d: bias must have shape ({o},), got {tuple(b.shape)}")
    stride, padding = pair(stride, "stride"), pair(padding, "padding")
    ho = conv_out_size(h, kh, stride[0], padding[0])
    wo = conv_out_size(wd, kw, stride[1], padding[1])
    if xp is np and x.dtype.kind == "f":
        if winograd_applies(cg, o // groups, (kh, kw), stride, padding, (ho, wo), np.result_type(x, w)):
            # 3x3 stride 1, many channels
            y, tiles, u = winograd_conv2d(x, w, b, padding, groups, relu=relu, keep_tiles=True)
            return y, (SavedTiles(x, tiles, padding, groups, u) if keep_columns else None)
        if kernel_rows_applies(cg, (kh, kw), (ho, wo), np.result_type(x, w)):  # many channels, larger maps
            y = conv2d_rows(x, w, b, stride, padding, groups, relu=relu)
            return y, (SavedInput(x, stride, padding, groups) if keep_columns else None)
        return _conv2d_phases(x, w, b, stride, padding, groups, (ho, wo), keep_columns, relu)
    if xp is cupy and x.dtype in _kernels.DTYPES and w.dtype in _kernels.DTYPES:
        y = _kernels.conv2d(x, w, b, stride, padding, groups, (ho, wo))  # CUDA im2col + cuBLAS
    else:
        y = _conv2d_im2col(x, w, b, stride, padding, groups, (ho, wo))
    return (relu_op(y) if relu else y), None


def _conv2d_im2col(x, w, b, stride, padding, groups, out_size):
    """The readable path of :func:`conv2d`: im2col, then one batched GEMM per group.

    The reference the fast paths are tested against (``tests/test_fast_paths.py``);
    arguments already checked, ``stride``/``padding`` pairs, ``out_size = (H_out, W_out)``.
    """
    xp = get_array_module(x, w)
    n = x.shape[0]
    o, cg, kh, kw = w.shape
    ho, wo = out_size
    cols = im2col(x, (kh, kw), stride, padding)  # (N, C, kH, kW, H_out, W_out)
    cols = cols.reshape(n, groups, cg * kh * kw, ho * wo)  # (N, G, C_g*kH*kW, H_out*W_out)
    wmat = w.reshape(groups, o // groups, cg * kh * kw)  # (G, O_g, C_g*kH*kW)
    y = xp.matmul(wmat, cols)  # (N, G, O_g, H_out*W_out)
    y = y.reshape(n, o, ho, wo)  # (N, C_out, H_out, W_out)
    if b is not None:
        y += b.reshape(1, o, 1, 1)
    return y


def conv_transpose2d(y, w, b=None, stride=1, padding=0, groups=1, output_size=None):
    """Transposed convolution: the exact adjoint of :func:`conv2d` with the same ``w``.

    ``<conv2d(x, w), y> == <x, conv_transpose2d(y, w)>`` for every ``x`` and ``y`` of
    matching shapes.  Each input value ``y[n, o, i, j]`` adds ``y * w[o]`` into the
    window of the output that ``conv2d`` read to produce it:

    ``x_pad[n, g*C_g + c, i*sH + u, j*sW + v] += w[o, c, u, v] * y[n, o, i, j]``

    and the padding is cropped away.  Written as a correlation this uses the filter
    flipped in both spatial axes, the paper's "transposed filters".

    Output size: ``H = (H_in - 1) sH - 2 pH + kH + output_padding`` where, because a
    strided forward convolution maps several input sizes to the same output size,
    ``output_padding`` in ``[0, sH)`` is inferred from ``output_size`` (default 0).

    Parameters
    ----------
    y : array, shape (N, C_out, H_in, W_in)
        A signal in the forward layer's OUTPUT space.
    w : array, shape (C_out, C_in/groups, kH, kW)
        The forward layer's weight, unchanged.
    b : array, shape (C_in,), optional
        Bias added to the result (the deconvnet uses none).
    stride, padding, groups :
        As in the forward :func:`conv2d`.
    output_size : (H, W) or (N, C, H, W), optional
        The forward layer's input size, to resolve the stride ambiguity.

    Returns
    -------
    x : array, shape (N, C_in, H, W)

    Paired with
    -----------
    :func:`conv2d`.  It is also conv2d's input gradient: ``dL/dx = conv_transpose2d(dL/dy, w)``.

    References
    ----------
    Zeiler & Fergus (2014), section 2.1: "filtering" in the deconvnet.
    """
    xp = get_array_module(y, w)
    _check(y, w, groups, "conv_transpose2d")
    n, o, hi, wi = y.shape
    o_w, cg, kh, kw = w.shape
    if o != o_w:
        raise ShapeError(f"conv_transpose2d: signal has {o} channels but weight {tuple(w.shape)} has C_out={o_w}")
    c = cg * groups
    if b is not None and tuple(b.shape) != (c,):
        raise ShapeError(f"conv_transpose2d: bias must have shape ({c},), got {tuple(b.shape)}")
    stride, padding = pair(stride, "stride"), pair(padding, "padding")
    h_min = conv_transpose_out_size(hi, kh, stride[0], padding[0])
    w_min = conv_transpose_out_size(wi, kw, stride[1], padding[1])
    if output_size is None:
        h, wd = h_min, w_min
    else:
        h, wd = (int(v) for v in tuple(output_size)[-2:])
        if not (h_min <= h < h_min + stride[0] and w_min <= wd < w_min + stride[1]):
            raise ShapeError(
                f"conv_transpose2d: output_size {(h, wd)} is impossible for input {(hi, wi)}: "
                f"expected between {(h_min, w_min)} and {(h_min + stride[0] - 1, w_min + stride[1] - 1)}"
            )
    if h < 1 or wd < 1:
        raise ShapeError(f"conv_transpose2d: output size {(h, wd)} for input {(hi, wi)} is empty; pass output_size")
    if xp is cupy and y.dtype in _kernels.DTYPES and w.dtype in _kernels.DTYPES:
        return _kernels.conv_transpose2d(y, w, b, stride, padding, groups, (h, wd))  # cuBLAS + CUDA col2im
    if xp is np and y.dtype.kind == "f":
        # at stride 1 the adjoint is a convolution with the flipped filters, C_in and C_out swapped
        flipped_padding = (kh - 1 - padding[0], kw - 1 - padding[1])
        if winograd_applies(o // groups, cg, (kh, kw), stride, flipped_padding, (h, wd), np.result_type(y, w)):
            x = winograd_input_grad(y, w, padding, groups)
            return x if b is None else x + b.reshape(1, c, 1, 1)
        # as conv2d decides for its forward (so training and the deconvnet take the same
        # path); the GEMMs' inner dimension here is O_g, which only costs speed if small
        if kernel_rows_applies(cg, (kh, kw), (hi, wi), np.result_type(y, w)):
            x = conv2d_rows_input_grad(y, w, stride, padding, groups, (h, wd))
            return x if b is None else x + b.reshape(1, c, 1, 1)
        return _conv_transpose2d_phases(y, w, b, stride, padding, groups, (h, wd))
    return _conv_transpose2d_col2im(y, w, b, stride, padding, groups, (h, wd))


def _conv_transpose2d_col2im(y, w, b, stride, padding, groups, out_size):
    """The readable path of :func:`conv_transpose2d`: one batched GEMM per group, then col2im.

    The reference the fast paths are tested against; arguments already checked,
    ``out_size = (H, W)`` resolved.
    """
    xp = get_array_module(y, w)
    n, o, hi, wi = y.shape
    _, cg, kh, kw = w.shape
    c = cg * groups
    ymat = y.reshape(n, groups, o // groups, hi * wi)  # (N, G, O_g, H_in*W_in)
    wmat = w.reshape(groups, o // groups, cg * kh * kw)  # (G, O_g, C_g*kH*kW)
    cols = xp.matmul(wmat.transpose(0, 2, 1), ymat)  # (N, G, C_g*kH*kW, H_in*W_in)
    cols = cols.reshape(n, c, kh, kw, hi, wi)  # (N, C_in, kH, kW, H_in, W_in)
    x = col2im(cols, out_size, stride, padding)  # (N, C_in, H, W)
    if b is not None:
        x = x + b.reshape(1, c, 1, 1)
    return x



# -- fast NumPy paths: the same GEMMs on the flat-shift column layout ---------------------

_COLS_CHUNK_BYTES = 8 << 20  # images per GEMM chunk: about this many bytes of columns


def _column_layout(out_size, kernel_size, stride, padding):
    """``(Wq, one_by_one, compact)``: the columns the NumPy paths build for these shapes.

    The flat-shift layout (``Wq = W_out + (kW-1)//sW``, :func:`~zfnet.ops.im2col.phase_geometry`),
    except for a 1x1 stride-1 convolution (the input is its own columns) and small maps,
    where the wrap-around columns would add more than 10% to the GEMM (compact
    columns, ``Wq = W_out``).  The forward, the filter gradient and the saved columns
    (:class:`SavedColumns`) all follow it.
    """
    wo = out_size[1]
    _, wq = phase_geometry(out_size, kernel_size, stride)
    one_by_one = (*kernel_size, *stride, *padding) == (1, 1, 1, 1, 0, 0)
    compact = not one_by_one and wq - wo > 0.1 * wo
    return (wo if one_by_one or compact else wq), one_by_one, compact


def _conv2d_phases(x, w, b, stride, padding, groups, out_size, keep_columns=False, relu=False):
    """:func:`conv2d` on NumPy with columns from :func:`~zfnet.ops.im2col.im2col_phases`.

    Same GEMM as the readable path, ``(G, O_g, C_g*kH*kW) @ (N, G, C_g*kH*kW, H_out*Wq)``,
    run on chunks of images so that each chunk's columns stay in cache.  Returns a
    (N, C_out, H_out, W_out) view of a (N, C_out, H_out, Wq) buffer, and with
    ``keep_columns`` the columns of every chunk, written into one buffer for the
    whole batch (:class:`SavedColumns`; None for a 1x1 convolution).  With ``relu``
    each chunk of the output is rectified right after its GEMM (the bias is then
    added first, as ``relu(conv2d(...))`` does).

    Two cases use other columns: a 1x1 stride-1 convolution multiplies the input
    itself, and on small maps (13 wide with 3x3 kernels the wrap-around columns would
    add 15% to the GEMM) the compact columns of the readable :func:`im2col` are cheaper.
    """
    n, c = x.shape[:2]
    o, cg, kh, kw = w.shape
    (ho, wo), k = out_size, cg * kh * kw
    wq, one_by_one, compact = _column_layout(out_size, (kh, kw), stride, padding)
    wmat = w.reshape(groups, o // groups, k)  # (G, O_g, C_g*kH*kW)
    # The bias rides in the GEMM: a row of ones under the columns, the bias as its weight
    # (one more of K rows instead of a pass over the whole output).
    fold = b is not None and groups == 1 and not (one_by_one or compact)
    if fold:
        wmat = np.concatenate([wmat, b.reshape(1, o, 1).astype(wmat.dtype)], axis=2)  # (1, C_out, K+1)
    y = np.empty((n, groups, o // groups, ho * wq), dtype=np.result_type(x, w))  # (N, G, O_g, H_out*Wq)
    keep = keep_columns and not one_by_one
    rows = groups * k + fold  # column rows of one image: C*kH*kW, + 1 for the bias's row of ones
    saved = np.empty((n, rows, ho * wq), dtype=x.dtype) if keep else None  # (N, rows, H_out*Wq)
    step = max(1, _COLS_CHUNK_BYTES // (c * kh * kw * ho * wq * x.itemsize))
    for n0 in range(0, n, step):
        xc = x[n0 : n0 + step]
        m = len(xc)
        if keep and compact:  # the compact columns (Wq = W_out), into the saved buffer
            cols = saved[n0 : n0 + m]
            im2col(xc, (kh, kw), stride, padding, out=cols.reshape(m, c, kh, kw, ho, wo))
        elif keep or fold:
            cols = saved[n0 : n0 + m] if keep else np.empty((m, rows, ho * wq), dtype=x.dtype)  # (m, rows, L)
            im2col_phases(xc, (kh, kw), stride, padding, out=cols[:, : groups * k].reshape(m, c, kh, kw, ho * wq))
            if fold:
                cols[:, -1] = 1
        elif compact:
            cols = im2col(xc, (kh, kw), stride, padding)  # (m, C, kH, kW, H_out, W_out)
        else:
            cols, _ = im2col_phases(xc, (kh, kw), stride, padding)  # (m, C, kH, kW, H_out*Wq)
        cols = cols.reshape(m, groups, -1, ho * wq)  # (m, G, C_g*kH*kW (+1), H_out*Wq)
        out = y[n0 : n0 + step]
        np.matmul(wmat, cols, out=out)
        if b is not None and not fold:
            out += b.reshape(1, groups, o // groups, 1)
        if relu:
            np.maximum(out, 0, out=out)
    y = y.reshape(n, o, ho, wq)  # (N, C_out, H_out, Wq)
    return y[..., :wo], (SavedColumns(saved, groups, fold, (ho, wo), wq) if keep else None)  # drop the wrap-around columns


def _conv_transpose2d_phases(y, w, b, stride, padding, groups, out_size):
    """:func:`conv_transpose2d` on NumPy through :func:`~zfnet.ops.im2col.col2im_phases`.

    The signal is laid out with rows of ``Wq`` values whose wrap-around columns are
    zero, multiplied by the transposed filters, and its columns added back phase by
    phase: the exact adjoint of :func:`_conv2d_phases`.  Like the forward, it runs on
    chunks of images whose columns take about ``_COLS_CHUNK_BYTES``, so that the GEMM
    writes columns that col2im reads back while they are still in cache (ZFNet's conv2
    input gradient at batch 32 would otherwise build 220 MB of columns at once).
    """
    n, o, hi, wi = y.shape
    _, cg, kh, kw = w.shape
    c, k = cg * groups, cg * kh * kw
    _, wq = phase_geometry((hi, wi), (kh, kw), stride)
    if (kh, kw, *stride, *padding) == (1, 1, 1, 1, 0, 0):
        wq = wi
    wt = w.reshape(groups, o // groups, k).transpose(0, 2, 1)  # (G, C_g*kH*kW, O_g): a view, BLAS transposes
    x = np.empty((n, c) + tuple(out_size), dtype=np.result_type(y, w))  # (N, C_in, H, W)
    step = max(1, _COLS_CHUNK_BYTES // (c * kh * kw * hi * wq * y.itemsize))
    for n0 in range(0, n, step):
        yc = y[n0 : n0 + step]
        m = len(yc)
        if wq > wi:
            ypad = np.zeros((m, o, hi, wq), dtype=y.dtype)  # (m, C_out, H_in, Wq): wrap-around columns zero
            ypad[..., :wi] = yc
            yc = ypad
        cols = np.matmul(wt, yc.reshape(m, groups, o // groups, hi * wq))  # (m, G, C_g*kH*kW, H_in*Wq)
        cols = cols.reshape(m, c, kh, kw, hi * wq)  # (m, C_in, kH, kW, H_in*Wq)
        x[n0 : n0 + m] = col2im_phases(cols, out_size, (kh, kw), stride, padding, wq)
    if b is not None:
        x = x + b.reshape(1, c, 1, 1)
    return x

_WGRAD_CHUNK_BYTES = 32 << 20  # columns per GEMM of the weight gradient: about this many bytes


def _conv2d_weight_grad_phases(x, dy, w_shape, stride, padding, groups, out_size):
    """:func:`conv2d_weight_grad` on NumPy: one long GEMM per chunk of images and group.

    ``dw_g = sum_chunks dY_g (O_g, m*L) @ X_g (m*L, C_g*kH*kW)``: the contraction runs
    over the images of a chunk *and* their output positions at once (``L = H_out*Wq``
    positions of the flat-shift layout, whose wrap-around columns meet zeros in
    ``dY``), instead of one short GEMM per image (169 positions for a 13x13 map) plus
    a sum over the batch.  The columns are those of the forward pass
    (:func:`~zfnet.ops.im2col.im2col_phases`, or the compact :func:`im2col` on small
    maps, as :func:`_conv2d_phases` chooses), written chunk by chunk straight into a
    channel-major buffer that puts images next to positions.
    """
    n, c = x.shape[:2]
    o, cg, kh, kw = w_shape
    (ho, wo), k, og = out_size, cg * kh * kw, o // groups
    wq, one_by_one, compact = _column_layout(out_size, (kh, kw), stride, padding)
    length = ho * wq
    dw = np.zeros((groups, og, k), dtype=np.result_type(x, dy))  # (G, O_g, C_g*kH*kW)
    step = max(1, _WGRAD_CHUNK_BYTES // (c * kh * kw * length * x.itemsize))
    for n0 in range(0, n, step):
        xc = x[n0 : n0 + step]
        m = len(xc)
        # The columns go straight into the GEMM's layout, channel-major (C, kH, kW, m, L):
        # each group's (C_g*kH*kW, m*L) operand is then a plain reshape, not a transposed copy.
        cbuf = np.empty((c, kh, kw, m, length), dtype=x.dtype)  # (C, kH, kW, m, L)
        if compact:
            im2col(xc, (kh, kw), stride, padding,
                   out=cbuf.reshape(c, kh, kw, m, ho, wo).transpose(3, 0, 1, 2, 4, 5))  # written as (m, C, kH, kW, H_out, W_out)
        else:
            im2col_phases(xc, (kh, kw), stride, padding, out=cbuf.transpose(3, 0, 1, 2, 4))  # as (m, C, kH, kW, L)
        # The output gradient likewise as (C_out, m, H_out, Wq), wrap-around columns zero: one copy.
        dbuf = (np.zeros if wq > wo else np.empty)((o, m, ho, wq), dtype=dy.dtype)
        dbuf[..., :wo] = dy[n0 : n0 + step].transpose(1, 0, 2, 3)
        a_all = dbuf.reshape(groups, og, m * length)  # (G, O_g, m*L)
        b_all = cbuf.reshape(groups, k, m * length)  # (G, C_g*kH*kW, m*L)
        for g in range(groups):
            dw[g] += a_all[g] @ b_all[g].T  # (O_g, C_g*kH*kW)
    return dw.reshape(o, cg, kh, kw)


def conv2d_weight_grad(x, dy, w_shape, stride=1, padding=0, groups=1):
    """Gradient of a loss with respect to the filters of :func:`conv2d`.

    Differentiating ``y[n,o,i,j] = sum_{c,u,v} w[o,c,u,v] x_pad[n, g C_g + c, i s + u, j s + v]``
    gives, for ``o`` in group ``g``,

    .. math::

        \\frac{\\partial L}{\\partial w[o, c, u, v]} = \\sum_{n, i, j}
            \\frac{\\partial L}{\\partial y[n, o, i, j]}\\, x_{pad}[n, g C_g + c, i s + u, j s + v]

    which is one GEMM per group between the output gradient ``(O_g, N*H_out*W_out)``
    and the transposed im2col columns ``(N*H_out*W_out, C_g*kH*kW)``: the same
    columns the forward multiplied by the filters.

    Parameters
    ----------
    x : array, shape (N, C_in, H, W)
        The forward layer's input.
    dy : array, shape (N, C_out, H_out, W_out)
        Gradient of the loss with respect to the (pre-activation) output.
    w_shape : (C_out, C_in/groups, kH, kW)
        Shape of the forward weight.
    stride, padding, groups :
        As in the forward :func:`conv2d`.

    Returns
    -------
    dw : array, shape ``w_shape``

    Paired with
    -----------
    :func:`conv2d` (forward), :func:`conv_transpose2d` (its input gradient,
    ``dL/dx = conv_transpose2d(dy, w, output_size=x.shape)``) and
    :func:`conv2d_bias_grad`.

    References
    ----------
    Zeiler & Fergus (2014), section 3 (training by back-propagation).
    """
    xp = get_array_module(x, dy)
    if x.ndim != 4 or dy.ndim != 4 or len(tuple(w_shape)) != 4:
        raise ShapeError(
            f"conv2d_weight_grad: x and dy must be 4-D and w_shape 4 numbers, got {tuple(x.shape)}, "
            f"{tuple(dy.shape)}, {tuple(w_shape)}"
        )
    o, cg, kh, kw = (int(v) for v in w_shape)
    if groups < 1 or o % groups:
        raise ShapeError(f"conv2d_weight_grad: C_out={o} is not divisible by groups={groups}")
    n, c, h, wd = x.shape
    if cg * groups != c:
        raise ShapeError(
            f"conv2d_weight_grad: input has {c} channels but weight shape {tuple(w_shape)} "
            f"with groups={groups} expects {cg * groups}"
        )
    stride, padding = pair(stride, "stride"), pair(padding, "padding")
    ho = conv_out_size(h, kh, stride[0], padding[0])
    wo = conv_out_size(wd, kw, stride[1], padding[1])
    if tuple(dy.shape) != (n, o, ho, wo):
        raise ShapeError(f"conv2d_weight_grad: dy must have shape {(n, o, ho, wo)}, got {tuple(dy.shape)}")
    if xp is np and x.dtype.kind == "f" and dy.dtype == x.dtype:
        if winograd_applies(cg, o // groups, (kh, kw), stride, padding, (ho, wo), x.dtype):
            return winograd_weight_grad(x, dy, (o, cg, kh, kw), padding, groups)
        if kernel_rows_applies(cg, (kh, kw), (ho, wo), x.dtype):
            return conv2d_rows_weight_grad(x, dy, (o, cg, kh, kw), stride, padding, groups)[0]
        return _conv2d_weight_grad_phases(x, dy, (o, cg, kh, kw), stride, padding, groups, (ho, wo))
    return _conv2d_weight_grad_im2col(x, dy, (o, cg, kh, kw), stride, padding, groups, (ho, wo))


def _conv2d_weight_grad_im2col(x, dy, w_shape, stride, padding, groups, out_size):
    """The readable path of :func:`conv2d_weight_grad`: one GEMM per image and group
    against the im2col columns, summed over the batch.

    The reference the fast path is tested against (``tests/test_fast_paths.py``);
    arguments already checked, ``stride``/``padding`` pairs, ``out_size = (H_out, W_out)``.
    """
    xp = get_array_module(x, dy)
    n = x.shape[0]
    o, cg, kh, kw = w_shape
    ho, wo = out_size
    cols = im2col(x, (kh, kw), stride, padding)  # (N, C, kH, kW, H_out, W_out)
    cols = cols.reshape(n, groups, cg * kh * kw, ho * wo)  # (N, G, C_g*kH*kW, H_out*W_out)
    dyr = dy.reshape(n, groups, o // groups, ho * wo)  # (N, G, O_g, H_out*W_out)
    # One GEMM per image and group (batched), contracting the output positions, then
    # a sum over the batch.  (A single tensordot over (N, positions) needs a transposed
    # copy of the columns and was 40x slower for conv1's long, thin matrices.)
    dw = xp.matmul(dyr, cols.transpose(0, 1, 3, 2))  # (N, G, O_g, C_g*kH*kW)
    dw = dw.sum(axis=0)  # (G, O_g, C_g*kH*kW)
    return dw.reshape(o, cg, kh, kw)  # (C_out, C_in/groups, kH, kW)


class SavedColumns(NamedTuple):
    """The columns a NumPy :func:`conv2d` multiplied (:func:`conv2d_relu`).

    ``cols[n, r, oh*Wq + ow]``, shape ``(N, G*C_g*kH*kW (+1), H_out*Wq)``: the
    flat-shift columns of :func:`~zfnet.ops.im2col.im2col_phases` (``Wq - W_out``
    wrap-around columns per output row), or on small maps the compact columns of
    :func:`~zfnet.ops.im2col.im2col` (``Wq = W_out``), group by group, and when
    ``ones_row`` a last row of ones that carried the bias (then its gradient comes
    with the filters').
    """

    cols: np.ndarray
    groups: int
    ones_row: bool
    out_size: tuple
    wq: int


class SavedInput(NamedTuple):
    """The input of a kernel-rows :func:`conv2d` (:func:`conv2d_relu`), kept by reference.

    Its columns (:func:`~zfnet.ops.kernel_rows.row_columns`) are one image's at a time,
    cheap to build again in cache: the filter gradient does that, image by image
    (:func:`~zfnet.ops.kernel_rows.conv2d_rows_weight_grad`).
    """

    x: np.ndarray
    stride: tuple
    padding: tuple
    groups: int


class SavedTiles(NamedTuple):
    """The input tiles a Winograd :func:`conv2d` transformed (:func:`conv2d_relu`).

    ``tiles`` is ``(16, C_in, tH, tW, N)`` (:func:`~zfnet.ops.winograd.input_transform`
    of the layer input ``x``, kept by reference), for
    :func:`~zfnet.ops.winograd.winograd_weight_grad`; ``u`` the transformed filters
    ``(16, C_out, C_in/groups)``, for :func:`conv2d_input_grad`.
    """

    x: np.ndarray
    tiles: np.ndarray
    padding: tuple
    groups: int
    u: np.ndarray


def conv2d_grads_from_columns(saved, dy, w_shape, relu_output=None):
    """Filter and bias gradients of a :func:`conv2d` from what :func:`conv2d_relu` saved.

    For each image ``n`` and group ``g`` the filter gradient is one GEMM,

    .. math::

        dw_g \\mathrel{+}= dY_g[n] \\; (O_g, L) \\;\\times\\; X_g[n]^T \\; (L, C_g k_H k_W)

    over the ``L = H_out*Wq`` positions of the saved layout (flat-shift, whose
    wrap-around positions meet zeros in ``dY``, or compact with ``Wq = W_out``), the
    same sum as :func:`conv2d_weight_grad`.
    With a row of ones under the columns, the last column of the product is
    ``db[o] = sum_{n,i,j} dy[n,o,i,j]``.

    Winograd layers (:class:`SavedTiles`) take
    :func:`~zfnet.ops.winograd.winograd_weight_grad` on the saved tiles, kernel-rows
    layers (:class:`SavedInput`) :func:`~zfnet.ops.kernel_rows.conv2d_rows_weight_grad`
    on the saved input; both leave the bias gradient to :func:`conv2d_bias_grad`.

    Parameters
    ----------
    saved : SavedColumns, SavedTiles or SavedInput
        From :func:`conv2d_relu` (``keep_columns=True``) on this layer's forward pass.
    dy : array, shape (N, C_out, H_out, W_out)
        Gradient with respect to the output (after the ReLU if ``relu_output`` is given).
    w_shape : (C_out, C_in/groups, kH, kW)
    relu_output : array, shape like ``dy``, optional
        The forward output of a ReLU that followed the convolution: the gradient is
        then taken through it first, ``dz = dy * [relu_output > 0]`` (for saved
        columns in the same pass that lays ``dz`` out with the wrap-around columns; for
        a saved input image by image).

    Returns
    -------
    dw : array, shape ``w_shape``
    db : array, shape (C_out,), or None when the bias had no row (use :func:`conv2d_bias_grad`)
    dz : array, shape (N, C_out, H_out, W_out)
        The gradient at the convolution's output (``dy`` itself without ``relu_output``).

    Paired with
    -----------
    :func:`conv2d_relu`.
    """
    if isinstance(saved, SavedTiles):
        dz = dy if relu_output is None else relu_backward(dy, relu_output)
        dw = winograd_weight_grad(saved.x, dz, w_shape, saved.padding, saved.groups, tiles=saved.tiles)
        return dw, None, dz
    if isinstance(saved, SavedInput):
        x = saved.x
        o, cg = int(w_shape[0]), int(w_shape[1])
        if cg * saved.groups != x.shape[1] or o % saved.groups:
            raise ShapeError(f"conv2d_grads_from_columns: filters {tuple(w_shape)} with groups={saved.groups} do not "
                             f"fit the saved input {tuple(x.shape)}")
        ho = conv_out_size(x.shape[2], int(w_shape[2]), saved.stride[0], saved.padding[0])
        wo = conv_out_size(x.shape[3], int(w_shape[3]), saved.stride[1], saved.padding[1])
        if tuple(dy.shape) != (x.shape[0], o, ho, wo):
            raise ShapeError(f"conv2d_grads_from_columns: dy of shape {tuple(dy.shape)} does not match the saved "
                             f"input {tuple(x.shape)} and filters {tuple(w_shape)}: expected {(x.shape[0], o, ho, wo)}")
        dw, dz = conv2d_rows_weight_grad(x, dy, w_shape, saved.stride, saved.padding, saved.groups,
                                         relu_output=relu_output)
        return dw, None, dz
    cols, groups, ones_row, (ho, wo), wq = saved
    o, cg, kh, kw = (int(v) for v in w_shape)
    n = cols.shape[0]
    k = cg * kh * kw
    if tuple(dy.shape) != (n, o, ho, wo) or cols.shape[1] != groups * k + ones_row:
        raise ShapeError(f"conv2d_grads_from_columns: dy of shape {tuple(dy.shape)} and filters {tuple(w_shape)} "
                         f"do not match the saved columns {tuple(cols.shape)} for output {(n, o, ho, wo)}")
    dpad = np.empty((n, o, ho, wq), dtype=np.result_type(dy, cols))  # (N, C_out, H_out, Wq)
    og = o // groups
    kr = k + 1 if ones_row else k  # with groups > 1 there is no row of ones
    dw = np.zeros((groups, og, kr), dtype=dpad.dtype)  # (G, O_g, C_g*kH*kW (+1))
    part = np.empty_like(dw)
    a = dpad.reshape(n, groups, og, ho * wq)  # (N, G, O_g, L)
    b = cols.reshape(n, groups, kr, ho * wq)  # (N, G, C_g*kH*kW (+1), L)
    for i in range(n):  # image by image: dz laid out, then multiplied while it is in cache
        dpad[i, ..., wo:] = 0  # wrap-around positions
        if relu_output is None:
            dpad[i, ..., :wo] = dy[i]
        else:
            np.multiply(dy[i], relu_output[i] > 0, out=dpad[i, ..., :wo])
        np.matmul(a[i], b[i].transpose(0, 2, 1), out=part)  # (O_g, L) x (L, K) with L in the thousands
        dw += part
    db = dw[0, :, k].copy() if ones_row else None
    return dw[:, :, :k].reshape(o, cg, kh, kw), db, dpad[..., :wo]


def conv2d_input_grad(dz, w, stride, padding, groups, input_size, saved=None):
    """``dL/dx`` of a :func:`conv2d` layer: :func:`conv_transpose2d` of ``dz``, to ``input_size``.

    With the :class:`SavedTiles` of a Winograd layer's forward pass the flipped filters'
    transform is taken from the forward's (:func:`~zfnet.ops.winograd.winograd_input_grad`
    with ``u=``) instead of computed again; otherwise the same call as
    ``conv_transpose2d(dz, w, None, stride, padding, groups, output_size=input_size)``.
    """
    if isinstance(saved, SavedTiles) and isinstance(dz, np.ndarray) and dz.dtype == saved.u.dtype:
        o, cg = w.shape[:2]
        flipped = (2 - saved.padding[0], 2 - saved.padding[1])
        size = tuple(int(v) for v in tuple(input_size)[-2:])
        if winograd_applies(o // groups, cg, (3, 3), (1, 1), flipped, size, dz.dtype):  # as conv_transpose2d decides
            return winograd_input_grad(dz, w, saved.padding, saved.groups, u=saved.u)
    return conv_transpose2d(dz, w, None, stride, padding, groups, output_size=input_size)


def conv2d_bias_grad(dy):
    """Gradient with respect to the bias of :func:`conv2d`: ``db[o] = sum_{n,i,j} dy[n,o,i,j]``.

    Parameters
    ----------
    dy : array, shape (N, C_out, H_out, W_out)

    Returns
    -------
    db : array, shape (C_out,)

    Paired with
    -----------
    :func:`conv2d`, :func:`conv2d_weight_grad`.
    """
    if dy.ndim != 4:
        raise ShapeError(f"conv2d_bias_grad: dy must be 4-D (N, C_out, H_out, W_out), got shape {tuple(dy.shape)}")
    return dy.sum(axis=(0, 2, 3))
