"""Caffe files run as they are written: networks built from a file's own layer list.

Every file here is written by this test's own minimal protobuf writer (below; it
shares nothing with zfnet.weights), with field numbers typed in from Caffe's
``caffe.proto``.  Each network is checked against an independent PyTorch build of
the same definition (:func:`torch_caffe`: Caffe's semantics written with torch ops,
layer by layer, including Caffe's own pooling size rule and AVE divisor), skipped
cleanly when torch is missing.

Tolerance: float32 through a dozen layers; ``max |ours - torch| <= 1e-4 max |torch|``
for every compared blob (the measured errors are around 1e-6, see ``_rel``).
"""

from __future__ import annotations

import struct
import warnings

import numpy as np
import pytest

from zfnet.errors import WeightsError
from zfnet.weights import load

# ------------------------------------------------------------- protobuf, written here

MAX, AVE = 0, 1                      # PoolingParameter.PoolMethod
ACROSS, WITHIN = 0, 1                # LRNParameter.NormRegion
TRAIN, TEST = 0, 1                   # Phase


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _ld(field: int, payload: bytes) -> bytes:  # length-delimited: strings, messages, packed runs
    return _key(field, 2) + _varint(len(payload)) + payload


def _value(field: int, v) -> bytes:
    if isinstance(v, str):
        return _ld(field, v.encode())
    if isinstance(v, float):
        return _key(field, 5) + struct.pack("<f", v)
    return _key(field, 0) + _varint(int(v))  # int, bool, enum


def _message(numbers: dict, values: dict) -> bytes:
    out = b""
    for name, v in values.items():
        for item in (v if isinstance(v, (list, tuple)) else [v]):
            out += _value(numbers[name], item)
    return out


def _blob(a: np.ndarray, legacy: bool) -> bytes:
    a = np.asarray(a, np.float32)
    if legacy:  # num, channels, height, width (fields 1-4), left-padded with ones
        head = b"".join(_value(i + 1, d) for i, d in enumerate((1,) * (4 - a.ndim) + a.shape))
    else:  # BlobShape (7) { dim (1), packed }
        head = _ld(7, _ld(1, b"".join(_varint(d) for d in a.shape)))
    return head + _ld(5, a.astype("<f4").tobytes())  # data (5), packed floats


# caffe.proto field numbers of the parameter messages
CONV = {"num_output": 1, "bias_term": 2, "pad": 3, "kernel_size": 4, "group": 5, "stride": 6, "dilation": 18}
POOL = {"pool": 1, "kernel_size": 2, "stride": 3, "pad": 4, "global_pooling": 12}
LRN = {"local_size": 1, "alpha": 2, "beta": 3, "norm_region": 4, "k": 5}
IP = {"num_output": 1, "bias_term": 2}
DROP = {"dropout_ratio": 1}
CONCAT = {"axis": 2}
RELU = {"negative_slope": 1}
TRANSFORM = {"mirror": 2, "crop_size": 3, "mean_file": 4, "mean_value": 5}
# (V2 LayerParameter field, V1LayerParameter field, the numbers of its message)
PARAMS = {"conv": (106, 10, CONV), "pool": (121, 19, POOL), "lrn": (118, 18, LRN), "ip": (117, 17, IP),
          "drop": (108, 12, DROP), "concat": (104, 9, CONCAT), "relu": (123, 30, RELU),
          "transform": (100, 36, TRANSFORM)}
V1_TYPES = {"Convolution": 4, "ReLU": 18, "Pooling": 17, "LRN": 15, "InnerProduct": 14, "Dropout": 6,
            "Softmax": 20, "Concat": 3, "Data": 5, "Accuracy": 1, "SoftmaxWithLoss": 21, "Split": 22,
            "Sigmoid": 19}


def L(name, type_, bottom, top=None, **params):
    """A layer of a test definition: ``params`` keys as in :data:`PARAMS`, plus ``include`` (phase)."""
    bottom = [bottom] if isinstance(bottom, str) else list(bottom)
    top = [name] if top is None else ([top] if isinstance(top, str) else list(top))
    return {"name": name, "type": type_, "bottom": bottom, "top": top, **params}


def encode_net(layers, blobs, v1=False, name="net", input_shape=None, input_style="input_shape",
               legacy=None) -> bytes:
    """A NetParameter with definitions and (for the layers in ``blobs``) weights."""
    legacy = v1 if legacy is None else legacy
    out = _value(1, name)
    if input_shape is not None and input_style == "input_shape":
        out += _value(3, "data") + _ld(8, _ld(1, b"".join(_varint(d) for d in input_shape)))
    elif input_shape is not None and input_style == "input_dim":
        out += _value(3, "data") + b"".join(_value(4, d) for d in input_shape)
    elif input_shape is not None:  # an Input layer (V2): input_param (143) { shape (1) { dim } }
        body = _value(1, "data") + _value(2, "Input") + _value(4, "data")
        out += _ld(100, body + _ld(143, _ld(1, _ld(1, b"".join(_varint(d) for d in input_shape)))))
    for layer in layers:
        if v1:
            body = _value(4, layer["name"]) + _value(5, V1_TYPES[layer["type"]])
            body += b"".join(_value(2, b) for b in layer["bottom"]) + b"".join(_value(3, t) for t in layer["top"])
        else:
            body = _value(1, layer["name"]) + _value(2, layer["type"])
            body += b"".join(_value(3, b) for b in layer["bottom"]) + b"".join(_value(4, t) for t in layer["top"])
        if "include" in layer:  # NetStateRule (V2 8, V1 32) { phase (1) }
            body += _ld(32 if v1 else 8, _value(1, layer["include"]))
        for key, (f2, f1, numbers) in PARAMS.items():
            if key in layer:
                body += _ld(f1 if v1 else f2, _message(numbers, layer[key]))
        for b in blobs.get(layer["name"], []):
            body += _ld(6 if v1 else 7, _blob(b, legacy))
        out += _ld(2 if v1 else 100, body)
    return out


def write_net(path, layers, blobs, **kwargs):
    path.write_bytes(encode_net(layers, blobs, **kwargs))
    return path


