"""The paper's Fig. 4: how features evolve during training.

For a few units (feature maps) of each layer and a series of checkpoints (epochs),
take the unit's strongest activation over a fixed subset of training images --
strongest *for that checkpoint's weights*, so the image may change from column to
column -- and project it to pixels with the deconvnet (:mod:`zfnet.deconvnet`).
Rows are units, columns are epochs, one block per layer::

    conv1   epoch 1   epoch 2   epoch 5   ...   final
    ch 12   [proj]    [proj]    [proj]          [proj]
    ch 40   [proj]    ...

Each projection is cropped to the unit's receptive field (unclipped: the part
outside the image is a checkerboard) and contrast-stretched on its own (see
:func:`zfnet.figures.units.display_projection`).  Units are chosen at the LAST
checkpoint with :func:`zfnet.figures.select_units` (a reproducible random draw
among channels that fire at all), so the columns show those units growing into
what they finally detect.

The paper's observation: lower layers converge within a few epochs, upper layers
only after considerably more (their figure needs 40-50 epochs).

References
----------
Zeiler & Fergus (2014), section 4.2 and Fig. 4.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..deconvnet.crops import unit_crops
from ..deconvnet.topk import TopK
from ..errors import ConfigError, ShapeError
from .fig2 import select_units
from .render import PAGE, caption, fit_tile, grid, hstack, vstack
from .units import display_projection

__all__ = ["preprocess_images", "strongest_units", "project_strongest", "evolution_figure", "text_panel"]


def preprocess_images(model, images) -> np.ndarray:
    """uint8 ``(N, H, W, 3)`` RGB pictures -> ``(N, 3, h, w)`` float32 inputs for ``model``.

    Uses the model's preprocessing (:meth:`Network.transform <zfnet.models.Network.transform>`);
    an array that is already float ``(N, 3, h, w)`` is returned as it is.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ShapeError(f"images must be uint8 (N, H, W, 3) or float (N, 3, H, W), got {images.dtype} {images.shape}")
        return images.astype(np.float32, copy=False)
    if images.ndim != 4 or images.shape[3] != 3:
        raise ShapeError(f"images must be uint8 (N, H, W, 3), got shape {images.shape}")
    t = model.transform()
    return np.stack([t(im) for im in images])  # (N, 3, h, w)


def strongest_units(model, x, layers: Sequence[str], channels: dict | None = None, batch_size: int = 32):
    """For every channel of each layer, its strongest activation over the images ``x``.

    The top-1 of :class:`~zfnet.deconvnet.topk.TopK` (``k=1``), mined over ``x`` in
    batches: the same miner as ``zfnet top9``.

    Parameters
    ----------
    model : Network
    x : float array (N, 3, H, W)
    layers : conv layer names
    channels : {layer: list of channels}, optional
        Only these (default: all).
    batch_size : int

    Returns
    -------
    dict
        ``{layer: (values (C,), units (C, 4))}`` with ``units[c] = (image, c, y, x)``,
        ties to the lower image index and then the first position.
    """
    xp = model.xp
    top = max((model.layer_names().index(name), name) for name in layers)[1]
    model.eval()
    table = None
    for lo in range(0, len(x), batch_size):
        trace = model.forward(xp.asarray(x[lo : lo + batch_size]), upto=top, keep=layers, caches=False)
        if table is None:
            for name in layers:
                if trace.activations[name].ndim != 4:
                    raise ConfigError(f"{name} is not a spatial layer; Fig. 4 shows convolutional layers")
            table = TopK({name: trace.activations[name].shape[1:] for name in layers}, k=1)
        table.update_all(trace.activations, np.arange(lo, lo + len(trace.activations[top])))
    best = {}
    for name, t in table.layers.items():
        units = np.stack([t.images[:, 0], np.arange(t.channels), t.ys[:, 0], t.xs[:, 0]], axis=1).astype(np.int64)
        best[name] = (t.values[:, 0].copy(), units)  # (C,), (C, 4)
    if channels is not None:
        best = {k: (v[channels[k]], u[channels[k]]) for k, (v, u) in best.items() if k in channels}
    return best


def project_strongest(model, x, layer: str, units: np.ndarray, scaling: str = "symmetric"):
    """Deconvnet projections of ``units`` (rows ``(image, channel, y, x)``), cropped and drawn.

    Returns a list of uint8 ``(h, w, 3)`` tiles, one per unit, each the receptive
    field of its unit (checkerboard outside the image).
    """
    xp = model.xp
    units = np.asarray(units, np.int64).reshape(-1, 4)
    imgs, inverse = np.unique(units[:, 0], return_inverse=True)
    trace = model.forward(xp.asarray(x[imgs]), upto=layer)  # only the winning images, with switches
    local = units.copy()
    local[:, 0] = inverse.reshape(-1)
    transform = model.transform()
    return [display_projection(c.raw, transform, c.inside, scaling) for c in unit_crops(model, trace, layer, local)]


