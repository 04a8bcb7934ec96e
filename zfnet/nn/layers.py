"""Layers: parameters plus a ``forward`` and the matching ``deconv`` step.

Each layer knows how to go up (``forward``) and how to send a signal back down
(``deconv``) using what its forward pass left in the :class:`~zfnet.nn.Trace`.  The
deconvnet, backprop and guided backprop all run through ``deconv``; they differ only
in the ``rule`` handed to :func:`~zfnet.nn.relu_rule`.

Training adds a third direction, ``backward(dy, trace)``: the gradient of the loss
with respect to the layer's input, with the parameter gradients left in
``layer.grads`` (keyed like ``params()``).  In training mode (``layer.training``)
the forward pass saves what backward needs in the trace's caches (inputs and
outputs, as references, not copies).  The deconv steps above are unchanged: for
max pooling, the transposed convolution and adaptive pooling the deconv step IS the
gradient; only the ReLU rule and LRN differ.

A layer's ``rf()`` gives ``(kernel, stride, padding)`` along one spatial axis for
the receptive-field recurrence, ``(1, 1, 0)`` for pointwise layers and ``None`` for
layers after which space is gone (flatten, fully connected, global pooling).

A layer's ``spec()`` is its structure as a JSON-able dict (type, name and every
hyperparameter, no weights); :func:`zfnet.nn.layer_from_spec` builds the layer back.
Networks built from a Caffe file are saved and reloaded through these dicts
(:mod:`zfnet.models.caffe_graph`).
"""

from __future__ import annotations

import copy
import math

import numpy as np

from ..backend import get_array_module
from ..errors import ConfigError, ShapeError
from ..ops import (
    conv2d,
    conv2d_bias_grad,
    conv2d_weight_grad,
    conv_transpose2d,
    dropout_backward,
    linear,
    linear_backward,
    lrn,
    lrn_backward,
    max_pool2d,
    max_unpool2d,
    relu,
    relu_backward,
    softmax,
)
from ..ops.conv import conv2d_grads_from_columns, conv2d_input_grad, conv2d_relu
from ..ops._shape import conv_out_size, pair, pool_out_size
from ..ops.avg_pool import avg_pool2d, avg_pool_divisor, avg_unpool2d
from ..ops.norm import lrn_saving_scale, lrn_within_channel, lrn_within_channel_backward
from .rules import relu_rule
from .trace import Trace
from .window import Window, WindowUnsupported, crop

__all__ = [
    "Layer",
    "Conv2d",
    "MaxPool2d",
    "LRN",
    "Linear",
    "Dropout",
    "Flatten",
    "AdaptiveAvgPool2d",
    "ReLU",
    "AvgPool2d",
    "Softmax",
    "LRN_REGIONS",
    "backward_layers",
]