# -------------------------------------------------- the definitions and their weights


def caffenet(w=(96, 256, 384, 384, 256), fc=(64, 64, 10), norm_first=False, training=True, prob=False):
    """bvlc_reference_caffenet (pool before norm), or AlexNet's order with ``norm_first``."""
    c1, c2, c3, c4, c5 = w
    layers = []
    if training:  # the released file: two data layers by phase, accuracy and loss
        layers += [L("data", "Data", [], ["data", "label"], include=TRAIN,
                     transform={"crop_size": 227, "mirror": True, "mean_file": "imagenet_mean.binaryproto"}),
                   L("data", "Data", [], ["data", "label"], include=TEST,
                     transform={"crop_size": 227, "mean_file": "imagenet_mean.binaryproto"})]
    layers.append(L("conv1", "Convolution", "data", conv={"num_output": c1, "kernel_size": 11, "stride": 4}))
    layers.append(L("relu1", "ReLU", "conv1", "conv1"))
    block = [L("pool1", "Pooling", "conv1", pool={"pool": MAX, "kernel_size": 3, "stride": 2}),
             L("norm1", "LRN", "pool1", lrn={"local_size": 5, "alpha": 1e-4, "beta": 0.75})]
    if norm_first:
        block = [L("norm1", "LRN", "conv1", lrn={"local_size": 5, "alpha": 1e-4, "beta": 0.75}),
                 L("pool1", "Pooling", "norm1", pool={"pool": MAX, "kernel_size": 3, "stride": 2})]
    layers += block
    layers += [L("conv2", "Convolution", block[-1]["name"],
                 conv={"num_output": c2, "pad": 2, "kernel_size": 5, "group": 2}),
               L("relu2", "ReLU", "conv2", "conv2")]
    block = [L("pool2", "Pooling", "conv2", pool={"pool": MAX, "kernel_size": 3, "stride": 2}),
             L("norm2", "LRN", "pool2", lrn={"local_size": 5, "alpha": 1e-4, "beta": 0.75})]
    if norm_first:
        block = [L("norm2", "LRN", "conv2", lrn={"local_size": 5, "alpha": 1e-4, "beta": 0.75}),
                 L("pool2", "Pooling", "norm2", pool={"pool": MAX, "kernel_size": 3, "stride": 2})]
    layers += block
    layers += [
        L("conv3", "Convolution", block[-1]["name"], conv={"num_output": c3, "pad": 1, "kernel_size": 3}),
        L("relu3", "ReLU", "conv3", "conv3"),
        L("conv4", "Convolution", "conv3", conv={"num_output": c4, "pad": 1, "kernel_size": 3, "group": 2}),
        L("relu4", "ReLU", "conv4", "conv4"),
        L("conv5", "Convolution", "conv4", conv={"num_output": c5, "pad": 1, "kernel_size": 3, "group": 2}),
        L("relu5", "ReLU", "conv5", "conv5"),
        L("pool5", "Pooling", "conv5", pool={"pool": MAX, "kernel_size": 3, "stride": 2}),
        L("fc6", "InnerProduct", "pool5", ip={"num_output": fc[0]}),
        L("relu6", "ReLU", "fc6", "fc6"), L("drop6", "Dropout", "fc6", "fc6", drop={"dropout_ratio": 0.5}),
        L("fc7", "InnerProduct", "fc6", ip={"num_output": fc[1]}),
        L("relu7", "ReLU", "fc7", "fc7"), L("drop7", "Dropout", "fc7", "fc7", drop={"dropout_ratio": 0.5}),
        L("fc8", "InnerProduct", "fc7", ip={"num_output": fc[2]}),
    ]
    if training:
        layers += [L("accuracy", "Accuracy", ["fc8", "label"], include=TEST),
                   L("loss", "SoftmaxWithLoss", ["fc8", "label"])]
    if prob:
        layers.append(L("prob", "Softmax", "fc8"))
    return layers


def zf_faster_rcnn(w=(96, 256, 384, 384, 256), fc=(32, 32, 10)):
    """py-faster-rcnn's ZF (the ImageNet ZF.v2 layout): pad 3 conv1, WITHIN_CHANNEL LRN before padded pools."""
    c1, c2, c3, c4, c5 = w
    lrn = {"local_size": 3, "alpha": 5e-5, "beta": 0.75, "norm_region": WITHIN}
    pool = {"pool": MAX, "kernel_size": 3, "stride": 2, "pad": 1}
    return [
        L("conv1", "Convolution", "data", conv={"num_output": c1, "kernel_size": 7, "pad": 3, "stride": 2}),
        L("relu1", "ReLU", "conv1", "conv1"),
        L("norm1", "LRN", "conv1", lrn=lrn), L("pool1", "Pooling", "norm1", pool=pool),
        L("conv2", "Convolution", "pool1", conv={"num_output": c2, "kernel_size": 5, "pad": 2, "stride": 2}),
        L("relu2", "ReLU", "conv2", "conv2"),
        L("norm2", "LRN", "conv2", lrn=lrn), L("pool2", "Pooling", "norm2", pool=pool),
        L("conv3", "Convolution", "pool2", conv={"num_output": c3, "kernel_size": 3, "pad": 1}),
        L("relu3", "ReLU", "conv3", "conv3"),
        L("conv4", "Convolution", "conv3", conv={"num_output": c4, "kernel_size": 3, "pad": 1}),
        L("relu4", "ReLU", "conv4", "conv4"),
        L("conv5", "Convolution", "conv4", conv={"num_output": c5, "kernel_size": 3, "pad": 1}),
        L("relu5", "ReLU", "conv5", "conv5"),
        L("pool5", "Pooling", "conv5", pool={"pool": MAX, "kernel_size": 3, "stride": 2}),
        L("fc6", "InnerProduct", "pool5", ip={"num_output": fc[0]}), L("relu6", "ReLU", "fc6", "fc6"),
        L("drop6", "Dropout", "fc6", "fc6", drop={"dropout_ratio": 0.5}),
        L("fc7", "InnerProduct", "fc6", ip={"num_output": fc[1]}), L("relu7", "ReLU", "fc7", "fc7"),
        L("fc8", "InnerProduct", "fc7", ip={"num_output": fc[2]}),
    ]


