"""The paper's Fig. 6 on equal terms: ZFNet's 7x7/2 first layer against AlexNet's 11x11/4.

Zeiler & Fergus argue (section 4.1) that AlexNet's first layer, 11x11 filters at
stride 4, gives "a mix of extremely high and low frequency information, with little
coverage of the mid frequencies", many dead filters, and aliasing artefacts in the
second layer's projections; their 7x7 filters at stride 2 fix both.  With two
networks trained here by the identical recipe we can measure it instead of only
looking:

Dead first-layer filters
    A filter is *dead* when its RMS, ``sqrt(mean_{c,u,v} w[o,c,u,v]^2)``, is below
    5% of the largest filter RMS of the same layer (``rel=0.05``): it contributes
    almost nothing next to its neighbours.  Reported as a count and a fraction.
    We also report the fraction of first-layer channels that never fire (maximum
    activation <= 0) over the image subset.
High frequencies and aliasing in layer-2 projections
    For each shown conv2 unit, its strongest activation over the image subset is
    projected to pixels (deconvnet) and cropped to its receptive field (clipped to
    the image).  On the luminance (channel mean) of that crop, mean removed, under a
    2-D Hann window, the power spectrum ``P(f)`` is taken, ``f`` in cycles per pixel:

    * ``hf_fraction``: the share of non-DC power at ``|f| >= 1/4`` (periods of 4
      pixels or less: the scale at which a stride-4 layer aliases);
    * ``grid4`` / ``grid2``: the enrichment of power on the frequency lattice
      ``(k/4, l/4)`` / ``(k/2, l/2)``, ``(k, l) != (0, 0)``: the share of non-DC power
      in the bins nearest the lattice points divided by the share of bins they are.
      1 means no preference (white noise); well above 1 is the periodic grid that a
      stride-4 / stride-2 transposed convolution leaves when neighbouring filter
      footprints do not blend.

    Means over the units are reported; higher means more high-frequency / grid
    energy.  Both are properties of the projections as computed (float), not of the
    contrast-stretched pictures.
Accuracy
    Top-1 on the validation set, passed in (from training) or measured.

References
----------
Zeiler & Fergus (2014), section 4.1 and Fig. 6.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..backend import asnumpy
from ..deconvnet.crops import unit_crops
from ..errors import ConfigError, ShapeError
from .evolution import preprocess_images, strongest_units
from .units import display_projection
from .fig2 import select_units
from .filters import filter_grid
from .measures import LOW_FREQUENCY_CUTOFF, low_frequency_fraction
from .render import caption, fit_tile, grid, hstack, vstack

__all__ = [
    "filter_rms",
    "dead_filters",
    "spectral_measures",
    "layer_projections",
    "compare_networks",
    "DEAD_REL",
    "HF_CUTOFF",
]

DEAD_REL = 0.05
HF_CUTOFF = 0.25


def filter_rms(weight) -> np.ndarray:
    """``rms[o] = sqrt(mean_{c,u,v} w[o, c, u, v]^2)`` for OIHW weights: shape (O,)."""
    w = np.asarray(asnumpy(weight), np.float64)
    if w.ndim != 4:
        raise ShapeError(f"filter_rms: expected OIHW weights, got shape {w.shape}")
    return np.sqrt((w.reshape(w.shape[0], -1) ** 2).mean(axis=1))


def dead_filters(weight, rel: float = DEAD_REL) -> dict:
    """Filters whose RMS is below ``rel`` times the layer's largest (see the module docstring).

    Returns
    -------
    dict
        ``definition``, ``rel``, ``count``, ``total``, ``fraction``, ``dead`` (indices),
        ``rms`` (list, per filter).
    """
    rms = filter_rms(weight)
    thr = rel * rms.max() if rms.size else 0.0
    dead = np.flatnonzero(rms < thr)
    return {"definition": f"filter RMS < {rel:g} x the layer's largest filter RMS", "rel": rel,
            "count": int(dead.size), "total": int(rms.size), "fraction": float(dead.size / max(rms.size, 1)),
            "dead": dead.tolist(), "rms": rms.tolist()}


def spectral_measures(image, cutoff: float = HF_CUTOFF) -> dict:
    """``hf_fraction``, ``grid4``, ``grid2`` of a picture (see the module docstring).

    Parameters
    ----------
    image : array (3, h, w) or (h, w)
        A projection crop (any scale); colour is averaged to luminance.
    cutoff : float
        Radial frequency (cycles per pixel) above which power counts as high.

    Returns
    -------
    dict of float (NaN for a constant image or one smaller than 4 x 4)
    """
    a = np.asarray(image, np.float64)
    if a.ndim == 3:
        a = a.mean(axis=0)  # (h, w) luminance
    h, w = a.shape
    nan = {"hf_fraction": float("nan"), "grid4": float("nan"), "grid2": float("nan")}
    if h < 4 or w < 4:
        return nan
    a = (a - a.mean()) * np.outer(np.hanning(h), np.hanning(w))
    p = np.abs(np.fft.fft2(a)) ** 2  # (h, w)
    fy = np.fft.fftfreq(h)[:, None]  # cycles per pixel
    fx = np.fft.fftfreq(w)[None, :]
    p[0, 0] = 0.0  # DC (already near zero after the mean removal)
    total = p.sum()
    if total <= 0:
        return nan
    radius = np.sqrt(fy**2 + fx**2)

    def lattice(period: int) -> float:
        mask = np.zeros((h, w), bool)
        for k in range(-(period // 2), period // 2 + 1):
            for j in range(-(period // 2), period // 2 + 1):
                if k == 0 and j == 0:
                    continue
                # the bin nearest frequency (k/period, j/period), wrapped as fftfreq orders bins
                mask[int(round(k * h / period)) % h, int(round(j * w / period)) % w] = True
        return float((p[mask].sum() / total) / (mask.sum() / (h * w - 1)))

    return {"hf_fraction": float(p[radius >= cutoff].sum() / total), "grid4": lattice(4), "grid2": lattice(2)}


def layer_projections(model, x, layer: str = "conv2", units: int | Sequence[int] = 16, seed: int = 0,
                      best: dict | None = None, batch_size: int = 32):
    """Strongest-activation projections of some units of ``layer``: display tiles and raw crops.

    Returns
    -------
    dict
        ``channels`` (list), ``units`` ((U, 4) rows image, channel, y, x), ``values``,
        ``tiles`` (uint8 pictures of the unclipped receptive field, checkerboard
        outside), ``crops`` (float (3, h, w) projections clipped to the image, for
        measuring).
    """
    xp = model.xp
    best = best or strongest_units(model, x, [layer], batch_size=batch_size)
    vals, us = best[layer]
    chosen = select_units(layer, vals, units if not isinstance(units, (int, np.integer)) else int(units), seed)
    sel = us[np.asarray(chosen, np.int64)]
    imgs, inverse = np.unique(sel[:, 0], return_inverse=True)
    trace = model.forward(xp.asarray(x[imgs]), upto=layer)
    local = sel.copy()
    local[:, 0] = inverse.reshape(-1)
    transform = model.transform()
    tiles, crops = [], []
    for c in unit_crops(model, trace, layer, local):
        tiles.append(display_projection(c.raw, transform, c.inside, "symmetric"))
        rows, cols = np.flatnonzero(c.inside.any(axis=1)), np.flatnonzero(c.inside.any(axis=0))
        crops.append(c.raw[:, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])  # clipped to the image
    return {"channels": chosen, "units": sel, "values": [float(vals[c]) for c in chosen],
            "tiles": tiles, "crops": crops}


def compare_networks(
    models: Sequence[tuple[str, object]],
    images,
    val_acc: Mapping[str, float] | None = None,
    units: int = 16,
    seed: int = 0,
    tile: int = 56,
    first: str = "conv1",
    second: str = "conv2",
    rel: float = DEAD_REL,
    batch_size: int = 32,
):
    """Draw Fig. 6 for several networks and measure it.

    Parameters
    ----------
    models : sequence of (label, Network)
        E.g. ``[("AlexNet 11x11/4", alexnet), ("ZFNet 7x7/2", zfnet)]``.
    images : uint8 (N, H, W, 3)
        The subset searched for each conv2 unit's strongest activation (and for
        never-firing conv1 channels).
    val_acc : {label: top-1}, optional
    units : int
        conv2 units shown and measured per network.
    tile : int
        Cell size of the projections.

    Returns
    -------
    picture : uint8 (H, W, 3)
        One column per network: first-layer filters (per-filter scaling, then shared
        scaling, where dead filters fade to grey), then the conv2 projections.
    measures : dict
        ``{label: {"arch", "first_layer": {kernel, stride}, "dead_filters": {...},
        "never_active": {...}, "layer2": {channels, hf_fraction, grid4, grid2 (means),
        per_unit}, "val_acc"}}`` plus ``"definitions"``.
    """
    if not models:
        raise ConfigError("compare_networks needs at least one network")
    columns, measures = [], {}
    for label, model in models:
        w1 = asnumpy(model.layer(first).weight)
        x = preprocess_images(model, images)
        best = strongest_units(model, x, [first, second], batch_size=batch_size)
        never = np.flatnonzero(~(best[first][0] > 0))
        dead = dead_filters(w1, rel)
        lowfreq = low_frequency_fraction(w1)  # (C_out,)
        proj = layer_projections(model, x, second, units, seed, best=best)
        per_unit = [spectral_measures(c) for c in proj["crops"]]
        means = {k: float(np.nanmean([m[k] for m in per_unit])) if per_unit else float("nan")
                 for k in ("hf_fraction", "grid4", "grid2")}
        conv1 = model.layer(first)
        acc = None if val_acc is None else val_acc.get(label)
        measures[label] = {
            "arch": f"{model.arch}" + (f" ({model.config.get('variant')})" if model.config.get("variant") else ""),
            "first_layer": {"kernel": list(conv1.kernel_size), "stride": list(conv1.stride),
                            "filters": int(w1.shape[0])},
            "dead_filters": {k: v for k, v in dead.items() if k != "rms"},
            "low_frequency": {"median": float(np.nanmedian(lowfreq)), "per_filter": lowfreq.tolist()},
            "never_active": {"definition": f"{first} channels whose largest activation over the {len(x)} images is <= 0",
                             "count": int(never.size), "fraction": float(never.size / w1.shape[0])},
            "layer2": {"layer": second, "channels": proj["channels"], **means,
                       "per_unit": [{"channel": c, **m} for c, m in zip(proj["channels"], per_unit)]},
            "val_acc": acc,
        }
        order = model.config.get("channel_order", "RGB")
        f_per = filter_grid(w1, "per-filter", order, tile=24,
                            title=f"{first}: per-filter scaling; low-freq median {np.nanmedian(lowfreq):.2f}")
        f_shared = filter_grid(w1, "shared", order, tile=24,
                               title=f"shared scaling: {dead['count']}/{dead['total']} dead "
                                     f"(RMS < {rel:g} max)")
        cols = int(np.ceil(np.sqrt(len(proj["tiles"]))))
        p_grid = caption(grid([fit_tile(t, tile) for t in proj["tiles"]], cols, pad=3, cell=(tile, tile)),
                         f"{second} projections: hf {means['hf_fraction']:.3f}, grid4 {means['grid4']:.2f}")
        k, s = conv1.kernel_size[0], conv1.stride[0]
        head = f"{label}: {first} {k}x{k}/{s}" + (f", val top-1 {acc:.3f}" if acc is not None else "")
        columns.append(caption(vstack([f_per, f_shared, p_grid], pad=10), head, size=14))
    measures["definitions"] = {
        "dead_filters": f"first-layer filter RMS below {rel:g} times the layer's largest filter RMS",
        "low_frequency": (f"per first-layer filter, the share of its energy (2-D DFT, summed over colour channels) "
                          f"at spatial frequencies <= {LOW_FREQUENCY_CUTOFF:.4g} cycles/pixel "
                          "(zfnet.figures.measures.low_frequency_fraction); white noise gives about 0.27 for 7x7"),
        "hf_fraction": f"share of non-DC power of the luminance spectrum (Hann window, mean removed) of each "
                       f"{second} projection crop at radial frequency >= {HF_CUTOFF:g} cycles/pixel; mean over units",
        "grid4": "share of non-DC power in the bins nearest the frequency lattice (k/4, l/4), (k,l) != 0, "
                 "divided by the share of bins they are (1 = no preference); mean over units",
        "grid2": "the same for the lattice (k/2, l/2)",
        "images": int(len(images)),
    }
    return hstack(columns, pad=24), measures