class Layer:
    """Base class.  Subclasses set ``name`` and implement ``forward``/``deconv``."""

    def __init__(self, name: str):
        self.name = name
        self.training = False
        self.grads: dict = {}  # parameter gradients of the last backward(), keyed like params()

    # -- the two directions -------------------------------------------------
    def forward(self, x, trace: Trace | None = None):
        raise NotImplementedError

    def deconv(self, signal, trace: Trace, rule: str = "deconvnet", start: str | None = None):
        """Send ``signal`` (in this layer's output space) down to its input space.

        ``start`` is used by composite layers (e.g. SqueezeNet's fire module) when
        the projection starts at one of their inner activations.
        """
        raise NotImplementedError

    def deconv_window(self, win: Window, trace: Trace, rule: str = "deconvnet", start: str | None = None) -> Window:
        """The windowed twin of :meth:`deconv`: the same step, computed only inside ``win``.

        ``win`` holds the signal of U units, each on the window of this layer's
        output where it can be nonzero (:class:`~zfnet.nn.window.Window`); the
        result is the window of this layer's input.  Used by
        :func:`zfnet.deconvnet.project_units_windowed`.

        Raises
        ------
        WindowUnsupported
            This layer has no windowed step (the default: fully connected layers,
            adaptive pooling); the caller projects densely instead.
        """
        raise WindowUnsupported(f"layer {self.name!r} ({type(self).__name__}) has no windowed projection step")

    def backward(self, dy, trace: Trace, input_grad: bool = True):
        """Back-propagate ``dy = dL/d(output)``: return ``dL/d(input)``, set ``self.grads``.

        Needs the trace of a forward pass run in training mode with caches.  With
        ``input_grad=False`` the input gradient is not computed and None is returned
        (the first layer's, which nothing uses in training).
        """
        raise NotImplementedError(f"{self.name}: {type(self).__name__} has no backward()")

    def _positive(self, trace, rule: str, win: Window | None = None):
        """The forward ReLU mask ``y > 0`` a ``rule`` needs (cropped to ``win``), or None.

        The deconvnet rule ignores the forward pass, so it needs no activation: a
        trace recorded with ``keep=`` projects with it.  The other rules need this
        layer's activation; a trace without it is a ConfigError saying how to get one.
        """
        if rule == "deconvnet":
            return None
        if self.name not in trace.activations:
            raise ConfigError(f"{self.name}: the {rule!r} rule needs this layer's activation, which the trace "
                              "did not keep; record the forward pass without keep= (or keep it)")
        act = trace.activations[self.name]
        return (act if win is None else win.crop(act)) > 0

    def _training_cache(self, trace):
        """This layer's cache dict when the forward pass must save for backward, else None."""
        if self.training and trace is not None:
            return trace.cache(self.name)
        return None

    def _saved(self, trace, *keys):
        """What the training-mode forward pass saved, or a ConfigError saying how to get it."""
        c = trace.caches.get(self.name, {}) if trace is not None else {}
        missing = [k for k in keys if k not in c]
        if missing:
            raise ConfigError(
                f"{self.name}: backward() needs {', '.join(missing)} saved by the forward pass; "
                "run the forward in training mode (model.train()) with caches=True"
            )
        return [c[k] for k in keys]

    # -- bookkeeping ----------------------------------------------------------
    def params(self) -> dict:
        """Parameter arrays by short name (``"weight"``, ``"bias"``), in state-dict order."""
        return {}

    def set_param(self, key: str, value) -> None:
        setattr(self, key, value)

    def names(self) -> list[str]:
        """Activation names this layer records (composite layers record several)."""
        return [self.name]

    def rf(self):
        """``(kernel, stride, padding)`` along one axis; None if space ends here."""
        return (1, 1, 0)

    def unpadded(self) -> "Layer":
        """A copy with no padding (parameters shared): see :meth:`zfnet.models.Network.unpadded`."""
        layer = copy.copy(self)
        if hasattr(layer, "padding"):
            layer.padding = (0, 0)
        return layer

    def rf_steps(self) -> list[tuple[str, tuple[int, int, int] | None]]:
        """``[(activation name, rf triple)]`` in order; composite layers list their parts."""
        return [(self.name, self.rf())]

    def output_shape(self, shape: tuple) -> tuple:
        """Shape of the output for an input of ``shape`` (N, C, H, W)."""
        return shape

    def describe(self) -> str:
        return type(self).__name__

    def spec(self) -> dict:
        """The layer's structure as a JSON-able dict: ``type``, ``name``, hyperparameters.

        No weights.  ``layer_from_spec(layer.spec())`` builds an equal layer (fresh
        weights of the same shapes).
        """
        raise NotImplementedError(f"{self.name}: {type(self).__name__} has no spec()")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}: {self.describe()})"


def _he_normal(rng: np.random.Generator, shape: tuple, fan_in: int) -> np.ndarray:
    return (rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)).astype(np.float32)


def _check_channels(name: str, shape: tuple, expected: int, what: str) -> None:
    """A ShapeError when an input of ``shape`` does not have ``expected`` channels (features)."""
    if len(shape) < 2 or shape[1] != expected:
        raise ShapeError(f"{name}: input of shape {tuple(shape)} has {shape[1] if len(shape) > 1 else '?'} "
                         f"{what}, the layer expects {expected}")


