"""Hostile and odd weight files, round 2 (issue 14): poisoning, hangs, amplification.

Every file here is built by hand (no torch needed), so these run wherever the
package does.  Cases that hung or took gigabytes before the fix run in a child
process with a timeout, and the child reports its own peak memory (VmHWM), so a
regression fails the test instead of hanging or swapping the machine.  The
guarantees checked are the ones docs/weights.md states:

* no load changes what a later load sees (nothing shared is mutable);
* the pickle machine's work and heap stay under ``8 b + 2**16`` units and
  ``16 b + 32 MiB`` after ``b`` bytes of pickle, and dict keys are bounded before
  they are hashed;
* reading a file of ``n`` bytes raises the process's peak memory by at most
  ``32 n + 64 MiB`` (``read_pth``, ``read_caffemodel``) or ``32 n + 128 MiB``
  (``read_npz``), and by less than 200 MB for the few-MB attack files below.
"""

from __future__ import annotations

import ast
import io
import math
import os
import pickle
import random
import struct
import subprocess
import sys
import time
import zipfile
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zfnet.errors import WeightsError, ZfnetError
from zfnet.weights import read_caffemodel, read_npz, read_pth, safepickle
from zfnet.weights import protobuf as pb
from zfnet.weights.caffe import encode_caffemodel
from zfnet.weights.native import META_KEY, _check_metadata
from zfnet.weights.pth import ALLOWED_GLOBALS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MiB = 1 << 20

# ----------------------------------------------------------------- hand-made pickles


def _glob(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _text(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _int(v: int) -> bytes:
    return b"J" + struct.pack("<i", v)


def _tup(items) -> bytes:
    return b"(" + b"".join(items) + b"t"


# name -> (storage key, shape); storage k holds arange(numel) + 10 k as float32.
TENSORS = {"conv.weight": ("0", (2, 3)), "conv.bias": ("1", (2,)), "fc.weight": ("2", (3, 2))}


def _expected() -> dict:
    return {name: (np.arange(math.prod(shape), dtype=np.float32) + 10 * int(key)).reshape(shape)
            for name, (key, shape) in TENSORS.items()}


def _storage(key: str, shape) -> bytes:
    return (np.arange(math.prod(shape), dtype="<f4") + 10 * int(key)).tobytes()


def _state_dict_pickle(legacy: bool = False) -> bytes:
    """What torch.save writes for TENSORS (protocol 2, OrderedDict + _metadata BUILD)."""
    body = b""
    for name, (key, shape) in TENSORS.items():
        stride = [math.prod(shape[i + 1:]) for i in range(len(shape))]
        pid = _tup([_text("storage"), _glob("torch", "FloatStorage"), _text(key), _text("cpu"),
                    _int(math.prod(shape))] + ([b"N"] if legacy else []))
        args = _tup([pid + b"Q", _int(0), _tup(_int(v) for v in shape), _tup(_int(v) for v in stride),
                     b"\x89", _glob("collections", "OrderedDict") + b")R"])
        body += _text(name) + _glob("torch._utils", "_rebuild_tensor_v2") + args + b"R"
    metadata = b"}" + _text("_metadata") + _glob("collections", "OrderedDict") + b")Rs"
    return b"\x80\x02" + _glob("collections", "OrderedDict") + b")R(" + body + b"u" + metadata + b"b."


def _zip_pth(pkl: bytes, records: dict | None = None) -> bytes:
    if records is None:
        records = {key: _storage(key, shape) for key, shape in TENSORS.values()}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/byteorder", "little")
        for key, raw in records.items():
            zf.writestr(f"archive/data/{key}", raw)
    return buf.getvalue()


_MAGIC = 0x1950A86A20F9469CFC6C
_SYS_INFO = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}


def _legacy_pth(sys_info_pickle: bytes | None = None, main: bytes | None = None) -> bytes:
    keys = sorted(key for key, _ in TENSORS.values())
    shapes = {key: shape for key, shape in TENSORS.values()}
    storages = b"".join(struct.pack("<q", math.prod(shapes[k])) + _storage(k, shapes[k]) for k in keys)
    return (pickle.dumps(_MAGIC, protocol=2) + pickle.dumps(1001, protocol=2)
            + (sys_info_pickle or pickle.dumps(_SYS_INFO, protocol=2))
            + (main or _state_dict_pickle(legacy=True)) + pickle.dumps(keys, protocol=2) + storages)


def _assert_good(path) -> None:
    got = read_pth(path)
    want = _expected()
    assert list(got) == list(want)
    for name in want:
        assert got[name].dtype == np.float32, name
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


@pytest.fixture
def good_files(tmp_path):
    (tmp_path / "good.pth").write_bytes(_zip_pth(_state_dict_pickle()))
    (tmp_path / "good_legacy.pth").write_bytes(_legacy_pth())
    return tmp_path / "good.pth", tmp_path / "good_legacy.pth"


def test_hand_made_checkpoints_read(good_files):
    for path in good_files:
        _assert_good(path)


# ------------------------------------------------ 1. no load can poison a later one

# BUILD on a stand-in the unpickler used to share between loads: each of these used
# to get a WeightsError itself and then corrupt every later load in the process.
POISONS = {
    # torch.FloatStorage.name = "BFloat16Storage": later float32 tensors read as bf16
    "storage_name": b"\x80\x02ctorch\nFloatStorage\nN}\x8c\x04name\x8c\x0fBFloat16Storages\x86b0}.",
    # torch.FloatStorage.dtype = None: every later load raised a raw AttributeError
    "storage_dtype_none": b"\x80\x02ctorch\nFloatStorage\nN}\x8c\x05dtypeNs\x86b0}.",
    # _rebuild_tensor_v2.__defaults__ = (): every later torch-written tensor a TypeError
    "function_defaults": b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nN}\x8c\x0c__defaults__)s\x86b0}.",
    # the same through a dict state (instance __dict__) rather than slot state
    "function_dict": b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n}\x8c\x01x\x88sb0}.",
}


