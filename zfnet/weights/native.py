"""Our weight format, and loading foreign checkpoints onto our models.

Native format
-------------
A ``.npz`` archive (a zip of ``.npy`` files) that ``numpy.load(path,
allow_pickle=False)`` opens as it is:

* one float array per parameter, named exactly like ``model.state_dict()``
  (``conv1.weight``, ``conv1.bias``, ..., ``fc8.bias``), stored as float32 or, with
  ``save(..., dtype="float16")``, float16 (half the size; always loaded back as
  float32);
* ``__meta__.json``: a uint8 array holding UTF-8 JSON, the model's config: ``arch``,
  ``variant``, ``num_classes``, ``fc_width``, ``input_size`` (= ``crop``), ``resize``,
  ``channel_order`` (``"RGB"``/``"BGR"``), ``mean``, ``std``, ``scale`` (pixel scale),
  ``class_names`` when known, plus ``format``/``format_version``/``dtype``.  A uint8
  array rather than a pickled string keeps the file free of pickles.

The preprocessing keys are the ones :class:`zfnet.data.TransformConfig` reads, so
``model.preprocess(image)`` does what the weights expect.

Foreign layouts (:func:`load` with ``arch=None`` picks by keys and shapes)
-------------------------------------------------------------------------
=========================  =====================================  ====================
source                     keys                                   model
=========================  =====================================  ====================
torchvision AlexNet .pth   ``features.{0,3,6,8,10}``,             ``alexnet-torchvision``
                           ``classifier.{1,4,6}``                 RGB, ImageNet mean/std
a .caffemodel with its     the layer list (bottom/top,            built from it
definition, or Caffe       ``*_param``):                          (:mod:`.caffe_net`):
weights + ``prototxt=``    :mod:`zfnet.weights.caffe_net`         a known model when the
                                                                  graph is exactly one,
                                                                  else ``caffe-graph``
blobs-only .caffemodel:    Caffe layers ``conv1``..``conv5``      ``alexnet`` (Caffe
AlexNet names              (11x11 conv1, grouped conv2/4/5),      layout), BGR, mean
                           ``fc6``..``fc8``                       104/117/123 (a note says
                                                                  it was chosen by shape)
blobs-only, ZF names       ``conv1`` 7x7, ungrouped conv2..5,     ``zfnet``, BGR, mean
                           ``fc6``..``fc8``                       104/117/123 (same note)
SqueezeNet v1.0            ``fireN/conv1x1_1``, ``conv1x1_2``,    ``squeezenet1_0``,
(.caffemodel or .npz of    ``conv3x3_2``, ``conv1``,              BGR, mean 104/117/123
``<layer>/W``, ``/b``)     ``conv_final``
our own keys (.pth/.npz)   ``conv1.weight`` ...                   by conv1's shape
=========================  =====================================  ====================

Every map is an explicit dictionary and every array's shape is checked against the
freshly built model before anything is copied; a mismatch names the source key, our
key, the expected and the found shape (the nanoGPT ``from_pretrained`` pattern).

Caffe's fully connected blobs may be legacy 4-D ``(1, 1, out, in)``; they are
squeezed to ``(out, in)``.  Caffe convolution weights are OIHW like ours, and Caffe
flattens ``pool5`` in C order like our :class:`~zfnet.nn.Flatten`, so no weight is
permuted.  BGR input is recorded in the metadata, not baked into conv1.

CaffeNet differs from AlexNet only in pooling before normalisation, and
py-faster-rcnn's ZF from the paper's ZFNet in paddings and a within-channel LRN:
the weight shapes agree, so only a file's definition can tell them apart, and a
file that carries one is always built from it.  A ``caffe-graph`` network is saved
with its layer list (``config["graph"]``) and reloaded from it
(:func:`zfnet.models.graph_network`).
"""

from __future__ import annotations

import io
import json
import math
import os
import reprlib
import zipfile
from typing import Any, Mapping, Sequence

import numpy as np

from .._files import atomic_write
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..errors import ConfigError, WeightsError
from ..models import ARCHITECTURES
from ..models.caffe_graph import CAFFE_GRAPH, graph_network
from .caffe import read_caffe_net
from .caffe_net import caffe_blobs, caffe_network, has_definition, prototxt_layers
from .pth import read_pth

__all__ = [
    "save", "load", "convert", "read_npz", "detect_format",
    "TORCHVISION_ALEXNET_KEYS", "CAFFE_LAYERS", "TORCHVISION_PREPROCESS", "CAFFE_PREPROCESS",
]

META_KEY = "__meta__.json"
FORMAT = "zfnet-weights"
FORMAT_VERSION = 1

# torchvision AlexNet module -> our layer (weights and biases both follow).
TORCHVISION_ALEXNET_KEYS = {
    "features.0": "conv1", "features.3": "conv2", "features.6": "conv3",
    "features.8": "conv4", "features.10": "conv5",
    "classifier.1": "fc6", "classifier.4": "fc7", "classifier.6": "fc8",
}
# Caffe AlexNet/CaffeNet/ZF layer names are ours already.
CAFFE_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")

