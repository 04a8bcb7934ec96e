"""Read PyTorch checkpoints (``.pth`` / ``.pt``) with NumPy alone, never running them.

A PyTorch checkpoint is a Python pickle.  Unpickling an arbitrary pickle can call any
importable function (``os.system``, ``builtins.eval``, ...), so :func:`read_pth` never
hands a file to :mod:`pickle`.  It runs it on :func:`~.safepickle.run_pickle`, a pickle
machine of its own that resolves only the handful of names a state dict needs
(:data:`ALLOWED_GLOBALS`) and answers everything else with a
:class:`~zfnet.errors.WeightsError` *before* anything is called.  Even the admitted
names do not reach torch: they resolve to small functions of this module that only
record what the file describes (:class:`_StorageRef`, :class:`_TensorRef`), or to
frozen dtype markers.  The arrays are then cut out of the raw storage bytes with
NumPy.

Two container formats exist.

**Zip format** (``torch.save`` since PyTorch 1.6)::

    <prefix>/data.pkl          the pickle; tensors point at storages by key
    <prefix>/data/<key>        raw little-endian bytes of one storage
    <prefix>/byteorder         "little" or "big" (absent in old files: little)
    <prefix>/version, ...      ignored

A storage is named in the pickle by a persistent id
``("storage", torch.FloatStorage, key, location, numel)``.

**Legacy format** (before 1.6, or ``_use_new_zipfile_serialization=False``): one
stream of five consecutive pickles and then raw storages::

    pickle(MAGIC = 0x1950a86a20f9469cfc6c)
    pickle(PROTOCOL = 1001)
    pickle(sys_info = {"little_endian": True, "protocol_version": 1001, ...})
    pickle(state dict)       persistent ids ("storage", type, key, location, numel, view)
    pickle(sorted storage keys)
    for each key: int64 element count, then count * itemsize raw bytes

In both formats a tensor is rebuilt by
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)``:
element ``t[i_0, ..., i_{d-1}]`` is ``storage[offset + sum_k i_k * stride[k]]``, which is
exactly :func:`numpy.lib.stride_tricks.as_strided` on the storage with strides in bytes.

Hostile and broken files.  Every length and offset is checked against the bytes that
really exist before anything is allocated: the pickle machine reads every
length-prefixed argument only if the data can back it; zip records must be stored
uncompressed (as torch writes them), so a record can never expand beyond the file;
tensor views must fall inside their storage; and the total size of the returned
arrays is capped at a small multiple of the file size.  The pickle machine meters its
work and heap per byte of pickle (8 units and 16 bytes per byte, plus constants; see
:mod:`.safepickle`), changes no object it did not create in this load, and walks every
dict key before hashing it, so reading takes time and memory linear in the file size.
Every failure ends in :class:`~zfnet.errors.WeightsError` naming the file.

References
----------
PyTorch ``torch/serialization.py`` (``_save``, ``_legacy_save``, ``_load``,
``_legacy_load``) and ``torch/_utils.py`` (``_rebuild_tensor_v2``) describe the
formats; this module re-implements the reading side from that description.
"""

from __future__ import annotations

import _compat_pickle
import math
import os
import reprlib
import zipfile
from collections import OrderedDict
from types import MappingProxyType
from typing import Any, Callable, Mapping

import numpy as np

from ..errors import WeightsError
from .safepickle import run_pickle

