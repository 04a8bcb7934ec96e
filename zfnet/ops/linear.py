"""Fully connected (affine) layer."""

from __future__ import annotations

from ..errors import ShapeError

__all__ = ["linear"]


def linear(x, w, b=None):
    """Affine map ``y = x w^T + b``.

    Parameters
    ----------
    x : array, shape (N, F_in)
    w : array, shape (F_out, F_in)
        PyTorch's layout.
    b : array, shape (F_out,), optional

    Returns
    -------
    y : array, shape (N, F_out)

    Paired with
    -----------
    Its adjoint ``y @ w`` (the deconvnet's transposed filter for a fully connected layer).
    """
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1]:
        raise ShapeError(f"linear: cannot multiply input {tuple(x.shape)} by weight {tuple(w.shape)}^T")
    y = x @ w.T  # (N, F_out)
    if b is not None:
        y = y + b
    return y
