"""A packed dataset: a labelled image folder as a few ``.npy`` files of uint8.

Training reads every image thirty times; decoding 9,469 JPEGs per epoch on two
cores costs more than it should, and a GPU machine that receives the working tree in
calls of at most 64 MiB cannot receive Imagenette's 134 MiB of files in one call.
Packing solves both: the folder becomes a handful of shards, each below a chosen
size, that can be carried one call at a time and loaded in seconds.

Layout of a packed folder ``DST``::

    meta.json                 {"format": "zfnet-packed", "version": 1, "size": S,
                               "encoding": "jpeg" | "raw", "classes": [wnid, ...],
                               "names": [...], "splits": {"train": {...}, "val": {...}}}
    train-labels.npy          int16 (N,): class index of each image, in file order
    train-000.npy ...         "raw":  uint8 (n_i, S, S, 3) RGB pixels
                              "jpeg": uint8 (bytes_i,) encoded images laid end to end
    train-000-offsets.npy     "jpeg" only: int64 (n_i + 1,), image j is bytes[off[j]:off[j+1]]
    val-...                   likewise

Every file is a plain ``.npy`` read with ``allow_pickle=False``; nothing is
unpickled.  Class index ``k`` is the ``k``-th class folder name in sorted order
(for Imagenette: wnids ``n01440764`` -> 0 ... ``n03888257`` -> 9), and every split
must have the same classes.

``"jpeg"`` stores a source JPEG of the right size byte for byte (no second lossy
encoding) and re-encodes anything else at quality 90 after the geometric step;
``"raw"`` stores decoded pixels (S = 224: 150 KB an image).  Imagenette at 224 is
about 95 MiB of train JPEGs and 40 MiB of val JPEGs, against 1.3 GiB + 0.6 GiB raw.
Images are brought to ``S x S`` by resizing the short side to ``S`` and taking the
centre (the images of Imagenette as shipped here are already 224 x 224).
"""

from __future__ import annotations

import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageOps

from ..errors import ConfigError, DataError
from .images import ImageFolder, ImageReadError, to_rgb
from .transforms import TransformConfig, resize_and_crop

__all__ = [
    "IMAGENETTE_NAMES",
    "PackedSplit",
    "pack_folder",
    "pack_dataset",
    "load_packed",
    "load_folder",
    "read_class_names",
]

FORMAT = "zfnet-packed"
VERSION = 1
ENCODINGS = ("jpeg", "raw")

#: The ten Imagenette classes (wnid -> name), as listed in ../shared/data/README.md.
IMAGENETTE_NAMES = {
    "n01440764": "tench",
    "n02102040": "English springer",
    "n02979186": "cassette player",
    "n03000684": "chain saw",
    "n03028079": "church",
    "n03394916": "French horn",
    "n03417042": "garbage truck",
    "n03425413": "gas pump",
    "n03445777": "golf ball",
    "n03888257": "parachute",
}


def read_class_names(path: str | os.PathLike) -> dict[str, str]:
    """Read ``wnid name...`` lines (ImageNet's ``imagenet_classes.txt`` layout) into a dict."""
    names: dict[str, str] = {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"class-name file {str(path)!r}: cannot read it ({e})") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.strip().split(None, 1)
        if not parts:
            continue
        if len(parts) != 2:
            raise DataError(f"class-name file {str(path)!r} line {lineno}: expected 'wnid name', got {line!r}")
        names[parts[0]] = parts[1]
    return names


class PackedSplit:
    """One split of a packed dataset, loaded into memory.

    Attributes
    ----------
    images : ndarray, uint8, (N, S, S, 3)
        RGB pixels (decoded from the shards for ``"jpeg"``).
    labels : ndarray, int64, (N,)
    classes : list of str
        Class folder names (wnids) in index order.
    names : list of str
        Human-readable class names in index order.
    paths : list of str
        Source file of each image, relative to the split folder.
    meta : dict
        The folder's ``meta.json``.
    """

    def __init__(self, images, labels, classes, names, paths, meta):
        self.images, self.labels = images, labels
        self.classes, self.names, self.paths, self.meta = list(classes), list(names), list(paths), meta

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    def subset(self, index) -> "PackedSplit":
        """The images ``index`` (array of ints or slice), in that order."""
        index = np.arange(len(self))[index] if isinstance(index, slice) else np.asarray(index, np.int64)
        return PackedSplit(self.images[index], self.labels[index], self.classes, self.names,
                           [self.paths[i] for i in index], self.meta)

    def __repr__(self) -> str:
        return f"PackedSplit({len(self)} images {self.size}x{self.size}, {len(self.classes)} classes)"


