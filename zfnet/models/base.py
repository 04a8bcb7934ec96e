"""A network is a configuration dict plus an ordered list of named layers."""

from __future__ import annotations

import copy
from typing import Iterable

import numpy as np

from ..backend import asnumpy, get_array_module, to_device
from ..errors import ConfigError, ShapeError, WeightsError
from ..nn import Layer, Trace, check_rule
from ..nn.layers import backward_layers

__all__ = ["Network"]


class Network:
    """An ordered stack of named layers with a forward pass and a top-down pass.

    Parameters
    ----------
    layers : list of Layer
        Applied in order.  Names must be unique; they are the keys of
        ``trace.activations`` and the prefixes of ``state_dict()`` keys.
    config : dict
        Metadata: ``arch``, ``variant``, ``num_classes``, ``input_size`` (H, W) and
        the preprocessing that goes with the weights (see :mod:`zfnet.weights`).
    """

    def __init__(self, layers: list[Layer], config: dict):
        self.layers = list(layers)
        self.config = dict(config)
        seen: set[str] = set()
        for layer in self.layers:
            for name in layer.names():
                if name in seen:
                    raise ConfigError(f"duplicate layer name {name!r}")
                seen.add(name)

    # -- description ----------------------------------------------------------
    @property
    def arch(self) -> str:
        return self.config.get("arch", "network")

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.config.get("input_size", (224, 224)))

    @property
    def num_classes(self) -> int:
        return int(self.config.get("num_classes", 1000))

    @property
    def xp(self):
        """The array module of the parameters: ``numpy``, or ``cupy`` after ``to("gpu")``.

        The one answer to "where does this model compute?"; a network without
        parameters computes with NumPy.
        """
        for _, layer, attr in self.named_parameters():
            return get_array_module(layer.params()[attr])
        return np

    def layer_names(self) -> list[str]:
        """Every activation name, bottom to top (composite layers list their parts)."""
        return [n for layer in self.layers for n in layer.names()]

    def conv_layer_names(self) -> list[str]:
        """Names of the top-level convolution layers (conv1 ... conv5 for ZFNet)."""
        from ..nn import Conv2d

        return [layer.name for layer in self.layers if isinstance(layer, Conv2d)]

    def feature_layer_names(self) -> list[str]:
        """The layers a figure is drawn for: every top-level convolution or block of them.

        ZFNet and AlexNet: conv1 ... conv5.  SqueezeNet: conv1, fire2 ... fire9,
        conv_final (a fire module counts as one layer, named by its concatenated output).
        """
        from ..nn import Conv2d

        return [layer.name for layer in self.layers
                if isinstance(layer, Conv2d) or (len(layer.names()) > 1 and layer.rf() is not None)]

    def layer(self, name: str) -> Layer:
        """The top-level layer that records activation ``name``."""
        return self.layers[self._index(name)]

    def _index(self, name: str) -> int:
        for i, layer in enumerate(self.layers):
            if name in layer.names():
                return i
        raise ConfigError(f"{self.arch} has no layer {name!r}; layers are: {', '.join(self.layer_names())}")

    def shapes(self, input_shape: tuple | None = None) -> list[tuple[str, tuple]]:
        """``[(layer name, output shape)]`` for an input of ``input_shape`` (default 1x3xHxW)."""
        shape = input_shape or (1, 3) + self.input_size
        out = []
        for layer in self.layers:
            shape = layer.output_shape(shape)
            out.append((layer.name, shape))
        return out

    def summary(self) -> str:
        """A table of layers, what they do, and output shapes."""
        rows = [f"{'layer':<14} {'output':<20} description"]
        for layer, (_, shape) in zip(self.layers, self.shapes()):
            rows.append(f"{layer.name:<14} {'x'.join(map(str, shape[1:])):<20} {layer.describe()}")
        rows.append(f"parameters: {self.num_parameters():,}")
        return "\n".join(rows)

    def num_parameters(self) -> int:
        return int(sum(np.prod(v.shape) for v in self.state_dict().values()))

    def __repr__(self) -> str:
        return f"<Network {self.arch}: {len(self.layers)} layers, {self.num_parameters():,} parameters>"

    def preprocess(self, image) -> np.ndarray:
        """One picture -> the ``(3, H, W)`` float32 input these weights expect.

        Applies the preprocessing recorded in :attr:`config` (``input_size``,
        ``resize``, ``channel_order``, ``mean``, ``std``, ``scale``; see
        :class:`zfnet.data.TransformConfig`), so a converted Caffe model gets BGR
        and mean subtraction on 0..255 and a torchvision one RGB with ImageNet
        mean/std, without the caller knowing which.

        Parameters
        ----------
        image : PIL.Image.Image, path, or uint8 array
            Any Pillow mode (L, RGBA, CMYK, P, I;16, ...) is converted to RGB first
            (see :mod:`zfnet.data.images`).

        Returns
        -------
        ndarray, float32, (3, H, W)
        """
        return self.transform()(image)

    def transform(self):
        """The preprocessing that goes with these weights, as a :class:`zfnet.data.Transform`.

        The one source of a model's preprocessing: :meth:`preprocess`, the figures,
        the command line and :func:`zfnet.train.evaluate` (given ``model.config``)
        all read it from here.  Looked up, in order: ``config["preprocess"]`` (a
        dict), the preprocessing keys at the top of :attr:`config` (``input_size``
        or ``crop``, ``resize``, ``channel_order``, ``mean``, ``std``, ``scale``,
        ``interpolation``); a missing key takes :class:`zfnet.data.TransformConfig`'s
        default, except ``input_size`` (the model's) and ``resize`` (the usual 256
        for a 224 crop, scaled for other crops: ``max(S, round(256 S / 224))``).
        """
        from ..data import Transform, TransformConfig

        meta = dict(self.config.get("preprocess") or {})
        for key in TransformConfig._KEYS:
            if key not in meta and key in self.config:
                meta[key] = self.config[key]
        if "input_size" not in meta and "crop" not in meta:
            meta["input_size"] = list(self.input_size)
        size = meta.get("input_size", meta.get("crop"))
        if "resize" not in meta:
            side = max(size) if isinstance(size, (list, tuple)) else int(size)
            meta["resize"] = max(side, int(round(side * 256 / 224)))
        return Transform(TransformConfig.from_dict(meta))

    # -- parameters -----------------------------------------------------------
    def named_parameters(self) -> Iterable[tuple[str, Layer, str]]:
        """Yield ``(key, layer, attribute)`` for each parameter, e.g. ``("conv1.weight", conv1, "weight")``."""
        for layer in self.layers:
            for key in layer.params():
                yield f"{layer.name}.{key}", layer, key

    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters as NumPy float32 arrays: ``conv1.weight``, ``conv1.bias``, ..., ``fc8.bias``."""
        return {key: asnumpy(layer.params()[attr]) for key, layer, attr in self.named_parameters()}

    def load_state_dict(self, state: dict, strict: bool = True, source: str = "state dict") -> None:
        """Copy ``state`` into the parameters, checking every key and shape.

        Every key is checked before any is copied: on an error the model keeps the
        parameters it had.

        Raises
        ------
        WeightsError
            Missing or unexpected keys (when ``strict``), or a parameter that is not
            floating point, naming the keys.
        ShapeError
            A shape that does not match, naming the key, the found and the expected
            shape.
        """
        expected = {key: (layer, attr) for key, layer, attr in self.named_parameters()}
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing keys {missing}")
            if unexpected:
                parts.append(f"unexpected keys {unexpected}")
            raise WeightsError(f"{source} does not fit {self.arch}: " + "; ".join(parts))
        # Check every key before copying any, so that a bad file leaves the model unchanged.
        checked = []
        for key, (layer, attr) in expected.items():
            if key not in state:
                continue
            old = layer.params()[attr]
            new = np.asarray(asnumpy(state[key]))
            if tuple(new.shape) != tuple(old.shape):
                raise ShapeError(
                    f"{source}: key {key!r} has shape {tuple(new.shape)}, {self.arch} expects {tuple(old.shape)}"
                )
            if not np.issubdtype(new.dtype, np.floating):
                raise WeightsError(f"{source}: key {key!r} has dtype {new.dtype}, expected floating point")
            checked.append((layer, attr, old, new))
        for layer, attr, old, new in checked:
            xp = get_array_module(old)
            layer.set_param(attr, xp.asarray(new, dtype=np.float32).copy())

    def to(self, device: str) -> "Network":
        """Move every parameter to ``"cpu"`` or ``"gpu"`` in place; returns self."""
        for _, layer, attr in self.named_parameters():
            layer.set_param(attr, to_device(layer.params()[attr], device))
        return self

    def train(self, mode: bool = True) -> "Network":
        for layer in self.layers:
            layer.training = mode
        return self

    def eval(self) -> "Network":
        return self.train(False)

    # -- the two passes -------------------------------------------------------
    def forward(self, x, upto: str | None = None, keep: Iterable[str] | None = None, caches: bool = True) -> Trace:
        """Run the network bottom-up.

        Parameters
        ----------
        x : array, shape (N, 3, H, W), float32
        upto : str, optional
            Stop after the layer that records this activation (saves the rest).
        keep : iterable of str, optional
            Record only these activations (default: all).  Mining top-k over a big
            dataset keeps a few layers only.
        caches : bool
            Keep switches and input sizes for :meth:`deconv` (default True).

        Returns
        -------
        Trace
            ``trace.activations[name]``, ``trace.switches[pool]``, ``trace.output``
            (None when ``upto`` stopped early).
        """
        if getattr(x, "ndim", 0) != 4 or x.shape[1] != 3:
            raise ShapeError(f"{self.arch}: input must be (N, 3, H, W), got shape {tuple(getattr(x, 'shape', ()))}")
        stop = self._index(upto) if upto is not None else len(self.layers) - 1
        keep = None if keep is None else set(keep)
        trace = Trace(input_shape=tuple(x.shape), keep_caches=caches)
        for layer in self.layers[: stop + 1]:
            try:
                x = layer.forward(x, trace)
            except ShapeError as e:
                raise ShapeError(self._input_size_hint(layer.name, trace.input_shape, e)) from None
            trace.activations[layer.name] = x
        if keep is not None:
            trace.activations = {k: v for k, v in trace.activations.items() if k in keep}
        if stop == len(self.layers) - 1:
            trace.output = x
        return trace

    __call__ = forward

    def _input_size_hint(self, layer: str, shape: tuple, error: Exception) -> str:
        """A layer's shape error, with the input size the network expects when it differs."""
        want = tuple(int(v) for v in self.input_size)
        got = tuple(int(v) for v in shape[2:])
        if got == want:
            return f"{self.arch}, layer {layer}: {error}"
        return (f"{self.arch} expects inputs of (N, 3, {want[0]}, {want[1]}), got (N, 3, {got[0]}, {got[1]}); "
                f"at layer {layer}: {error}. Resize or crop "
                f"the image to {want[0]}x{want[1]} (model.preprocess does)")

    def deconv(self, signal, trace: Trace, layer: str, rule: str = "deconvnet"):
        """Send ``signal`` (in the space of activation ``layer``) down to the pixels.

        Each layer from ``layer`` down to the first applies its ``deconv`` step:
        unpool with the switches of the traced image, rectify by ``rule``, filter
        with the transposed filters; LRN and dropout pass through; no bias.

        Returns
        -------
        array, shape (N, 3, H, W)
        """
        check_rule(rule)
        if not trace.keep_caches:
            raise ConfigError("deconv() needs a trace recorded with caches=True (the switches and map sizes)")
        for lay, start in self.path_down(layer):
            signal = lay.deconv(signal, trace, rule, start=start)
        return signal

    def path_down(self, layer: str):
        """The top-down walk from activation ``layer``: ``(top-level layer, start)`` pairs.

        From the layer that records ``layer`` down to the first.  ``start`` is
        ``layer`` for the first pair when it names an inner activation of a
        composite layer (a fire module's ``fire2/squeeze``), else None.  The dense
        pass (:meth:`deconv`) and the windowed one
        (:func:`zfnet.deconvnet.project_units_windowed`) both walk it.
        """
        top = self._index(layer)
        for i in range(top, -1, -1):
            yield self.layers[i], (layer if i == top and layer != self.layers[i].name else None)

    def backward(self, dloss, trace: Trace, input_grad: bool = True):
        """Back-propagate ``dloss = dL/d(output)`` through every layer, top to bottom.

        Each layer's ``backward`` returns the gradient with respect to its input and
        leaves its parameter gradients in ``layer.grads``; :meth:`gradients` collects
        them keyed like :meth:`state_dict`.  Gradients are overwritten, not
        accumulated, by each call.

        Parameters
        ----------
        dloss : array, shape (N, num_classes)
            E.g. the second result of :func:`zfnet.ops.softmax_cross_entropy`.
        trace : Trace
            From ``forward(x)`` run in training mode (:meth:`train`) with caches,
            all the way to the output.
        input_grad : bool
            Also compute ``dL/dx`` for the input images (the trainer skips it: it
            costs a transposed convolution at full resolution).

        Returns
        -------
        array, shape (N, 3, H, W), or None when ``input_grad`` is False.
        """
        if not trace.keep_caches:
            raise ConfigError("backward() needs a trace recorded with caches=True")
        if trace.output is None:
            raise ConfigError("backward() needs a forward pass that ran to the output (no upto=)")
        if tuple(dloss.shape) != tuple(trace.output.shape):
            raise ShapeError(f"{self.arch}: dloss has shape {tuple(dloss.shape)}, the output {tuple(trace.output.shape)}")
        return backward_layers(self.layers, dloss, trace, input_grad)

    def gradients(self) -> dict:
        """The last :meth:`backward`'s parameter gradients, keyed like :meth:`state_dict` (arrays on the device)."""
        out = {}
        for key, layer, attr in self.named_parameters():
            if attr not in layer.grads:
                raise ConfigError(f"no gradient for {key}: call backward() after a training-mode forward first")
            out[key] = layer.grads[attr]
        return out

    def unpadded(self) -> "Network":
        """A copy whose convolutions and pools use no padding (weights shared).

        Applied to an interior unit's receptive-field crop it returns that unit's
        activation as a 1x1 map: the "crop" method of finding top patches.
        """
        net = copy.copy(self)
        net.layers = [layer.unpadded() for layer in self.layers]
        return net
