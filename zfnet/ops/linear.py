"""Fully connected (affine) layer."""

from __future__ import annotations

from ..errors import ShapeError

__all__ = ["linear", "linear_backward"]


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


def linear_backward(x, w, dy):
    """Gradients of :func:`linear` ``y = x w^T + b``.

    .. math::

        \\frac{\\partial L}{\\partial x} = dy\\, w, \\qquad
        \\frac{\\partial L}{\\partial w} = dy^T x, \\qquad
        \\frac{\\partial L}{\\partial b} = \\sum_n dy_n

    Parameters
    ----------
    x : array, shape (N, F_in)
        The forward input.
    w : array, shape (F_out, F_in)
    dy : array, shape (N, F_out)
        Gradient with respect to the output.

    Returns
    -------
    dx : array, shape (N, F_in)
    dw : array, shape (F_out, F_in)
    db : array, shape (F_out,)

    Paired with
    -----------
    :func:`linear`.
    """
    if x.ndim != 2 or w.ndim != 2 or dy.ndim != 2 or x.shape[1] != w.shape[1] or dy.shape != (x.shape[0], w.shape[0]):
        raise ShapeError(
            f"linear_backward: x {tuple(x.shape)}, w {tuple(w.shape)} and dy {tuple(dy.shape)} "
            "do not fit y = x w^T (expected (N, F_in), (F_out, F_in), (N, F_out))"
        )
    dx = dy @ w  # (N, F_in)
    dw = dy.T @ x  # (F_out, F_in)
    db = dy.sum(axis=0)  # (F_out,)
    return dx, dw, db
