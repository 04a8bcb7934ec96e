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

Each step works on the window of every unit at once, ``(U, C, n, n)``, with a
per-unit origin.  A window may reach past the map (a border unit, or padding):
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
from ..nn import LRN, AvgPool2d, Concat, Conv2d, Dropout, MaxPool2d, ReLU, Softmax, Trace, check_rule, relu_rule
from ..ops import conv_transpose2d, max_unpool2d
from ..ops.avg_pool import avg_pool_divisor

__all__ = ["project_units_windowed", "window_sizes", "WindowUnsupported"]


class WindowUnsupported(ConfigError):
    """A layer on the way down has no windowed step (fully connected, adaptive pooling)."""


class _Window:
    """The signal of U units on a window of one level: ``sig`` (U, C, h, w), origins ``oy, ox`` (U,)."""

    def __init__(self, sig, oy, ox, size):
        self.sig, self.oy, self.ox, self.size = sig, oy, ox, size  # size: (H, W) of the whole level


def _crop(a, images, oy, ox, h: int, w: int):
    """``out[u] = a[images[u], :, oy[u]:oy[u]+h, ox[u]:ox[u]+w]``, zero where that leaves ``a``.

    ``a`` is (N, C, H, W); the result (U, C, h, w).
    """
    xp = get_array_module(a)
    _, c, hh, ww = a.shape
    out = xp.zeros((len(images), c, h, w), dtype=a.dtype)
    for u, (i, y, x) in enumerate(zip(images, oy, ox)):
        y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + h, hh), min(x + w, ww)
        if y1 > y0 and x1 > x0:
            out[u, :, y0 - y : y1 - y, x0 - x : x1 - x] = a[i, :, y0:y1, x0:x1]
    return out


def _inside(origin, n: int, size: int, xp):
    """(U, n) bool: which of the n window positions from ``origin`` lie in ``[0, size)``."""
    pos = xp.asarray(origin).reshape(-1, 1) + xp.arange(n).reshape(1, -1)  # (U, n)
    return (pos >= 0) & (pos < size)


def _overhangs(oy, ox, window, size) -> bool:
    """Whether any unit's window reaches past the ``size`` map (then positions must be masked)."""
    return bool((oy < 0).any() or (ox < 0).any() or (oy + window[0] > size[0]).any() or (ox + window[1] > size[1]).any())


def _conv_step(conv: Conv2d, win: _Window, trace: Trace, images, rule: str) -> _Window:
    """Rectify by ``rule``, then the transposed filters with no padding, then drop what left the map."""
    xp = get_array_module(win.sig)
    sig = win.sig
    u, _, h, w = sig.shape
    if conv.relu:
        positive = None
        if rule != "deconvnet":  # the deconvnet rule ignores the forward pass
            positive = _crop(trace.activations[conv.name], images, win.oy, win.ox, h, w) > 0
        sig = relu_rule(sig, positive, rule)
    (sh, sw), (ph, pw) = conv.stride, conv.padding
    weight = conv.filters()  # the weight, or with dilation the filter with zeros between taps
    if conv.groups == 1:
        # Channels that are zero in every window add nothing: leave them out of the GEMM.
        # (Near the top most are: a conv5 unit's signal is one channel.)
        live = xp.flatnonzero(sig.reshape(u, sig.shape[1], -1).any(axis=(0, 2)))
        if 2 * len(live) <= sig.shape[1]:
            sig, weight = sig[:, live], weight[live]
    # padding 0: keep every position the filters reach; origin moves by the padding instead
    sig = conv_transpose2d(sig, weight, None, (sh, sw), 0, conv.groups)  # (U, C_in, (h-1)sH+kH, (w-1)sW+kW)
    oy, ox = win.oy * sh - ph, win.ox * sw - pw
    size = tuple(trace.caches[conv.name]["in_hw"])
    if _overhangs(oy, ox, sig.shape[2:], size):
        keep = (_inside(oy, sig.shape[2], size[0], xp)[:, None, :, None]
                & _inside(ox, sig.shape[3], size[1], xp)[:, None, None, :])  # (U, 1, h', w')
        sig = sig * keep
    return _Window(sig, oy, ox, size)


