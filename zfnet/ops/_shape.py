"""Output-size arithmetic for convolution, transposed convolution and pooling.

All three follow from counting how many window positions fit along one axis of
length ``n`` after padding both sides by ``p``:

.. math::

    n_{out} = \\left\\lfloor \\frac{n + 2p - k}{s} \\right\\rfloor + 1

The transposed convolution inverts it (choosing the smallest input that maps to
``n_out``), and ceil-mode pooling rounds the division up instead of down.

References
----------
Dumoulin & Visin, "A guide to convolution arithmetic for deep learning" (2016).
"""

from __future__ import annotations

from ..errors import ShapeError

__all__ = ["pair", "conv_out_size", "conv_transpose_out_size", "pool_out_size"]


def pair(v, what: str = "value") -> tuple[int, int]:
    """Return ``(v, v)`` for an int, or the two ints of a pair; reject anything else."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ShapeError(f"{what} must be an int or a pair of ints, got {v!r}")
        a, b = int(v[0]), int(v[1])
    else:
        a = b = int(v)
    return a, b


def conv_out_size(n: int, k: int, s: int = 1, p: int = 0) -> int:
    """Output length of a convolution along one axis.

    ``n_out = floor((n + 2p - k) / s) + 1``.

    Raises
    ------
    ShapeError
        When the (padded) input is shorter than the kernel.
    """
    if s < 1:
        raise ShapeError(f"stride must be >= 1, got {s}")
    if p < 0:
        raise ShapeError(f"padding must be >= 0, got {p}")
    if n + 2 * p < k:
        raise ShapeError(f"input of size {n} (padding {p}) is smaller than the kernel {k}")
    return (n + 2 * p - k) // s + 1


def conv_transpose_out_size(n: int, k: int, s: int = 1, p: int = 0, output_padding: int = 0) -> int:
    """Output length of a transposed convolution along one axis.

    ``n_out = (n - 1) s - 2p + k + output_padding``.  With stride ``s > 1`` several
    input lengths give the same forward output length; ``output_padding`` in
    ``[0, s)`` picks which one (see :func:`zfnet.ops.conv_transpose2d`).  The result
    can be 0 when the padding eats the whole window; the caller decides if that is allowed.
    """
    if not 0 <= output_padding < max(s, 1):
        raise ShapeError(f"output_padding must be in [0, stride={s}), got {output_padding}")
    return (n - 1) * s - 2 * p + k + output_padding


def pool_out_size(n: int, k: int, s: int, p: int = 0, ceil_mode: bool = False) -> int:
    """Output length of a pooling window along one axis.

    Floor mode is :func:`conv_out_size`.  Ceil mode rounds the division up,
    ``ceil((n + 2p - k) / s) + 1``, as Caffe does, and then (PyTorch's rule) drops
    the last window if it would start in the right padding: every window must start
    inside the input or the left padding.  ZFNet needs it: 110 -> 55 and 26 -> 13.
    """
    if p > k // 2:
        raise ShapeError(f"pool padding {p} must be at most half the kernel size {k}")
    if n + 2 * p < k:
        raise ShapeError(f"input of size {n} (padding {p}) is smaller than the pooling window {k}")
    if not ceil_mode:
        return (n + 2 * p - k) // s + 1
    out = -(-(n + 2 * p - k) // s) + 1  # ceil division
    if (out - 1) * s >= n + p:
        out -= 1
    return out
