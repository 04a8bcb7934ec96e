"""The native .npz format, layout detection and key maps, and preprocessing from metadata."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from zfnet.errors import ConfigError, WeightsError
from zfnet.models import alexnet, zfnet
from zfnet.models.squeezenet import squeezenet1_0
from zfnet.weights import convert, detect_format, load, read_npz, save, write_caffemodel
from zfnet.weights.native import META_KEY


def _small(arch: str, seed: int = 1):
    if arch == "zfnet":
        return zfnet(num_classes=7, fc_width=16, seed=seed)
    if arch == "alexnet":
        return alexnet("caffe", num_classes=7, fc_width=16, seed=seed)
    if arch == "alexnet-torchvision":
        return alexnet("torchvision", num_classes=7, fc_width=16, seed=seed)
    return squeezenet1_0(num_classes=7, seed=seed)


def _randomise_biases(model, seed=0):
    rng = np.random.default_rng(seed)
    model.load_state_dict({k: (rng.standard_normal(v.shape).astype(np.float32) * 0.1 if k.endswith("bias") else v)
                           for k, v in model.state_dict().items()})
    return model


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)


# ------------------------------------------------------------------------- native


@pytest.mark.parametrize("arch", ["zfnet", "alexnet", "alexnet-torchvision", "squeezenet1_0"])
def test_native_round_trip(tmp_path, arch):
    model = _randomise_biases(_small(arch))
    model.config.update(channel_order="BGR", mean=[1.0, 2.0, 3.0], resize=256)
    path = tmp_path / "w.weights"  # any name: nothing is appended
    save(model, path, class_names=[f"c{i}" for i in range(7)])
    assert detect_format(path) == "npz"
    back = load(path)
    _same_weights(model, back)
    assert back.arch == model.arch and back.config["variant"] == model.config["variant"]
    assert back.config["class_names"][3] == "c3" and back.config["channel_order"] == "BGR"
    assert back.config["crop"] == list(model.input_size)
    assert "source" not in back.config


def test_plain_numpy_can_read_it_without_pickles(tmp_path):
    model = _small("zfnet")
    save(model, tmp_path / "z.npz")
    with np.load(tmp_path / "z.npz", allow_pickle=False) as data:
        assert sorted(data.files) == sorted(list(model.state_dict()) + [META_KEY])
        meta = json.loads(data[META_KEY].tobytes().decode("utf-8"))
    assert meta["arch"] == "zfnet" and meta["format"] == "zfnet-weights" and meta["num_classes"] == 7


def test_float16_storage_loads_as_float32(tmp_path):
    model = _randomise_biases(_small("alexnet"))
    save(model, tmp_path / "h.npz", dtype="float16")
    arrays, meta = read_npz(tmp_path / "h.npz")
    assert meta["dtype"] == "float16" and all(a.dtype == np.float16 for a in arrays.values())
    back = load(tmp_path / "h.npz")
    for k, v in model.state_dict().items():
        got = back.state_dict()[k]
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, v, rtol=2 ** -11, atol=2 ** -24, err_msg=k)
    with pytest.raises(ConfigError, match="float16"):
        save(model, tmp_path / "x.npz", dtype="int8")


def test_compressed_native_and_wrong_arch(tmp_path):
    model = _small("zfnet")
    save(model, tmp_path / "c.npz", compress=True)
    _same_weights(model, load(tmp_path / "c.npz"))
    with pytest.raises(WeightsError, match="holds zfnet weights, not alexnet"):
        load(tmp_path / "c.npz", arch="alexnet")
    with pytest.raises(ConfigError, match="unknown architecture 'vgg'"):
        load(tmp_path / "c.npz", arch="vgg")


def _npz_bytes(members: dict) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _npy(arr) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(arr), allow_pickle=True)
    return buf.getvalue()


def test_hostile_npz_members(tmp_path):
    def lying(shape, data: bytes) -> bytes:  # a .npy header claiming ``shape`` over ``data``
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
        return buf.getvalue() + data

    header_lies = lying((9,), np.zeros(4, np.float32).tobytes())  # claims 9 floats, holds 4
    huge = lying((1 << 40,), b"\0" * 16)  # 4 TiB declared: must fail before any allocation
    cases = {
        "object": ({"a.npy": _npy(np.array([{"x": 1}], dtype=object))}, "only plain numeric"),
        "lying_header": ({"a.npy": bytes(header_lies)}, "declares shape"),
        "huge_header": ({"a.npy": huge}, "declares shape"),
        # shapes whose element count looks harmless: (-2, -2) claims 4 elements, and a 0
        # dimension makes any other dimension "cost" nothing
        "negative_shape": ({"a.npy": lying((-2, -2), np.zeros(4, np.float32).tobytes())}, "impossible shape"),
        "zero_hides_huge": ({"a.npy": lying((0, 10**23), b"")}, "impossible shape"),
        "not_npy": ({"a.npy": b"hello"}, "bad .npy header"),
        "meta_not_json": ({"x.npy": _npy(np.zeros(1, np.float32)),
                           META_KEY + ".npy": _npy(np.frombuffer(b"{oops", np.uint8))}, "not valid"),
    }
    for name, (members, match) in cases.items():
        path = tmp_path / f"{name}.npz"
        path.write_bytes(_npz_bytes(members))
        with pytest.raises(WeightsError, match=match) as info:
            load(path)
        assert str(path) in str(info.value)


def test_deflate_bomb_member_is_refused(tmp_path):
    """A member whose header claims far more than deflate could produce from it."""
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.npy", _npy(np.zeros(1 << 22, np.float32)))  # 16 MiB of zeros
    data = bytearray(path.read_bytes())
    # Patch the central directory's uncompressed size upwards (offset 24 in the entry).
    cd = data.rindex(b"PK\x01\x02")
    data[cd + 24: cd + 28] = (0xFFFFFFF0).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="more than the file can hold"):
        read_npz(path)


@pytest.fixture(scope="module")
def squeeze_members(tmp_path_factory):
    """The members of a small native SqueezeNet file, metadata parsed."""
    path = tmp_path_factory.mktemp("meta") / "s.npz"
    save(_small("squeezenet1_0"), path, class_names=[f"c{i}" for i in range(7)])
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    meta = json.loads(np.load(io.BytesIO(members.pop(META_KEY + ".npy"))).tobytes())
    return members, meta


def _with_meta(path, members: dict, meta: dict):
    blob = json.dumps(meta).encode()
    path.write_bytes(_npz_bytes({**members, META_KEY + ".npy": _npy(np.frombuffer(blob, np.uint8))}))
    return path


@pytest.mark.parametrize("key, value", [
    ("resize", 100000),                 # preprocess used to raise a raw MemoryError
    ("input_size", 60000),
    ("input_size", [8000, 8000]),       # 732 MiB per preprocessed image
    ("crop", [0, 227]),
    ("input_size", [227]),
    ("resize", 256.5),
    ("resize", True),
    ("mean", [float("nan"), 0, 0]),
    ("mean", [1.0, 2.0]),
    ("mean", 1e300),
    ("std", [1.0, 0.0, 1.0]),
    ("std", float("inf")),
    ("scale", -1),
    ("channel_order", "XYZ"),
    ("class_names", "abc"),
    ("class_names", ["a"] * 3),         # 3 names for 7 classes
    ("num_classes", 10**12),
    ("training", 3),
    ("preprocess", {"resize": 10**6}),
    ("resize", 200),                    # smaller than the 227 crop (TransformConfig's rule)
])
def test_metadata_numbers_are_bounded_at_load_time(tmp_path, squeeze_members, key, value):
    members, meta = squeeze_members
    path = _with_meta(tmp_path / "m.npz", members, {**meta, key: value})
    with pytest.raises(WeightsError, match=f"m.npz: metadata.*{key}") as info:
        load(path)
    assert "expected" in str(info.value) or "must" in str(info.value) or "names for" in str(info.value)


def test_metadata_at_its_bounds_loads(tmp_path, squeeze_members):
    members, meta = squeeze_members
    edge = {**meta, "input_size": [4096, 16], "crop": [4096, 16], "resize": 4096, "mean": 1e6,
            "std": [1e-6, 1, 1e6], "scale": 1e-6, "channel_order": "rgb"}
    model = load(_with_meta(tmp_path / "edge.npz", members, edge))
    assert model.config["resize"] == 4096 and model.config["class_names"][6] == "c6"


@pytest.fixture(scope="module")
def native_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("native") / "n.npz"
    save(_small("squeezenet1_0"), path)
    return path.read_bytes(), tmp_path_factory.mktemp("fuzz") / "f.npz"


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frac=st.floats(0, 1, exclude_max=True), flip=st.one_of(st.none(), st.integers(1, 255)))
def test_fuzz_native(native_bytes, frac, flip):
    """Truncations always fail cleanly; flips fail cleanly or (in unchecked bytes) load."""
    data, path = native_bytes
    if flip is None:
        path.write_bytes(data[: int(frac * len(data))])
        with pytest.raises(WeightsError):
            load(path)
        return
    mutated = bytearray(data)
    mutated[int(frac * len(mutated))] ^= flip
    path.write_bytes(bytes(mutated))
    try:
        load(path)
    except (WeightsError, ConfigError):
        pass


# ------------------------------------------------------------------ foreign layouts


def _caffe_blobs(model, legacy: bool):
    """Our model's weights as Caffe layers (legacy 4-D fc/bias blobs when ``legacy``)."""
    sd = model.state_dict()
    layers = []
    for name in ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]:
        w, b = sd[f"{name}.weight"], sd[f"{name}.bias"]
        layers.append((name, "Convolution" if w.ndim == 4 else "InnerProduct", [w, b]))
        layers.append((f"relu_{name}", "ReLU", []))
    return layers


