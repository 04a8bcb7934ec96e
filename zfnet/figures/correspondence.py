"""The paper's Table 1: do deep layers tie an object's parts together across images?

Five images of dogs in frontal pose; in each, the same part is masked (the right
eye, the left eye, the nose) and, as a control, a random region.  For image ``i``
and layer ``l``, ``eps_i = x_i - x~_i`` is the change of the layer's feature vector
caused by the mask (``x_i`` the original's features, ``x~_i`` the masked image's).
If the network relates "left eye" in one dog to "left eye" in another, masking it
should change the features *in the same direction* in every image, so the sign
patterns of the ``eps_i`` agree.  The paper's measure (section 4.3)::

    Delta_l = sum_{i != j} H(sign(eps_i), sign(eps_j))

with ``H`` the Hamming distance; lower means more consistent.  The paper finds
the parts lower than random at layer 5 (0.067-0.079 against 0.107) and all close at
layer 7 (0.068-0.073), and reads that as layer 5 relating parts, layer 7 classes.

Choices the paper leaves open, made here
----------------------------------------
**Normalisation of Delta.**  The paper's values are below 1, so it cannot be the raw
sum of counts.  We use the fraction of feature-vector entries whose signs differ
(``sign`` in {-1, 0, +1}; an entry where the mask changed nothing has sign 0),
averaged over the 10 unordered pairs of the 5 images::

    h_ij = (1 / D) #{k : sign(eps_i[k]) != sign(eps_j[k])}
    Delta_l = mean_{i < j} h_ij    (reported with the standard deviation, ddof 0, over the pairs)

For the random control every draw masks a uniformly random position per image
(the square wholly inside the image, positions from a seeded generator); the pairs
of all draws are pooled into one mean and standard deviation.

**Layers.**  Layer 5 is ``conv5`` and layer 7 ``fc7``, both after their ReLU
(ZFNet: conv5's 256 x 13 x 13 map, before pool5); for a model without them see
:func:`zfnet.figures.occlusion.paper_layer` (SqueezeNet v1.0: ``fire8`` and
``fire9``).

**Masks.**  A square of side ``mask_scale`` x (the distance between the two eyes in
that image), centred on the hand-located part, set to 0 in the network's input (the
mean colour, as in :mod:`~zfnet.figures.occlusion`).  The part positions come from
a small JSON file (:func:`load_parts`); the committed one,
``docs/figures/correspondence_parts.json``, says how its five images were chosen
and located.  Left and right are the dog's own: its left eye is on the image's right.

References
----------
Zeiler & Fergus (2014), section 4.3, Table 1 and Fig. 8.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ConfigError, DataError
from .occlusion import as_input, check_layer, figure_to_array, forward_batches, occlude, paper_layer

__all__ = [
    "PARTS",
    "ROWS",
    "PAPER_TABLE1",
    "DEFAULT_MASK_SCALE",
    "PartImage",
    "load_parts",
    "input_point",
    "part_masks",
    "feature_signs",
    "hamming_delta",
    "changed_statistics",
    "random_corners",
    "Correspondence",
    "correspondence",
    "correspondence_figure",
]

PARTS = ("right_eye", "left_eye", "nose")
ROWS = PARTS + ("random",)
DEFAULT_MASK_SCALE = 0.6

#: Zeiler & Fergus (2014), Table 1: (mean, std) of Delta at layer 5 and layer 7.
PAPER_TABLE1 = {
    "right_eye": {"layer5": (0.067, 0.007), "layer7": (0.069, 0.015)},
    "left_eye": {"layer5": (0.069, 0.007), "layer7": (0.068, 0.013)},
    "nose": {"layer5": (0.079, 0.017), "layer7": (0.069, 0.011)},
    "random": {"layer5": (0.107, 0.017), "layer7": (0.073, 0.014)},
}


@dataclass
class PartImage:
    """One image of a parts file: its path (relative to the image folder) and its parts.

    Attributes
    ----------
    path : str
    size : (width, height)
        Of the file, in pixels, as the parts were located.
    parts : {"right_eye" | "left_eye" | "nose": (x, y)}
        Pixel column and row of each part's centre in the file's own pixels.
    object_box : (x0, y0, x1, y1) or None
        A box around the whole object (half-open, file pixels): the random
        control's masks are centred inside it.  None: anywhere in the image.
    """

    path: str
    size: tuple
    parts: dict
    object_box: tuple | None = None

    def eye_distance(self) -> float:
        """``||left_eye - right_eye||`` in file pixels."""
        (x0, y0), (x1, y1) = self.parts["right_eye"], self.parts["left_eye"]
        return float(np.hypot(x1 - x0, y1 - y0))


def load_parts(path: str | os.PathLike) -> list[PartImage]:
    """Read a parts file: ``{"images": [{"path", "size": [w, h], "right_eye": [x, y], "left_eye", "nose"}, ...]}``.

    An entry may add ``"object_box": [x0, y0, x1, y1]`` (see :class:`PartImage`).
    Other keys (how the file was made) are ignored.

    Raises
    ------
    DataError
        An unreadable file, or a missing or malformed entry, naming the file and the key.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"parts file {str(path)!r}: cannot read it as JSON ({e})") from None
    entries = doc.get("images") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or len(entries) < 2:
        raise DataError(f"parts file {str(path)!r}: expected a list 'images' of at least 2 entries")
    out = []
    for i, e in enumerate(entries):
        where = f"parts file {str(path)!r}, images[{i}]"
        if not isinstance(e, dict) or not isinstance(e.get("path"), str):
            raise DataError(f"{where}: expected an object with a 'path' string")
        parts = {}
        for key in PARTS + ("size",):
            v = e.get(key)
            if not (isinstance(v, list) and len(v) == 2 and all(isinstance(a, (int, float)) for a in v)):
                raise DataError(f"{where}: '{key}' must be a pair of numbers [x, y]" if key != "size" else
                                f"{where}: 'size' must be [width, height]")
            parts[key] = (float(v[0]), float(v[1]))
        size = parts.pop("size")
        box = e.get("object_box")
        if box is not None:
            if not (isinstance(box, list) and len(box) == 4 and all(isinstance(a, (int, float)) for a in box)
                    and box[0] < box[2] and box[1] < box[3]):
                raise DataError(f"{where}: 'object_box' must be [x0, y0, x1, y1] with x0 < x1 and y0 < y1")
            box = tuple(float(a) for a in box)
        out.append(PartImage(e["path"], (int(size[0]), int(size[1])), parts, box))
    return out


