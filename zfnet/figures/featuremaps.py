"""Feature maps of one image at one layer: every channel as a tile, the input beside it.

A layer's output for one image is ``C`` maps of ``H x W`` (conv5 of ZFNet: 256 maps
of 13 x 13; after pool5, 6 x 6).  Each map becomes a grey tile; the tiles fill a
grid next to the (preprocessed) input picture.

Scaling
-------
``"shared"`` (default)
    One scale for the whole layer, ``a / max(a)``: bright tiles are the channels
    this image drives hardest, and rectified channels that never fire are black.
``"per-channel"``
    Each map stretched to its own max: every map's *shape* is visible, its strength
    is not.

Negative values (layers without a ReLU) are clipped to black under both scalings.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError, ShapeError
from .render import caption, fit_tile, grid, hstack

__all__ = ["MAP_SCALINGS", "feature_map_tiles", "feature_map_figure"]

MAP_SCALINGS = ("shared", "per-channel")


def feature_map_tiles(activation: np.ndarray, scaling: str = "shared") -> list[np.ndarray]:
    """Each channel of one image's activation as a grey uint8 tile.

    Parameters
    ----------
    activation : array (C, H, W) or (C,)
        A fully connected layer's ``(C,)`` becomes C one-pixel tiles.
    scaling : {"shared", "per-channel"}

    Returns
    -------
    list of C uint8 arrays (H, W, 3)
    """
    a = np.asarray(activation, np.float64)
    if a.ndim == 1:
        a = a[:, None, None]  # (C, 1, 1)
    if a.ndim != 3:
        raise ShapeError(f"feature_map_tiles: expected (C, H, W) or (C,), got {a.shape}")
    if scaling not in MAP_SCALINGS:
        raise ConfigError(f"scaling={scaling!r}: expected one of {MAP_SCALINGS}")
    a = np.maximum(a, 0)
    top = a.max(axis=(1, 2), keepdims=True) if scaling == "per-channel" else np.full((1, 1, 1), a.max())
    norm = np.divide(a, top, out=np.zeros_like(a), where=top > 0)
    grey = np.clip(np.round(norm * 255), 0, 255).astype(np.uint8)
    return list(np.repeat(grey[..., None], 3, axis=3))  # C x (H, W, 3)


def feature_map_figure(
    activation: np.ndarray,
    picture: np.ndarray,
    layer: str,
    *,
    scaling: str = "shared",
    tile: int = 32,
    cols: int | None = None,
    title: str | None = None,
) -> np.ndarray:
    """Input picture beside the grid of a layer's feature maps.

    Parameters
    ----------
    activation : array (C, H, W) or (C,)
    picture : uint8 (H_in, W_in, 3)
        The image as the network saw it (after resize and crop).
    layer : str
    scaling : {"shared", "per-channel"}
    tile : int
        Side each map is drawn at (nearest-neighbour enlargement).
    cols : int, optional
        Tiles per row; default about ``sqrt(C)`` rounded up to a multiple of 4.

    Returns
    -------
    uint8 (H, W, 3)
    """
    tiles = [fit_tile(t, tile) for t in feature_map_tiles(activation, scaling)]
    c = len(tiles)
    cols = cols or max(1, int(4 * np.ceil(np.sqrt(c) / 4)))
    maps = grid(tiles, cols, pad=1, bg=(90, 90, 140))  # bluish gutters: black maps stay visible
    shape = "x".join(str(s) for s in np.shape(activation))
    maps = caption(maps, title or f"{layer}: {shape} ({scaling} scaling; white = strongest)", size=13)
    side = max(min(maps.shape[0], 2 * picture.shape[0]), 64)
    pic = caption(fit_tile(picture, side) if max(picture.shape[:2]) > side else picture, "input", size=13)
    return hstack([pic, maps], pad=10)
