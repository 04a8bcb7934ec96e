"""``zfnet occlusion``, ``zfnet invariance``, ``zfnet correspondence``: the paper's section 4.

Fig. 7 (occlusion sensitivity), Fig. 5 (invariance to translation, scale and
rotation) and Table 1 (part correspondence).  Each command writes its figure (and,
for Table 1, its numbers) into ``--out FOLDER`` under a name made of the figure,
the architecture and, for occlusion, the image; ``docs/paper.md`` lists the
commands that made the committed ones.

Labels.  ``--label`` takes a class index or a class name.  Without it, an image in
a folder named by an ImageNet wnid (Imagenette's ``val/n02102040/...``) takes that
folder's class: through the weights' own class names (our Imagenette ZFNet), or
through ``--classes`` (``'wnid name'`` lines in the weights' class order, e.g.
ImageNet's ``imagenet_classes.txt`` for SqueezeNet).  Otherwise the class predicted
for the unaltered image stands in, and the figure says so.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from . import _args
from . import visualize

__all__ = ["register", "DEFAULT_PARTS"]

#: The committed hand-located springer parts (present in a source checkout).
DEFAULT_PARTS = Path(__file__).resolve().parents[2] / "docs" / "figures" / "correspondence_parts.json"

_LABEL_HELP = ("the correct class: an index or a class name (default: the image's folder when it is a wnid of the "
               "weights' classes, else the class predicted for the unaltered image)")
_CLASSES_HELP = ("text file of 'wnid name' lines in the weights' class order (ImageNet's imagenet_classes.txt for "
                 "SqueezeNet), for class names and for labels from wnid folders (default: the names stored in the "
                 "weights, if any)")
_JSON_HELP = "also write the numbers as .json beside the figure"
_OUT_HELP = "output folder (created if needed; the files zfnet writes there are replaced on a rerun)"


# -- labels and class names ----------------------------------------------------------------

def _class_table(model, classes: str | None) -> tuple[list[str] | None, list[str] | None]:
    """``(names, wnids)`` of the model's classes, each None when unknown."""
    from ..data.packed import IMAGENETTE_NAMES, read_class_names
    from ..errors import ConfigError

    if classes:
        table = read_class_names(classes)
        if len(table) != model.num_classes:
            raise ConfigError(f"--classes {classes}: {len(table)} classes listed, the weights have {model.num_classes}")
        return [n.replace("_", " ") for n in table.values()], list(table)
    names = model.config.get("class_names")
    if not names:
        return None, None
    by_name = {v: k for k, v in IMAGENETTE_NAMES.items()}
    wnids = [by_name.get(n) for n in names]
    return list(names), (wnids if all(wnids) else None)


def _resolve_label(model, text: str | None, image: str, names, wnids) -> tuple[int | None, str]:
    """``(label, where it came from)``; label None when it must be the prediction."""
    from ..errors import ConfigError
    from ..figures.occlusion import check_label

    if text is not None:
        try:
            index = int(text)
        except ValueError:
            index = None
        if index is not None:
            return check_label(model, index, "--label"), "given"
        wanted = text.strip().lower().replace("_", " ")
        for k, n in enumerate(names or ()):
            if n.lower().replace("_", " ") == wanted:
                return k, "given"
        raise ConfigError(f"--label {text!r}: not a class index (0 to {model.num_classes - 1}) nor a class name of "
                          f"{model.arch}" + ("" if names else " (no class names known: give --classes)"))
    folder = Path(image).parent.name
    if wnids and folder in wnids:
        return wnids.index(folder), f"from the folder {folder}"
    return None, "predicted (no label)"


def _stem(path: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(path).stem)


def _write_json(path: Path, doc: dict) -> Path:
    from .._files import atomic_write

    atomic_write(path, lambda fh: fh.write(json.dumps(doc, indent=1).encode("utf-8")))
    return path


# -- parsers ---------------------------------------------------------------------------------