def _unpool_step(pool: MaxPool2d, win: _Window, trace: Trace, images) -> _Window:
    """Unpool into the window of the pooling input, with switches made local to it."""
    xp = get_array_module(win.sig)
    u, c, h, w = win.sig.shape
    (kh, kw), (sh, sw), (ph, pw) = pool.kernel_size, pool.stride, pool.padding
    size = tuple(trace.caches[pool.name]["in_hw"])
    oy, ox = win.oy * sh - ph, win.ox * sw - pw
    hi, wi = (h - 1) * sh + kh, (w - 1) * sw + kw
    switches = _crop(trace.switches[pool.name], images, win.oy, win.ox, h, w)  # (U, C, h, w) flat in (H, W)
    rows = switches // size[1]
    # local flat index (row - oy) * wi + (col - ox), with col = switch - row * W
    local = switches - rows * (size[1] - wi) - xp.asarray(oy * wi + ox).reshape(-1, 1, 1, 1)
    if _overhangs(win.oy, win.ox, (h, w), win.size):
        # positions past the map hold no switch (the crop filled 0); their signal is 0, so
        # any index inside the window will do
        valid = (_inside(win.oy, h, win.size[0], xp)[:, None, :, None]
                 & _inside(win.ox, w, win.size[1], xp)[:, None, None, :])
        local = xp.where(valid, local, 0)
    return _Window(max_unpool2d(win.sig, local, (hi, wi)), oy, ox, size)


def _relu_step(layer: ReLU, win: _Window, trace: Trace, images, rule: str) -> _Window:
    """A rectifier on its own: the rule on the window, with the forward mask cropped to it."""
    positive = None
    if rule != "deconvnet":
        positive = _crop(trace.activations[layer.name], images, win.oy, win.ox, *win.sig.shape[2:]) > 0
    return _Window(relu_rule(win.sig, positive, rule), win.oy, win.ox, win.size)


def _avg_step(pool: AvgPool2d, win: _Window, trace: Trace, images) -> _Window:
    """Average unpooling on the window: divide by each position's divisor, spread with a box filter."""
    xp = get_array_module(win.sig)
    u, c, h, w = win.sig.shape
    (kh, kw), (sh, sw), (ph, pw) = pool.kernel_size, pool.stride, pool.padding
    size = tuple(trace.caches[pool.name]["in_hw"])
    div = avg_pool_divisor(xp, size, (kh, kw), (sh, sw), (ph, pw), win.size)  # (H_out, W_out)
    # the divisors under each window; positions past the map hold no signal, so 1 will do there
    local = _crop(xp.broadcast_to(div, (1, 1) + div.shape), np.zeros(u, np.int64), win.oy, win.ox, h, w)
    local = xp.where(local > 0, local, 1).astype(win.sig.dtype)  # (U, 1, h, w)
    box = xp.ones((c, 1, kh, kw), dtype=win.sig.dtype)  # one box filter per channel (groups = C)
    sig = conv_transpose2d(win.sig / local, box, None, (sh, sw), 0, c)  # (U, C, (h-1)sH+kH, (w-1)sW+kW)
    oy, ox = win.oy * sh - ph, win.ox * sw - pw
    if _overhangs(oy, ox, sig.shape[2:], size):
        keep = (_inside(oy, sig.shape[2], size[0], xp)[:, None, :, None]
                & _inside(ox, sig.shape[3], size[1], xp)[:, None, None, :])  # (U, 1, h', w')
        sig = sig * keep
    return _Window(sig, oy, ox, size)


def _concat_step(layer: Concat, win: _Window, trace: Trace, images, rule: str, start: str | None) -> _Window:
    """Split the window's channels by branch, project each down its branch, add the windows."""
    if start is None or start == layer.name:
        total, lo = None, 0
        for branch, width in zip(layer.branches, trace.caches[layer.name]["widths"]):
            part = _Window(win.sig[:, lo : lo + width], win.oy, win.ox, win.size)
            lo += width
            for inner in reversed(branch):
                part = _step(inner, part, trace, images, rule, None)
            total = part if total is None else _add_windows(total, part)
        return total
    b, i = layer._locate(start)
    branch = layer.branches[b]
    for j in range(i, -1, -1):
        inner_start = start if j == i and start != branch[j].name else None
        win = _step(branch[j], win, trace, images, rule, inner_start)
    return win