__all__ = ["read_pth", "ALLOWED_GLOBALS"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# torch storage class name -> little-endian NumPy dtype of one element.
# bfloat16 has no NumPy dtype: it is read as uint16 and widened (see _bf16_to_f32).
_STORAGE_DTYPES: dict[str, str] = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "BFloat16Storage": "<u2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}

# Keys under which training scripts commonly nest the state dict itself.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "params")

# The returned arrays may hold at most this many times the file's bytes (plus a
# constant): a few tensors sharing one storage are normal (tied weights), a small file
# whose tensors all view the same huge storage, or stride-0 views of it, is an attack.
_OUTPUT_FACTOR = 4
_OUTPUT_SLACK = 16 << 20


class _StorageType:
    """Stand-in for a ``torch.*Storage`` class: records only its element dtype.

    One instance per storage class is shared by every load, so it is frozen: no
    attribute can be set or deleted after construction (and the pickle machine has
    no way to try: it refuses BUILD on anything but an OrderedDict).
    """

    __slots__ = ("name", "dtype")

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "dtype", np.dtype(_STORAGE_DTYPES[name]))

    def __setattr__(self, attr: str, value: Any) -> None:
        raise AttributeError(f"torch.{self.name} stand-in is immutable")

    def __delattr__(self, attr: str) -> None:
        raise AttributeError(f"torch.{self.name} stand-in is immutable")

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _StorageRef:
    """A storage named by a persistent id: which bytes, as what dtype, which window."""

    __slots__ = ("key", "stype", "numel", "view")

    def __init__(self, key: str, stype: _StorageType, numel: int, view: tuple | None):
        self.key = key
        self.stype = stype
        self.numel = numel
        self.view = view  # legacy storage views: (view_key, offset, size) in elements


