"""Image patches and deconvnet projections of top-k units, drawn (Fig. 2's cells).

For each mined unit -- a (layer, channel, rank) whose candidate is image ``n`` at
map position ``(y, x)`` -- we show two crops of the same input box, the unit's
receptive field ``(y0, x0, y1, x1)`` (see :func:`~zfnet.deconvnet.unit_box`):

* the **patch**: the preprocessed image (the pixels the network saw, after resize
  and crop, before normalisation) under the box;
* the **projection**: the deconvnet projection of that single activation, all
  other activations of the layer set to zero, cropped to the same box -- the
  numbers come from :func:`zfnet.deconvnet.crops.unit_crops`; this module draws them.

Borders
-------
A receptive field often reaches past the image (units near the edge; every unit of
a deep layer whose field is larger than the input).  The box is *not* shifted or
clipped to fit: the crop keeps its full size and its position relative to the unit,
and the part outside the image is filled with a grey checkerboard -- the usual
"nothing here" pattern of image editors -- in both the patch and the projection.
So every patch of a layer has the same size and the unit's centre is always at the
patch's centre.

Display scaling of projections
------------------------------
A projection is a signal in the network's input space: zero means "no
contribution", and its overall scale is that of the kept activation.  To draw it:

1. it is mapped back to pixel units channel by channel, ``q[c] = p[c] * std[c] /
   scale``, and put in RGB order (for BGR networks), so colours mean what they mean
   in the patch;
2. its contrast is stretched **per patch**, as in the paper's figures, where every
   projection spans the full grey range whatever the strength of its activation
   (the paper does not write the scaling down; its figures share no scale between
   patches).  Two stretches are offered:

   ``"symmetric"`` (default)
       ``0.5 + 0.5 * q / m`` with ``m`` the 99.5th percentile of ``|q|`` over the
       pixels inside the image, clipped to 0..1: zero is mid grey, strong signal of
       either sign reaches black or white.  The grey background of the paper's
       projections is consistent with this.
   ``"minmax"``
       ``(q - lo) / (hi - lo)`` with ``lo, hi`` the 0.5th and 99.5th percentiles:
       uses the full range but moves zero.

   The percentile (``clip=99.5``; ``clip=100`` is the plain max) matters for deep
   layers: their projections have a few very strong pixels, and stretching to the
   max leaves everything else a flat grey.  Clipping the top 0.5 % saturates those few
   pixels and makes the structure visible (measured on SqueezeNet fire9, where the
   plain max hid the outline that the 99.5 % stretch shows).

Because every patch is stretched on its own, projections show *where and what*, not
*how strongly*; the activation value is printed beside each one for that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from ..data import ImageFolder, ImageReadError, Transform, normalize
from ..deconvnet.crops import crop_with_border, unit_crops
from ..errors import ConfigError

__all__ = [
    "checkerboard",
    "crop_with_border",
    "display_projection",
    "UnitView",
    "unit_views",
    "SCALINGS",
]

SCALINGS = ("symmetric", "minmax")

#: The two greys of the out-of-image checkerboard, and its cell size in pixels.
CHECKER_COLOURS = ((204, 204, 204), (153, 153, 153))
CHECKER_CELL = 4


def checkerboard(h: int, w: int, cell: int = CHECKER_CELL, colours=CHECKER_COLOURS) -> np.ndarray:
    """A grey checkerboard, uint8 (h, w, 3): the fill for regions outside the image."""
    yy, xx = np.mgrid[0:h, 0:w]
    odd = ((yy // cell) + (xx // cell)) % 2 == 1  # (h, w)
    out = np.empty((h, w, 3), np.uint8)
    out[~odd] = colours[0]
    out[odd] = colours[1]
    return out


def display_projection(
    projection: np.ndarray,
    transform: Transform,
    inside: np.ndarray | None = None,
    scaling: str = "symmetric",
    clip: float = 99.5,
) -> np.ndarray:
    """A projection crop as an RGB picture, contrast stretched on its own.

    Parameters
    ----------
    projection : ndarray (3, h, w)
        In the network's input space (its channel order, normalised units).
    transform : Transform
        The network's preprocessing, to map back to pixel units and RGB order.
    inside : bool ndarray (h, w), optional
        Pixels on the image; the stretch uses only these, the rest becomes the
        checkerboard.  Default: all.
    scaling : {"symmetric", "minmax"}
        See the module docstring.
    clip : float
        Percentile (50..100) that maps to full intensity; 100 = the plain max.

    Returns
    -------
    ndarray, uint8 (h, w, 3)
    """
    if scaling not in SCALINGS:
        raise ConfigError(f"scaling={scaling!r}: expected one of {SCALINGS}")
    if not 50 <= clip <= 100:
        raise ConfigError(f"clip={clip}: expected a percentile between 50 and 100")
    cfg = transform.config
    q = np.asarray(projection, np.float64) * (np.asarray(cfg.std)[:, None, None] / cfg.scale)  # (3, h, w)
    if cfg.channel_order == "BGR":
        q = q[::-1]
    q = q.transpose(1, 2, 0)  # (h, w, 3)
    h, w = q.shape[:2]
    if inside is None:
        inside = np.ones((h, w), bool)
    vals = q[inside]
    if scaling == "symmetric":
        m = float(np.percentile(np.abs(vals), clip)) if vals.size else 0.0
        out = 0.5 + 0.5 * q / m if m > 0 else np.full_like(q, 0.5)
    else:
        lo, hi = (float(np.percentile(vals, 100 - clip)), float(np.percentile(vals, clip))) if vals.size else (0.0, 0.0)
        out = (q - lo) / (hi - lo) if hi > lo else np.full_like(q, 0.5)
    pic = np.clip(np.round(np.clip(out, 0, 1) * 255), 0, 255).astype(np.uint8)
    if not inside.all():
        pic[~inside] = checkerboard(h, w)[~inside]
    return pic


@dataclass
class UnitView:
    """Everything drawn for one mined unit.

    Attributes
    ----------
    layer : str
    channel, rank, image : int
        ``rank`` 0 is the strongest; ``image`` is the folder index.
    path : str
        Relative path of the image.
    y, x : int
        Position in the layer's map.
    value : float
        The activation.
    box : (y0, x0, y1, x1)
        Unclipped receptive field in input pixels (half-open).
    patch : uint8 (h, w, 3)
        The preprocessed image under the box, checkerboard outside the image.
    projection : uint8 (h, w, 3)
        The deconvnet projection under the box, stretched for display.
    inside : bool (h, w)
        Where the box lies on the image.
    raw : float32 (3, h, w)
        The projection crop before display scaling (network input space).
    """

    layer: str
    channel: int
    rank: int
    image: int
    path: str
    y: int
    x: int
    value: float
    box: tuple[int, int, int, int]
    patch: np.ndarray
    projection: np.ndarray
    inside: np.ndarray
    raw: np.ndarray = field(repr=False)


def unit_chunks(records, chunk: int = 16) -> list[tuple[str, list[int]]]:
    """How :func:`unit_views` batches records: ``[(layer, [record index, ...]), ...]``.

    Grouped by layer (in order of first appearance), ordered by image then channel
    so a chunk needs few distinct images, ``chunk`` records at a time.  A cluster
    run (:func:`zfnet.cluster.views_on_cluster`) cuts its tasks from the same chunks.
    """
    by_layer: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_layer.setdefault(r["layer"], []).append(i)
    out = []
    for layer, idxs in by_layer.items():
        idxs.sort(key=lambda i: (records[i]["image"], records[i]["channel"]))
        out += [(layer, idxs[lo: lo + chunk]) for lo in range(0, len(idxs), chunk)]
    return out


def unit_views(
    model,
    folder: ImageFolder,
    transform: Transform,
    records: Iterable[Mapping[str, Any]],
    *,
    rule: str = "deconvnet",
    scaling: str = "symmetric",
    chunk: int = 16,
    to_device: Callable[[np.ndarray], Any] | None = None,
    progress: Callable[[int], None] | None = None,
    unreadable: dict | None = None,
    decoded: dict | None = None,
) -> list[UnitView | None]:
    """Patches and projections of mined units (records from :meth:`TopK.records`).

    Units are grouped by image and projected ``chunk`` at a time, each with its own
    image's switches (:func:`~zfnet.deconvnet.crops.unit_crops`, windowed: only inside
    each unit's receptive field), after one forward pass per chunk up to the unit's layer.

    Parameters
    ----------
    model : Network
    folder : ImageFolder
        The folder that was mined (records' ``image`` indices refer to it).
    transform : Transform
        The preprocessing used for mining.
    records : iterable of mapping
        Each with ``layer, channel, rank, image, y, x, value``.
    rule : {"deconvnet", "backprop", "guided"}
    scaling : {"symmetric", "minmax"}
    chunk : int
        Units per forward/deconv pass (memory: every layer's caches for ``chunk``
        images).
    to_device : callable, optional
        Moves input batches to the model's device.
    progress : callable, optional
        Called with the number of units finished after each chunk.

    unreadable : dict, optional
        Filled with ``{image index: reason}`` for mined images that can no longer be
        read (deleted or changed since mining); their records get no view.
    decoded : dict, optional
        ``{image index: picture}`` of images already decoded (``transform.geometry``),
        used instead of decoding again, and filled with every image decoded here, so
        a caller (the gallery) and the layers after the first reuse them: each image
        is then decoded once.  Without it, nothing is kept between chunks.

    Returns
    -------
    list of UnitView or None
        In the order of ``records``; None where the record's image could not be read.
    """
    records = list(records)
    out: list[UnitView | None] = [None] * len(records)
    for layer, part in unit_chunks(records, chunk):
        images, pictures = [], []
        for n in sorted({int(records[i]["image"]) for i in part}):
            try:
                picture = decoded[n] if decoded is not None and n in decoded else transform.geometry(folder[n])
                pictures.append(picture)  # (H, W, 3) uint8
                images.append(n)
                if decoded is not None:
                    decoded[n] = picture
            except (ImageReadError, OSError) as e:  # gone or changed since it was mined
                if unreadable is not None:
                    unreadable[n] = str(getattr(e, "detail", e))
        where = {n: j for j, n in enumerate(images)}
        if progress is not None and len(where) < len({int(records[i]["image"]) for i in part}):
            progress(sum(1 for i in part if int(records[i]["image"]) not in where))
        part = [i for i in part if int(records[i]["image"]) in where]
        if not part:
            continue
        x = np.stack([normalize(p, transform.config) for p in pictures])  # (B, 3, H, W)
        if to_device is not None:
            x = to_device(x)
        units = np.array(
            [[where[int(records[i]["image"])], records[i]["channel"], records[i]["y"], records[i]["x"]]
             for i in part], np.int64)  # (U, 4)
        crops = unit_crops(model, x, layer, units, rule=rule, windowed=True)
        for u, i in enumerate(part):
            r, c = records[i], crops[u]
            patch, _ = crop_with_border(pictures[where[int(r["image"])]], c.box)
            if not c.inside.all():
                patch[~c.inside] = checkerboard(*c.inside.shape)[~c.inside]
            out[i] = UnitView(
                layer=layer, channel=int(r["channel"]), rank=int(r["rank"]), image=int(r["image"]),
                path=str(r.get("path", folder.paths[int(r["image"])])), y=int(r["y"]), x=int(r["x"]),
                value=float(r["value"]), box=c.box, patch=patch,
                projection=display_projection(c.raw, transform, c.inside, scaling), inside=c.inside, raw=c.raw,
            )
        if progress is not None:
            progress(len(part))
    return out  # type: ignore[return-value]