def _encode(rgb_or_file: Image.Image) -> bytes:
    buf = io.BytesIO()
    rgb_or_file.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _read_one(folder: ImageFolder, i: int, size: int, encoding: str):
    """Return ``(payload, None)`` for image ``i`` or ``(None, reason)`` when it cannot be used."""
    path = folder.path(i)
    try:
        im = folder[i]  # full decode to RGB: a corrupt file fails here, never later
    except ImageReadError as e:
        return None, f"{e.kind}: {e.detail}"
    geometry = TransformConfig(input_size=size, resize=size)
    if encoding == "raw":
        return np.asarray(resize_and_crop(im, geometry), np.uint8), None  # (S, S, 3)
    if im.size == (size, size) and path.suffix.lower() in (".jpg", ".jpeg"):
        try:
            with Image.open(path) as probe:
                if probe.format == "JPEG":
                    return path.read_bytes(), None  # the original bytes: no second lossy encoding
        except OSError:
            pass
    return _encode(resize_and_crop(im, geometry)), None


def pack_folder(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    split: str,
    *,
    size: int = 224,
    encoding: str = "jpeg",
    shard_mib: float = 48.0,
    classes: Sequence[str] | None = None,
    class_names: Mapping[str, str] | None = None,
    workers: int = 2,
    progress: bool = False,
) -> dict:
    """Pack one split folder (``src/<class>/<image>``) into ``dst`` as ``split``.

    Parameters
    ----------
    src : folder with one subfolder per class
    dst : output folder (created); its ``meta.json`` is created or updated
    split : str
        Name of the split (``"train"``, ``"val"``); letters, digits, ``-`` and ``_``.
    size : int
        Side ``S`` of the stored square images.
    encoding : {"jpeg", "raw"}
        See the module docstring.
    shard_mib : float
        Largest shard, in MiB (default 48: one shard plus the repository fits a
        64 MiB transfer).
    classes : list of str, optional
        The class order to use (default: ``src``'s sorted subfolder names, or the
        classes already in ``dst/meta.json``).  Labels are indices into it.
    class_names : mapping wnid -> name, optional
        Defaults to :data:`IMAGENETTE_NAMES`, falling back to the folder name.
    workers : int
        Decoding threads.
    progress : bool
        Show a tqdm bar.

    Returns
    -------
    dict
        The split's entry in ``meta.json`` (count, shards, skipped files).

    Raises
    ------
    DataError, ConfigError
        No class subfolders, classes that differ from ``dst``'s, bad arguments.
    """
    if encoding not in ENCODINGS:
        raise ConfigError(f"encoding={encoding!r}: expected one of {', '.join(ENCODINGS)}")
    if not split or not all(ch.isalnum() or ch in "-_" for ch in split):
        raise ConfigError(f"split name {split!r}: use letters, digits, '-' and '_'")
    if size < 8:
        raise ConfigError(f"size={size}: expected at least 8")
    if not shard_mib > 0:
        raise ConfigError(f"shard_mib={shard_mib}: must be positive")
    folder = ImageFolder(src)
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    meta_path = dst / "meta.json"
    meta = _read_meta(meta_path) if meta_path.exists() else None
    if meta is not None and (meta["size"] != size or meta["encoding"] != encoding):
        raise ConfigError(
            f"{meta_path}: existing pack is size {meta['size']} {meta['encoding']}, asked for {size} {encoding}"
        )
    found = folder.classes
    if not found:
        raise DataError(f"{src}: no class subfolders (expected {src}/<class>/<image>)")
    if classes is None:
        classes = meta["classes"] if meta is not None else found
    classes = list(classes)
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(f"{src}: class folders {unknown} are not among the dataset's classes {classes}")
    index_of = {c: k for k, c in enumerate(classes)}
    lookup = dict(IMAGENETTE_NAMES if class_names is None else class_names)
    names = [lookup.get(c, c) for c in classes]

    shard_bytes = int(shard_mib * 2**20)
    shards: list[dict] = []
    labels: list[int] = []
    paths: list[str] = []
    skipped: list[dict] = []
    pending: list = []
    pending_bytes = 0

    def flush():
        nonlocal pending, pending_bytes
        if not pending:
            return
        name = f"{split}-{len(shards):03d}.npy"
        if encoding == "raw":
            np.save(dst / name, np.stack(pending))  # (n_i, S, S, 3)
            shards.append({"file": name, "count": len(pending)})
        else:
            offsets = np.zeros(len(pending) + 1, np.int64)
            offsets[1:] = np.cumsum([len(b) for b in pending])
            np.save(dst / name, np.frombuffer(b"".join(pending), np.uint8))  # (bytes_i,)
            off_name = f"{split}-{len(shards):03d}-offsets.npy"
            np.save(dst / off_name, offsets)
            shards.append({"file": name, "offsets": off_name, "count": len(pending)})
        pending, pending_bytes = [], 0

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(folder), desc=f"pack {split}", unit="img")
    with ThreadPoolExecutor(max(1, workers)) as pool:
        # map keeps the folder order whatever order the threads finish in
        for i, (payload, reason) in enumerate(pool.map(lambda j: _read_one(folder, j, size, encoding),
                                                       range(len(folder)))):
            if bar is not None:
                bar.update(1)
            if payload is None:
                skipped.append({"path": folder.paths[i], "reason": reason})
                continue
            n_bytes = payload.nbytes if encoding == "raw" else len(payload)
            if pending and pending_bytes + n_bytes > shard_bytes:
                flush()
            pending.append(payload)
            pending_bytes += n_bytes
            labels.append(index_of[folder.label(i)])
            paths.append(folder.paths[i])
    flush()
    if bar is not None:
        bar.close()
    if not labels:
        raise DataError(f"{src}: no usable image ({len(skipped)} skipped)")
    np.save(dst / f"{split}-labels.npy", np.asarray(labels, np.int16))
    entry = {
        "count": len(labels),
        "labels": f"{split}-labels.npy",
        "shards": shards,
        "paths": paths,
        "skipped": skipped,
        "source": str(src),
    }
    meta = meta or {"format": FORMAT, "version": VERSION, "size": size, "encoding": encoding,
                    "classes": classes, "names": names, "splits": {}}
    meta["splits"][split] = entry
    tmp = meta_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=1), encoding="utf-8")
    os.replace(tmp, meta_path)
    return entry


