"""Caffe without Caffe: the protobuf wire decoder, .caffemodel reader/writer, .prototxt parser."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zfnet.errors import WeightsError
from zfnet.weights import parse_prototxt, read_caffemodel, write_caffemodel
from zfnet.weights import protobuf as pb
from zfnet.weights.caffe import encode_caffemodel, read_caffemodel_layers

# BVLC AlexNet / CaffeNet: (name, weight shape) with conv2/4/5 grouped (C_in / 2).
ALEXNET_CAFFE = [
    ("conv1", (96, 3, 11, 11)), ("conv2", (256, 48, 5, 5)), ("conv3", (384, 256, 3, 3)),
    ("conv4", (384, 192, 3, 3)), ("conv5", (256, 192, 3, 3)),
    ("fc6", (4096, 9216)), ("fc7", (4096, 4096)), ("fc8", (1000, 4096)),
]


def _alexnet_layers(div: int = 1, seed: int = 0):
    """BVLC AlexNet's layer list (with the blob-less layers), widths divided by ``div``."""
    rng = np.random.default_rng(seed)
    out = [("data", "Data", [])]
    for name, shape in ALEXNET_CAFFE:
        shape = (max(1, shape[0] // div),) + tuple(max(1, s // div) if i == 0 else s
                                                   for i, s in enumerate(shape[1:]))
        w = rng.standard_normal(shape, dtype=np.float32)
        b = rng.standard_normal(shape[0], dtype=np.float32)
        out.append((name, "Convolution" if len(shape) == 4 else "InnerProduct", [w, b]))
        out.append((f"relu{name[-1]}", "ReLU", []))
        if name in ("conv1", "conv2", "conv5"):
            out.append((f"pool{name[-1]}", "Pooling", []))
    out.append(("prob", "Softmax", []))
    return out


def _expected(layers, legacy_dims: bool):
    """What read_caffemodel should return: blob shapes left-padded to 4-D when legacy."""
    want = {}
    for name, _, blobs in layers:
        if blobs:
            want[name] = [b.reshape((1,) * (4 - b.ndim) + b.shape) if legacy_dims else b for b in blobs]
    return want


def _assert_same(got, want):
    assert list(got) == list(want)
    for name in want:
        assert len(got[name]) == len(want[name]), name
        for g, w in zip(got[name], want[name]):
            assert g.dtype == np.float32 and g.shape == w.shape, (name, g.shape, w.shape)
            np.testing.assert_array_equal(g, w, err_msg=name)


# ------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("v1,legacy_dims", [(False, False), (True, True), (True, False), (False, True)],
                         ids=["v2-shape", "v1-legacy", "v1-shape", "v2-legacy"])
def test_alexnet_layout_round_trip(tmp_path, v1, legacy_dims):
    layers = _alexnet_layers(div=16)
    path = tmp_path / "alexnet.caffemodel"
    write_caffemodel(path, layers, v1=v1, legacy_dims=legacy_dims, name="AlexNet")
    _assert_same(read_caffemodel(path), _expected(layers, legacy_dims))
    types = [layer.type for layer in read_caffemodel_layers(path)]
    assert types == [t for _, t, _ in layers]


@pytest.mark.slow
def test_full_size_bvlc_alexnet_round_trip(tmp_path):
    """One full-size (61M parameters, 233 MB) V1 file, like bvlc_alexnet.caffemodel."""
    layers = _alexnet_layers(div=1)
    path = tmp_path / "bvlc_alexnet.caffemodel"
    write_caffemodel(path, layers, v1=True)
    got = read_caffemodel(path)
    assert [b.shape for b in got["fc6"]] == [(1, 1, 4096, 9216), (1, 1, 1, 4096)]
    assert [b.shape for b in got["conv2"]] == [(256, 48, 5, 5), (1, 1, 1, 256)]
    _assert_same(got, _expected(layers, legacy_dims=True))


