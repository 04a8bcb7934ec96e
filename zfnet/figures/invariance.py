"""The paper's Fig. 5: how much a layer's features move when the image is transformed.

For an image ``x``, a transformation ``T_v`` (vertical translation by ``v`` pixels,
scaling by ``v``, rotation by ``v`` degrees) and a layer ``l`` with feature vector
``phi_l``, the figure plots against ``v``

* the distance between the features of the original and the transformed image, at
  layer 1 and layer 7;
* the probability the network gives the true label of the transformed image.

The paper's claim (section 4, "Feature invariance"): small transformations change
layer 1 a lot and the top layers much less (quasi-linearly for translation and
scale); the output is stable to translation and scale, and not invariant to rotation
except for rotationally symmetric objects.

Choices the paper leaves open, made here
----------------------------------------
**Distance.**  The paper plots an unnormalised Euclidean distance, whose scale
depends on the layer and the weights.  We divide by the norm of the original's
features, so layers and networks share one axis::

    d_l(v) = ||phi_l(T_v x) - phi_l(x)||_2 / ||phi_l(x)||_2

0 is "unchanged"; 1 is a change as large as the feature vector itself (two
unrelated non-negative vectors of equal norm are about 1 apart).  ``phi_l`` is the
layer's whole rectified output, flattened (ZFNet conv1: 96 x 110 x 110 values; fc7:
its 1,024 or 4,096 units).

**Layers.**  Layer 1 is the first convolution.  Layer 7 is ``fc7``; a model without
one uses its last hidden layer, the classifier's input (SqueezeNet v1.0: ``fire9``);
see :func:`zfnet.figures.occlusion.paper_layer`.

**Transformations** act on the preprocessed input (the network's own picture), about
its centre, with bilinear interpolation; whatever comes in from outside the picture
is 0, the mean colour.  Positive translation moves the content down; scale ``s``
magnifies the centre by ``s`` (the paper's 1.0 to 1.8); positive rotation turns the
content counter-clockwise.  The identity (shift 0, scale 1, angle 0) returns the
input unchanged, so its distances are exactly 0.

References
----------
Zeiler & Fergus (2014), section 4 and Fig. 5.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from ..errors import ConfigError
from .occlusion import check_layer, as_input, check_label, class_name, figure_to_array, forward_batches, paper_layer

__all__ = [
    "KINDS",
    "DEFAULT_VALUES",
    "AXIS_LABELS",
    "transform_input",
    "InvarianceCurves",
    "invariance_curves",
    "invariance_figure",
]

KINDS = ("translate", "scale", "rotate")

#: The paper's ranges: vertical translation -60 to +60 px, scale 1.0 to 1.8, rotation 0 to 350 degrees.
DEFAULT_VALUES = {
    "translate": np.arange(-60, 61, 5).astype(np.float64),
    "scale": np.round(np.arange(1.0, 1.8001, 0.05), 4),
    "rotate": np.arange(0, 351, 5).astype(np.float64),
}

AXIS_LABELS = {"translate": "vertical translation (pixels)", "scale": "scale", "rotate": "rotation (degrees)"}

_IDENTITY = {"translate": 0.0, "scale": 1.0, "rotate": 0.0}


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ConfigError(f"kind {kind!r}: expected one of {', '.join(KINDS)}")


def transform_input(x: np.ndarray, kind: str, value: float) -> np.ndarray:
    """Translate, scale or rotate a preprocessed image about its centre.

    Each output pixel ``p`` (centre at ``(row + 0.5, col + 0.5)``) reads the input at
    ``q = T^{-1}(p)`` by bilinear interpolation, 0 outside the input.  With ``c`` the
    image centre:

    * ``translate``: ``q = p - (v, 0)`` (content moves down by ``v`` pixels);
    * ``scale``: ``q = c + (p - c) / v``;
    * ``rotate``: ``q = c + R(-v)(p - c)`` in a y-up frame (content turns ``v``
      degrees counter-clockwise).

    Parameters
    ----------
    x : float32 (C, H, W)
    kind : {"translate", "scale", "rotate"}
    value : float
        Pixels, a factor (> 0) or degrees.

    Returns
    -------
    float32 (C, H, W); a copy of ``x`` for the identity.
    """
    _check_kind(kind)
    value = float(value)
    if not np.isfinite(value) or (kind == "scale" and value <= 0):
        raise ConfigError(f"{kind} value {value!r}: must be a finite number" + (" > 0" if kind == "scale" else ""))
    x = np.asarray(x, np.float32)
    if value == _IDENTITY[kind]:
        return x.copy()
    _, h, w = x.shape
    py, px = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5  # (H, W) output pixel centres
    cy, cx = h / 2.0, w / 2.0
    if kind == "translate":
        qy, qx = py - value, px
    elif kind == "scale":
        qy, qx = cy + (py - cy) / value, cx + (px - cx) / value
    else:
        t = np.deg2rad(value)
        u, v = px - cx, cy - py  # y-up frame
        su, sv = u * np.cos(t) + v * np.sin(t), -u * np.sin(t) + v * np.cos(t)
        qy, qx = cy - sv, cx + su
    fy, fx = qy - 0.5, qx - 0.5  # continuous index coordinates
    y0, x0 = np.floor(fy).astype(np.int64), np.floor(fx).astype(np.int64)
    wy, wx = fy - y0, fx - x0
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))  # a ring of zeros: taps just outside read 0

    def tap(yy, xx):
        ok = (yy >= -1) & (yy <= h) & (xx >= -1) & (xx <= w)
        val = padded[:, np.clip(yy, -1, h) + 1, np.clip(xx, -1, w) + 1]  # (C, H, W)
        return np.where(ok, val, 0.0)

    out = ((1 - wy) * (1 - wx) * tap(y0, x0) + (1 - wy) * wx * tap(y0, x0 + 1)
           + wy * (1 - wx) * tap(y0 + 1, x0) + wy * wx * tap(y0 + 1, x0 + 1))
    return out.astype(np.float32)


@dataclass
class InvarianceCurves:
    """What :func:`invariance_curves` measured for one image and one kind of transformation.

    Attributes
    ----------
    kind : str
    values : float64 (V,)
    layers : list of str
        The layers whose distances were measured (layer 1 and layer 7 by default).
    distances : {layer: float64 (V,)}
        ``||phi(T_v x) - phi(x)|| / ||phi(x)||`` (NaN where ``phi(x) = 0``).
    probability : float32 (V,)
        ``p(label | T_v x)``.
    top_class : int64 (V,)
    label : int
    label_from : str
        ``"given"``, or ``"prediction"`` when no label was given and the class
        predicted for the original stood in.
    pictures : uint8 (V, H, W, 3)
        The transformed inputs as pictures (for the figure's strip).
    """

    kind: str
    values: np.ndarray
    layers: list
    distances: dict
    probability: np.ndarray
    top_class: np.ndarray
    label: int
    label_from: str
    pictures: np.ndarray = field(repr=False)

    def to_dict(self) -> dict:
        """JSON-ready, without the pictures."""
        return {"kind": self.kind, "values": self.values.tolist(), "layers": list(self.layers),
                "distances": {k: [None if not np.isfinite(d) else round(float(d), 6) for d in v]
                              for k, v in self.distances.items()},
                "probability": np.round(self.probability, 6).tolist(), "top_class": self.top_class.tolist(),
                "label": self.label, "label_from": self.label_from}


def invariance_curves(
    model,
    image,
    kind: str,
    values: Sequence[float] | None = None,
    label: int | None = None,
    layers: Sequence[str] | None = None,
    batch_size: int = 32,
) -> InvarianceCurves:
    """Distances at layers 1 and 7 and the true-class probability over a range of one transformation.

    ``d_l(v) = ||phi_l(T_v x) - phi_l(x)||_2 / ||phi_l(x)||_2`` and
    ``p(v) = softmax(net(T_v x))[label]`` (see the module docstring).

    Parameters
    ----------
    model : Network
    image : path, PIL image, uint8 (H, W[, 3]) or float32 (3, H, W)
    kind : {"translate", "scale", "rotate"}
    values : sequence of float, optional
        Default :data:`DEFAULT_VALUES` ``[kind]`` (the paper's ranges).
    label : int, optional
        The true class; default the class predicted for the untransformed image.
    layers : sequence of str, optional
        Default ``[paper_layer(model, 1), paper_layer(model, 7)]`` (conv1, fc7).
    batch_size : int

    Returns
    -------
    InvarianceCurves

    Raises
    ------
    ConfigError
        An unknown kind or layer, an empty or non-finite list of values, a scale
        <= 0, a label out of range.

    References
    ----------
    Zeiler & Fergus (2014), section 4 and Fig. 5.
    """
    _check_kind(kind)
    values = np.asarray(DEFAULT_VALUES[kind] if values is None else values, np.float64).reshape(-1)
    if values.size == 0:
        raise ConfigError(f"{kind}: no values to try")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r}: must be a positive integer")
    layers = list(layers) if layers is not None else [paper_layer(model, 1), paper_layer(model, 7)]
    for name in layers:
        check_layer(model, name)
    label = check_label(model, label)
    x, _ = as_input(model, image)
    batch = np.stack([transform_input(x, kind, v) for v in values])  # (V, 3, H, W); checks the values
    acts, probs = forward_batches(model, np.concatenate([x[None], batch]), layers, batch_size=batch_size)
    label_from = "given"
    if label is None:
        label, label_from = int(probs[0].argmax()), "prediction"
    distances = {}
    for name in layers:
        f = acts[name].reshape(len(values) + 1, -1).astype(np.float64)  # (1 + V, D)
        norm = np.linalg.norm(f[0])
        d = np.linalg.norm(f[1:] - f[0], axis=1)
        distances[name] = d / norm if norm > 0 else np.full(len(values), np.nan)
    return InvarianceCurves(kind=kind, values=values, layers=layers, distances=distances,
                            probability=probs[1:, label], top_class=probs[1:].argmax(axis=1).astype(np.int64),
                            label=label, label_from=label_from, pictures=model.transform().inverse(batch))


def _strip(curves: Sequence[InvarianceCurves], samples: int = 5, tile: int = 44) -> tuple[np.ndarray, list]:
    """Thumbnails: one row per image, ``samples`` values spread over the range."""
    from .render import fit_tile, grid

    v = len(curves[0].values)
    idx = np.unique(np.round(np.linspace(0, v - 1, min(samples, v))).astype(int))
    tiles = [fit_tile(c.pictures[i], tile) for c in curves for i in idx]
    return grid(tiles, len(idx), pad=2, bg=(255, 255, 255)), [curves[0].values[i] for i in idx]


def invariance_figure(
    curves: Sequence[Mapping[str, InvarianceCurves]],
    names: Sequence[str],
    class_names: Sequence[str] | None = None,
    title: str = "",
) -> np.ndarray:
    """Fig. 5: rows = transformations, columns = image strip, layer 1, layer 7, output.

    Parameters
    ----------
    curves : one ``{kind: InvarianceCurves}`` per image (the same kinds and layers)
    names : a short name per image (the legend)
    class_names : sequence of str, optional
        For the legend's true classes.
    title : str

    Returns
    -------
    uint8 (H, W, 3)
    """
    from matplotlib.figure import Figure

    if not curves:
        raise ConfigError("invariance_figure needs at least one image")
    kinds = [k for k in KINDS if k in curves[0]]
    layers = curves[0][kinds[0]].layers
    if len(layers) != 2:
        raise ConfigError(f"invariance_figure draws two layers (1 and 7), got {layers}")
    fig = Figure(figsize=(16, 3.3 * len(kinds) + 0.9), dpi=100)
    axes = fig.subplots(len(kinds), 4, squeeze=False, gridspec_kw={"width_ratios": [1.05, 1, 1, 1]})
    colours = [f"C{i}" for i in range(len(curves))]
    for r, kind in enumerate(kinds):
        row = [c[kind] for c in curves]
        strip, shown = _strip(row)
        ax = axes[r, 0]
        ax.imshow(strip)
        ax.set_xticks([(i + 0.5) * strip.shape[1] / len(shown) for i in range(len(shown))])
        ax.set_xticklabels([f"{v:g}" for v in shown], fontsize=8)
        ax.set_yticks([(i + 0.5) * strip.shape[0] / len(row) for i in range(len(row))])
        ax.set_yticklabels([str(i + 1) for i in range(len(row))], fontsize=8)
        ax.set_xlabel(AXIS_LABELS[kind], fontsize=9)
        if r == 0:
            ax.set_title("the images, transformed", fontsize=10)
        for col, name in enumerate(layers, start=1):
            ax = axes[r, col]
            for i, c in enumerate(row):
                ax.plot(c.values, c.distances[name], color=colours[i], lw=1.4, marker=".", ms=3)
            ax.set_ylim(bottom=0)
            ax.set_xlabel(AXIS_LABELS[kind], fontsize=9)
            ax.set_ylabel(f"{name}: relative distance", fontsize=9)
            ax.grid(alpha=0.3)
            if r == 0:
                ax.set_title(f"layer {1 if col == 1 else 7} ({name}): "
                             r"$\|\phi(Tx)-\phi(x)\| / \|\phi(x)\|$", fontsize=10)
        ax = axes[r, 3]
        for i, c in enumerate(row):
            ax.plot(c.values, c.probability, color=colours[i], lw=1.4, marker=".", ms=3,
                    label=f"{i + 1} {names[i][:24]} ({class_name(class_names, c.label)[:18]})")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(AXIS_LABELS[kind], fontsize=9)
        ax.set_ylabel("p(true class)", fontsize=9)
        ax.grid(alpha=0.3)
        if r == 0:
            ax.set_title("output: probability of the true class", fontsize=10)
    handles, labels = axes[0, 3].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.subplots_adjust(left=0.03, right=0.99, top=1 - (0.85 if title else 0.5) / fig.get_figheight(),
                        bottom=0.75 / fig.get_figheight(), wspace=0.28, hspace=0.42)
    return figure_to_array(fig)
