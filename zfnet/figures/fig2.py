"""The paper's Fig. 2: for each shown unit, its top 9 projections beside its top 9 patches.

One picture per layer.  Each unit is a block::

    [filter]  [3 x 3 projections]  [3 x 3 patches]      channel c, top value v
               (rank 0 1 2 / 3 4 5 / 6 7 8, strongest top left)

(the filter only for the first layer, whose weights are themselves an image), and
the blocks are laid out in a grid.  Which units to show is chosen by
:func:`select_units`: the paper shows "a random subset of feature maps"; we draw
one reproducibly, preferring live channels.

References
----------
Zeiler & Fergus (2014), Fig. 2.
"""

from __future__ import annotations

import zlib
from typing import Mapping, Sequence

import numpy as np

from .units import UnitView
from ..errors import ConfigError
from .render import PAGE, caption, fit_tile, grid, hstack, vstack

__all__ = ["select_units", "unit_block", "unit_label", "layer_figure"]


def select_units(
    layer: str,
    top_values: np.ndarray,
    units: int | str | Sequence[int] = 16,
    seed: int = 0,
) -> list[int]:
    """Which channels of ``layer`` to draw.

    Parameters
    ----------
    layer : str
        Part of the seed, so layers get different draws.
    top_values : array (C,)
        Each channel's strongest mined activation (``-inf`` if none).
    units : int, "all" or sequence of int
        How many to draw at random, every channel, or exactly these.
    seed : int

    Returns
    -------
    list of int
        Sorted channel indices.  A random draw takes channels whose top value is
        positive ("live": they fired at all) first, and dead ones only if there are
        too few live ones; the draw depends only on ``(seed, layer, C, which are
        live)``, so it is the same on every run over the same data.
    """
    top_values = np.asarray(top_values)
    c = len(top_values)
    if isinstance(units, str):
        if units != "all":
            raise ConfigError(f"units={units!r}: expected a number, 'all' or a list of channels")
        return list(range(c))
    if not isinstance(units, (int, np.integer)):
        chosen = sorted({int(u) for u in units})
        bad = [u for u in chosen if not 0 <= u < c]
        if bad:
            raise ConfigError(f"layer {layer} has {c} channels; channels {bad} do not exist")
        return chosen
    n = min(int(units), c)
    rng = np.random.default_rng([seed, zlib.crc32(layer.encode("utf-8"))])
    live = np.flatnonzero(top_values > 0)
    dead = np.flatnonzero(~(top_values > 0))
    pick = list(rng.permutation(live)[:n])
    if len(pick) < n:
        pick += list(rng.permutation(dead)[: n - len(pick)])
    return sorted(int(p) for p in pick)


def _block(tiles: list[np.ndarray], k: int, tile: int) -> np.ndarray:
    cols = int(np.ceil(np.sqrt(k)))
    blank = np.full((tile, tile, 3), 255, np.uint8)  # ranks with no candidate
    tiles = [fit_tile(t, tile) for t in tiles] + [blank] * (k - len(tiles))
    return grid(tiles, cols, pad=1, cell=(tile, tile))


def unit_block(
    views: Sequence[UnitView],
    k: int = 9,
    tile: int = 48,
    filter_tile: np.ndarray | None = None,
    label: str | None = None,
) -> np.ndarray:
    """One unit: projections block beside patches block (and its filter, if given).

    Parameters
    ----------
    views : sequence of UnitView
        The unit's candidates, best first (at most ``k``).
    k : int
        Slots per block (9: a 3 x 3 block).
    tile : int
        Side of each patch in pixels.
    filter_tile : uint8 (kh, kw, 3), optional
        The unit's first-layer filter, drawn on the left.
    label : str, optional
        Caption; default ``"ch C  max V"``.

    Returns
    -------
    uint8 (H, W, 3)
    """
    views = sorted(views, key=lambda v: v.rank)[:k]
    panels = []
    if filter_tile is not None:
        panels.append(fit_tile(filter_tile, tile))
    panels.append(_block([v.projection for v in views], k, tile))
    panels.append(_block([v.patch for v in views], k, tile))
    img = hstack(panels, pad=3)
    if label is None:
        label = f"ch {views[0].channel}  max {views[0].value:.3g}" if views else "(no candidates)"
    return caption(img, label, size=11)


def unit_label(channel: int, views: Sequence[UnitView], k: int) -> str:
    """Caption of a unit: ``ch C  max V``, saying so when it fired in fewer than ``k`` images.

    ``views`` are the unit's records that fired (value > 0); an empty list is a
    dead unit, drawn with empty slots rather than zero-valued "exemplars".
    """
    if not views:
        return f"ch {channel}  DEAD: never fired"
    top = max(v.value for v in views)
    if len(views) < k:
        return f"ch {channel}  max {top:.3g}  fired in {len(views)} image{'s' if len(views) != 1 else ''}"
    return f"ch {channel}  max {top:.3g}"


def layer_figure(
    layer: str,
    views_by_channel: Mapping[int, Sequence[UnitView]],
    *,
    k: int = 9,
    tile: int = 48,
    cols: int = 4,
    filters: Mapping[int, np.ndarray] | None = None,
    title: str | None = None,
) -> np.ndarray:
    """The Fig. 2 picture of one layer: a grid of :func:`unit_block`.

    Parameters
    ----------
    layer : str
    views_by_channel : mapping channel -> views (best first)
    k, tile : int
        As in :func:`unit_block`.
    cols : int
        Unit blocks per row.
    filters : mapping channel -> uint8 (kh, kw, 3), optional
        First-layer filters to draw beside their units (layer 1 only).
    title : str, optional

    Returns
    -------
    uint8 (H, W, 3)
    """
    blocks = [
        unit_block(views_by_channel[c], k, tile, None if filters is None else filters.get(c),
                   label=unit_label(c, views_by_channel[c], k))
        for c in sorted(views_by_channel)
    ]
    body = grid(blocks, cols, pad=14, bg=PAGE)
    some = next((v for vs in views_by_channel.values() for v in vs), None)
    if title is None:
        rf = f", receptive field {some.patch.shape[0]}x{some.patch.shape[1]} px" if some is not None else ""
        title = (f"{layer}: top {k} projections (left) and image patches (right) "
                 f"for {len(blocks)} units{rf}")
    return vstack([caption(np.full((1, body.shape[1], 3), PAGE, np.uint8), title, size=14), body], pad=4)