def test_mapping_input_and_default_types(tmp_path):
    w = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2)
    path = tmp_path / "m.caffemodel"
    write_caffemodel(path, {"c": [w, np.ones(2, np.float32)], "f": [np.eye(3, dtype=np.float32)]})
    assert [(l.name, l.type) for l in read_caffemodel_layers(path)] == [("c", "Convolution"), ("f", "InnerProduct")]
    np.testing.assert_array_equal(read_caffemodel(path)["c"][0], w)


def _blob_layer(blob: bytes, name: str = "x") -> bytes:
    return pb.field_len(100, pb.field_string(1, name) + pb.field_string(2, "Convolution") + pb.field_len(7, blob))


def test_blob_encodings(tmp_path):
    """Legacy dims, BlobShape, double_data, unpacked floats, split packed runs."""
    vals = np.arange(6, dtype=np.float32) - 2.5
    legacy = b"".join(pb.field_varint(i, d) for i, d in zip((1, 2, 3, 4), (1, 2, 1, 3)))
    shape23 = pb.field_len(7, pb.field_packed_varints(1, [2, 3]))
    unpacked_dims = pb.field_len(7, pb.field_varint(1, 2) + pb.field_varint(1, 3))
    cases = {
        "legacy": (legacy + pb.field_packed(5, vals), (1, 2, 1, 3)),
        "shape": (shape23 + pb.field_packed(5, vals), (2, 3)),
        "unpacked_dims": (unpacked_dims + pb.field_packed(5, vals), (2, 3)),
        "double": (shape23 + pb.field_packed(8, vals, "<f8"), (2, 3)),
        "unpacked_float": (shape23 + b"".join(pb.encode_tag(5, pb.I32) + v.tobytes() for v in vals), (2, 3)),
        "unpacked_double": (shape23 + b"".join(pb.encode_tag(8, pb.I64) + np.float64(v).tobytes()
                                               for v in vals), (2, 3)),
        "split_runs": (shape23 + pb.field_packed(5, vals[:2]) + pb.field_varint(99, 1)
                       + pb.field_packed(5, vals[2:]), (2, 3)),
        "no_shape": (pb.field_packed(5, vals), (6,)),
        "diff_ignored": (shape23 + pb.field_packed(5, vals) + pb.field_packed(6, vals * 0 + 9), (2, 3)),
    }
    for name, (blob, shape) in cases.items():
        path = tmp_path / f"{name}.caffemodel"
        path.write_bytes(_blob_layer(blob))
        got = read_caffemodel(path)["x"][0]
        assert got.shape == shape, name
        np.testing.assert_array_equal(got.reshape(-1), vals, err_msg=name)


def test_v0_layers_inside_v1(tmp_path):
    """Caffe before 2014: a V0LayerParameter (name 1, type 2, blobs 50) inside ``layers``."""
    w = np.arange(4, dtype=np.float32)
    v0 = pb.field_string(1, "conv1") + pb.field_string(2, "conv") + pb.field_len(50, pb.field_packed(5, w))
    path = tmp_path / "v0.caffemodel"
    path.write_bytes(pb.field_len(2, pb.field_len(1, v0)))
    layer = read_caffemodel_layers(path)[0]
    assert (layer.name, layer.type) == ("conv1", "conv")
    np.testing.assert_array_equal(layer.blobs[0], w)


