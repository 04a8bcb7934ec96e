"""A Caffe network definition -> the zfnet network it describes, layer by layer.

The definition is the ``NetParameter`` a ``.caffemodel`` carries (decoded by
:func:`zfnet.weights.caffe.read_caffe_net`) or a ``.prototxt`` (``--prototxt``,
parsed by :func:`zfnet.weights.parse_prototxt`); both arrive here as prototxt-style
dicts.  The weights are the blobs of the same or another file, looked up by layer
name.

How a Caffe graph maps onto zfnet layers
----------------------------------------
=====================================  =============================================
Caffe layer                            zfnet layer (spec type)
=====================================  =============================================
Convolution (+ the ReLU right after)   :class:`~zfnet.nn.Conv2d` (``relu=True``);
                                       group, pad, stride, dilation, bias_term
InnerProduct (+ ReLU)                  :class:`~zfnet.nn.Flatten` when its input is
                                       a map, then :class:`~zfnet.nn.Linear`
ReLU elsewhere                         :class:`~zfnet.nn.ReLU`
Pooling MAX / AVE                      :class:`~zfnet.nn.MaxPool2d` /
                                       :class:`~zfnet.nn.AvgPool2d`, ceil rounding
                                       (or FLOOR when ``round_mode`` says so)
Pooling global AVE / MAX               :class:`~zfnet.nn.AdaptiveAvgPool2d` to 1x1 /
                                       :class:`~zfnet.nn.MaxPool2d` over the map
LRN ACROSS_CHANNELS / WITHIN_CHANNEL   :class:`~zfnet.nn.LRN` (``region``)
Dropout, Softmax, Flatten              :class:`~zfnet.nn.Dropout`,
                                       :class:`~zfnet.nn.Softmax`, Flatten
blobs read by several chains that      :class:`~zfnet.nn.Concat` (its branches)
meet in a Concat
Split                                  nothing (a blob read twice)
Input, input/input_shape/input_dim,    the input size (and mean/scale from a data
Data/ImageData/MemoryData/DummyData    layer's ``transform_param``)
Accuracy, Silence, ``*Loss``           left out (training only), said in the notes
=====================================  =============================================

Layers are kept in the TEST phase (Caffe's ``include``/``exclude`` rules against
the state ``phase: TEST, level 0, no stages``), as ``caffe.Net(..., caffe.TEST)``
does.

What zfnet cannot run
---------------------
Any other layer type, or a supported type with an option zfnet does not implement
(leaky ReLU, STOCHASTIC pooling, a pooling padding above half the kernel, Caffe's
empty last window, an axis other than the channels, ...), and forks whose branches
do not meet again in one Concat.  Meeting one on the way from the input, the
network *ends before it*: the layers up to there are kept, every activation and
switch below is the file's, and ``config["caffe"]["notes"]`` says where and why
it ended (and a warning is issued).  With ``truncate=False``, or when nothing
with weights comes before it, the load is refused instead, with a
:class:`~zfnet.errors.WeightsError` naming the layer and its type.  There is
never a substitute architecture.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import WeightsError
from ..ops._shape import conv_out_size
from .caffe import V1_TYPE_NAMES, CaffeLayer, read_blobproto
from .prototxt import parse_prototxt

__all__ = ["caffe_network", "prototxt_layers", "has_definition", "read_mean", "caffe_blobs",
           "DATA_TYPES", "SUPPORTED_TYPES"]

DATA_TYPES = frozenset({"Data", "ImageData", "WindowData", "MemoryData", "HDF5Data", "DummyData",
                        "Input", "AnnotatedData", "VideoData"})
SUPPORTED_TYPES = ("Convolution", "InnerProduct", "ReLU", "Pooling", "LRN", "Dropout", "Concat",
                   "Softmax", "Flatten", "Split")
_BVLC_MEAN = [104.0, 117.0, 123.0]  # BGR, as zfnet.weights.native.CAFFE_PREPROCESS
_MAX_SIDE = 4096  # the largest input side accepted (as the native metadata's bound)
_MAX_BRANCHES = 256  # readers of one blob that meet in a Concat (zfnet.nn.spec's bounds)
_MAX_NESTING = 8


class _Stop(Exception):
    """A layer zfnet cannot run: ``(layer name, type, reason)``."""

    def __init__(self, name: str, ltype: str, reason: str):
        super().__init__(f"layer '{name}' ({ltype}): {reason}")
        self.name, self.ltype, self.reason = name, ltype, reason


# ------------------------------------------------------------------------ reading


def prototxt_layers(source) -> tuple[dict, list[CaffeLayer]]:
    """A ``.prototxt`` (path or text) as ``(net fields, layers)`` like :func:`read_caffe_net`.

    V1 files (``layers { type: CONVOLUTION }``) get V2 type strings.

    Raises
    ------
    WeightsError
        Syntax errors (file and line), no layers, or both ``layer`` and ``layers``.
    """
    net = parse_prototxt(source)
    where = os.fspath(source) if isinstance(source, os.PathLike) or "\n" not in str(source) else "<text>"
    if net.get("layer") and net.get("layers"):
        raise WeightsError(f"{where}: has both 'layer' and 'layers' (V1); Caffe refuses such files too")
    items, version = (net.get("layer"), 2) if net.get("layer") else (net.get("layers"), 1)
    if not items:
        raise WeightsError(f"{where}: no layers ('layer {{ ... }}') in the definition")
    layers = []
    for i, d in enumerate(items):
        if not isinstance(d, dict):
            raise WeightsError(f"{where}: layer {i} is not a message")
        d = dict(d)
        name, ltype = _last(d.pop("name", "")), _last(d.pop("type", ""))
        if not isinstance(name, str) or not isinstance(ltype, str):
            raise WeightsError(f"{where}: layer {i} has a name or type that is not a string")
        if version == 1:
            ltype = V1_TYPE_NAMES.get(ltype, ltype)
        bottom, top = d.pop("bottom", []), d.pop("top", [])
        if not all(isinstance(b, str) for b in bottom + top):
            raise WeightsError(f"{where}: layer '{name}' has a bottom or top that is not a string")
        layers.append(CaffeLayer(name=name, type=ltype, bottom=bottom, top=top, params=d,
                                 version=0 if (version == 1 and "layer" in d) else version))
    fields = {k: net[k] for k in ("name", "input", "input_shape", "input_dim") if k in net}
    return fields, layers


def has_definition(layers: Sequence[CaffeLayer]) -> bool:
    """Whether the layers say how they connect (any bottom or top): a graph to build."""
    return any(layer.bottom or layer.top for layer in layers)


def caffe_blobs(layers: Sequence[CaffeLayer], source: str) -> dict[str, list[np.ndarray]]:
    """Layer name -> blobs, for the layers that have any (two such layers of one name: refused)."""
    out: dict[str, list[np.ndarray]] = {}
    for layer in layers:
        if layer.blobs:
            if layer.name in out:
                raise WeightsError(f"{source}: two layers named '{layer.name}' both carry blobs")
            out[layer.name] = layer.blobs
    return out


def read_mean(path: str | os.PathLike) -> tuple[list[float], str]:
    """The per-channel mean of a Caffe mean file (``.binaryproto``): ``([B, G, R], note)``.

    Caffe's ImageNet mean is a ``3 x 256 x 256`` image; zfnet subtracts one value per
    channel, its spatial average (what Caffe's own Python classifier does with it).
    """
    path = os.fspath(path)
    blob = read_blobproto(path)
    shape = blob.shape
    planes = blob.reshape(-1, *shape[-2:]) if blob.ndim >= 2 else blob.reshape(-1, 1, 1)
    if planes.shape[0] != 3:
        raise WeightsError(f"{path}: a mean of shape {shape}; expected 3 channels (C, H, W)")
    mean = [float(v) for v in planes.astype(np.float64).mean(axis=(1, 2))]
    if not all(math.isfinite(v) and abs(v) <= 1e6 for v in mean):
        raise WeightsError(f"{path}: the mean {mean} is not finite or out of range")
    note = (f"mean from {os.path.basename(path)}: the {'x'.join(map(str, shape))} mean image averaged per "
            f"channel to (B, G, R) = ({mean[0]:.3f}, {mean[1]:.3f}, {mean[2]:.3f})")
    return mean, note


# ------------------------------------------------------------------ field helpers


def _last(v):
    """A non-repeated field that a prototxt gave twice: the last value wins (protobuf's rule)."""
    return v[-1] if isinstance(v, list) and v else v


def _msg(params: Mapping, key: str) -> dict:
    v = _last(params.get(key, {}))
    return v if isinstance(v, dict) else {}


def _int(value, what: str, lo: int = 0, hi: int = 1 << 31) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{what} = {value!r}, expected an integer in {lo}..{hi}")
    return value


def _ints(value, what: str, lo: int = 0, hi: int = 1 << 20) -> list[int]:
    values = value if isinstance(value, list) else ([] if value is None else [value])
    return [_int(v, what, lo, hi) for v in values]


def _real(value, what: str) -> float:
    """A ``float`` field: rounded to float32, as Caffe stores it (a .prototxt's 5e-5 is the
    .caffemodel's 4.99999987e-05, and the two must build the same network)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} = {value!r}, expected a finite number")
    value32 = float(np.float32(value))
    if not math.isfinite(value32):
        raise ValueError(f"{what} = {value!r} does not fit a float32")
    return value32


def _enum(value, names: Sequence[str], what: str) -> str:
    value = _last(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
        return names[value]
    if value in names:
        return value
    raise ValueError(f"{what} = {value!r}, expected one of {', '.join(names)}")


def _hw(p: Mapping, name: str, default: int | None, lo: int) -> tuple[int, int]:
    """Caffe's ``X_h``/``X_w`` or repeated ``X`` (one value for both, or two)."""
    if f"{name}_h" in p or f"{name}_w" in p:
        key = "kernel" if name == "kernel" else name
        return (_int(_last(p.get(f"{key}_h", default)), f"{name}_h", lo),
                _int(_last(p.get(f"{key}_w", default)), f"{name}_w", lo))
    key = "kernel_size" if name == "kernel" else name
    values = _ints(p.get(key), key, lo)
    if not values:
        if default is None:
            raise ValueError(f"no {key} given")
        return default, default
    if len(values) == 1:
        return values[0], values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise ValueError(f"{key} has {len(values)} values: a {len(values)}-D window, zfnet runs 2-D ones")


# ---------------------------------------------------------------- phase and inputs


def _rule_met(rule: Mapping) -> bool:
    """A NetStateRule against Caffe's TEST state (level 0, no stages)."""
    phase = _last(rule.get("phase"))
    if phase is not None and phase not in ("TEST", 1):
        return False
    if "min_level" in rule and _last(rule["min_level"]) > 0:
        return False
    if "max_level" in rule and _last(rule["max_level"]) < 0:
        return False
    stages = rule.get("stage", [])
    return not (stages if isinstance(stages, list) else [stages])


def _included(layer: CaffeLayer) -> bool:
    include = layer.params.get("include", [])
    exclude = layer.params.get("exclude", [])
    include = include if isinstance(include, list) else [include]
    exclude = exclude if isinstance(exclude, list) else [exclude]
    if include:
        return any(_rule_met(r) for r in include if isinstance(r, dict))
    return not any(_rule_met(r) for r in exclude if isinstance(r, dict))


def _shape_of(shape, what: str) -> tuple:
    """The dims of a BlobShape message (``{"dim": [...]}``)."""
    if not isinstance(shape, dict):
        raise ValueError(f"{what} is {shape!r}, expected a BlobShape message {{ dim: ... }}")
    return tuple(_ints(shape.get("dim", []), what + ".dim", 0, 1 << 31))


def _declared_inputs(net: Mapping, layers: Sequence[CaffeLayer]) -> dict[str, dict]:
    """Blob name -> ``{"shape": tuple or None, "from": str, "transform": dict}`` for every input."""
    inputs: dict[str, dict] = {}
    names = net.get("input", [])
    names = names if isinstance(names, list) else [names]
    shapes = net.get("input_shape", [])
    shapes = shapes if isinstance(shapes, list) else [shapes]
    dims = _ints(net.get("input_dim", []), "input_dim", 0, 1 << 31)
    for i, name in enumerate(names):
        if i < len(shapes):
            shape = _shape_of(shapes[i], "input_shape")
        elif len(dims) >= 4 * (i + 1):
            shape = tuple(dims[4 * i: 4 * i + 4])
        else:
            shape = None
        inputs[name] = {"shape": shape, "from": "the net's input", "transform": {}}
    for layer in layers:
        if layer.type not in DATA_TYPES or not layer.top:
            continue
        p = layer.params
        transform = _msg(p, "transform_param")
        shape = None
        if layer.type == "Input":
            given = _msg(p, "input_param").get("shape", [])
            given = given if isinstance(given, list) else [given]
            for j, top in enumerate(layer.top):
                s = given[j] if j < len(given) else (given[0] if len(given) == 1 else None)
                inputs.setdefault(top, {"shape": None if s is None else _shape_of(s, "input_param.shape"),
                                        "from": f"Input layer '{layer.name}'", "transform": {}})
            continue
        if layer.type == "MemoryData":
            m = _msg(p, "memory_data_param")
            shape = (None, m.get("channels"), m.get("height"), m.get("width"))
        elif layer.type == "DummyData":
            d = _msg(p, "dummy_data_param")
            if d.get("shape"):
                s = d["shape"][0] if isinstance(d["shape"], list) else d["shape"]
                shape = _shape_of(s, "dummy_data_param.shape")
            elif d.get("channels"):
                first = lambda k: _ints(d.get(k), k)[0] if _ints(d.get(k), k) else None  # noqa: E731
                shape = (None, first("channels"), first("height"), first("width"))
        else:
            old = {}
            for key in ("data_param", "image_data_param", "window_data_param"):
                old.update({k: v for k, v in _msg(p, key).items() if k in ("crop_size", "mean_file", "scale")})
            transform = {**old, **transform}
            crop = _last(transform.get("crop_size", 0)) or 0
            if crop:
                shape = (None, 3, crop, crop)
        inputs.setdefault(layer.top[0], {"shape": shape, "from": f"{layer.type} layer '{layer.name}'",
                                         "transform": transform})
        for top in layer.top[1:]:
            inputs.setdefault(top, {"shape": None, "from": f"{layer.type} layer '{layer.name}'",
                                    "transform": {}})
    return inputs


# -------------------------------------------------------------------- the graph


class _Node:
    """One Caffe layer in the graph: its definition and the nodes its bottoms come from."""

    def __init__(self, layer: CaffeLayer | None, inputs: list):
        self.layer, self.inputs = layer, inputs
        self.name = layer.name if layer is not None else "input"
        self.type = layer.type if layer is not None else "Input"


class _Builder:
    """Walks the graph from the image input and writes zfnet layer specs."""

    def __init__(self, layers, blobs, source, notes):
        self.blobs, self.source, self.notes = blobs, source, notes
        self.params: dict[str, dict[str, np.ndarray]] = {}  # layer name -> {"weight": ..., "bias": ...}
        self.layers = layers
        self.consumers: dict[int, list[_Node]] = {}
        self.used_names: set[str] = {layer.name for layer in layers}
        self.stopped: tuple[_Stop, _Node] | None = None  # where the walk from the input ended early
        self.depth = 0  # concatenations entered

    # -- graph --------------------------------------------------------------
    def connect(self, image: str, inputs: Mapping[str, dict]) -> _Node:
        """Nodes for the runnable layers, wired by blob name; returns the input node."""
        root = _Node(None, [])
        producer: dict[str, Any] = {image: root}
        for name in inputs:
            producer.setdefault(name, ("side", name))
        for layer in self.layers:
            ins = [producer.get(b, ("missing", b)) for b in layer.bottom]
            if layer.type == "Split" and len(ins) == 1:
                for top in layer.top:
                    producer[top] = ins[0]
                continue
            node = _Node(layer, ins)
            for src in ins:
                if isinstance(src, _Node):
                    self.consumers.setdefault(id(src), []).append(node)
            for top in layer.top:
                producer[top] = node
        return root

    def next_of(self, node: _Node) -> list[_Node]:
        return self.consumers.get(id(node), [])

    # -- layers -------------------------------------------------------------
    def _weights(self, node: _Node, bias: bool, weight_shape: tuple, legacy_ndim: int):
        layer = node.layer
        blobs = self.blobs.get(layer.name)
        if not blobs:
            raise WeightsError(f"{self.source}: layer '{layer.name}' ({layer.type}) has no weights "
                               "(no blobs of that name)")
        if len(blobs) != (2 if bias else 1):
            raise WeightsError(f"{self.source}: layer '{layer.name}' ({layer.type}) has {len(blobs)} blobs, "
                               f"its definition says {'weight and bias' if bias else 'a weight only'}")
        w = _squeeze(blobs[0], legacy_ndim)
        if tuple(w.shape) != tuple(weight_shape):
            raise WeightsError(f"{self.source}: layer '{layer.name}' ({layer.type}) blob 0 has shape "
                               f"{tuple(blobs[0].shape)}, the definition gives {tuple(weight_shape)}")
        out = {"weight": w}
        if bias:
            b = _squeeze(blobs[1], 1)
            if tuple(b.shape) != (weight_shape[0],):
                raise WeightsError(f"{self.source}: layer '{layer.name}' ({layer.type}) blob 1 has shape "
                                   f"{tuple(blobs[1].shape)}, the definition gives ({weight_shape[0]},)")
            out["bias"] = b
        for key, arr in out.items():
            if not np.all(np.isfinite(arr)):
                raise WeightsError(f"{self.source}: layer '{layer.name}' {key} contains NaN or infinity")
        self.params[layer.name] = out

    def _fused_relu(self, node: _Node) -> _Node | None:
        """The ReLU node that is the only reader of ``node`` and reads only it, if plain."""
        nxt = self.next_of(node)
        if len(nxt) == 1 and nxt[0].type == "ReLU" and len(nxt[0].inputs) == 1:
            slope = _last(_msg(nxt[0].layer.params, "relu_param").get("negative_slope", 0.0))
            if slope == 0:
                return nxt[0]
        return None

    def convert(self, node: _Node, shape: tuple) -> tuple[list[dict], tuple, _Node]:
        """Specs for one Caffe layer (a following ReLU folded in): ``(specs, out shape, last node)``."""
        layer, ltype = node.layer, node.type
        for src in node.inputs:
            if not isinstance(src, _Node):
                raise _Stop(layer.name, ltype, f"bottom '{src[1]}' is not computed from the image input")
        if len(node.inputs) != 1:
            raise _Stop(layer.name, ltype, f"{len(node.inputs)} bottoms; zfnet runs one-input layers here")
        if ltype not in SUPPORTED_TYPES:
            raise _Stop(layer.name, ltype, "zfnet has no such layer")
        try:
            return getattr(self, "_" + ltype.lower())(node, shape)
        except ValueError as exc:
            raise _Stop(layer.name, ltype, str(exc)) from None

    def _convolution(self, node, shape):
        p = _msg(node.layer.params, "convolution_param")
        if len(shape) != 4:
            raise ValueError(f"input of shape {shape}, a convolution needs (N, C, H, W)")
        if _last(p.get("axis", 1)) not in (1, -3):
            raise ValueError(f"axis {_last(p['axis'])}; zfnet convolves over the channel axis 1")
        out = _int(_last(p.get("num_output")), "num_output", 1, 1 << 20)
        groups = _int(_last(p.get("group", 1)), "group", 1, 1 << 20)
        bias = bool(_last(p.get("bias_term", True)))
        kernel = _hw(p, "kernel", None, 1)
        stride, pad = _hw(p, "stride", 1, 1), _hw(p, "pad", 0, 0)
        dilation = _hw(p, "dilation", 1, 1)
        c, h, w = shape[1:]
        if c % groups or out % groups:
            raise ValueError(f"channels {c}->{out} are not divisible by group {groups}")
        eff = [(k - 1) * d + 1 for k, d in zip(kernel, dilation)]
        if h + 2 * pad[0] < eff[0] or w + 2 * pad[1] < eff[1]:
            raise ValueError(f"its {h}x{w} input (pad {pad}) is smaller than the {eff[0]}x{eff[1]} filter")
        relu = self._fused_relu(node)
        self._weights(node, bias, (out, c // groups) + kernel, 4)
        spec = {"type": "conv", "name": node.name, "in": c, "out": out, "kernel": list(kernel),
                "stride": list(stride), "pad": list(pad), "dilation": list(dilation), "groups": groups,
                "relu": relu is not None, "bias": bias}
        out_shape = (shape[0], out, conv_out_size(h, eff[0], stride[0], pad[0]),
                     conv_out_size(w, eff[1], stride[1], pad[1]))
        return [spec], out_shape, relu or node

    def _innerproduct(self, node, shape):
        p = _msg(node.layer.params, "inner_product_param")
        if _last(p.get("axis", 1)) != 1:
            raise ValueError(f"axis {_last(p['axis'])}; zfnet's fully connected layers flatten from axis 1")
        out = _int(_last(p.get("num_output")), "num_output", 1, 1 << 20)
        bias = bool(_last(p.get("bias_term", True)))
        specs = []
        if len(shape) != 2:
            name = node.name + "/flatten"
            while name in self.used_names:
                name += "_"
            self.used_names.add(name)
            specs.append({"type": "flatten", "name": name})  # Caffe's InnerProduct flattens C, H, W in C order
        features = math.prod(shape[1:])
        relu = self._fused_relu(node)
        if bool(_last(p.get("transpose", False))):  # the blob is stored (in, out): our weight is its transpose
            blob = self.blobs.get(node.name, [None])
            if blob and blob[0] is not None:
                self.blobs = dict(self.blobs, **{node.name: [_squeeze(blob[0], 2).T.copy()] + list(blob[1:])})
        self._weights(node, bias, (out, features), 2)
        specs.append({"type": "fc", "name": node.name, "in": features, "out": out,
                      "relu": relu is not None, "bias": bias})
        return specs, (shape[0], out), relu or node

    def _relu(self, node, shape):
        slope = _last(_msg(node.layer.params, "relu_param").get("negative_slope", 0.0))
        if slope != 0:
            raise ValueError(f"a leaky ReLU (negative_slope {slope}); zfnet's rectifier is max(x, 0)")
        return [{"type": "relu", "name": node.name}], shape, node

    def _pooling(self, node, shape):
        p = _msg(node.layer.params, "pooling_param")
        method = _enum(p.get("pool", "MAX"), ("MAX", "AVE", "STOCHASTIC"), "pool")
        if method == "STOCHASTIC":
            raise ValueError("STOCHASTIC pooling (its test-time weighted average is not implemented)")
        if len(shape) != 4:
            raise ValueError(f"input of shape {shape}, pooling needs (N, C, H, W)")
        n, c, h, w = shape
        if bool(_last(p.get("global_pooling", False))):
            if method == "AVE":
                return [{"type": "adaptive_avgpool", "name": node.name, "out": [1, 1]}], (n, c, 1, 1), node
            return ([{"type": "maxpool", "name": node.name, "kernel": [h, w], "stride": [1, 1], "pad": [0, 0],
                      "ceil": True}], (n, c, 1, 1), node)
        kernel = _hw(p, "kernel", None, 1)
        stride, pad = _hw(p, "stride", 1, 1), _hw(p, "pad", 0, 0)
        ceil = _enum(p.get("round_mode", "CEIL"), ("CEIL", "FLOOR"), "round_mode") == "CEIL"
        size = []
        for n_in, k, s, q in zip((h, w), kernel, stride, pad):
            if q > k // 2:
                raise ValueError(f"padding {q} is more than half the {k}-wide window (zfnet, like PyTorch, "
                                 "pads pools by at most k // 2)")
            if n_in + 2 * q < k:
                raise ValueError(f"its {h}x{w} input (pad {pad}) is smaller than the {kernel} window")
            size.append(_caffe_pool_size(n_in, k, s, q, ceil, any(pad)))
        ours = [_our_pool_size(n_in, k, s, q, ceil) for n_in, k, s, q in zip((h, w), kernel, stride, pad)]
        if size != ours:
            raise ValueError(f"Caffe's output size {size[0]}x{size[1]} puts a last window wholly past the "
                             f"{h}x{w} input (an empty window); zfnet's rule gives {ours[0]}x{ours[1]}")
        kind = "maxpool" if method == "MAX" else "avgpool"
        spec = {"type": kind, "name": node.name, "kernel": list(kernel), "stride": list(stride),
                "pad": list(pad), "ceil": ceil}
        return [spec], (n, c, size[0], size[1]), node

    def _lrn(self, node, shape):
        p = _msg(node.layer.params, "lrn_param")
        size = _int(_last(p.get("local_size", 5)), "local_size", 1, 4095)
        if size % 2 == 0:
            raise ValueError(f"local_size {size}; Caffe's LRN takes odd sizes only")
        alpha, beta = _real(_last(p.get("alpha", 1.0)), "alpha"), _real(_last(p.get("beta", 0.75)), "beta")
        k = _real(_last(p.get("k", 1.0)), "k")
        region = _enum(p.get("norm_region", "ACROSS_CHANNELS"), ("ACROSS_CHANNELS", "WITHIN_CHANNEL"), "norm_region")
        if len(shape) != 4:
            raise ValueError(f"input of shape {shape}, LRN needs (N, C, H, W)")
        if region == "WITHIN_CHANNEL":
            if k != 1.0:
                self.notes.append(f"{node.name}: WITHIN_CHANNEL LRN with k {k:g}; Caffe ignores k there "
                                  "(its shift is 1), and so does zfnet")
            k = 1.0
        spec = {"type": "lrn", "name": node.name, "size": size, "alpha": alpha, "beta": beta, "k": k,
                "region": region.lower()}
        return [spec], shape, node

    def _dropout(self, node, shape):
        ratio = _real(_last(_msg(node.layer.params, "dropout_param").get("dropout_ratio", 0.5)), "dropout_ratio")
        if not 0 <= ratio < 1:
            raise ValueError(f"dropout_ratio {ratio}, expected 0 <= ratio < 1")
        return [{"type": "dropout", "name": node.name, "p": ratio}], shape, node

    def _softmax(self, node, shape):
        axis = _last(_msg(node.layer.params, "softmax_param").get("axis", 1))
        if axis not in (1, 1 - len(shape)):  # axis 1, or its negative alias (-1 on (N, F), -3 on (N, C, H, W))
            raise ValueError(f"axis {axis}; zfnet's softmax runs over the channel axis 1")
        return [{"type": "softmax", "name": node.name}], shape, node

    def _flatten(self, node, shape):
        p = _msg(node.layer.params, "flatten_param")
        if _last(p.get("axis", 1)) != 1 or _last(p.get("end_axis", -1)) not in (-1, len(shape) - 1):
            raise ValueError("a flatten of other axes than 1 .. the last")
        return [{"type": "flatten", "name": node.name}], (shape[0], math.prod(shape[1:])), node

    def _concat(self, node, shape):  # one bottom: the identity
        return [], shape, node

    # -- walking ------------------------------------------------------------
    def follow(self, node: _Node, shape: tuple, top: bool):
        """From ``node``'s output down the graph: ``(specs, last node, shape, merge node or None)``.

        Stops at the end of the network or, inside a branch, at a multi-input Concat
        (the merge, returned).  At the top level a layer that cannot run ends the
        network (the reason goes to the notes); inside a branch it propagates.
        """
        specs: list[dict] = []
        while True:
            nxt = self.next_of(node)
            if not nxt:
                return specs, node, shape, None
            merging = [c for c in nxt if c.type == "Concat" and len(c.inputs) > 1]
            try:
                if len(nxt) == 1 and not merging:
                    new, shape, node = self.convert(nxt[0], shape)
                    specs += new
                    continue
                if len(nxt) == 1:
                    if not top:
                        return specs, node, shape, nxt[0]
                    raise _Stop(nxt[0].name, "Concat", f"joins blobs that do not all come from '{node.name}'")
                concat, shape_out, merge = self.fan_out(node, nxt, shape)
            except _Stop as stop:
                if not top:
                    raise
                self.stopped = (stop, node)
                return specs, node, shape, None
            specs.append(concat)
            node, shape = merge, shape_out

    def fan_out(self, node: _Node, nxt: list[_Node], shape: tuple):
        """Branches from ``node`` that meet in one Concat -> one concat spec."""
        if len(nxt) > _MAX_BRANCHES or self.depth >= _MAX_NESTING:
            raise _Stop(nxt[0].name, nxt[0].type, f"'{node.name}' feeds {len(nxt)} layers at concatenation depth "
                                                  f"{self.depth}; zfnet takes at most {_MAX_BRANCHES} branches, "
                                                  f"nested at most {_MAX_NESTING} deep")
        self.depth += 1
        try:
            return self._fan_out(node, nxt, shape)
        finally:
            self.depth -= 1

    def _fan_out(self, node: _Node, nxt: list[_Node], shape: tuple):
        names = ", ".join(f"'{c.name}' ({c.type})" for c in nxt)
        blob = node.layer.top[0] if node.layer is not None and node.layer.top else "data"
        ends = []
        for c in nxt:
            if c.type == "Concat" and len(c.inputs) > 1:
                ends.append(([], node, shape, c))  # the blob itself is concatenated
                continue
            try:
                first, s, last = self.convert(c, shape)
                rest, last, s, merge = self.follow(last, s, top=False)
            except _Stop as inner:
                raise _Stop(nxt[0].name, nxt[0].type, f"blob '{blob}' feeds {names}, and in those branches "
                                                      f"{inner}") from None
            ends.append((first + rest, last, s, merge))
        merges = {id(e[3]) for e in ends}
        merge = ends[0][3]
        if len(merges) != 1 or merge is None:
            raise _Stop(nxt[0].name, nxt[0].type, f"blob '{blob}' feeds {names}, which do not meet again in one "
                                                  "Concat (zfnet runs chains and concatenations)")
        p = _msg(merge.layer.params, "concat_param")
        axis = _last(p.get("axis", p.get("concat_dim", 1)))
        if axis not in (1, 1 - len(shape)):
            raise _Stop(merge.name, "Concat", f"axis {axis}; zfnet concatenates channels (axis 1)")
        branches, shapes, left = [], [], list(range(len(ends)))
        for src in merge.inputs:  # the concat's bottom order is the branch order
            match = next((i for i in left if ends[i][1] is src), None)
            if match is None:
                raise _Stop(merge.name, "Concat", f"joins a blob that does not come from '{node.name}'")
            left.remove(match)
            branches.append(ends[match][0])
            shapes.append(ends[match][2])
        if left:
            raise _Stop(merge.name, "Concat", f"does not join every branch from '{node.name}'")
        if len({s[2:] for s in shapes}) > 1 or len({len(s) for s in shapes}) > 1:
            raise _Stop(merge.name, "Concat", f"joins blobs of shapes {shapes}; only channels may differ")
        out = (shape[0], sum(s[1] for s in shapes)) + tuple(shapes[0][2:])
        return {"type": "concat", "name": merge.name, "branches": branches}, out, merge


def _squeeze(arr: np.ndarray, ndim: int) -> np.ndarray:
    """Drop Caffe's legacy leading ones: (1, 1, out, in) -> (out, in), (1, 1, 1, n) -> (n,)."""
    arr = np.asarray(arr)
    if arr.ndim > ndim and all(d == 1 for d in arr.shape[: arr.ndim - ndim]):
        return arr.reshape(arr.shape[arr.ndim - ndim:])
    return arr


def _caffe_pool_size(n: int, k: int, s: int, p: int, ceil: bool, padded: bool) -> int:
    """Caffe's pooled size: ``ceil((n + 2p - k) / s) + 1`` (or floor), then -- only when the
    layer pads at all -- one fewer if the last window would start past ``n + p``."""
    out = (-(-(n + 2 * p - k) // s) if ceil else (n + 2 * p - k) // s) + 1
    if padded and (out - 1) * s >= n + p:
        out -= 1
    return out


def _our_pool_size(n: int, k: int, s: int, p: int, ceil: bool) -> int:
    from ..ops._shape import pool_out_size

    return pool_out_size(n, k, s, p, ceil)


# --------------------------------------------------------------------- the network


def _preprocess(inputs: Mapping[str, dict], image: str, size: tuple, mean_file, notes: list) -> dict:
    """Caffe's preprocessing: BGR, 0..255, minus the mean (times the transform's scale)."""
    transform = inputs[image]["transform"]
    scale = _real(_last(transform.get("scale", 1.0)), "transform_param.scale")
    if not 1e-6 <= scale <= 1e6:
        raise WeightsError(f"transform_param scale {scale} is out of range")
    if mean_file is not None:
        mean, note = read_mean(mean_file)
        notes.append(note)
    elif transform.get("mean_value"):
        values = transform["mean_value"] if isinstance(transform["mean_value"], list) else [transform["mean_value"]]
        values = [_real(v, "mean_value") for v in values]
        if len(values) not in (1, 3):
            raise WeightsError(f"transform_param has {len(values)} mean_value entries, expected 1 or 3")
        mean = values * 3 if len(values) == 1 else values
        notes.append(f"mean (B, G, R) = {tuple(mean)} from the definition's transform_param")
    else:
        where = transform.get("mean_file")
        mean = list(_BVLC_MEAN)
        notes.append((f"the definition subtracts the mean file '{_last(where)}', which was not read: pass "
                      "--mean FILE.binaryproto; until then " if where else "the definition gives no mean; ")
                     + "the BVLC ImageNet per-channel mean (B, G, R) = (104, 117, 123) is assumed")
    resize = max(256, max(size))
    return {"input_size": list(size), "resize": resize, "channel_order": "BGR",
            "mean": [m * scale for m in mean], "std": [1.0, 1.0, 1.0], "scale": scale}


def caffe_network(net: Mapping, layers: Sequence[CaffeLayer], blobs: Mapping[str, list], source: str, *,
                  mean=None, arch: str | None = None, truncate: bool = True,
                  input_size: tuple[int, int] | None = None, definition: str = "the file's own definition"):
    """The zfnet network a Caffe definition describes, with the weights of ``blobs``.

    Parameters
    ----------
    net, layers :
        From :func:`~zfnet.weights.caffe.read_caffe_net` or :func:`prototxt_layers`.
    blobs : mapping
        Layer name -> ``[weight, bias]`` (legacy 4-D shapes are squeezed).
    source : str
        Named in messages and notes.
    mean : path, optional
        A ``.binaryproto`` mean file (its per-channel average is subtracted).
    arch : str, optional
        Require the graph to be this known architecture.
    truncate : bool
        End the network before a layer it cannot run (default), or refuse the file.
    input_size : (H, W), optional
        Overrides the input size when the definition gives none (or another).
    definition : str
        Where the definition came from, for ``config["caffe"]["definition"]``.

    Returns
    -------
    Network
        ``alexnet``/``zfnet``/``squeezenet1_0`` when the graph is one of them
        (:func:`zfnet.models.recognise`), else a ``caffe-graph`` network with the
        file's layer names.  Either way ``config["caffe"]`` holds ``net``, ``graph``
        ("the file's definition" or the prototxt), ``recognised`` and ``notes``.

    Raises
    ------
    WeightsError
        A layer that cannot run (with ``truncate=False``, or with nothing before it),
        weights missing or of the wrong shape (naming layer, expected and found
        shape), an input size that cannot be found, or not 3 channels.
    """
    from ..models import graph_network, recognise

    notes: list[str] = []
    old = [layer for layer in layers if layer.version == 0]
    if old:
        raise WeightsError(f"{source}: layer '{old[0].name}' is a V0 definition (Caffe before 2014), which zfnet "
                           "does not read; upgrade it with Caffe's upgrade_net_proto_binary, or give the "
                           "network's .prototxt (--prototxt)")
    kept = [layer for layer in layers if _included(layer)]
    if len(kept) < len(layers):
        notes.append(f"{len(layers) - len(kept)} layers left out by the TEST phase's include/exclude rules")
    training = [layer for layer in kept if layer.type in ("Accuracy", "Silence") or layer.type.endswith("Loss")]
    if training:
        notes.append("training-only layers left out: " + ", ".join(f"{t.name} ({t.type})" for t in training[:6])
                     + (" ..." if len(training) > 6 else ""))
    try:
        inputs = _declared_inputs(net, kept)
    except ValueError as exc:
        raise WeightsError(f"{source}: input: {exc}") from None
    run = [layer for layer in kept if layer not in training and layer.type not in DATA_TYPES]
    image = _image_input(inputs, run, source, input_size)
    shape = (1,) + tuple(inputs[image]["shape"][1:])
    if not all(_MAX_SIDE >= s >= 1 for s in shape[2:]):
        raise WeightsError(f"{source}: input '{image}' is {shape[2]}x{shape[3]}; zfnet takes 1..{_MAX_SIDE} pixels")
    notes.append(f"input '{image}' {shape[2]}x{shape[3]} ({inputs[image]['from']})")
    builder = _Builder(run, dict(blobs), source, notes)
    root = builder.connect(image, inputs)
    specs, _, _, _ = builder.follow(root, shape, top=True)
    if not specs and builder.stopped is None:
        raise WeightsError(f"{source}: no layer of the definition reads input '{image}'")
    if builder.stopped is not None:
        stop, _ = builder.stopped
        has_weights = any(s["type"] in ("conv", "fc", "concat") for s in specs)
        if not truncate or not has_weights:
            why = "" if truncate else " (truncate=False)"
            raise WeightsError(f"{source}: {stop}; zfnet cannot run it{why}"
                               + ("" if has_weights else ", and nothing with weights comes before it"))
        note = (f"the network ends before layer '{stop.name}' ({stop.ltype}): {stop.reason}; it is kept up to "
                f"'{specs[-1]['name']}'")
        notes.append(note)
        warnings.warn(f"{source}: {note}", stacklevel=3)
    unused = sorted(set(blobs) - set(builder.params))
    if unused:
        notes.append(f"{len(unused)} layers with weights are not part of the network: {', '.join(unused[:8])}"
                     + (" ..." if len(unused) > 8 else ""))
    state = _state(specs, builder.params)
    config = {"variant": _last(net.get("name", "")) or "caffe", "input_size": list(shape[2:]),
              **_preprocess(inputs, image, tuple(shape[2:]), mean, notes)}
    model = graph_network(specs, config, state, source=source)
    known = recognise(model)
    caffe = {"net": config["variant"], "definition": f"{definition} ({len(layers)} layers)", "recognised": None,
             "notes": notes}
    if known is not None:
        if specs[-1]["type"] == "softmax":
            notes.append(f"the final Softmax '{specs[-1]['name']}' is left out: {known.arch} returns the scores")
        caffe["recognised"] = known.arch + (f" (variant {known.config['variant']})" if known.config.get("variant")
                                            else "")
        known.config.update({k: v for k, v in config.items() if k not in ("variant",)})
        model = known
    elif arch is not None:
        raise WeightsError(f"{source}: its graph is not {arch} (layers: "
                           + ", ".join(f"{s['name']} ({s['type']})" for s in specs[:12]) + ")")
    if arch is not None and model.arch != arch:
        raise WeightsError(f"{source}: its graph is {model.arch}, not {arch}")
    model.config["caffe"] = caffe
    return model.eval()


def _image_input(inputs: Mapping[str, dict], run: Sequence[CaffeLayer], source: str,
                 input_size: tuple[int, int] | None) -> str:
    """The input blob the layers read as the image; its shape made (None, 3, H, W)."""
    read = {b for layer in run for b in layer.bottom}
    candidates = [name for name in inputs if name in read]
    if not candidates:
        sources = [f"'{layer.name}' ({layer.type})" for layer in run if not layer.bottom and layer.top]
        raise WeightsError(f"{source}: no input blob (Input layer, input/input_shape/input_dim or data layer) "
                           "that the layers read" + (f"; the data come from {', '.join(sources[:3])}, whose "
                                                    "output size is not in the definition: give a .prototxt "
                                                    "with an input_shape (--prototxt)" if sources else ""))
    image = next((n for n in candidates if inputs[n]["shape"] is not None and len(inputs[n]["shape"]) == 4
                  and inputs[n]["shape"][1] == 3), candidates[0])
    info = inputs[image]
    shape = info["shape"]
    if input_size is not None:
        shape = (None, 3) + tuple(int(v) for v in input_size)
    if shape is None or len(shape) != 4 or None in shape[1:]:
        raise WeightsError(f"{source}: the definition does not give the size of input '{image}' ({info['from']}); "
                           "give a .prototxt with an input_shape (--prototxt) or input_size=(H, W)")
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in shape[1:]):
        raise WeightsError(f"{source}: input '{image}' has shape {shape[1:]}, expected integers")
    if shape[1] != 3:
        raise WeightsError(f"{source}: input '{image}' has {shape[1]} channels; zfnet runs 3-channel (BGR) image "
                           "networks")
    info["shape"] = shape
    return image


def _state(specs: list, params: Mapping[str, dict]) -> dict[str, np.ndarray]:
    """State-dict keys for the collected weights, prefixed by their concatenations."""
    out = {}

    def walk(items, prefix):
        for s in items:
            if s["type"] in ("conv", "fc"):
                for key, arr in params[s["name"]].items():
                    out[f"{prefix}{s['name']}.{key}"] = np.asarray(arr, dtype=np.float32)
            elif s["type"] == "concat":
                for branch in s["branches"]:
                    walk(branch, f"{prefix}{s['name']}.")

    walk(specs, "")
    return out
