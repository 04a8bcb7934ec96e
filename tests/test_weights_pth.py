"""read_pth: PyTorch checkpoints without torch, and without ever running the pickle.

torch is used here only to *write* genuine checkpoints (both container formats) and
to compute reference outputs; the reader under test never imports it.
"""

from __future__ import annotations

import functools
import io
import os
import pickle
import struct
import subprocess
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zfnet.errors import WeightsError, ZfnetError
from zfnet.weights import load, read_pth

torch = pytest.importorskip("torch")
nn = torch.nn


# --------------------------------------------------------------------------- helpers


class TorchAlexNet(nn.Module):
    """torchvision's AlexNet layout (same module names, so the same state-dict keys).

    ``fc`` and ``num_classes`` shrink the classifier to keep the test files small;
    the convolutional trunk is full size.
    """

    def __init__(self, num_classes: int = 10, fc: int = 128):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(), nn.Linear(256 * 6 * 6, fc), nn.ReLU(inplace=True),
            nn.Dropout(), nn.Linear(fc, fc), nn.ReLU(inplace=True), nn.Linear(fc, num_classes),
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@functools.lru_cache(maxsize=None)
def _torch_alexnet(seed: int = 0) -> TorchAlexNet:
    torch.manual_seed(seed)
    net = TorchAlexNet().eval()
    with torch.no_grad():  # non-zero biases, so a lost bias shows
        for p in net.parameters():
            if p.ndim == 1:
                p.normal_(0, 0.1)
    return net


def _save(obj, path, zip_format: bool) -> str:
    torch.save(obj, path, _use_new_zipfile_serialization=zip_format)
    return str(path)


class _Call:
    """Pickles as a call of ``fn(*args)``: the classic hostile pickle payload."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _small_state() -> dict:
    g = torch.Generator().manual_seed(1)
    return {
        "a.weight": torch.randn(4, 3, 3, 3, generator=g),
        "a.bias": torch.randn(4, generator=g),
        "b.weight": torch.randn(5, 6, generator=g).half(),
        "c": torch.arange(7),
    }


@functools.lru_cache(maxsize=None)
def _small_bytes(zip_format: bool) -> bytes:
    buf = io.BytesIO()
    torch.save(_small_state(), buf, _use_new_zipfile_serialization=zip_format)
    return buf.getvalue()


def _legacy_stream(*objects, storages: bytes = b"") -> bytes:
    """A hand-made legacy checkpoint: consecutive protocol-2 pickles, then raw data."""
    return b"".join(pickle.dumps(o, protocol=2) for o in objects) + storages


_MAGIC = 0x1950A86A20F9469CFC6C
_SYS_INFO = {"protocol_version": 1001, "little_endian": True,
             "type_sizes": {"short": 2, "int": 4, "long": 4}}


def _zip_checkpoint(path, pickle_bytes: bytes, records: dict | None = None,
                    compress: int = zipfile.ZIP_STORED) -> str:
    with zipfile.ZipFile(path, "w", compression=compress) as zf:
        zf.writestr("archive/data.pkl", pickle_bytes)
        zf.writestr("archive/byteorder", "little")
        for name, data in (records or {}).items():
            zf.writestr(f"archive/data/{name}", data)
    return str(path)


# ----------------------------------------------------------------------- round trips


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_alexnet_state_dict_round_trip(tmp_path, zip_format):
    net = _torch_alexnet()
    path = _save(net.state_dict(), tmp_path / "alexnet.pth", zip_format)
    got = read_pth(path)
    want = net.state_dict()
    assert list(got) == list(want)  # file order is state-dict order
    for key, tensor in want.items():
        assert got[key].dtype == np.float32 and got[key].flags.c_contiguous
        np.testing.assert_array_equal(got[key], tensor.numpy(), err_msg=key)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_torchvision_alexnet_forward_equals_torch(tmp_path, zip_format):
    """torch.save -> read_pth -> key map -> our forward == torch's forward."""
    net = _torch_alexnet()
    path = _save(net.state_dict(), tmp_path / "alexnet.pth", zip_format)
    model = load(path)  # architecture, class count and fc width from keys and shapes
    assert (model.arch, model.config["variant"], model.num_classes) == ("alexnet", "torchvision", 10)
    assert model.config["channel_order"] == "RGB" and model.config["mean"] == [0.485, 0.456, 0.406]
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    got = model(x).output
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_dtypes_views_strides_and_wrappers(tmp_path, zip_format):
    base = torch.arange(40, dtype=torch.float32)
    state = {
        "f16": torch.linspace(-2, 2, 9).half().reshape(3, 3),
        "f64": torch.randn(2, 5, dtype=torch.float64),
        "i64": torch.arange(-3, 9).reshape(3, 4),
        "bf16": torch.tensor([1.5, -2.25, 3.0]).bfloat16(),
        "transposed": base[:12].reshape(3, 4).t(),          # non-contiguous strides
        "offset_view": base[10:22].reshape(2, 6),           # storage offset 10
        "shares_storage": base[::3],                         # stride 3 into the same storage
        "empty": torch.zeros(0, 4),
        "scalar": torch.tensor(2.5),
    }
    path = _save({"state_dict": state, "epoch": 7, "optimizer": {}}, tmp_path / "c.pth", zip_format)
    got = read_pth(path)
    assert list(got) == list(state)
    for key, tensor in state.items():
        want = tensor.float().numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()
        assert got[key].dtype == want.dtype, key
        assert got[key].shape == want.shape, key
        np.testing.assert_array_equal(got[key], want, err_msg=key)