def input_point(config, size: tuple, point: tuple) -> tuple[float, float, float]:
    """Where a point of the original file lands in the network input: ``(x, y, scale)``.

    The preprocessing (:func:`zfnet.data.resize_and_crop`) resizes the ``(w, h)``
    file by ``(f_x, f_y)`` and crops at ``(left, top)``; a pixel centre moves as
    ``x' = (x + 0.5) f_x - 0.5 - left`` (the same for ``y``).  ``scale`` is the mean
    of ``f_x`` and ``f_y`` (for mask sizes).
    """
    w, h = size
    ch, cw = config.input_size
    if config.resize is None:
        fx, fy, top, left = cw / w, ch / h, 0, 0
    else:
        s = config.resize
        nh, nw = (s, int(s * w / h)) if h <= w else (int(s * h / w), s)
        fx, fy = nw / w, nh / h
        top, left = int(round((nh - ch) / 2.0)), int(round((nw - cw) / 2.0))
    x, y = point
    return (x + 0.5) * fx - 0.5 - left, (y + 0.5) * fy - 0.5 - top, (fx + fy) / 2.0


def _square(cx: float, cy: float, side: int, h: int, w: int) -> tuple[int, int]:
    """Top-left ``(y0, x0)`` of a ``side`` square centred near ``(cx, cy)``, moved wholly inside ``h x w``."""
    # the square [c + 0.5 - side/2, c + 0.5 + side/2) in continuous coordinates, its start rounded half up
    y0 = int(np.floor(cy + 1.0 - side / 2.0))
    x0 = int(np.floor(cx + 1.0 - side / 2.0))
    return min(max(y0, 0), h - side), min(max(x0, 0), w - side)


