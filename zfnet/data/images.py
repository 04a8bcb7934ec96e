"""Opening images safely and listing image folders.

Visualisation runs over folders that nobody has cleaned: ImageNet's validation set,
a phone's camera roll, a scrape.  One corrupt file must not end a run that has
been mining for an hour, so every way an image can be unusable is turned into one
exception, :class:`ImageReadError` (a :class:`~zfnet.errors.DataError`), whose
``kind`` says which way it failed.  The batch iterator in
:mod:`zfnet.data.transforms` catches it, records the file as skipped with its
reason, and goes on.

Ways a file can be unusable, and how each is detected
-----------------------------------------------------
``"empty"``
    Zero bytes (checked with ``os.stat`` before Pillow sees it).
``"not-an-image"``
    Pillow cannot identify the format (a text file renamed ``.jpg``).
``"too-large"``
    The header declares more than ``max_pixels`` pixels.  This is the
    decompression-bomb guard: a 40 KB PNG can declare 100,000 x 100,000 pixels and
    ask for 30 GB when decoded.  ``Image.open`` only parses the header, so the check
    happens before any pixel is decoded.  Pillow's own guard (a
    ``DecompressionBombWarning`` above ``PIL.Image.MAX_IMAGE_PIXELS``, an error above
    twice that) is turned into the same error instead of a warning on stderr.
``"corrupt"``
    The pixel data cannot be decoded: a truncated JPEG, a broken PNG chunk.
    ``Image.verify`` only checks some formats' checksums and misses truncation, so
    the image is fully decoded (``Image.load``) instead; a truncated file then
    raises.  (This relies on ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` being left at
    its default, False.)
``"unreadable"``
    The operating system refuses (permissions, a directory named ``x.jpg``).
``"unsupported-mode"``
    Pillow decoded it but no RGB rendering is defined for its mode.

Colour modes
------------
Every image comes out as 8-bit RGB, the form the networks were trained on:

======================  =============================================================
mode                    conversion
======================  =============================================================
``RGB``                 as is
``1``, ``L``            grey copied to the three channels
``LA``, ``RGBA``,       alpha-composited over a solid background, white by default
``La``, ``RGBa``,       (``background="black"`` or any RGB triple): transparent
``PA``, ``P`` with      regions of product photos and icons are meant to be seen on
transparency            a page, and white is how a browser shows them
``P``                   palette looked up
``CMYK``                Pillow's naive conversion (R = 255 - C - K ...; embedded ICC
                        profiles are ignored, as every training pipeline ignores them)
``YCbCr``, ``LAB``,     Pillow's conversion
``HSV``
``I;16`` (any order)    16-bit grey (e.g. a 16-bit PNG): ``round(v / 257)``, which maps
                        0..65535 onto 0..255 exactly
``I`` (32-bit int)      if every value is in 0..65535, treated as 16-bit as above;
                        otherwise stretched from its own min..max onto 0..255
``F`` (32-bit float)    if every value is in 0..1, ``round(255 v)``; otherwise stretched
                        from its own min..max (a float image has no inherent range)
======================  =============================================================

Multi-frame files (animated GIF, multi-page TIFF) contribute their first frame.  The
EXIF orientation tag is applied by default (``exif_transpose=True``) so an image
appears the way a photo viewer shows it.
"""

from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageReadError",
    "SKIP_KINDS",
    "open_image",
    "probe_image",
    "decode_image",
    "to_rgb",
    "image_extensions",
    "ImageFolder",
    "walk_files",
    "display_path",
]

#: Default ceiling on width * height, equal to Pillow's own warning threshold
#: (``PIL.Image.MAX_IMAGE_PIXELS``, 89,478,485 -- about 9,500 x 9,500), so a default
#: run never trips Pillow's warning before our own check.
DEFAULT_MAX_PIXELS = 89_478_485

#: Every value :attr:`ImageReadError.kind` can take, in the order summaries list them.
SKIP_KINDS = (
    "empty",
    "not-an-image",
    "too-large",
    "corrupt",
    "unreadable",
    "unsupported-mode",
)

_BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0)}


class ImageReadError(DataError):
    """A file that cannot be used as an image.

    Parameters
    ----------
    path : str or Path
        The file.
    kind : str
        One of :data:`SKIP_KINDS`.
    detail : str
        What was found, for the run summary.
    """

    def __init__(self, path: str | os.PathLike, kind: str, detail: str):
        assert kind in SKIP_KINDS, kind
        self.path = str(path)
        self.kind = kind
        self.detail = detail
        super().__init__(f"{self.path}: {kind}: {detail}")