def pack_dataset(
    root: str | os.PathLike,
    dst: str | os.PathLike,
    splits: Iterable[str] = ("train", "val"),
    **kwargs,
) -> dict:
    """Pack ``root/<split>`` for each split (Imagenette's layout); classes from the first split.

    Keyword arguments go to :func:`pack_folder`.  Returns the ``meta.json`` dict.
    """
    root = Path(root)
    splits = list(splits)
    missing = [s for s in splits if not (root / s).is_dir()]
    if missing:
        raise DataError(f"{root}: missing split folders {missing} (expected {root}/<split>/<class>/<image>)")
    classes = kwargs.pop("classes", None) or ImageFolder(root / splits[0]).classes
    for s in splits:
        pack_folder(root / s, dst, s, classes=classes, **kwargs)
    return _read_meta(Path(dst) / "meta.json")


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a readable packed-dataset meta.json ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{path}: not a zfnet packed dataset (format {meta.get('format') if isinstance(meta, dict) else None!r})")
    if meta.get("version") != VERSION:
        raise DataError(f"{path}: packed-dataset version {meta.get('version')!r}, this zfnet reads {VERSION}")
    for key, typ in (("size", int), ("encoding", str), ("classes", list), ("names", list), ("splits", dict)):
        if not isinstance(meta.get(key), typ):
            raise DataError(f"{path}: key {key!r} missing or not a {typ.__name__}")
    if meta["encoding"] not in ENCODINGS:
        raise DataError(f"{path}: unknown encoding {meta['encoding']!r}")
    return meta


def _load_npy(path: Path, dtype, ndim: int) -> np.ndarray:
    try:
        a = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: missing (every shard listed in meta.json must be present)") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable .npy file ({e})") from None
    if a.dtype != dtype or a.ndim != ndim:
        raise DataError(f"{path}: expected a {ndim}-D {np.dtype(dtype)} array, found {a.ndim}-D {a.dtype}")
    return a