def test_bad_blobs_and_files(tmp_path):
    shape = pb.field_len(7, pb.field_packed_varints(1, [2, 3]))
    bad = {
        "count_mismatch": (shape + pb.field_packed(5, np.zeros(5, np.float32)), "holds 5 values"),
        "negative_dim": (pb.field_len(7, pb.field_packed_varints(1, [-1, 3])), "invalid"),
        "ragged_packed": (pb.field_len(5, b"\x00" * 7), "not a multiple of 4"),
        "huge_dims": (pb.field_len(7, pb.field_packed_varints(1, [1 << 40, 1 << 40])), "holds 0 values"),
        "group": (pb.encode_tag(9, 3), "group"),
    }
    for name, (blob, match) in bad.items():
        path = tmp_path / f"{name}.caffemodel"
        path.write_bytes(_blob_layer(blob))
        with pytest.raises(WeightsError, match=match) as info:
            read_caffemodel(path)
        assert str(path) in str(info.value)
    with pytest.raises(WeightsError, match="cannot open"):
        read_caffemodel(tmp_path / "missing.caffemodel")
    (tmp_path / "empty.caffemodel").write_bytes(b"")
    with pytest.raises(WeightsError, match="no Caffe layers"):
        read_caffemodel(tmp_path / "empty.caffemodel")
    dup = tmp_path / "dup.caffemodel"
    write_caffemodel(dup, [("a", "InnerProduct", [np.ones(2, np.float32)])] * 2)
    with pytest.raises(WeightsError, match="two layers named 'a'"):
        read_caffemodel(dup)


@pytest.mark.parametrize("dims", [(2**62, 0), (0, 2**62), (1 << 31, 1 << 31, 0), (5, 0)],
                         ids=["2^62x0", "0x2^62", "2^31x2^31x0", "5x0"])
def test_blob_shapes_are_bounded_before_allocation(tmp_path, dims):
    """A zero dimension made (2**62, 0) "hold" its zero values: NumPy then raised a raw
    ValueError (array is too big).  prod(max(d, 1)) must fit the values present."""
    blob = pb.field_len(7, pb.field_packed_varints(1, dims))  # BlobShape only, no data
    path = tmp_path / "shape.caffemodel"
    path.write_bytes(pb.field_len(100, pb.field_string(1, "conv1") + pb.field_len(7, blob)))
    assert path.stat().st_size < 40
    with pytest.raises(WeightsError, match=r"shape\.caffemodel: .*layer 'conv1' blob 0: blob declares shape"):
        read_caffemodel(path)


def test_legacy_blob_dims_are_bounded_and_name_the_layer(tmp_path):
    dims = b"".join(pb.field_varint(i, d) for i, d in zip((1, 2, 3, 4), (0, 2**31 - 1, 2**31 - 1, 7)))
    ok_blob = pb.field_packed(5, np.ones(3, np.float32))
    layer = (pb.field_string(4, "fc6") + pb.field_varint(5, 14) + pb.field_len(6, ok_blob)
             + pb.field_len(6, dims))
    path = tmp_path / "legacy.caffemodel"
    path.write_bytes(pb.field_len(2, layer))
    with pytest.raises(WeightsError, match="layer 'fc6' blob 1: blob declares shape"):
        read_caffemodel(path)
    too_many_axes = pb.field_len(7, pb.field_packed_varints(1, [1] * 40))
    path.write_bytes(pb.field_len(100, pb.field_string(1, "c") + pb.field_len(7, too_many_axes)))
    with pytest.raises(WeightsError, match="layer 'c' blob 0: .*more than 32 axes"):
        read_caffemodel(path)


def test_length_bomb_is_not_allocated(tmp_path):
    """A LEN field claiming 2**62 bytes fails on the bounds check, nothing is allocated."""
    path = tmp_path / "bomb.caffemodel"
    path.write_bytes(pb.encode_tag(100, pb.LEN) + pb.encode_varint(1 << 62) + b"\x00" * 16)
    with pytest.raises(WeightsError, match="runs past the end"):
        read_caffemodel(path)


# ------------------------------------------------------------------------------ wire