@pytest.mark.parametrize("poison", list(POISONS))
def test_build_on_shared_stand_ins_is_refused_and_later_loads_are_unharmed(tmp_path, good_files, poison):
    hostile = tmp_path / "hostile.pth"
    hostile.write_bytes(_zip_pth(POISONS[poison], records={}))
    with pytest.raises(WeightsError, match=r"hostile\.pth: .*BUILD") as info:
        read_pth(hostile)
    assert "OrderedDict" in str(info.value)
    for path in good_files:  # the same process, after the hostile file
        _assert_good(path)


def test_stand_ins_are_frozen_and_the_allow_list_read_only():
    marker = ALLOWED_GLOBALS[("torch", "FloatStorage")]
    for attr, value in (("name", "BFloat16Storage"), ("dtype", None), ("other", 1)):
        with pytest.raises(AttributeError):
            setattr(marker, attr, value)
    with pytest.raises(AttributeError):
        del marker.dtype
    assert marker.dtype == np.dtype("<f4")
    with pytest.raises(TypeError):
        ALLOWED_GLOBALS[("os", "system")] = print  # type: ignore[index]


@pytest.mark.parametrize("payload, match", [
    (b"\x80\x02]N\x81.", "instance of a class"),                              # NEWOBJ
    (b"\x80\x02ccollections\nOrderedDict\n((K\x01K\x02ltR.", "rebuilt only empty"),
    (b"\x80\x02ctorch\nFloatStorage\n)R.", "not a function here"),            # a marker called
    (b"\x80\x02ctorch\nFloatStorage\nK\x01a.", "only lists are appended to"),
    (b"\x80\x02ccollections\nOrderedDict\nK\x01K\x02s.", "only dicts are filled"),
    (b"\x80\x04K\x02(K\x01\x90.", "only sets are added to"),
])
def test_no_opcode_reaches_an_object_the_load_did_not_create(tmp_path, payload, match):
    path = tmp_path / "x.pth"
    path.write_bytes(_zip_pth(payload, records={}))
    with pytest.raises(WeightsError, match=match):
        read_pth(path)


