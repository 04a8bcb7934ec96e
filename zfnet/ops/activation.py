"""Rectification and softmax."""

from __future__ import annotations

from ..backend import get_array_module

__all__ = ["relu", "softmax"]


def relu(x):
    """Rectified linear unit, ``max(x, 0)`` elementwise, any shape.

    In the deconvnet the same function rectifies the signal coming DOWN (paper
    section 2.1, "Rectification"); see :func:`zfnet.nn.relu_rule` for the three rules.
    """
    xp = get_array_module(x)
    return xp.maximum(x, 0)


def softmax(x, axis: int = -1):
    """``softmax(x)_i = exp(x_i - max x) / sum_j exp(x_j - max x)`` along ``axis``.

    Subtracting the maximum changes nothing mathematically and keeps ``exp`` from
    overflowing in float32.
    """
    xp = get_array_module(x)
    z = xp.exp(x - x.max(axis=axis, keepdims=True))
    return z / z.sum(axis=axis, keepdims=True)