@given(st.integers(0, 300), st.lists(st.booleans(), max_size=20), st.sampled_from([4, 8]))
def test_fixed_run_finds_the_run_and_stops_at_its_end(n, tail, width):
    """fixed_run vs the run written: ``n`` records, then another field (when ``tail``
    starts) and more records, so runs end anywhere, also at and past the doubling
    blocks' edges (16, 48, 112, 240 records)."""
    tag = pb.encode_tag(5 if width == 4 else 8, pb.I32 if width == 4 else pb.I64)
    other = pb.field_varint(3, 7)

    def record(i):
        return tag + bytes((i + j) % 256 for j in range(width))

    buf = b"".join(record(i) for i in range(n))
    if tail:
        buf += other + b"".join(record(i) if t else other for i, t in enumerate(tail[1:]))
    got = pb.fixed_run(buf, 0, len(buf), tag, width)
    assert got.shape == (n, width)
    assert got.tobytes() == b"".join(record(i)[len(tag):] for i in range(n))


@given(st.integers(0, (1 << 64) - 1))
def test_varint_round_trip(n):
    enc = pb.encode_varint(n)
    assert len(enc) <= 10
    assert pb.read_varint(enc, 0, len(enc)) == (n, len(enc))


@given(st.integers(-(1 << 63), (1 << 63) - 1))
def test_signed_varints(n):
    enc = pb.encode_varint(n)  # negative: 64-bit two's complement, 10 bytes
    assert pb.to_signed(pb.read_varint(enc, 0, len(enc))[0]) == n


def test_varint_errors():
    with pytest.raises(pb.ProtobufError, match="past the end"):
        pb.read_varint(b"\x80\x80", 0, 2)
    with pytest.raises(pb.ProtobufError, match="longer than 10"):
        pb.read_varint(b"\xff" * 11, 0, 11)


# --------------------------------------------------------------------------- fuzzing


@pytest.fixture(scope="module")
def fuzz_model(tmp_path_factory):
    layers = _alexnet_layers(div=48, seed=1)
    data = encode_caffemodel(layers, v1=True)
    # Offsets where a top-level field ends: cutting there leaves a valid, shorter file.
    ends = [f.end for f in pb.iter_fields(data)]
    return data, layers, ends, tmp_path_factory.mktemp("caffe") / "f.caffemodel"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frac=st.floats(0, 1, exclude_max=True))
def test_fuzz_truncation(fuzz_model, frac):
    data, layers, ends, path = fuzz_model
    cut = int(frac * len(data))
    path.write_bytes(data[:cut])
    if cut in ends:  # a field boundary: the layers before it, exactly
        n = ends.index(cut) + 1
        _assert_same(read_caffemodel(path), _expected(layers[:n], legacy_dims=True))
    else:
        with pytest.raises(WeightsError) as info:
            read_caffemodel(path)
        assert str(path) in str(info.value)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=4),
       head=st.booleans())
def test_fuzz_byte_flips(fuzz_model, flips, head):
    """Protobuf has no checksum, so a flip may still decode; it must never crash."""
    data, _, _, path = fuzz_model
    mutated = bytearray(data)
    span = 64 if head else len(mutated)  # half the flips hit the headers of the first layers
    for frac, xor in flips:
        mutated[int(frac * span)] ^= xor
    path.write_bytes(bytes(mutated))
    try:
        got = read_caffemodel(path)
    except WeightsError as exc:
        assert str(path) in str(exc)
        return
    assert all(b.dtype == np.float32 for blobs in got.values() for b in blobs)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes_decode(data):
    try:
        for f in pb.iter_fields(data):
            if f.wire == pb.LEN:
                list(pb.iter_fields(data, f.start, f.end))
    except pb.ProtobufError:
        pass


# -------------------------------------------------------------------------- prototxt