def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "occlusion", help="Fig. 7: slide a grey square over an image; layer-5 map, class probability, top class",
        description="Occlusion sensitivity (the paper's Fig. 7): a grey square (the mean colour) slides over the "
                    "image; for each position the total activation of the layer-5 map that is strongest in the "
                    "unoccluded image, the probability of the correct class and the most probable class are "
                    "recorded. Writes OUT/occlusion_<arch>_<image>.png with panels (a)-(e); panel (c) shows the "
                    "map's projection, beside the same map's top activations in other images when --top9 gives "
                    "a top9.json of zfnet top9 over a folder.")
    visualize._add_model_args(p)
    p.add_argument("--image", required=True, metavar="FILE", help="the image")
    p.add_argument("--out", required=True, metavar="FOLDER", help=_OUT_HELP)
    p.add_argument("--layer", default=None,
                   help="the spatial layer whose strongest map is followed (default: the top convolutional layer "
                        "below the classifier: conv5 for ZFNet and AlexNet, fire9 for SqueezeNet)")
    p.add_argument("--channel", type=_args.nonnegative_int, default=None,
                   help="follow this map instead of the strongest one")
    p.add_argument("--size", type=_args.positive_int, default=48, help="occluder side in input pixels (default 48)")
    p.add_argument("--stride", type=_args.positive_int, default=8,
                   help="occluder step in input pixels (default 8: 23x23 positions on a 224 input)")
    p.add_argument("--label", default=None, metavar="C", help=_LABEL_HELP)
    p.add_argument("--classes", default=None, metavar="FILE", help=_CLASSES_HELP)
    p.add_argument("--top9", default=None, metavar="FILE",
                   help="top9.json of zfnet top9 over an image folder with this layer, for panel (c)")
    p.add_argument("--others", type=_args.nonnegative_int, default=5,
                   help="other images' projections in panel (c) (default 5)")
    p.add_argument("--batch-size", type=_args.positive_int, default=32,
                   help="occluded images per forward pass (default 32)")
    p.add_argument("--json", action="store_true", help=_JSON_HELP)
    p.set_defaults(func=run_occlusion, check=check_occlusion)

    p = sub.add_parser(
        "invariance", help="Fig. 5: feature distances at layers 1 and 7 and p(true class) under translation, "
                           "scale and rotation",
        description="The paper's Fig. 5: each image is translated vertically (-60..60 px), scaled (1.0..1.8) and "
                    "rotated (0..350 degrees); for each value, the distance between the original's and the "
                    "transformed image's features at layer 1 and layer 7 (fc7, or the last hidden layer: fire9 "
                    "for SqueezeNet), divided by the norm of the original's features, and the probability of "
                    "the true class. Writes OUT/invariance_<arch>.png: rows = transformations, columns = image "
                    "strip, layer 1, layer 7, output.")
    visualize._add_model_args(p)
    p.add_argument("--images", required=True, nargs="+", metavar="FILE", help="the images (the paper uses 5)")
    p.add_argument("--out", required=True, metavar="FOLDER", help=_OUT_HELP)
    p.add_argument("--labels", nargs="+", default=None, metavar="C",
                   help="the correct class of each image, in order (index or name; default as for occlusion)")
    p.add_argument("--classes", default=None, metavar="FILE", help=_CLASSES_HELP)
    p.add_argument("--kinds", nargs="+", default=["translate", "scale", "rotate"],
                   choices=("translate", "scale", "rotate"), help="transformations (default all three)")
    p.add_argument("--batch-size", type=_args.positive_int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--json", action="store_true", help=_JSON_HELP)
    p.set_defaults(func=run_invariance, check=check_invariance)

    p = sub.add_parser(
        "correspondence", help="Table 1: consistency of the feature change when the same face part is masked",
        description="The paper's Table 1: in each image of a parts file the right eye, the left eye and the nose "
                    "are masked in turn (a square scaled to the eye distance, the mean colour), and random "
                    "squares on the object as the control; Delta, the fraction of feature entries whose change "
                    "has a different sign, averaged over image pairs, is given as mean +- std for layer 5 and "
                    "layer 7 beside the paper's values. Writes OUT/correspondence_<arch>.json and .png.")
    visualize._add_model_args(p)
    p.add_argument("--images", required=True, metavar="FOLDER",
                   help="the folder the parts file's paths are relative to (Imagenette val)")
    p.add_argument("--parts", default=None, metavar="FILE",
                   help="parts file (default: the committed docs/figures/correspondence_parts.json of a source "
                        "checkout: five English springer images of Imagenette val)")
    p.add_argument("--out", required=True, metavar="FOLDER", help=_OUT_HELP)
    p.add_argument("--layers", nargs=2, default=None, metavar=("L5", "L7"),
                   help="the layers playing layers 5 and 7 (default conv5 fc7; SqueezeNet fire8 fire9)")
    p.add_argument("--mask-scale", type=_args.positive_float, default=0.6,
                   help="mask side as a multiple of the image's eye distance (default 0.6)")
    p.add_argument("--random", type=_args.positive_int, default=10,
                   help="random masks per image for the control row (default 10)")
    p.add_argument("--seed", type=_args.nonnegative_int, default=0, help="seed of the random masks (default 0)")
    p.add_argument("--batch-size", type=_args.positive_int, default=32, help="images per forward pass (default 32)")
    p.set_defaults(func=run_correspondence, check=check_correspondence)


# -- parse-time checks ----------------------------------------------------------------------

def _check_common(args: argparse.Namespace) -> None:
    visualize._check_model_args(args)
    _args.output_folder("--out", args.out)
    if getattr(args, "classes", None):
        _args.existing_file("--classes", args.classes)


def check_occlusion(args: argparse.Namespace) -> None:
    """Parse-time checks of ``zfnet occlusion``."""
    _check_common(args)
    _args.existing_file("--image", args.image)
    if args.top9:
        _args.existing_file("--top9", args.top9)


def check_invariance(args: argparse.Namespace) -> None:
    """Parse-time checks of ``zfnet invariance``."""
    _check_common(args)
    for image in args.images:
        _args.existing_file("--images", image)
    if args.labels is not None and len(args.labels) != len(args.images):
        raise _args.Error(f"argument --labels: {len(args.labels)} labels for {len(args.images)} images; give one "
                          "per image, in order")


def check_correspondence(args: argparse.Namespace) -> None:
    """Parse-time checks of ``zfnet correspondence``."""
    _check_common(args)
    _args.existing_folder("--images", args.images)
    if args.parts is None and not DEFAULT_PARTS.is_file():
        raise _args.Error(f"argument --parts: the default parts file {DEFAULT_PARTS} is not here (it is part of "
                          "the source repository, not of an installed package); give --parts FILE")
    _args.existing_file("--parts", args.parts or DEFAULT_PARTS)


# -- the work ---------------------------------------------------------------------------------

def _load(args: argparse.Namespace):
    weights, arch, _ = visualize.resolve_weights(args)
    caffe = (getattr(args, "prototxt", None), getattr(args, "mean", None))  # Caffe-only options, None otherwise
    model, label, _ = visualize.load_model(weights, arch, *caffe)
    return visualize._prepare(model, args.device), label


def run_occlusion(args: argparse.Namespace) -> int:
    from ..figures.occlusion import (as_input, forward_batches, map_projections, occlusion_figure, occlusion_maps,
                                     top_conv_layer)
    from ..figures.render import save_png

    t0 = time.perf_counter()
    model, weights_label = _load(args)
    layer = args.layer or top_conv_layer(model)
    visualize._check_layers(model, [layer], "--layer")
    names, wnids = _class_table(model, args.classes)
    label, source = _resolve_label(model, args.label, args.image, names, wnids)
    if label is None:  # the class predicted for the unoccluded image stands in; the figure says so
        x, _ = as_input(model, args.image)
        label = int(forward_batches(model, x[None], [])[1][0].argmax())
    maps = occlusion_maps(model, args.image, layer=layer, size=args.size, stride=args.stride,
                          batch_size=args.batch_size, label=label, channel=args.channel, progress=True)
    tiles = map_projections(model, maps, top9=args.top9, others=args.others, image_path=args.image)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"occlusion_{model.arch}_{_stem(args.image)}"
    title = (f"{weights_label}: {Path(args.image).name}, label {names[label] if names else label} ({source}); "
             f"occluder {maps.size} px, stride {maps.stride}, the mean colour")
    path = save_png(occlusion_figure(maps, tiles, names, title=title,
                                     label_source="" if source == "given" else f"({source})"), out / f"{name}.png")
    written = [path]
    if args.json:
        written.append(_write_json(out / f"{name}.json", {"image": str(args.image), "arch": model.arch,
                                                          "weights": weights_label, "label_from": source,
                                                          **maps.to_dict()}))
    drop = maps.base["probability"] - float(maps.probability.min())
    print(f"Occluded {args.image} at {maps.activation.size} positions ({len(maps.ys)}x{len(maps.xs)}, square "
          f"{maps.size} px, stride {maps.stride}) with {weights_label}: {layer} map {maps.channel} totals "
          f"{float(maps.activation.min()):.3g}..{float(maps.activation.max()):.3g} (unoccluded "
          f"{maps.base['activation']:.3g}); p(label {label}) {float(maps.probability.min()):.3f}.."
          f"{float(maps.probability.max()):.3f} (unoccluded {maps.base['probability']:.3f}, largest drop {drop:.3f}); "
          f"panel (c): {len(tiles)} projection(s); {time.perf_counter() - t0:.1f} s. Wrote "
          f"{', '.join(str(p) for p in written)}.")
    return 0


def run_invariance(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..figures.invariance import invariance_curves, invariance_figure
    from ..figures.occlusion import paper_layer
    from ..figures.render import save_png

    t0 = time.perf_counter()
    model, weights_label = _load(args)
    names, wnids = _class_table(model, args.classes)
    labels = [_resolve_label(model, None if args.labels is None else args.labels[i], image, names, wnids)
              for i, image in enumerate(args.images)]
    kinds = list(dict.fromkeys(args.kinds))
    results = []
    with tqdm(total=len(args.images) * len(kinds), desc="invariance", unit="curve", dynamic_ncols=True) as bar:
        for image, (label, _) in zip(args.images, labels):
            row = {}
            for kind in kinds:
                row[kind] = invariance_curves(model, image, kind, label=label, batch_size=args.batch_size)
                bar.update(1)
            results.append(row)
    layers = [paper_layer(model, 1), paper_layer(model, 7)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stems = [_stem(i) for i in args.images]
    told = "from the folder names or --labels" if all(s != "predicted (no label)" for _, s in labels) else \
        "partly predicted (no label known)"
    title = (f"{weights_label}: distances relative to the original's feature norm at {layers[0]} and {layers[1]}; "
             f"true class {told}")
    path = save_png(invariance_figure(results, stems, names, title=title), out / f"invariance_{model.arch}.png")
    written = [path]
    if args.json:
        doc = {"arch": model.arch, "weights": weights_label, "layers": layers,
               "distance": "||phi(T x) - phi(x)|| / ||phi(x)||",
               "images": [{"image": str(i), "label_from": s, "curves": {k: c.to_dict() for k, c in r.items()}}
                          for i, (_, s), r in zip(args.images, labels, results)]}
        written.append(_write_json(out / f"invariance_{model.arch}.json", doc))
    parts = []
    for kind in kinds:
        far = [float(r[kind].distances[layers[0]][-1]) for r in results]
        top = [float(r[kind].distances[layers[1]][-1]) for r in results]
        parts.append(f"{kind} to {results[0][kind].values[-1]:g}: {layers[0]} {min(far):.2f}..{max(far):.2f}, "
                     f"{layers[1]} {min(top):.2f}..{max(top):.2f}")
    print(f"Transformed {len(args.images)} image(s) ({', '.join(kinds)}) with {weights_label}; relative distances at "
          f"the far end of each range: {'; '.join(parts)}; {time.perf_counter() - t0:.1f} s. Wrote "
          f"{', '.join(str(p) for p in written)}.")
    return 0


def run_correspondence(args: argparse.Namespace) -> int:
    from ..figures.correspondence import PAPER_TABLE1, ROWS, correspondence, correspondence_figure, load_parts
    from ..figures.render import save_png

    t0 = time.perf_counter()
    model, weights_label = _load(args)
    if args.layers:
        visualize._check_layers(model, args.layers, "--layers")
    parts = args.parts or str(DEFAULT_PARTS)
    items = load_parts(parts)
    result = correspondence(model, items, args.images, layers=args.layers, mask_scale=args.mask_scale,
                            random_draws=args.random, seed=args.seed, batch_size=args.batch_size)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"arch": model.arch, "weights": weights_label, "parts_file": Path(parts).name, **result.to_dict()}
    written = [_write_json(out / f"correspondence_{model.arch}.json", doc)]
    title = f"{weights_label}: Table 1 on the {len(items)} images of {Path(parts).name}"
    written.append(save_png(correspondence_figure(result, title=title), out / f"correspondence_{model.arch}.png"))
    l5, l7 = result.layers["layer5"], result.layers["layer7"]
    lines = [f"{'':<10} {'layer 5 (' + l5 + ')':>18} {'paper':>14} {'layer 7 (' + l7 + ')':>18} {'paper':>14}"]
    for row in ROWS:
        t, pp = result.table[row], PAPER_TABLE1[row]
        lines.append(f"{row.replace('_', ' '):<10} {t['layer5']['mean']:>10.3f} ± {t['layer5']['std']:.3f} "
                     f"{pp['layer5'][0]:>6.3f} ± {pp['layer5'][1]:.3f} {t['layer7']['mean']:>10.3f} ± "
                     f"{t['layer7']['std']:.3f} {pp['layer7'][0]:>6.3f} ± {pp['layer7'][1]:.3f}")
    print("\n".join(lines))
    print(f"Delta = mean over image pairs of the fraction of feature entries whose sign of change differs "
          f"(± std over pairs); masks {args.mask_scale:g} x the eye distance "
          f"({', '.join(map(str, result.sides))} px), "
          f"random control {args.random} draws on the object, seed {args.seed}; {weights_label}; "
          f"{time.perf_counter() - t0:.1f} s. Wrote {', '.join(str(p) for p in written)}.")
    return 0
