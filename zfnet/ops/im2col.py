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

from ..backend import get_array_module
from ._shape import conv_out_size

__all__ = ["im2col", "col2im"]


def im2col(x, kernel_size: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]):
    """Gather every convolution window of ``x`` into columns.

    ``cols[n, c, i, j, oh, ow] = x_pad[n, c, oh*sH + i, ow*sW + j]``.

    Parameters
    ----------
    x : array, shape (N, C, H, W)
    kernel_size, stride, padding : pairs of int
        Zero padding ``padding`` is applied on both sides of each spatial axis.

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
    cols = xp.empty((n, c, kh, kw, ho, wo), dtype=x.dtype)
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