@pytest.mark.parametrize("arch", ["alexnet", "zfnet"])
@pytest.mark.parametrize("v1", [True, False], ids=["v1-legacy-dims", "v2"])
def test_caffemodel_layouts(tmp_path, arch, v1):
    model = _randomise_biases(_small(arch))
    path = tmp_path / "m.caffemodel"
    write_caffemodel(path, _caffe_blobs(model, v1), v1=v1)
    back = load(path)  # 11x11 conv1 -> AlexNet (grouped), 7x7 -> ZF
    assert back.arch == arch and back.num_classes == 7
    _same_weights(model, back)
    assert back.config["channel_order"] == "BGR" and back.config["mean"] == [104.0, 117.0, 123.0]
    assert back.config["scale"] == 1.0 and back.config["source"]["format"] == "caffemodel"
    x = np.random.default_rng(0).standard_normal((1, 3) + model.input_size).astype(np.float32)
    np.testing.assert_array_equal(back(x).output, model(x).output)


def test_caffemodel_shape_mismatch_names_keys(tmp_path):
    model = _small("alexnet")
    layers = _caffe_blobs(model, True)
    layers[2] = ("conv2", "Convolution", [np.zeros((256, 96, 5, 5), np.float32), np.zeros(256, np.float32)])
    write_caffemodel(tmp_path / "bad.caffemodel", layers, v1=True)
    with pytest.raises(WeightsError, match=r"'conv2 blob 0' \(-> conv2\.weight\) has shape \(256, 96, 5, 5\), "
                                           r"alexnet expects \(256, 48, 5, 5\)"):
        load(tmp_path / "bad.caffemodel")
    write_caffemodel(tmp_path / "odd.caffemodel", {"conv1": [np.zeros((4, 3, 5, 5), np.float32)]})
    with pytest.raises(WeightsError, match="unknown Caffe layout"):
        load(tmp_path / "odd.caffemodel")