TORCHVISION_PREPROCESS = {
    "input_size": [224, 224], "crop": [224, 224], "resize": 256, "channel_order": "RGB",
    "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "scale": 1.0 / 255.0,
}
# BVLC's ilsvrc_2012_mean averaged per channel, rounded as everyone uses it.
CAFFE_PREPROCESS = {
    "resize": 256, "channel_order": "BGR", "mean": [104.0, 117.0, 123.0],
    "std": [1.0, 1.0, 1.0], "scale": 1.0,
}

_ARCH_ALIASES = {"alexnet-caffe": "alexnet", "caffenet": "alexnet", "zf": "zfnet",
                 "squeezenet": "squeezenet1_0"}
_ARCHS = ARCHITECTURES
# Max expansion of a deflate stream (RFC 1951): an archive member cannot honestly
# decompress to more than this many times its compressed size.
_DEFLATE_RATIO = 1032
# All members of a .npz together may inflate to at most this many bytes per byte of
# file, plus a constant.  Float weights deflate to 90%; pruned ones (the Deep
# Compression SqueezeNet) to 1/5.4; a few MiB of zeros fit in the constant.
INFLATE_PER_BYTE = 16
INFLATE_SLACK = 64 << 20
META_MAX_BYTES = 4 << 20   # __meta__.json: class names and a training record, not more
_NPY_HEADER_MAX = 10000    # numpy.load's own limit on a .npy header
_READ_CHUNK = 1 << 20


# ------------------------------------------------------------------------------ npz


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (tuple, set, np.ndarray)):
        return list(obj.tolist() if isinstance(obj, np.ndarray) else obj)
    raise TypeError(f"metadata value {obj!r} is not JSON-serialisable")


def save(model, path: str | os.PathLike, dtype: str = "float32", compress: bool = False,
         class_names: Sequence[str] | None = None) -> None:
    """Write ``model``'s parameters and metadata as a native ``.npz``.

    Parameters
    ----------
    model : Network
    path : str or os.PathLike
        Written exactly there (no ``.npz`` is appended), atomically: a partial file
        never replaces an existing one.
    dtype : {"float32", "float16"}
        Storage precision.  float16 halves the file; values round to 11 significant
        bits (relative error <= 2**-11) and load back as float32.
    compress : bool
        Deflate the members (smaller, slower to load).
    class_names : sequence of str, optional
        Stored as ``class_names`` in the metadata (else the config's, if any).
    """
    if dtype not in ("float32", "float16"):
        raise ConfigError(f"dtype={dtype!r}: expected 'float32' or 'float16'")
    path = os.fspath(path)
    meta = dict(model.config)
    if class_names is not None:
        if len(class_names) != model.num_classes:
            raise ConfigError(f"{len(class_names)} class names for {model.num_classes} classes")
        meta["class_names"] = [str(c) for c in class_names]
    meta.update(format=FORMAT, format_version=FORMAT_VERSION, dtype=dtype)
    arrays = {k: np.asarray(v).astype(dtype) for k, v in model.state_dict().items()}
    if META_KEY in arrays:
        raise ConfigError(f"a parameter is named {META_KEY!r}, which the format reserves")
    blob = json.dumps(meta, default=_json_default, sort_keys=True).encode("utf-8")
    arrays[META_KEY] = np.frombuffer(blob, dtype=np.uint8)
    writer = np.savez_compressed if compress else np.savez
    atomic_write(os.path.abspath(path), lambda fh: writer(fh, **arrays))