def random_corners(item: PartImage, config, side: int, input_shape: tuple, rng: np.random.Generator,
                   draws: int) -> list[tuple[int, int]]:
    """``draws`` random mask corners: centres uniform in the object box (or the image), squares moved inside.

    Returns
    -------
    list of (y0, x0), network-input pixels
    """
    h, w = input_shape
    if item.object_box is None:
        lo, hi = (0.0, 0.0), (float(w), float(h))
    else:
        x0, y0, x1, y1 = item.object_box
        # box edges as continuous coordinates (a pixel centre c covers [c - 0.5, c + 0.5))
        a = input_point(config, item.size, (x0 - 0.5, y0 - 0.5))
        b = input_point(config, item.size, (x1 - 0.5, y1 - 0.5))
        lo = (max(a[0] + 0.5, 0.0), max(a[1] + 0.5, 0.0))
        hi = (min(b[0] + 0.5, float(w)), min(b[1] + 0.5, float(h)))
    out = []
    for _ in range(draws):
        cx, cy = rng.uniform(lo[0], hi[0]) - 0.5, rng.uniform(lo[1], hi[1]) - 0.5  # back to pixel-centre coordinates
        out.append(_square(cx, cy, side, h, w))
    return out


def part_masks(item: PartImage, config, mask_scale: float, input_shape: tuple) -> tuple[int, dict]:
    """The square side and the top-left corner of each part's mask, in network-input pixels.

    Returns
    -------
    side : int
        ``max(1, round(mask_scale * eye distance * scale))``.
    corners : {part: (y0, x0)}
    """
    h, w = input_shape
    scale = input_point(config, item.size, (0.0, 0.0))[2]
    side = max(1, int(round(mask_scale * item.eye_distance() * scale)))
    if side > min(h, w):
        raise ConfigError(f"{item.path}: a mask of {side} px does not fit the {h}x{w} input (lower mask_scale)")
    corners = {}
    for part in PARTS:
        x, y, _ = input_point(config, item.size, item.parts[part])
        corners[part] = _square(x, y, side, h, w)
    return side, corners


def feature_signs(model, x: np.ndarray, masked: np.ndarray, layers: Sequence[str],
                  batch_size: int = 32) -> dict[str, np.ndarray]:
    """``sign(phi_l(x) - phi_l(masked_k))`` for each masked copy: ``{layer: int8 (K, D)}``.

    Parameters
    ----------
    x : float32 (3, H, W)
    masked : float32 (K, 3, H, W)
    layers : layer names
    """
    acts, _ = forward_batches(model, np.concatenate([x[None], masked]), list(layers), batch_size=batch_size)
    out = {}
    for name in layers:
        f = acts[name].reshape(len(masked) + 1, -1)  # (1 + K, D)
        out[name] = np.sign(f[0][None] - f[1:]).astype(np.int8)
    return out


def hamming_delta(signs: np.ndarray) -> tuple[float, float, np.ndarray]:
    """The normalised Delta of one part over n images (see the module docstring).

    ``h_ij = #{k : signs[i, k] != signs[j, k]} / D`` for every pair ``i < j``.

    Parameters
    ----------
    signs : int array (n, D), values in {-1, 0, 1}

    Returns
    -------
    mean, std : float
        Over the ``n (n - 1) / 2`` pairs (std with ddof 0).
    pairs : float64 (n (n - 1) / 2,)
        ``h_ij`` in the order (0, 1), (0, 2), ..., (n-2, n-1).
    """
    signs = np.asarray(signs)
    if signs.ndim != 2 or len(signs) < 2 or signs.shape[1] == 0:
        raise ConfigError(f"hamming_delta needs (n >= 2, D >= 1) signs, got shape {signs.shape}")
    i, j = np.triu_indices(len(signs), k=1)
    pairs = (signs[i] != signs[j]).mean(axis=1)  # (pairs,)
    return float(pairs.mean()), float(pairs.std()), pairs


