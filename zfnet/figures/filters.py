"""First-layer weights as pictures.

A first-layer filter ``w[o]`` of shape ``(3, kH, kW)`` lives in the same space as an
image patch, so it can be shown as one -- once its values, which are signed and of
arbitrary scale, are mapped onto 0..255.  *How* is the question people ask ("how do
we decide the intensities?"); both answers are offered:

``"per-filter"`` (default; what the paper's figures show)
    Each filter is stretched on its own, ``(w - min w) / (max w - min w)``.  Every
    filter uses the full range, so the structure of weak filters is visible, but
    their strength cannot be compared.  The paper does not write its display
    scaling down, but its first-layer filters (Fig. 2 layer 1, Figs. 5-6) each span
    the full grey range -- per-filter contrast normalisation, the convention of the
    cuda-convnet filter display the authors' code descends from.
``"shared"``
    One stretch for all filters, from the min and max over the whole layer.
    Strengths compare; weak or dead filters fade to flat grey.  Dead filters are
    what the paper's Fig. 6 (c) diagnoses, and this view makes them obvious.

Channels are put in RGB order (Caffe networks store BGR filters).

The rows of a fully connected first layer (a network whose first layer sees the
whole image, ``y = W x``) are images too: row ``i`` of ``W``, shape ``(3 H W,)``,
reshaped to ``(3, H, W)``, is the template neuron ``i`` matches.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import ConfigError, ShapeError
from .render import caption, fit_tile, grid

__all__ = ["FILTER_SCALINGS", "filter_tiles", "filter_grid", "fc_row_tiles"]

FILTER_SCALINGS = ("per-filter", "shared")


def filter_tiles(weight: np.ndarray, scaling: str = "per-filter", channel_order: str = "RGB") -> list[np.ndarray]:
    """First-layer conv filters as RGB tiles.

    Parameters
    ----------
    weight : array (O, 3, kH, kW)
        OIHW; the input channels in ``channel_order``.
    scaling : {"per-filter", "shared"}
    channel_order : {"RGB", "BGR"}

    Returns
    -------
    list of O uint8 arrays (kH, kW, 3)
    """
    w = np.asarray(weight, np.float64)
    if w.ndim != 4 or w.shape[1] != 3:
        raise ShapeError(f"filter_tiles: expected first-layer weights (O, 3, kH, kW), got {w.shape}")
    if scaling not in FILTER_SCALINGS:
        raise ConfigError(f"scaling={scaling!r}: expected one of {FILTER_SCALINGS}")
    if channel_order.upper() == "BGR":
        w = w[:, ::-1]
    w = w.transpose(0, 2, 3, 1)  # (O, kH, kW, 3)
    if scaling == "per-filter":
        lo = w.min(axis=(1, 2, 3), keepdims=True)
        hi = w.max(axis=(1, 2, 3), keepdims=True)
    else:
        lo, hi = np.full((1, 1, 1, 1), w.min()), np.full((1, 1, 1, 1), w.max())
    span = np.where(hi > lo, hi - lo, 1.0)
    out = np.where(hi > lo, (w - lo) / span, 0.5)
    return list(np.clip(np.round(out * 255), 0, 255).astype(np.uint8))


def filter_grid(
    weight: np.ndarray,
    scaling: str = "per-filter",
    channel_order: str = "RGB",
    tile: int = 28,
    cols: int | None = None,
    title: str | None = None,
) -> np.ndarray:
    """All first-layer filters in one grid picture (uint8 (H, W, 3)).

    ``tile`` is the size each ``kH x kW`` filter is enlarged to (nearest neighbour,
    so single weights show as blocks); ``cols`` defaults to about sqrt(O).
    """
    tiles = [fit_tile(t, tile) for t in filter_tiles(weight, scaling, channel_order)]
    cols = cols or int(np.ceil(np.sqrt(len(tiles))))
    img = grid(tiles, cols, pad=2)
    if title is None:
        o, _, kh, kw = np.shape(weight)
        title = f"{o} filters {kh}x{kw}, {scaling} scaling"
    return caption(img, title)


def fc_row_tiles(
    weight: np.ndarray,
    input_shape: Sequence[int],
    rows: Sequence[int] | None = None,
    scaling: str = "per-filter",
    channel_order: str = "RGB",
) -> list[np.ndarray]:
    """Rows of a fully connected first layer reshaped to the input image.

    Parameters
    ----------
    weight : array (out, in)
        ``in`` must equal ``C * H * W`` of ``input_shape``.
    input_shape : (C, H, W)
        C = 3 (colour) or 1 (grey; shown grey).
    rows : sequence of int, optional
        Which neurons (default all).
    scaling, channel_order
        As for :func:`filter_tiles`.

    Returns
    -------
    list of uint8 arrays (H, W, 3)
    """
    w = np.asarray(weight)
    c, h, wd = (int(s) for s in input_shape)
    if w.ndim != 2 or w.shape[1] != c * h * wd:
        raise ShapeError(f"fc_row_tiles: weight {w.shape} does not take inputs of shape {tuple(input_shape)}")
    if c not in (1, 3):
        raise ShapeError(f"fc_row_tiles: input_shape {tuple(input_shape)} must have 1 or 3 channels")
    sel = w if rows is None else w[np.asarray(rows, int)]
    imgs = sel.reshape(len(sel), c, h, wd)  # (R, C, H, W): the flattening order of Flatten on NCHW
    if c == 1:
        imgs = np.repeat(imgs, 3, axis=1)  # (R, 3, H, W)
    return filter_tiles(imgs, scaling, channel_order)