class _TensorRef:
    """What ``_rebuild_tensor_v2`` was asked to build; materialised after parsing."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage: Any, offset: Any, size: Any, stride: Any) -> None:
        self.storage = storage
        self.offset = offset
        self.size = size
        self.stride = stride


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    """Replacement for ``torch._utils._rebuild_tensor_v2``: records, builds nothing."""
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
    """Replacement for the older ``torch._utils._rebuild_tensor``."""
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    """Replacement for ``torch._utils._rebuild_parameter[_with_state]``: the tensor."""
    return data


def _ordered_dict(*args):
    """Replacement for ``collections.OrderedDict``: a fresh, empty one per call.

    ``torch.save`` pickles an OrderedDict as ``OrderedDict()`` followed by SETITEMS, so
    arguments (whose keys would be hashed unchecked) are refused.
    """
    if args:
        raise ValueError("OrderedDict(...) is rebuilt only empty (its items follow as SETITEMS)")
    return OrderedDict()


# (module, name) -> what the pickle machine gets for it.  This is the whole trust
# boundary; read-only, and every value is a function of this module or a frozen marker.
ALLOWED_GLOBALS: Mapping[tuple[str, str], Any] = MappingProxyType({
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
})
# The admitted names that REDUCE may call (the storage types are only markers).
_CALLABLES = (_ordered_dict, _rebuild_tensor_v2, _rebuild_tensor, _rebuild_parameter)


def _py3_name(module: str, name: str) -> str:
    """``'module.name'`` as Python 3 would resolve it, noting a protocol-2 spelling.

    Protocol 2 pickles spell some names the Python 2 way (``__builtin__.eval``,
    ``commands.call`` for ``subprocess.call``); the standard unpickler maps them
    (``fix_imports``).  We refuse both spellings and show what would have run.
    """
    real = _compat_pickle.NAME_MAPPING.get((module, name))
    if real is None and module in _compat_pickle.IMPORT_MAPPING:
        real = (_compat_pickle.IMPORT_MAPPING[module], name)
    if real is None or real == (module, name):
        return f"'{module}.{name}'"
    return f"'{real[0]}.{real[1]}' (spelled '{module}.{name}' in the pickle)"


def _refusal(path: str, what: str, module: str, name: str) -> WeightsError:
    """The error for a global outside :data:`ALLOWED_GLOBALS`, with advice for models."""
    msg = (f"{path}: refused to load global {_py3_name(module, name)} from the {what}; a "
           "weights file may only name tensors, storages and OrderedDict (nothing was executed)")
    if name[:1].isupper():  # a class (nn.Linear, a user's Net, argparse.Namespace, ...)
        msg += (f". '{name}' is a class: this looks like a whole pickled model "
                "(torch.save(model)) or other objects saved beside the weights; save only "
                "the weights with torch.save(model.state_dict(), path) and load that file")
    return WeightsError(msg)


def _run_pickle(data: bytes, start: int, path: str, what: str,
                on_storage: Callable[[Any], Any] | None = None,
                allow_globals: bool = True) -> tuple[Any, int]:
    """Unpickle ``data[start:]`` with :func:`~.safepickle.run_pickle`; ``(object, end)``.

    Only :data:`ALLOWED_GLOBALS` resolve (none when ``allow_globals`` is false), only
    the functions among them may be called, and storages arrive through
    ``on_storage``.
    """

    def find_class(module: str, name: str) -> Any:
        target = ALLOWED_GLOBALS.get((module, name)) if allow_globals else None
        if target is None:
            raise _refusal(path, what, module, name)
        return target

    def reduce(fn: Any, args: tuple) -> Any:
        if not any(fn is c for c in _CALLABLES):
            raise ValueError(f"the pickle calls {_short(fn)}, which is not a function here")
        return fn(*args)

    return run_pickle(data, start, source=path, what=what, find_class=find_class,
                      reduce=reduce, persistent_load=on_storage)


def _storage_ref_from_pid(pid: Any, path: str, legacy: bool) -> _StorageRef:
    """Validate a persistent id tuple and turn it into a :class:`_StorageRef`."""
    expected = 6 if legacy else 5
    if not (isinstance(pid, tuple) and len(pid) == expected and pid[0] == "storage"):
        raise WeightsError(
            f"{path}: persistent id {_short(pid)} is not a storage reference "
            f"('storage', type, key, location, numel{', view' if legacy else ''})"
        )
    stype, key, numel = pid[1], pid[2], pid[4]
    if not isinstance(stype, _StorageType):
        raise WeightsError(f"{path}: storage type {_short(stype)} is not a torch storage class")
    if not isinstance(key, str) or not _is_count(numel):
        raise WeightsError(f"{path}: malformed storage reference {_short(pid)}")
    view = pid[5] if legacy else None
    if view is not None:
        if not (isinstance(view, tuple) and len(view) == 3 and isinstance(view[0], str)
                and _is_count(view[1]) and _is_count(view[2])):
            raise WeightsError(f"{path}: malformed storage view {_short(view)}")
    return _StorageRef(key, stype, numel, view)


def _short(x: Any) -> str:
    """A bounded repr for error messages (the object came from an untrusted file)."""
    try:
        return reprlib.repr(x)
    except Exception:  # a hostile object may not even repr; never let that escape.
        return f"<{type(x).__name__}>"


def _is_count(x: Any) -> bool:
    """A non-negative Python int (bool excluded)."""
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _bf16_to_f32(u16: np.ndarray) -> np.ndarray:
    """bfloat16 is the top half of a float32: shift its bits up by 16."""
    return (u16.astype(np.uint32) << 16).view(np.float32)


def _find_tensor_dict(obj: Any, path: str) -> dict[str, _TensorRef]:
    """The dict of tensors: the top level, or inside a "state_dict"/"model" wrapper."""
    cur = obj
    for _ in range(4):
        if not isinstance(cur, dict):
            raise WeightsError(
                f"{path}: the checkpoint holds a {type(cur).__name__}, expected a dict "
                "of tensors (a state_dict)"
            )
        tensors = {k: v for k, v in cur.items() if isinstance(v, _TensorRef)}
        if tensors:
            bad = [k for k in tensors if not isinstance(k, str)]
            if bad:
                raise WeightsError(f"{path}: state dict key {_short(bad[0])} is not a string")
            return tensors
        inner = next((cur[k] for k in _WRAPPER_KEYS if isinstance(cur.get(k), dict)), None)
        if inner is None:
            keys = ", ".join(_short(k) for k in list(cur)[:8])
            raise WeightsError(
                f"{path}: no tensors found (top-level keys: {keys or 'none'}); expected a "
                f"state dict, possibly under one of {', '.join(_WRAPPER_KEYS)}"
            )
        cur = inner
    raise WeightsError(f"{path}: state dict nested too deeply inside wrapper dicts")


class _Budget:
    """Counts the bytes handed out so far against the cap derived from the file size."""

    def __init__(self, file_size: int, path: str) -> None:
        self.left = _OUTPUT_FACTOR * file_size + _OUTPUT_SLACK
        self.path = path

    def take(self, nbytes: int, name: str) -> None:
        if nbytes > self.left:
            raise WeightsError(
                f"{self.path}: tensor '{name}' would need {nbytes} bytes, more than the "
                "file can back (tensors overlapping one storage many times?)"
            )
        self.left -= nbytes


def _tensor_from_storage(store: np.ndarray, ref: _TensorRef, name: str, path: str,
                         budget: _Budget) -> np.ndarray:
    """Cut one tensor out of its storage array (dtype already right), as a copy.

    ``t[i_0, ..., i_{d-1}] = store[offset + sum_k i_k * stride_k]``.
    """
    size, stride, offset = ref.size, ref.stride, ref.offset
    if not (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)
            and len(size) <= 32 and all(_is_count(v) for v in size + stride)
            and _is_count(offset)):
        raise WeightsError(
            f"{path}: tensor '{name}' has malformed size {_short(size)} / stride "
            f"{_short(stride)} / offset {_short(offset)}"
        )
    # No real tensor has a dimension or stride near 2^48 elements; bounding them keeps
    # NumPy's size and stride arithmetic (np.zeros, as_strided) from overflowing on a
    # crafted file, and a 0 dimension from hiding absurd ones.
    if any(v >= 2**48 for v in size + stride) or math.prod(max(v, 1) for v in size) >= 2**48:
        raise WeightsError(
            f"{path}: tensor '{name}' has an impossible size {_short(size)} / stride {_short(stride)}"
        )
    numel = math.prod(size)
    budget.take(numel * store.itemsize, name)
    if numel == 0:
        return np.zeros(size, dtype=store.dtype.newbyteorder("="))
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= store.size:
        raise WeightsError(
            f"{path}: tensor '{name}' of size {size} reads storage element {last}, but its "
            f"storage has only {store.size} elements"
        )
    view = np.lib.stride_tricks.as_strided(
        store[offset:], shape=size, strides=tuple(s * store.itemsize for s in stride),
        writeable=False,
    )
    return np.array(view, dtype=store.dtype.newbyteorder("="), order="C")


def _materialise(tensors: dict[str, _TensorRef], load_storage: Callable[[_StorageRef], np.ndarray],
                 path: str, file_size: int) -> dict[str, np.ndarray]:
    """Turn every :class:`_TensorRef` into a NumPy array, storages loaded on demand."""
    budget = _Budget(file_size, path)
    out: dict[str, np.ndarray] = {}
    for name, ref in tensors.items():
        if not isinstance(ref.storage, _StorageRef):
            raise WeightsError(f"{path}: tensor '{name}' is not backed by a storage")
        store = load_storage(ref.storage)
        arr = _tensor_from_storage(store, ref, name, path, budget)
        if ref.storage.stype.name == "BFloat16Storage":
            arr = _bf16_to_f32(arr)
        out[name] = arr
    return out


def _storage_dtype(ref: _StorageRef, little: bool) -> np.dtype:
    dt = ref.stype.dtype
    return dt if little else dt.newbyteorder(">")


# ----------------------------------------------------------------------------- zip


def _read_zip(path: str, file_size: int) -> dict[str, np.ndarray]:
    try:
        zf = zipfile.ZipFile(path)
    except Exception as exc:
        raise WeightsError(f"{path}: not a readable zip archive ({exc})") from exc
    with zf:
        try:
            infos = {info.filename: info for info in zf.infolist()}
        except Exception as exc:
            raise WeightsError(f"{path}: corrupt zip directory ({exc})") from exc
        pkl = [n for n in infos if n == "data.pkl" or n.endswith("/data.pkl")]
        if any(n.endswith("constants.pkl") for n in infos) and any("/code/" in n for n in infos):
            raise WeightsError(
                f"{path}: this is a TorchScript archive, not a checkpoint; save the model's "
                "state_dict() with torch.save and convert that"
            )
        if len(pkl) != 1:
            raise WeightsError(
                f"{path}: zip archive is not a PyTorch checkpoint (expected one data.pkl, "
                f"found {len(pkl)})"
            )
        prefix = pkl[0][: -len("data.pkl")]
        raw_cache: dict[str, bytes] = {}
        read_total = [0]

        def record(name: str) -> bytes:
            if name in raw_cache:
                return raw_cache[name]
            info = infos.get(prefix + name)
            if info is None:
                raise WeightsError(f"{path}: archive has no record '{prefix + name}'")
            if info.compress_type != zipfile.ZIP_STORED:
                # torch never compresses; a compressed record could expand without bound.
                raise WeightsError(f"{path}: record '{info.filename}' is compressed; "
                                   "PyTorch writes records stored (uncompressed)")
            # Records of a real archive do not overlap, so together they fit in the file;
            # directory entries that all point at the same bytes would not.
            read_total[0] += info.file_size
            if read_total[0] > file_size:
                raise WeightsError(f"{path}: records claim more bytes than the file holds "
                                   f"(at '{info.filename}', {info.file_size} bytes)")
            try:
                raw_cache[name] = zf.read(info)
            except Exception as exc:
                raise WeightsError(f"{path}: cannot read record '{info.filename}' ({exc})") from exc
            return raw_cache[name]

        little = True
        if prefix + "byteorder" in infos:
            order = record("byteorder")
            if order not in (b"little", b"big"):
                raise WeightsError(f"{path}: byteorder record is {order[:20]!r}, expected little or big")
            little = order == b"little"

        data = record("data.pkl")
        obj, _ = _run_pickle(data, 0, path, "data.pkl pickle",
                             on_storage=lambda pid: _storage_ref_from_pid(pid, path, legacy=False))
        tensors = _find_tensor_dict(obj, path)

        def load_storage(ref: _StorageRef) -> np.ndarray:
            dtype = _storage_dtype(ref, little)
            raw = record("data/" + ref.key)  # cached: views below share its bytes
            if ref.numel * dtype.itemsize > len(raw):
                raise WeightsError(
                    f"{path}: storage '{ref.key}' should hold {ref.numel} x {dtype.itemsize} "
                    f"bytes but its record has {len(raw)}"
                )
            return np.frombuffer(raw, dtype=dtype, count=ref.numel)

        return _materialise(tensors, load_storage, path, file_size)


# -------------------------------------------------------------------------- legacy


def _read_legacy(path: str, data: bytes) -> dict[str, np.ndarray]:
    pos = 0
    header = []
    for what in ("magic number", "protocol version", "sys_info"):
        obj, pos = _run_pickle(data, pos, path, f"legacy {what} pickle", allow_globals=False)
        header.append(obj)
    magic, protocol, sys_info = header
    if magic != _LEGACY_MAGIC:
        raise WeightsError(f"{path}: not a PyTorch checkpoint (legacy magic number missing)")
    if protocol != _LEGACY_PROTOCOL:
        raise WeightsError(f"{path}: legacy protocol version {_short(protocol)}, expected 1001")
    if not isinstance(sys_info, dict):
        raise WeightsError(f"{path}: legacy sys_info is not a dict")
    little = sys_info.get("little_endian", True)
    if not isinstance(little, bool):
        raise WeightsError(f"{path}: legacy sys_info['little_endian'] is not a bool")

    refs: list[_StorageRef] = []

    def on_storage(pid: Any) -> _StorageRef:
        ref = _storage_ref_from_pid(pid, path, legacy=True)
        refs.append(ref)
        return ref

    obj, pos = _run_pickle(data, pos, path, "main pickle", on_storage=on_storage)
    keys, pos = _run_pickle(data, pos, path, "storage key list", allow_globals=False)
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        raise WeightsError(f"{path}: the legacy storage key list is not a list of strings")
    tensors = _find_tensor_dict(obj, path)

    # The element size of each root storage comes from the references to it.
    dtypes: dict[str, np.dtype] = {}
    for ref in refs:
        dtypes.setdefault(ref.key, _storage_dtype(ref, little))
    roots: dict[str, np.ndarray] = {}
    for key in keys:
        if key not in dtypes:
            raise WeightsError(f"{path}: storage '{key}' is listed but never referenced")
        dtype = dtypes[key]
        if pos + 8 > len(data):
            raise WeightsError(f"{path}: truncated before the size of storage '{key}'")
        count = int(np.frombuffer(data, dtype="<i8" if little else ">i8", count=1, offset=pos)[0])
        pos += 8
        if count < 0 or count * dtype.itemsize > len(data) - pos:
            raise WeightsError(
                f"{path}: storage '{key}' claims {count} elements of {dtype.itemsize} bytes, "
                f"but only {len(data) - pos} bytes remain"
            )
        roots[key] = np.frombuffer(data, dtype=dtype, count=count, offset=pos)
        pos += count * dtype.itemsize

    def load_storage(ref: _StorageRef) -> np.ndarray:
        root = roots.get(ref.key)
        if root is None:
            raise WeightsError(f"{path}: storage '{ref.key}' has no data in the file")
        if root.dtype != _storage_dtype(ref, little):
            raise WeightsError(f"{path}: storage '{ref.key}' is used with two dtypes")
        if ref.view is not None:
            _, offset, size = ref.view
            if offset + size > root.size:
                raise WeightsError(f"{path}: storage view {_short(ref.view)} outside its storage")
            return root[offset:offset + size]
        return root

    return _materialise(tensors, load_storage, path, len(data))


# --------------------------------------------------------------------------- entry


def read_pth(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read the tensors of a PyTorch checkpoint into NumPy arrays, without torch.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by ``torch.save(state_dict, path)`` in the zip format
        (PyTorch >= 1.6) or the legacy format. The state dict may be the top-level
        object or nested under a wrapper key (``"state_dict"``, ``"model"``, ...).

    Returns
    -------
    dict of str to numpy.ndarray
        Each tensor by its state-dict key, in file order, as a C-contiguous array of
        its stored dtype (float32, float16, float64, int64, ... ; bfloat16 is widened
        to float32) with the tensor's shape.

    Raises
    ------
    WeightsError
        The file is missing, truncated, corrupt, not a checkpoint, or its pickle names
        any global outside :data:`ALLOWED_GLOBALS` (``os.system``, ``builtins.eval``,
        a full pickled ``nn.Module``, ...). Nothing in the file is ever executed.

    Examples
    --------
    >>> sd = read_pth("alexnet-owt-7be5be79.pth")            # doctest: +SKIP
    >>> sd["features.0.weight"].shape                         # doctest: +SKIP
    (64, 3, 11, 11)
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            file_size = os.fstat(f.fileno()).st_size
    except OSError as exc:
        raise WeightsError(f"{path}: cannot open ({exc.strerror or exc})") from exc
    if head == b"PK\x03\x04" or (head[:2] == b"PK" and zipfile.is_zipfile(path)):
        return _read_zip(path, file_size)
    if head[:1] == b"\x80":
        with open(path, "rb") as f:
            data = f.read()
        return _read_legacy(path, data)
    raise WeightsError(
        f"{path}: not a PyTorch checkpoint (neither a zip archive nor a legacy pickle; "
        "tar checkpoints from PyTorch < 0.4 are not supported)"
    )