def test_native_key_pth_and_caffe_named_npz(tmp_path):
    torch = pytest.importorskip("torch")
    model = _randomise_biases(_small("squeezenet1_0"))
    # A torch checkpoint with our own key names, saved from DataParallel ("module.").
    torch.save({"module." + k: torch.from_numpy(v) for k, v in model.state_dict().items()}, tmp_path / "s.pth")
    _same_weights(model, load(tmp_path / "s.pth"))
    # The Caffe-named npz layout of ../shared/weights/squeezenet1_0 ("<layer>/W", "/b").
    inverse = {"squeeze": "conv1x1_1", "expand1x1": "conv1x1_2", "expand3x3": "conv3x3_2"}
    arrays = {}
    for k, v in model.state_dict().items():
        parts = k.split(".")
        layer = f"{parts[0]}/{inverse[parts[1]]}" if len(parts) == 3 else parts[0]
        arrays[f"{layer}/{'W' if parts[-1] == 'weight' else 'b'}"] = v
    np.savez(tmp_path / "caffe_named.npz", **arrays)
    back = load(tmp_path / "caffe_named.npz", arch="squeezenet1_0")
    _same_weights(model, back)
    assert back.config["channel_order"] == "BGR"


def test_torchvision_keys_errors(tmp_path):
    torch = pytest.importorskip("torch")
    sd = {"features.0.weight": torch.zeros(64, 3, 11, 11), "features.2.weight": torch.zeros(1)}
    torch.save(sd, tmp_path / "tv.pth")
    with pytest.raises(WeightsError, match="'features.2.weight' is not part of torchvision's AlexNet"):
        load(tmp_path / "tv.pth")
    with pytest.raises(WeightsError, match="cannot be loaded as 'zfnet'"):
        load(tmp_path / "tv.pth", arch="zfnet")


