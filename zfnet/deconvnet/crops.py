"""Unit crops: one unit's deconvnet projection under its receptive field, as numbers.

For a unit ``(image, channel, y, x)`` of a layer, the crop is the projection of that
single activation (:func:`~zfnet.deconvnet.project_units`) under the unit's
receptive field ``box = (y0, x0, y1, x1)`` (:func:`~zfnet.deconvnet.unit_box`,
unclipped).  The box is not shifted or clipped to fit the image: the crop keeps its
full size and its position relative to the unit, zero where the box leaves the image,
and ``inside`` says which pixels lie on the image.  So every crop of a layer has one
size and the unit's centre is the crop's centre.

With ``windowed=True`` the projection is computed only inside the receptive field
(:func:`~zfnet.deconvnet.project_units_windowed`) and the crop is cut from that
window directly; without, from the dense projection.  The values are the same
either way, up to float rounding inside the GEMMs.

Drawing a crop (display scaling, the checkerboard outside the image) is
:mod:`zfnet.figures.units`'s work; nothing here scales for display.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..backend import asnumpy
from ..nn import Trace, WindowUnsupported
from .project import WindowFallback, project_units
from .receptive_field import receptive_fields, unit_box
from .windowed import project_units_windowed

__all__ = ["UnitCrop", "unit_crops", "crop_with_border"]


def crop_with_border(image: np.ndarray, box: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Crop ``image[y0:y1, x0:x1]`` where the box may extend past the image.

    Parameters
    ----------
    image : ndarray (H, W, ...)
    box : (y0, x0, y1, x1)
        Half-open and unclipped (may be negative or past H, W).

    Returns
    -------
    crop : ndarray (y1 - y0, x1 - x0, ...)
        Zero outside the image.
    inside : bool ndarray (y1 - y0, x1 - x0)
        True where the crop lies on the image.
    """
    y0, x0, y1, x1 = (int(v) for v in box)
    h, w = image.shape[:2]
    crop = np.zeros((y1 - y0, x1 - x0) + image.shape[2:], image.dtype)
    inside = np.zeros((y1 - y0, x1 - x0), bool)
    sy0, sx0, sy1, sx1 = max(y0, 0), max(x0, 0), min(y1, h), min(x1, w)  # the part on the image
    if sy1 > sy0 and sx1 > sx0:
        crop[sy0 - y0: sy1 - y0, sx0 - x0: sx1 - x0] = image[sy0:sy1, sx0:sx1]
        inside[sy0 - y0: sy1 - y0, sx0 - x0: sx1 - x0] = True
    return crop, inside


@dataclass
class UnitCrop:
    """One unit's projection under its receptive field.

    Attributes
    ----------
    box : (y0, x0, y1, x1)
        The unclipped receptive field in input pixels (half-open); the whole image
        for a unit past the last spatial layer.
    raw : float32 (3, h, w)
        The projection under the box, in the network's input space (its channel
        order, normalised units); zero outside the image.
    inside : bool (h, w)
        Where the box lies on the image.
    """

    box: tuple[int, int, int, int]
    raw: np.ndarray = field(repr=False)
    inside: np.ndarray = field(repr=False)


def unit_crops(model, x_or_trace, layer: str, units, rule: str = "deconvnet",
               windowed: bool = False) -> list[UnitCrop]:
    """Project each unit to pixels and cut out its receptive field.

    Parameters
    ----------
    model : Network
    x_or_trace : array (N, 3, H, W) or Trace
        The images, or a trace of them made with ``caches=True`` up to ``layer``.
    layer : str
    units : int array, shape (U, 4)
        Rows ``(image index, channel, y, x)``.
    rule : {"deconvnet", "backprop", "guided"}
    windowed : bool
        Compute only inside each receptive field (faster; the same values up to
        float rounding).  A layer below with no windowed step means the dense pass,
        with a :class:`~zfnet.deconvnet.project.WindowFallback` warning.

    Returns
    -------
    list of UnitCrop, one per unit, in order.

    References
    ----------
    Zeiler & Fergus (2014), section 2.1 and Fig. 2.
    """
    trace = x_or_trace if isinstance(x_or_trace, Trace) else model.forward(x_or_trace, upto=layer)
    units = np.asarray(units, dtype=np.int64).reshape(-1, 4)
    size = tuple(trace.input_shape[2:])
    rfs = receptive_fields(model)
    boxes = [unit_box(rfs, layer, int(y), int(x), clip=False) if layer in rfs else (0, 0) + size
             for y, x in units[:, 2:]]
    windows = None
    if windowed and trace.activations.get(layer) is not None and trace.activations[layer].ndim == 4:
        try:
            windows, origins = project_units_windowed(model, trace, layer, units, rule, crops=True)
        except WindowUnsupported as e:  # the dense pass handles every layer: say so, then use it
            warnings.warn(f"{model.arch}: projecting {layer} densely, not windowed: {e}", WindowFallback, stacklevel=2)
    if windows is None:
        windows, origins = project_units(model, trace, layer, units, rule), np.zeros((len(units), 2), np.int64)
    windows = asnumpy(windows)  # (U, 3, S, S) windows, or (U, 3, H, W) whole images at origin 0
    out = []
    for u, box in enumerate(boxes):
        y0, x0, y1, x1 = (int(v) for v in box)
        oy, ox = int(origins[u, 0]), int(origins[u, 1])
        # the box in the window's coordinates, cut with the image's border
        raw, _ = crop_with_border(windows[u].transpose(1, 2, 0), (y0 - oy, x0 - ox, y1 - oy, x1 - ox))
        _, inside = crop_with_border(np.empty(size + (0,)), box)  # (h, w); raw is already zero outside
        out.append(UnitCrop(box=(y0, x0, y1, x1), raw=np.ascontiguousarray(raw.transpose(2, 0, 1), np.float32),
                            inside=inside))
    return out
