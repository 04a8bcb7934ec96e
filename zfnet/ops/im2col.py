"""im2col / col2im: turn convolution into one matrix product, and back.

``im2col`` copies every ``kH x kW`` window of the (padded) input into a column, so
that a convolution becomes a single GEMM between the flattened filters
``(C_out, C_in*kH*kW)`` and the columns ``(C_in*kH*kW, H_out*W_out)``.

``col2im`` is its adjoint: it adds every column back into the window it came from.
Windows overlap when ``stride < kernel``, so values ADD; that is what makes
``<im2col(x), c> == <x, col2im(c)>`` hold and is why the transposed convolution
(:func:`zfnet.ops.conv_transpose2d`) is built from it.

Both loop over the ``kH * kW`` kernel offsets (at most 121 for AlexNet's 11x11) and
move whole strided slices at each offset, so the Python loop is short and every
copy is a vectorised array operation.
"""

from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from ..errors import ShapeError
from ._parallel import parallel_range
from ._shape import conv_out_size

__all__ = ["im2col", "col2im"]


def im2col(x, kernel_size: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int], out=None):
    """Gather every convolution window of ``x`` into columns.

    ``cols[n, c, i, j, oh, ow] = x_pad[n, c, oh*sH + i, ow*sW + j]``.

    Parameters
    ----------
    x : array, shape (N, C, H, W)
    kernel_size, stride, padding : pairs of int
        Zero padding ``padding`` is applied on both sides of each spatial axis.
    out : array, shape (N, C, kH, kW, H_out, W_out), optional
        Where to write the columns (any strides, e.g. a transposed view of a GEMM operand).

    Returns
    -------
    cols : array, shape (N, C, kH, kW, H_out, W_out)
        With ``H_out = floor((H + 2 pH - kH) / sH) + 1`` (likewise W_out).  Reshape
        to ``(N, C*kH*kW, H_out*W_out)`` for the GEMM.

    Paired with
    -----------
    :func:`col2im` (its adjoint).
    """
    xp = get_array_module(x)
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    ho, wo = conv_out_size(h, kh, sh, ph), conv_out_size(w, kw, sw, pw)
    if ph or pw:
        x = xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))  # (N, C, H+2pH, W+2pW)
    cols = xp.empty((n, c, kh, kw, ho, wo), dtype=x.dtype) if out is None else out
    for i in range(kh):
        for j in range(kw):
            # rows i, i+sH, ..., i+(H_out-1)sH of the padded input: offset (i, j) of every window
            cols[:, :, i, j] = x[:, :, i : i + sh * ho : sh, j : j + sw * wo : sw]
    return cols


def col2im(cols, input_size: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]):
    """Add columns back into the windows they came from (the adjoint of :func:`im2col`).

    ``x_pad[n, c, oh*sH + i, ow*sW + j] += cols[n, c, i, j, oh, ow]`` for every index,
    then the padding is cropped away (padding is where the forward read zeros, so the
    adjoint simply drops what lands there).

    Parameters
    ----------
    cols : array, shape (N, C, kH, kW, H_out, W_out)
    input_size : (H, W)
        The size of the un-padded image to rebuild.  Rows and columns past the last
        window (when ``(H + 2p - k)`` is not a multiple of the stride) receive zero.
    stride, padding : pairs of int

    Returns
    -------
    x : array, shape (N, C, H, W)

    Paired with
    -----------
    :func:`im2col`.
    """
    xp = get_array_module(cols)
    n, c, kh, kw, ho, wo = cols.shape
    h, w = input_size
    (sh, sw), (ph, pw) = stride, padding
    x = xp.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)  # (N, C, H+2pH, W+2pW)
    for i in range(kh):
        for j in range(kw):
            x[:, :, i : i + sh * ho : sh, j : j + sw * wo : sw] += cols[:, :, i, j]
    return x[:, :, ph : ph + h, pw : pw + w]


# -- the fast NumPy layout: every kernel offset is ONE contiguous slice ----------------
#
# im2col above copies, for each kernel offset (i, j), a strided 2-D view (stride sH, sW)
# whose rows are only W_out values long; NumPy then runs its inner loop once per short
# row.  Re-indexing makes each offset a single contiguous slice instead:
#
# * Polyphase split.  Phase (a, b) of the padded input is every sH-th row from a and
#   every sW-th column from b:  phase[a, b][r, q] = x_pad[r*sH + a, q*sW + b].  Output
#   (oh, ow) with offset (i, j) reads x_pad[oh*sH + i, ow*sW + j]
#   = phase[i % sH, j % sW][oh + i // sH, ow + j // sW].
# * Flat shifts.  Store each phase with rows of Wq = W_out + (kW-1)//sW values.  Then
#   the read above sits at flat position (oh*Wq + ow) + (i//sH)*Wq + j//sW: ONE shift
#   d(i, j) for every output.  So the columns of offset (i, j) for all outputs are the
#   flat slice [d, d + H_out*Wq) of its phase.
# * The price: each output row gets Wq - W_out extra "wrap-around" columns that read
#   the start of the next row.  The GEMM computes them too (a few percent more work)
#   and the caller drops them, so results are those of the readable path.
#
# With stride 1 there is a single phase (the padded input); a 1x1 stride-1 convolution
# without padding needs no copy at all: its columns are the input.


