"""The paper's Fig. 7: occlusion sensitivity.

A grey square slides over the image; for each of its positions the occluded image
goes through the network once.  Five panels per image (Zeiler & Fergus, section 4.2):

(a) the image (here with the square drawn where it hurt the chosen map most);
(b) for each position, the *total* activation of one layer-5 feature map,
    ``A(p) = sum_{y, x} a_c(y, x | image occluded at p)``, where ``c`` is the map
    holding the strongest single activation of the unoccluded image;
(c) that map's deconvnet projection for this image (framed), beside the
    projections of the same map's top activations in other images (from a
    ``top9.json`` of :func:`zfnet.figures.top9.run_top9`, when given);
(d) ``p(correct class | occluded at p)``;
(e) ``argmax_k p(k | occluded at p)``, the most probable class per position.

Choices the paper leaves open, made here
----------------------------------------
* **Occluder**: a square of ``size`` input pixels set to 0 in the network's input
  space, which is the dataset mean colour after preprocessing (mean subtraction);
  the same grey for every model.
* **Positions**: the square stays inside the image; its top-left corner runs over
  ``0, stride, 2 stride, ...`` and the last position ``H - size`` is added when the
  stride does not land on it, so the far edge is always covered.  A map cell is
  drawn at the square's centre; the pictures give every pixel the value of the
  position whose centre is nearest (so the maps cover the whole image).
* **Default size and stride**: 48 and 8 pixels on a 224 (or 227) input: 23 x 23 (or
  24 x 24) positions; 48 px is about a third of a conv5 unit's receptive field
  (139 px) and about one object part (a dog's eye with its surround, a wheel).
* **Layer**: the paper follows a map of layer 5, ZFNet's top convolutional layer;
  for another model :func:`top_conv_layer` gives its top convolutional block below
  the classifier (SqueezeNet v1.0: ``fire9``).
* **"Strongest feature map"**: the channel whose *largest single activation* is
  largest (the activation the deconvnet projects in panel c); :func:`occlusion_maps`
  takes ``channel=`` to choose another.

Functions shared with :mod:`~zfnet.figures.invariance` and
:mod:`~zfnet.figures.correspondence` live here too: :func:`as_input` (any picture
to one network input), :func:`forward_batches` (activations and class
probabilities of many inputs), :func:`paper_layer` (which layer of a model plays
the paper's layer 1, 5 or 7), :func:`check_label`.

References
----------
Zeiler & Fergus (2014), section 4.2 and Fig. 7.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..backend import asnumpy
from ..errors import ConfigError, DataError, ShapeError
from .render import PAGE, caption, fit_tile, grid

__all__ = [
    "OcclusionMaps",
    "occlusion_maps",
    "occluder_starts",
    "occlude",
    "nearest_centre_map",
    "map_projections",
    "occlusion_figure",
    "as_input",
    "forward_batches",
    "paper_layer",
    "top_conv_layer",
    "check_label",
    "check_layer",
    "class_name",
    "figure_to_array",
    "DEFAULT_SIZE",
    "DEFAULT_STRIDE",
]

DEFAULT_SIZE = 48
DEFAULT_STRIDE = 8


# -- helpers shared by the section-4 figures ------------------------------------------

def as_input(model, image) -> tuple[np.ndarray, np.ndarray]:
    """One picture as the network input and as the picture the network sees.

    Parameters
    ----------
    model : Network
    image : path, PIL image, uint8 array (H, W[, C]) or float32 array (3, H, W)
        A float array is taken as already preprocessed for ``model``.

    Returns
    -------
    x : float32 ndarray (3, H, W)
        After the model's preprocessing (:meth:`Network.transform <zfnet.models.Network.transform>`).
    picture : uint8 ndarray (H, W, 3)
        RGB, what ``x`` shows (for drawing).
    """
    t = model.transform()
    if isinstance(image, np.ndarray) and np.issubdtype(image.dtype, np.floating):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ShapeError(f"a preprocessed image must be float (3, H, W), got shape {image.shape}")
        x = np.ascontiguousarray(image, np.float32)
        return x, t.inverse(x)
    picture = t.geometry(image)  # (H, W, 3) uint8
    from ..data import normalize

    return normalize(picture, t.config), picture


def check_label(model, label: int | None, name: str = "label") -> int | None:
    """``label`` as an int in ``[0, num_classes)``, or None; anything else a one-line ConfigError."""
    if label is None:
        return None
    n = model.num_classes
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= int(label) < n:
        raise ConfigError(f"{name} {label!r} is out of range: {model.arch} has {n} classes (0 to {n - 1})")
    return int(label)


def check_layer(model, layer: str, what: str = "layer") -> None:
    """A one-line ConfigError unless ``model`` records an activation called ``layer``."""
    names = model.layer_names()
    if layer not in names:
        raise ConfigError(f"{what} {layer!r} does not exist in {model.arch}; its layers: {', '.join(names)}")


def class_name(names: Sequence[str] | None, k: int) -> str:
    """``names[k]`` when known, else ``"class k"``."""
    if names is not None and 0 <= k < len(names):
        return str(names[k])
    return f"class {k}"


def paper_layer(model, number: int) -> str:
    """The layer of ``model`` that plays the paper's layer ``number`` (1, 5 or 7).

    * **1**: the first feature layer (``conv1``).
    * **5**: ``conv5`` when the model has one (ZFNet, AlexNet); otherwise the last
      feature layer before the last max-pool, as conv5 is the last before pool5
      (SqueezeNet v1.0: ``fire8``, 27 x 27, receptive field 107).
    * **7**: ``fc7`` when the model has one; otherwise the last hidden layer, the
      input of the classifier: the second-to-last layer with parameters
      (SqueezeNet v1.0: ``fire9``, whose output feeds ``conv_final``).

    Raises
    ------
    ConfigError
        ``number`` is not 1, 5 or 7, or the model has no such layer.
    """
    from ..nn import MaxPool2d

    names = model.layer_names()
    features = model.feature_layer_names()
    if number == 1:
        if not features:
            raise ConfigError(f"{model.arch} has no convolutional layer to call layer 1")
        return features[0]
    if number == 5:
        if "conv5" in names:
            return "conv5"
        pools = [i for i, l in enumerate(model.layers) if isinstance(l, MaxPool2d)]
        if pools:
            below = [l.name for l in model.layers[: pools[-1]] if l.name in features]
            if below:
                return below[-1]
        raise ConfigError(f"{model.arch}: no layer plays layer 5 (no conv5, no feature layer before a max-pool)")
    if number == 7:
        if "fc7" in names:
            return "fc7"
        with_params = [l.name for l in model.layers if l.params()]
        if len(with_params) < 2:
            raise ConfigError(f"{model.arch}: no hidden layer below the classifier to call layer 7")
        return with_params[-2]
    raise ConfigError(f"paper layer {number!r}: expected 1, 5 or 7")


def top_conv_layer(model) -> str:
    """The top convolutional feature layer below the classifier: Fig. 7's "layer 5".

    ZFNet and AlexNet: ``conv5``.  SqueezeNet v1.0: ``fire9`` (13 x 13 like conv5,
    receptive field 155 against conv5's 139), the block under the classifier
    convolution ``conv_final``.
    """
    features = model.feature_layer_names()
    with_params = [l.name for l in model.layers if l.params()]
    below = [f for f in features if not with_params or f != with_params[-1]]
    if not below:
        raise ConfigError(f"{model.arch} has no convolutional feature layer below its classifier")
    return below[-1]


def forward_batches(
    model,
    x: np.ndarray | Iterable[np.ndarray],
    keep: Sequence[str],
    batch_size: int = 32,
    reduce: Callable[[str, Any], Any] | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Run inputs through the whole network in batches; keep some activations and the probabilities.

    ``p = softmax(output)``: the output of every model here is the score before the
    softmax (ZFNet's fc8, SqueezeNet's averaged ``conv_final``).  The model is put in
    evaluation mode (dropout off).

    Parameters
    ----------
    model : Network
    x : float32 array (N, 3, H, W), or an iterable of such batches
    keep : layer names whose activations to return
    batch_size : int
        Used when ``x`` is an array.
    reduce : callable ``(layer, activation batch) -> array``, optional
        Applied to each batch's activation on the device before it is kept (for
        example one channel's sum), so a long run keeps only what it needs.
    progress : callable, optional
        Called with the number of inputs finished after each batch.

    Returns
    -------
    activations : {layer: ndarray (N, ...)}
    probabilities : float32 ndarray (N, num_classes)
    """
    from ..ops.activation import softmax

    xp = model.xp
    model.eval()
    if isinstance(x, np.ndarray):
        batches: Iterable[np.ndarray] = [x[lo: lo + batch_size] for lo in range(0, len(x), batch_size)]
    else:
        batches = x
    acts: dict[str, list] = {name: [] for name in keep}
    probs = []
    for batch in batches:
        trace = model.forward(xp.asarray(batch, dtype=np.float32), keep=keep, caches=False)
        for name in keep:
            a = trace.activations[name]
            acts[name].append(asnumpy(reduce(name, a) if reduce is not None else a))
        probs.append(asnumpy(softmax(trace.output.astype(np.float32), axis=1)))
        if progress is not None:
            progress(len(batch))
    return ({k: np.concatenate(v) for k, v in acts.items()},
            np.concatenate(probs).astype(np.float32))


def figure_to_array(fig) -> np.ndarray:
    """A matplotlib ``Figure`` (Agg, no display) rendered to uint8 (H, W, 3) RGB."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


# -- occlusion -------------------------------------------------------------------------

def occluder_starts(length: int, size: int, stride: int) -> np.ndarray:
    """Top-left corners along one axis: ``0, stride, ...`` up to ``length - size``, which is always included.

    ``n = floor((length - size) / stride) + 1`` positions, plus one when
    ``(length - size)`` is not a multiple of ``stride``.

    Returns
    -------
    int64 array (n,)
    """
    if size > length:
        raise ShapeError(f"the occluder ({size} px) is larger than the image side ({length} px)")
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return np.asarray(starts, np.int64)


def occlude(x: np.ndarray, y0: int, x0: int, size: int, value: float = 0.0) -> np.ndarray:
    """A copy of ``x`` (3, H, W) with ``x[:, y0:y0+size, x0:x0+size] = value`` (0: the mean colour)."""
    out = np.array(x, np.float32, copy=True)
    out[:, y0: y0 + size, x0: x0 + size] = value
    return out


@dataclass
class OcclusionMaps:
    """What :func:`occlusion_maps` measured for one image.

    Attributes
    ----------
    layer : str
    channel : int
        The feature map followed in panel (b).
    size, stride : int
        Occluder side and step, input pixels.
    ys, xs : int64 (gy,), (gx,)
        Top-left corners of the occluder; position ``(i, j)`` covers
        ``[ys[i], ys[i] + size) x [xs[j], xs[j] + size)``.
    activation : float32 (gy, gx)
        Total activation of map ``channel`` of ``layer`` with the occluder at ``(i, j)``.
    probability : float32 (gy, gx) or None
        ``p(label)`` per position (None without a label).
    top_class : int64 (gy, gx)
        Most probable class per position.
    top_probability : float32 (gy, gx)
        Its probability.
    label : int or None
    base : dict
        The unoccluded image: ``activation`` (total of the map), ``value`` and
        ``position`` (its strongest activation and where, in map cells),
        ``probability`` (of ``label``), ``top_class``, ``top_probability``.
    x : float32 (3, H, W)
        The input (preprocessed).
    picture : uint8 (H, W, 3)
        What the network sees.
    """

    layer: str
    channel: int
    size: int
    stride: int
    ys: np.ndarray
    xs: np.ndarray
    activation: np.ndarray
    probability: np.ndarray | None
    top_class: np.ndarray
    top_probability: np.ndarray
    label: int | None
    base: dict
    x: np.ndarray = field(repr=False)
    picture: np.ndarray = field(repr=False)

    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        """Occluder centres ``(ys + size / 2, xs + size / 2)`` in input pixels."""
        return self.ys + self.size / 2.0, self.xs + self.size / 2.0

    def to_dict(self) -> dict:
        """JSON-ready: every map as nested lists."""
        return {
            "layer": self.layer, "channel": self.channel, "size": self.size, "stride": self.stride,
            "occluder": "a square set to 0 in the network input (the mean colour after preprocessing)",
            "ys": self.ys.tolist(), "xs": self.xs.tolist(), "label": self.label,
            "activation": np.round(self.activation, 5).tolist(),
            "probability": None if self.probability is None else np.round(self.probability, 6).tolist(),
            "top_class": self.top_class.tolist(), "top_probability": np.round(self.top_probability, 6).tolist(),
            "unoccluded": self.base,
        }


def occlusion_maps(
    model,
    image,
    layer: str = "conv5",
    size: int = DEFAULT_SIZE,
    stride: int = DEFAULT_STRIDE,
    batch_size: int = 32,
    label: int | None = None,
    channel: int | None = None,
    progress: bool = False,
) -> OcclusionMaps:
    """Slide a grey square over ``image`` and record panels (b), (d) and (e) of Fig. 7.

    For every position ``p`` of the occluder (see :func:`occluder_starts`), with
    ``x_p`` the input whose square at ``p`` is set to 0 (the mean colour):

    * ``activation[p] = sum_{y, x} f_c(x_p)[y, x]``, ``f_c`` map ``c`` of ``layer``;
    * ``probability[p] = softmax(net(x_p))[label]``;
    * ``top_class[p] = argmax_k softmax(net(x_p))[k]``.

    Parameters
    ----------
    model : Network
    image : path, PIL image, uint8 (H, W[, 3]) or float32 (3, H, W)
        Pictures are preprocessed for ``model``; a float array is taken as is.
    layer : str
        A spatial layer, e.g. ``"conv5"`` (:func:`top_conv_layer` gives SqueezeNet's, ``fire9``).
    size, stride : int
        Occluder side and step in input pixels (>= 1; ``size`` at most the image).
    batch_size : int
        Occluded images per forward pass.
    label : int, optional
        The correct class; without it ``probability`` is None.
    channel : int, optional
        The map to follow; default the map with the strongest single activation in
        the unoccluded image.
    progress : bool
        Show a tqdm progress bar over the positions.

    Returns
    -------
    OcclusionMaps
        Maps of shape ``(gy, gx)`` = ``(len(ys), len(xs))``.

    Raises
    ------
    ConfigError
        An unknown or non-spatial layer, a class index or channel out of range, a
        size, stride or batch size below 1.
    ShapeError
        An image smaller than the occluder.

    References
    ----------
    Zeiler & Fergus (2014), section 4.2 and Fig. 7.
    """
    for name, v in (("size", size), ("stride", stride), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ConfigError(f"{name}={v!r}: must be a positive integer")
    size, stride = int(size), int(stride)
    check_layer(model, layer)
    label = check_label(model, label)
    x, picture = as_input(model, image)
    h, w = x.shape[1:]
    if size > min(h, w):
        raise ShapeError(f"the image is {h}x{w} pixels after preprocessing, smaller than the {size}x{size} "
                         f"occluder; choose a smaller size")

    # The unoccluded image: which map, and the reference values.
    acts, probs = forward_batches(model, x[None], [layer])
    a = acts[layer][0]  # (C, h', w')
    if a.ndim != 3:
        raise ConfigError(f"layer {layer!r} of {model.arch} is not spatial (shape {a.shape}); occlusion follows a "
                          f"feature map: choose a convolutional layer such as {top_conv_layer(model)}")
    if channel is None:
        channel = int(a.reshape(a.shape[0], -1).max(axis=1).argmax())
    elif not 0 <= int(channel) < a.shape[0]:
        raise ConfigError(f"channel {channel} does not exist: {layer} has {a.shape[0]} maps (0 to {a.shape[0] - 1})")
    channel = int(channel)
    py, px = np.unravel_index(int(a[channel].argmax()), a[channel].shape)
    p0 = probs[0]
    base = {"activation": float(a[channel].sum()), "value": float(a[channel, py, px]),
            "position": [int(py), int(px)], "top_class": int(p0.argmax()), "top_probability": float(p0.max()),
            "probability": None if label is None else float(p0[label])}

    ys, xs = occluder_starts(h, size, stride), occluder_starts(w, size, stride)
    corners = [(int(y0), int(x0)) for y0 in ys for x0 in xs]

    def batches():
        for lo in range(0, len(corners), batch_size):
            yield np.stack([occlude(x, y0, x0, size) for y0, x0 in corners[lo: lo + batch_size]])

    from tqdm.auto import tqdm

    with tqdm(total=len(corners), desc=f"occluding ({len(ys)}x{len(xs)} positions)", unit="pos",
              disable=not progress, dynamic_ncols=True) as bar:
        totals, probs = forward_batches(
            model, batches(), [layer], reduce=lambda _, act: act[:, channel].sum(axis=(1, 2)), progress=bar.update)
    shape = (len(ys), len(xs))
    return OcclusionMaps(
        layer=layer, channel=channel, size=size, stride=stride, ys=ys, xs=xs,
        activation=totals[layer].reshape(shape).astype(np.float32),
        probability=None if label is None else probs[:, label].reshape(shape),
        top_class=probs.argmax(axis=1).reshape(shape).astype(np.int64),
        top_probability=probs.max(axis=1).reshape(shape),
        label=label, base=base, x=x, picture=picture,
    )


def nearest_centre_map(values: np.ndarray, ys: np.ndarray, xs: np.ndarray, size: int,
                       shape: tuple[int, int]) -> np.ndarray:
    """Spread a ``(gy, gx)`` map over the image: pixel ``(r, c)`` takes the position whose centre is nearest.

    Centres are ``ys + size / 2`` and ``xs + size / 2``; pixel ``r`` sits at ``r + 0.5``.

    Returns
    -------
    ndarray (H, W), the dtype of ``values``
    """
    def nearest(starts, n):
        centres = np.asarray(starts, np.float64) + size / 2.0
        mids = (centres[1:] + centres[:-1]) / 2.0  # boundaries between neighbouring cells
        return np.searchsorted(mids, np.arange(n) + 0.5)  # (n,) cell index per pixel

    return np.asarray(values)[np.ix_(nearest(ys, shape[0]), nearest(xs, shape[1]))]


# -- panel (c): projections of the followed map -------------------------------------------

def _resolve_images_root(doc: dict, top9_path: Path) -> Path:
    """The mined folder of a ``top9.json``: as written, else relative to the json's folder."""
    root = Path(str(doc.get("images", "")))
    if root.is_dir():
        return root
    beside = top9_path.parent / root
    if not root.is_absolute() and beside.is_dir():
        return beside
    raise DataError(f"{top9_path}: the mined image folder {str(root)!r} is not there (run from the folder "
                    "zfnet top9 ran in, or mine again)")


def map_projections(
    model,
    maps: OcclusionMaps,
    top9: str | os.PathLike | None = None,
    others: int = 5,
    image_path: str | os.PathLike | None = None,
    rule: str = "deconvnet",
) -> list[tuple[np.ndarray, str]]:
    """Panel (c): the followed map's projection for this image, then for other images.

    The first tile is the deconvnet projection of the map's strongest activation in
    ``maps.x`` (all other activations zero; :func:`zfnet.deconvnet.project_units`),
    cropped to its receptive field.  With ``top9``, up to ``others`` more follow: the
    same map's top-ranked activations over the mined folder, from other images
    (``image_path`` is left out), projected with their own images' switches.

    Returns
    -------
    list of (uint8 (h, w, 3) tile, caption)

    Raises
    ------
    ConfigError
        ``top9`` was mined with another architecture, another preprocessing or
        without ``maps.layer``.
    """
    from ..data import ImageFolder
    from ..deconvnet import receptive_fields
    from ..deconvnet.crops import unit_crops
    from .units import display_projection, unit_views

    xp = model.xp
    transform = model.transform()
    rfs = receptive_fields(model)
    if maps.layer not in rfs:
        raise ConfigError(f"{maps.layer} has no receptive field in {model.arch}; panel (c) needs a spatial layer")
    y, x = maps.base["position"]
    units = np.array([[0, maps.channel, y, x]], np.int64)
    (c,) = unit_crops(model, xp.asarray(maps.x[None]), maps.layer, units, rule=rule, windowed=True)
    tiles = [(display_projection(c.raw, transform, c.inside), "this image")]
    if top9 is None or others < 1:
        return tiles
    top9 = Path(top9)
    try:
        doc = json.loads(top9.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{top9}: not a readable top9.json ({e})") from None
    if doc.get("arch") != model.arch:
        raise ConfigError(f"{top9} was mined with {doc.get('arch')!r}, not {model.arch!r}")
    if maps.layer not in doc.get("layers", {}):
        raise ConfigError(f"{top9} has no layer {maps.layer!r} (it has {', '.join(doc.get('layers', {}))}); "
                          f"mine it with zfnet top9 --layers {maps.layer}")
    if doc.get("transform") and doc["transform"] != transform.config.to_dict():
        raise ConfigError(f"{top9} was mined with another preprocessing than these weights use")
    root = _resolve_images_root(doc, top9)
    mine = None if image_path is None else Path(image_path).resolve()
    records = sorted((r for r in doc.get("results", ())
                      if r.get("layer") == maps.layer and r.get("channel") == maps.channel),
                     key=lambda r: r["rank"])
    records = [r for r in records if mine is None or (root / r["path"]).resolve() != mine][:others]
    if not records:
        return tiles
    folder = ImageFolder(root).with_paths([r["path"] for r in records])  # index i is records[i]'s image
    local = [dict(r, image=i) for i, r in enumerate(records)]
    to_dev = (lambda a: xp.asarray(a)) if xp is not np else None
    from ..data.packed import IMAGENETTE_NAMES

    for view in unit_views(model, folder, transform, local, rule=rule, to_device=to_dev):
        if view is not None:
            parent = Path(view.path).parent.name  # an Imagenette class folder says what the image shows
            name = IMAGENETTE_NAMES.get(parent, Path(view.path).stem)[:16]
            tiles.append((view.projection, f"{name} {_short(view.value)}"))
    return tiles


# -- the figure -------------------------------------------------------------------------------

def _short(v: float) -> str:
    """A number in at most 5 characters: ``1403``, ``3.45``, ``0.012``."""
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"


def _class_colours(classes: Sequence[int]):
    """A colour per class, the most frequent first (tab10, then tab20's lighter shades)."""
    import matplotlib

    tab = list(matplotlib.colormaps["tab10"].colors) + list(matplotlib.colormaps["tab20"].colors[1::2])
    return {k: tab[i % len(tab)] for i, k in enumerate(classes)}


def occlusion_figure(
    maps: OcclusionMaps,
    tiles: Sequence[tuple[np.ndarray, str]] = (),
    class_names: Sequence[str] | None = None,
    title: str = "",
    label_source: str = "",
) -> np.ndarray:
    """Draw the five panels of Fig. 7 for one image.

    Parameters
    ----------
    maps : OcclusionMaps
    tiles : list of (uint8 tile, caption)
        Panel (c), from :func:`map_projections`; the first is this image's.
    class_names : sequence of str, optional
        Names for panels (d) and (e).
    title : str
        First line of the figure.
    label_source : str
        Said under panel (d), e.g. ``"(label from the folder name)"``.

    Returns
    -------
    uint8 (H, W, 3)
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch, Rectangle

    h, w = maps.picture.shape[:2]
    spread = lambda v: nearest_centre_map(v, maps.ys, maps.xs, maps.size, (h, w))  # noqa: E731
    fig = Figure(figsize=(17.0, 5.0), dpi=100)
    axes = fig.subplots(1, 5, gridspec_kw={"width_ratios": [1, 1.2, 1.3, 1.2, 1.0]})
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])

    # (a) the image, the square where the map lost most
    i, j = np.unravel_index(int(maps.activation.argmin()), maps.activation.shape)
    shown = maps.picture.copy()
    axes[0].imshow(shown)
    axes[0].add_patch(Rectangle((maps.xs[j] - 0.5, maps.ys[i] - 0.5), maps.size, maps.size,
                                facecolor=(0.5, 0.5, 0.5, 0.85), edgecolor="white", linewidth=1))
    axes[0].set_title(f"(a) input; square {maps.size} px,\nstride {maps.stride}, at the map's minimum", fontsize=9)

    # (b) total activation of the followed map
    im = axes[1].imshow(spread(maps.activation), cmap="jet")
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.03)
    axes[1].set_title(f"(b) {maps.layer} map {maps.channel}: total activation\n"
                      f"(unoccluded {maps.base['activation']:.3g})", fontsize=9)

    # (c) projections
    if tiles:
        size = 96
        cells = [caption(fit_tile(t, size), c[:24], size=10) for t, c in tiles]
        # this image's tile in a black frame (as the paper's black square), the others unframed
        framed = [np.pad(cell, ((3, 3), (3, 3), (0, 0)), constant_values=0 if k == 0 else PAGE[0])
                  for k, cell in enumerate(cells)]
        cols = 2 if len(framed) <= 4 else 3
        axes[2].imshow(grid(framed, cols, pad=4, bg=PAGE))
        more = "this image (framed), then other images' top activations" if len(tiles) > 1 else \
            "this image (no top9.json given)"
        axes[2].set_title(f"(c) projections of map {maps.channel}:\n{more}", fontsize=9)
    axes[2].axis("off")

    # (d) probability of the correct class
    if maps.probability is not None:
        im = axes[3].imshow(spread(maps.probability), cmap="jet", vmin=0.0, vmax=1.0)
        fig.colorbar(im, ax=axes[3], fraction=0.046, pad=0.03)
        axes[3].set_title(f"(d) p({class_name(class_names, maps.label)})\n"
                          f"unoccluded {maps.base['probability']:.3f} {label_source}".rstrip(), fontsize=9)
    else:
        axes[3].text(0.5, 0.5, "no label given", ha="center", va="center", transform=axes[3].transAxes)
        axes[3].set_title("(d) p(correct class)", fontsize=9)

    # (e) most probable class
    classes, counts = np.unique(maps.top_class, return_counts=True)
    order = [int(k) for k in classes[np.argsort(-counts, kind="stable")]]
    colours = _class_colours(order)
    rgb = np.zeros(maps.top_class.shape + (3,), np.float32)
    for k in order:
        rgb[maps.top_class == k] = colours[k][:3]
    axes[4].imshow(spread(rgb))
    total = maps.top_class.size
    shown = order[:8]
    cut = 26 if len(shown) <= 4 else 14  # one column of full names, or two of shorter ones
    handles = [Patch(color=colours[k], label=f"{class_name(class_names, k)[:cut]} "
                                             f"({100 * counts[list(classes).index(k)] / total:.0f}%)")
               for k in shown]
    axes[4].legend(handles=handles, fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.01),
                   ncol=1 if len(shown) <= 4 else 2, frameon=False, handlelength=1.0, columnspacing=0.8)
    axes[4].set_title(f"(e) most probable class\n(unoccluded: "
                      f"{class_name(class_names, maps.base['top_class'])[:22]})", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.80, bottom=0.17, wspace=0.22)
    return figure_to_array(fig)