def test_convert_and_unknown_files(tmp_path):
    model = _small("zfnet")
    write_caffemodel(tmp_path / "z.caffemodel", _caffe_blobs(model, False))
    convert(tmp_path / "z.caffemodel", tmp_path / "z.npz", dtype="float16")
    back = load(tmp_path / "z.npz")
    assert back.config["channel_order"] == "BGR" and back.config["source"]["format"] == "caffemodel"
    (tmp_path / "x.npy").write_bytes(_npy(np.zeros(3)))
    with pytest.raises(WeightsError, match="single .npy"):
        load(tmp_path / "x.npy")
    with pytest.raises(WeightsError, match="cannot open"):
        load(tmp_path / "missing.npz")


# ---------------------------------------------------------------------- preprocess


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "CMYK", "P", "I;16", "1", "LA"])
def test_preprocess_any_mode(mode):
    caffe = _small("squeezenet1_0")  # BGR, mean 104/117/123 on 0..255, 227
    rgb = np.zeros((40, 50, 3), np.uint8)
    rgb[..., 0], rgb[..., 2] = 200, 10
    image = Image.fromarray(rgb)
    if mode == "I;16":
        image = Image.fromarray(np.full((40, 50), 257 * 100, np.uint16)).convert("I;16")
    elif mode != "RGB":
        image = image.convert(mode)
    x = caffe.preprocess(image)
    assert x.shape == (3, 227, 227) and x.dtype == np.float32
    if mode in ("RGB", "RGBA", "CMYK"):
        # BGR order, mean subtracted: channel 0 is blue (10 - 104), channel 2 red (200 - 123)
        np.testing.assert_allclose(x[:, 100, 100], [10 - 104, 0 - 117, 200 - 123], atol=1.5)
    if mode == "I;16":
        np.testing.assert_allclose(x[:, 5, 5], [100 - 104, 100 - 117, 100 - 123], atol=0.5)


def test_preprocess_torchvision_metadata(tmp_path):
    torch = pytest.importorskip("torch")
    model = _small("alexnet-torchvision")
    sd = {}
    back_map = {"conv1": "features.0", "conv2": "features.3", "conv3": "features.6", "conv4": "features.8",
                "conv5": "features.10", "fc6": "classifier.1", "fc7": "classifier.4", "fc8": "classifier.6"}
    for k, v in model.state_dict().items():
        layer, p = k.split(".")
        sd[f"{back_map[layer]}.{p}"] = torch.from_numpy(v)
    torch.save(sd, tmp_path / "tv.pth")
    loaded = load(tmp_path / "tv.pth")
    x = loaded.preprocess(Image.new("RGB", (300, 260), (255, 0, 128)))
    assert x.shape == (3, 224, 224)
    want = (np.array([255, 0, 128]) / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(x[:, 10, 10], want, rtol=1e-5)


# ----------------------------------------------------------------------------- CLI


def test_cli_convert_and_info(tmp_path, capsys):
    from zfnet.cli import main

    model = _small("alexnet")
    write_caffemodel(tmp_path / "a.caffemodel", _caffe_blobs(model, True), v1=True)
    (tmp_path / "classes.txt").write_text("".join(f"n0000000{i} class {i}\n" for i in range(7)))
    assert main(["convert", str(tmp_path / "a.caffemodel"), str(tmp_path / "a.npz"),
                 "--dtype", "float16", "--classes", str(tmp_path / "classes.txt")]) == 0
    assert "alexnet (caffe)" in capsys.readouterr().out
    assert load(tmp_path / "a.npz").config["class_names"][2] == "class 2"
    assert main(["info", str(tmp_path / "a.npz")]) == 0
    out = capsys.readouterr().out
    assert "alexnet (variant caffe), 7 classes, input 227x227" in out
    assert "BGR" in out and "conv2.weight                 256x48x5x5" in out and "class 0" in out
    (tmp_path / "junk.pth").write_bytes(b"\x80\x02junk")
    assert main(["info", str(tmp_path / "junk.pth")]) == 2
    assert "junk.pth" in capsys.readouterr().err


def test_saved_files_get_ordinary_permissions(tmp_path):
    """Atomic writes go through a temporary file (created owner-only); the result must
    still be an ordinary file, readable by others as the umask allows."""
    import os
    import stat

    from zfnet.deconvnet.topk import TopK

    umask = os.umask(0o022)
    try:
        save(_small("zfnet"), tmp_path / "w.npz")
        TopK({"c": (3, 4, 4)}, k=2).save(tmp_path / "state.npz")
    finally:
        os.umask(umask)
    for name in ("w.npz", "state.npz", "state.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
