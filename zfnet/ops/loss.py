"""Softmax cross-entropy: the classification loss and its gradient in one pass."""

from __future__ import annotations

from ..backend import get_array_module
from ..errors import ShapeError

__all__ = ["softmax_cross_entropy"]


def softmax_cross_entropy(logits, labels):
    """Mean softmax cross-entropy over a batch, and its gradient with respect to the logits.

    .. math::

        L = \\frac{1}{N} \\sum_n \\Big( \\log \\sum_k e^{z_{nk}} - z_{n, t_n} \\Big),
        \\qquad
        \\frac{\\partial L}{\\partial z_{nk}} = \\frac{\\mathrm{softmax}(z_n)_k - [k = t_n]}{N}

    The log-sum-exp is taken after subtracting each row's maximum, so neither the
    loss nor the gradient overflows in float32.

    Parameters
    ----------
    logits : array, shape (N, K)
        Unnormalised class scores (fc8's output).
    labels : int array, shape (N,)
        Class indices ``t_n`` in ``[0, K)``.

    Returns
    -------
    loss : 0-d array (same array module and float dtype as ``logits``)
        Call ``float(loss)`` for a Python number (on CuPy that waits for the GPU).
    dlogits : array, shape (N, K)

    Paired with
    -----------
    :func:`zfnet.ops.softmax`.
    """
    xp = get_array_module(logits, labels)
    if logits.ndim != 2 or labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ShapeError(
            f"softmax_cross_entropy: logits must be (N, K) and labels (N,), got "
            f"{tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    n, k = logits.shape
    if n == 0:
        raise ShapeError("softmax_cross_entropy: empty batch")
    labels = labels.astype(xp.int64, copy=False)
    if int(labels.min()) < 0 or int(labels.max()) >= k:
        raise ShapeError(f"softmax_cross_entropy: labels must lie in [0, {k}), got range "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    z = logits - logits.max(axis=1, keepdims=True)  # (N, K), every row's max is 0
    e = xp.exp(z)
    sum_e = e.sum(axis=1, keepdims=True)  # (N, 1)
    rows = xp.arange(n)
    loss = (xp.log(sum_e[:, 0]) - z[rows, labels]).mean()
    d = e / sum_e  # softmax, (N, K)
    d[rows, labels] -= 1
    d /= n
    return loss, d