def changed_statistics(signs: np.ndarray) -> dict:
    """Two checks beside Delta: how much the mask changed, and Delta among changed entries only.

    * ``changed``: the fraction of entries with ``eps != 0``, averaged over the images;
    * ``on_changed``: per pair, ``#{k : s_i[k] != s_j[k]} / #{k : s_i[k] != 0 or s_j[k] != 0}``,
      the disagreement where either image changed at all; mean and std over pairs.

    Delta itself counts a pair of zeros as agreeing, so a mask that changes little
    (a flat background) scores a low, "consistent" Delta; these two numbers show
    how much of a row's Delta is that.

    Parameters
    ----------
    signs : int array (n, D)

    Returns
    -------
    dict with ``changed``, ``on_changed_mean``, ``on_changed_std``, ``on_changed_pairs``
    """
    signs = np.asarray(signs)
    i, j = np.triu_indices(len(signs), k=1)
    differ = (signs[i] != signs[j]).sum(axis=1)
    either = ((signs[i] != 0) | (signs[j] != 0)).sum(axis=1)
    pairs = np.where(either > 0, differ / np.maximum(either, 1), 0.0)
    return {"changed": float((signs != 0).mean()), "on_changed_mean": float(pairs.mean()),
            "on_changed_std": float(pairs.std()), "on_changed_pairs": pairs}


@dataclass
class Correspondence:
    """What :func:`correspondence` measured.

    Attributes
    ----------
    layers : {"layer5": name, "layer7": name}
        Which layers played the paper's layers 5 and 7.
    table : {row: {"layer5" | "layer7": {"mean", "std", "pairs"}}}
        Rows ``right_eye``, ``left_eye``, ``nose``, ``random``.
    sides : list of int
        The mask side per image, input pixels.
    corners : list of {part: (y0, x0)}
        Each image's part masks.
    random_corners : list (draws) of list (images) of (y0, x0)
    pictures : list of uint8 (H, W, 3)
    items : list of PartImage
    mask_scale : float
    random_draws, seed : int
    """

    layers: dict
    table: dict
    sides: list
    corners: list
    random_corners: list
    pictures: list = field(repr=False)
    items: list = field(repr=False)
    mask_scale: float = DEFAULT_MASK_SCALE
    random_draws: int = 10
    seed: int = 0

    def to_dict(self) -> dict:
        """JSON-ready: the table beside the paper's values, and how it was measured."""
        return {
            "layers": self.layers,
            "table": {row: {k: {"mean": round(v["mean"], 5), "std": round(v["std"], 5),
                                "pairs": [round(float(p), 5) for p in v["pairs"]],
                                "changed": round(v["changed"], 5), "on_changed_mean": round(v["on_changed_mean"], 5),
                                "on_changed_std": round(v["on_changed_std"], 5)}
                            for k, v in cols.items()} for row, cols in self.table.items()},
            "paper": {row: {k: {"mean": m, "std": s} for k, (m, s) in cols.items()}
                      for row, cols in PAPER_TABLE1.items()},
            "normalisation": ("Delta = mean over the pairs i < j of the fraction of feature entries whose signs "
                              "(-1, 0, +1) of eps = x - x_masked differ; +- the standard deviation (ddof 0) over "
                              "the pairs; random: the pairs of every draw pooled"),
            "checks": ("changed: fraction of entries with eps != 0, mean over images; on_changed: per pair, "
                       "the fraction of differing signs among entries where either image changed; mean and std"),
            "mask": f"a square of side {self.mask_scale:g} x the image's eye distance, set to 0 in the network "
                    "input (the mean colour), centred on the part",
            "mask_sides": self.sides, "mask_scale": self.mask_scale,
            "random_draws": self.random_draws, "seed": self.seed,
            "images": [{"path": it.path, "masks": {p: list(c) for p, c in cs.items()}}
                       for it, cs in zip(self.items, self.corners)],
        }