# ------------------------------------------------------- children that report VmHWM

_CHILD = r"""
import resource, sys, time
# A regression must fail, not take the machine's memory: cap the address space.
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
from zfnet.errors import ZfnetError
from zfnet.weights import read_caffemodel, read_npz, read_pth

def status(key):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(key))

reader = {"pth": read_pth, "npz": read_npz, "caffemodel": read_caffemodel}[sys.argv[1]]
base = status("VmRSS:")
t = time.perf_counter()
try:
    reader(sys.argv[2])
    outcome = "loaded"
except ZfnetError as exc:
    outcome = type(exc).__name__ + ": " + str(exc)
print(repr((outcome, base, status("VmHWM:"), time.perf_counter() - t)))
"""


def _in_child(kind: str, path, timeout: float = 60) -> tuple[str, int, int, float]:
    """Read ``path`` in a fresh interpreter: (outcome, RSS before, peak RSS, seconds)."""
    out = subprocess.run([sys.executable, "-c", _CHILD, kind, str(path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-2000:]
    return ast.literal_eval(out.stdout.strip().splitlines()[-1])


def _assert_bounded(kind: str, path, slack: int = 64 * MiB) -> str:
    """The reader refuses ``path`` within the memory bound of docs/weights.md."""
    n = os.path.getsize(path)
    outcome, base, peak, _ = _in_child(kind, path)
    assert outcome.startswith("WeightsError") and str(path) in outcome, outcome
    assert peak - base <= 32 * n + slack, (peak - base, n)
    assert peak < 200e6, peak
    return outcome


# ------------------------------------------------------------- 2. hashing and work


def _hash_bomb(levels: int = 40) -> bytes:
    """``{t_levels: None}`` with ``t_0 = ()``, ``t_i = (t_{i-1}, t_{i-1})`` through the
    memo: 2 ** levels element hashes to insert a key spelled in ~6 bytes per level."""
    out = b"\x80\x04)\x94"  # EMPTY_TUPLE, MEMOIZE (memo 0)
    for i in range(1, levels + 1):
        get = b"h" + bytes([i - 1])
        out += get + get + b"\x86\x94"  # TUPLE2, MEMOIZE (memo i)
    return out + b"}h" + bytes([levels]) + b"Ns."


def test_hash_bomb_in_data_pkl_is_refused_before_hashing(tmp_path):
    path = tmp_path / "bomb.pth"
    path.write_bytes(_zip_pth(_hash_bomb(), records={}))
    assert len(_hash_bomb()) < 340
    outcome, *_ = _in_child("pth", path, timeout=60)  # used to hash 2**40 nodes: hours
    assert outcome.startswith("WeightsError") and "dict key" in outcome, outcome


def test_hash_bomb_in_legacy_sys_info_is_refused_before_hashing(tmp_path):
    path = tmp_path / "bomb_legacy.pth"
    path.write_bytes(_legacy_pth(sys_info_pickle=_hash_bomb()))
    outcome, *_ = _in_child("pth", path, timeout=60)
    assert outcome.startswith("WeightsError") and "sys_info" in outcome and "dict key" in outcome, outcome


def _shared_key(levels: int, width: int) -> bytes:
    """A dict key of ``width ** levels`` leaves built from ``levels`` memo-shared tuples."""
    out = b"\x80\x04K\x07\x85\x94"  # (7,) as memo 0
    for i in range(1, levels + 1):
        out += b"(" + (b"h" + bytes([i - 1])) * width + b"t\x94"
    return out + b"}h" + bytes([levels]) + b"Ns."


def _run(data: bytes):
    def refuse(*args):
        raise ValueError("no globals here")
    return safepickle.run_pickle(data, 0, source="f.pth", what="test pickle",
                                 find_class=refuse, reduce=refuse)


def test_key_nodes_are_counted_through_the_memo():
    # Shallow (4 levels) but 4**4 = 256 leaves: refused by the node count, not depth.
    with pytest.raises(WeightsError, match=f"more than {safepickle.KEY_NODES} parts"):
        _run(_shared_key(levels=4, width=4))
    value, _ = _run(_shared_key(levels=2, width=3))  # 13 nodes: fine
    assert value == {(((7,),) * 3,) * 3: None}


def test_key_types_and_tuple_key_count():
    ok = {"a": 1, 2: "b", (1, ("x", 2.5)): None, None: 0, True: 1, -(2**61 - 2): 3, b"k": 4}
    assert _run(pickle.dumps(ok, protocol=4))[0] == ok
    assert _run(pickle.dumps({(i, i): 0 for i in range(safepickle.COMPOSITE_KEYS)}, 4))[0]
    with pytest.raises(WeightsError, match="tuple-valued"):
        _run(pickle.dumps({(i, i) for i in range(safepickle.COMPOSITE_KEYS + 1)}, protocol=4))
    # Ints whose hashes would collide (hash(i) == hash(i + 2**61 - 1)) cannot be keys.
    with pytest.raises(WeightsError, match=r"beyond \+-\(2\*\*61 - 1\)"):
        _run(pickle.dumps({2**61 - 1 + 5: 0}, protocol=2))
    with pytest.raises(WeightsError, match="cannot be a dict key"):
        _run(b"\x80\x04((\x91\x91.")  # a frozenset inside a frozenset


@pytest.mark.parametrize("meter", ["work", "heap"])
def test_meters_stop_a_run_at_their_bound(monkeypatch, meter):
    """Shrink one bound to nothing per byte: an ordinary pickle trips it, named."""
    data = pickle.dumps({"k%d" % i: [i] * 3 for i in range(200)}, protocol=2)
    assert _run(data)[0]["k5"] == [5, 5, 5]
    name = "WORK" if meter == "work" else "HEAP"
    monkeypatch.setattr(safepickle, f"{name}_PER_BYTE", 0)
    monkeypatch.setattr(safepickle, f"{name}_SLACK", 500)
    with pytest.raises(WeightsError, match="work units" if meter == "work" else "bytes of objects"):
        _run(data)


# ------------------------------------------------------------ 3. memory amplification

# Opcodes that create an object of 50-220 bytes per byte or few bytes of pickle.
FLOODS = {
    "EMPTY_SET": b"\x80\x04(" + b"\x8f" * 200_000 + b"l.",
    "EMPTY_DICT": b"\x80\x02(" + b"}" * 200_000 + b"l.",
    "EMPTY_LIST": b"\x80\x02(" + b"]" * 200_000 + b"l.",
    "nested TUPLE1": b"\x80\x02N" + b"\x85" * 200_000 + b".",
    "TUPLE3 of DUPs": b"\x80\x02N" + b"22\x87" * 200_000 + b".",
}


@pytest.mark.parametrize("flood", list(FLOODS))
def test_object_floods_hit_the_heap_meter(tmp_path, monkeypatch, flood):
    """Each flood costs more than 16 heap bytes per pickle byte; with the constant
    shrunk to 1 MiB (so that the test is quick) the meter stops it early.  The
    children below check the real constants."""
    monkeypatch.setattr(safepickle, "HEAP_SLACK", MiB)
    path = tmp_path / "flood.pth"
    path.write_bytes(_zip_pth(FLOODS[flood], records={}))
    with pytest.raises(WeightsError, match="bytes of objects after"):
        read_pth(path)


def test_empty_set_flood_peak_memory(tmp_path):
    """4.8 MB of EMPTY_SET used to peak at 1.16 GiB before its WeightsError."""
    path = tmp_path / "sets.pth"
    path.write_bytes(_zip_pth(b"\x80\x04(" + b"\x8f" * 4_800_000 + b"l.", records={}))
    assert "bytes of objects" in _assert_bounded("pth", path)


def test_legacy_main_pickle_flood_peak_memory(tmp_path):
    path = tmp_path / "dicts_legacy.pth"
    path.write_bytes(_legacy_pth(main=b"\x80\x02(" + b"}" * 4_000_000 + b"l."))
    assert "main pickle" in _assert_bounded("pth", path)


def _npy_header(shape, descr: str = "<f4") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _zip_entry(name: str, stream: bytes, size: int, crc: int, method: int) -> tuple[bytes, bytes]:
    """(local header + data, central directory entry) of one member, offset filled later."""
    n = name.encode()
    common = struct.pack("<HHHHHIII", 20, 0, method, 0, 0x21, crc, len(stream), size)
    local = b"PK\x03\x04" + common + struct.pack("<HH", len(n), 0) + n + stream
    central = (b"PK\x01\x02" + struct.pack("<H", 20) + common
               + struct.pack("<HHHHHII", len(n), 0, 0, 0, 0, 0, 0) + n)  # offset patched by _zip
    return local, central


def _zip(entries) -> bytes:
    """A zip from (name, stream, declared size, crc, method); central offsets patched."""
    body, centrals = b"", []
    for name, stream, size, crc, method in entries:
        local, central = _zip_entry(name, stream, size, crc, method)
        centrals.append(central[:42] + struct.pack("<I", len(body)) + central[46:])
        body += local
    cd = b"".join(centrals)
    return body + cd + b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, len(centrals), len(centrals),
                                                   len(cd), len(body), 0)


def _deflated_zeros(header: bytes, mib: int) -> bytes:
    """A raw deflate stream of ``header`` + ``mib`` MiB of zeros, made in milliseconds:
    one compressed MiB after a full flush, repeated, then an empty final block."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(header) + c.flush(zlib.Z_FULL_FLUSH)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(bytes(MiB)) + c.flush(zlib.Z_FULL_FLUSH)
    return head + block * mib + b"\x03\x00"


def test_npz_members_inflating_past_the_budget_are_refused_before_inflating(tmp_path):
    """2 MB of .npz whose two honest members inflate to 1 GiB each (4.2 GB peak before)."""
    header = _npy_header((1 << 28,))  # 2**28 float32 = 1 GiB
    stream = _deflated_zeros(header, 1024)
    path = tmp_path / "bomb.npz"
    path.write_bytes(_zip([(f"{k}.npy", stream, len(header) + (1 << 30), 0, 8) for k in "ab"]))
    assert os.path.getsize(path) < 2.2e6
    assert zlib.decompressobj(-15).decompress(stream, 1 << 16)[:len(header)] == header
    outcome = _assert_bounded("npz", path, slack=128 * MiB)
    assert "a.npy" in outcome and "decompression bomb" in outcome


def test_npz_sizes_are_checked_before_and_while_inflating(tmp_path):
    data = np.arange(1000, dtype=np.float32)
    header = _npy_header((1000,))

    def deflate(raw: bytes) -> bytes:
        return zlib.compress(raw, 9)[2:-4]  # the raw deflate stream inside zlib's wrapper

    honest = deflate(header + data.tobytes())
    crc = zlib.crc32(header + data.tobytes())
    meta = _npy_header((5 << 20,), "|u1") + bytes(5 << 20)
    cases = {
        # the zip entry declares fewer bytes than the header needs: refused unread
        "entry_smaller_than_header": ([("a.npy", honest, len(header) + 400,
                                        zlib.crc32((header + data.tobytes())[:len(header) + 400]), 8)],
                                      "declares shape"),
        # the header needs fewer bytes than the entry declares (and the stream holds)
        "header_smaller_than_entry": ([("a.npy", deflate(_npy_header((10,)) + data.tobytes()),
                                         len(header) + 4000, 0, 8)], "declares shape"),
        # the entry's size agrees with the header, but the stream inflates to less
        "stream_short": ([("a.npy", deflate(header + data.tobytes()[:100]), len(header) + 4000, 0, 8)],
                         "a.npy"),
        # metadata past its cap
        "big_meta": ([(META_KEY + ".npy", meta, len(meta), zlib.crc32(meta), 0)], "bytes of metadata"),
    }
    for name, (entries, match) in cases.items():
        path = tmp_path / f"{name}.npz"
        path.write_bytes(_zip(entries))
        with pytest.raises(WeightsError, match=match) as info:
            read_npz(path)
        assert str(path) in str(info.value)
    good = tmp_path / "good.npz"
    good.write_bytes(_zip([("a.npy", honest, len(header) + 4000, crc, 8)]))
    np.testing.assert_array_equal(read_npz(good)[0]["a"], data)


def test_caffe_empty_layer_flood_peak_memory(tmp_path):
    """3-byte empty layers cost ~200 bytes each: 4.8 MB of them used to take 324 MB."""
    path = tmp_path / "layers.caffemodel"
    path.write_bytes(b"\xa2\x06\x00" * 1_600_000)
    assert "more than 16 x" in _assert_bounded("caffemodel", path)


def test_caffe_empty_blob_flood_is_refused(tmp_path):
    path = tmp_path / "blobs.caffemodel"
    path.write_bytes(pb.field_len(100, pb.field_string(1, "conv1") + b"\x3a\x00" * 1_000_000))
    with pytest.raises(WeightsError, match="layer 'conv1' blob .*more than 16 x"):
        read_caffemodel(path)


# ----------------------------------------------- the pickle machine is pickle's subset


_keys = st.one_of(st.text(max_size=4), st.integers(-(2**61) + 2, 2**61 - 2),
                  st.tuples(st.integers(-5, 5), st.text(max_size=2)))
_atoms = st.one_of(st.none(), st.booleans(), st.integers(-(2**80), 2**80),
                   st.floats(allow_nan=False), st.text(max_size=8))


def _values(protocol: int):
    atoms = st.one_of(_atoms, st.binary(max_size=8)) if protocol >= 3 else _atoms

    def children(inner):
        out = [st.lists(inner, max_size=4), st.tuples(inner, inner),
               st.dictionaries(_keys, inner, max_size=4)]
        if protocol >= 4:
            out += [st.sets(_keys, max_size=4), st.frozensets(_keys, max_size=4)]
        return st.one_of(*out)
    return st.recursive(atoms, children, max_leaves=12)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), protocol=st.integers(0, 5))
def test_machine_agrees_with_pickle_on_plain_data(data, protocol):
    value = data.draw(_values(protocol))
    blob = pickle.dumps([value, value], protocol=protocol)  # the second through the memo
    got, end = _run(blob)
    assert got == [value, value] and end == len(blob)


# ----------------------------------------------------------------------------- fuzzing

FUZZ_SEED = 14
FUZZ_CASES = 400      # mutants per reader
FUZZ_CASE_LIMIT = 5.0  # seconds: a hang detector, not a speed test (reads take ms)


def _mutate(rng: random.Random, data: bytes, region: int | None = None) -> bytes:
    """1-3 random edits: flips, interesting bytes, cuts, deletions, duplications."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        if not out:
            break
        hi = min(region or len(out), len(out))
        i = rng.randrange(hi)
        kind = rng.randrange(6)
        if kind == 0:
            out[i] ^= rng.randint(1, 255)
        elif kind == 1:
            out[i] = rng.choice([0x00, 0xFF, 0x7F, 0x80, 0x01]) if rng.random() < 0.5 else \
                rng.choice(b"().]}\x8f\x94hqbRQ2stuaelN\x85\x86\x87\x80KJM\x8a")
        elif kind == 2:
            del out[rng.randrange(len(out)):]
        elif kind == 3:
            del out[i:i + rng.randint(1, 16)]
        elif kind == 4:
            j = rng.randrange(len(out))
            out[j:j] = out[i:i + rng.randint(1, 64)]
        else:
            out[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    return bytes(out)


def _fuzz(tmp_path, name: str, make, read) -> None:
    """Run FUZZ_CASES mutants; only ZfnetError may escape, and no case may hang."""
    rng = random.Random(f"{FUZZ_SEED}-{name}")
    path = tmp_path / name
    outcomes = {"read": 0, "refused": 0}
    for case in range(FUZZ_CASES):
        path.write_bytes(make(rng))
        t = time.perf_counter()
        try:
            read(path)
            outcomes["read"] += 1
        except ZfnetError as exc:
            assert str(path) in str(exc), (case, exc)
            outcomes["refused"] += 1
        except Exception as exc:  # noqa: BLE001 - the point of the test
            raise AssertionError(f"{name} mutant {case} (seed {FUZZ_SEED}): "
                                 f"{type(exc).__name__}: {exc}") from exc
        elapsed = time.perf_counter() - t
        assert elapsed < FUZZ_CASE_LIMIT, f"{name} mutant {case} took {elapsed:.1f} s"
    assert outcomes["refused"] > FUZZ_CASES // 4, outcomes  # the mutants do bite


def test_fuzz_pth_zip(tmp_path):
    pkl = _state_dict_pickle()
    records = {key: _storage(key, shape) for key, shape in TENSORS.values()}
    whole = _zip_pth(pkl)

    def make(rng):
        if rng.random() < 0.7:  # inside the pickle, re-zipped (the CRC would stop most)
            return _zip_pth(_mutate(rng, pkl), records)
        return _mutate(rng, whole)
    _fuzz(tmp_path, "f.pth", make, read_pth)


def test_fuzz_pth_legacy(tmp_path):
    data = _legacy_pth()
    pickles_end = len(data) - sum(8 + 4 * math.prod(s) for _, s in TENSORS.values())
    _fuzz(tmp_path, "f_legacy.pth",
          lambda rng: _mutate(rng, data, pickles_end if rng.random() < 0.8 else None), read_pth)


def test_fuzz_caffemodel(tmp_path):
    rng0 = np.random.default_rng(0)
    layers = [("conv1", "Convolution", [rng0.standard_normal((4, 3, 3, 3)), rng0.standard_normal(4)]),
              ("relu1", "ReLU", []),
              ("fc", "InnerProduct", [rng0.standard_normal((5, 36)), rng0.standard_normal(5)])]
    bases = [encode_caffemodel(layers), encode_caffemodel(layers, v1=True)]
    _fuzz(tmp_path, "f.caffemodel", lambda rng: _mutate(rng, rng.choice(bases)), read_caffemodel)


def test_fuzz_npz(tmp_path):
    arrays = {"w": np.arange(24, dtype=np.float32).reshape(2, 3, 4), "b": np.ones(3, np.float16)}
    meta = b'{"arch": "zfnet", "input_size": [224, 224], "resize": 256, "mean": [0.5, 0.5, 0.5]}'
    bases = []
    for writer in (np.savez, np.savez_compressed):
        buf = io.BytesIO()
        writer(buf, **arrays, **{META_KEY: np.frombuffer(meta, np.uint8)})
        bases.append(buf.getvalue())
    members = {f"{k}.npy": _npy_bytes(v) for k, v in arrays.items()}

    def make(rng):
        if rng.random() < 0.5:
            return _mutate(rng, rng.choice(bases))
        name = rng.choice(list(members) + [META_KEY + ".npy"])
        mutated = dict(members)
        blob = _mutate(rng, meta) if name.startswith(META_KEY) else _mutate(rng, members[name], 128)
        mutated[name] = (_npy_bytes(np.frombuffer(blob, np.uint8)) if name.startswith(META_KEY) else blob)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", rng.choice([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])) as zf:
            for n, b in mutated.items():
                zf.writestr(n, b)
        return buf.getvalue()

    def read(path):
        arrays, meta = read_npz(path)
        if meta is not None:
            _check_metadata(meta, str(path))
    _fuzz(tmp_path, "f.npz", make, read)


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=False)
    return buf.getvalue()