@pytest.mark.parametrize("wrapper", ["model", "model_state_dict"])
def test_nested_wrappers(tmp_path, wrapper):
    state = _small_state()
    path = _save({"meta": {"arch": "x"}, wrapper: {"inner": 1, **state}}, tmp_path / "w.pth", True)
    assert list(read_pth(path)) == list(state)


def test_parameters_saved_directly(tmp_path):
    """A dict of nn.Parameter objects pickles through _rebuild_parameter."""
    net = nn.Linear(3, 2)
    path = _save(dict(net.named_parameters()), tmp_path / "p.pth", True)
    got = read_pth(path)
    np.testing.assert_array_equal(got["weight"], net.weight.detach().numpy())


def test_read_pth_does_not_import_torch(tmp_path):
    path = _save(_small_state(), tmp_path / "s.pth", True)
    code = ("import sys; from zfnet.weights import read_pth; "
            f"d = read_pth({path!r}); assert 'torch' not in sys.modules, 'torch imported'; "
            "print(sorted(d))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(["python", "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert "a.weight" in out.stdout


# ------------------------------------------------------------------ hostile pickles


def _payloads(sentinel):
    s = str(sentinel)
    return {
        "os.system": (_Call(os.system, f"touch {s}"), os.system.__module__ + ".system"),
        "builtins.eval": (_Call(eval, f"open({s!r}, 'w').close()"), "builtins.eval"),
        "subprocess": (_Call(subprocess.call, ["touch", s]), "subprocess.call"),
    }


def test_payload_is_live_under_plain_pickle(tmp_path):
    """Control: the payload used below really runs when unpickled the usual way."""
    control = tmp_path / "control"
    payload, _ = _payloads(control)["os.system"]
    pickle.loads(pickle.dumps(payload, protocol=2))
    assert control.exists()


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval", "subprocess"])
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_hostile_torch_save_is_refused_and_nothing_runs(tmp_path, kind, zip_format):
    sentinel = tmp_path / "pwned"
    payload, global_name = _payloads(sentinel)[kind]
    state = {"w": torch.ones(2), "evil": payload}
    path = _save(state, tmp_path / "evil.pth", zip_format)
    with pytest.raises(WeightsError) as info:
        read_pth(path)
    msg = str(info.value)
    assert path in msg and global_name in msg and "refused" in msg, msg
    assert not sentinel.exists()


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_hostile_raw_pickles_every_protocol(tmp_path, protocol):
    """GLOBAL (protocols 0-2) and STACK_GLOBAL (4, 5) both go through find_class."""
    sentinel = tmp_path / "pwned"
    for kind, (payload, global_name) in _payloads(sentinel).items():
        path = _zip_checkpoint(tmp_path / f"{kind}.pth", pickle.dumps({"x": payload}, protocol=protocol))
        with pytest.raises(WeightsError, match="refused"):
            read_pth(path)
    assert not sentinel.exists()


@pytest.mark.parametrize("slot", ["magic", "sys_info", "keys"])
def test_hostile_legacy_header_pickles(tmp_path, slot):
    sentinel = tmp_path / "pwned"
    payload, name = _payloads(sentinel)["os.system"]
    parts = {"magic": _MAGIC, "protocol": 1001, "sys_info": _SYS_INFO, "main": {}, "keys": []}
    parts[slot] = payload
    path = tmp_path / "legacy.pth"
    path.write_bytes(_legacy_stream(*parts.values()))
    with pytest.raises(WeightsError, match="refused"):
        read_pth(path)
    assert not sentinel.exists()


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_pickled_module_is_refused_and_the_message_says_what_to_save(tmp_path, zip_format):
    """torch.save(model) pickles classes by name; the message says to save the state dict."""
    path = _save(nn.Linear(2, 2), tmp_path / "module.pth", zip_format)
    with pytest.raises(WeightsError, match=r"refused to load global 'torch\.nn\.modules") as info:
        read_pth(path)
    assert r"torch.save(model.state_dict(), path)" in str(info.value)
    # A payload that is not a class gets no such advice.
    evil = _zip_checkpoint(tmp_path / "evil.pth", pickle.dumps(_Call(os.system, "true"), protocol=2))
    with pytest.raises(WeightsError, match="refused") as info:
        read_pth(evil)
    assert "state_dict" not in str(info.value)


# Hand-written BUILDs on the storage stand-in every load used to share (issue 14).
_POISONS = {
    "name": b"\x80\x02ctorch\nFloatStorage\nN}\x8c\x04name\x8c\x0fBFloat16Storages\x86b0}.",
    "dtype": b"\x80\x02ctorch\nFloatStorage\nN}\x8c\x05dtypeNs\x86b0}.",
}


@pytest.mark.parametrize("poison", list(_POISONS))
def test_hostile_build_cannot_corrupt_a_later_torchvision_alexnet(tmp_path, poison):
    """Before the fix, the poisoned marker made the next AlexNet load as all zeros
    ("name") or raise a raw AttributeError ("dtype")."""
    net = _torch_alexnet()
    path = _save(net.state_dict(), tmp_path / "alexnet.pth", True)
    with pytest.raises(WeightsError, match="BUILD"):
        read_pth(_zip_checkpoint(tmp_path / "hostile.pth", _POISONS[poison]))
    got = read_pth(path)
    for key, tensor in net.state_dict().items():
        np.testing.assert_array_equal(got[key], tensor.numpy(), err_msg=key)
    model = load(path)
    np.testing.assert_array_equal(model.state_dict()["conv1.weight"], net.features[0].weight.detach().numpy())


def test_dotted_names_and_storage_calls_are_refused(tmp_path):
    # STACK_GLOBAL with a dotted attribute path of an allowed global.
    mod, name = b"collections", b"OrderedDict.__init__.__globals__"
    evil = (b"\x80\x04\x8c" + bytes([len(mod)]) + mod + b"\x8c" + bytes([len(name)]) + name
            + b"\x93.")  # SHORT_BINUNICODE x2, STACK_GLOBAL, STOP
    with pytest.raises(WeightsError, match="refused"):
        read_pth(_zip_checkpoint(tmp_path / "dotted.pth", evil))
    # An admitted storage "class" is only a marker; calling it is an error, not a call.
    calls_storage = b"\x80\x02ctorch\nFloatStorage\nq\x00)R."
    with pytest.raises(WeightsError, match="cannot parse"):
        read_pth(_zip_checkpoint(tmp_path / "call.pth", calls_storage))


# ------------------------------------------------------------------- malformed files


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(WeightsError, match="cannot open"):
        read_pth(tmp_path / "nope.pth")
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(WeightsError, match="not a PyTorch checkpoint"):
        read_pth(tmp_path / "text.pth")
    with zipfile.ZipFile(tmp_path / "plain.zip", "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(WeightsError, match="expected one data.pkl"):
        read_pth(tmp_path / "plain.zip")
    with pytest.raises(WeightsError, match="no tensors found"):
        read_pth(_save({"epoch": 3}, tmp_path / "notensors.pth", True))
    with pytest.raises(WeightsError, match="expected a dict"):
        read_pth(_save([torch.ones(1)], tmp_path / "list.pth", True))


def test_length_fields_the_file_cannot_back(tmp_path):
    # A legacy storage header that claims 2**60 elements.
    good = _small_bytes(False)
    keys_end = _legacy_keys_end(good)  # the first storage's 8-byte element count is here
    bad = good[:keys_end] + struct.pack("<q", 1 << 60) + good[keys_end + 8:]
    (tmp_path / "huge.pth").write_bytes(bad)
    with pytest.raises(WeightsError, match="claims"):
        read_pth(tmp_path / "huge.pth")
    # A pickle BINBYTES8 argument claiming a terabyte (would be allocated before reading).
    bomb = b"\x80\x05\x8e" + struct.pack("<Q", 1 << 40) + b"xx."
    with pytest.raises(WeightsError, match="cannot parse.*1099511627776 bytes, but only 3 remain"):
        read_pth(_zip_checkpoint(tmp_path / "bomb.pth", bomb))
    # A memo index the pickle cannot need: the unpickler would size its memo table by it
    # (8 bytes of file asking for 2**26 slots = 1 GiB).
    memo = b"\x80\x02}r" + struct.pack("<I", 1 << 26) + b"."
    with pytest.raises(WeightsError, match="memo index 67108864"):
        read_pth(_zip_checkpoint(tmp_path / "memo.pth", memo))


def _legacy_keys_end(data: bytes) -> int:
    """Offset just past the fifth pickle (the storage key list) of a legacy file."""
    import pickletools

    f = io.BytesIO(data)
    for _ in range(5):
        for _ in pickletools.genops(f):
            pass
    return f.tell()


def _tensor_pickle(size, stride, offset, numel, key="0") -> bytes:
    """data.pkl of ``{"t": tensor}`` written opcode by opcode (protocol 2), so that it
    can describe views that torch itself would never write."""

    def glob(mod, name):
        return b"c" + mod.encode() + b"\n" + name.encode() + b"\n"

    def tup(items):
        return b"(" + b"".join(items) + b"t"

    def integer(v):
        return b"J" + struct.pack("<i", v) if v < 2 ** 31 else b"\x8a\x08" + struct.pack("<q", v)

    def text(s):
        b = s.encode()
        return b"X" + struct.pack("<I", len(b)) + b

    pid = tup([text("storage"), glob("torch", "FloatStorage"), text(key), text("cpu"), integer(numel)])
    args = tup([pid + b"Q", integer(offset), tup([integer(v) for v in size]),
                tup([integer(v) for v in stride]), b"\x89", glob("collections", "OrderedDict") + b")R"])
    return (b"\x80\x02}" + text("t") + glob("torch._utils", "_rebuild_tensor_v2") + args + b"R" + b"s.")


def test_views_outside_their_storage(tmp_path):
    raw = np.arange(6, dtype="<f4").tobytes()
    ok = _zip_checkpoint(tmp_path / "ok.pth", _tensor_pickle((2, 3), (3, 1), 0, 6), {"0": raw})
    np.testing.assert_array_equal(read_pth(ok)["t"], np.arange(6, dtype=np.float32).reshape(2, 3))
    cases = {
        "past_end": ((2, 3), (3, 1), 1, 6),          # last element 6 of 6
        "storage_longer_than_record": ((2,), (1,), 0, 600),
        "huge_stride0": ((1 << 20, 1 << 20), (0, 0), 0, 6),  # 4 TiB of one element
        "huge_stride_one_element": ((1,), (1 << 62,), 0, 6),  # byte strides overflow int64
        "zero_dim_hides_huge_ones": ((0, 1 << 40, 1 << 40), (1, 1, 1), 0, 6),
    }
    for name, (size, stride, offset, numel) in cases.items():
        path = _zip_checkpoint(tmp_path / f"{name}.pth", _tensor_pickle(size, stride, offset, numel), {"0": raw})
        with pytest.raises(WeightsError, match=f"{name}.pth"):
            read_pth(path)
    missing = _zip_checkpoint(tmp_path / "missing.pth", _tensor_pickle((2,), (1,), 0, 2, key="7"), {"0": raw})
    with pytest.raises(WeightsError, match="no record"):
        read_pth(missing)


def test_compressed_records_are_refused(tmp_path):
    raw = np.arange(6, dtype="<f4").tobytes()
    path = _zip_checkpoint(tmp_path / "deflate.pth", _tensor_pickle((6,), (1,), 0, 6), {"0": raw},
                           compress=zipfile.ZIP_DEFLATED)
    with pytest.raises(WeightsError, match="compressed"):
        read_pth(path)


# ---------------------------------------------------------------------------- fuzzing


@pytest.fixture(scope="module")
def fuzz_path(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "f.pth"


def _read_or_weights_error(path):
    """The fuzz contract: a dict of arrays, or a WeightsError; nothing else escapes."""
    try:
        out = read_pth(path)
    except WeightsError as exc:
        assert str(path) in str(exc)
        return None
    assert isinstance(out, dict) and all(isinstance(v, np.ndarray) for v in out.values())
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(zip_format=st.booleans(), frac=st.floats(0, 1, exclude_max=True))
def test_fuzz_truncation(fuzz_path, zip_format, frac):
    data = _small_bytes(zip_format)
    fuzz_path.write_bytes(data[: int(frac * len(data))])
    with pytest.raises(WeightsError) as info:
        read_pth(fuzz_path)
    assert str(fuzz_path) in str(info.value)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(zip_format=st.booleans(),
       flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)),
                      min_size=1, max_size=4))