def branchy():
    """Grouped, dilated and bias-free convolutions, WITHIN_CHANNEL LRN, padded AVE pooling,
    an inception-like Concat (with a Split and the input itself as a branch), a ReLU on its
    own, global pooling, a Softmax."""
    return [
        L("conv1", "Convolution", "data", conv={"num_output": 8, "kernel_size": 3, "pad": 1}),
        L("relu1", "ReLU", "conv1", "conv1"),
        L("norm1", "LRN", "conv1", lrn={"local_size": 5, "alpha": 1e-3, "beta": 0.75, "norm_region": WITHIN}),
        L("split", "Split", "norm1", ["n1a", "n1b", "n1c"]),
        L("b1", "Convolution", "n1a", conv={"num_output": 6, "kernel_size": 3, "pad": 2, "dilation": 2,
                                              "group": 2}),
        L("b1relu", "ReLU", "b1", "b1"),
        L("b2", "Pooling", "n1b", pool={"pool": AVE, "kernel_size": 3, "stride": 1, "pad": 1}),
        L("b2conv", "Convolution", "b2", conv={"num_output": 4, "kernel_size": 1, "bias_term": False}),
        L("mix", "Concat", ["b1", "b2conv", "n1c"]),
        L("mixrelu", "ReLU", "mix", "mix"),
        L("pool", "Pooling", "mix", pool={"pool": AVE, "kernel_size": 3, "stride": 2, "pad": 1}),
        L("conv2", "Convolution", "pool", conv={"num_output": 12, "kernel_size": 3, "group": 3, "stride": 2}),
        L("relu2", "ReLU", "conv2", "conv2"),
        L("gmax", "Pooling", "conv2", pool={"pool": MAX, "global_pooling": True}),
        L("fc", "InnerProduct", "gmax", ip={"num_output": 5}),
        L("prob", "Softmax", "fc"),
    ]