def _add_windows(a: _Window, b: _Window) -> _Window:
    """Sum two windowed signals of one level on the smallest window holding both."""
    xp = get_array_module(a.sig)
    oy, ox = np.minimum(a.oy, b.oy), np.minimum(a.ox, b.ox)
    h = int(max((a.oy + a.sig.shape[2] - oy).max(), (b.oy + b.sig.shape[2] - oy).max()))
    w = int(max((a.ox + a.sig.shape[3] - ox).max(), (b.ox + b.sig.shape[3] - ox).max()))
    out = xp.zeros(a.sig.shape[:2] + (h, w), dtype=a.sig.dtype)
    for part in (a, b):
        for u in range(len(oy)):
            dy, dx = int(part.oy[u] - oy[u]), int(part.ox[u] - ox[u])
            out[u, :, dy : dy + part.sig.shape[2], dx : dx + part.sig.shape[3]] += part.sig[u]
    return _Window(out, oy, ox, a.size)


def _is_fire(layer) -> bool:
    return all(isinstance(getattr(layer, b, None), Conv2d) for b in ("squeeze", "expand1x1", "expand3x3"))


def _step(layer, win: _Window, trace: Trace, images, rule: str, start: str | None) -> _Window:
    """One layer of the windowed top-down pass (the windowed twin of ``layer.deconv``)."""
    if isinstance(layer, Conv2d):
        return _conv_step(layer, win, trace, images, rule)
    if isinstance(layer, MaxPool2d):
        return _unpool_step(layer, win, trace, images)
    if isinstance(layer, (LRN, Dropout, Softmax)):
        return win  # passed through, as in layer.deconv
    if isinstance(layer, ReLU):
        return _relu_step(layer, win, trace, images, rule)
    if isinstance(layer, AvgPool2d):
        return _avg_step(layer, win, trace, images)
    if isinstance(layer, Concat):  # a Caffe graph's branches meeting in a Concat
        return _concat_step(layer, win, trace, images, rule, start)
    if _is_fire(layer):  # SqueezeNet's fire module: split, project each branch, add, squeeze
        start = layer.name if start is None else start
        if start == layer.name:
            e1 = layer.expand1x1.weight.shape[0]
            one = _conv_step(layer.expand1x1, _Window(win.sig[:, :e1], win.oy, win.ox, win.size), trace, images, rule)
            three = _conv_step(layer.expand3x3, _Window(win.sig[:, e1:], win.oy, win.ox, win.size), trace, images, rule)
            win = _add_windows(one, three)
        elif start in (layer.expand1x1.name, layer.expand3x3.name):
            branch = layer.expand1x1 if start == layer.expand1x1.name else layer.expand3x3
            win = _conv_step(branch, win, trace, images, rule)
        elif start != layer.squeeze.name:
            raise ConfigError(f"{layer.name} has no activation {start!r}")
        return _conv_step(layer.squeeze, win, trace, images, rule)
    raise WindowUnsupported(f"layer {layer.name!r} ({type(layer).__name__}) has no windowed projection step")


def window_sizes(model, layer: str) -> list[tuple[str, int]]:
    """Side of the window each level needs when projecting one unit of ``layer``.

    ``[(activation name, side), ...]`` from ``layer`` down to ``"input"``, along one
    axis, before clipping to the map: ``n -> (n - 1) s + k`` per layer.  For ZFNet's
    conv5: conv5 1, conv4 3, conv3 5, norm2/pool2 7, conv2 15, norm1/pool1 33, conv1 67,
    input 139.
    """
    top = model._index(layer)
    out, n = [(layer, 1)], 1
    for i in range(top, -1, -1):
        rf = model.layers[i].rf()
        if rf is None:
            raise WindowUnsupported(f"{model.layers[i].name} has no spatial receptive field")
        k, s, _ = rf
        n = (n - 1) * s + k
        out.append((model.layers[i - 1].name if i else "input", n))
    return out


def project_units_windowed(model, x_or_trace, layer: str, units, rule: str = "deconvnet", crops: bool = False):
    """Project single activations to pixels, computing only inside their receptive fields.

    Equal to :func:`zfnet.deconvnet.project_units` (the dense projection) up to float
    rounding, several times faster for one or a few units: see the module docstring.

    Parameters
    ----------
    model : Network
        Built from Conv2d, MaxPool2d, AvgPool2d, LRN, ReLU, Dropout, Softmax, fire
        modules and concatenations up to ``layer``.
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
    win = _Window(sig, oy, ox, (h, w))
    top = model._index(layer)
    for i in range(top, -1, -1):
        lay = model.layers[i]
        start = layer if i == top and layer != lay.name else None
        win = _step(lay, win, trace, images, rule, start)

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
