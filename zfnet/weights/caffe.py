"""Read (and write) Caffe ``.caffemodel`` files by decoding the protobuf wire format.

A ``.caffemodel`` is one serialised ``caffe.NetParameter``.  Only the fields that
carry weights are decoded; everything else is skipped by wire type (see
:mod:`zfnet.weights.protobuf`).  Field numbers, from Caffe's ``caffe.proto``::

    NetParameter       name = 1 (string)   layers = 2 (V1LayerParameter, repeated)
                       layer = 100 (LayerParameter, repeated)
    LayerParameter     name = 1 (string)   type = 2 (string)   blobs = 7 (BlobProto)
    V1LayerParameter   layer = 1 (V0LayerParameter)   name = 4 (string)
                       type = 5 (enum LayerType)      blobs = 6 (BlobProto)
    V0LayerParameter   name = 1 (string)   type = 2 (string)   blobs = 50 (BlobProto)
    BlobProto          num = 1, channels = 2, height = 3, width = 4 (int32, legacy 4-D)
                       data = 5 (packed float)        diff = 6 (packed float, ignored)
                       shape = 7 (BlobShape)          double_data = 8 (packed double)
    BlobShape          dim = 1 (packed int64)

"V2" files (Caffe from 2015 on) use ``layer``; older ones, including the BVLC AlexNet
and CaffeNet releases, use ``layers`` with an enum type and the legacy
``num, channels, height, width`` blob dimensions, where an InnerProduct weight is
``(1, 1, out, in)`` and a bias ``(1, 1, 1, out)``.  :func:`read_caffemodel` returns
the blobs with the shape the file declares; :mod:`zfnet.weights.native` squeezes the
legacy leading ones when it maps layers onto a model.

A ``.caffemodel`` written by Caffe also carries the whole network definition:
each layer's ``bottom``/``top`` blobs and its ``*_param`` messages.
:func:`read_caffe_net` decodes those too, by the schema in :data:`SCHEMA` (the
fields :mod:`zfnet.weights.caffe_net` uses, with their numbers from
``caffe.proto``), into the same dicts and lists that
:func:`~zfnet.weights.parse_prototxt` makes of a ``.prototxt``, so one builder
reads both.  Enums become their names (``pool: "MAX"``), V1 layer types their V2
strings (``CONVOLUTION`` -> ``"Convolution"``).

Caffe's convolution weights are ``(C_out, C_in / group, kH, kW)``, the same OIHW layout
as ours, and InnerProduct weights are ``(out, in)`` like ``zfnet.ops.linear``.  Caffe
ImageNet models take BGR input; that is metadata, not a weight change (see
``zfnet.weights.native``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

from ..errors import WeightsError
from . import protobuf as pb

__all__ = [
    "CaffeLayer",
    "read_caffemodel",
    "read_caffemodel_layers",
    "read_caffe_net",
    "read_blobproto",
    "SCHEMA",
    "V1_TYPE_NAMES",
    "encode_caffemodel",
    "write_caffemodel",
    "V1_LAYER_TYPES",
]

# V1LayerParameter.LayerType enum value -> the V2 type string Caffe upgrades it to.
V1_LAYER_TYPES: dict[int, str] = {
    0: "None", 35: "AbsVal", 1: "Accuracy", 30: "ArgMax", 2: "BNLL", 3: "Concat",
    37: "ContrastiveLoss", 4: "Convolution", 5: "Data", 39: "Deconvolution",
    6: "Dropout", 32: "DummyData", 7: "EuclideanLoss", 25: "Eltwise", 38: "Exp",
    8: "Flatten", 9: "HDF5Data", 10: "HDF5Output", 28: "HingeLoss", 11: "Im2col",
    12: "ImageData", 13: "InfogainLoss", 14: "InnerProduct", 15: "LRN",
    29: "MemoryData", 16: "MultinomialLogisticLoss", 34: "MVN", 17: "Pooling",
    26: "Power", 18: "ReLU", 19: "Sigmoid", 27: "SigmoidCrossEntropyLoss",
    36: "Silence", 20: "Softmax", 21: "SoftmaxWithLoss", 22: "Split", 33: "Slice",
    23: "TanH", 24: "WindowData", 31: "Threshold",
}
_V1_TYPE_CODES = {name: code for code, name in V1_LAYER_TYPES.items()}
# The enum identifiers a V1 .prototxt writes (``type: CONVOLUTION``) -> V2 strings.
V1_TYPE_NAMES: dict[str, str] = {
    "NONE": "None", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DATA": "Data", "DECONVOLUTION": "Deconvolution", "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN", "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence", "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice", "TANH": "TanH",
    "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}

_MAX_DIMS = 32  # Caffe's kMaxBlobAxes
# Heap the decoded layers may take, per byte of file plus a constant: blob data costs
# about what it occupies in the file (4 bytes per float), and the per-object overheads
# below are what Python and NumPy spend on a layer, a blob or a packed run.  Without
# the meter, 3-byte empty layers (or 2-byte empty blobs) would cost 200-300 bytes each.
_HEAP_PER_BYTE = 16
_HEAP_SLACK = 32 << 20
_LAYER_COST = 512
_ARRAY_COST = 384
_FLOAT_TAG = pb.encode_tag(5, pb.I32)  # BlobProto.data written unpacked
_DOUBLE_TAG = pb.encode_tag(8, pb.I64)


@dataclass
class CaffeLayer:
    """One layer of a ``.caffemodel``: its name, type string and weight blobs.

    With the definition (:func:`read_caffe_net`, or a ``.prototxt``): ``bottom`` and
    ``top`` blob names, and ``params``, the rest of the layer message as
    prototxt-style dicts (``{"convolution_param": {"num_output": 96, ...},
    "include": [{"phase": "TEST"}], ...}``).  ``version`` is 2 (``layer``), 1 (V1
    ``layers``) or 0 (a V0 layer inside a V1 wrapper).
    """

    name: str
    type: str
    blobs: list[np.ndarray] = field(default_factory=list)
    bottom: list[str] = field(default_factory=list)
    top: list[str] = field(default_factory=list)
    params: dict = field(default_factory=dict)
    version: int = 2


class _Meter:
    """Heap charged so far against ``16 * file bytes + 32 MiB``."""

    def __init__(self, file_size: int) -> None:
        self.left = _HEAP_PER_BYTE * file_size + _HEAP_SLACK
        self.file_size = file_size

    def charge(self, nbytes: int, what: str) -> None:
        self.left -= nbytes
        if self.left < 0:
            raise pb.ProtobufError(
                f"decoding it would take more than {_HEAP_PER_BYTE} x its {self.file_size} bytes "
                f"+ {_HEAP_SLACK >> 20} MiB of memory (at {what}; thousands of empty layers or "
                "blobs?)"
            )


def _string(buf: bytes, start: int, end: int) -> str:
    try:
        return bytes(buf[start:end]).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise pb.ProtobufError(f"string at offset {start} is not UTF-8") from exc


def _decode_blob(buf: bytes, start: int, end: int, meter: _Meter | None = None) -> np.ndarray:
    """Decode one BlobProto into a float32 array of its declared shape.

    shape = BlobShape.dim if present, else (num, channels, height, width) if any is
    set, else (len(data),).  ``data`` (float) wins over ``double_data``.

    The shape is checked with Python ints before anything is allocated: at most 32
    axes, none negative, ``prod(shape)`` equal to the number of values present, and
    ``prod(max(d, 1))`` (a zero dimension cannot hide the others) at most
    ``max(1, values present)``.
    """
    meter = meter or _Meter(end - start)
    dims: list[int] | None = None
    legacy = {}
    floats: list[np.ndarray] = []
    doubles: list[np.ndarray] = []
    pos = start
    while pos < end:
        number, wire, tag_end = pb.read_tag(buf, pos, end)
        unpacked = {(5, pb.I32): (_FLOAT_TAG, 4, "<f4", floats),
                    (8, pb.I64): (_DOUBLE_TAG, 8, "<f8", doubles)}.get((number, wire))
        if unpacked is not None:
            # Unpacked repeated float/double: one vectorised run of (tag, value) records.
            # (A tag written in a longer-than-minimal varint matches no run; it falls
            # through to the one-value path below, so the loop always advances.)
            tag, width, dtype, sink = unpacked
            run = pb.fixed_run(buf, pos, end, tag, width)
            if len(run):
                meter.charge(_ARRAY_COST + run.size, f"offset {pos}")
                sink.append(np.ascontiguousarray(run).view(dtype).reshape(-1))  # (count,)
                pos += len(run) * (len(tag) + width)
                continue
        value, s, e, pos = pb.read_value(buf, wire, tag_end, end)
        if number in (5, 8):
            meter.charge(_ARRAY_COST, f"offset {s}")  # one more (view) array in a list
        if unpacked is not None:
            unpacked[3].append(pb.packed_array(buf, s, e, unpacked[2]))
        elif number == 5 and wire == pb.LEN:
            floats.append(pb.packed_array(buf, s, e, "<f4"))
        elif number == 8 and wire == pb.LEN:
            doubles.append(pb.packed_array(buf, s, e, "<f8"))
        elif number == 7 and wire == pb.LEN:
            dims = [] if dims is None else dims
            for f in pb.iter_fields(buf, s, e):
                if f.number != 1:
                    continue
                if f.wire == pb.LEN:
                    if f.end - f.start > 10 * _MAX_DIMS:  # more varints than axes allowed
                        raise pb.ProtobufError(f"BlobShape.dim of {f.end - f.start} bytes holds more "
                                               f"than {_MAX_DIMS} axes (offset {f.start})")
                    dims.extend(pb.to_signed(v) for v in pb.packed_varints(buf, f.start, f.end))
                elif f.wire == pb.VARINT:
                    dims.append(pb.to_signed(f.value))
                else:
                    raise pb.ProtobufError(f"BlobShape.dim has wire type {f.wire} (offset {f.start})")
                if len(dims) > _MAX_DIMS:
                    raise pb.ProtobufError(f"blob shape has more than {_MAX_DIMS} axes (offset {f.start})")
        elif number in (1, 2, 3, 4) and wire == pb.VARINT:
            legacy[number] = pb.to_signed(value, 32)
    if dims is not None:
        shape = tuple(dims)
    elif legacy:
        shape = tuple(legacy.get(i, 0) for i in (1, 2, 3, 4))
    else:
        shape = None
    if shape is not None and (len(shape) > _MAX_DIMS or any(d < 0 for d in shape)):
        raise pb.ProtobufError(f"blob shape {shape[:8]} is invalid (negative or > {_MAX_DIMS} axes)")
    parts = floats if floats else doubles
    count = sum(p.size for p in parts)
    if shape is None:
        shape = (count,)
    # Python ints: no overflow, whatever the file claims.  NumPy refuses shapes whose
    # size overflows even when a zero dimension makes the array empty, so a zero may
    # not hide the other dimensions either.
    if math.prod(shape) != count or math.prod(max(d, 1) for d in shape) > max(count, 1):
        raise pb.ProtobufError(
            f"blob declares shape {_shape_text(shape)} ({math.prod(shape)} values"
            f"{', zeros aside ' + str(math.prod(max(d, 1) for d in shape)) if count == 0 else ''}) "
            f"but holds {count} values (offset {start})"
        )
    meter.charge(_ARRAY_COST + 4 * count, f"offset {start}")
    data = np.concatenate(parts) if len(parts) > 1 else (parts[0] if parts else np.zeros(0))
    return data.astype(np.float32).reshape(shape)


def _shape_text(shape: tuple) -> str:
    """A shape for messages: a file may declare 32 axes of 19 digits each."""
    return str(shape) if len(shape) <= 8 else f"{str(shape[:8])[:-1]}, ... ({len(shape)} axes))"


def _decode_layer(buf: bytes, start: int, end: int, version: int,
                  meter: _Meter | None = None) -> CaffeLayer:
    """Decode a LayerParameter (version 2), V1LayerParameter (1) or V0LayerParameter (0).

    A blob that fails to decode is reported as ``layer '<name>' blob <i>: ...`` (the
    name as far as it has been read; Caffe writes it first).
    """
    meter = meter or _Meter(end - start)
    meter.charge(_LAYER_COST, f"the layer at offset {start}")
    name_f, type_f, blobs_f = {2: (1, 2, 7), 1: (4, 5, 6), 0: (1, 2, 50)}[version]
    layer = CaffeLayer(name="", type="")
    for f in pb.iter_fields(buf, start, end):
        if f.number == name_f and f.wire == pb.LEN:
            layer.name = _string(buf, f.start, f.end)
        elif f.number == type_f and version == 1 and f.wire == pb.VARINT:
            layer.type = V1_LAYER_TYPES.get(f.value, f"V1Type{f.value}")
        elif f.number == type_f and version != 1 and f.wire == pb.LEN:
            layer.type = _string(buf, f.start, f.end)
        elif f.number == blobs_f and f.wire == pb.LEN:
            try:
                layer.blobs.append(_decode_blob(buf, f.start, f.end, meter))
            except pb.ProtobufError as exc:
                who = f"layer '{layer.name}'" if layer.name else f"the layer at offset {start}"
                raise pb.ProtobufError(f"{who} blob {len(layer.blobs)}: {exc}") from None
        elif version == 1 and f.number == 1 and f.wire == pb.LEN:
            # A V0 layer nested in a V1 wrapper (Caffe before 2014): take what it holds.
            inner = _decode_layer(buf, f.start, f.end, 0, meter)
            layer.name = layer.name or inner.name
            layer.type = layer.type or inner.type
            layer.blobs.extend(inner.blobs)
    return layer


# ------------------------------------------------------------------- the definition

_PHASE = {0: "TRAIN", 1: "TEST"}
# Field kinds: "str", "int" (signed varint), "bool", "float" (fixed32), ("enum", {code: name}),
# ("msg", message name).  (name, kind, repeated) per field number; other fields are skipped.
SCHEMA: dict[str, dict[int, tuple]] = {
    "NetParameter": {1: ("name", "str", False), 3: ("input", "str", True),
                     8: ("input_shape", ("msg", "BlobShape"), True), 4: ("input_dim", "int", True)},
    "BlobShape": {1: ("dim", "int", True)},
    "NetStateRule": {1: ("phase", ("enum", _PHASE), False), 2: ("min_level", "int", False),
                     3: ("max_level", "int", False), 4: ("stage", "str", True), 5: ("not_stage", "str", True)},
    "LayerParameter": {
        1: ("name", "str", False), 2: ("type", "str", False), 3: ("bottom", "str", True),
        4: ("top", "str", True), 10: ("phase", ("enum", _PHASE), False),
        8: ("include", ("msg", "NetStateRule"), True), 9: ("exclude", ("msg", "NetStateRule"), True),
        100: ("transform_param", ("msg", "TransformationParameter"), False),
        104: ("concat_param", ("msg", "ConcatParameter"), False),
        106: ("convolution_param", ("msg", "ConvolutionParameter"), False),
        107: ("data_param", ("msg", "DataParameter"), False),
        108: ("dropout_param", ("msg", "DropoutParameter"), False),
        109: ("dummy_data_param", ("msg", "DummyDataParameter"), False),
        115: ("image_data_param", ("msg", "DataParameter"), False),
        117: ("inner_product_param", ("msg", "InnerProductParameter"), False),
        118: ("lrn_param", ("msg", "LRNParameter"), False),
        119: ("memory_data_param", ("msg", "MemoryDataParameter"), False),
        121: ("pooling_param", ("msg", "PoolingParameter"), False),
        123: ("relu_param", ("msg", "ReLUParameter"), False),
        125: ("softmax_param", ("msg", "SoftmaxParameter"), False),
        129: ("window_data_param", ("msg", "DataParameter"), False),
        130: ("python_param", ("msg", "PythonParameter"), False),
        135: ("flatten_param", ("msg", "FlattenParameter"), False),
        143: ("input_param", ("msg", "InputParameter"), False),
    },
    "V1LayerParameter": {
        2: ("bottom", "str", True), 3: ("top", "str", True), 4: ("name", "str", False),
        32: ("include", ("msg", "NetStateRule"), True), 33: ("exclude", ("msg", "NetStateRule"), True),
        36: ("transform_param", ("msg", "TransformationParameter"), False),
        9: ("concat_param", ("msg", "ConcatParameter"), False),
        10: ("convolution_param", ("msg", "ConvolutionParameter"), False),
        11: ("data_param", ("msg", "DataParameter"), False),
        12: ("dropout_param", ("msg", "DropoutParameter"), False),
        26: ("dummy_data_param", ("msg", "DummyDataParameter"), False),
        15: ("image_data_param", ("msg", "DataParameter"), False),
        17: ("inner_product_param", ("msg", "InnerProductParameter"), False),
        18: ("lrn_param", ("msg", "LRNParameter"), False),
        22: ("memory_data_param", ("msg", "MemoryDataParameter"), False),
        19: ("pooling_param", ("msg", "PoolingParameter"), False),
        30: ("relu_param", ("msg", "ReLUParameter"), False),
        39: ("softmax_param", ("msg", "SoftmaxParameter"), False),
        20: ("window_data_param", ("msg", "DataParameter"), False),
    },
    "TransformationParameter": {1: ("scale", "float", False), 2: ("mirror", "bool", False),
                                3: ("crop_size", "int", False), 4: ("mean_file", "str", False),
                                5: ("mean_value", "float", True)},
    # Data, ImageData and WindowData share these numbers for their deprecated transform fields.
    "DataParameter": {2: ("scale", "float", False), 3: ("mean_file", "str", False),
                      5: ("crop_size", "int", False)},
    "MemoryDataParameter": {1: ("batch_size", "int", False), 2: ("channels", "int", False),
                            3: ("height", "int", False), 4: ("width", "int", False)},
    "DummyDataParameter": {6: ("shape", ("msg", "BlobShape"), True), 2: ("num", "int", True),
                           3: ("channels", "int", True), 4: ("height", "int", True), 5: ("width", "int", True)},
    "InputParameter": {1: ("shape", ("msg", "BlobShape"), True)},
    "ConvolutionParameter": {
        1: ("num_output", "int", False), 2: ("bias_term", "bool", False), 3: ("pad", "int", True),
        4: ("kernel_size", "int", True), 5: ("group", "int", False), 6: ("stride", "int", True),
        9: ("pad_h", "int", False), 10: ("pad_w", "int", False), 11: ("kernel_h", "int", False),
        12: ("kernel_w", "int", False), 13: ("stride_h", "int", False), 14: ("stride_w", "int", False),
        16: ("axis", "int", False), 18: ("dilation", "int", True)},
    "PoolingParameter": {
        1: ("pool", ("enum", {0: "MAX", 1: "AVE", 2: "STOCHASTIC"}), False), 2: ("kernel_size", "int", True),
        3: ("stride", "int", True), 4: ("pad", "int", True), 5: ("kernel_h", "int", False),
        6: ("kernel_w", "int", False), 7: ("stride_h", "int", False), 8: ("stride_w", "int", False),
        9: ("pad_h", "int", False), 10: ("pad_w", "int", False), 12: ("global_pooling", "bool", False),
        13: ("round_mode", ("enum", {0: "CEIL", 1: "FLOOR"}), False)},
    "LRNParameter": {1: ("local_size", "int", False), 2: ("alpha", "float", False), 3: ("beta", "float", False),
                     4: ("norm_region", ("enum", {0: "ACROSS_CHANNELS", 1: "WITHIN_CHANNEL"}), False),
                     5: ("k", "float", False)},
    "InnerProductParameter": {1: ("num_output", "int", False), 2: ("bias_term", "bool", False),
                              5: ("axis", "int", False), 6: ("transpose", "bool", False)},
    "DropoutParameter": {1: ("dropout_ratio", "float", False)},
    "ConcatParameter": {1: ("concat_dim", "int", False), 2: ("axis", "int", False)},
    "ReLUParameter": {1: ("negative_slope", "float", False)},
    "SoftmaxParameter": {2: ("axis", "int", False)},
    "FlattenParameter": {1: ("axis", "int", False), 2: ("end_axis", "int", False)},
    "PythonParameter": {1: ("module", "str", False), 2: ("layer", "str", False)},
}
_VALUE_COST = 96  # heap charged per decoded value (a Python object in a dict or list)


def _decode_message(buf: bytes, start: int, end: int, schema: str, meter: _Meter) -> dict:
    """Decode the fields of ``schema`` in ``buf[start:end]`` into a prototxt-style dict.

    Repeated fields become lists (packed or not); for a non-repeated field the last
    value wins, as in protobuf.  Sub-messages nest to a depth fixed by the schema.
    """
    out: dict = {}
    fields = SCHEMA[schema]
    for f in pb.iter_fields(buf, start, end):
        spec = fields.get(f.number)
        if spec is None:
            continue
        name, kind, repeated = spec
        # Charged before decoding: a packed run of n bytes holds at most n varints (n / 4 floats).
        packed = f.wire == pb.LEN and kind in ("int", "bool", "float") or (f.wire == pb.LEN and kind[0] == "enum")
        count = (f.end - f.start) // (4 if kind == "float" else 1) if packed else 1
        meter.charge(_VALUE_COST * max(count, 1) + (f.end - f.start), f"offset {f.start}")
        # A field whose wire type is not the schema's is some Caffe fork's other field
        # under the same number: skipped, like any unknown field.
        if isinstance(kind, tuple) and kind[0] == "msg":
            if f.wire != pb.LEN:
                continue
            values = [_decode_message(buf, f.start, f.end, kind[1], meter)]
        elif kind == "str":
            if f.wire != pb.LEN:
                continue
            values = [_string(buf, f.start, f.end)]
        elif kind == "float":
            if f.wire == pb.I32:
                values = [float(pb.packed_array(buf, f.start, f.end, "<f4")[0])]
            elif f.wire == pb.LEN:
                values = [float(v) for v in pb.packed_array(buf, f.start, f.end, "<f4")]
            else:
                continue
        else:  # a varint: int, bool or enum, one or packed
            if f.wire == pb.VARINT:
                raw = [f.value]
            elif f.wire == pb.LEN:
                raw = pb.packed_varints(buf, f.start, f.end)
            else:
                continue
            if kind == "int":
                values = [pb.to_signed(v) for v in raw]
            elif kind == "bool":
                values = [bool(v) for v in raw]
            else:
                values = [kind[1].get(v, v) for v in raw]  # an unknown enum value stays a number
        if repeated:
            out.setdefault(name, []).extend(values)
        elif values:
            out[name] = values[-1]
    return out


def _decode_layer_definition(buf: bytes, start: int, end: int, version: int, meter: _Meter) -> CaffeLayer:
    """A layer with its blobs (:func:`_decode_layer`) and its definition (:data:`SCHEMA`)."""
    layer = _decode_layer(buf, start, end, version, meter)
    d = _decode_message(buf, start, end, "LayerParameter" if version == 2 else "V1LayerParameter", meter)
    layer.bottom, layer.top = d.pop("bottom", []), d.pop("top", [])
    d.pop("name", None)
    d.pop("type", None)
    layer.params = d
    if version == 1 and any(f.number == 1 and f.wire == pb.LEN for f in pb.iter_fields(buf, start, end)):
        layer.version = 0  # a V0 layer inside the V1 wrapper: its parameters are not decoded
    else:
        layer.version = version
    return layer


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise WeightsError(f"{path}: cannot open ({exc.strerror or exc})") from exc


def read_caffemodel_layers(path: str | os.PathLike) -> list[CaffeLayer]:
    """Every layer of a ``.caffemodel`` in file order, with its type and blobs.

    Parameters
    ----------
    path : str or os.PathLike
        A binary ``NetParameter`` (V2 ``layer``, V1 ``layers`` or V0-in-V1).

    Returns
    -------
    list of CaffeLayer
        Layers with and without blobs; blobs are float32 arrays of their declared
        shape.

    Raises
    ------
    WeightsError
        The file is missing, truncated or corrupt (the message names the file and the
        byte offset), or holds no layers at all.
    """
    path = os.fspath(path)
    buf = _read_bytes(path)
    layers: list[CaffeLayer] = []
    meter = _Meter(len(buf))
    try:
        for f in pb.iter_fields(buf):
            if f.number == 100 and f.wire == pb.LEN:
                layers.append(_decode_layer(buf, f.start, f.end, 2, meter))
            elif f.number == 2 and f.wire == pb.LEN:
                layers.append(_decode_layer(buf, f.start, f.end, 1, meter))
    except pb.ProtobufError as exc:
        raise WeightsError(f"{path}: corrupt Caffe model: {exc}") from exc
    if not layers:
        raise WeightsError(f"{path}: no Caffe layers found (not a .caffemodel NetParameter?)")
    return layers


def read_caffe_net(path: str | os.PathLike) -> tuple[dict, list[CaffeLayer]]:
    """The network definition and the layers of a ``.caffemodel``, in file order.

    Returns
    -------
    net : dict
        The NetParameter's own fields, prototxt-style: ``name``, ``input``,
        ``input_shape`` (``[{"dim": [...]}, ...]``), ``input_dim``.
    layers : list of CaffeLayer
        Each with ``blobs``, ``bottom``, ``top``, ``params`` (see
        :class:`CaffeLayer`) and ``version``.

    Raises
    ------
    WeightsError
        As :func:`read_caffemodel_layers`; also a file holding both V2 ``layer``
        and V1 ``layers`` (Caffe refuses those too).
    """
    path = os.fspath(path)
    buf = _read_bytes(path)
    meter = _Meter(len(buf))
    layers: list[CaffeLayer] = []
    versions = set()
    try:
        net = _decode_message(buf, 0, len(buf), "NetParameter", meter)
        for f in pb.iter_fields(buf):
            if f.number in (100, 2) and f.wire == pb.LEN:
                version = 2 if f.number == 100 else 1
                versions.add(version)
                layers.append(_decode_layer_definition(buf, f.start, f.end, version, meter))
    except pb.ProtobufError as exc:
        raise WeightsError(f"{path}: corrupt Caffe model: {exc}") from exc
    if not layers:
        raise WeightsError(f"{path}: no Caffe layers found (not a .caffemodel NetParameter?)")
    if len(versions) > 1:
        raise WeightsError(f"{path}: holds both V2 'layer' and V1 'layers' fields; Caffe refuses such "
                           "files too (upgrade it with Caffe's upgrade_net_proto_binary)")
    return net, layers


def read_blobproto(path: str | os.PathLike) -> np.ndarray:
    """Read a ``.binaryproto`` file: one serialised ``BlobProto`` (a Caffe mean image).

    Returns
    -------
    ndarray, float32
        The blob in its declared shape, e.g. ``(1, 3, 256, 256)`` for BVLC's
        ``imagenet_mean.binaryproto`` (BGR, 0..255).

    Raises
    ------
    WeightsError
        Missing, truncated or corrupt file (naming it).
    """
    path = os.fspath(path)
    buf = _read_bytes(path)
    try:
        return _decode_blob(buf, 0, len(buf))
    except pb.ProtobufError as exc:
        raise WeightsError(f"{path}: not a readable .binaryproto BlobProto: {exc}") from exc


def read_caffemodel(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
    """Read the weight blobs of a Caffe model: layer name -> list of float32 arrays.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.caffemodel`` file.

    Returns
    -------
    dict of str to list of numpy.ndarray
        For each layer that has blobs, in file order: ``[weight, bias]`` for
        Convolution and InnerProduct layers, with the shape the file declares
        (legacy V1 files give 4-D shapes such as ``(1, 1, 4096, 9216)`` for fc6).

    Raises
    ------
    WeightsError
        Corrupt or truncated file, or two layers with blobs under the same name.

    Examples
    --------
    >>> blobs = read_caffemodel("bvlc_alexnet.caffemodel")      # doctest: +SKIP
    >>> [b.shape for b in blobs["conv2"]]                       # doctest: +SKIP
    [(256, 48, 5, 5), (256,)]
    """
    path = os.fspath(path)
    out: dict[str, list[np.ndarray]] = {}
    for layer in read_caffemodel_layers(path):
        if not layer.blobs:
            continue
        if layer.name in out:
            raise WeightsError(f"{path}: two layers named '{layer.name}' both carry blobs")
        out[layer.name] = layer.blobs
    return out


# ----------------------------------------------------------------------------- writer


def _encode_blob(arr: np.ndarray, legacy_dims: bool) -> bytes:
    arr = np.asarray(arr, dtype=np.float32)
    if legacy_dims:
        if arr.ndim > 4:
            raise WeightsError(f"a legacy blob has at most 4 axes, got shape {arr.shape}")
        dims = (1,) * (4 - arr.ndim) + arr.shape  # Caffe's LegacyShape: pad on the left
        head = b"".join(pb.field_varint(i + 1, int(d)) for i, d in enumerate(dims))
    else:
        head = pb.field_len(7, pb.field_packed_varints(1, arr.shape))
    return head + pb.field_packed(5, arr.reshape(-1), "<f4")


def _default_type(blobs: Sequence[np.ndarray]) -> str:
    return "Convolution" if blobs and np.ndim(blobs[0]) == 4 else "InnerProduct"


def encode_caffemodel(layers: Mapping[str, Sequence[np.ndarray]] | Iterable[tuple],
                      v1: bool = False, legacy_dims: bool | None = None,
                      name: str = "") -> bytes:
    """Serialise layers as a ``NetParameter`` (see :func:`write_caffemodel`)."""
    items = (layers.items() if isinstance(layers, Mapping) else layers)
    legacy_dims = v1 if legacy_dims is None else legacy_dims
    parts = [pb.field_string(1, name)] if name else []
    for item in items:
        if len(item) == 2:
            lname, blobs = item
            ltype = _default_type(blobs)
        else:
            lname, ltype, blobs = item
        body_blobs = b"".join(pb.field_len(6 if v1 else 7, _encode_blob(b, legacy_dims))
                              for b in blobs)
        if v1:
            if ltype not in _V1_TYPE_CODES:
                raise WeightsError(f"layer '{lname}': type '{ltype}' has no V1 enum value")
            body = pb.field_string(4, lname) + pb.field_varint(5, _V1_TYPE_CODES[ltype]) + body_blobs
            parts.append(pb.field_len(2, body))
        else:
            body = pb.field_string(1, lname) + pb.field_string(2, ltype) + body_blobs
            parts.append(pb.field_len(100, body))
    return b"".join(parts)


def write_caffemodel(path: str | os.PathLike,
                     layers: Mapping[str, Sequence[np.ndarray]] | Iterable[tuple],
                     v1: bool = False, legacy_dims: bool | None = None,
                     name: str = "") -> None:
    """Write weight blobs as a binary ``.caffemodel`` that Caffe (and we) can read.

    Parameters
    ----------
    path : str or os.PathLike
        Output file.
    layers : mapping or iterable
        ``{layer_name: [weight, bias, ...]}`` or ``[(name, type, blobs), ...]``.
        Without a type, 4-D weights make a ``"Convolution"`` layer and others an
        ``"InnerProduct"`` layer.
    v1 : bool
        Write the deprecated V1 ``layers`` field (enum types), like the BVLC AlexNet
        and CaffeNet releases, instead of V2 ``layer``.
    legacy_dims : bool, optional
        Blob shapes as ``num, channels, height, width`` (left-padded with ones to
        4-D) instead of ``BlobShape``. Defaults to ``v1``.
    name : str
        ``NetParameter.name``.
    """
    data = encode_caffemodel(layers, v1=v1, legacy_dims=legacy_dims, name=name)
    with open(os.fspath(path), "wb") as fh:
        fh.write(data)
