"""Winograd's minimal filtering F(2x2, 3x3): a 3x3 stride-1 convolution in fewer multiplications.

A 3x3 convolution computes each 2x2 block of outputs from a 4x4 tile of input.  Done
directly that costs 2*2*9 = 36 multiplications per channel pair; Winograd (Lavin &
Gray 2016) computes the same block with 4*4 = 16, by moving the tile ``d`` (4x4) and
the filter ``g`` (3x3) into a space where the convolution is an element-wise product:

.. math::

    Y = A^T \\left[ (G g G^T) \\odot (B^T d B) \\right] A

    B^T = \\begin{pmatrix} 1 & 0 & -1 & 0 \\\\ 0 & 1 & 1 & 0 \\\\ 0 & -1 & 1 & 0 \\\\ 0 & 1 & 0 & -1 \\end{pmatrix},\\quad
    G = \\begin{pmatrix} 1 & 0 & 0 \\\\ \\tfrac12 & \\tfrac12 & \\tfrac12 \\\\ \\tfrac12 & -\\tfrac12 & \\tfrac12 \\\\ 0 & 0 & 1 \\end{pmatrix},\\quad
    A^T = \\begin{pmatrix} 1 & 1 & 1 & 0 \\\\ 0 & 1 & -1 & -1 \\end{pmatrix}

Summed over input channels, the element-wise product becomes 16 independent matrix
products, one per position ``(xi, nu)`` of the 4x4 transformed tile:

.. math::

    M_{\\xi\\nu}[o, t] = \\sum_c U_{\\xi\\nu}[o, c]\\, V_{\\xi\\nu}[c, t],\\qquad
    U = G g G^T,\\quad V = B^T d B

with ``t`` running over every tile of every image.  So a layer costs 16 GEMMs of
``(C_out, C_in) @ (C_in, tiles)`` instead of one of ``(C_out, 9 C_in) @ (9 C_in,
positions)``: 16/36 = 0.44 of the multiplications (a little more where the map's
side is odd and the last tile half falls outside), plus the transforms, which only
add and subtract (and halve, for ``G``).

The gradients follow from the chain rule through the same linear maps, and each is
again 16 GEMMs:

* filters: ``dM = A dY A^T`` per tile, ``dU_xinu = dM_xinu @ V_xinu^T``, ``dg = G^T dU G``;
* input: the adjoint of a stride-1 3x3 convolution with padding ``p`` is the
  convolution of ``dY`` with the flipped, transposed filters and padding ``2 - p``,
  which is again F(2x2, 3x3).

In float32 the transforms' entries (0, +-1, +-1/2) add rounding of the same order as
the direct sum's; ``tests/test_winograd.py`` holds the tolerances.

Shapes: NCHW inputs, OIHW filters, as everywhere in :mod:`zfnet.ops`.  Tiles are laid
out ``(16, C, tiles_h, tiles_w, N)``: position in the transformed tile first, so that
each of the 16 GEMMs reads one contiguous ``(C, tiles*N)`` matrix, and the image
innermost, so that the transforms' element-wise passes run over long rows.

References
----------
Lavin & Gray (2016), "Fast Algorithms for Convolutional Neural Networks", CVPR.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import ShapeError
from ._parallel import parallel_pieces
from ._shape import conv_out_size

__all__ = ["winograd_conv2d", "winograd_weight_grad", "winograd_input_grad", "winograd_applies"]

#: Filter transform ``G`` (4x3): ``U = G g G^T``.
G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
#: Input transform ``B^T`` (4x4): ``V = B^T d B``.
BT = np.array([[1.0, 0.0, -1.0, 0.0], [0.0, 1.0, 1.0, 0.0], [0.0, -1.0, 1.0, 0.0], [0.0, 1.0, 0.0, -1.0]])
#: Output transform ``A^T`` (2x4): ``Y = A^T M A``.
AT = np.array([[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]])

_PIECE_BYTES = 1 << 20  # channels per transform piece: about this many bytes of input


def winograd_applies(in_channels, out_channels, kernel_size, stride, padding, out_size, dtype) -> bool:
    """Whether a NumPy convolution should take the Winograd path (``in/out_channels`` per group).

    3x3 filters, stride 1, padding 0-2, float32/float64, an output of at least 4x4
    (so that tiles are not mostly padding) and channels enough that the 16 GEMMs,
    not the transforms, dominate: the transforms cost in proportion to
    ``C_in + C_out`` and the GEMMs save in proportion to ``C_in * C_out``, so the test
    is ``C_in C_out / (C_in + C_out) >= 48``.  Measured at batch 32, 2 threads
    (forward / filter gradient / input gradient, against the im2col path): ZFNet's
    conv4 (384 -> 384 on 13x13, score 192) 85/72/89 -> 57/54/59 ms, AlexNet's grouped
    conv5 (192 -> 128 per group, 77) 49/42/43 -> 32/32/32 ms, 96 -> 96 on 13x13 (48)
    11/8/10 -> 8/8/9 ms, 64 -> 64 on 27x27 (32) about even, 32 -> 32 on 55x55 (16)
    slower.  Set the environment variable ``ZFNET_WINOGRAD=0`` (or ``false``, ``off``,
    ``no``) to always take the im2col path.
    """
    if os.environ.get("ZFNET_WINOGRAD", "").strip().lower() in ("0", "false", "off", "no"):
        return False
    if np.dtype(dtype) not in (np.float32, np.float64):
        return False
    if tuple(kernel_size) != (3, 3) or tuple(stride) != (1, 1) or not all(0 <= p <= 2 for p in padding):
        return False
    if min(out_size) < 4:
        return False
    return in_channels * out_channels >= 48 * (in_channels + out_channels)


def _tiles(out_size):
    """Tiles per axis that cover an output of ``out_size``: ``ceil(H_out / 2)``, ``ceil(W_out / 2)``."""
    return (out_size[0] + 1) // 2, (out_size[1] + 1) // 2


def filter_transform(w):
    """``U = G g G^T`` for every filter: ``(C_out, C_g, 3, 3) -> (16, C_out, C_g)``.

    Written out row by row (``G``'s rows are ``g0``, ``(g0 + g1 + g2)/2``,
    ``(g0 - g1 + g2)/2``, ``g2``), first over the filter's rows, then its columns.
    """
    o, cg = w.shape[:2]
    taps = np.ascontiguousarray(w.reshape(o * cg, 9).T).reshape(3, 3, o * cg)  # tap-major: contiguous rows
    u = np.empty((4, 4, o * cg), dtype=w.dtype)
    for k, r in enumerate(_g_rows(taps)):  # G g: rows k of (3, C_out*C_g)
        for l, col in enumerate(_g_rows(r)):  # (G g) G^T
            u[k, l] = col
    return u.reshape(16, o, cg)


def _g_rows(g):
    """``G @ g`` along the first axis of ``g`` (3 rows in, 4 out)."""
    half = (g[0] + g[2]) * 0.5
    return g[0], half + g[1] * 0.5, half - g[1] * 0.5, g[2]


def _gt_rows(d):
    """``G^T @ d`` along the first axis of ``d`` (4 rows in, 3 out)."""
    mid = (d[1] + d[2]) * 0.5
    return d[0] + mid, (d[1] - d[2]) * 0.5, mid + d[3]


def input_transform(x, padding, out_size):
    """``V = B^T d B`` for every 4x4 tile of the zero-padded input.

    Tile ``(ty, tx)`` is ``x_pad[..., 2 ty : 2 ty + 4, 2 tx : 2 tx + 4]``; the padded
    map is extended with zeros on the bottom/right where the last tile needs it.
    Channels are taken a piece at a time, copied image-innermost ``(c, Hp, Wp, N)``:
    then every add and subtract runs over rows of ``N`` (or more) contiguous values
    instead of a tile's few (``docs/speed.md``).

    Parameters
    ----------
    x : array, shape (N, C, H, W)
    padding : (pH, pW)
    out_size : (H_out, W_out) of the convolution, ``H + 2 pH - 2``

    Returns
    -------
    v : array, shape (16, C, tH, tW, N)
        ``v[4 k + l, c, ty, tx, n] = (B^T d B)[k, l]`` of tile ``(ty, tx)`` of image ``n``.

    Paired with
    -----------
    :func:`output_transform` (tiles back to maps) in :func:`winograd_conv2d`.
    """
    n, c, h, w = x.shape
    (ph, pw), (th, tw) = padding, _tiles(out_size)
    hp, wp = 2 * th + 2, 2 * tw + 2
    v = np.empty((16, c, th, tw, n), dtype=x.dtype)

    def piece(c0, c1):  # channels [c0, c1)
        xpad = np.zeros((c1 - c0, hp, wp, n), dtype=x.dtype)  # (c, Hp, Wp, N)
        xpad[:, ph : ph + h, pw : pw + w] = x[:, c0:c1].transpose(1, 2, 3, 0)
        q = [xpad[:, :, j : j + 2 * tw : 2] for j in range(4)]  # tile column j: (c, Hp, tW, N)
        cols = (q[0] - q[2], q[1] + q[2], q[2] - q[1], q[1] - q[3])  # d B, column l: (c, Hp, tW, N)
        for l, t in enumerate(cols):
            r = [t[:, i : i + 2 * th : 2] for i in range(4)]  # tile row i: (c, tH, tW, N)
            np.subtract(r[0], r[2], out=v[l, c0:c1])  # B^T (d B)
            np.add(r[1], r[2], out=v[4 + l, c0:c1])
            np.subtract(r[2], r[1], out=v[8 + l, c0:c1])
            np.subtract(r[1], r[3], out=v[12 + l, c0:c1])

    parallel_pieces(c, n * hp * wp * x.itemsize, piece, _PIECE_BYTES)
    return v


def output_transform(m, out_size, bias=None, relu=False):
    """``Y = A^T M A`` for every tile, assembled into maps: the inverse of the tiling.

    Parameters
    ----------
    m : array, shape (16, C_out, tH, tW, N)
    out_size : (H_out, W_out)
    bias : array, shape (C_out,), optional
    relu : bool
        Rectify the result, ``max(Y + b, 0)``, while each piece is in cache.

    Returns
    -------
    y : array, shape (N, C_out, H_out, W_out), C-contiguous

    Paired with
    -----------
    :func:`output_transform_adjoint` (its adjoint, for the filter gradient).
    """
    _, o, th, tw, n = m.shape
    ho, wo = out_size
    y = np.empty((n, o, ho, wo), dtype=m.dtype)

    def piece(o0, o1):  # output channels [o0, o1)
        mm = m[:, o0:o1]  # (16, c, tH, tW, N)
        # A^T M: row a of the 2x4 half-transformed tile, s[a][l] (c, tH, tW, N)
        s0 = [mm[l] + mm[4 + l] + mm[8 + l] for l in range(4)]
        s1 = [mm[4 + l] - mm[8 + l] - mm[12 + l] for l in range(4)]
        tiles = np.empty((o1 - o0, 2 * th, 2 * tw, n), dtype=m.dtype)  # image-innermost, as m
        for a, s in enumerate((s0, s1)):  # (A^T M) A
            np.add(s[0] + s[1], s[2], out=tiles[:, a::2, 0::2])
            np.subtract(s[1] - s[2], s[3], out=tiles[:, a::2, 1::2])
        if bias is not None:
            tiles += bias[o0:o1].reshape(-1, 1, 1, 1).astype(m.dtype)
        if relu:
            np.maximum(tiles, 0, out=tiles)
        y[:, o0:o1] = tiles[:, :ho, :wo].transpose(3, 0, 1, 2)  # back to (N, c, H_out, W_out)

    parallel_pieces(o, 16 * n * th * tw * m.itemsize, piece, _PIECE_BYTES)
    return y


def output_transform_adjoint(dy, out_size):
    """``dM = A dY A^T`` for every tile: the adjoint of :func:`output_transform`.

    Parameters
    ----------
    dy : array, shape (N, C_out, H_out, W_out)
    out_size : (H_out, W_out)

    Returns
    -------
    dm : array, shape (16, C_out, tH, tW, N)

    Paired with
    -----------
    :func:`output_transform`.
    """
    n, o = dy.shape[:2]
    th, tw = _tiles(out_size)
    ho, wo = out_size
    dm = np.empty((16, o, th, tw, n), dtype=dy.dtype)

    def piece(o0, o1):  # output channels [o0, o1)
        pad = np.zeros((o1 - o0, 2 * th, 2 * tw, n), dtype=dy.dtype)  # outputs past the map are 0
        pad[:, :ho, :wo] = dy[:, o0:o1].transpose(1, 2, 3, 0)
        col0, col1 = pad[:, :, 0::2], pad[:, :, 1::2]  # column b of every tile: (c, 2 tH, tW, N)
        cols = (col0, col0 + col1, col0 - col1, -col1)  # dY A^T (A has rows 1 0 / 1 1 / 1 -1 / 0 -1)
        for l, t in enumerate(cols):
            row0, row1 = t[:, 0::2], t[:, 1::2]  # row a of every tile: (c, tH, tW, N)
            dm[l, o0:o1] = row0  # A (dY A^T)
            np.add(row0, row1, out=dm[4 + l, o0:o1])
            np.subtract(row0, row1, out=dm[8 + l, o0:o1])
            np.negative(row1, out=dm[12 + l, o0:o1])

    parallel_pieces(o, 4 * n * th * tw * dy.itemsize, piece, _PIECE_BYTES)
    return dm


def _check(x_shape, w_shape, groups, what):
    if len(x_shape) != 4 or len(w_shape) != 4:
        raise ShapeError(f"{what}: input and weight must be 4-D, got {tuple(x_shape)} and {tuple(w_shape)}")
    o, cg, kh, kw = w_shape
    if (kh, kw) != (3, 3):
        raise ShapeError(f"{what}: F(2x2, 3x3) needs 3x3 filters, got {kh}x{kw}")
    if groups < 1 or o % groups or cg * groups != x_shape[1]:
        raise ShapeError(f"{what}: weight {tuple(w_shape)} with groups={groups} does not fit "
                         f"an input of {x_shape[1]} channels")


def winograd_conv2d(x, w, b=None, padding=(1, 1), groups=1, relu=False, keep_tiles=False, u=None):
    """3x3 stride-1 :func:`~zfnet.ops.conv2d` by F(2x2, 3x3): the same result, 0.44x the multiplications.

    ``y[n, o, i, j] = b[o] + sum_{c,u,v} w[o, c, u, v] x_pad[n, g C_g + c, i + u, j + v]``.

    Parameters
    ----------
    x : ndarray, shape (N, C_in, H, W)
    w : ndarray, shape (C_out, C_in/groups, 3, 3)
    b : ndarray, shape (C_out,), optional
    padding : (pH, pW), each 0, 1 or 2
    groups : int
    relu : bool
        Return ``max(y, 0)`` instead (rectified in the output transform).
    keep_tiles : bool
        Return ``(y, v, u)`` with ``v`` the transformed input tiles (``(16, C_in, tH,
        tW, N)``, :func:`input_transform`), which :func:`winograd_weight_grad` takes
        instead of transforming the input again, and ``u`` the transformed filters
        (:func:`filter_transform`), from which :func:`winograd_input_grad` gets its own.
    u : ndarray, shape (16, C_out, C_in/groups), optional
        ``filter_transform(w)`` if already computed (``w`` then only gives the shape).

    Returns
    -------
    y : ndarray, shape (N, C_out, H + 2 pH - 2, W + 2 pW - 2), C-contiguous

    Paired with
    -----------
    :func:`winograd_input_grad` (its adjoint) and :func:`winograd_weight_grad`.

    Notes
    -----
    An infinite input gives NaN where the direct sum gives +-inf: the transforms
    subtract it from itself.
    """
    _check(x.shape, w.shape, groups, "winograd_conv2d")
    n, c, h, wd = x.shape
    o, cg = w.shape[:2]
    out_size = (conv_out_size(h, 3, 1, padding[0]), conv_out_size(wd, 3, 1, padding[1]))
    th, tw = _tiles(out_size)
    dtype = np.result_type(x, w)
    v = input_transform(x.astype(dtype, copy=False), padding, out_size)  # (16, C, tH, tW, N)
    if u is None:
        u = filter_transform(w.astype(dtype, copy=False))  # (16, C_out, C_g)
    elif tuple(u.shape) != (16, o, cg):
        raise ShapeError(f"winograd_conv2d: transformed filters of shape {tuple(u.shape)}, expected {(16, o, cg)}")
    og, t = o // groups, n * th * tw
    vg = v.reshape(16, groups, cg, t)  # (16, G, C_g, tiles)
    m = np.empty((16, o, t), dtype=dtype)  # (16, C_out, tiles)
    for g in range(groups):  # 16 GEMMs per group: (O_g, C_g) @ (C_g, tiles)
        np.matmul(u[:, g * og : (g + 1) * og], vg[:, g], out=m[:, g * og : (g + 1) * og])
    y = output_transform(m.reshape(16, o, th, tw, n), out_size, b, relu)
    return (y, v, u) if keep_tiles else y


def winograd_weight_grad(x, dy, w_shape, padding=(1, 1), groups=1, tiles=None):
    """Filter gradient of :func:`winograd_conv2d`: ``dg = G^T (sum_t dM_t V_t^T) G``.

    The same quantity as :func:`~zfnet.ops.conv2d_weight_grad`
    (``dw[o, c, u, v] = sum_{n,i,j} dy[n, o, i, j] x_pad[n, c, i + u, j + v]``),
    obtained by the chain rule through ``Y = A^T [U ⊙ V] A`` and ``U = G g G^T``.

    Parameters
    ----------
    x : ndarray, shape (N, C_in, H, W)
    dy : ndarray, shape (N, C_out, H_out, W_out)
    w_shape : (C_out, C_in/groups, 3, 3)
    tiles : ndarray, shape (16, C_in, tH, tW, N), optional
        ``x``'s transformed tiles, as ``winograd_conv2d(..., keep_tiles=True)`` returned
        them (else they are computed here).

    Returns
    -------
    dw : ndarray, shape ``w_shape``

    Paired with
    -----------
    :func:`winograd_conv2d`.
    """
    _check(x.shape, w_shape, groups, "winograd_weight_grad")
    n, c, h, wd = x.shape
    o, cg = w_shape[:2]
    out_size = (conv_out_size(h, 3, 1, padding[0]), conv_out_size(wd, 3, 1, padding[1]))
    if tuple(dy.shape) != (n, o, *out_size):
        raise ShapeError(f"winograd_weight_grad: dy must have shape {(n, o, *out_size)}, got {tuple(dy.shape)}")
    th, tw = _tiles(out_size)
    dtype = np.result_type(x, dy)
    if tiles is None:
        tiles = input_transform(x.astype(dtype, copy=False), padding, out_size)
    elif tuple(tiles.shape) != (16, c, th, tw, n):
        raise ShapeError(f"winograd_weight_grad: tiles of shape {tuple(tiles.shape)} are not those of an input "
                         f"{tuple(x.shape)} with padding {tuple(padding)}: expected {(16, c, th, tw, n)}")
    v = tiles.astype(dtype, copy=False).reshape(16, groups, cg, n * th * tw)  # (16, G, C_g, tiles)
    dm = output_transform_adjoint(dy.astype(dtype, copy=False), out_size).reshape(16, o, n * th * tw)  # (16, C_out, tiles)
    og = o // groups
    du = np.empty((16, o, cg), dtype=dtype)  # dL/dU: (16, C_out, C_g)
    for g in range(groups):  # 16 GEMMs per group: (O_g, tiles) @ (tiles, C_g)
        np.matmul(dm[:, g * og : (g + 1) * og], v[:, g].transpose(0, 2, 1), out=du[:, g * og : (g + 1) * og])
    # dg = G^T dU G: first over the tile's rows, then its columns
    du = du.reshape(4, 4, o, cg)
    dw = np.empty((o, cg, 3, 3), dtype=dtype)
    for i, r in enumerate(_gt_rows(du)):  # G^T dU: 3 of (4, C_out, C_g)
        for j, col in enumerate(_gt_rows(r)):  # (G^T dU) G
            dw[:, :, i, j] = col
    return dw


#: ``G flip(g) = P G g`` with ``P`` swapping rows 0 and 3: the flipped filter's transform
#: is the filter's, its 4x4 points permuted by ``P`` on both axes.
_FLIP = np.array([3, 1, 2, 0])
_FLIP_POINTS = (_FLIP[:, None] * 4 + _FLIP[None, :]).reshape(-1)


def winograd_input_grad(dy, w, padding=(1, 1), groups=1, u=None):
    """Input gradient of :func:`winograd_conv2d`, itself an F(2x2, 3x3) convolution.

    The adjoint of a stride-1 3x3 convolution with padding ``p`` is the convolution
    of ``dy`` with the flipped filters, input and output channels swapped within each
    group, and padding ``2 - p``: the same as
    ``conv_transpose2d(dy, w, stride=1, padding=p, groups=groups)``.

    Parameters
    ----------
    dy : ndarray, shape (N, C_out, H_out, W_out)
    w : ndarray, shape (C_out, C_in/groups, 3, 3)
        The forward's filters.
    padding : (pH, pW), each 0, 1 or 2
        The forward's padding.
    groups : int
    u : ndarray, shape (16, C_out, C_in/groups), optional
        The forward's ``filter_transform(w)`` (``winograd_conv2d(..., keep_tiles=True)``):
        the flipped filters' transform is then a permutation of it, not computed anew.

    Returns
    -------
    dx : ndarray, shape (N, C_in, H_out - 2 pH + 2, W_out - 2 pW + 2)

    Paired with
    -----------
    :func:`winograd_conv2d` (``<conv(x), dy> == <x, input_grad(dy)>``).
    """
    o, cg, kh, kw = w.shape
    if o % groups:
        raise ShapeError(f"winograd_input_grad: C_out={o} is not divisible by groups={groups}")
    og = o // groups
    flipped_padding = (2 - padding[0], 2 - padding[1])
    if u is not None:
        if tuple(u.shape) != (16, o, cg):
            raise ShapeError(f"winograd_input_grad: transformed filters of shape {tuple(u.shape)}, "
                             f"expected {(16, o, cg)}")
        # U'[xi, g C_g + c, o] = U[P xi, g O_g + o, c]: the flipped filters, C_in and C_out swapped
        ut = u[_FLIP_POINTS].reshape(16, groups, og, cg).transpose(0, 1, 3, 2).reshape(16, groups * cg, og)
        shape_only = np.broadcast_to(np.zeros((), u.dtype), (groups * cg, og, 3, 3))  # the filters' shape, no data
        return winograd_conv2d(dy, shape_only, None, flipped_padding, groups, u=ut)
    # (G, O_g, C_g, 3, 3) -> (G, C_g, O_g, 3, 3), flipped in both spatial axes
    wt = w.reshape(groups, og, cg, kh, kw).transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1]
    wt = np.ascontiguousarray(wt).reshape(groups * cg, og, kh, kw)
    return winograd_conv2d(dy, wt, None, flipped_padding, groups)
