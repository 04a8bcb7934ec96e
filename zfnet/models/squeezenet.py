"""SqueezeNet v1.0 (Iandola et al., 2016) as released for Caffe, and its fire module.

The graph follows ``deploy.prototxt`` of the Caffe release exactly::

    input 227 -> conv1 96x7x7/2 + ReLU (111) -> pool1 max 3x3/2 ceil (55)
      -> fire2 (16; 64 + 64) -> fire3 (16; 64 + 64) -> fire4 (32; 128 + 128)
      -> pool4 (27) -> fire5 (32; 128 + 128) -> fire6 (48; 192 + 192)
      -> fire7 (48; 192 + 192) -> fire8 (64; 256 + 256) -> pool8 (13)
      -> fire9 (64; 256 + 256) -> drop9 -> conv_final 1000x1x1 pad 1 + ReLU (15)
      -> pool_final global average (1) -> flatten -> (N, 1000)

``fireN (s; e1 + e3)``: squeeze to ``s`` channels with a 1x1 convolution and ReLU,
then two expand branches on the squeezed map, 1x1 (``e1`` channels) and 3x3 pad 1
(``e3``), each with a ReLU, concatenated along channels with the 1x1 branch first.
(``conv_final``'s pad 1 makes its map 15x15 instead of 13x13; the zero-padded border
units see only the bias and are averaged in, as Caffe does.)

Names.  Activations: ``conv1``, ``pool1``, ``fire2/squeeze``, ``fire2/expand1x1``,
``fire2/expand3x3``, ``fire2`` (the concatenation), ..., ``conv_final``,
``pool_final``.  ``state_dict()`` keys: ``conv1.weight``, ``fire2.squeeze.weight``,
``fire2.expand1x1.bias``, ``fire2.expand3x3.weight``, ..., ``conv_final.bias`` (the
same ``squeeze``/``expand1x1``/``expand3x3`` words as torchvision's SqueezeNet).  The
Caffe layer names map as ``fireN/conv1x1_1 -> fireN.squeeze``, ``fireN/conv1x1_2 ->
fireN.expand1x1``, ``fireN/conv3x3_2 -> fireN.expand3x3`` (see
:data:`CAFFE_NAMES` and :mod:`zfnet.weights.native`).

The deconvnet through a fire module (paper section 2.1 extended to concatenation):
the signal at the concatenation is split into its two channel blocks, each block is
projected through its own expand branch (rectify, transposed filter), the two
results are *summed* in the squeezed space (both branches read the same squeezed
map, so their contributions add, exactly as gradients of a fan-out add), and the sum
is projected through the squeeze convolution.

References
----------
Iandola et al., "SqueezeNet: AlexNet-level accuracy with 50x fewer parameters and
<0.5MB model size", arXiv 1602.07360 (2016); Zeiler & Fergus (2014), section 2.1.
"""

from __future__ import annotations

import copy

import numpy as np

from ..backend import get_array_module
from ..errors import ConfigError
from ..nn import AdaptiveAvgPool2d, Conv2d, Dropout, Flatten, Layer, MaxPool2d
from ..nn.concat import _channels
from .base import Network

__all__ = ["Fire", "squeezenet1_0", "FIRE_CONFIG", "CAFFE_NAMES", "caffe_key_map"]

# name: (squeeze, expand1x1, expand3x3) channels; in_channels follow from the graph.
FIRE_CONFIG = {
    "fire2": (16, 64, 64), "fire3": (16, 64, 64), "fire4": (32, 128, 128),
    "fire5": (32, 128, 128), "fire6": (48, 192, 192), "fire7": (48, 192, 192),
    "fire8": (64, 256, 256), "fire9": (64, 256, 256),
}

# Caffe layer suffix in a fire module -> our branch name.
CAFFE_NAMES = {"conv1x1_1": "squeeze", "conv1x1_2": "expand1x1", "conv3x3_2": "expand3x3"}


