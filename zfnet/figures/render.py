"""Small drawing helpers on uint8 RGB arrays, with Pillow (no display, no GUI backend).

Every figure in :mod:`zfnet.figures` is built from the same pieces: resize a tile,
lay tiles out in a grid with gutters, stack panels, add a caption, save a PNG.
Arrays are ``(H, W, 3)`` uint8 RGB throughout.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "fit_tile",
    "grid",
    "hstack",
    "vstack",
    "caption",
    "save_png",
    "WHITE",
    "PAGE",
]

WHITE = (255, 255, 255)
#: Figure background: a light grey that frames white and black tiles alike.
PAGE = (236, 236, 236)


def fit_tile(img: np.ndarray, size: int) -> np.ndarray:
    """Resize a tile so its longer side is ``size`` pixels.

    Enlarging uses nearest neighbour, so the pixels of a 7 x 7 conv1 patch stay
    visible as blocks; shrinking uses Pillow's antialiased LANCZOS.

    Parameters
    ----------
    img : uint8 (h, w, 3)
    size : int

    Returns
    -------
    uint8 (h', w', 3) with ``max(h', w') == size``
    """
    h, w = img.shape[:2]
    if max(h, w) == size:
        return img
    s = size / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    resample = Image.Resampling.NEAREST if s > 1 else Image.Resampling.LANCZOS
    return np.asarray(Image.fromarray(img).resize((nw, nh), resample))


def grid(
    tiles: Sequence[np.ndarray],
    cols: int,
    pad: int = 2,
    bg: tuple[int, int, int] = PAGE,
    cell: tuple[int, int] | None = None,
) -> np.ndarray:
    """Lay tiles out row by row, ``cols`` per row, ``pad`` pixels between them.

    Tiles smaller than the cell (the largest tile, or ``cell``) are centred.

    Returns
    -------
    uint8 (rows * (ch + pad) - pad, cols * (cw + pad) - pad, 3)
    """
    if not tiles:
        return np.full((1, 1, 3), bg, np.uint8)
    ch = cell[0] if cell else max(t.shape[0] for t in tiles)
    cw = cell[1] if cell else max(t.shape[1] for t in tiles)
    cols = max(1, min(cols, len(tiles)))
    rows = -(-len(tiles) // cols)
    out = np.empty((rows * (ch + pad) - pad, cols * (cw + pad) - pad, 3), np.uint8)
    out[:] = bg
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        y = r * (ch + pad) + (ch - t.shape[0]) // 2
        x = c * (cw + pad) + (cw - t.shape[1]) // 2
        out[y: y + t.shape[0], x: x + t.shape[1]] = t
    return out


def hstack(panels: Sequence[np.ndarray], pad: int = 6, bg=PAGE, align: str = "top") -> np.ndarray:
    """Panels side by side, ``pad`` apart, aligned at the top (or ``"center"``)."""
    h = max(p.shape[0] for p in panels)
    w = sum(p.shape[1] for p in panels) + pad * (len(panels) - 1)
    out = np.empty((h, w, 3), np.uint8)
    out[:] = bg
    x = 0
    for p in panels:
        y = 0 if align == "top" else (h - p.shape[0]) // 2
        out[y: y + p.shape[0], x: x + p.shape[1]] = p
        x += p.shape[1] + pad
    return out


def vstack(panels: Sequence[np.ndarray], pad: int = 6, bg=PAGE, align: str = "left") -> np.ndarray:
    """Panels one above the other, ``pad`` apart, aligned left (or ``"center"``)."""
    w = max(p.shape[1] for p in panels)
    h = sum(p.shape[0] for p in panels) + pad * (len(panels) - 1)
    out = np.empty((h, w, 3), np.uint8)
    out[:] = bg
    y = 0
    for p in panels:
        x = 0 if align == "left" else (w - p.shape[1]) // 2
        out[y: y + p.shape[0], x: x + p.shape[1]] = p
        y += p.shape[0] + pad
    return out


@lru_cache(maxsize=8)
def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # scalable DejaVu when FreeType is present
    except TypeError:  # pragma: no cover - Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def caption(img: np.ndarray, text: str, size: int = 12, where: str = "top", bg=PAGE, fg=(20, 20, 20)) -> np.ndarray:
    """Add a line (or lines) of text above or below a panel."""
    font = _font(size)
    lines = text.split("\n")
    line_h = size + 4
    width = max(img.shape[1], *(int(font.getlength(s)) + 4 for s in lines))
    band = Image.new("RGB", (width, line_h * len(lines) + 2), bg)
    draw = ImageDraw.Draw(band)
    for i, s in enumerate(lines):
        draw.text((2, 1 + i * line_h), s, fill=fg, font=font)
    band_arr = np.asarray(band)
    body = np.empty((img.shape[0], width, 3), np.uint8)
    body[:] = bg
    body[:, : img.shape[1]] = img
    return np.concatenate([band_arr, body] if where == "top" else [body, band_arr], axis=0)


def save_png(img: np.ndarray, path: str | os.PathLike, max_side: int | None = None) -> Path:
    """Save an RGB array as an optimised PNG, shrunk to ``max_side`` if given.

    Written atomically (a temporary file beside ``path``, then renamed): an
    interrupted run leaves the old picture or the new one, never a cut one.
    """
    from .._files import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pic = Image.fromarray(np.ascontiguousarray(img))
    if max_side is not None and max(pic.size) > max_side:
        s = max_side / max(pic.size)
        pic = pic.resize((max(1, round(pic.width * s)), max(1, round(pic.height * s))), Image.Resampling.LANCZOS)
    atomic_write(path, lambda fh: pic.save(fh, format="PNG", optimize=True))
    return path
