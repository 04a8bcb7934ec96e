"""Parallel branches that read one input and are concatenated along channels.

This is the one kind of fan-out a Caffe deploy net commonly has: a blob read by
several layer chains whose outputs meet again in a ``Concat`` layer (SqueezeNet's
fire modules, GoogLeNet's inception modules).  :class:`Concat` holds the chains;
a chain may be empty (the input itself is one of the concatenated blobs).

The deconvnet through a concatenation (paper section 2.1 extended, as for
SqueezeNet's :class:`~zfnet.models.squeezenet.Fire`): split the signal into each
branch's channel block, project each block down its own chain, and *add* the
results in the shared input space (every branch read the same input, so their
contributions add, exactly as gradients of a fan-out add).
"""

from __future__ import annotations

import copy

from ..backend import get_array_module
from ..errors import ConfigError, ShapeError
from .layers import Layer
from .window import Window

__all__ = ["Concat", "chain_rf"]


def chain_rf(layers) -> tuple[int, int, int] | None:
    """``(K, S, P)`` of a chain of layers as one window: size, stride, left padding.

    ``K = 1 + sum_l (k_l - 1) J_{l-1}``, ``S = J = prod_l s_l``,
    ``P = sum_l p_l J_{l-1}`` with ``J_0 = 1``; None once a layer has no spatial
    field.  An empty chain is ``(1, 1, 0)``.
    """
    size, jump, pad = 1, 1, 0
    for layer in layers:
        step = layer.rf()
        if step is None:
            return None
        k, s, p = step
        size, pad, jump = size + (k - 1) * jump, pad + p * jump, jump * s
    return size, jump, pad


def _channels(signal, lo: int, hi: int):
    """Channels ``lo:hi`` of an array (N, C, H, W) or of a :class:`~zfnet.nn.window.Window`."""
    return signal.channels(lo, hi) if isinstance(signal, Window) else signal[:, lo:hi]