def phase_geometry(out_size, kernel_size, stride):
    """``(Hq, Wq)``: size of one phase plane for the flat-shift layout.

    ``Wq = W_out + (kW-1)//sW`` columns (the extra ones are wrap-around columns) and
    ``Hq = H_out + (kH-1)//sH`` rows, plus one row when ``Wq > W_out`` so that the last
    output row's wrap-around columns still read inside the buffer.
    """
    (ho, wo), (kh, kw), (sh, sw) = out_size, kernel_size, stride
    qh, qw = (kh - 1) // sh, (kw - 1) // sw
    return ho + qh + (1 if qw else 0), wo + qw


def phase_range(n_phase: int, a: int, s: int, p: int, n: int) -> tuple[int, int]:
    """Phase indices ``r`` in ``[0, n_phase)`` whose input index ``r*s + a - p`` lies in ``[0, n)``."""
    r0 = max(0, -(-(p - a) // s))  # ceil((p - a) / s)
    r1 = max(r0, min(n_phase, (n - 1 + p - a) // s + 1))
    return r0, r1


def split_phase(out, x, a: int, b: int, stride, padding, fill=0) -> None:
    """Write phase ``(a, b)`` of ``x`` padded with ``fill`` into ``out``.

    ``out[..., r, q] = x_pad[..., r*sH + a, q*sW + b]``; ``x`` is (..., H, W) and
    ``out`` (..., Hq, Wq).  Only the border of ``out`` is filled, the rest is copied.

    Paired with
    -----------
    :func:`merge_phase` (its adjoint for ``fill=0``).
    """
    (sh, sw), (ph, pw) = stride, padding
    h, w = x.shape[-2:]
    hq, wq = out.shape[-2:]
    r0, r1 = phase_range(hq, a, sh, ph, h)
    q0, q1 = phase_range(wq, b, sw, pw, w)
    out[..., :r0, :] = fill  # rows and columns that fall in the padding (or past it)
    out[..., r1:, :] = fill
    out[..., r0:r1, :q0] = fill
    out[..., r0:r1, q1:] = fill
    if r1 > r0 and q1 > q0:
        i0, j0 = r0 * sh + a - ph, q0 * sw + b - pw
        out[..., r0:r1, q0:q1] = x[..., i0 : i0 + (r1 - r0 - 1) * sh + 1 : sh, j0 : j0 + (q1 - q0 - 1) * sw + 1 : sw]


def merge_phase(x, phase, a: int, b: int, stride, padding) -> None:
    """Put phase ``(a, b)`` back: ``x[..., r*sH + a - pH, q*sW + b - pW] = phase[..., r, q]``.

    Entries that land in the padding are dropped (the adjoint of reading zeros there).

    Paired with
    -----------
    :func:`split_phase`.
    """
    (sh, sw), (ph, pw) = stride, padding
    h, w = x.shape[-2:]
    hq, wq = phase.shape[-2:]
    r0, r1 = phase_range(hq, a, sh, ph, h)
    q0, q1 = phase_range(wq, b, sw, pw, w)
    if r1 > r0 and q1 > q0:
        i0, j0 = r0 * sh + a - ph, q0 * sw + b - pw
        x[..., i0 : i0 + (r1 - r0 - 1) * sh + 1 : sh, j0 : j0 + (q1 - q0 - 1) * sw + 1 : sw] = phase[..., r0:r1, q0:q1]


def im2col_phases(x, kernel_size, stride, padding, out=None):
    """Convolution columns in the flat-shift layout (fast NumPy path of :func:`im2col`).

    ``cols[n, c, i, j, oh*Wq + ow] = x_pad[n, c, oh*sH + i, ow*sW + j]`` for
    ``ow < W_out``; columns ``ow >= W_out`` are wrap-around values to be dropped.

    Parameters
    ----------
    x : array, shape (N, C, H, W)
    kernel_size, stride, padding : pairs of int
    out : array, shape (N, C, kH, kW, H_out*Wq), optional
        Where to write the columns (e.g. a view into a larger GEMM operand).

    Returns
    -------
    cols : array, shape (N, C, kH, kW, H_out*Wq)
        Reshape to ``(N, C*kH*kW, H_out*Wq)`` for the GEMM; the product reshaped
        to ``(..., H_out, Wq)`` and cut to ``[..., :W_out]`` is the convolution.
    wq : int
        Row length of the layout (see :func:`phase_geometry`).

    Paired with
    -----------
    :func:`col2im_phases` (its adjoint).
    """
    xp = get_array_module(x)
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    ho, wo = conv_out_size(h, kh, sh, ph), conv_out_size(w, kw, sw, pw)
    if (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0) and out is None:
        return x.reshape(n, c, 1, 1, h * w), w  # a 1x1 convolution reads the input as it is
    hq, wq = phase_geometry((ho, wo), (kh, kw), (sh, sw))
    na, nb = min(sh, kh), min(sw, kw)  # phases that some kernel offset reads
    phases = xp.empty((n, c, na, nb, hq, wq), dtype=x.dtype)  # (N, C, A, B, Hq, Wq)
    for a in range(na):
        for b in range(nb):
            split_phase(phases[:, :, a, b], x, a, b, (sh, sw), (ph, pw))
    flat = phases.reshape(n, c, na, nb, hq * wq)  # (N, C, A, B, Hq*Wq)
    length = ho * wq
    cols = xp.empty((n, c, kh, kw, length), dtype=x.dtype) if out is None else out  # (N, C, kH, kW, H_out*Wq)

    def copy(lo, hi):  # kernel offsets t = i*kW + j in [lo, hi)
        for t in range(lo, hi):
            i, j = divmod(t, kw)
            d = (i // sh) * wq + j // sw  # the same flat shift for every output position
            cols[:, :, i, j] = flat[:, :, i % sh, j % sw, d : d + length]

    if xp is np:  # NumPy copies on one core: share the offsets out among threads
        parallel_range(kh * kw, copy, min_items=max(1, (1 << 15) // max(1, n * c * length)))
    else:
        copy(0, kh * kw)
    return cols, wq


def col2im_phases(cols, input_size, kernel_size, stride, padding, wq: int):
    """Adjoint of :func:`im2col_phases`: add every column back where it was read.

    ``x_pad[n, c, oh*sH + i, ow*sW + j] += cols[n, c, i, j, oh*Wq + ow]``, padding
    dropped.  The wrap-around columns (``ow >= W_out``) must hold zeros (they are
    added too, into positions that belong to other outputs).

    Parameters
    ----------
    cols : array, shape (N, C, kH, kW, H_out*Wq)
    input_size : (H, W)
    kernel_size, stride, padding : pairs of int
        ``kernel_size`` must equal ``cols.shape[2:4]`` (it is checked, not
        trusted: a mismatch is a ``ShapeError``).
    wq : int
        The layout's row length, from :func:`im2col_phases`.

    Returns
    -------
    x : array, shape (N, C, H, W)

    Paired with
    -----------
    :func:`im2col_phases`.
    """
    xp = get_array_module(cols)
    n, c, kh, kw, length = cols.shape
    if (kh, kw) != tuple(kernel_size):
        raise ShapeError(f"col2im_phases: cols hold {kh}x{kw} windows (shape {tuple(cols.shape)}), "
                         f"kernel_size says {tuple(kernel_size)}")
    h, w = input_size
    (sh, sw), (ph, pw) = stride, padding
    ho = length // wq
    wo = wq - (kw - 1) // sw
    if (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0):
        return cols.reshape(n, c, h, w)
    hq, _ = phase_geometry((ho, wo), (kh, kw), (sh, sw))
    na, nb = min(sh, kh), min(sw, kw)
    flat = xp.zeros((n, c, na, nb, hq * wq), dtype=cols.dtype)  # (N, C, A, B, Hq*Wq)
    phases = flat.reshape(n, c, na, nb, hq, wq)  # (N, C, A, B, Hq, Wq)
    x = xp.zeros((n, c, h, w), dtype=cols.dtype)  # rows/columns no window reads stay zero

    def add_back(lo, hi):  # channels [lo, hi): offsets overlap in space, never across channels
        for i in range(kh):
            for j in range(kw):
                d = (i // sh) * wq + j // sw
                flat[:, lo:hi, i % sh, j % sw, d : d + length] += cols[:, lo:hi, i, j]
        for a in range(na):
            for b in range(nb):
                merge_phase(x[:, lo:hi], phases[:, lo:hi, a, b], a, b, (sh, sw), (ph, pw))

    if xp is np:  # NumPy adds on one core: share the channels out among threads
        parallel_range(c, add_back, min_items=max(1, (1 << 17) // max(1, n * kh * kw * length)))
    else:
        add_back(0, c)
    return x