class Fire(Layer):
    """SqueezeNet's fire module: squeeze 1x1 -> ReLU -> [expand 1x1, expand 3x3] -> ReLU -> concat.

    ``y = concat_c(relu(conv_1x1(s, W_e1)), relu(conv_3x3(s, W_e3, pad 1)))`` with
    ``s = relu(conv_1x1(x, W_s))``; shapes ``(N, C_in, H, W) -> (N, e1 + e3, H, W)``.

    Paired with
    -----------
    :meth:`deconv`: split the signal at the concatenation, project each block
    through its branch, sum in the squeezed space, project through the squeeze.

    Parameters
    ----------
    name : str
        ``"fire2"``; the branches are named ``fire2/squeeze``, ``fire2/expand1x1``
        and ``fire2/expand3x3`` (activation names), ``fire2.squeeze.weight`` etc.
        (state-dict keys).
    in_channels, squeeze, expand1x1, expand3x3 : int
    rng : numpy.random.Generator, optional
    """

    BRANCHES = ("squeeze", "expand1x1", "expand3x3")
    _offset = 0  # set by unpadded(): where the 3x3 branch's map starts inside the 1x1 branch's

    def __init__(self, name: str, in_channels: int, squeeze: int, expand1x1: int, expand3x3: int,
                 rng: np.random.Generator | None = None):
        super().__init__(name)
        rng = rng if rng is not None else np.random.default_rng(0)
        self.squeeze = Conv2d(f"{name}/squeeze", in_channels, squeeze, 1, rng=rng)
        self.expand1x1 = Conv2d(f"{name}/expand1x1", squeeze, expand1x1, 1, rng=rng)
        self.expand3x3 = Conv2d(f"{name}/expand3x3", squeeze, expand3x3, 3, padding=1, rng=rng)

    # -- the two directions -------------------------------------------------
    def forward(self, x, trace=None):
        xp = get_array_module(x)
        s = self.squeeze.forward(x, trace)
        e1 = self.expand1x1.forward(s, trace)
        e3 = self.expand3x3.forward(s, trace)
        if trace is not None:  # inner activations: the deconv's ReLU masks need them
            trace.activations[self.squeeze.name] = s
            trace.activations[self.expand1x1.name] = e1
            trace.activations[self.expand3x3.name] = e3
        if self._offset:  # an unpadded copy: the 1x1 map is wider than the 3x3 map by 2 * offset
            d, (h, w) = self._offset, e3.shape[2:]
            e1 = e1[:, :, d : d + h, d : d + w]
        return xp.concatenate([e1, e3], axis=1)  # (N, e1 + e3, H, W), 1x1 branch first

    def deconv(self, signal, trace, rule="deconvnet", start=None):
        """Project ``signal`` from activation ``start`` (default: the concatenation) to the input.

        ``start`` may be ``name`` (signal has ``e1 + e3`` channels), ``name/expand1x1``
        (``e1``), ``name/expand3x3`` (``e3``) or ``name/squeeze`` (``s``).
        """
        return self._down(signal, start, lambda conv, sig: conv.deconv(sig, trace, rule))

    def deconv_window(self, win, trace, rule="deconvnet", start=None):
        """:meth:`deconv` on a window: each branch's windowed step, the windows added."""
        return self._down(win, start, lambda conv, w: conv.deconv_window(w, trace, rule))

    def _down(self, signal, start, step):
        """The split-project-add walk shared by :meth:`deconv` and :meth:`deconv_window`.

        ``signal`` is an array or a :class:`~zfnet.nn.window.Window`;
        ``step(conv, signal)`` is one branch convolution's step down.
        """
        start = self.name if start is None else start
        if start == self.name:
            e1 = self.expand1x1.weight.shape[0]
            s = (step(self.expand1x1, _channels(signal, 0, e1))
                 + step(self.expand3x3, _channels(signal, e1, None)))  # both read the same s: add
        elif start == self.expand1x1.name:
            s = step(self.expand1x1, signal)
        elif start == self.expand3x3.name:
            s = step(self.expand3x3, signal)
        elif start == self.squeeze.name:
            s = signal
        else:
            raise ConfigError(f"{self.name} has no activation {start!r}; it records {', '.join(self.names())}")
        return step(self.squeeze, s)

    def backward(self, dy, trace, input_grad=True):
        """Gradient: the same split and sum as :meth:`deconv`, with each branch's backward."""
        e1 = self.expand1x1.weight.shape[0]
        ds = (self.expand1x1.backward(dy[:, :e1], trace) + self.expand3x3.backward(dy[:, e1:], trace))
        return self.squeeze.backward(ds, trace, input_grad=input_grad)

    # The training flag and the gradients live in the three branch convolutions.
    @property
    def training(self):
        return self.squeeze.training

    @training.setter
    def training(self, mode):
        for b in self.BRANCHES:
            if hasattr(self, b):  # Layer.__init__ sets the flag before the branches exist
                getattr(self, b).training = mode

    @property
    def grads(self):
        return {f"{b}.{k}": v for b in self.BRANCHES for k, v in getattr(self, b).grads.items()}

    @grads.setter
    def grads(self, value):
        pass  # Layer.__init__ resets it; the branches own their gradients

    # -- bookkeeping ----------------------------------------------------------
    def names(self):
        return [self.squeeze.name, self.expand1x1.name, self.expand3x3.name, self.name]

    def params(self):
        return {f"{b}.{k}": v for b in self.BRANCHES for k, v in getattr(self, b).params().items()}

    def set_param(self, key, value):
        branch, attr = key.split(".", 1)
        getattr(self, branch).set_param(attr, value)

    def rf(self):
        """The 3x3 branch's: (3, 1, 1).  The 1x1 branch sees a centred subset of it."""
        return (3, 1, 1)

    def unpadded(self):
        """A copy with unpadded convolutions; the 1x1 branch is cropped to the 3x3 branch's map.

        Without its padding of 1, the 3x3 branch's output at ``o`` reads squeezed
        positions ``o .. o + 2``, centred on the 1x1 branch's position ``o + 1``.
        """
        net = copy.copy(self)
        for b in self.BRANCHES:
            setattr(net, b, getattr(self, b).unpadded())
        net._offset = self.expand3x3.padding[0] - self.expand1x1.padding[0]
        return net

    def rf_steps(self):
        # A chain, although the branches are parallel: the 1x1 steps add nothing to a
        # receptive field, so accumulating squeeze -> expand1x1 -> expand3x3 gives each
        # its true field, and the concatenation's is the 3x3 branch's.
        return [(self.squeeze.name, (1, 1, 0)), (self.expand1x1.name, (1, 1, 0)),
                (self.expand3x3.name, (3, 1, 1)), (self.name, (1, 1, 0))]

    def output_shape(self, shape):
        n, _, h, w = shape
        return (n, self.expand1x1.weight.shape[0] + self.expand3x3.weight.shape[0], h, w)

    def describe(self):
        s, e1, e3 = (getattr(self, b).weight.shape[0] for b in self.BRANCHES)
        return f"fire: squeeze {self.squeeze.weight.shape[1]}->{s} 1x1, expand {e1} 1x1 + {e3} 3x3, + ReLU"

    def spec(self):
        """``{"type": "fire", "name", "squeeze", "expand1x1", "expand3x3"}`` (the branches' conv specs).

        A fire module is a squeeze convolution followed by a two-branch concatenation;
        :func:`zfnet.models.caffe_graph.canonical` rewrites it so, which is how a Caffe
        SqueezeNet graph is recognised as :func:`squeezenet1_0`.
        """
        return {"type": "fire", "name": self.name, **{b: getattr(self, b).spec() for b in self.BRANCHES}}