def _background(background: str | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(background, str):
        if background not in _BACKGROUNDS:
            raise DataError(
                f"background={background!r}: expected 'white', 'black' or an (R, G, B) triple"
            )
        return _BACKGROUNDS[background]
    rgb = tuple(int(v) for v in background)
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
        raise DataError(f"background={background!r}: expected three integers in 0..255")
    return rgb  # type: ignore[return-value]


def probe_image(path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open an image file lazily: read its header, check it, decode nothing.

    Parameters
    ----------
    path : str or Path
        The file.
    max_pixels : int or None
        Largest accepted ``width * height``; None disables our guard (Pillow's own
        ``MAX_IMAGE_PIXELS`` error still applies above twice its value).

    Returns
    -------
    PIL.Image.Image
        Not yet loaded; pass it to :func:`decode_image`, which closes it.

    Raises
    ------
    ImageReadError
        kind ``"empty"``, ``"not-an-image"``, ``"too-large"`` or ``"unreadable"``.

    Notes
    -----
    Only the header is read, so this is cheap and safe to call serially on the main
    thread while worker threads decode (see :class:`zfnet.data.ImageBatches`).  It
    changes the process's warning filters for the duration of ``Image.open`` (to
    turn Pillow's ``DecompressionBombWarning`` into an error), which is why it
    should not itself run on several threads at once.
    """
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except OSError as e:
        raise ImageReadError(path, "unreadable", f"cannot stat: {e.strerror or e}") from None
    if not os.path.isfile(path):
        raise ImageReadError(path, "unreadable", "not a regular file")
    if st.st_size == 0:
        raise ImageReadError(path, "empty", "file has 0 bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageReadError(path, "too-large", f"Pillow's decompression-bomb guard: {e}") from None
    except UnidentifiedImageError:
        raise ImageReadError(path, "not-an-image", "Pillow cannot identify the format") from None
    except PermissionError as e:
        raise ImageReadError(path, "unreadable", f"permission denied: {e.strerror or e}") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        # A recognised format whose header is broken.
        raise ImageReadError(path, "corrupt", f"bad header: {type(e).__name__}: {e}") from None
    width, height = im.size
    if max_pixels is not None and width * height > max_pixels:
        im.close()
        raise ImageReadError(
            path,
            "too-large",
            f"header says {width} x {height} = {width * height:,} pixels, "
            f"more than max_pixels={max_pixels:,} (possible decompression bomb)",
        )
    if width < 1 or height < 1:
        im.close()
        raise ImageReadError(path, "corrupt", f"header says {width} x {height} pixels")
    return im


def decode_image(
    im: Image.Image,
    *,
    background: str | Sequence[int] = "white",
    exif_transpose: bool = True,
) -> Image.Image:
    """Fully decode a probed image and convert it to 8-bit RGB.

    Parameters
    ----------
    im : PIL.Image.Image
        From :func:`probe_image`; closed on return.
    background : {"white", "black"} or (R, G, B)
        What transparent pixels are composited over.
    exif_transpose : bool
        Apply the EXIF orientation tag.

    Returns
    -------
    PIL.Image.Image
        Mode ``"RGB"``, loaded, independent of the file.

    Raises
    ------
    ImageReadError
        kind ``"corrupt"`` (truncated or undecodable data) or ``"unsupported-mode"``.
    """
    path = getattr(im, "filename", "") or "<image>"
    bg = _background(background)
    src = im
    try:
        try:
            src.load()  # full decode: a truncated file raises here, not later
            out = ImageOps.exif_transpose(src) if exif_transpose else src
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as e:
            raise ImageReadError(path, "corrupt", f"{type(e).__name__}: {e}") from None
        except Image.DecompressionBombError as e:  # a GIF frame larger than its header
            raise ImageReadError(path, "too-large", str(e)) from None
        out = to_rgb(out, background=bg, path=path)
        # Closing ``src`` below releases its pixels too, so an RGB image that came
        # through unchanged is copied first.
        return out.copy() if out is src else out
    finally:
        src.close()


def to_rgb(
    im: Image.Image,
    *,
    background: str | Sequence[int] = "white",
    path: str = "<image>",
) -> Image.Image:
    """Convert a loaded Pillow image of any mode to 8-bit RGB.

    The rule per mode is the table in this module's docstring.

    Parameters
    ----------
    im : PIL.Image.Image
        Any mode.
    background : {"white", "black"} or (R, G, B)
        What transparent pixels are composited over.
    path : str
        Named in errors.

    Returns
    -------
    PIL.Image.Image
        Mode ``"RGB"``; a new image unless ``im`` was already RGB.
    """
    bg = _background(background)
    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "P":
        # A palette image with a transparent index is converted through RGBA so the
        # transparent pixels are composited like any other alpha.
        mode_to = "RGBA" if ("transparency" in im.info or im.palette.mode == "RGBA") else "RGB"
        im = im.convert(mode_to)
        mode = im.mode
        if mode == "RGB":
            return im
    if mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        rgba = im.convert("RGBA")  # premultiplied and LA modes become plain RGBA
        base = Image.new("RGB", rgba.size, bg)
        base.paste(rgba, mask=rgba.getchannel("A"))
        return base
    if mode in ("1", "L", "CMYK", "YCbCr", "LAB", "HSV"):
        try:
            return im.convert("RGB")
        except (ValueError, OSError) as e:
            raise ImageReadError(path, "unsupported-mode", f"mode {mode}: {e}") from None
    if mode.startswith("I;16") or mode in ("I", "F"):
        grey = np.asarray(im).astype(np.float64)  # (H, W)
        grey8 = _grey_to_uint8(grey, mode)
        return Image.fromarray(np.repeat(grey8[:, :, None], 3, axis=2), "RGB")  # (H, W, 3)
    try:
        return im.convert("RGB")
    except (ValueError, OSError) as e:
        raise ImageReadError(path, "unsupported-mode", f"no RGB conversion for mode {mode}: {e}") from None


def _grey_to_uint8(v: np.ndarray, mode: str) -> np.ndarray:
    """Map a high-bit-depth or float grey image onto 0..255 (rules in the module doc)."""
    finite = v[np.isfinite(v)]
    lo = float(finite.min()) if finite.size else 0.0
    hi = float(finite.max()) if finite.size else 0.0
    if mode.startswith("I;16") or (mode == "I" and lo >= 0 and hi <= 65535):
        out = v / 257.0  # 65535 / 255 = 257 exactly
    elif mode == "F" and lo >= 0 and hi <= 1:
        out = v * 255.0
    elif hi > lo:
        out = (v - lo) * (255.0 / (hi - lo))
    else:
        out = np.zeros_like(v)
    out = np.nan_to_num(out, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def walk_files(root: str | os.PathLike) -> list[str]:
    """Relative POSIX paths of the files below ``root``, hidden files and folders skipped.

    An explicit stack instead of :func:`os.walk` (which recurses in Python 3.11, so a
    folder chain 1,000 deep raised ``RecursionError`` and lost the run).  Symbolic
    links to folders are not followed (no cycles).  Names are the operating system's,
    surrogate-escaped where they are not valid UTF-8 (:func:`display_path` shows them).
    Unreadable sub-folders are skipped.  Unsorted.
    """
    out: list[str] = []
    stack = [""]
    base = os.fspath(root)
    while stack:
        rel_dir = stack.pop()
        try:
            with os.scandir(os.path.join(base, rel_dir) if rel_dir else base) as it:
                entries = list(it)
        except OSError:
            if not rel_dir:
                raise
            continue  # a sub-folder we may not read: skipped, like os.walk does
        for e in entries:
            if e.name.startswith("."):
                continue
            rel = f"{rel_dir}/{e.name}" if rel_dir else e.name
            try:
                is_dir = e.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if is_dir:
                stack.append(rel)
            elif e.is_file():
                out.append(rel)
    return out


def display_path(path: str) -> str:
    """``path`` safe to print, write into JSON/HTML or draw: undecodable bytes become U+FFFD.

    File names that are not valid UTF-8 reach Python surrogate-escaped
    (``b"caf\\xe9.jpg"`` -> ``"caf\\udce9.jpg"``), which cannot be encoded as UTF-8;
    they are still opened by that name, and identified (digests, resume) by their
    bytes, ``path.encode("utf-8", "surrogateescape")``.
    """
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def open_image(
    path: str | os.PathLike,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    background: str | Sequence[int] = "white",
    exif_transpose: bool = True,
) -> Image.Image:
    """Open, fully decode and convert one image file to 8-bit RGB.

    ``open_image(p) == decode_image(probe_image(p))``; see those for the checks.

    Parameters
    ----------
    path : str or Path
    max_pixels : int or None
        Decompression-bomb guard on ``width * height`` (None: only Pillow's).
    background : {"white", "black"} or (R, G, B)
        For transparent images.
    exif_transpose : bool
        Apply the EXIF orientation tag.

    Returns
    -------
    PIL.Image.Image
        Mode ``"RGB"``, loaded, file closed.

    Raises
    ------
    ImageReadError
        With ``kind`` in :data:`SKIP_KINDS`.
    """
    im = probe_image(path, max_pixels=max_pixels)
    return decode_image(im, background=background, exif_transpose=exif_transpose)


def image_extensions() -> frozenset[str]:
    """Lower-case file extensions (with the dot) of every format Pillow registers."""
    Image.init()
    return frozenset(ext.lower() for ext in Image.registered_extensions())


class ImageFolder:
    """Every image file under a folder, in a fixed order.

    The folder is searched recursively, so both layouts work: class subfolders
    (``root/<class>/<file>``, as ImageNet train and Imagenette) and flat
    (``root/<file>``, as ImageNet val).  Files are ordered by their path relative to
    ``root`` written with ``/`` separators and sorted as strings, so the order -- and
    with it every image index the miner records -- is the same on every machine and
    file system.  Hidden files and folders (names starting with ``.``) are ignored.

    Parameters
    ----------
    root : str or Path
        The folder.
    extensions : iterable of str, "pillow" or None
        Which files to list, by case-insensitive extension.  ``"pillow"`` (default):
        every extension a Pillow plugin registers.  ``None``: every file (anything
        unreadable is then skipped with a reason when loaded).
    max_pixels, background, exif_transpose
        Passed to :func:`open_image`.

    Attributes
    ----------
    root : Path
    paths : list of str
        Relative POSIX paths, sorted; ``paths[i]`` is image index ``i``.
    ignored : int
        Files not listed because of their extension.
    ignored_paths : list of str
        Their relative POSIX paths, sorted (reported by ``zfnet top9``, never silent).

    Raises
    ------
    DataError
        ``root`` is not a directory, or holds no file with an accepted extension.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        extensions: Iterable[str] | str | None = "pillow",
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        background: str | Sequence[int] = "white",
        exif_transpose: bool = True,
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"image folder {str(self.root)!r} is not a directory")
        if extensions == "pillow":
            exts: frozenset[str] | None = image_extensions()
        elif extensions is None:
            exts = None
        else:
            exts = frozenset(
                (e if e.startswith(".") else "." + e).lower() for e in extensions  # type: ignore[union-attr]
            )
        self.max_pixels = max_pixels
        self.background = _background(background)
        self.exif_transpose = exif_transpose
        paths: list[str] = []
        ignored_paths: list[str] = []
        for rel in walk_files(self.root):
            name = rel.rsplit("/", 1)[-1]
            if exts is not None and os.path.splitext(name)[1].lower() not in exts:
                ignored_paths.append(rel)
                continue
            paths.append(rel)
        paths.sort()
        ignored_paths.sort()
        ignored = len(ignored_paths)
        if not paths:
            raise DataError(
                f"image folder {str(self.root)!r} holds no image files"
                + (f" ({ignored} files with other extensions ignored)" if ignored else "")
            )
        self.paths = paths
        self.ignored = ignored
        self.ignored_paths = ignored_paths

    def with_paths(self, paths: Sequence[str]) -> "ImageFolder":
        """The same folder and reading options, listing exactly ``paths`` (in that order).

        Used to resume a run over the list it started with after files were deleted:
        image indices keep their meaning, and a file that is gone is skipped with a
        reason when it is read.
        """
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        other.paths = list(paths)
        return other

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return f"ImageFolder({str(self.root)!r}, {len(self)} files)"

    def path(self, index: int) -> Path:
        """Absolute path of image ``index``."""
        return self.root / self.paths[index]

    def label(self, index: int) -> str:
        """First folder component of image ``index`` (its class), or ``""`` when flat."""
        rel = self.paths[index]
        return rel.split("/", 1)[0] if "/" in rel else ""

    @property
    def classes(self) -> list[str]:
        """Sorted distinct labels (empty for a flat folder)."""
        return sorted({self.label(i) for i in range(len(self))} - {""})

    def probe(self, index: int) -> Image.Image:
        """:func:`probe_image` on image ``index`` with this folder's settings."""
        return probe_image(self.path(index), max_pixels=self.max_pixels)

    def decode(self, im: Image.Image) -> Image.Image:
        """:func:`decode_image` with this folder's settings."""
        return decode_image(im, background=self.background, exif_transpose=self.exif_transpose)

    def __getitem__(self, index: int) -> Image.Image:
        """Image ``index`` as 8-bit RGB; raises :class:`ImageReadError`."""
        return self.decode(self.probe(index))
