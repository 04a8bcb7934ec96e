"""Preprocessing: from an RGB picture to the array a network takes, and back.

A network's preprocessing is a handful of numbers that come with its weights
(:class:`TransformConfig`): how the picture is brought to the input size, which
channel order the first layer expects, and the pixel scale, mean and standard
deviation.  Given a config, :class:`Transform` maps a picture to a ``(3, H, W)``
float32 array in four steps::

    geometry   resize the short side to S, centre-crop C      (or resize straight to C)
    scale      v = pixel * scale                              (pixel in 0..255)
    reorder    RGB -> BGR when channel_order == "BGR"
    normalise  x[c] = (v[c] - mean[c]) / std[c]               (mean, std in channel_order)

Two common conventions, for orientation:

* torchvision ImageNet models: ``resize=256, input_size=224, channel_order="RGB",
  scale=1/255, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)``
  (the defaults here);
* Caffe models (the BVLC AlexNet, SqueezeNet v1.0): ``channel_order="BGR",
  scale=1, mean=(104, 117, 123), std=(1, 1, 1)``, input 227.

The geometric step follows torchvision on PIL images exactly, so arrays match what
a PyTorch pipeline would feed the same weights: the resized long side is
``int(S * long / short)`` (truncated), the crop's top-left corner is
``round((H - C) / 2)`` (Python's round, ties to even), and resizing is Pillow's
antialiased filter.

:class:`ImageBatches` walks an :class:`~zfnet.data.ImageFolder` in order, yields
batches ``(indices, paths, images)``, and records every file it had to skip.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Mapping, NamedTuple, Sequence

import numpy as np
from PIL import Image

from ..errors import ConfigError, ShapeError
from .images import SKIP_KINDS, ImageFolder, ImageReadError, display_path, open_image, to_rgb

# ImageNet's RGB mean and standard deviation on 0..1 pixels (torchvision's
# normalisation): the one copy every default and converter uses.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TransformConfig",
    "Transform",
    "resize_and_crop",
    "normalize",
    "denormalize",
    "Batch",
    "Skipped",
    "Note",
    "ImageBatches",
    "summarize_skips",
]

_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}


def _pair(v: Any, name: str) -> tuple[int, int]:
    """``224 -> (224, 224)``; ``(227, 227)`` unchanged; anything else a ConfigError."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        v = (int(v), int(v))
    try:
        h, w = (int(a) for a in v)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={v!r}: expected an int or an (H, W) pair") from None
    if h < 1 or w < 1:
        raise ConfigError(f"{name}={v!r}: sizes must be positive")
    return h, w


def _triple(v: Any, name: str) -> tuple[float, float, float]:
    if isinstance(v, (int, float, np.number)):
        v = (v, v, v)
    try:
        t = tuple(float(a) for a in v)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={v!r}: expected three numbers (one per channel)") from None
    if len(t) != 3:
        raise ConfigError(f"{name}={v!r}: expected three numbers (one per channel), got {len(t)}")
    return t  # type: ignore[return-value]