class Concat(Layer):
    """Branches ``[[layer, ...], ...]`` applied to one input, concatenated along channels.

    ``y = concat_c(b_1(x), ..., b_m(x))``; every branch must keep the same map size.
    Activations: each inner layer under its own name, the concatenation under
    ``name``.  ``state_dict()`` keys: ``<name>.<inner layer>.weight`` and so on.

    Paired with
    -----------
    :meth:`deconv`: split, project each block down its branch, add.

    Parameters
    ----------
    name : str
    branches : list of list of Layer
        In concatenation order.  A branch may be empty (identity).
    """

    _offsets = None  # set by unpadded(): where each branch's map starts inside the others'

    def __init__(self, name: str, branches: list[list[Layer]]):
        self.branches = [list(b) for b in branches]
        super().__init__(name)
        if not self.branches:
            raise ConfigError(f"{name}: a concatenation needs at least one branch")

    def _inner(self):
        return [layer for branch in self.branches for layer in branch]

    # -- the two directions -------------------------------------------------
    def forward(self, x, trace=None):
        xp = get_array_module(x)
        outs = []
        for branch in self.branches:
            h = x
            for layer in branch:
                h = layer.forward(h, trace)
                if trace is not None:  # inner activations: the deconv's ReLU masks need them
                    trace.activations[layer.name] = h
            outs.append(h)
        if self._offsets is not None:  # an unpadded copy: keep the positions every branch has
            h = min(o.shape[2] - d for o, d in zip(outs, self._offsets))
            w = min(o.shape[3] - d for o, d in zip(outs, self._offsets))
            outs = [o[:, :, d : d + h, d : d + w] for o, d in zip(outs, self._offsets)]
        sizes = {tuple(o.shape[2:]) for o in outs}
        if len(sizes) > 1:
            raise ShapeError(f"{self.name}: branch outputs {[tuple(o.shape) for o in outs]} differ in size; "
                             "only channels may differ")
        if trace is not None and (c := trace.cache(self.name)) is not None:
            c["widths"] = [int(o.shape[1]) for o in outs]
        return xp.concatenate(outs, axis=1) if len(outs) > 1 else outs[0]  # (N, sum of widths, H, W)

    def _locate(self, start: str):
        """``(branch index, layer index)`` of the inner layer recording activation ``start``."""
        for b, branch in enumerate(self.branches):
            for i, layer in enumerate(branch):
                if start in layer.names():
                    return b, i
        raise ConfigError(f"{self.name} has no activation {start!r}")

    def deconv(self, signal, trace, rule="deconvnet", start=None):
        """Project ``signal`` from activation ``start`` (default: the concatenation) to the input."""
        return self._down(signal, trace, start, lambda layer, sig, inner: layer.deconv(sig, trace, rule, start=inner))

    def deconv_window(self, win, trace, rule="deconvnet", start=None):
        """:meth:`deconv` on a window: each branch's windowed steps, the windows added."""
        return self._down(win, trace, start,
                          lambda layer, w, inner: layer.deconv_window(w, trace, rule, start=inner))

    def _down(self, signal, trace, start, step):
        """The split-project-add walk shared by :meth:`deconv` and :meth:`deconv_window`.

        ``signal`` is an array or a :class:`~zfnet.nn.window.Window` (both slice by
        channel block and add); ``step(layer, signal, start)`` is one inner layer's
        step down.
        """
        if start is None or start == self.name:
            total, lo = None, 0
            for branch, width in zip(self.branches, trace.caches[self.name]["widths"]):
                part = _channels(signal, lo, lo + width)
                lo += width
                for layer in reversed(branch):
                    part = step(layer, part, None)
                total = part if total is None else total + part  # every branch read the same input: add
            return total
        b, i = self._locate(start)
        branch = self.branches[b]
        for j in range(i, -1, -1):
            inner = start if j == i and start != branch[j].name else None
            signal = step(branch[j], signal, inner)
        return signal

    def backward(self, dy, trace, input_grad=True):
        """Gradient: the same split and sum as :meth:`deconv`, with each layer's backward."""
        widths = self._saved(trace, "widths")[0]
        total, lo = None, 0
        for branch, width in zip(self.branches, widths):
            part = dy[:, lo : lo + width]
            lo += width
            for j in range(len(branch) - 1, -1, -1):
                part = branch[j].backward(part, trace, input_grad=input_grad or j > 0)
            if input_grad:
                total = part if total is None else total + part
        return total

    # The training flag and the gradients live in the inner layers.
    @property
    def training(self):
        return any(layer.training for layer in self._inner())

    @training.setter
    def training(self, mode):
        for layer in self._inner() if hasattr(self, "branches") else ():
            layer.training = mode

    @property
    def grads(self):
        return {f"{layer.name}.{k}": v for layer in self._inner() for k, v in layer.grads.items()}

    @grads.setter
    def grads(self, value):
        pass  # Layer.__init__ resets it; the inner layers own their gradients

    # -- bookkeeping ----------------------------------------------------------
    def names(self):
        return [n for layer in self._inner() for n in layer.names()] + [self.name]

    def params(self):
        return {f"{layer.name}.{k}": v for layer in self._inner() for k, v in layer.params().items()}

    def set_param(self, key, value):
        for layer in self._inner():
            prefix = layer.name + "."
            if key.startswith(prefix) and key[len(prefix):] in layer.params():
                layer.set_param(key[len(prefix):], value)
                return
        raise ConfigError(f"{self.name} has no parameter {key!r}")

    def rf(self):
        """The union of the branches' fields: ``(K, S, P)`` covering every branch's window.

        With branch windows ``(K_b, S, P_b)`` (one stride, or the maps would differ):
        ``P = max_b P_b`` and ``K = max_b (K_b - P_b) + P``.
        """
        fields = [chain_rf(branch) for branch in self.branches]
        if any(f is None for f in fields):
            return None
        strides = {f[1] for f in fields}
        if len(strides) > 1:
            raise ShapeError(f"{self.name}: branches have strides {sorted(strides)}; a concatenation needs one")
        pad = max(f[2] for f in fields)
        return max(f[0] - f[2] for f in fields) + pad, strides.pop(), pad

    def unpadded(self):
        """A copy with unpadded branches whose maps are cropped to the positions they share.

        Without padding, branch ``b`` (window ``(K_b, S, P_b)``) starts
        ``(P - P_b) / S`` positions before the union window ``(K, S, P)`` of
        :meth:`rf`; the copy drops those positions from each branch before
        concatenating, so its output at ``o`` is the padded layer's output at the
        unit whose field starts at ``o S`` of the (unpadded) input.
        """
        net = copy.copy(self)
        net.branches = [[layer.unpadded() for layer in branch] for branch in self.branches]
        _, stride, pad = self.rf()
        net._offsets = [(pad - chain_rf(branch)[2]) // stride for branch in self.branches]
        return net

    def rf_steps(self):
        # Inner activations have no entry: the recurrence is a chain, the branches are not.
        return [(self.name, self.rf())]

    def output_shape(self, shape):
        outs = []
        for branch in self.branches:
            s = shape
            for layer in branch:
                s = layer.output_shape(s)
            outs.append(s)
        if len({tuple(o[2:]) for o in outs}) > 1:
            raise ShapeError(f"{self.name}: branch outputs {outs} differ in size; only channels may differ")
        return (shape[0], sum(o[1] for o in outs)) + tuple(outs[0][2:])

    def describe(self):
        parts = [" -> ".join(layer.name for layer in branch) or "(input)" for branch in self.branches]
        return "concat of " + " | ".join(parts)

    def spec(self):
        return {"type": "concat", "name": self.name,
                "branches": [[layer.spec() for layer in branch] for branch in self.branches]}

    @classmethod
    def from_spec(cls, s):
        from .spec import layer_from_spec

        return cls(s["name"], [[layer_from_spec(t) for t in branch] for branch in s["branches"]])