def test_squeezenet_deploy_prototxt(shared_dir):
    path = shared_dir / "weights" / "squeezenet1_0" / "deploy.prototxt"
    if not path.exists():
        pytest.skip(f"{path} not found")
    net = parse_prototxt(path)
    assert net["name"] == "FireNet" and net["input"] == ["data"] and net["input_dim"] == [1, 3, 227, 227]
    layers = net["layer"]
    convs = [l for l in layers if l["type"] == "Convolution"]
    assert len(convs) == 26 and len(layers) == 65
    assert convs[0]["convolution_param"] == {"num_output": 96, "kernel_size": 7, "stride": 2,
                                            "weight_filler": {"type": "xavier"}}
    concat = next(l for l in layers if l["name"] == "fire2/concat")
    assert concat["bottom"] == ["fire2/conv1x1_2", "fire2/conv3x3_2"]
    final = next(l for l in layers if l["name"] == "conv_final")["convolution_param"]
    assert (final["num_output"], final["pad"], final["kernel_size"]) == (1000, 1, 1)
    assert layers[-1]["pooling_param"] == {"pool": "AVE", "global_pooling": True}
    assert parse_prototxt(str(path)) == net  # a str path works too


BVLC_V1 = """
name: "CaffeNet"   # V1 style: `layers` and enum types
input: "data"
input_dim: 10
input_dim: 3
input_dim: 227
input_dim: 227
layers {
  name: "conv2"
  type: CONVOLUTION
  bottom: "norm1"
  top: "conv2"
  blobs_lr: 1
  blobs_lr: 2
  convolution_param { num_output: 256 pad: 2 kernel_size: 5 group: 2 }
}
layers { name: "norm2" type: LRN bottom: "conv2" top: "norm2"
         lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
"""

ZF_V2 = """
layer {
  name: "data" type: "Input" top: "data"
  input_param { shape: { dim: 1 dim: 3 dim: 224 dim: 224 } }
}
layer <
  name: 'conv1', type: "Convol" "ution";
  convolution_param: { num_output: 96 kernel_size: 7 stride: 2 pad: 1 }
  param { lr_mult: 1.0e0 decay_mult: 1 }
  param { lr_mult: 2 decay_mult: 0 }
>
layer { name: "fc8" type: "InnerProduct" inner_product_param { num_output: 1000 bias_term: true } }
"""


def test_inline_prototxt_v1_and_v2():
    v1 = parse_prototxt(BVLC_V1)
    assert v1["input_dim"] == [10, 3, 227, 227]
    conv2, norm2 = v1["layers"]
    assert conv2["type"] == "CONVOLUTION" and conv2["blobs_lr"] == [1, 2]
    assert conv2["convolution_param"] == {"num_output": 256, "pad": 2, "kernel_size": 5, "group": 2}
    assert norm2["lrn_param"]["alpha"] == pytest.approx(1e-4)
    v2 = parse_prototxt(ZF_V2)
    data, conv1, fc8 = v2["layer"]
    assert data["input_param"]["shape"] == {"dim": [1, 3, 224, 224]}
    assert conv1["name"] == "conv1" and conv1["type"] == "Convolution"
    assert [p["lr_mult"] for p in conv1["param"]] == [1.0, 2]
    assert fc8["inner_product_param"]["bias_term"] is True


def test_scalars_lists_and_escapes():
    got = parse_prototxt(r'''
        a: [1, -2, 0x10, 2.5e-1, 3f] b: []
        s: "tab\there \"q\" \x41\101" t: 'it''s'
        inf_: -inf nan_: nan flag: false e: MAX
        one: 1 one: 2
    ''', repeated=set())
    assert got["a"] == [1, -2, 16, 0.25, 3.0] and got["b"] == []
    assert got["s"] == 'tab\there "q" AA' and got["t"] == "its"
    assert got["inf_"] == float("-inf") and got["nan_"] != got["nan_"]
    assert got["flag"] is False and got["e"] == "MAX" and got["one"] == [1, 2]
    assert parse_prototxt("layer { }", repeated=set()) == {"layer": {}}
    assert parse_prototxt("layer { }") == {"layer": [{}]}