def read_npz(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict | None]:
    """Read a ``.npz`` safely: ``(arrays, metadata or None)``.

    Stricter than :func:`numpy.load`: members must be plain numeric ``.npy`` arrays
    (no pickles, no object or structured dtypes), and nothing is inflated or
    allocated before the sizes agree:

    * a member's ``.npy`` header (dtype, shape) must account for exactly the
      uncompressed size its zip entry declares (``file_size``), computed with Python
      ints, a zero dimension not hiding the others;
    * the declared sizes of all members together may not pass
      ``16 * file size + 64 MiB`` (:data:`INFLATE_PER_BYTE`, :data:`INFLATE_SLACK`),
      and a deflated member may not claim more than deflate can produce from its
      compressed size (1032:1);
    * each array is then inflated straight into its preallocated buffer, reading at
      most the declared bytes plus one (which must not exist), so a zip entry that
      lies about its size is caught without reading on;
    * ``__meta__.json`` may hold at most :data:`META_MAX_BYTES` of UTF-8 JSON.

    Memory: the returned arrays (at most ``16 * file size + 64 MiB``) plus a 1 MiB
    read buffer (and one transient copy of a Fortran-ordered array).

    Raises
    ------
    WeightsError
        Anything malformed, naming the file and member.
    """
    path = os.fspath(path)
    try:
        file_size = os.path.getsize(path)
        zf = zipfile.ZipFile(path)
    except OSError as exc:
        raise WeightsError(f"{path}: cannot open ({exc.strerror or exc})") from exc
    except Exception as exc:
        raise WeightsError(f"{path}: not a readable .npz (zip) archive ({exc})") from exc
    arrays: dict[str, np.ndarray] = {}
    compressed_total = 0
    inflate_left = INFLATE_PER_BYTE * file_size + INFLATE_SLACK
    with zf:
        try:
            infos = zf.infolist()
        except Exception as exc:
            raise WeightsError(f"{path}: corrupt zip directory ({exc})") from exc
        for info in infos:
            name = info.filename
            if not name.endswith(".npy"):
                raise WeightsError(f"{path}: member '{name}' is not a .npy array")
            if info.compress_type == zipfile.ZIP_STORED:
                limit = info.compress_size
            elif info.compress_type == zipfile.ZIP_DEFLATED:
                limit = info.compress_size * _DEFLATE_RATIO + 1024
            else:
                raise WeightsError(f"{path}: member '{name}' uses an unsupported compression")
            compressed_total += info.compress_size
            if info.file_size > limit or compressed_total > file_size:
                raise WeightsError(f"{path}: member '{name}' claims {info.file_size} bytes, "
                                   "more than the file can hold")
            inflate_left -= info.file_size
            if inflate_left < 0:
                raise WeightsError(
                    f"{path}: member '{name}' would inflate the members to more than "
                    f"{INFLATE_PER_BYTE} x the file's {file_size} bytes + {INFLATE_SLACK >> 20} MiB "
                    "(a decompression bomb?)"
                )
            try:
                with zf.open(info) as fh:
                    arrays[name[:-4]] = _read_npy(fh, info.file_size, path, name)
            except WeightsError:
                raise
            except Exception as exc:  # zlib, CRC, EOF: the member is corrupt
                raise WeightsError(f"{path}: cannot read member '{name}' "
                                   f"({type(exc).__name__}: {exc})") from exc
    meta = None
    if META_KEY in arrays:
        blob = arrays.pop(META_KEY)
        if blob.dtype != np.uint8 or blob.ndim != 1:
            raise WeightsError(f"{path}: {META_KEY} must be a 1-D uint8 array of UTF-8 JSON")
        try:
            meta = json.loads(blob.tobytes().decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            raise WeightsError(f"{path}: {META_KEY} is not valid UTF-8 JSON ({exc})") from exc
        if not isinstance(meta, dict):
            raise WeightsError(f"{path}: {META_KEY} must hold a JSON object")
    return arrays, meta


def _read_npy(fh, file_size: int, path: str, name: str) -> np.ndarray:
    """Read one ``.npy`` member from its (inflating) stream, sizes checked first.

    The header says ``shape`` and ``dtype``; ``header + prod(shape) * itemsize`` must
    equal the zip entry's ``file_size`` before the array is allocated, and the body
    is read into the array in 1 MiB steps, never past ``file_size + 1`` bytes.
    """
    prefix = fh.read(10)  # magic (6), version (2), header length (2 bytes in v1)
    if len(prefix) < 10 or prefix[:6] != b"\x93NUMPY":
        raise WeightsError(f"{path}: member '{name}' has a bad .npy header (no NUMPY magic)")
    if prefix[6] == 1:
        head_len = int.from_bytes(prefix[8:10], "little")
    elif prefix[6] in (2, 3):
        prefix += fh.read(2)  # v2/v3: a 4-byte header length
        head_len = int.from_bytes(prefix[8:12], "little")
    else:
        raise WeightsError(f"{path}: member '{name}' has a bad .npy header (version {prefix[6]})")
    if head_len > _NPY_HEADER_MAX:
        raise WeightsError(f"{path}: member '{name}' has a .npy header of {head_len} bytes "
                           f"(at most {_NPY_HEADER_MAX})")
    head = prefix + fh.read(head_len)
    f = io.BytesIO(head)
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except Exception as exc:
        raise WeightsError(f"{path}: member '{name}' has a bad .npy header ({exc})") from exc
    if dtype.hasobject or dtype.fields is not None or dtype.kind not in "fiub":
        raise WeightsError(f"{path}: member '{name}' has dtype {dtype}; only plain numeric arrays are allowed")
    if not all(isinstance(d, int) and 0 <= d < 2**48 for d in shape):
        raise WeightsError(f"{path}: member '{name}' declares an impossible shape {shape}")
    count = math.prod(shape)
    if math.prod(max(d, 1) for d in shape) >= 2**48:  # a 0 dimension cannot hide the rest
        raise WeightsError(f"{path}: member '{name}' declares an impossible shape {shape}")
    nbytes = count * dtype.itemsize
    body = file_size - len(head)
    if nbytes != body:
        raise WeightsError(f"{path}: member '{name}' declares shape {shape} ({nbytes} bytes "
                           f"of {dtype}) but holds {body} bytes")
    if name == META_KEY + ".npy" and nbytes > META_MAX_BYTES:
        raise WeightsError(f"{path}: {META_KEY} holds {nbytes} bytes of metadata (at most {META_MAX_BYTES})")
    arr = np.empty(count, dtype=dtype)  # (count,): filled from the stream below
    raw = arr.view(np.uint8)            # (nbytes,): the same memory, any dtype or byte order
    got = 0
    while got < nbytes:
        chunk = fh.read(min(_READ_CHUNK, nbytes - got))
        if not chunk:
            break
        raw[got:got + len(chunk)] = np.frombuffer(chunk, np.uint8)
        got += len(chunk)
    if got != nbytes or fh.read(1):
        raise WeightsError(f"{path}: member '{name}' declares shape {shape} ({nbytes} bytes of "
                           f"{dtype}) but holds {'fewer' if got != nbytes else 'more'} bytes")
    if not dtype.isnative:
        arr = arr.byteswap(inplace=True).view(dtype.newbyteorder("="))
    if fortran:  # the file holds the transpose's memory order: one copy into C order
        return arr.reshape(shape, order="F").copy(order="C")
    return arr.reshape(shape)


# -------------------------------------------------------------------------- formats


def detect_format(path: str | os.PathLike) -> str:
    """``"npz"``, ``"pth"`` or ``"caffemodel"``, from the contents (the name only breaks ties)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise WeightsError(f"{path}: cannot open ({exc.strerror or exc})") from exc
    ext = os.path.splitext(path)[1].lower()
    if head[:2] == b"PK":
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except Exception as exc:
            raise WeightsError(f"{path}: looks like a zip archive but cannot be read ({exc})") from exc
        if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return "pth"
        if names and all(n.endswith(".npy") for n in names):
            return "npz"
        raise WeightsError(f"{path}: a zip archive that is neither a .npz nor a PyTorch checkpoint")
    if head[:1] == b"\x80" or ext in (".pth", ".pt", ".ckpt"):
        return "pth"
    if head[:6] == b"\x93NUMPY":
        raise WeightsError(f"{path}: a single .npy array; weights are a .npz of named arrays")
    if ext in (".caffemodel", ".binaryproto", "") or head[:1] in (b"\x0a", b"\x12", b"\xa2"):
        return "caffemodel"  # NetParameter: name (field 1), layers (2) or layer (100)
    raise WeightsError(f"{path}: unknown weights format (expected .npz, .pth or .caffemodel)")


# ------------------------------------------------------------------------ metadata

# Bounds on the numbers a native file's metadata may hold, checked when it is loaded
# (before any of them sizes an image buffer).  Generous for any real network; an
# input_size of 60000 would cost 43 GB per preprocessed image.
META_SIZE_RANGE = (16, 4096)        # input_size / crop / resize, pixels
META_VALUE_MAX = 1e6                # |mean|; std and scale lie in [1 / this, this]
META_COUNT_MAX = 1 << 20            # num_classes, fc_width, len(class_names)
META_NAME_MAX = 1000                # characters of one class name


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_metadata(meta: Mapping[str, Any], source: str, where: str = "metadata") -> None:
    """Check every metadata value that is used, before any of it is.

    ``input_size``/``crop``: an int or ``[H, W]`` within :data:`META_SIZE_RANGE`;
    ``resize``: null or an int in that range; ``channel_order``: RGB or BGR;
    ``mean``: a number or three, finite, ``|x| <= 1e6``; ``std``, ``scale``: finite,
    within ``[1e-6, 1e6]``; ``num_classes``, ``fc_width``: ints in
    ``1 .. 2**20``; ``class_names``: at most 2**20 strings of at most 1000
    characters; ``arch``, ``variant``, ``interpolation``: strings; ``training``,
    ``source``: objects; ``preprocess``: an object checked by the same rules.
    (:func:`load` then has :class:`zfnet.data.TransformConfig` check how the values
    fit together on the built model's config: resize at least the crop, a known
    interpolation.)

    Raises
    ------
    WeightsError
        Naming the file and the key, with the value found and what was expected.
    """
    lo, hi = META_SIZE_RANGE

    def bad(key: str, expected: str) -> WeightsError:
        return WeightsError(f"{source}: {where} '{key}' is {reprlib.repr(meta[key])}; expected {expected}")

    def size(v: Any) -> bool:
        return _is_int(v) and lo <= v <= hi

    def per_channel(v: Any, ok) -> bool:  # one number, or a list of three
        vals = v if isinstance(v, list) else [v]
        return len(vals) == (3 if isinstance(v, list) else 1) and all(_is_real(x) and ok(x) for x in vals)

    for key in ("input_size", "crop"):
        if key in meta:
            v = meta[key]
            if not (size(v) or (isinstance(v, list) and len(v) == 2 and all(size(x) for x in v))):
                raise bad(key, f"an int or [H, W] of ints in {lo}..{hi}")
    if "resize" in meta and not (meta["resize"] is None or size(meta["resize"])):
        raise bad("resize", f"null or an int in {lo}..{hi}")
    order = meta.get("channel_order", "RGB")
    if not (isinstance(order, str) and order.upper() in ("RGB", "BGR")):
        raise bad("channel_order", "'RGB' or 'BGR'")
    if "mean" in meta and not per_channel(meta["mean"], lambda x: abs(x) <= META_VALUE_MAX):
        raise bad("mean", f"a number or three, finite, within +-{META_VALUE_MAX:g}")
    positive = lambda x: 1 / META_VALUE_MAX <= x <= META_VALUE_MAX  # noqa: E731
    if "std" in meta and not per_channel(meta["std"], positive):
        raise bad("std", f"a number or three, within {1 / META_VALUE_MAX:g}..{META_VALUE_MAX:g}")
    if "scale" in meta and not (_is_real(meta["scale"]) and positive(meta["scale"])):
        raise bad("scale", f"a number within {1 / META_VALUE_MAX:g}..{META_VALUE_MAX:g}")
    for key in ("num_classes", "fc_width"):
        if key in meta and not (_is_int(meta[key]) and 1 <= meta[key] <= META_COUNT_MAX):
            raise bad(key, f"an int in 1..{META_COUNT_MAX}")
    if "class_names" in meta:
        names = meta["class_names"]
        if not (isinstance(names, list) and len(names) <= META_COUNT_MAX
                and all(isinstance(n, str) and len(n) <= META_NAME_MAX for n in names)):
            raise bad("class_names", f"a list of strings of at most {META_NAME_MAX} characters")
    for key in ("arch", "variant", "interpolation"):
        if key in meta and not isinstance(meta[key], str):
            raise bad(key, "a string")
    for key in ("training", "source", "preprocess", "caffe"):
        if key in meta and not isinstance(meta[key], dict):
            raise bad(key, "a JSON object")
    if "graph" in meta and not isinstance(meta["graph"], list):
        raise bad("graph", "a list of layer specs (checked in full by zfnet.nn.check_spec)")
    if meta.get("arch") == CAFFE_GRAPH and "graph" not in meta:
        raise WeightsError(f"{source}: {where} names architecture {CAFFE_GRAPH!r} but holds no 'graph'")
    if "preprocess" in meta:
        _check_metadata(meta["preprocess"], source, where="metadata preprocess")


# ------------------------------------------------------------------------ key maps


def _canonical_arch(arch: str | None) -> str | None:
    if arch is None:
        return None
    arch = _ARCH_ALIASES.get(arch, arch)
    if arch not in _ARCHS:
        raise ConfigError(f"unknown architecture {arch!r}: expected one of {', '.join(_ARCHS)}")
    return arch


def _squeeze_legacy(arr: np.ndarray, ndim: int) -> np.ndarray:
    """Drop Caffe's legacy leading ones: (1, 1, out, in) -> (out, in), (1, 1, 1, n) -> (n,)."""
    if arr.ndim > ndim and all(d == 1 for d in arr.shape[: arr.ndim - ndim]):
        return arr.reshape(arr.shape[arr.ndim - ndim:])
    return arr


def _caffe_to_state(blobs: Mapping[str, list], arch: str | None, source: str
                    ) -> tuple[str, dict, dict, dict]:
    """Caffe blobs (layer -> [W, b]) -> (arch, state dict, origin of each key, metadata)."""
    from ..models.squeezenet import caffe_key_map

    names = list(blobs)
    if arch is None:
        if any(n.startswith("fire") and "/" in n for n in names):
            arch = "squeezenet1_0"
        elif all(n in blobs for n in CAFFE_LAYERS):
            k = blobs["conv1"][0].shape[-1]
            arch = {11: "alexnet", 7: "zfnet"}.get(k)
            if arch is None:
                raise WeightsError(f"{source}: conv1 is {k}x{k}; known Caffe layouts have 11x11 "
                                   "(AlexNet/CaffeNet) or 7x7 (ZF). Pass arch= to choose")
        else:
            raise WeightsError(
                f"{source}: unknown Caffe layout (layers with weights: {', '.join(names[:12])}); "
                "expected conv1..conv5 + fc6..fc8 (AlexNet, CaffeNet, ZF) or SqueezeNet fire modules"
            )
    if arch == "squeezenet1_0":
        mapping = caffe_key_map(names)
    elif arch in ("alexnet", "zfnet"):
        mapping = {n: n for n in CAFFE_LAYERS if n in blobs}
    else:
        raise WeightsError(f"{source}: a Caffe model cannot be loaded as {arch!r}")
    unused = [n for n in names if n not in mapping]
    if unused:
        raise WeightsError(f"{source}: layers {unused[:8]} have weights but no place in {arch}")
    state, origin = {}, {}
    for layer, prefix in mapping.items():
        blob_list = blobs[layer]
        if len(blob_list) not in (1, 2):
            raise WeightsError(f"{source}: layer '{layer}' has {len(blob_list)} blobs, expected weight and bias")
        w = blob_list[0]
        if prefix.startswith("fc"):
            w = _squeeze_legacy(w, 2)
        state[f"{prefix}.weight"], origin[f"{prefix}.weight"] = w, f"{layer} blob 0"
        if len(blob_list) == 2:
            state[f"{prefix}.bias"] = _squeeze_legacy(blob_list[1], 1)
            origin[f"{prefix}.bias"] = f"{layer} blob 1"
    return arch, state, origin, dict(CAFFE_PREPROCESS)


def _state_to_state(sd: Mapping[str, np.ndarray], arch: str | None, source: str
                    ) -> tuple[str, dict, dict, dict]:
    """A flat state dict (torchvision names or ours) -> (arch, state, origin, metadata)."""
    keys = list(sd)
    if keys and all(k.startswith("module.") for k in keys):  # saved from DataParallel
        sd = {k[len("module."):]: v for k, v in sd.items()}
        keys = list(sd)
    if keys and all(k.endswith(("/W", "/b")) for k in keys):  # <caffe layer>/W, /b
        blobs: dict[str, list] = {}
        for k in keys:
            layer, kind = k.rsplit("/", 1)
            blobs.setdefault(layer, [None, None])[0 if kind == "W" else 1] = sd[k]
        for layer, pair in blobs.items():
            if pair[0] is None:
                raise WeightsError(f"{source}: '{layer}/b' has no '{layer}/W'")
            blobs[layer] = [a for a in pair if a is not None]
        return _caffe_to_state(blobs, arch, source)
    if any(k.startswith(("features.", "classifier.")) for k in keys):
        if arch not in (None, "alexnet-torchvision"):
            raise WeightsError(f"{source}: torchvision AlexNet keys cannot be loaded as {arch!r}")
        state, origin = {}, {}
        for k, v in sd.items():
            module, _, param = k.rpartition(".")
            if module not in TORCHVISION_ALEXNET_KEYS or param not in ("weight", "bias"):
                raise WeightsError(f"{source}: key '{k}' is not part of torchvision's AlexNet")
            ours = f"{TORCHVISION_ALEXNET_KEYS[module]}.{param}"
            state[ours], origin[ours] = v, k
        return "alexnet-torchvision", state, origin, dict(TORCHVISION_PREPROCESS)
    # Our own key names (a state dict saved by torch from a zfnet model, say).
    if arch is None:
        if any(k.startswith("fire") for k in keys):
            arch = "squeezenet1_0"
        elif "conv1.weight" in sd:
            shape = tuple(np.shape(sd["conv1.weight"]))
            arch = {(96, 3, 7, 7): "zfnet", (96, 3, 11, 11): "alexnet",
                    (64, 3, 11, 11): "alexnet-torchvision"}.get(shape)
            if arch is None:
                raise WeightsError(f"{source}: conv1.weight has shape {shape}; no known architecture "
                                   "has it. Pass arch= to choose")
        else:
            raise WeightsError(f"{source}: cannot tell the architecture from keys {keys[:6]}; pass arch=")
    return arch, dict(sd), {k: k for k in sd}, {}


def _caffe_named_blobs(arrays: Mapping[str, np.ndarray], source: str) -> dict[str, list]:
    """``<layer>/W`` and ``<layer>/b`` arrays -> ``{layer: [W, b]}``."""
    blobs: dict[str, list] = {}
    for key, value in arrays.items():
        layer, _, kind = key.rpartition("/")
        if not layer or kind not in ("W", "b"):
            raise WeightsError(f"{source}: key '{key}' is not '<caffe layer>/W' or '<caffe layer>/b'")
        blobs.setdefault(layer, [None, None])[0 if kind == "W" else 1] = value
    for layer, pair in blobs.items():
        if pair[0] is None:
            raise WeightsError(f"{source}: '{layer}/b' has no '{layer}/W'")
        blobs[layer] = [a for a in pair if a is not None]
    return blobs


def _caffe_graph_model(path: str, own, blobs, arch, prototxt, mean, truncate, input_size):
    """Build the network of a Caffe definition: ``prototxt`` if given, else the file's own ``(net, layers)``."""
    if prototxt is not None:
        net, layers = prototxt_layers(os.fspath(prototxt) if not isinstance(prototxt, os.PathLike) else prototxt)
        definition = f"--prototxt {os.path.basename(os.fspath(prototxt))}"
    else:
        (net, layers), definition = own, "the file's own definition"
    if arch == "alexnet-torchvision":
        raise WeightsError(f"{path}: a Caffe network cannot be loaded as {arch!r}")
    return caffe_network(net, layers, blobs, path, mean=mean, arch=arch, truncate=truncate,
                         input_size=input_size, definition=definition)


def _build(arch: str, state: Mapping[str, np.ndarray], source: str):
    """Build ``arch`` sized from the weights: classes from the last layer, fc width from fc6."""
    from ..models import alexnet, zfnet
    from ..models.squeezenet import squeezenet1_0

    def out_dim(key):
        if key not in state:
            raise WeightsError(f"{source}: no '{key}', which {arch} needs")
        return int(np.shape(state[key])[0])

    if arch == "squeezenet1_0":
        return squeezenet1_0(num_classes=out_dim("conv_final.weight"))
    kwargs = {"num_classes": out_dim("fc8.weight"), "fc_width": out_dim("fc6.weight")}
    if arch == "zfnet":
        return zfnet(**kwargs)
    return alexnet("torchvision" if arch == "alexnet-torchvision" else "caffe", **kwargs)


def _fit(model, state: Mapping[str, np.ndarray], origin: Mapping[str, str], source: str) -> None:
    """Check every key and shape (naming source key, our key, expected, found), then copy."""
    want = model.state_dict()
    missing = [k for k in want if k not in state]
    extra = [origin.get(k, k) for k in state if k not in want]
    if missing or extra:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unexpected {', '.join(extra)}"] if extra else [])
        raise WeightsError(f"{source} does not fit {model.arch}: " + "; ".join(parts))
    for key, expected in want.items():
        found = np.asarray(state[key])
        src = origin.get(key, key)
        label = f"'{src}'" if src == key else f"'{src}' (-> {key})"
        if tuple(found.shape) != tuple(expected.shape):
            raise WeightsError(f"{source}: {label} has shape {tuple(found.shape)}, "
                               f"{model.arch} expects {tuple(expected.shape)}")
        if not np.issubdtype(found.dtype, np.floating):
            raise WeightsError(f"{source}: {label} has dtype {found.dtype}, expected floating point")
        if not np.all(np.isfinite(found)):
            raise WeightsError(f"{source}: {label} contains NaN or infinity")
    model.load_state_dict({k: np.asarray(v, dtype=np.float32) for k, v in state.items()}, source=source)


# ---------------------------------------------------------------------------- load


def load(path: str | os.PathLike, arch: str | None = None,
         class_names: Sequence[str] | None = None, *, prototxt: str | os.PathLike | None = None,
         mean: str | os.PathLike | None = None, truncate: bool = True,
         input_size: tuple[int, int] | None = None):
    """Load weights of any supported format into a new model.

    Parameters
    ----------
    path : str or os.PathLike
        A native ``.npz``, a PyTorch checkpoint (``.pth``, zip or legacy), a Caffe
        ``.caffemodel``, or a ``.npz`` of Caffe-named arrays (``<layer>/W``,
        ``<layer>/b``).
    arch : str, optional
        ``"zfnet"``, ``"alexnet"`` (Caffe layout), ``"alexnet-torchvision"`` or
        ``"squeezenet1_0"``.  Default: read from the metadata, else chosen from the
        keys and shapes (see the table in the module docstring).
    class_names : sequence of str, optional
        Stored in ``model.config["class_names"]``.
    prototxt : path, optional
        The network's Caffe definition (``deploy.prototxt``), for a ``.caffemodel``
        or a ``.npz`` of Caffe-named arrays.  Without it a ``.caffemodel``'s own
        definition is used, if it carries one.
    mean : path, optional
        A Caffe mean file (``.binaryproto``); its per-channel average is subtracted.
    truncate : bool
        A Caffe graph with a layer zfnet cannot run ends before it, with a note in
        ``config["caffe"]["notes"]`` (default); False refuses it instead.
    input_size : (H, W), optional
        A Caffe graph's input size, where its definition gives none.

    Returns
    -------
    Network
        In eval mode, float32 parameters, ``config`` holding the architecture and
        the preprocessing the weights expect (``model.preprocess``).  A Caffe file
        with its definition is built from that definition
        (:mod:`zfnet.weights.caffe_net`): one of our architectures when the graph
        is exactly one (``config["caffe"]["recognised"]``), otherwise a
        ``caffe-graph`` network with the file's layer names.

    Raises
    ------
    WeightsError
        Unreadable, corrupt or hostile file; unknown layout; a key or shape that
        does not fit (the message names the key, expected and found shape); metadata
        outside its bounds (naming the key; see :func:`_check_metadata`).
    ConfigError
        Unknown ``arch``.
    """
    from ..data.transforms import TransformConfig

    path = os.fspath(path)
    arch = _canonical_arch(arch)
    kind = detect_format(path)
    meta: dict = {}
    foreign = True  # weights without our metadata: note where they came from
    if (prototxt is not None or mean is not None or input_size is not None) and kind == "pth":
        raise WeightsError(f"{path}: --prototxt, --mean and input_size apply to Caffe weights, not a PyTorch file")
    model = None
    if kind == "npz":
        arrays, file_meta = read_npz(path)
        if file_meta is not None:
            _check_metadata(file_meta, path)
            meta = {k: v for k, v in file_meta.items() if k not in ("format", "format_version", "dtype")}
            file_arch = meta.get("arch")
            if file_arch == "alexnet" and meta.get("variant") == "torchvision":
                file_arch = "alexnet-torchvision"
            if file_arch not in _ARCHS + (CAFFE_GRAPH,):
                raise WeightsError(f"{path}: metadata names architecture {file_arch!r}, "
                                   f"expected one of {', '.join(_ARCHS + (CAFFE_GRAPH,))}")
            if arch is not None and arch != file_arch:
                raise WeightsError(f"{path}: holds {file_arch} weights, not {arch}")
            if prototxt is not None or mean is not None or input_size is not None:
                raise WeightsError(f"{path}: a zfnet .npz already holds its network and preprocessing; "
                                   "--prototxt, --mean and input_size apply to Caffe weights")
            if file_arch == CAFFE_GRAPH:  # the network is the layer list in the metadata
                if len(meta.get("class_names", ())) not in (0, int(meta.get("num_classes", 0))):
                    raise WeightsError(f"{path}: metadata 'class_names' lists {len(meta['class_names'])} "
                                       f"names for {meta.get('num_classes')} classes")
                model = graph_network(meta.pop("graph", None), meta, arrays, source=path)
                meta = {}
            arch, state, origin = file_arch, arrays, {k: k for k in arrays}
            foreign = False
        elif prototxt is not None:  # Caffe-named arrays (<layer>/W, /b) and the network's .prototxt
            model = _caffe_graph_model(path, None, _caffe_named_blobs(arrays, path), arch, prototxt, mean,
                                       truncate, input_size)
            meta = {}
        else:
            if mean is not None or input_size is not None:
                raise WeightsError(f"{path}: --mean and input_size need the network's definition (--prototxt)")
            arch, state, origin, meta = _state_to_state(arrays, arch, path)
    elif kind == "pth":
        arch, state, origin, meta = _state_to_state(read_pth(path), arch, path)
    else:
        net, layers = read_caffe_net(path)
        if prototxt is not None or has_definition(layers):
            model = _caffe_graph_model(path, (net, layers), caffe_blobs(layers, path), arch, prototxt, mean,
                                       truncate, input_size)
            meta = {}
        else:
            if mean is not None or input_size is not None:
                raise WeightsError(f"{path}: holds no layer definitions; --mean and input_size need the "
                                   "network's .prototxt too (--prototxt)")
            arch, state, origin, meta = _caffe_to_state(caffe_blobs(layers, path), arch, path)
            meta["caffe"] = {"net": "", "definition": "none in the file (no bottom/top)",
                             "recognised": None,
                             "notes": [f"the file holds weights but no layer definitions: the architecture "
                                       f"({arch}) was chosen from the blob shapes, not read from the file; "
                                       "give the network's .prototxt (--prototxt) to build its own graph"]}
    if model is None:
        model = _build(arch, state, path)
        if len(meta.get("class_names", ())) not in (0, model.num_classes):
            raise WeightsError(f"{path}: metadata 'class_names' lists {len(meta['class_names'])} names "
                               f"for {model.num_classes} classes")
        _fit(model, state, origin, path)
    for key in ("arch", "variant", "num_classes", "fc_width"):
        meta.pop(key, None)  # the built model's own values are authoritative
    model.config.update(meta)
    if "crop" not in model.config and "input_size" in model.config:
        model.config["crop"] = list(model.config["input_size"])
    try:  # each value is bounded above; now how they fit together, as preprocess will
        TransformConfig.from_dict(model.config)
    except ConfigError as exc:
        raise WeightsError(f"{path}: metadata: {exc}") from exc
    if class_names is not None:
        if len(class_names) != model.num_classes:
            raise ConfigError(f"{len(class_names)} class names for {model.num_classes} classes")
        model.config["class_names"] = [str(c) for c in class_names]
    if foreign:
        model.config["source"] = {"format": kind, "file": os.path.basename(path)}
    return model.eval()


def convert(src: str | os.PathLike, dst: str | os.PathLike, arch: str | None = None,
            dtype: str = "float32", class_names: Sequence[str] | None = None, **caffe):
    """``load(src, arch, **caffe)`` then ``save(model, dst)``; returns the model.

    ``caffe``: ``prototxt``, ``mean``, ``truncate``, ``input_size`` (see :func:`load`).
    A caffe-graph network is saved with its layer list and reloads as itself.
    """
    model = load(src, arch=arch, class_names=class_names, **caffe)
    save(model, dst, dtype=dtype)
    return model