def squeezenet1_0(num_classes: int = 1000, seed: int = 0) -> Network:
    """Build SqueezeNet v1.0 (Caffe release layout) with freshly initialised weights.

    Parameters
    ----------
    num_classes : int
        Output channels of ``conv_final``.
    seed : int
        Seed of the weight initialisation (He normal, zero bias).

    Returns
    -------
    Network
        Input 227x227 BGR, Caffe preprocessing in its config (short side 256, centre
        crop 227, pixels 0..255 minus the BGR mean (104, 117, 123)); output
        ``(N, num_classes)``, the global average of the rectified ``conv_final``.

    Examples
    --------
    >>> net = squeezenet1_0()
    >>> net.num_parameters()
    1248424
    """
    rng = np.random.default_rng(seed)
    layers: list[Layer] = [
        Conv2d("conv1", 3, 96, 7, stride=2, rng=rng),
        MaxPool2d("pool1", 3, 2, ceil_mode=True),
    ]
    in_ch = 96
    for name, (s, e1, e3) in FIRE_CONFIG.items():
        layers.append(Fire(name, in_ch, s, e1, e3, rng=rng))
        in_ch = e1 + e3
        if name in ("fire4", "fire8"):
            layers.append(MaxPool2d(f"pool{name[-1]}", 3, 2, ceil_mode=True))
    layers += [
        Dropout("drop9", 0.5, seed=seed + 9),
        Conv2d("conv_final", in_ch, num_classes, 1, padding=1, rng=rng),
        AdaptiveAvgPool2d("pool_final", (1, 1)),
        Flatten("flatten"),
    ]
    config = {
        "arch": "squeezenet1_0",
        "variant": "caffe",
        "num_classes": num_classes,
        "input_size": [227, 227],
        "resize": 256,
        "channel_order": "BGR",
        "mean": [104.0, 117.0, 123.0],
        "std": [1.0, 1.0, 1.0],
        "scale": 1.0,
    }
    return Network(layers, config)


def caffe_key_map(caffe_names) -> dict[str, str]:
    """Map Caffe SqueezeNet layer names onto state-dict key prefixes.

    Returns ``{caffe layer name: our key prefix}``, e.g.
    ``"fire2/conv3x3_2" -> "fire2.expand3x3"``, ``"conv1" -> "conv1"``.  Names that
    are not SqueezeNet layers are left out.
    """
    out = {}
    for name in caffe_names:
        if name in ("conv1", "conv_final"):
            out[name] = name
        elif "/" in name:
            fire, suffix = name.split("/", 1)
            if fire in FIRE_CONFIG and suffix in CAFFE_NAMES:
                out[name] = f"{fire}.{CAFFE_NAMES[suffix]}"
    return out
