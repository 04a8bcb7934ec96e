"""Receptive fields: which input pixels a unit can see.

For a stack of layers with kernel ``k_l``, stride ``s_l`` and padding ``p_l`` along
one axis, the receptive field of a unit in layer ``l`` has

.. math::

    \\text{size}_l  = \\text{size}_{l-1} + (k_l - 1)\\,\\text{jump}_{l-1} \\\\
    \\text{jump}_l  = \\text{jump}_{l-1}\\, s_l \\\\
    \\text{start}_l = \\text{start}_{l-1} + \\big(\\tfrac{k_l - 1}{2} - p_l\\big)\\,\\text{jump}_{l-1}

starting from the pixels, ``size_0 = jump_0 = 1``, ``start_0 = 0``.  ``jump`` is the
distance in pixels between neighbouring units, ``start`` the input coordinate of the
centre of unit 0.  Unit ``i`` is centred at ``start + i * jump`` and covers
``[centre - (size-1)/2, centre + (size-1)/2]``, which may reach into the padding.

A stack of 3x3 stride-1 convolutions gives sizes 3, 5, 7, ... (the "domain of
dependence" grows by k-1 per layer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["ReceptiveField", "receptive_fields", "unit_box", "rf_table"]


@dataclass(frozen=True)
class ReceptiveField:
    """Receptive field of one layer's units along one axis (square nets: both axes).

    Attributes
    ----------
    size : int
        Side of the field in input pixels.
    stride : int
        Input pixels between neighbouring units ("jump").
    start : float
        Input coordinate of the centre of unit 0 (negative: it lies in the padding).
    """

    size: int
    stride: int
    start: float

    def centre(self, i: int) -> float:
        return self.start + i * self.stride

    def span(self, i: int) -> tuple[int, int]:
        """Half-open input interval ``[lo, hi)`` covered by unit ``i`` (unclipped)."""
        lo = self.centre(i) - (self.size - 1) / 2
        return int(math.floor(lo)), int(math.floor(lo)) + self.size


def _steps(model):
    for layer in model.layers:
        yield from layer.rf_steps()


def receptive_fields(model) -> dict[str, ReceptiveField]:
    """Receptive field of every spatial layer of ``model``, bottom to top.

    Returns
    -------
    dict
        Layer name -> :class:`ReceptiveField`.  Stops at the first layer without
        spatial structure (flatten, fully connected, global pooling).
    """
    size, jump, start = 1, 1, 0.0
    out: dict[str, ReceptiveField] = {}
    for name, step in _steps(model):
        if step is None:
            break
        k, s, p = step
        size, start, jump = size + (k - 1) * jump, start + ((k - 1) / 2 - p) * jump, jump * s
        out[name] = ReceptiveField(size, jump, start if start != int(start) else int(start))
    return out


def unit_box(model_or_rfs, layer: str, y: int, x: int, image_size=None, clip: bool = True):
    """Input box ``(y0, x0, y1, x1)`` (half-open) of unit ``(y, x)`` of ``layer``.

    Parameters
    ----------
    model_or_rfs : Network or dict from :func:`receptive_fields`
    layer : str
    y, x : int
        Unit position in the layer's map.
    image_size : (H, W), optional
        Input size; default the model's ``input_size`` (required with a dict).
    clip : bool
        Clip the box to the image (default).  Unclipped boxes may start below 0 or
        end past the image: the part of the field that lies in the padding.

    Returns
    -------
    (y0, x0, y1, x1) : tuple of int
    """
    rfs = model_or_rfs if isinstance(model_or_rfs, dict) else receptive_fields(model_or_rfs)
    if layer not in rfs:
        raise ConfigError(f"no receptive field for layer {layer!r}; spatial layers are: {', '.join(rfs)}")
    rf = rfs[layer]
    (y0, y1), (x0, x1) = rf.span(y), rf.span(x)
    if clip:
        if image_size is None:
            if isinstance(model_or_rfs, dict):
                raise ConfigError("unit_box needs image_size when given a dict of receptive fields")
            image_size = model_or_rfs.input_size
        h, w = image_size
        y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, h), min(x1, w)
    return y0, x0, y1, x1


def rf_table(model) -> str:
    """A printable table: layer, kernel, stride, padding, output size, RF size, jump, start."""
    shapes = {}
    shape = (1, 3) + tuple(model.input_size)
    for layer in model.layers:
        shape = layer.output_shape(shape)
        shapes[layer.name] = shape
    rfs = receptive_fields(model)
    steps = dict(_steps(model))
    lines = [f"{'layer':<18}{'k':>4}{'s':>4}{'p':>4}{'output':>10}{'rf size':>9}{'jump':>6}{'start':>7}"]
    lines.append(f"{'input':<18}{'':>4}{'':>4}{'':>4}{model.input_size[0]:>10}{1:>9}{1:>6}{0:>7}")
    for name, rf in rfs.items():
        k, s, p = steps[name]
        out = shapes.get(name)
        out_s = str(out[2]) if out is not None and len(out) == 4 else ""
        lines.append(f"{name:<18}{k:>4}{s:>4}{p:>4}{out_s:>10}{rf.size:>9}{rf.stride:>6}{rf.start:>7g}")
    return "\n".join(lines)
