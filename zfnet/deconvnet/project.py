"""Top-down projection of a single activation to pixel space (paper section 2.1).

To see what one unit responds to in one image:

1. run the image forward, keeping the pooling switches;
2. keep the chosen activation, set every other activation of that layer to zero;
3. go down layer by layer: unpool with THIS image's switches, rectify, filter with
   the transposed filters (no bias; LRN passes through);
4. the result in pixel space, shape (3, H, W), is the projection.

The ``rule`` picks what "rectify" means (see :mod:`zfnet.nn.rules`): the
deconvnet's ``relu`` of the signal, plain backprop's forward mask, or guided
backprop's both.  Everything else is the same code.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..backend import asnumpy, get_array_module
from ..errors import ConfigError, ShapeError
from ..nn import Trace, check_rule
from .windowed import WindowUnsupported, project_units_windowed

__all__ = ["project", "project_units", "strongest_position", "WindowFallback"]


class WindowFallback(UserWarning):
    """``project_units(..., windowed=True)`` ran the dense pass: a layer has no windowed step."""


def strongest_position(activation, channel: int):
    """Per image, the ``(y, x)`` of the spatial maximum of ``activation[:, channel]``.

    Ties go to the first position in row-major order.

    Returns
    -------
    int64 array, shape (N, 2)
    """
    xp = get_array_module(activation)
    n, _, h, w = activation.shape
    flat = activation[:, channel].reshape(n, h * w).argmax(axis=1)  # (N,)
    return xp.stack([flat // w, flat % w], axis=1).astype(xp.int64)


def _check_layer_activation(model, trace: Trace, layer: str):
    if layer not in trace.activations:
        raise ConfigError(f"{model.arch} has no activation {layer!r}; layers are: {', '.join(model.layer_names())}")
    return trace.activations[layer]


def project(model, x, layer: str, channel: int, position=None, rule: str = "deconvnet"):
    """Project one activation per image of ``layer``, channel ``channel``, to pixels.

    Parameters
    ----------
    model : Network
    x : array, shape (N, 3, H, W)
        Preprocessed images.
    layer : str
        Activation name, e.g. ``"conv5"``.
    channel : int
        Feature map index in ``layer``.
    position : (int, int), optional
        ``(y, x)`` in the layer's map.  Default: each image's own spatial argmax
        for ``channel`` (the strongest activation, as in the paper's figures).
    rule : {"deconvnet", "backprop", "guided"}

    Returns
    -------
    array, shape (N, 3, H, W)
        The projection; its scale is that of the kept activation.

    References
    ----------
    Zeiler & Fergus (2014), section 2.1 and Fig. 1.
    """
    check_rule(rule)
    trace = model.forward(x, upto=layer)
    act = _check_layer_activation(model, trace, layer)
    n = act.shape[0]
    if not 0 <= channel < act.shape[1]:
        raise ConfigError(f"{layer} has {act.shape[1]} channels; channel {channel} does not exist")
    if act.ndim == 2:  # a fully connected layer: keep one unit
        units = np.stack([np.arange(n), np.full(n, channel), np.zeros(n), np.zeros(n)], 1)
    else:
        if position is None:
            pos = asnumpy(strongest_position(act, channel))  # (N, 2)
        else:
            y, x_ = int(position[0]), int(position[1])
            if not (0 <= y < act.shape[2] and 0 <= x_ < act.shape[3]):
                raise ShapeError(f"position {(y, x_)} is outside {layer}'s {act.shape[2]}x{act.shape[3]} map")
            pos = np.tile([[y, x_]], (n, 1))
        units = np.concatenate([np.arange(n)[:, None], np.full((n, 1), channel), pos], axis=1)
    return _project_from_trace(model, trace, layer, units.astype(np.int64), rule)


def project_units(model, x_or_trace, layer: str, units, rule: str = "deconvnet", windowed: bool = False):
    """Project many single activations at once: one projection per unit.

    Parameters
    ----------
    model : Network
    x_or_trace : array (N, 3, H, W) or Trace
        The images (or a trace of them made with ``caches=True`` up to ``layer``).
    layer : str
    units : int array, shape (U, 4)
        Rows ``(image index, channel, y, x)``; for a fully connected layer ``y`` and
        ``x`` are ignored.
    rule : {"deconvnet", "backprop", "guided"}
    windowed : bool
        Compute each unit only inside its receptive field
        (:func:`~zfnet.deconvnet.windowed.project_units_windowed`): the same result up
        to float rounding, several times faster.  A fully connected ``layer`` is
        projected densely; so is a spatial one with a layer below it that has no
        windowed step (``deconv_window``), with a :class:`WindowFallback` warning
        that names the layer (shown once per layer, Python's default filter).

    Returns
    -------
    array, shape (U, 3, H, W)
        ``out[u]`` is ``project(model, x[i_u:i_u+1], layer, c_u, (y_u, x_u))``: each
        unit goes down with its own image's switches.
    """
    check_rule(rule)
    trace = x_or_trace if isinstance(x_or_trace, Trace) else model.forward(x_or_trace, upto=layer)
    units = np.asarray(units, dtype=np.int64).reshape(-1, 4)
    act = _check_layer_activation(model, trace, layer)
    n_img = act.shape[0]
    if len(units) and (units[:, 0].min() < 0 or units[:, 0].max() >= n_img):
        raise ShapeError(f"unit image indices must be in [0, {n_img}), got {units[:, 0].min()}..{units[:, 0].max()}")
    if len(units) and (units[:, 1].min() < 0 or units[:, 1].max() >= act.shape[1]):
        raise ConfigError(f"{layer} has {act.shape[1]} channels; a unit asks for channel {units[:, 1].max()}")
    if act.ndim == 4 and len(units):
        if units[:, 2].min() < 0 or units[:, 2].max() >= act.shape[2] or units[:, 3].min() < 0 or units[:, 3].max() >= act.shape[3]:
            raise ShapeError(f"a unit position lies outside {layer}'s {act.shape[2]}x{act.shape[3]} map")
    if windowed and act.ndim == 4:
        try:
            return project_units_windowed(model, trace, layer, units, rule)
        except WindowUnsupported as e:  # the dense pass handles every layer: say so, then use it
            warnings.warn(f"{model.arch}: projecting {layer} densely, not windowed: {e}", WindowFallback, stacklevel=2)
    return _project_from_trace(model, trace, layer, units, rule)


def _project_from_trace(model, trace: Trace, layer: str, units: np.ndarray, rule: str):
    act = trace.activations[layer]
    xp = get_array_module(act)
    sub = trace.select(xp.asarray(units[:, 0]))  # unit u sees image units[u, 0]'s switches
    u = xp.arange(len(units))
    c = xp.asarray(units[:, 1])
    signal = xp.zeros((len(units),) + tuple(act.shape[1:]), dtype=act.dtype)  # (U, C, H, W)
    if act.ndim == 4:
        y, x = xp.asarray(units[:, 2]), xp.asarray(units[:, 3])
        signal[u, c, y, x] = sub.activations[layer][u, c, y, x]  # keep one activation, zero the rest
    else:
        signal[u, c] = sub.activations[layer][u, c]
    return model.deconv(signal, sub, layer, rule)