def correspondence(
    model,
    items: Sequence[PartImage],
    images_root: str | os.PathLike,
    layers: Sequence[str] | None = None,
    mask_scale: float = DEFAULT_MASK_SCALE,
    random_draws: int = 10,
    seed: int = 0,
    batch_size: int = 32,
) -> Correspondence:
    """Table 1: Delta per masked part at layers 5 and 7 (see the module docstring).

    Parameters
    ----------
    model : Network
    items : list of PartImage
        From :func:`load_parts`; at least two.
    images_root : folder the items' paths are relative to
    layers : (layer 5, layer 7), optional
        Default ``paper_layer(model, 5), paper_layer(model, 7)``.
    mask_scale : float
        Mask side as a multiple of the eye distance.
    random_draws : int
        Random masks per image for the control row (>= 1).
    seed : int
        Seed of the random positions.
    batch_size : int

    Returns
    -------
    Correspondence

    Raises
    ------
    ConfigError
        Unknown layers, fewer than two images, a mask scale <= 0, ``random_draws`` < 1.
    DataError
        An image that cannot be read.

    References
    ----------
    Zeiler & Fergus (2014), section 4.3 and Table 1.
    """
    if len(items) < 2:
        raise ConfigError(f"correspondence needs at least 2 images, got {len(items)}")
    if not (isinstance(mask_scale, (int, float)) and np.isfinite(mask_scale) and mask_scale > 0):
        raise ConfigError(f"mask_scale={mask_scale!r}: must be a positive number")
    if isinstance(random_draws, bool) or not isinstance(random_draws, (int, np.integer)) or random_draws < 1:
        raise ConfigError(f"random_draws={random_draws!r}: must be a positive integer")
    layers = list(layers) if layers is not None else [paper_layer(model, 5), paper_layer(model, 7)]
    if len(layers) != 2:
        raise ConfigError(f"correspondence takes two layers (5 and 7), got {layers}")
    for name in layers:
        check_layer(model, name)
    keys = ("layer5", "layer7")
    config = model.transform().config
    root = Path(images_root)
    rng = np.random.default_rng(seed)
    signs: dict[str, dict[str, list]] = {row: {name: [] for name in layers} for row in PARTS}
    random_signs: list[dict[str, list]] = [{name: [] for name in layers} for _ in range(random_draws)]
    sides, corners, pictures = [], [], []
    drawn: list[list] = [[] for _ in range(random_draws)]
    for item in items:
        file = root / item.path
        if not file.is_file():
            raise DataError(f"{file}: no such image (the parts file names it; give the folder it is relative to)")
        x, picture = as_input(model, file)
        h, w = x.shape[1:]
        side, where = part_masks(item, config, mask_scale, (h, w))
        rand = random_corners(item, config, side, (h, w), rng, random_draws)
        masked = np.stack([occlude(x, *where[p], side) for p in PARTS] + [occlude(x, *c, side) for c in rand])
        s = feature_signs(model, x, masked, layers, batch_size=batch_size)
        for name in layers:
            for k, part in enumerate(PARTS):
                signs[part][name].append(s[name][k])
            for d in range(random_draws):
                random_signs[d][name].append(s[name][len(PARTS) + d])
        for d in range(random_draws):
            drawn[d].append(rand[d])
        sides.append(side)
        corners.append(where)
        pictures.append(picture)
    table: dict = {}
    for part in PARTS:
        table[part] = {}
        for key, name in zip(keys, layers):
            stacked = np.stack(signs[part][name])  # (n, D)
            mean, std, pairs = hamming_delta(stacked)
            table[part][key] = {"mean": mean, "std": std, "pairs": pairs, **changed_statistics(stacked)}
    table["random"] = {}
    for key, name in zip(keys, layers):
        draws = [np.stack(random_signs[d][name]) for d in range(random_draws)]  # each (n, D)
        pairs = np.concatenate([hamming_delta(s)[2] for s in draws])
        checks = [changed_statistics(s) for s in draws]
        on_changed = np.concatenate([c["on_changed_pairs"] for c in checks])
        table["random"][key] = {"mean": float(pairs.mean()), "std": float(pairs.std()), "pairs": pairs,
                                "changed": float(np.mean([c["changed"] for c in checks])),
                                "on_changed_mean": float(on_changed.mean()), "on_changed_std": float(on_changed.std()),
                                "on_changed_pairs": on_changed}
    return Correspondence(layers=dict(zip(keys, layers)), table=table, sides=sides, corners=corners,
                          random_corners=drawn, pictures=pictures, items=list(items),
                          mask_scale=float(mask_scale), random_draws=int(random_draws), seed=int(seed))