def test_fuzz_byte_flips(fuzz_path, zip_format, flips):
    data = bytearray(_small_bytes(zip_format))
    for frac, xor in flips:
        data[int(frac * len(data))] ^= xor
    fuzz_path.write_bytes(bytes(data))
    _read_or_weights_error(fuzz_path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(zip_format=st.booleans(), frac=st.floats(0, 1, exclude_max=True), xor=st.integers(1, 255))
def test_fuzz_pickle_bytes(fuzz_path, zip_format, frac, xor):
    """Flips aimed at the pickle itself (the part a CRC or length check cannot see)."""
    if zip_format:
        with zipfile.ZipFile(io.BytesIO(_small_bytes(True))) as zf:
            name = next(n for n in zf.namelist() if n.endswith("data.pkl"))
            records = {n: zf.read(n) for n in zf.namelist()}
        pkl = bytearray(records[name])
        pkl[int(frac * len(pkl))] ^= xor
        with zipfile.ZipFile(fuzz_path, "w") as zf:
            for n, d in records.items():
                zf.writestr(n, bytes(pkl) if n == name else d)
    else:
        data = bytearray(_small_bytes(False))
        end = _legacy_keys_end(bytes(data))
        data[int(frac * end)] ^= xor
        fuzz_path.write_bytes(bytes(data))
    _read_or_weights_error(fuzz_path)


def test_errors_are_zfnet_errors():
    assert issubclass(WeightsError, ZfnetError)
