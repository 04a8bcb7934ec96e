"""Convolution by kernel rows: one GEMM per row of the filter, on columns of one image.

im2col lays out every window offset ``(c, u, v)`` of the filter: ``C kH kW`` rows of
columns, ``kH kW / (sH sW)`` times the input.  For a batch they do not fit in any
cache (AlexNet's conv2 at 16 images: 112 MB), so they are written to memory and read
back, and on this library's CPU paths that traffic costs as much as a third of the
GEMM itself.  Here only the ``kW`` offsets along one row of the filter are laid out,
for one image at a time:

.. math::

    P[c, v, a, q, j] = x_{pad}[c,\\; q s_H + a,\\; j s_W + v]
    \\qquad a < \\min(s_H, k_H),\\; q < H_q = H_{out} + \\lfloor (k_H - 1) / s_H \\rfloor,\\; j < W_{out}

(``a`` is the input row's phase under the vertical stride).  That is ``kW / sW``
times the input of one image: 1.6 MB for AlexNet's conv2, 2.8 MB for ZFNet's, which
stay in the core's L2 (2 MB here) or the shared L3 instead of going to memory.
The rows of the filter need no copies of their own.  Row ``u = q_u s_H + a_u`` of
the filter reads input row ``i s_H + u = (i + q_u) s_H + a_u`` for output row ``i``,
that is, ``P[:, :, a_u, i + q_u, j]``: over all output positions ``(i, j)`` a run
of ``H_out W_out`` consecutive values of ``P`` that starts at ``q_u W_out``.  So the
convolution of one image is ``kH`` GEMMs, each added into the same output:

.. math::

    Y_g \\;(O_g, H_{out} W_{out}) \\mathrel{+}= W_{g,u} \\;(O_g, C_g k_W) \\times
        P_{g, a_u}[:,\\; q_u W_{out} : q_u W_{out} + H_{out} W_{out}]

with ``W_{g,u}[o, (c, v)] = w[g O_g + o, c, u, v]``.  There are no wrap-around
columns (unlike the flat-shift layout of :func:`~zfnet.ops.im2col.im2col_phases`),
so the GEMMs do exactly the multiplications of the definition.  Adding into the
output is a GEMM with ``beta = 1`` (:func:`zfnet.ops._blas.gemm`).

The gradients are the same GEMMs rearranged:

* filters: ``dW_{g,u} += dY_g @ P_{g,a_u}[:, q_u W_out : ...]^T``, summed over images;
* input: ``dP_{g,a_u}[:, q_u W_out : ...] += W_{g,u}^T @ dY_g``, then every plane
  ``dP[c, v, a]`` is added back where ``P`` read it (the adjoint of the copy), and
  the padding dropped.

Used by :func:`~zfnet.ops.conv2d` and its gradients on NumPy where it pays
(:func:`kernel_rows_applies`); ``tests/test_kernel_rows.py`` checks every function
here against the readable im2col path.

Shapes: NCHW inputs, OIHW filters.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import ShapeError
from ._blas import blas_threads, gemm
from ._parallel import _on_one_thread, num_threads, parallel_range
from ._shape import conv_out_size

__all__ = [
    "kernel_rows_applies",
    "row_columns",
    "row_columns_adjoint",
    "conv2d_rows",
    "conv2d_rows_weight_grad",
    "conv2d_rows_input_grad",
]


def kernel_rows_applies(in_channels: int, kernel_size, out_size, dtype) -> bool:
    """Whether a NumPy convolution should take this path (``in_channels`` per group).

    Float32/float64 data, filters at least 2x2, each GEMM's inner dimension
    ``C_g kW`` at least 64 and output maps of at least 400 positions.  Below these
    the GEMMs are too small to run fast, and im2col's columns fit in cache anyway.
    Measured per layer at 16 images on one thread, im2col -> kernel rows (forward,
    filter gradient, input gradient; ``benchmarks/kernel_rows.py``, ``docs/speed.md``):

    * AlexNet's conv2 (48 -> 128 per group, 5x5 on 27x27): 66/78/78 -> 53/60/55 ms;
    * ZFNet's conv2 (96 -> 256, 5x5 stride 2 on 55x55): 111/125/115 -> 99/101/102 ms;
    * AlexNet's conv1 (3 channels, ``C_g kW = 33``): the forward is faster (45 -> 35
      ms), the filter gradient slower (41 -> 58 ms): left to im2col.

    Set the environment variable ``ZFNET_KERNEL_ROWS=0`` (or ``false``, ``off``,
    ``no``) to take the im2col paths always.
    """
    if os.environ.get("ZFNET_KERNEL_ROWS", "").strip().lower() in ("0", "false", "off", "no"):
        return False
    if np.dtype(dtype) not in (np.float32, np.float64):
        return False
    kh, kw = kernel_size
    return kh >= 2 and kw >= 2 and in_channels * kw >= 64 and out_size[0] * out_size[1] >= 400


def _geometry(in_size, kernel_size, stride, padding):
    """``(H_out, W_out, A, H_q, H_pad, W_pad)`` for one image.

    ``H_pad`` rows of padded input are laid out: ``H + 2 pH``, or more (zeros) where
    the last phase row of ``P`` reads past the padded input.
    """
    (h, w), (kh, kw), (sh, sw), (ph, pw) = in_size, kernel_size, stride, padding
    ho, wo = conv_out_size(h, kh, sh, ph), conv_out_size(w, kw, sw, pw)
    na = min(sh, kh)
    hq = ho + (kh - 1) // sh
    return ho, wo, na, hq, max(h + 2 * ph, (hq - 1) * sh + na), w + 2 * pw


def row_columns(xpad, kernel_size, stride, out_size, out=None):
    """The columns of one image for one row of the filter: ``P`` of the module docstring.

    Parameters
    ----------
    xpad : array, shape (C, H_pad, W_pad)
        One zero-padded image, with at least ``(H_q - 1) sH + A`` rows.
    kernel_size, stride : pairs of int
    out_size : (H_out, W_out)
    out : array, shape (C, kW, A, H_q, W_out), optional

    Returns
    -------
    P : array, shape (C, kW, A, H_q, W_out)
        ``P[c, v, a, q, j] = xpad[c, q sH + a, j sW + v]``.

    Paired with
    -----------
    :func:`row_columns_adjoint`.
    """
    (kh, kw), (sh, sw), (ho, wo) = kernel_size, stride, out_size
    na, hq = min(sh, kh), ho + (kh - 1) // sh
    c = xpad.shape[0]
    if out is None:
        out = np.empty((c, kw, na, hq, wo), dtype=xpad.dtype)
    for v in range(kw):
        for a in range(na):
            out[:, v, a] = xpad[:, a : a + (hq - 1) * sh + 1 : sh, v : v + (wo - 1) * sw + 1 : sw]
    return out


def row_columns_adjoint(p, stride, out):
    """Add every value of ``P`` back where :func:`row_columns` read it: ``out`` += P^T.

    ``out[c, q sH + a, j sW + v] += p[c, v, a, q, j]``; ``p`` (C, kW, A, H_q, W_out),
    ``out`` (C, H_pad, W_pad), changed in place.
    """
    sh, sw = stride
    _, kw, na, hq, wo = p.shape
    for v in range(kw):
        for a in range(na):
            out[:, a : a + (hq - 1) * sh + 1 : sh, v : v + (wo - 1) * sw + 1 : sw] += p[:, v, a]
    return out


def _filter_rows(w, groups: int):
    """``W_{g,u}``: ``(O, C_g, kH, kW) -> (G, kH, O_g, C_g kW)``, contiguous."""
    o, cg, kh, kw = w.shape
    return np.ascontiguousarray(w.reshape(groups, o // groups, cg, kh, kw).transpose(0, 3, 1, 2, 4)).reshape(
        groups, kh, o // groups, cg * kw)


class _Columns:
    """One thread's buffers for one image at a time: the padded image, its ``P``, and
    for each group and filter row the ``(C_g kW, H_out W_out)`` view of ``P`` that
    row's GEMM reads (``panels[g][u]``).  The input gradient uses the same two
    buffers for ``dx_pad`` and ``dP``.
    """

    def __init__(self, channels: int, in_size, kernel_size, stride, padding, groups: int, dtype):
        (kh, kw), (sh, _) = kernel_size, stride
        ho, wo, na, hq, hp, wp = _geometry(in_size, kernel_size, stride, padding)
        self.in_size, self.kernel_size, self.stride, self.padding = in_size, kernel_size, stride, padding
        self.out_size = (ho, wo)
        self.xpad = np.zeros((channels, hp, wp), dtype=dtype)  # (C_in, H_pad, W_pad): the border stays zero
        self.p = np.empty((channels, kw, na, hq, wo), dtype=dtype)  # (C_in, kW, A, H_q, W_out)
        flat = self.p.reshape(groups, (channels // groups) * kw, na, hq * wo)  # (G, C_g*kW, A, Hq*W_out): a view
        self.panels = [[flat[g, :, u % sh, (u // sh) * wo : (u // sh + ho) * wo] for u in range(kh)]
                       for g in range(groups)]

    def load(self, image):
        """Lay out ``P`` of one image (C_in, H, W)."""
        (h, w), (ph, pw) = self.in_size, self.padding
        self.xpad[:, ph : ph + h, pw : pw + w] = image
        row_columns(self.xpad, self.kernel_size, self.stride, self.out_size, out=self.p)

    def unpadded(self):
        """The inside of the padded buffer: (C_in, H, W)."""
        (h, w), (ph, pw) = self.in_size, self.padding
        return self.xpad[:, ph : ph + h, pw : pw + w]


def _by_images(n: int, fn) -> None:
    """``fn(lo, hi)`` over the ``n`` images: shared out among threads, or all on this one.

    Shared out, each thread takes whole images, with its own buffers, and runs its
    GEMMs with BLAS on one thread (two threads each calling a threaded GEMM share the
    cores worse; :mod:`zfnet.ops._blas`).  That is only faster where OpenBLAS's idle
    threads go to sleep soon after a GEMM (:func:`_blas_threads_sleep_soon`): with
    OpenBLAS's default they spin for about 0.1 s after the last threaded GEMM and take
    the cores from the threads here (2 threads, 32 images, AlexNet's conv2 forward
    after a threaded GEMM: 111 ms, against 59 ms with the short spin and 76 ms with
    every image on this thread).  Otherwise, and on one image, inside
    :func:`~zfnet.ops._parallel.serial`, or where BLAS's thread count cannot be set,
    this thread does every image and BLAS keeps its threads; likewise while another
    thread holds BLAS's thread count (:func:`~zfnet.ops._blas.blas_threads`).
    """
    if n > 1 and num_threads() > 1 and not _on_one_thread() and _blas_threads_sleep_soon():
        with blas_threads(1, wait=False) as one:  # False where another thread holds BLAS's count
            if one:
                parallel_range(n, fn)
                return
    fn(0, n)


def _blas_threads_sleep_soon() -> bool:
    """Whether ``OPENBLAS_THREAD_TIMEOUT`` is 1-10 (at most ``2**10`` cycles of spinning).

    ``zfnet train`` sets 4 (:func:`zfnet._memory.short_openblas_spin`); OpenBLAS's
    default is 28, and it ignores 0 (so 0 means the default; 1-3 are raised to 4).
    OpenBLAS reads the variable once, when NumPy loads it: this is right when it is
    set before that, as ``zfnet train`` does, and not changed afterwards.
    """
    value = os.environ.get("OPENBLAS_THREAD_TIMEOUT", "").strip()
    return value.isdigit() and 1 <= int(value) <= 10


def conv2d_rows(x, w, b, stride, padding, groups: int, relu: bool = False):
    """:func:`~zfnet.ops.conv2d` (then ``max(., 0)`` if ``relu``) by kernel rows.

    Arguments as :func:`~zfnet.ops.conv2d`, already checked; ``stride`` and
    ``padding`` pairs.  Per image: lay out ``P``, then ``kH`` GEMMs per group into
    the output, which starts as the bias; the ReLU is applied while the image's
    output is in cache.

    Returns
    -------
    y : array, shape (N, C_out, H_out, W_out)
    """
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    ho, wo = _geometry((h, wd), (kh, kw), stride, padding)[:2]
    dtype = np.result_type(x, w)
    wrows = _filter_rows(w.astype(dtype, copy=False), groups)  # (G, kH, O_g, C_g*kW)
    y = np.empty((n, o, ho, wo), dtype=dtype)
    bias = None if b is None else b.astype(dtype, copy=False).reshape(groups, o // groups, 1)

    def images(lo, hi):
        cols = _Columns(c, (h, wd), (kh, kw), stride, padding, groups, dtype)
        for i in range(lo, hi):
            cols.load(x[i])
            yi = y[i].reshape(groups, o // groups, ho * wo)  # (G, O_g, H_out*W_out)
            if bias is not None:
                yi[...] = bias
            for g in range(groups):
                for u in range(kh):
                    gemm(wrows[g, u], cols.panels[g][u], yi[g], accumulate=bias is not None or u > 0)
            if relu:
                np.maximum(yi, 0, out=yi)

    _by_images(n, images)
    return y


def conv2d_rows_weight_grad(x, dy, w_shape, stride, padding, groups: int, relu_output=None):
    """Filter gradient of :func:`conv2d_rows`: ``dW_{g,u} = sum_n dY_g[n] P_{g,a_u}[n]^T``.

    Parameters
    ----------
    x : array, shape (N, C_in, H, W)
        The forward input.
    dy : array, shape (N, C_out, H_out, W_out)
    w_shape : (C_out, C_in/groups, kH, kW)
    stride, padding : pairs of int
    groups : int
    relu_output : array, shape like ``dy``, optional
        The output of a ReLU that followed the convolution: the gradient is taken
        through it first, ``dz = dy [relu_output > 0]``, image by image.

    Returns
    -------
    dw : array, shape ``w_shape``
    dz : array, shape like ``dy``
        The gradient at the convolution's output (``dy`` itself without ``relu_output``).
    """
    n, c, h, wd = x.shape
    o, cg, kh, kw = (int(v) for v in w_shape)
    og = o // groups
    ho, wo = _geometry((h, wd), (kh, kw), stride, padding)[:2]
    dtype = np.result_type(x, dy)
    dz = dy if relu_output is None else np.empty(dy.shape, dtype=dy.dtype)
    parts = []  # one (G, kH, C_g*kW, O_g) sum per thread, added in thread order

    def images(lo, hi):
        cols = _Columns(c, (h, wd), (kh, kw), stride, padding, groups, dtype)
        dw = np.zeros((groups, kh, cg * kw, og), dtype=dtype)  # transposed: (C_g*kW, L) @ (L, O_g) runs faster
        parts.append((lo, dw))
        for i in range(lo, hi):
            if relu_output is not None:
                np.multiply(dy[i], relu_output[i] > 0, out=dz[i])
            cols.load(x[i])
            dzi = dz[i].reshape(groups, og, ho * wo).astype(dtype, copy=False)  # (G, O_g, H_out*W_out)
            for g in range(groups):
                for u in range(kh):
                    gemm(cols.panels[g][u], dzi[g].T, dw[g, u], accumulate=True)  # dW_{g,u}^T += P dY^T

    _by_images(n, images)
    dw = sum(part for _, part in sorted(parts, key=lambda t: t[0])) if parts else \
        np.zeros((groups, kh, cg * kw, og), dtype=dtype)  # (G, kH, C_g*kW, O_g): dW_{g,u}^T
    dw = dw.reshape(groups, kh, cg, kw, og)  # (G, kH, C_g, kW, O_g)
    dw = dw.transpose(0, 4, 2, 1, 3).reshape(o, cg, kh, kw)  # (G, O_g, C_g, kH, kW) -> (C_out, C_in/groups, kH, kW)
    return dw, dz


def conv2d_rows_input_grad(dy, w, stride, padding, groups: int, input_size):
    """Input gradient of :func:`conv2d_rows` (its adjoint, :func:`~zfnet.ops.conv_transpose2d`).

    Per image: ``dP_{g,a_u}[:, q_u W_out : ...] += W_{g,u}^T dY_g`` for every filter
    row, then :func:`row_columns_adjoint` into the padded input, cut to
    ``input_size``.

    Returns
    -------
    dx : array, shape (N, C_in, H, W)
    """
    n, o, ho_, wo_ = dy.shape
    _, cg, kh, kw = w.shape
    c = cg * groups
    h, wd = (int(v) for v in input_size)
    ho, wo = _geometry((h, wd), (kh, kw), stride, padding)[:2]
    if (ho, wo) != (ho_, wo_):
        raise ShapeError(f"conv2d_rows_input_grad: dy is {ho_}x{wo_}, but an input of {h}x{wd} gives {ho}x{wo}")
    dtype = np.result_type(dy, w)
    wrows = _filter_rows(w.astype(dtype, copy=False), groups)  # (G, kH, O_g, C_g*kW)
    dx = np.empty((n, c, h, wd), dtype=dtype)

    def images(lo, hi):
        cols = _Columns(c, (h, wd), (kh, kw), stride, padding, groups, dtype)  # here dP and dx_pad
        for i in range(lo, hi):
            cols.p.fill(0)
            dyi = dy[i].reshape(groups, o // groups, ho * wo).astype(dtype, copy=False)  # (G, O_g, H_out*W_out)
            for g in range(groups):
                for u in range(kh):
                    gemm(wrows[g, u].T, dyi[g], cols.panels[g][u], accumulate=True)  # dP_{g,u} += W_{g,u}^T dY_g
            cols.xpad.fill(0)
            row_columns_adjoint(cols.p, stride, cols.xpad)
            dx[i] = cols.unpadded()  # the padding dropped: (C_in, H, W)

    _by_images(n, images)
    return dx
