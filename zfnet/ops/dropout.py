"""Inverted dropout and its gradient, given the keep mask."""

from __future__ import annotations

from ..errors import ShapeError

__all__ = ["dropout", "dropout_backward"]


def dropout(x, keep, p: float):
    """Inverted dropout with a given mask: ``y = x * keep / (1 - p)``.

    Each unit survives with probability ``1 - p`` (``keep`` is True) and survivors
    are scaled by ``1 / (1 - p)`` so that ``E[y] = x`` and inference needs no
    rescaling.  Drawing the mask is the caller's job (see
    :class:`zfnet.nn.Dropout`, which draws it from its own seeded generator).

    Parameters
    ----------
    x : array, any shape
    keep : bool array, same shape
    p : float in [0, 1)
        Drop probability.

    Returns
    -------
    y : array, same shape as ``x``

    Paired with
    -----------
    :func:`dropout_backward`.

    References
    ----------
    Srivastava et al. (2014); Krizhevsky et al. (2012) use p = 0.5 in fc6 and fc7.
    """
    _check(x, keep, p, "dropout")
    return x * keep / x.dtype.type(1 - p)


def dropout_backward(dy, keep, p: float):
    """Gradient of :func:`dropout`: ``dx = dy * keep / (1 - p)``, the same mask and scale.

    Parameters
    ----------
    dy : array, any shape
    keep : bool array, same shape
        The mask of the forward pass.
    p : float in [0, 1)

    Returns
    -------
    dx : array, same shape as ``dy``

    Paired with
    -----------
    :func:`dropout`.
    """
    _check(dy, keep, p, "dropout_backward")
    return dy * keep / dy.dtype.type(1 - p)


def _check(x, keep, p, what):
    if tuple(x.shape) != tuple(keep.shape):
        raise ShapeError(f"{what}: keep mask shape {tuple(keep.shape)} differs from the input {tuple(x.shape)}")
    if not 0 <= p < 1:
        raise ShapeError(f"{what}: drop probability p={p} must be in [0, 1)")