class Conv2d(Layer):
    """Convolution, optionally followed by a ReLU (``relu=True``, the usual case).

    ``y = relu(conv2d(x, w, b))``; shapes ``(N, C_in, H, W) -> (N, C_out, H_out, W_out)``.

    Going down (paper section 2.1): rectify the signal by ``rule``, then filter it
    with the transposed filters, ``conv_transpose2d(r, w)``; no bias.

    ``dilation=d`` (Caffe's ``dilation``, the "a trous" convolution) spaces the
    filter taps ``d`` pixels apart.  It is computed as an ordinary convolution with
    the *dilated* filter (:meth:`filters`: ``d - 1`` zeros between taps, side
    ``(k - 1) d + 1``), so every direction (forward, deconv, backward, windowed
    projection, receptive field) is the undilated code on that filter; the
    parameter stays the ``k x k`` taps.
    """

    def __init__(self, name, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1,
                 relu=True, bias=True, rng: np.random.Generator | None = None, dilation=1):
        super().__init__(name)
        kh, kw = pair(kernel_size, "kernel_size")
        self.stride, self.padding, self.groups, self.relu = pair(stride), pair(padding), groups, relu
        self.dilation = pair(dilation, "dilation")
        if min(self.dilation) < 1:
            raise ShapeError(f"{name}: dilation must be >= 1, got {self.dilation}")
        if in_channels % groups or out_channels % groups:
            raise ShapeError(f"{name}: channels {in_channels}->{out_channels} not divisible by groups={groups}")
        rng = rng if rng is not None else np.random.default_rng(0)
        fan_in = in_channels // groups * kh * kw
        self.weight = _he_normal(rng, (out_channels, in_channels // groups, kh, kw), fan_in)
        self.bias = np.zeros(out_channels, np.float32) if bias else None

    @property
    def kernel_size(self):
        """``(kH, kW)`` of the parameter (the taps; see :meth:`filters` for dilation)."""
        return tuple(self.weight.shape[2:])

    @property
    def effective_kernel_size(self):
        """Side of the filter the convolution applies: ``(k - 1) d + 1`` per axis."""
        (kh, kw), (dh, dw) = self.kernel_size, self.dilation
        return ((kh - 1) * dh + 1, (kw - 1) * dw + 1)

    def filters(self):
        """The filter the convolution applies: the weight, with ``d - 1`` zeros between taps.

        ``(C_out, C_in / groups, (kH - 1) dH + 1, (kW - 1) dW + 1)``; the weight itself
        (no copy) when the dilation is 1.
        """
        if self.dilation == (1, 1):
            return self.weight
        xp = get_array_module(self.weight)
        (dh, dw), (eh, ew) = self.dilation, self.effective_kernel_size
        out = xp.zeros(self.weight.shape[:2] + (eh, ew), dtype=self.weight.dtype)
        out[:, :, ::dh, ::dw] = self.weight  # tap (u, v) sits at (u dH, v dW)
        return out

    @property
    def in_channels(self):
        return self.weight.shape[1] * self.groups

    def forward(self, x, trace=None):
        train = self._training_cache(trace)
        # the ReLU fused into the convolution; in training the columns (or Winograd tiles) the
        # GEMM multiplied are kept for the filter gradient (None where the op keeps none)
        y, saved = conv2d_relu(x, self.filters(), self.bias, self.stride, self.padding, self.groups,
                               relu=self.relu, keep_columns=train is not None)
        if train is not None:
            train["cols"] = saved
        if trace is not None and (c := trace.cache(self.name)) is not None:
            c["in_hw"] = tuple(x.shape[2:])
        if train is not None:
            train["x"], train["y"] = x, y
        return y

    def deconv(self, signal, trace, rule="deconvnet", start=None):
        if self.relu:
            signal = relu_rule(signal, self._positive(trace, rule), rule)
        return conv_transpose2d(signal, self.filters(), None, self.stride, self.padding, self.groups,
                                output_size=trace.caches[self.name]["in_hw"])

    def deconv_window(self, win, trace, rule="deconvnet", start=None):
        """Rectify by ``rule``, then the transposed filters with no padding, then drop what left the map."""
        xp = get_array_module(win.sig)
        sig = win.sig
        u = sig.shape[0]
        if self.relu:
            sig = relu_rule(sig, self._positive(trace, rule, win), rule)
        weight = self.filters()  # the weight, or with dilation the filter with zeros between taps
        if self.groups == 1:
            # Channels that are zero in every window add nothing: leave them out of the GEMM.
            # (Near the top most are: a conv5 unit's signal is one channel.)
            live = xp.flatnonzero(sig.reshape(u, sig.shape[1], -1).any(axis=(0, 2)))
            if 2 * len(live) <= sig.shape[1]:
                sig, weight = sig[:, live], weight[live]
        # padding 0: keep every position the filters reach; the origin moves by the padding instead
        sig = conv_transpose2d(sig, weight, None, self.stride, 0, self.groups)  # (U, C_in, (h-1)sH+kH, (w-1)sW+kW)
        return win.down(sig, self.stride, self.padding, trace.caches[self.name]["in_hw"])

    def backward(self, dy, trace, input_grad=True, dy_masked=False):
        """``dz = dy * [y > 0]``; ``dw``, ``db`` (:func:`conv2d_weight_grad`); ``dx = conv_transpose2d(dz, w)``.

        When the forward pass kept its columns or Winograd tiles (training mode,
        :func:`~zfnet.ops.conv.conv2d_relu`), ``dw`` comes from them
        (:func:`~zfnet.ops.conv.conv2d_grads_from_columns`, ``db`` from their row of
        ones where the bias had one) and ``dx`` from
        :func:`~zfnet.ops.conv.conv2d_input_grad`; the same gradients to float32
        rounding.  With dilation, the gradient of the dilated filter is taken at the taps.
        ``dy_masked=True`` says ``dy`` is already zero wherever ``y <= 0`` (a max
        pooling above took the ReLU's mask: :func:`backward_layers`), so the mask is
        not applied again.
        """
        x, y = self._saved(trace, "x", "y")
        w = self.filters()
        cols = trace.caches[self.name].get("cols")
        db = None
        relu = self.relu and not dy_masked
        if cols is not None:  # the forward's columns: no second im2col; the ReLU mask in the same pass
            dw, db, dz = conv2d_grads_from_columns(cols, dy, w.shape, y if relu else None)
        else:
            dz = relu_backward(dy, y) if relu else dy
            dw = conv2d_weight_grad(x, dz, w.shape, self.stride, self.padding, self.groups)
        if self.dilation != (1, 1):
            dw = get_array_module(dw).ascontiguousarray(dw[:, :, :: self.dilation[0], :: self.dilation[1]])  # the taps
        self.grads = {"weight": dw}
        if self.bias is not None:
            self.grads["bias"] = db if db is not None else conv2d_bias_grad(dz)
        if not input_grad:
            return None
        return conv2d_input_grad(dz, w, self.stride, self.padding, self.groups, x.shape, cols)

    def params(self):
        return {"weight": self.weight} if self.bias is None else {"weight": self.weight, "bias": self.bias}

    def rf(self):
        return (self.effective_kernel_size[0], self.stride[0], self.padding[0])

    def output_shape(self, shape):
        _check_channels(self.name, shape, self.in_channels, "channels")
        n, _, h, w = shape
        kh, kw = self.effective_kernel_size
        return (n, self.weight.shape[0], conv_out_size(h, kh, self.stride[0], self.padding[0]),
                conv_out_size(w, kw, self.stride[1], self.padding[1]))

    def describe(self):
        o, i, kh, kw = self.weight.shape
        g = f" groups {self.groups}" if self.groups > 1 else ""
        d = f" dilation {self.dilation[0]}" if self.dilation != (1, 1) else ""
        r = " + ReLU" if self.relu else ""
        return f"conv {i * self.groups}->{o} {kh}x{kw}/{self.stride[0]} pad {self.padding[0]}{g}{d}{r}"

    def spec(self):
        return {"type": "conv", "name": self.name, "in": self.in_channels, "out": self.weight.shape[0],
                "kernel": list(self.kernel_size), "stride": list(self.stride), "pad": list(self.padding),
                "dilation": list(self.dilation), "groups": self.groups, "relu": bool(self.relu),
                "bias": self.bias is not None}

    @classmethod
    def from_spec(cls, s):
        return cls(s["name"], s["in"], s["out"], tuple(s["kernel"]), tuple(s["stride"]), tuple(s["pad"]),
                   s["groups"], relu=s["relu"], bias=s["bias"], dilation=tuple(s["dilation"]))


class _Pool2d(Layer):
    """What max and average pooling share: the window geometry (kernel, stride,
    padding, ceil rounding), its receptive-field step, output size, description and
    saved spec.  Subclasses set ``_kind`` ("max" or "avg") and do the pooling."""

    _kind = ""

    def __init__(self, name, kernel_size, stride=None, padding=0, ceil_mode=False):
        super().__init__(name)
        self.kernel_size = pair(kernel_size)
        self.stride = pair(kernel_size if stride is None else stride)
        self.padding, self.ceil_mode = pair(padding), ceil_mode

    def rf(self):
        return (self.kernel_size[0], self.stride[0], self.padding[0])

    def output_shape(self, shape):
        n, c, h, w = shape
        return (n, c, pool_out_size(h, self.kernel_size[0], self.stride[0], self.padding[0], self.ceil_mode),
                pool_out_size(w, self.kernel_size[1], self.stride[1], self.padding[1], self.ceil_mode))

    def describe(self):
        ceil = " ceil" if self.ceil_mode else ""
        return f"{self._kind}-pool {self.kernel_size[0]}x{self.kernel_size[1]}/{self.stride[0]} pad {self.padding[0]}{ceil}"

    def spec(self):
        return {"type": f"{self._kind}pool", "name": self.name, "kernel": list(self.kernel_size),
                "stride": list(self.stride), "pad": list(self.padding), "ceil": bool(self.ceil_mode)}

    @classmethod
    def from_spec(cls, s):
        return cls(s["name"], tuple(s["kernel"]), tuple(s["stride"]), tuple(s["pad"]), s["ceil"])


class MaxPool2d(_Pool2d):
    """Max pooling that records its switches in the trace; unpools on the way down."""

    _kind = "max"

    def forward(self, x, trace=None):
        y, switches = max_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode)
        if trace is not None and (c := trace.cache(self.name)) is not None:
            c["in_hw"] = tuple(x.shape[2:])
            trace.switches[self.name] = switches
        if (c := self._training_cache(trace)) is not None:
            c["y"] = y  # for backward(rectified_input=True)
        return y

    def deconv(self, signal, trace, rule="deconvnet", start=None):
        return max_unpool2d(signal, trace.switches[self.name], trace.caches[self.name]["in_hw"])

    def deconv_window(self, win, trace, rule="deconvnet", start=None):
        """Unpool into the window of the pooling input, with the switches made local to it."""
        xp = get_array_module(win.sig)
        _, _, h, w = win.sig.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        size = tuple(trace.caches[self.name]["in_hw"])
        oy, ox = win.oy * sh - ph, win.ox * sw - pw
        hi, wi = (h - 1) * sh + kh, (w - 1) * sw + kw
        switches = win.crop(trace.switches[self.name])  # (U, C, h, w), flat in (H, W)
        rows = switches // size[1]
        # local flat index (row - oy) * wi + (col - ox), with col = switch - row * W
        local = switches - rows * (size[1] - wi) - xp.asarray(oy * wi + ox).reshape(-1, 1, 1, 1)
        if win.overhangs():
            # positions past the map hold no switch (the crop filled 0); their signal is 0, so
            # any index inside the window will do
            local = xp.where(win.valid(), local, 0)
        return Window(max_unpool2d(win.sig, local, (hi, wi)), oy, ox, size, win.images)

    def backward(self, dy, trace, input_grad=True, rectified_input=False):
        """The gradient of max pooling is unpooling with the switches (scatter-add).

        ``rectified_input=True`` (the input is a ReLU's output ``r``; see
        :func:`backward_layers`): the ReLU's gradient is taken here too, at the pooled
        resolution.  Unpooling puts ``dy`` only at switches, and at a switch ``r``
        equals the window's maximum ``y``, so ``unpool(dy) * [r > 0] =
        unpool(dy * [y > 0])``: the same values, from a mask a quarter the size.
        """
        (in_hw,) = self._saved(trace, "in_hw")
        if not input_grad:
            return None
        if rectified_input:
            (y,) = self._saved(trace, "y")
            dy = relu_backward(dy, y)
        return max_unpool2d(dy, trace.switches[self.name], in_hw)



LRN_REGIONS = ("across_channels", "within_channel")


class _PassThrough(Layer):
    """A layer the deconvnet passes its signal through unchanged (LRN, dropout,
    softmax: paper section 2.1 inverts only unpooling, rectification and filtering),
    densely and on a window alike."""

    def deconv(self, signal, trace, rule="deconvnet", start=None):
        return signal

    def deconv_window(self, win, trace, rule="deconvnet", start=None):
        return win


class LRN(_PassThrough):
    """Local response normalisation; passed through on the way down.

    ``region="across_channels"`` (AlexNet, ZFNet; :func:`~zfnet.ops.lrn`) divides by
    the energy of ``size`` neighbouring channels at the same position.
    ``region="within_channel"`` (Caffe's WITHIN_CHANNEL, the py-faster-rcnn ZF net;
    :func:`~zfnet.ops.norm.lrn_within_channel`) divides by the mean energy of the
    ``size x size`` neighbourhood in the same channel, so it widens the receptive
    field by ``size - 1`` (see :meth:`rf`).

    The paper's deconvnet inverts only pooling, rectification and filtering; the
    normalisation is left out (it rescales, and its effect on a single projected
    activation is small).  We document it rather than approximate an inverse; both
    regions pass the signal through unchanged.
    """

    def __init__(self, name, size=5, alpha=1e-4, beta=0.75, k=1.0, region="across_channels"):
        super().__init__(name)
        if region not in LRN_REGIONS:
            raise ConfigError(f"{name}: LRN region {region!r}, expected one of {', '.join(LRN_REGIONS)}")
        if region == "within_channel" and (size < 1 or size % 2 == 0):
            raise ShapeError(f"{name}: a within-channel LRN needs an odd size, got {size}")
        self.size, self.alpha, self.beta, self.k, self.region = size, alpha, beta, k, region

    def _ops(self):
        return (lrn, lrn_backward) if self.region == "across_channels" else (lrn_within_channel,
                                                                              lrn_within_channel_backward)

    def forward(self, x, trace=None):
        c = self._training_cache(trace)
        if c is not None and self.region == "across_channels":  # keep the denominator for backward
            y, c["scale"] = lrn_saving_scale(x, self.size, self.alpha, self.beta, self.k)
        else:
            y = self._ops()[0](x, self.size, self.alpha, self.beta, self.k)
        if c is not None:
            c["x"], c["y"] = x, y
        return y

    def backward(self, dy, trace, input_grad=True):
        """The true gradient (``lrn_backward`` or ``lrn_within_channel_backward``), unlike ``deconv``."""
        if not input_grad:
            return None
        x, y = self._saved(trace, "x", "y")
        if self.region == "across_channels":
            return lrn_backward(x, y, dy, self.size, self.alpha, self.beta, self.k,
                                scale=trace.caches[self.name].get("scale"))
        return self._ops()[1](x, y, dy, self.size, self.alpha, self.beta, self.k)

    def rf(self):
        """Pointwise across channels; a centred ``size x size`` window within a channel."""
        return (1, 1, 0) if self.region == "across_channels" else (self.size, 1, self.size // 2)

    def describe(self):
        where = "" if self.region == "across_channels" else f" within channel {self.size}x{self.size}"
        return f"LRN size {self.size}{where} alpha {self.alpha:g} beta {self.beta:g} k {self.k:g}"

    def spec(self):
        return {"type": "lrn", "name": self.name, "size": self.size, "alpha": float(self.alpha),
                "beta": float(self.beta), "k": float(self.k), "region": self.region}

    @classmethod
    def from_spec(cls, s):
        return cls(s["name"], s["size"], s["alpha"], s["beta"], s["k"], s["region"])


class Linear(Layer):
    """Fully connected layer ``y = x w^T + b``, optionally rectified."""

    def __init__(self, name, in_features, out_features, relu=True, rng: np.random.Generator | None = None,
                 bias=True):
        super().__init__(name)
        rng = rng if rng is not None else np.random.default_rng(0)
        self.relu = relu
        self.weight = _he_normal(rng, (out_features, in_features), in_features)
        self.bias = np.zeros(out_features, np.float32) if bias else None

    def forward(self, x, trace=None):
        y = linear(x, self.weight, self.bias)
        y = relu(y) if self.relu else y
        if (c := self._training_cache(trace)) is not None:
            c["x"], c["y"] = x, y
        return y

    def backward(self, dy, trace, input_grad=True):
        """``dz = dy * [y > 0]``, then :func:`linear_backward`."""
        x, y = self._saved(trace, "x", "y")
        dz = relu_backward(dy, y) if self.relu else dy
        dx, dw, db = linear_backward(x, self.weight, dz)
        self.grads = {"weight": dw} if self.bias is None else {"weight": dw, "bias": db}
        return dx if input_grad else None

    def deconv(self, signal, trace, rule="deconvnet", start=None):
        if self.relu:
            signal = relu_rule(signal, self._positive(trace, rule), rule)
        return signal @ self.weight  # (N, F_in): the transposed "filter"

    def params(self):
        return {"weight": self.weight} if self.bias is None else {"weight": self.weight, "bias": self.bias}

    def rf(self):
        return None

    def output_shape(self, shape):
        if len(shape) != 2:
            raise ShapeError(f"{self.name}: a fully connected layer takes (N, F) inputs, got {tuple(shape)}")
        _check_channels(self.name, shape, self.weight.shape[1], "features")
        return (shape[0], self.weight.shape[0])

    def describe(self):
        return f"fc {self.weight.shape[1]}->{self.weight.shape[0]}" + (" + ReLU" if self.relu else "")

    def spec(self):
        return {"type": "fc", "name": self.name, "in": self.weight.shape[1], "out": self.weight.shape[0],
                "relu": bool(self.relu), "bias": self.bias is not None}

    @classmethod
    def from_spec(cls, s):
        return cls(s["name"], s["in"], s["out"], relu=s["relu"], bias=s["bias"])


class Dropout(_PassThrough):
    """Dropout: identity at inference (``training=False``); the deconvnet passes through.

    In training mode each unit is zeroed with probability ``p`` and survivors are
    scaled by ``1/(1-p)`` (inverted dropout), so inference needs no rescaling.
    """

    def __init__(self, name, p=0.5, seed: int = 0):
        super().__init__(name)
        self.p = p
        self.rng = np.random.default_rng(seed)

    def forward(self, x, trace=None):
        if not self.training or self.p == 0:
            return x
        xp = get_array_module(x)
        keep = xp.asarray(self.rng.random(x.shape) >= self.p)
        if trace is not None and (c := trace.cache(self.name)) is not None:
            c["keep"] = keep
        return x * keep / x.dtype.type(1 - self.p)

    def backward(self, dy, trace, input_grad=True):
        """Mask and scale ``dy`` like the forward pass; identity if the forward was (eval, p=0)."""
        if not input_grad:
            return None
        keep = trace.caches.get(self.name, {}).get("keep")
        return dy if keep is None else dropout_backward(dy, keep, self.p)

    def describe(self):
        return f"dropout p={self.p}"

    def spec(self):
        return {"type": "dropout", "name": self.name, "p": float(self.p)}

    @classmethod
    def from_spec(cls, s):
        return cls(s["name"], s["p"])


class Flatten(Layer):
    """``(N, C, H, W) -> (N, C*H*W)`` in C order (PyTorch's ``flatten(1)``)."""

    def forward(self, x, trace=None):
        if trace is not None and (c := trace.cache(self.name)) is not None:
            c["in_shape"] = tuple(x.shape[1:])
        return x.reshape(x.shape[0], -1)

    def deconv(self, signal, trace, rule="deconvnet", start=None):
        return signal.reshape((signal.shape[0],) + trace.caches[self.name]["in_shape"])

    def backward(self, dy, trace, input_grad=True):
        (in_shape,) = self._saved(trace, "in_shape")
        return dy.reshape((dy.shape[0],) + in_shape) if input_grad else None  # (N, C, H, W)

    def rf(self):
        return None

    def output_shape(self, shape):
        return (shape[0], int(np.prod(shape[1:])))

    def spec(self):
        return {"type": "flatten", "name": self.name}

    @classmethod
    def from_spec(cls, s):
        return cls(s["name"])


def _bins(n_in: int, n_out: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive pooling bins: [floor(i n_in / n_out), ceil((i+1) n_in / n_out))."""
    return [((i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)) for i in range(n_out)]


class AdaptiveAvgPool2d(Layer):
    """Average over adaptive bins to a fixed ``output_size`` (torchvision AlexNet's 6x6).

    For a 6x6 input and output this is the identity.  Going down, each value is
    spread evenly over its bin (the adjoint of averaging).
    """

    def __init__(self, name, output_size=(6, 6)):
        super().__init__(name)
        self.output_size = pair(output_size)

    def forward(self, x, trace=None):
        xp = get_array_module(x)
        n, c, h, w = x.shape
        oh, ow = self.output_size
        if trace is not None and (cc := trace.cache(self.name)) is not None:
            cc["in_hw"] = (h, w)
        if (h, w) == (oh, ow):
            return x
        y = xp.empty((n, c, oh, ow), dtype=x.dtype)
        for i, (h0, h1) in enumerate(_bins(h, oh)):
            for j, (w0, w1) in enumerate(_bins(w, ow)):
                y[:, :, i, j] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
        return y

    def deconv(self, signal, trace, rule="deconvnet", start=None):
        xp = get_array_module(signal)
        h, w = trace.caches[self.name]["in_hw"]
        oh, ow = self.output_size
        if (h, w) == (oh, ow):
            return signal
        x = xp.zeros(signal.shape[:2] + (h, w), dtype=signal.dtype)
        for i, (h0, h1) in enumerate(_bins(h, oh)):
            for j, (w0, w1) in enumerate(_bins(w, ow)):
                x[:, :, h0:h1, w0:w1] += signal[:, :, i : i + 1, j : j + 1] / ((h1 - h0) * (w1 - w0))
        return x

    def backward(self, dy, trace, input_grad=True):
        """Averaging is linear, so its gradient is its adjoint: the ``deconv`` step."""
        self._saved(trace, "in_hw")
        return self.deconv(dy, trace) if input_grad else None

    def rf(self):
        return None

    def output_shape(self, shape):
        return shape[:2] + self.output_size

    def describe(self):
        return f"adaptive avg-pool to {self.output_size[0]}x{self.output_size[1]}"

    def spec(self):
        return {"type": "adaptive_avgpool", "name": self.name, "out": list(self.output_size)}

    @classmethod
    def from_spec(cls, s):
        return cls(s["name"], tuple(s["out"]))


class ReLU(Layer):
    """A rectifier on its own (one that does not follow a convolution or fc layer directly).

    ``y = relu(x)``; going down, the signal is rectified by ``rule``
    (:func:`~zfnet.nn.relu_rule`), with the forward mask ``y > 0`` for the backprop
    and guided rules.  A Caffe ReLU right after a Convolution or InnerProduct is
    folded into that layer (``relu=True``) instead, as in our own models.
    """

    def forward(self, x, trace=None):
        y = relu(x)
        if (c := self._training_cache(trace)) is not None:
            c["y"] = y
        return y

    def deconv(self, signal, trace, rule="deconvnet", start=None):
        return relu_rule(signal, self._positive(trace, rule), rule)

    def deconv_window(self, win, trace, rule="deconvnet", start=None):
        """The rule on the window, with the forward mask cropped to it."""
        return win.like(relu_rule(win.sig, self._positive(trace, rule, win), rule))

    def backward(self, dy, trace, input_grad=True, dy_masked=False):
        """``dx = dy * [y > 0]`` (``dy`` itself when ``dy_masked``: see :func:`backward_layers`)."""
        if not input_grad:
            return None
        (y,) = self._saved(trace, "y")
        return dy if dy_masked else relu_backward(dy, y)

    def describe(self):
        return "ReLU"

    def spec(self):
        return {"type": "relu", "name": self.name}

    @classmethod
    def from_spec(cls, s):
        return cls(s["name"])


class AvgPool2d(_Pool2d):
    """Average pooling with Caffe's divisor (:func:`~zfnet.ops.avg_pool.avg_pool2d`).

    Nothing to remember on the way up: going down, each value is spread evenly over
    its window (:func:`~zfnet.ops.avg_pool.avg_unpool2d`, the adjoint), which is also
    the gradient.  (Caffe's global average pooling becomes
    :class:`AdaptiveAvgPool2d` to 1x1 instead.)
    """

    _kind = "avg"

    def _args(self):
        return self.kernel_size, self.stride, self.padding, self.ceil_mode

    def forward(self, x, trace=None):
        if trace is not None and (c := trace.cache(self.name)) is not None:
            c["in_hw"] = tuple(x.shape[2:])
        return avg_pool2d(x, *self._args())

    def deconv(self, signal, trace, rule="deconvnet", start=None):
        return avg_unpool2d(signal, trace.caches[self.name]["in_hw"], *self._args())

    def deconv_window(self, win, trace, rule="deconvnet", start=None):
        """Average unpooling on the window: divide by each position's divisor, spread with a box filter."""
        xp = get_array_module(win.sig)
        u, c, h, w = win.sig.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        size = tuple(trace.caches[self.name]["in_hw"])
        div = avg_pool_divisor(xp, size, (kh, kw), (sh, sw), (ph, pw), win.size)  # (H_out, W_out)
        # the divisors under each window; positions past the map hold no signal, so 1 will do there
        local = crop(xp.broadcast_to(div, (1, 1) + div.shape), np.zeros(u, np.int64), win.oy, win.ox, h, w)
        local = xp.where(local > 0, local, 1).astype(win.sig.dtype)  # (U, 1, h, w)
        box = xp.ones((c, 1, kh, kw), dtype=win.sig.dtype)  # one box filter per channel (groups = C)
        sig = conv_transpose2d(win.sig / local, box, None, (sh, sw), 0, c)  # (U, C, (h-1)sH+kH, (w-1)sW+kW)
        return win.down(sig, self.stride, self.padding, size)

    def backward(self, dy, trace, input_grad=True):
        """Averaging is linear: its gradient is its adjoint, the ``deconv`` step."""
        (in_hw,) = self._saved(trace, "in_hw")
        return avg_unpool2d(dy, in_hw, *self._args()) if input_grad else None



class Softmax(_PassThrough):
    """Softmax over channels (axis 1): a Caffe deploy net's ``prob`` layer.

    Going down, the signal passes through unchanged, as for LRN: each class
    probability rises and falls with its own score, and the deconvnet projects the
    score.  ``backward`` is the true gradient,
    ``dx = y * (dy - sum_c dy_c y_c)``.  Per position for (N, C, H, W) inputs.
    """

    def forward(self, x, trace=None):
        y = softmax(x, axis=1)
        if (c := self._training_cache(trace)) is not None:
            c["y"] = y
        return y

    def backward(self, dy, trace, input_grad=True):
        if not input_grad:
            return None
        (y,) = self._saved(trace, "y")
        return y * (dy - (dy * y).sum(axis=1, keepdims=True))

    def describe(self):
        return "softmax over channels"

    def spec(self):
        return {"type": "softmax", "name": self.name}

    @classmethod
    def from_spec(cls, s):
        return cls(s["name"])


def _rectifies(layer) -> bool:
    """Whether ``layer``'s output is a ReLU's (a rectified convolution, or a lone ReLU)."""
    return (type(layer) is Conv2d and layer.relu) or type(layer) is ReLU


def backward_layers(layers, grad, trace, input_grad: bool = True):
    """Back-propagate ``grad`` through ``layers`` from the last to the first; return ``dL/d(input)``.

    Each layer's ``backward`` in turn (the parameter gradients left in its
    ``.grads``), with the first layer's input gradient only if ``input_grad``.  One
    pair is fused: a :class:`MaxPool2d` right after a rectifying layer takes the
    ReLU's mask at its own, pooled, resolution (``rectified_input=True``) and the
    layer below then skips it (``dy_masked=True``): the same gradient, without a pass
    over the big map below the pooling (ZFNet's conv1 output, 74 MB at batch 16).
    Used by :meth:`zfnet.models.Network.backward` and the data-parallel step.
    """
    masked = False
    for i in range(len(layers) - 1, -1, -1):
        layer, need = layers[i], input_grad or i > 0
        if masked:
            grad = layer.backward(grad, trace, input_grad=need, dy_masked=True)
            masked = False
        elif type(layer) is MaxPool2d and i > 0 and _rectifies(layers[i - 1]):
            grad = layer.backward(grad, trace, input_grad=True, rectified_input=True)
            masked = True
        else:
            grad = layer.backward(grad, trace, input_grad=need)
    return grad