def _decode_jpeg(data: bytes, size: int, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            # as the folder reader does: a stored original JPEG may carry an EXIF orientation
            rgb = to_rgb(ImageOps.exif_transpose(im), path=where)
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{where}: cannot decode the stored image ({e})") from None
    if rgb.size != (size, size):
        raise DataError(f"{where}: stored image is {rgb.size[0]}x{rgb.size[1]}, meta.json says {size}x{size}")
    return np.asarray(rgb, np.uint8)  # (S, S, 3)


def load_packed(path: str | os.PathLike, split: str, *, workers: int = 4, indices=None) -> PackedSplit:
    """Load one split of a packed folder into memory (decoding JPEG shards with threads).

    ``indices`` (ints into the split, any order) loads and decodes only those
    images, in that order: a figure that needs 256 training images does not decode
    9,469.

    Raises
    ------
    DataError
        A missing or malformed file, a count or shape that disagrees with
        ``meta.json``, an undecodable image, naming the file.
    """
    root = Path(path)
    meta = _read_meta(root / "meta.json")
    if split not in meta["splits"]:
        raise DataError(f"{root}: no split {split!r}; it holds {sorted(meta['splits'])}")
    entry = meta["splits"][split]
    s, enc, n = int(meta["size"]), meta["encoding"], int(entry["count"])
    labels = _load_npy(root / entry["labels"], np.int16, 1).astype(np.int64)
    if labels.shape[0] != n:
        raise DataError(f"{root / entry['labels']}: {labels.shape[0]} labels, meta.json says {n}")
    if n and (labels.min() < 0 or labels.max() >= len(meta["classes"])):
        raise DataError(f"{root / entry['labels']}: labels outside [0, {len(meta['classes'])})")
    want = np.arange(n) if indices is None else np.asarray(indices, np.int64).reshape(-1)
    if want.size and (want.min() < 0 or want.max() >= n):
        raise DataError(f"{root}: indices outside the {n} images of split {split!r}")
    slot = {}  # image index -> positions in the output that want it
    for pos, i in enumerate(want.tolist()):
        slot.setdefault(i, []).append(pos)
    images = np.empty((len(want), s, s, 3), np.uint8)  # (N_wanted, S, S, 3)
    at = 0
    for shard in entry["shards"]:
        count = int(shard["count"])
        if at + count > n:
            raise DataError(f"{root}: the shards of {split!r} hold more than the {n} images meta.json lists")
        f = root / shard["file"]
        mine = [j for j in range(count) if at + j in slot]
        if not mine:
            at += count
            continue
        if enc == "raw":
            a = _load_npy(f, np.uint8, 4)
            if a.shape != (count, s, s, 3):
                raise DataError(f"{f}: shape {a.shape}, expected {(count, s, s, 3)}")
            for j in mine:
                images[slot[at + j]] = a[j]
        else:
            blob = _load_npy(f, np.uint8, 1)
            off = _load_npy(root / shard["offsets"], np.int64, 1)
            if off.shape != (count + 1,) or off[0] != 0 or off[-1] != blob.shape[0] or np.any(np.diff(off) <= 0):
                raise DataError(f"{root / shard['offsets']}: offsets do not cut {f.name} into {count} images")
            raw = blob.tobytes()

            def work(j, raw=raw, off=off, base=at, name=f.name):
                images[slot[base + j]] = _decode_jpeg(raw[off[j] : off[j + 1]], s, f"{name} image {j}")

            with ThreadPoolExecutor(max(1, workers)) as pool:
                list(pool.map(work, mine))
        at += count
    if at != n:
        raise DataError(f"{root}: the shards of {split!r} hold {at} images, meta.json says {n}")
    paths = entry.get("paths") or [""] * n
    return PackedSplit(images, labels[want], meta["classes"], meta["names"], [paths[i] for i in want], meta)


def load_folder(src: str | os.PathLike, *, size: int = 224, classes: Sequence[str] | None = None,
                class_names: Mapping[str, str] | None = None, workers: int = 2) -> PackedSplit:
    """Decode a class-folder split (``src/<class>/<image>``) straight into memory.

    The same images, labels and geometry as :func:`pack_folder` with ``"raw"``
    encoding followed by :func:`load_packed`, without writing anything (unusable
    files are skipped; their reasons are in ``meta["skipped"]``).
    """
    folder = ImageFolder(src)
    found = folder.classes
    if not found:
        raise DataError(f"{src}: no class subfolders (expected {src}/<class>/<image>)")
    classes = list(found if classes is None else classes)
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(f"{src}: class folders {unknown} are not among the classes {classes}")
    lookup = dict(IMAGENETTE_NAMES if class_names is None else class_names)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = list(pool.map(lambda j: _read_one(folder, j, size, "raw"), range(len(folder))))
    keep = [i for i, (a, _) in enumerate(results) if a is not None]
    if not keep:
        raise DataError(f"{src}: no usable image")
    images = np.stack([results[i][0] for i in keep])  # (N, S, S, 3)
    labels = np.asarray([classes.index(folder.label(i)) for i in keep], np.int64)
    meta = {"format": FORMAT, "version": VERSION, "size": size, "encoding": "raw", "classes": classes,
            "names": [lookup.get(c, c) for c in classes], "source": str(src),
            "skipped": [{"path": folder.paths[i], "reason": r} for i, (a, r) in enumerate(results) if a is None]}
    return PackedSplit(images, labels, classes, meta["names"], [folder.paths[i] for i in keep], meta)