def evolution_figure(
    checkpoints: Sequence[tuple[str, object]],
    images,
    layers: Sequence[str] | None = None,
    units: int | dict = 4,
    tile: int = 64,
    seed: int = 0,
    scaling: str = "symmetric",
    batch_size: int = 32,
):
    """Draw Fig. 4 and return ``(picture, record)``.

    Parameters
    ----------
    checkpoints : sequence of (label, Network)
        In training order, e.g. ``[("epoch 1", m1), ..., ("final", m30)]``; all of
        one architecture.
    images : uint8 (N, H, W, 3) or float (N, 3, H, W)
        The fixed subset of training images searched for each unit's strongest
        activation.
    layers : list of str, optional
        Default: every convolutional layer.
    units : int or {layer: [channels]}
        How many units per layer (chosen at the last checkpoint), or exactly which.
    tile : int
        Cell size in pixels (projections are enlarged or shrunk to it).
    seed : int
        For the choice of units.
    scaling : {"symmetric", "minmax"}
        Projection display stretch.

    Returns
    -------
    picture : uint8 (H, W, 3)
    record : dict
        ``{"columns": [labels], "layers": {layer: {"channels": [...],
        "cells": [[{"image", "y", "x", "value"} per column] per unit]}}}``.
    """
    if not checkpoints:
        raise ConfigError("evolution_figure needs at least one checkpoint")
    labels = [str(lab) for lab, _ in checkpoints]
    final = checkpoints[-1][1]
    layers = list(layers or final.conv_layer_names())
    x = preprocess_images(final, images)
    # the units: a reproducible draw among the channels that fire in the final model
    last = strongest_units(final, x, layers, batch_size=batch_size)
    if isinstance(units, dict):
        chosen = {name: select_units(name, last[name][0], list(units[name]), seed) for name in layers}
    else:
        chosen = {name: select_units(name, last[name][0], int(units), seed) for name in layers}
    cells = {name: [[None] * len(checkpoints) for _ in chosen[name]] for name in layers}
    record = {"columns": labels, "layers": {name: {"channels": chosen[name], "cells": []} for name in layers}}
    for col, (label, model) in enumerate(checkpoints):
        if model.conv_layer_names() != final.conv_layer_names():
            raise ConfigError(f"checkpoint {label!r} is a {model.arch}, not the same architecture as the last")
        xm = x if col == len(checkpoints) - 1 else preprocess_images(model, images)
        best = last if col == len(checkpoints) - 1 else strongest_units(model, xm, layers, batch_size=batch_size)
        for name in layers:
            vals, us = best[name]
            sel = np.asarray(chosen[name], np.int64)
            tiles = project_strongest(model, xm, name, us[sel], scaling)
            for r, c in enumerate(sel):
                cells[name][r][col] = (fit_tile(tiles[r], tile), us[c], float(vals[c]))
    blocks = []
    label_w = 52
    for name in layers:
        header = hstack([text_panel("", label_w, 16)] + [text_panel(lab, tile, 16) for lab in labels], pad=3)
        rows = [header]
        for r, c in enumerate(chosen[name]):
            row_tiles = [grid([cell[0]], 1, cell=(tile, tile)) for cell in cells[name][r]]  # centred in a cell
            rows.append(hstack([text_panel(f"ch {c}", label_w, tile)] + row_tiles, pad=3))
            record["layers"][name]["cells"].append(
                [{"image": int(u[0]), "y": int(u[2]), "x": int(u[3]), "value": v} for _, u, v in cells[name][r]])
        blocks.append(caption(vstack(rows, pad=3), name, size=14))
    return vstack(blocks, pad=12), record


def text_panel(text: str, width: int, height: int, size: int = 11) -> np.ndarray:
    """A ``(height, width, 3)`` page-coloured panel with ``text`` at its top left.

    The font shrinks (down to 7 px) until the text fits the width; past that it is cut.
    """
    from PIL import Image, ImageDraw, ImageFont

    pic = Image.new("RGB", (width, height), PAGE)
    for s in range(size, 6, -1):
        try:
            font = ImageFont.load_default(size=s)
        except TypeError:  # pragma: no cover - Pillow < 10.1: one bitmap size
            font = ImageFont.load_default()
            break
        if font.getlength(text) <= width - 3:
            break
    ImageDraw.Draw(pic).text((2, 1), text, fill=(20, 20, 20), font=font)
    return np.asarray(pic)
