"""The signal of a windowed projection: what each layer's ``deconv_window`` works on.

Projecting ONE activation down (paper section 2.1) starts from a signal that is
zero everywhere but at one position, and every step down is local, so at each level
the signal is zero outside a window: the unit's receptive field at that level (see
:mod:`zfnet.deconvnet.windowed` for the recurrence and the driver).  A
:class:`Window` holds that signal for ``U`` units at once, each with its own origin
and its own traced image.

A layer's ``deconv_window(win, trace, rule, start)`` is the windowed twin of its
``deconv(signal, trace, rule, start)``: the same step, computed only inside the
window.  The helpers here are the bookkeeping those steps share: cropping a traced
array (an activation for a ReLU mask, switches for unpooling) to the window, moving
the window one level down after a transposed filtering, and adding the windows of
two branches.

References
----------
Zeiler & Fergus (2014), section 2.1.
"""

from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from ..errors import ConfigError

__all__ = ["Window", "WindowUnsupported"]


class WindowUnsupported(ConfigError):
    """A layer on the way down has no windowed step (fully connected, adaptive pooling)."""


class Window:
    """The signal of U units on a window of one level.

    Attributes
    ----------
    sig : array, shape (U, C, h, w)
        The signal inside each unit's window.
    oy, ox : int64 ndarray, shape (U,)
        Each window's top-left corner in the level's map (may be negative, or reach
        past the map: those positions do not exist and hold zero).
    size : (int, int)
        ``(H, W)`` of the whole level.
    images : int64 ndarray, shape (U,)
        Which traced image each unit belongs to (its switches and ReLU masks).
    """

    def __init__(self, sig, oy, ox, size, images):
        self.sig, self.oy, self.ox, self.size, self.images = sig, oy, ox, tuple(size), images

    def like(self, sig) -> "Window":
        """The same window (origins, level) holding another signal, e.g. after a pointwise step."""
        return Window(sig, self.oy, self.ox, self.size, self.images)

    def channels(self, lo: int, hi: int) -> "Window":
        """Channels ``lo:hi`` of the signal (one branch's block of a concatenation)."""
        return self.like(self.sig[:, lo:hi])

    def crop(self, a):
        """``out[u] = a[images[u], :, oy[u]:oy[u]+h, ox[u]:ox[u]+w]``, zero where that leaves ``a``.

        ``a`` is a traced (N, C, H, W) array of this level; the result (U, C, h, w).
        """
        return crop(a, self.images, self.oy, self.ox, *self.sig.shape[2:])

    def valid(self):
        """(U, 1, h, w) bool: which window positions lie inside the level's map."""
        xp = get_array_module(self.sig)
        h, w = self.sig.shape[2:]
        return (_inside(self.oy, h, self.size[0], xp)[:, None, :, None]
                & _inside(self.ox, w, self.size[1], xp)[:, None, None, :])

    def overhangs(self) -> bool:
        """Whether any unit's window reaches past the map (then positions must be masked)."""
        h, w = self.sig.shape[2:]
        return bool((self.oy < 0).any() or (self.ox < 0).any()
                    or (self.oy + h > self.size[0]).any() or (self.ox + w > self.size[1]).any())

    def down(self, sig, stride, padding, size) -> "Window":
        """The window one level down after a transposed filtering with no padding.

        ``sig`` (U, C', (h-1) sH + kH, (w-1) sW + kW) is the result of filtering this
        window's signal with stride ``stride`` and padding 0; its origin is
        ``o s - p`` per axis.  Positions that fall outside the ``size`` map are set
        to zero, which is what the dense pass does when it crops its padding.
        """
        (sh, sw), (ph, pw) = stride, padding
        win = Window(sig, self.oy * sh - ph, self.ox * sw - pw, size, self.images)
        if win.overhangs():
            win.sig = sig * win.valid()  # (U, C', h', w')
        return win

    def __add__(self, other: "Window") -> "Window":
        """Sum two windowed signals of one level on the smallest window holding both."""
        xp = get_array_module(self.sig)
        oy, ox = np.minimum(self.oy, other.oy), np.minimum(self.ox, other.ox)
        h = int(max((self.oy + self.sig.shape[2] - oy).max(), (other.oy + other.sig.shape[2] - oy).max()))
        w = int(max((self.ox + self.sig.shape[3] - ox).max(), (other.ox + other.sig.shape[3] - ox).max()))
        out = xp.zeros(self.sig.shape[:2] + (h, w), dtype=self.sig.dtype)  # (U, C, h, w)
        for part in (self, other):
            for u in range(len(oy)):
                dy, dx = int(part.oy[u] - oy[u]), int(part.ox[u] - ox[u])
                out[u, :, dy : dy + part.sig.shape[2], dx : dx + part.sig.shape[3]] += part.sig[u]
        return Window(out, oy, ox, self.size, self.images)


def crop(a, images, oy, ox, h: int, w: int):
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