def weights_for(layers, input_shape, seed=0):
    """He-scaled random weights (biases too) of the shapes the definition implies."""
    rng = np.random.default_rng(seed)
    shapes = {"data": tuple(input_shape)}
    blobs = {}
    for layer in layers:
        t, b, top = layer["type"], layer["bottom"], layer["top"]
        if t in ("Data", "Accuracy", "SoftmaxWithLoss"):
            continue
        s = shapes[b[0]]
        if t == "Convolution":
            p = layer["conv"]
            k, st, pad, d = p["kernel_size"], p.get("stride", 1), p.get("pad", 0), p.get("dilation", 1)
            g, o = p.get("group", 1), p["num_output"]
            wshape = (o, s[1] // g, k, k)
            blobs[layer["name"]] = [rng.standard_normal(wshape, np.float32) * np.sqrt(2 / np.prod(wshape[1:]))]
            if p.get("bias_term", True):
                blobs[layer["name"]].append(rng.standard_normal(o, np.float32) * 0.1)
            e = (k - 1) * d + 1
            out = (s[0], o, (s[2] + 2 * pad - e) // st + 1, (s[3] + 2 * pad - e) // st + 1)
        elif t == "InnerProduct":
            o, n_in = layer["ip"]["num_output"], int(np.prod(s[1:]))
            blobs[layer["name"]] = [rng.standard_normal((o, n_in), np.float32) * np.sqrt(2 / n_in),
                                    rng.standard_normal(o, np.float32) * 0.1]
            out = (s[0], o)
        elif t == "Pooling":
            p = layer["pool"]
            if p.get("global_pooling"):
                out = s[:2] + (1, 1)
            else:
                size = [_caffe_pooled(n, p["kernel_size"], p.get("stride", 1), p.get("pad", 0)) for n in s[2:]]
                out = s[:2] + tuple(size)
        elif t == "Concat":
            out = (s[0], sum(shapes[x][1] for x in b)) + s[2:]
        else:
            out = s
        for name in top:
            shapes[name] = out
    return blobs


def _caffe_pooled(n, k, s, p):
    """Caffe's pooled size: ceil((n + 2p - k) / s) + 1, one less if it pads and the last window starts past n + p."""
    out = int(np.ceil((n + 2 * p - k) / s)) + 1
    if p and (out - 1) * s >= n + p:
        out -= 1
    return out


# ---------------------------------------------------------------- the torch build


def torch_caffe(layers, blobs, x, relu_fn=None, lrn_fn=None, switches=None):
    """Run a definition with torch ops, Caffe's semantics, layer by layer: ``{blob: tensor}``.

    ``relu_fn``/``lrn_fn`` replace the rectifier and the normalisation (for projections);
    ``switches`` (pool name -> flat indices) replaces the choice of maxima by a gather.
    """
    import torch
    import torch.nn.functional as F

    relu_fn = relu_fn or F.relu
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, np.float32))  # noqa: E731
    env = {"data": x}
    for layer in layers:
        typ, name, b, top = layer["type"], layer["name"], layer["bottom"], layer["top"]
        if typ in ("Data", "Accuracy", "SoftmaxWithLoss"):
            continue
        h = env[b[0]]
        if typ == "Convolution":
            p = layer["conv"]
            w = blobs[name]
            h = F.conv2d(h, t(w[0]), t(w[1]) if len(w) > 1 else None, p.get("stride", 1), p.get("pad", 0),
                         p.get("dilation", 1), p.get("group", 1))
        elif typ == "InnerProduct":
            w = blobs[name]
            h = F.linear(h.flatten(1), t(w[0]), t(w[1]))
        elif typ == "ReLU":
            h = relu_fn(h)
        elif typ == "LRN":
            p = layer["lrn"]
            size, alpha, beta = p["local_size"], p["alpha"], p["beta"]
            if lrn_fn is not None:
                h = lrn_fn(h, p)
            elif p.get("norm_region", ACROSS) == WITHIN:  # (1 + alpha * mean of x^2, zero-padded) ^ -beta
                h = h * (1 + alpha * F.avg_pool2d(h * h, size, 1, (size - 1) // 2, count_include_pad=True)) ** -beta
            else:
                h = F.local_response_norm(h, size, alpha, beta, p.get("k", 1.0))
        elif typ == "Pooling":
            p = layer["pool"]
            if p.get("global_pooling"):
                h = h.amax((2, 3), keepdim=True) if p["pool"] == MAX else h.mean((2, 3), keepdim=True)
            else:
                h = _torch_pool(h, p, None if switches is None else switches.get(name))
        elif typ == "Concat":
            h = torch.cat([env[x] for x in b], 1)
        elif typ == "Softmax":
            h = F.softmax(h, 1)
        elif typ not in ("Dropout", "Split"):
            raise TypeError(typ)
        for name_ in top:
            env[name_] = h
    return env


def _torch_pool(h, p, switches):
    """Caffe's pooling: output size by Caffe's rule; MAX pads with -inf, AVE divides by Caffe's divisor."""
    import torch
    import torch.nn.functional as F

    k, s, pad = p["kernel_size"], p.get("stride", 1), p.get("pad", 0)
    n, c, hh, ww = h.shape
    oh, ow = _caffe_pooled(hh, k, s, pad), _caffe_pooled(ww, k, s, pad)
    if switches is not None:  # gather at the given flat indices (autograd: scatter-add there)
        idx = torch.as_tensor(np.asarray(switches))
        return h.flatten(2).gather(2, idx.flatten(2)).view(idx.shape)
    right, bottom = (ow - 1) * s + k - ww - pad, (oh - 1) * s + k - hh - pad
    fill = float("-inf") if p["pool"] == MAX else 0.0
    hp = F.pad(h, (pad, max(right, 0), pad, max(bottom, 0)), value=fill)
    if p["pool"] == MAX:
        return F.max_pool2d(hp, k, s)[:, :, :oh, :ow]
    sums = F.avg_pool2d(hp, k, s, divisor_override=1)[:, :, :oh, :ow]
    div = np.array([[(min(i * s - pad + k, hh + pad) - (i * s - pad)) * (min(j * s - pad + k, ww + pad) - (j * s - pad))
                     for j in range(ow)] for i in range(oh)], np.float32)
    return sums / torch.from_numpy(div)


def _rel(ours, theirs) -> float:
    """max |ours - theirs| / max |theirs| (the number the module docstring bounds by 1e-4)."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    return float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-30))


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _image(shape, seed=1, scale=60.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def _compare(model, layers, blobs, x, names, torch):
    """Our activations vs the torch build's blobs; returns the worst relative error.

    ``names``: activation names that are also the blob names, or ``(activation, blob)``
    pairs (a ReLU on its own records its activation under the layer's name; its in-place
    blob keeps the bottom's name).
    """
    env = torch_caffe(layers, blobs, torch.from_numpy(x))
    acts = model(x).activations
    pairs = [n if isinstance(n, tuple) else (n, n) for n in names]
    errors = {ours: _rel(acts[ours], env[blob].numpy()) for ours, blob in pairs}
    worst = max(errors.values())
    assert worst <= 1e-4, errors
    return worst


# ------------------------------------------------------------------------ the files


def test_caffenet_runs_its_own_order(tmp_path, torch):
    """bvlc_reference_caffenet: pool BEFORE norm, a V1 training file (data layers by phase, loss)."""
    layers = caffenet(w=(24, 32, 48, 48, 32))
    blobs = weights_for(layers, (1, 3, 227, 227))
    path = write_net(tmp_path / "caffenet.caffemodel", layers, blobs, v1=True, name="CaffeNet")
    model = load(path)
    assert model.arch == "caffe-graph" and model.config["caffe"]["recognised"] is None
    names = [layer.name for layer in model.layers]
    assert names[:4] == ["conv1", "pool1", "norm1", "conv2"]  # the file's order, not AlexNet's
    assert model.input_size == (227, 227) and model.config["channel_order"] == "BGR"
    notes = " ".join(model.config["caffe"]["notes"])
    assert "accuracy (Accuracy)" in notes and "loss (SoftmaxWithLoss)" in notes and "include/exclude" in notes
    assert "imagenet_mean.binaryproto" in notes and "--mean" in notes
    x = _image((2, 3, 227, 227))
    err = _compare(model, layers, blobs, x, ["conv1", "norm1", "conv2", "norm2", "conv5", "pool5", "fc8"], torch)
    print(f"CaffeNet max rel. error against torch: {err:.2e}")


def test_alexnet_order_is_recognised(tmp_path, torch):
    """AlexNet's order with AlexNet's widths is alexnet(variant="caffe"), said so; its softmax left out."""
    layers = caffenet(norm_first=True, training=False, prob=True, fc=(16, 16, 7))
    blobs = weights_for(layers, (1, 3, 227, 227), seed=3)
    path = write_net(tmp_path / "alexnet.caffemodel", layers, blobs, v1=True, name="AlexNet",
                     input_shape=(10, 3, 227, 227), input_style="input_dim")
    model = load(path)
    assert model.arch == "alexnet" and model.config["variant"] == "caffe"
    assert model.config["caffe"]["recognised"] == "alexnet (variant caffe)"
    assert any("Softmax 'prob' is left out" in n for n in model.config["caffe"]["notes"])
    assert model.config["fc_width"] == 16 and model.num_classes == 7
    x = _image((1, 3, 227, 227), seed=4)
    err = _compare(model, layers, blobs, x, ["conv1", "pool2", "conv5", "fc8"], torch)
    print(f"AlexNet (recognised) max rel. error against torch: {err:.2e}")
    with pytest.raises(WeightsError, match="its graph is alexnet, not zfnet"):
        load(path, arch="zfnet")


@pytest.fixture(scope="module")
def zf_file(tmp_path_factory):
    """The py-faster-rcnn ZF layout at its real widths (conv part), a small classifier."""
    layers = zf_faster_rcnn()
    blobs = weights_for(layers, (1, 3, 224, 224), seed=5)
    path = tmp_path_factory.mktemp("zf") / "ZF.v2.caffemodel"
    write_net(path, layers, blobs, name="ZF", input_shape=(1, 3, 224, 224))
    return path, layers, blobs


def test_zf_faster_rcnn_layout(zf_file, torch):
    """Within-channel LRN before padded pools: maps 112/57/29/15 at 224, conv5 (256, 15, 15)."""
    path, layers, blobs = zf_file
    model = load(path)
    assert model.arch == "caffe-graph" and model.config["variant"] == "ZF"
    shapes = dict(model.shapes())
    assert shapes["conv1"][2:] == (112, 112) and shapes["pool1"][2:] == (57, 57)
    assert shapes["conv2"][2:] == (29, 29) and shapes["pool2"][2:] == (15, 15)
    assert shapes["conv5"] == (1, 256, 15, 15)
    norm1 = model.layer("norm1")
    assert (norm1.region, norm1.size, norm1.alpha, norm1.beta, norm1.k) == (
        "within_channel", 3, pytest.approx(5e-5), 0.75, 1.0)
    x = _image((1, 3, 224, 224), seed=6)
    err = _compare(model, layers, blobs, x, ["conv1", "norm1", "pool1", "norm2", "pool2", "conv5", "fc8"], torch)
    print(f"ZF py-faster-rcnn layout max rel. error against torch: {err:.2e}")


def test_grouped_dilated_branches_within_lrn(tmp_path, torch):
    """Grouped/dilated/bias-free convs, within-channel LRN, AVE pools, a Concat of branches, Softmax."""
    layers = branchy()
    blobs = weights_for(layers, (1, 3, 33, 31), seed=7)
    path = write_net(tmp_path / "branchy.caffemodel", layers, blobs, input_shape=(1, 3, 33, 31),
                     input_style="Input")
    model = load(path)
    assert model.arch == "caffe-graph"
    mix = model.layer("mix")
    assert [[layer.name for layer in b] for b in mix.branches] == [["b1"], ["b2", "b2conv"], []]
    b1, b2conv = mix.branches[0][0], mix.branches[1][1]
    assert b1.dilation == (2, 2) and b1.groups == 2
    assert b2conv.bias is None and "mix.b2conv.weight" in model.state_dict()
    x = _image((2, 3, 33, 31), seed=8, scale=20.0)
    err = _compare(model, layers, blobs, x, ["norm1", "b1", "b2", ("mixrelu", "mix"), "pool", "gmax", "prob"], torch)
    print(f"grouped/dilated/branches max rel. error against torch: {err:.2e}")


def test_v1_and_v2_give_identical_networks(tmp_path):
    layers = caffenet(w=(8, 16, 16, 16, 16), fc=(8, 8, 4))
    blobs = weights_for(layers, (1, 3, 227, 227), seed=9)
    a = load(write_net(tmp_path / "v1.caffemodel", layers, blobs, v1=True))
    b = load(write_net(tmp_path / "v2.caffemodel", layers, blobs, v1=False))
    c = load(write_net(tmp_path / "v2legacy.caffemodel", layers, blobs, v1=False, legacy=True))
    assert a.config["graph"] == b.config["graph"] == c.config["graph"]
    for other in (b, c):
        sa, so = a.state_dict(), other.state_dict()
        assert list(sa) == list(so) and all(np.array_equal(sa[k], so[k]) for k in sa)
    x = _image((1, 3, 227, 227))
    np.testing.assert_array_equal(a(x).output, b(x).output)


def test_prototxt_gives_the_graph_of_a_blobs_only_file(tmp_path):
    """A file without definitions (only names and blobs) plus --prototxt: the prototxt's graph."""
    layers = zf_faster_rcnn(w=(8, 8, 8, 8, 8), fc=(8, 8, 3))
    blobs = weights_for(layers, (1, 3, 224, 224), seed=10)
    bare = [dict(name=n, type="Convolution" if b[0].ndim == 4 else "InnerProduct", bottom=[], top=[])
            for n, b in blobs.items()]
    path = write_net(tmp_path / "bare.caffemodel", bare, blobs)
    with pytest.raises(WeightsError, match="zfnet expects"):  # no definitions: the paper's ZFNet, which does not fit
        load(path)
    proto = tmp_path / "deploy.prototxt"
    proto.write_text(_prototxt(layers, (1, 3, 224, 224)))
    model = load(path, prototxt=proto)
    assert model.arch == "caffe-graph" and model.layer("norm1").region == "within_channel"
    own = load(write_net(tmp_path / "own.caffemodel", layers, blobs, input_shape=(1, 3, 224, 224)))
    assert model.config["graph"] == own.config["graph"]
    x = _image((1, 3, 224, 224))
    np.testing.assert_array_equal(model(x).output, own(x).output)


def test_a_file_without_definitions_says_its_architecture_was_guessed(tmp_path):
    from zfnet.models import zfnet

    sd = zfnet(num_classes=3, fc_width=8).state_dict()
    blobs = {n: [sd[f"{n}.weight"], sd[f"{n}.bias"]] for n in ("conv1", "conv2", "conv3", "conv4", "conv5",
                                                                "fc6", "fc7", "fc8")}
    bare = [dict(name=n, type="Convolution" if b[0].ndim == 4 else "InnerProduct", bottom=[], top=[])
            for n, b in blobs.items()]
    model = load(write_net(tmp_path / "bare.caffemodel", bare, blobs))
    assert model.arch == "zfnet" and "not read from the file" in model.config["caffe"]["notes"][0]


def _prototxt(layers, input_shape) -> str:
    enums = {"pool": ["MAX", "AVE"], "norm_region": ["ACROSS_CHANNELS", "WITHIN_CHANNEL"]}
    keys = {"conv": "convolution_param", "pool": "pooling_param", "lrn": "lrn_param", "ip": "inner_product_param",
            "drop": "dropout_param", "concat": "concat_param"}
    out = ['name: "from-prototxt"', 'input: "data"', "input_shape { " + " ".join(f"dim: {d}" for d in input_shape)
           + " }"]
    for layer in layers:
        body = [f'name: "{layer["name"]}"', f'type: "{layer["type"]}"']
        body += [f'bottom: "{b}"' for b in layer["bottom"]] + [f'top: "{t}"' for t in layer["top"]]
        for key, field in keys.items():
            if key in layer:
                items = " ".join(f"{k}: {enums[k][v] if k in enums else v}" for k, v in layer[key].items())
                body.append(f"{field} {{ {items} }}")
        out.append("layer { " + " ".join(body) + " }")
    return "\n".join(out)


def test_unknown_layer_types_are_named(tmp_path):
    layers = zf_faster_rcnn(w=(8, 8, 8, 8, 8), fc=(8, 8, 3))
    blobs = weights_for(layers, (1, 3, 224, 224), seed=11)
    odd = layers[:6] + [L("bn2", "BatchNorm", "conv2", "conv2")] + layers[6:]
    path = write_net(tmp_path / "bn.caffemodel", odd, blobs, input_shape=(1, 3, 224, 224))
    with pytest.raises(WeightsError, match=r"layer 'bn2' \(BatchNorm\): zfnet has no such layer"):
        load(path, truncate=False)
    with pytest.warns(UserWarning, match="ends before layer 'bn2'"):
        model = load(path)  # the network ends before it, with a note; what is kept is the file's
    assert [layer.name for layer in model.layers] == ["conv1", "norm1", "pool1", "conv2"]
    assert any("ends before layer 'bn2' (BatchNorm)" in n for n in model.config["caffe"]["notes"])
    first = [L("weird", "Python", "data")] + layers
    path = write_net(tmp_path / "first.caffemodel", first, blobs, input_shape=(1, 3, 224, 224))
    with pytest.raises(WeightsError, match=r"layer 'weird' \(Python\).*nothing with weights comes before it"):
        load(path)
    leaky = layers[:1] + [L("relu1", "ReLU", "conv1", "conv1", relu={"negative_slope": 0.1})] + layers[2:]
    path = write_net(tmp_path / "leaky.caffemodel", leaky, blobs, input_shape=(1, 3, 224, 224))
    with pytest.raises(WeightsError, match=r"layer 'relu1' \(ReLU\): a leaky ReLU"):
        load(path, truncate=False)
    fork = layers[:14] + [L("side", "Convolution", "conv5", conv={"num_output": 4, "kernel_size": 1})]
    path = write_net(tmp_path / "fork.caffemodel", fork + layers[14:], dict(blobs, side=[
        np.zeros((4, 8, 1, 1), np.float32), np.zeros(4, np.float32)]), input_shape=(1, 3, 224, 224))
    with pytest.warns(UserWarning, match="do not meet again in one Concat"):
        model = load(path)
    assert model.layers[-1].name == "conv5"


def test_refused_pooling_options_and_bad_weights(tmp_path):
    empty = [L("conv1", "Convolution", "data", conv={"num_output": 4, "kernel_size": 3}),
             L("pool1", "Pooling", "conv1", pool={"pool": MAX, "kernel_size": 1, "stride": 3})]
    blobs = weights_for(empty, (1, 3, 20, 20))
    path = write_net(tmp_path / "empty.caffemodel", empty, blobs, input_shape=(1, 3, 20, 20))
    with pytest.raises(WeightsError, match=r"'pool1' \(Pooling\): Caffe's output size 7x7 puts a last window"):
        load(path, truncate=False)
    blobs["conv1"][0] = np.zeros((4, 3, 5, 5), np.float32)
    path = write_net(tmp_path / "bad.caffemodel", empty[:1], blobs, input_shape=(1, 3, 20, 20))
    with pytest.raises(WeightsError, match=r"'conv1' \(Convolution\) blob 0 has shape \(4, 3, 5, 5\), "
                                           r"the definition gives \(4, 3, 3, 3\)"):
        load(path)


def test_native_round_trip_keeps_a_caffe_graph(zf_file, tmp_path, capsys):
    from zfnet.cli import main
    from zfnet.weights import convert

    path, _, _ = zf_file
    model = convert(path, tmp_path / "zf.npz")
    back = load(tmp_path / "zf.npz")
    assert back.arch == "caffe-graph" and back.config["graph"] == model.config["graph"]
    assert back.config["caffe"] == model.config["caffe"] and back.layer_names() == model.layer_names()
    x = _image((1, 3, 224, 224))
    np.testing.assert_array_equal(back(x).output, model(x).output)
    assert main(["info", str(tmp_path / "zf.npz")]) == 0
    out = capsys.readouterr().out
    assert "caffe-graph" in out and "built layer by layer" in out and "within channel" in out
    assert main(["convert", str(path), str(tmp_path / "cli.npz")]) == 0
    assert "caffe-graph (ZF)" in capsys.readouterr().out
    assert load(tmp_path / "cli.npz").config["graph"] == model.config["graph"]


def test_mean_file(tmp_path):
    layers = zf_faster_rcnn(w=(4, 4, 4, 4, 4), fc=(4, 4, 2))
    blobs = weights_for(layers, (1, 3, 224, 224))
    path = write_net(tmp_path / "m.caffemodel", layers, blobs, input_shape=(1, 3, 224, 224))
    mean = np.stack([np.full((8, 8), v, np.float32) for v in (100.0, 110.0, 120.0)])
    (tmp_path / "mean.binaryproto").write_bytes(_blob(mean[None], legacy=True))
    model = load(path, mean=tmp_path / "mean.binaryproto")
    assert model.config["mean"] == pytest.approx([100.0, 110.0, 120.0]) and model.config["channel_order"] == "BGR"
    assert any("mean.binaryproto" in n for n in model.config["caffe"]["notes"])
    with pytest.raises(WeightsError, match="expected 3 channels"):
        (tmp_path / "bad.binaryproto").write_bytes(_blob(mean[:2][None], legacy=True))
        load(path, mean=tmp_path / "bad.binaryproto")


def test_squeezenet_deploy_prototxt_is_recognised(shared_dir):
    """deploy.prototxt + the shared Caffe-named arrays: squeezenet1_0, the same network as --arch gives."""
    folder = shared_dir / "weights" / "squeezenet1_0"
    if not (folder / "deploy.prototxt").exists():
        pytest.skip("squeezenet1_0 files not found")
    arrays = folder / "squeezenet1_0_deep_compression.npz"
    model = load(arrays, prototxt=folder / "deploy.prototxt")
    assert model.arch == "squeezenet1_0" and model.config["caffe"]["recognised"].startswith("squeezenet1_0")
    direct = load(arrays, arch="squeezenet1_0")
    x = _image((1, 3, 227, 227))
    np.testing.assert_array_equal(model(x).output, direct(x).output)


# ----------------------------------------------------- the deconvnet on a caffe graph


def test_projection_through_within_channel_lrn_matches_torch(torch):
    """The deconvnet (and backprop, guided) on the ZF layout == torch autograd with the rule's ReLU
    and the LRN passed through; windowed == dense."""
    from zfnet.deconvnet import project_units, project_units_windowed
    from zfnet.weights.caffe_net import caffe_network, prototxt_layers

    layers = zf_faster_rcnn(w=(8, 12, 16, 16, 12), fc=(8, 8, 3))
    blobs = weights_for(layers, (1, 3, 64, 64), seed=12)
    net, defs = prototxt_layers(_prototxt(layers, (1, 3, 64, 64)))
    model = caffe_network(net, defs, blobs, "<zf>")
    x = _image((2, 3, 64, 64), seed=13)
    trace = model(x)
    act = trace.activations["conv5"]
    units = np.array([[n, c, *np.unravel_index(int(act[n, c].argmax()), act.shape[2:])] for n, c in [(0, 3), (1, 7)]])
    for rule in ("deconvnet", "backprop", "guided"):
        ours = project_units(model, x, "conv5", units, rule=rule)
        theirs = _torch_projection(torch, layers, blobs, x, trace, "conv5", units, rule)
        err = _rel(ours, theirs)
        assert err <= 1e-4, rule
        print(f"ZF layout conv5 projection ({rule}) max rel. error against torch autograd: {err:.2e}")
        np.testing.assert_allclose(project_units_windowed(model, x, "conv5", units, rule=rule), ours,
                                   rtol=0, atol=1e-5 * np.abs(ours).max())


def _torch_projection(torch, layers, blobs, x, trace, layer, units, rule):
    class RuleReLU(torch.autograd.Function):
        @staticmethod
        def forward(ctx, h):
            ctx.save_for_backward(h)
            return h.clamp(min=0)

        @staticmethod
        def backward(ctx, g):
            (h,) = ctx.saved_tensors
            return {"deconvnet": g.clamp(min=0), "guided": g.clamp(min=0) * (h > 0), "backprop": g * (h > 0)}[rule]

    class PassLRN(torch.autograd.Function):  # WITHIN_CHANNEL forward; the signal goes through unchanged
        @staticmethod
        def forward(ctx, h, size, alpha, beta):
            s = torch.nn.functional.avg_pool2d(h * h, size, 1, (size - 1) // 2, count_include_pad=True)
            return h * (1 + alpha * s) ** -beta

        @staticmethod
        def backward(ctx, g):
            return g, None, None, None

    out = []
    for n, c, i, j in units:
        xt = torch.tensor(x[n:n + 1], requires_grad=True)
        switches = {k: v[n:n + 1] for k, v in trace.switches.items()}
        env = torch_caffe(layers, blobs, xt, relu_fn=RuleReLU.apply, switches=switches,
                          lrn_fn=lambda h, p: PassLRN.apply(h, p["local_size"], p["alpha"], p["beta"]))
        act = env[layer]
        g = torch.zeros_like(act)
        g[0, c, i, j] = act[0, c, i, j].detach()
        act.backward(g)
        out.append(xt.grad.numpy()[0])
    return np.stack(out)


def test_windowed_projection_and_receptive_fields_on_branches():
    """Concat, AVE pooling, dilation: windowed == dense; the receptive field holds what a unit reads."""
    import reference as ref
    from zfnet.deconvnet import project_units, project_units_windowed, receptive_fields, unit_box
    from zfnet.weights.caffe_net import caffe_network, prototxt_layers

    layers = branchy()
    blobs = weights_for(layers, (1, 3, 33, 31), seed=14)
    net, defs = prototxt_layers(_prototxt(layers, (1, 3, 33, 31)))
    model = caffe_network(net, defs, blobs, "<branchy>")
    x = _image((2, 3, 33, 31), seed=15, scale=20.0)
    for layer, units in [("conv2", [[0, 1, 2, 3], [1, 11, 0, 0], [0, 5, 7, 6]]), ("mix", [[1, 9, 4, 30]]),
                         ("b2conv", [[0, 2, 10, 11]])]:
        for rule in ("deconvnet", "guided"):
            dense = project_units(model, x, layer, np.array(units), rule=rule)
            win = project_units_windowed(model, x, layer, np.array(units), rule=rule)
            np.testing.assert_allclose(win, dense, rtol=0, atol=1e-5 * max(np.abs(dense).max(), 1e-6))
    rfs = receptive_fields(model)
    assert rfs["norm1"].size == 7 and rfs["mix"].size == 11  # LRN within: +4; dilated 3x3: +4
    for layer, (c, i, j) in [("mix", (2, 16, 15)), ("conv2", (4, 3, 3))]:
        f = lambda a: model(a.astype(np.float32), upto=layer).activations[layer]  # noqa: E731
        seen = ref.mask_box(ref.brute_force_receptive_field(f, x[:1], (0, c, i, j), atol=1e-3))
        y0, x0, y1, x1 = unit_box(model, layer, i, j)
        assert seen is not None and y0 <= seen[0] and x0 <= seen[1] and seen[2] <= y1 and seen[3] <= x1, (seen,)


def test_top9_mining_on_a_caffe_graph(tmp_path):
    from PIL import Image

    from zfnet.figures.top9 import run_top9
    from zfnet.weights.caffe_net import caffe_network, prototxt_layers

    layers = zf_faster_rcnn(w=(4, 6, 6, 6, 5), fc=(4, 4, 2))
    blobs = weights_for(layers, (1, 3, 64, 64), seed=16)
    net, defs = prototxt_layers(_prototxt(layers, (1, 3, 64, 64)))
    model = caffe_network(net, defs, blobs, "<zf>")
    rng = np.random.default_rng(17)
    (tmp_path / "img").mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (70, 80, 3), dtype=np.uint8)).save(tmp_path / "img" / f"{i}.png")
    res = run_top9(model, tmp_path / "img", tmp_path / "out", layers=["conv2", "conv5"], k=2, units=2,
                   batch_size=3, workers=0, progress=False, tile=16, gallery=False)
    assert (res.out / "top9.json").is_file()


def test_a_hostile_graph_in_a_native_file_is_refused_before_allocation(tmp_path):
    """The layer list in a .npz is checked in full, and its parameter shapes against the arrays held,
    before any layer is built: a spec cannot make zfnet allocate what the file does not hold."""
    import json

    from zfnet.weights import read_npz, save

    layers = zf_faster_rcnn(w=(4, 4, 4, 4, 4), fc=(4, 4, 2))
    net = load(write_net(tmp_path / "z.caffemodel", layers, weights_for(layers, (1, 3, 64, 64)),
                         input_shape=(1, 3, 64, 64)))
    save(net, tmp_path / "z.npz")
    arrays, meta = read_npz(tmp_path / "z.npz")

    def attempt(graph, match):
        bad = dict(meta, graph=graph)
        np.savez(tmp_path / "bad.npz", **arrays, **{"__meta__.json": np.frombuffer(json.dumps(bad).encode(), np.uint8)})
        with pytest.raises(WeightsError, match=match):
            load(tmp_path / "bad.npz")

    g = meta["graph"]
    huge = [dict(g[0], out=1 << 20, **{"in": 1 << 20}, groups=1)] + g[1:]
    attempt(huge, r"'conv1.weight' has shape \(4, 3, 7, 7\), the graph declares \(1048576, 1048576, 7, 7\)")
    attempt([dict(g[0], kernel=[7, 1 << 40])] + g[1:], r"graph\[0\] \('conv1'\): 'kernel'")
    attempt([dict(g[0], type="python")] + g[1:], r"graph\[0\]: not a layer spec")
    nested = {"type": "concat", "name": "c", "branches": [[]]}
    for _ in range(12):
        nested = {"type": "concat", "name": "c", "branches": [[nested]]}
    attempt(g + [nested], "nested more than 8 deep")
    attempt("conv", "'graph' is 'conv'; expected a list of layer specs")


def test_faster_rcnn_test_net_ends_at_conv5(tmp_path):
    """py-faster-rcnn's ZF test.prototxt: two inputs, an RPN branch and ROI pooling after conv5.
    The trunk conv1..conv5 is kept (activations and switches as the file's), with a note."""
    layers = zf_faster_rcnn(w=(8, 8, 8, 8, 8), fc=(8, 8, 3))
    blobs = weights_for(layers, (1, 3, 224, 224), seed=18)
    blobs["rpn_conv/3x3"] = [np.zeros((8, 8, 3, 3), np.float32), np.zeros(8, np.float32)]
    trunk = _prototxt(layers[:14], (1, 3, 224, 224))
    text = trunk + '''
input: "im_info" input_shape { dim: 1 dim: 3 }
layer { name: "rpn_conv/3x3" type: "Convolution" bottom: "conv5" top: "rpn/output"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "rpn_relu/3x3" type: "ReLU" bottom: "rpn/output" top: "rpn/output" }
layer { name: "proposal" type: "Python" bottom: "rpn/output" bottom: "im_info" top: "rois"
        python_param { module: "rpn.proposal_layer" layer: "ProposalLayer" } }
layer { name: "roi_pool_conv5" type: "ROIPooling" bottom: "conv5" bottom: "rois" top: "roi_pool_conv5"
        roi_pooling_param { pooled_w: 6 pooled_h: 6 spatial_scale: 0.0625 } }
layer { name: "fc6" type: "InnerProduct" bottom: "roi_pool_conv5" top: "fc6" inner_product_param { num_output: 8 } }
'''
    (tmp_path / "test.prototxt").write_text(text)
    bare = [dict(name=n, type="Convolution" if b[0].ndim == 4 else "InnerProduct", bottom=[], top=[])
            for n, b in blobs.items()]
    path = write_net(tmp_path / "ZF_faster_rcnn_final.caffemodel", bare, blobs)
    with pytest.warns(UserWarning, match=r"ends before layer 'rpn_conv/3x3'.*'roi_pool_conv5' \(ROIPooling\)"):
        model = load(path, prototxt=tmp_path / "test.prototxt")
    assert model.layers[-1].name == "conv5" and model.arch == "caffe-graph"
    assert any("kept up to 'conv5'" in n for n in model.config["caffe"]["notes"])
    full = load(write_net(tmp_path / "full.caffemodel", layers, blobs, input_shape=(1, 3, 224, 224)))
    x = _image((1, 3, 224, 224))
    a, b = model(x), full(x, upto="conv5")
    np.testing.assert_array_equal(a.activations["conv5"], b.activations["conv5"])
    np.testing.assert_array_equal(a.switches["pool2"], b.switches["pool2"])
    with pytest.raises(WeightsError, match=r"'rpn_conv/3x3' \(Convolution\).*truncate=False"):
        load(path, prototxt=tmp_path / "test.prototxt", truncate=False)


def test_fuzz_definitions(tmp_path):
    """Byte flips and cuts in a file with definitions and weights: a ZfnetError or a network, nothing else."""
    from zfnet.errors import ZfnetError

    layers = branchy()
    data = encode_net(layers, weights_for(layers, (1, 3, 33, 31), seed=19), input_shape=(1, 3, 33, 31))
    rng = np.random.default_rng(20)
    path = tmp_path / "f.caffemodel"
    for _ in range(300):
        buf = bytearray(data)
        if rng.random() < 0.2:
            buf = buf[: int(rng.integers(1, len(buf)))]
        for _ in range(int(rng.integers(1, 4))):
            buf[int(rng.integers(len(buf)))] = int(rng.integers(256))
        path.write_bytes(bytes(buf))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # truncation notes
                model = load(path)
            model(np.zeros((1, 3) + model.input_size, np.float32))
        except ZfnetError:
            pass
