"""Receptive-field-windowed projection: run the deconvnet only where it can be nonzero.

Projecting ONE activation (paper section 2.1) starts from a signal that is zero
everywhere but at one position.  Going down, every step is local:

* a transposed convolution (kernel ``k``, stride ``s``, padding ``p``) spreads the
  value at output position ``o`` over input positions ``o*s - p, ..., o*s - p + k - 1``;
* unpooling puts each value back at its switch, which lies inside the value's own
  pooling window, the same interval;
* rectification and LRN (passed through) act position by position.

So if the signal at some level is zero outside the window ``[o0, o0 + n)`` (per axis),
one level down it is zero outside

.. math::

    [\\,o_0 s - p,\\; o_0 s - p + (n - 1) s + k\\,)

-- the receptive-field recurrence of :mod:`zfnet.deconvnet.receptive_field`, run
from the unit downwards.  For a ZFNet conv5 unit the windows are 1, 3, 5, 7 (conv5,
conv4, conv3 inputs), 15 (pool2), 33 (conv2), 67 (pool1) and 139 pixels: the
top-down pass touches a fraction of each map instead of all of it, and the result
is the dense projection's, value for value (the sums are the same sums; only
float rounding inside the GEMMs may differ).

Each layer owns its windowed step (``layer.deconv_window``, beside its ``deconv``;
composite layers delegate to their children), working on a
:class:`~zfnet.nn.window.Window`: the window of every unit at once, ``(U, C, n, n)``,
with a per-unit origin.  This module starts the windows at the chosen units, walks
the same top-down path as :meth:`Network.deconv <zfnet.models.Network.deconv>`
(``model.path_down``), and places the pixel windows in the image.  A window may reach past the map (a border unit, or padding):
those positions do not exist, so after each transposed convolution they are set to
zero, which is exactly what the dense pass does when it crops its padding.

Batching: the window size depends only on the layer, so any set of units of one
layer -- the top 9 of a channel, or many channels at once -- runs as one batch.

References
----------
Zeiler & Fergus (2014), section 2.1 and Fig. 1.
"""

from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from ..errors import ConfigError, ShapeError
from ..nn import Trace, check_rule
from ..nn.window import Window, WindowUnsupported

__all__ = ["project_units_windowed", "window_sizes", "WindowUnsupported"]


def window_sizes(model, layer: str) -> list[tuple[str, int]]:
    """Side of the window each level needs when projecting one unit of ``layer``.

    ``[(activation name, side), ...]`` from ``layer`` down to ``"input"``, along one
    axis, before clipping to the map: ``n -> (n - 1) s + k`` per layer.  For ZFNet's
    conv5: conv5 1, conv4 3, conv3 5, norm2/pool2 7, conv2 15, norm1/pool1 33, conv1 67,
    input 139.
    """
    path = [lay for lay, _ in model.path_down(layer)]
    out, n = [(layer, 1)], 1
    for j, lay in enumerate(path):
        rf = lay.rf()
        if rf is None:
            raise WindowUnsupported(f"{lay.name} has no spatial receptive field")
        k, s, _ = rf
        n = (n - 1) * s + k
        out.append((path[j + 1].name if j + 1 < len(path) else "input", n))
    return out


def project_units_windowed(model, x_or_trace, layer: str, units, rule: str = "deconvnet", crops: bool = False):
    """Project single activations to pixels, computing only inside their receptive fields.

    Equal to :func:`zfnet.deconvnet.project_units` (the dense projection) up to float
    rounding, several times faster for one or a few units: see the module docstring.

    Parameters
    ----------
    model : Network
        Every layer from ``layer`` down has a ``deconv_window`` step (conv, max and
        average pooling, LRN, ReLU, dropout, softmax, fire modules, concatenations).
    x_or_trace : array (N, 3, H, W) or Trace
        The images, or a trace of them made with ``caches=True`` up to ``layer``.
    layer : str
        A spatial activation (conv, pool, fire; not fully connected).
    units : int array, shape (U, 4)
        Rows ``(image index, channel, y, x)``.  All units go down together.
    rule : {"deconvnet", "backprop", "guided"}
    crops : bool
        Return the pixel windows instead of full images (see Returns).

    Returns
    -------
    array, shape (U, 3, H, W)
        ``out[u]`` is zero outside unit ``u``'s receptive field; or, with
        ``crops=True``, ``(windows, origins)``: ``windows`` (U, 3, S, S) with ``S``
        the receptive-field side (zero where it lies outside the image) and
        ``origins`` (U, 2) the ``(y, x)`` of each window's corner in the image (may
        be negative).

    Raises
    ------
    WindowUnsupported
        When a layer on the way down has no windowed step; use the dense
        :func:`~zfnet.deconvnet.project_units` then.

    References
    ----------
    Zeiler & Fergus (2014), section 2.1.
    """
    check_rule(rule)
    trace = x_or_trace if isinstance(x_or_trace, Trace) else model.forward(x_or_trace, upto=layer)
    if layer not in trace.activations:
        raise ConfigError(f"{model.arch} has no activation {layer!r} in this trace; layers are: {', '.join(model.layer_names())}")
    act = trace.activations[layer]
    if act.ndim != 4:
        raise WindowUnsupported(f"{layer} is not a spatial layer; use the dense project_units")
    xp = get_array_module(act)
    units = np.asarray(units, dtype=np.int64).reshape(-1, 4)
    n, c, h, w = act.shape
    if len(units) and not ((0 <= units[:, 0]).all() and (units[:, 0] < n).all()):
        raise ShapeError(f"unit image indices must be in [0, {n}), got {units[:, 0].min()}..{units[:, 0].max()}")
    if len(units) and not ((0 <= units[:, 1]).all() and (units[:, 1] < c).all()):
        raise ConfigError(f"{layer} has {c} channels; a unit asks for channel {units[:, 1].max()}")
    if len(units) and not ((0 <= units[:, 2]).all() and (units[:, 2] < h).all()
                           and (0 <= units[:, 3]).all() and (units[:, 3] < w).all()):
        raise ShapeError(f"a unit position lies outside {layer}'s {h}x{w} map")

    images, oy, ox = units[:, 0], units[:, 2].copy(), units[:, 3].copy()
    # the starting signal: each unit's own activation on a 1x1 window, zero elsewhere
    sig = xp.zeros((len(units), c, 1, 1), dtype=act.dtype)  # (U, C, 1, 1)
    u, ch = xp.asarray(np.arange(len(units))), xp.asarray(units[:, 1])
    sig[u, ch, 0, 0] = act[xp.asarray(images), ch, xp.asarray(oy), xp.asarray(ox)]
    win = Window(sig, oy, ox, (h, w), images)
    for lay, start in model.path_down(layer):
        win = lay.deconv_window(win, trace, rule, start=start)

    if crops:
        return win.sig, np.stack([win.oy, win.ox], axis=1)
    height, width = trace.input_shape[2:]
    out = xp.zeros((len(units), 3, height, width), dtype=act.dtype)  # (U, 3, H, W)
    s_h, s_w = win.sig.shape[2:]
    for k in range(len(units)):  # place each window, dropping what lies outside the image
        y, x = int(win.oy[k]), int(win.ox[k])
        y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + s_h, height), min(x + s_w, width)
        out[k, :, y0:y1, x0:x1] = win.sig[k, :, y0 - y : y1 - y, x0 - x : x1 - x]
    return out
