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
"""

from __future__ import annotations

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
)
from ..ops._shape import conv_out_size, pair, pool_out_size
from .rules import relu_rule
from .trace import Trace

__all__ = [
    "Layer",
    "Conv2d",
    "MaxPool2d",
    "LRN",
    "Linear",
    "Dropout",
    "Flatten",
    "AdaptiveAvgPool2d",
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

    def backward(self, dy, trace: Trace, input_grad: bool = True):
        """Back-propagate ``dy = dL/d(output)``: return ``dL/d(input)``, set ``self.grads``.

        Needs the trace of a forward pass run in training mode with caches.  With
        ``input_grad=False`` the input gradient is not computed and None is returned
        (the first layer's, which nothing uses in training).
        """
        raise NotImplementedError(f"{self.name}: {type(self).__name__} has no backward()")

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

    def rf_steps(self) -> list[tuple[str, tuple[int, int, int] | None]]:
        """``[(activation name, rf triple)]`` in order; composite layers list their parts."""
        return [(self.name, self.rf())]

    def output_shape(self, shape: tuple) -> tuple:
        """Shape of the output for an input of ``shape`` (N, C, H, W)."""
        return shape

    def describe(self) -> str:
        return type(self).__name__

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}: {self.describe()})"


def _he_normal(rng: np.random.Generator, shape: tuple, fan_in: int) -> np.ndarray:
    return (rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)).astype(np.float32)


class Conv2d(Layer):
    """Convolution, optionally followed by a ReLU (``relu=True``, the usual case).

    ``y = relu(conv2d(x, w, b))``; shapes ``(N, C_in, H, W) -> (N, C_out, H_out, W_out)``.

    Going down (paper section 2.1): rectify the signal by ``rule``, then filter it
    with the transposed filters, ``conv_transpose2d(r, w)``; no bias.
    """

    def __init__(self, name, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1,
                 relu=True, bias=True, rng: np.random.Generator | None = None):
        super().__init__(name)
        kh, kw = pair(kernel_size, "kernel_size")
        self.stride, self.padding, self.groups, self.relu = pair(stride), pair(padding), groups, relu
        if in_channels % groups or out_channels % groups:
            raise ShapeError(f"{name}: channels {in_channels}->{out_channels} not divisible by groups={groups}")
        rng = rng if rng is not None else np.random.default_rng(0)
        fan_in = in_channels // groups * kh * kw
        self.weight = _he_normal(rng, (out_channels, in_channels // groups, kh, kw), fan_in)
        self.bias = np.zeros(out_channels, np.float32) if bias else None

    @property
    def kernel_size(self):
        return tuple(self.weight.shape[2:])

    def forward(self, x, trace=None):
        y = conv2d(x, self.weight, self.bias, self.stride, self.padding, self.groups)
        if self.relu:
            y = relu(y)
        if trace is not None and (c := trace.cache(self.name)) is not None:
            c["in_hw"] = tuple(x.shape[2:])
        if (c := self._training_cache(trace)) is not None:
            c["x"], c["y"] = x, y
        return y

    def deconv(self, signal, trace, rule="deconvnet", start=None):
        if self.relu:
            signal = relu_rule(signal, trace.activations[self.name] > 0, rule)
        return conv_transpose2d(signal, self.weight, None, self.stride, self.padding, self.groups,
                                output_size=trace.caches[self.name]["in_hw"])

    def backward(self, dy, trace, input_grad=True):
        """``dz = dy * [y > 0]``; ``dw``, ``db`` from :func:`conv2d_weight_grad`; ``dx = conv_transpose2d(dz, w)``."""
        x, y = self._saved(trace, "x", "y")
        dz = relu_backward(dy, y) if self.relu else dy
        self.grads = {"weight": conv2d_weight_grad(x, dz, self.weight.shape, self.stride, self.padding, self.groups)}
        if self.bias is not None:
            self.grads["bias"] = conv2d_bias_grad(dz)
        if not input_grad:
            return None
        return conv_transpose2d(dz, self.weight, None, self.stride, self.padding, self.groups, output_size=x.shape)

    def params(self):
        return {"weight": self.weight} if self.bias is None else {"weight": self.weight, "bias": self.bias}

    def rf(self):
        return (self.kernel_size[0], self.stride[0], self.padding[0])

    def output_shape(self, shape):
        n, _, h, w = shape
        kh, kw = self.kernel_size
        return (n, self.weight.shape[0], conv_out_size(h, kh, self.stride[0], self.padding[0]),
                conv_out_size(w, kw, self.stride[1], self.padding[1]))

    def describe(self):
        o, i, kh, kw = self.weight.shape
        g = f" groups {self.groups}" if self.groups > 1 else ""
        r = " + ReLU" if self.relu else ""
        return f"conv {i * self.groups}->{o} {kh}x{kw}/{self.stride[0]} pad {self.padding[0]}{g}{r}"


class MaxPool2d(Layer):
    """Max pooling that records its switches in the trace; unpools on the way down."""

    def __init__(self, name, kernel_size, stride=None, padding=0, ceil_mode=False):
        super().__init__(name)
        self.kernel_size = pair(kernel_size)
        self.stride = pair(kernel_size if stride is None else stride)
        self.padding, self.ceil_mode = pair(padding), ceil_mode

    def forward(self, x, trace=None):
        y, switches = max_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode)
        if trace is not None and (c := trace.cache(self.name)) is not None:
            c["in_hw"] = tuple(x.shape[2:])
            trace.switches[self.name] = switches
        return y

    def deconv(self, signal, trace, rule="deconvnet", start=None):
        return max_unpool2d(signal, trace.switches[self.name], trace.caches[self.name]["in_hw"])

    def backward(self, dy, trace, input_grad=True):
        """The gradient of max pooling is unpooling with the switches (scatter-add)."""
        (in_hw,) = self._saved(trace, "in_hw")
        return max_unpool2d(dy, trace.switches[self.name], in_hw) if input_grad else None

    def rf(self):
        return (self.kernel_size[0], self.stride[0], self.padding[0])

    def output_shape(self, shape):
        n, c, h, w = shape
        return (n, c, pool_out_size(h, self.kernel_size[0], self.stride[0], self.padding[0], self.ceil_mode),
                pool_out_size(w, self.kernel_size[1], self.stride[1], self.padding[1], self.ceil_mode))

    def describe(self):
        ceil = " ceil" if self.ceil_mode else ""
        return f"max-pool {self.kernel_size[0]}x{self.kernel_size[1]}/{self.stride[0]} pad {self.padding[0]}{ceil}"


class LRN(Layer):
    """Local response normalisation across channels; passed through on the way down.

    The paper's deconvnet inverts only pooling, rectification and filtering; the
    normalisation is left out (it rescales, and its effect on a single projected
    activation is small).  We document it rather than approximate an inverse.
    """

    def __init__(self, name, size=5, alpha=1e-4, beta=0.75, k=1.0):
        super().__init__(name)
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x, trace=None):
        y = lrn(x, self.size, self.alpha, self.beta, self.k)
        if (c := self._training_cache(trace)) is not None:
            c["x"], c["y"] = x, y
        return y

    def deconv(self, signal, trace, rule="deconvnet", start=None):
        return signal

    def backward(self, dy, trace, input_grad=True):
        """The true gradient :func:`lrn_backward` (unlike ``deconv``, which passes through)."""
        if not input_grad:
            return None
        x, y = self._saved(trace, "x", "y")
        return lrn_backward(x, y, dy, self.size, self.alpha, self.beta, self.k)

    def describe(self):
        return f"LRN size {self.size} alpha {self.alpha:g} beta {self.beta:g} k {self.k:g}"


class Linear(Layer):
    """Fully connected layer ``y = x w^T + b``, optionally rectified."""

    def __init__(self, name, in_features, out_features, relu=True, rng: np.random.Generator | None = None):
        super().__init__(name)
        rng = rng if rng is not None else np.random.default_rng(0)
        self.relu = relu
        self.weight = _he_normal(rng, (out_features, in_features), in_features)
        self.bias = np.zeros(out_features, np.float32)

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
        self.grads = {"weight": dw, "bias": db}
        return dx if input_grad else None

    def deconv(self, signal, trace, rule="deconvnet", start=None):
        if self.relu:
            signal = relu_rule(signal, trace.activations[self.name] > 0, rule)
        return signal @ self.weight  # (N, F_in): the transposed "filter"

    def params(self):
        return {"weight": self.weight, "bias": self.bias}

    def rf(self):
        return None

    def output_shape(self, shape):
        return (shape[0], self.weight.shape[0])

    def describe(self):
        return f"fc {self.weight.shape[1]}->{self.weight.shape[0]}" + (" + ReLU" if self.relu else "")


class Dropout(Layer):
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

    def deconv(self, signal, trace, rule="deconvnet", start=None):
        return signal

    def backward(self, dy, trace, input_grad=True):
        """Mask and scale ``dy`` like the forward pass; identity if the forward was (eval, p=0)."""
        if not input_grad:
            return None
        keep = trace.caches.get(self.name, {}).get("keep")
        return dy if keep is None else dropout_backward(dy, keep, self.p)

    def describe(self):
        return f"dropout p={self.p}"


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