@dataclass(frozen=True)
class TransformConfig:
    """The preprocessing numbers that come with a network's weights.

    Parameters
    ----------
    input_size : int or (H, W)
        The crop ``C``: the network's input size.
    resize : int or None
        Short side ``S`` the picture is resized to before the centre crop; must be
        at least ``max(C)``.  None: resize straight to ``C`` (aspect ratio not
        kept).
    channel_order : {"RGB", "BGR"}
        The order of the first layer's input channels.
    mean, std : three floats
        Per channel, listed in ``channel_order`` and in scaled units (after
        multiplying by ``scale``).
    scale : float
        Pixel scale: ``1/255`` maps 0..255 onto 0..1, ``1`` keeps 0..255.
    interpolation : {"bilinear", "bicubic", "nearest", "lanczos", "box"}
        Pillow resampling filter for the resize.

    Examples
    --------
    >>> TransformConfig.from_dict({"input_size": 227, "resize": 256,
    ...     "channel_order": "BGR", "mean": [104, 117, 123], "std": 1, "scale": 1})
    ... # doctest: +ELLIPSIS
    TransformConfig(input_size=(227, 227), resize=256, channel_order='BGR', ...)
    """

    input_size: tuple[int, int] = (224, 224)
    resize: int | None = 256
    channel_order: str = "RGB"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    scale: float = 1.0 / 255.0
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        # Normalise the friendly forms (int size, list mean) in place; frozen, hence
        # object.__setattr__.
        object.__setattr__(self, "input_size", _pair(self.input_size, "input_size"))
        object.__setattr__(self, "mean", _triple(self.mean, "mean"))
        object.__setattr__(self, "std", _triple(self.std, "std"))
        order = str(self.channel_order).upper()
        if order not in ("RGB", "BGR"):
            raise ConfigError(f"channel_order={self.channel_order!r}: expected 'RGB' or 'BGR'")
        object.__setattr__(self, "channel_order", order)
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"std={self.std}: every entry must be positive")
        try:
            scale = float(self.scale)
        except (TypeError, ValueError):
            raise ConfigError(f"scale={self.scale!r}: expected a positive number") from None
        if not scale > 0:
            raise ConfigError(f"scale={self.scale!r}: expected a positive number")
        object.__setattr__(self, "scale", scale)
        if self.resize is not None:
            if isinstance(self.resize, bool) or int(self.resize) != self.resize or self.resize < 1:
                raise ConfigError(f"resize={self.resize!r}: expected a positive int or None")
            object.__setattr__(self, "resize", int(self.resize))
            if self.resize < max(self.input_size):
                raise ConfigError(
                    f"resize={self.resize} is smaller than the crop input_size={self.input_size}: "
                    "the short side must be at least as long as the crop"
                )
        if self.interpolation not in _FILTERS:
            raise ConfigError(
                f"interpolation={self.interpolation!r}: expected one of {sorted(_FILTERS)}"
            )

    _KEYS = ("input_size", "resize", "channel_order", "mean", "std", "scale", "interpolation")

    @classmethod
    def from_dict(cls, meta: Mapping[str, Any]) -> "TransformConfig":
        """Build from model metadata.

        Reads the keys ``input_size`` (or its alias ``crop``), ``resize``,
        ``channel_order``, ``mean``, ``std``, ``scale`` and ``interpolation``; a key
        that is absent takes the default above, other keys are ignored (metadata
        holds more than preprocessing).

        Raises
        ------
        ConfigError
            A value of the wrong type or out of range, naming the key.
        """
        kwargs = {k: meta[k] for k in cls._KEYS if k in meta}
        if "crop" in meta:
            if "input_size" in meta and _pair(meta["crop"], "crop") != _pair(meta["input_size"], "input_size"):
                raise ConfigError(
                    f"metadata gives crop={meta['crop']!r} and input_size={meta['input_size']!r}; "
                    "they are the same thing and must agree"
                )
            kwargs["input_size"] = meta["crop"]
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; ``TransformConfig.from_dict(c.to_dict()) == c``."""
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d


def _as_rgb_image(image: Any) -> Image.Image:
    """A path, a Pillow image of any mode, or an (H, W[, C]) uint8 array -> RGB image."""
    if isinstance(image, (str, os.PathLike)):
        return open_image(image)
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (
            image.ndim == 3 and image.shape[2] not in (1, 3, 4)
        ):
            raise ShapeError(
                f"image array of dtype {image.dtype} and shape {image.shape}: expected uint8 "
                "(H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA"
            )
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]  # (H, W)
        return to_rgb(Image.fromarray(image))
    raise ShapeError(f"cannot use a {type(image).__name__} as an image: expected a path, PIL image or uint8 array")


def resize_and_crop(image: Image.Image, config: TransformConfig) -> Image.Image:
    """The geometric step: short side to ``S`` then centre crop ``C``, or straight to ``C``.

    With ``(h, w)`` the picture's size and ``S = config.resize``:
    ``(h', w') = (S, int(S * w / h))`` if ``h <= w`` else ``(int(S * h / w), S)``;
    then the crop ``(C_h, C_w)`` starts at ``top = round((h' - C_h) / 2)``,
    ``left = round((w' - C_w) / 2)``.

    Parameters
    ----------
    image : PIL.Image.Image
        RGB.
    config : TransformConfig

    Returns
    -------
    PIL.Image.Image
        RGB, ``config.input_size`` (as ``(W, H)`` in Pillow's convention).
    """
    ch, cw = config.input_size
    resample = _FILTERS[config.interpolation]
    w, h = image.size
    if config.resize is None:
        if (h, w) == (ch, cw):
            return image
        return image.resize((cw, ch), resample)
    s = config.resize
    new_h, new_w = (s, int(s * w / h)) if h <= w else (int(s * h / w), s)
    # int(S * long / short) >= S >= max(C) because S is checked against the crop,
    # so the crop always fits.
    if (new_h, new_w) != (h, w):
        image = image.resize((new_w, new_h), resample)
    top = int(round((new_h - ch) / 2.0))
    left = int(round((new_w - cw) / 2.0))
    return image.crop((left, top, left + cw, top + ch))


def normalize(rgb: np.ndarray, config: TransformConfig) -> np.ndarray:
    """Pixel values to network input: scale, reorder, subtract mean, divide by std.

    ``x[c, i, j] = (scale * rgb[i, j, order[c]] - mean[c]) / std[c]`` with
    ``order = (0, 1, 2)`` for RGB and ``(2, 1, 0)`` for BGR.

    Parameters
    ----------
    rgb : ndarray, uint8, (H, W, 3)
    config : TransformConfig

    Returns
    -------
    ndarray, float32, (3, H, W)

    Paired with
    -----------
    :func:`denormalize`.
    """
    x = rgb.astype(np.float32) * np.float32(config.scale)  # (H, W, 3)
    if config.channel_order == "BGR":
        x = x[:, :, ::-1]
    mean = np.asarray(config.mean, np.float32)
    std = np.asarray(config.std, np.float32)
    x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1))  # (3, H, W)


def denormalize(x: np.ndarray, config: TransformConfig) -> np.ndarray:
    """Network input back to displayable pixels (the inverse of :func:`normalize`).

    ``rgb = clip(round((x * std + mean) / scale), 0, 255)`` with the channels put
    back in RGB order.

    Parameters
    ----------
    x : ndarray, (3, H, W) or (N, 3, H, W)
    config : TransformConfig

    Returns
    -------
    ndarray, uint8, (H, W, 3) or (N, H, W, 3), RGB
    """
    x = np.asarray(x, np.float32)
    if x.shape[-3] != 3:
        raise ShapeError(f"denormalize: expected (3, H, W) or (N, 3, H, W), got {x.shape}")
    mean = np.asarray(config.mean, np.float32)[:, None, None]
    std = np.asarray(config.std, np.float32)[:, None, None]
    v = (x * std + mean) / np.float32(config.scale)
    v = np.moveaxis(v, -3, -1)  # (..., H, W, 3)
    if config.channel_order == "BGR":
        v = v[..., ::-1]
    return np.clip(np.round(v), 0, 255).astype(np.uint8)


class Transform:
    """A picture in, a ``(3, H, W)`` float32 network input out.

    Parameters
    ----------
    config : TransformConfig or mapping
        A mapping is passed to :meth:`TransformConfig.from_dict`.

    Examples
    --------
    >>> t = Transform(TransformConfig(input_size=8, resize=8))
    >>> t(np.zeros((10, 12, 3), np.uint8)).shape
    (3, 8, 8)
    """

    def __init__(self, config: TransformConfig | Mapping[str, Any] | None = None):
        if config is None:
            config = TransformConfig()
        elif not isinstance(config, TransformConfig):
            config = TransformConfig.from_dict(config)
        self.config = config

    def __repr__(self) -> str:
        return f"Transform({self.config!r})"

    def geometry(self, image: Any) -> np.ndarray:
        """The picture as the network sees it, before normalisation.

        Returns
        -------
        ndarray, uint8, (C_h, C_w, 3), RGB
        """
        return np.asarray(resize_and_crop(_as_rgb_image(image), self.config), np.uint8)

    def __call__(self, image: Any) -> np.ndarray:
        """Preprocess one picture (path, PIL image or uint8 array): ``(3, C_h, C_w)`` float32."""
        return normalize(self.geometry(image), self.config)

    def inverse(self, x: np.ndarray) -> np.ndarray:
        """:func:`denormalize` with this config: ``(.., 3, H, W)`` -> ``(.., H, W, 3)`` uint8."""
        return denormalize(x, self.config)


class Batch(NamedTuple):
    """One batch from :class:`ImageBatches`.

    Attributes
    ----------
    indices : ndarray, int64, (B,)
        Image indices into the folder (increasing; gaps where files were skipped).
    paths : list of str
        Relative paths of those images.
    images : ndarray, float32, (B, 3, H, W)
    """

    indices: np.ndarray
    paths: list[str]
    images: np.ndarray


class Skipped(NamedTuple):
    """A file the run could not use: its index, relative path, kind and detail."""

    index: int
    path: str
    kind: str
    detail: str


class Note(NamedTuple):
    """A file that was used but deserves a remark (e.g. a 1 x 1 image)."""

    index: int
    path: str
    text: str


def _load_one(folder: ImageFolder, transform: Transform, probed: Image.Image, tiny: int):
    """Decode + preprocess one probed image; runs on a worker thread.

    Returns ``(array, note_text_or_None)`` or an ``ImageReadError``; never raises
    for a bad file, so one file cannot end a run.
    """
    path = getattr(probed, "filename", "")
    try:
        rgb = folder.decode(probed)
        w, h = rgb.size
        note = None
        if min(w, h) < tiny:
            note = f"tiny image {w} x {h}: used, but upsampled to the input size"
        return transform(rgb), note
    except ImageReadError as e:
        return e
    except MemoryError:
        return ImageReadError(path, "too-large", "out of memory while decoding")
    except Exception as e:  # noqa: BLE001 -- a malformed file can make a plugin raise anything
        return ImageReadError(path, "corrupt", f"unexpected {type(e).__name__} while decoding: {e}")


class ImageBatches:
    """Iterate an image folder in batches of preprocessed arrays, skipping bad files.

    The files ``start, start+1, ..., stop-1`` are taken ``batch_size`` at a time, in
    folder order.  Files that cannot be used are left out of their batch (so a
    batch can be shorter than ``batch_size``; one where every file failed is not
    yielded) and recorded in :attr:`skipped`.

    Parameters
    ----------
    folder : ImageFolder or str or Path
    transform : Transform or TransformConfig or mapping
    batch_size : int
    workers : int
        Threads decoding images (0: decode on the calling thread).  Pillow releases
        the GIL while decoding and resizing, so a few threads overlap decoding with
        the network's forward pass; headers are still read on the calling thread and
        the order of the results is the folder order regardless.
    start, stop : int
        Range of image indices to visit (for resuming and for sharding).
    tiny : int
        Images with a side shorter than this are used, and noted in :attr:`notes`.

    Attributes
    ----------
    skipped : list of Skipped
    notes : list of Note
    n_read : int
        Images successfully yielded so far.
    seconds_loading : float
        Wall time spent inside this iterator (reading, decoding, preprocessing).
    position : int
        Every file index below this has been yielded or skipped: the end of the
        file range of the batch most recently yielded (``stop`` once exhausted).
        A checkpoint taken after processing a batch covers ``[start, position)``.
    """

    def __init__(
        self,
        folder: ImageFolder | str | os.PathLike,
        transform: Transform | TransformConfig | Mapping[str, Any] | None = None,
        *,
        batch_size: int = 32,
        workers: int = 0,
        start: int = 0,
        stop: int | None = None,
        tiny: int = 8,
    ):
        self.folder = folder if isinstance(folder, ImageFolder) else ImageFolder(folder)
        self.transform = transform if isinstance(transform, Transform) else Transform(transform)
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size}: must be at least 1")
        if workers < 0:
            raise ConfigError(f"workers={workers}: must be 0 or more")
        n = len(self.folder)
        stop = n if stop is None else stop
        if not 0 <= start <= stop <= n:
            raise ConfigError(f"start={start}, stop={stop}: expected 0 <= start <= stop <= {n} (folder size)")
        self.batch_size = int(batch_size)
        self.workers = int(workers)
        self.start, self.stop = int(start), int(stop)
        self.tiny = int(tiny)
        self.skipped: list[Skipped] = []
        self.notes: list[Note] = []
        self.n_read = 0
        self.seconds_loading = 0.0
        self.position = self.start

    def __len__(self) -> int:
        """Number of chunks of file indices (an upper bound on the batches yielded)."""
        return -(-(self.stop - self.start) // self.batch_size)

    def _submit(self, lo: int, hi: int, pool: ThreadPoolExecutor | None) -> list[tuple[int, Any]]:
        """Probe files lo..hi-1 (headers, on this thread) and start decoding the good ones."""
        jobs: list[tuple[int, Any]] = []
        for i in range(lo, hi):
            try:
                probed = self.folder.probe(i)
            except ImageReadError as e:
                self.skipped.append(Skipped(i, self.folder.paths[i], e.kind, e.detail))
                continue
            except Exception as e:  # noqa: BLE001
                self.skipped.append(
                    Skipped(i, self.folder.paths[i], "corrupt", f"unexpected {type(e).__name__}: {e}")
                )
                continue
            if pool is None:
                jobs.append((i, _load_one(self.folder, self.transform, probed, self.tiny)))
            else:
                jobs.append((i, pool.submit(_load_one, self.folder, self.transform, probed, self.tiny)))
        return jobs

    def _collect(self, jobs: list[tuple[int, Any]]) -> Batch | None:
        indices: list[int] = []
        arrays: list[np.ndarray] = []
        for i, job in jobs:
            result = job.result() if isinstance(job, Future) else job
            rel = self.folder.paths[i]
            if isinstance(result, ImageReadError):
                self.skipped.append(Skipped(i, rel, result.kind, result.detail))
                continue
            array, note = result
            if note:
                self.notes.append(Note(i, rel, note))
            indices.append(i)
            arrays.append(array)
        if not arrays:
            return None
        self.n_read += len(arrays)
        return Batch(
            np.asarray(indices, np.int64),
            [self.folder.paths[i] for i in indices],
            np.stack(arrays),  # (B, 3, H, W)
        )

    def __iter__(self) -> Iterator[Batch]:
        bounds = [
            (lo, min(lo + self.batch_size, self.stop)) for lo in range(self.start, self.stop, self.batch_size)
        ]
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="zfnet-decode") if self.workers else None
        try:
            t0 = time.perf_counter()
            pending = self._submit(*bounds[0], pool) if bounds else []
            for b in range(len(bounds)):
                batch = self._collect(pending)
                # Start the next chunk before handing this one over, so worker
                # threads decode while the caller runs the network.
                pending = self._submit(*bounds[b + 1], pool) if b + 1 < len(bounds) else []
                self.seconds_loading += time.perf_counter() - t0
                if batch is not None:
                    self.position = bounds[b][1]
                    yield batch
                t0 = time.perf_counter()
            self.position = self.stop
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        # Skips are recorded in probe order and decode order; report them by index.
        self.skipped.sort(key=lambda s: s.index)

    def summary(self) -> str:
        """One sentence: images read, skipped by kind, notes."""
        return summarize_skips(self.n_read, self.skipped, self.notes)


def summarize_skips(n_read: int, skipped: Sequence[Skipped], notes: Sequence[Note] = (), max_listed: int = 5) -> str:
    """Human-readable account of a run's input: ``"read 3,920 images; skipped 5: ..."``.

    Parameters
    ----------
    n_read : int
    skipped : sequence of Skipped
    notes : sequence of Note
    max_listed : int
        File names listed per kind before "and N more".
    """
    parts = [f"read {n_read:,} images"]
    if skipped:
        by_kind: dict[str, list[Skipped]] = {}
        for s in skipped:
            by_kind.setdefault(s.kind, []).append(s)
        counts = Counter(s.kind for s in skipped)
        kinds = [k for k in SKIP_KINDS if k in counts] + sorted(set(counts) - set(SKIP_KINDS))
        listed = []
        for k in kinds:
            items = by_kind[k]
            names = ", ".join(
                display_path(f"{s.path} ({s.detail})" if len(s.detail) < 90 else f"{s.path} ({s.detail[:87]}...)")
                for s in items[:max_listed]
            )
            more = f" and {len(items) - max_listed} more" if len(items) > max_listed else ""
            listed.append(f"{len(items)} {k}: {names}{more}")
        parts.append(f"skipped {len(skipped):,} ({'; '.join(listed)})")
    else:
        parts.append("skipped none")
    if notes:
        names = ", ".join(display_path(f"{n.path} ({n.text})") for n in notes[:max_listed])
        more = f" and {len(notes) - max_listed} more" if len(notes) > max_listed else ""
        parts.append(f"{len(notes)} noted: {names}{more}")
    return "; ".join(parts)