@pytest.mark.parametrize("text,match", [
    ("layer { name: 'x' ", r"<text>:1: .*never closed"),
    ("a: 1 }", r"<text>:1: expected a field name"),
    ("\n\na 1", r"<text>:3: expected ':'"),
    ("a: @", r"<text>:1: unexpected character"),
    ("a: [1 2]", r"expected ',' or '\]'"),
    ("a:", r"unexpected end of text"),
    ("a: {", r"never closed"),
    ("a: " + "9" * 5000, r"<text>:1: bad number"),  # past Python's int() digit limit
])
def test_prototxt_syntax_errors(text, match):
    with pytest.raises(WeightsError, match=match):
        parse_prototxt(text)


def test_prototxt_deep_nesting_has_no_recursion_limit():
    depth = 20000
    net = parse_prototxt("a { " * depth + "x: 1 " + "} " * depth, repeated=set())
    for _ in range(depth):
        net = net["a"]
    assert net == {"x": 1}


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('ab:{}<>[],;"\' 1.e-#\n\\x')), max_size=80))
def test_fuzz_prototxt(text):
    try:
        parse_prototxt(text)
    except WeightsError:
        pass


# ------------------------------------------------------------------ definitions


def test_read_caffe_net_decodes_the_definition(tmp_path):
    """Bottoms, tops, include rules and *_param messages, packed or not, as prototxt-style dicts."""
    from zfnet.weights import read_caffe_net

    conv = (pb.field_varint(1, 96) + pb.field_packed_varints(4, [7]) + pb.field_varint(6, 2)
            + pb.field_varint(3, 3) + pb.field_varint(2, 0))  # num_output, kernel (packed), stride, pad, bias_term
    lrn = pb.field_varint(1, 3) + pb.encode_tag(2, pb.I32) + np.float32(5e-5).tobytes() + pb.field_varint(4, 1)
    v2 = [pb.field_string(1, "conv1") + pb.field_string(2, "Convolution") + pb.field_string(3, "data")
          + pb.field_string(4, "conv1") + pb.field_len(106, conv) + pb.field_len(8, pb.field_varint(1, 1)),
          pb.field_string(1, "norm1") + pb.field_string(2, "LRN") + pb.field_string(3, "conv1")
          + pb.field_string(4, "norm1") + pb.field_len(118, lrn) + pb.field_len(999, b"\x08\x01")]
    shape = pb.field_len(8, pb.field_packed_varints(1, [1, 3, 224, 224]))
    path = tmp_path / "def.caffemodel"
    path.write_bytes(pb.field_string(1, "ZF") + pb.field_string(3, "data") + shape
                     + b"".join(pb.field_len(100, body) for body in v2))
    net, layers = read_caffe_net(path)
    assert net == {"name": "ZF", "input": ["data"], "input_shape": [{"dim": [1, 3, 224, 224]}]}
    conv1, norm1 = layers
    assert (conv1.bottom, conv1.top, conv1.version) == (["data"], ["conv1"], 2)
    assert conv1.params == {"convolution_param": {"num_output": 96, "kernel_size": [7], "stride": [2], "pad": [3],
                                                  "bias_term": False},
                            "include": [{"phase": "TEST"}]}
    assert norm1.params["lrn_param"] == {"local_size": 3, "alpha": float(np.float32(5e-5)),
                                         "norm_region": "WITHIN_CHANNEL"}
    v1 = (pb.field_string(4, "relu1") + pb.field_varint(5, 18) + pb.field_string(2, "conv1")
          + pb.field_string(3, "conv1"))
    path.write_bytes(pb.field_len(2, v1))
    assert [(l.name, l.type, l.bottom, l.version) for l in read_caffe_net(path)[1]] == [("relu1", "ReLU", ["conv1"], 1)]
    path.write_bytes(pb.field_len(2, v1) + pb.field_len(100, v2[0]))
    with pytest.raises(WeightsError, match="both V2 'layer' and V1 'layers'"):
        read_caffe_net(path)