_PART_COLOURS = {"right_eye": "#1f77b4", "left_eye": "#2ca02c", "nose": "#d62728", "random": "#ff7f0e"}
_ROW_NAMES = {"right_eye": "right eye", "left_eye": "left eye", "nose": "nose", "random": "random"}


def correspondence_figure(result: Correspondence, title: str = "") -> np.ndarray:
    """The images with their masks outlined, and the table beside the paper's values.

    Returns
    -------
    uint8 (H, W, 3)
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    n = len(result.pictures)
    fig = Figure(figsize=(max(10.0, 2.3 * n), 5.4), dpi=100)
    gs = fig.add_gridspec(2, n, height_ratios=[1, 0.75])
    for i, (pic, side, where) in enumerate(zip(result.pictures, result.sides, result.corners)):
        ax = fig.add_subplot(gs[0, i])
        ax.imshow(pic)
        boxes = [(p, c) for p, c in where.items()] + [("random", result.random_corners[0][i])]
        for part, (y0, x0) in boxes:
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), side, side, fill=False, lw=1.6,
                                   edgecolor=_PART_COLOURS[part], linestyle="--" if part == "random" else "-"))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{Path(result.items[i].path).stem[-12:]}\nmask {side} px", fontsize=8)
    ax = fig.add_subplot(gs[1, :])
    ax.axis("off")
    l5, l7 = result.layers["layer5"], result.layers["layer7"]
    head = ["", f"ours, layer 5 ({l5})", "paper, layer 5", f"ours, layer 7 ({l7})", "paper, layer 7"]
    rows = []
    for row in ROWS:
        ours = result.table[row]
        paper = PAPER_TABLE1[row]
        rows.append([_ROW_NAMES[row],
                     f"{ours['layer5']['mean']:.3f} ± {ours['layer5']['std']:.3f}",
                     f"{paper['layer5'][0]:.3f} ± {paper['layer5'][1]:.3f}",
                     f"{ours['layer7']['mean']:.3f} ± {ours['layer7']['std']:.3f}",
                     f"{paper['layer7'][0]:.3f} ± {paper['layer7'][1]:.3f}"])
    tab = ax.table(cellText=rows, colLabels=head, loc="center", cellLoc="center")
    tab.auto_set_font_size(False)
    tab.set_fontsize(10)
    tab.scale(1, 1.5)
    for r, row in enumerate(ROWS, start=1):
        tab[r, 0].get_text().set_color(_PART_COLOURS[row])
    ax.set_title(f"Delta = mean over image pairs of the fraction of differing signs of eps = x - x_masked "
                 f"(± std over pairs); random: {result.random_draws} draws, seed {result.seed}, dashed box = draw 0",
                 fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.86, bottom=0.02, hspace=0.25, wspace=0.08)
    return figure_to_array(fig)
