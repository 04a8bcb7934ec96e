"""``zfnet top9``, ``zfnet filters``, ``zfnet featuremaps``, ``zfnet demo``.

Each command shows a progress bar while it works and ends with one paragraph: what
was read, what was skipped and why, how long it took, where the outputs are.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
from pathlib import Path

import numpy as np

from . import _args

__all__ = ["register", "load_model", "demo_weights", "resolve_weights", "demo_photos", "make_demo_views"]


# -- models and weights ----------------------------------------------------------

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_model(weights: str | os.PathLike | None, arch: str | None = None, prototxt: str | None = None,
               mean: str | None = None):
    """Build ``arch`` and load ``weights`` into it; returns ``(model, label, digest)``.

    ``prototxt`` / ``mean`` (Caffe only): the network definition to build instead of
    the one inside the ``.caffemodel``, and a ``.binaryproto`` mean image.

    With ``weights=None`` the model keeps its random initialisation (the label
    says so).  Loading goes through :func:`zfnet.weights.load`, which knows every
    supported format.
    """
    from ..errors import WeightsError
    from ..models import build
    from ..weights import load

    if weights is None:
        model = build(arch or "zfnet")
        return model, f"randomly initialised {model.arch} (no trained weights)", "random-init"
    path = Path(weights)
    if not path.is_file():
        raise WeightsError(f"weights file {str(path)!r} does not exist")
    digest = _sha256(path)
    extra = {k: v for k, v in (("arch", arch), ("prototxt", prototxt), ("mean", mean)) if v}
    model = load(path, **extra)
    return model, f"{model.arch} weights {path.name} (sha256 {digest[:12]})", digest


def demo_weights() -> tuple[str | None, str | None, str]:
    """The default weights of ``zfnet demo`` (and top9, filters, featuremaps).

    Returns ``(path or None, arch or None, words saying which)``: the trained ZFNet
    shipped inside the package (:func:`zfnet.weights.bundled_weights_path`,
    ``zfnet/_weights/zfnet-imagenette.npz``), or ``(None, None, why)`` when that file
    is missing (a broken install, or a checkout whose ``weights/zfnet-imagenette.npz``
    is gone).  A randomly initialised network is never chosen silently: the
    commands ask for ``--random-weights``.
    """
    from .. import weights

    path = weights.bundled_weights_path()
    if path is not None:
        return str(path), "zfnet", f"the trained ZFNet shipped with zfnet ({path})"
    return None, None, ("the trained ZFNet that ships with zfnet (zfnet/_weights/zfnet-imagenette.npz) is missing "
                        "from this installation")


def resolve_weights(args: argparse.Namespace) -> tuple[str | None, str | None, str]:
    """``(weights, arch, words)`` from ``--weights``, ``--random-weights`` and ``--arch``.

    Raises
    ------
    WeightsError
        No ``--weights``, no ``--random-weights`` and no bundled weights.
    """
    if args.random_weights:
        arch = args.arch or "zfnet"
        return None, arch, f"random weights (--random-weights): an untrained {arch}"
    if args.weights:
        return args.weights, args.arch, f"{args.weights} (--weights)"
    path, arch, why = demo_weights()
    if path is None:
        from ..errors import WeightsError

        raise WeightsError(f"no trained weights: {why}. Reinstall zfnet, give --weights FILE, or give "
                           "--random-weights to see the machinery with an untrained network")
    return path, args.arch or arch, why


def demo_photos() -> list[tuple[str, "Image.Image"]]:  # noqa: F821
    """Photographs that ship inside installed dependencies, as ``(name, RGB image)``.

    Always: matplotlib's ``sample_data/grace_hopper.jpg`` (matplotlib is a runtime
    dependency).  When scikit-image is installed, also the photographs bundled in
    its wheel (``skimage/data``: astronaut, chelsea the cat, coffee, rocket, two
    motorcycles, camera man, brick, grass, gravel) -- read straight from the package
    folder, never through ``skimage.data``'s downloader.
    """
    from PIL import Image

    from ..data import open_image

    photos = []
    import matplotlib

    mpl = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if mpl.is_file():
        photos.append(("grace_hopper", open_image(mpl)))
    try:
        import skimage

        data_dir = Path(skimage.__file__).parent / "data"
        # Bundled in the scikit-image wheel (checked for 0.26); pooch-fetched ones are never asked for.
        for name in ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                     "motorcycle_right.png", "camera.png", "brick.png", "grass.png", "gravel.png"):
            p = data_dir / name
            if p.is_file():
                photos.append((p.stem, open_image(p)))
    except ImportError:
        pass
    del Image
    return photos


def make_demo_views(out: Path, n_views: int = 300, seed: int = 0) -> tuple[Path, list[str]]:
    """Write ``n_views`` deterministic crops and flips of :func:`demo_photos` as JPEGs.

    Each view is a random square crop (side 35-100% of the photo's shorter side,
    random position) of a photo taken in turn, mirrored left-right half the time,
    resized to 256 x 256.  The same ``seed`` gives the same files.  Views that an
    earlier call wrote under ``out`` are deleted first.

    Returns
    -------
    (folder, names of the photos used)
    """
    from PIL import Image, ImageOps

    photos = demo_photos()
    if not photos:
        from ..errors import DataError

        raise DataError("no bundled photographs found (matplotlib's sample_data is missing)")
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*/view_*.jpg"):  # an earlier run's views (maybe more of them) are not mined again
        old.unlink()
    for i in range(n_views):
        name, img = photos[i % len(photos)]
        w, h = img.size
        side = int(min(w, h) * rng.uniform(0.35, 1.0))
        x0 = int(rng.integers(0, w - side + 1))
        y0 = int(rng.integers(0, h - side + 1))
        view = img.crop((x0, y0, x0 + side, y0 + side)).resize((256, 256), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            view = ImageOps.mirror(view)
        sub = out / name
        sub.mkdir(exist_ok=True)
        view.save(sub / f"view_{i:04d}.jpg", quality=90)
    return out, [n for n, _ in photos]


# -- commands --------------------------------------------------------------------

_WEIGHTS_HELP = ("trained weights file (zfnet .npz, PyTorch .pth or Caffe .caffemodel); default: the trained ZFNet "
                 "that ships with zfnet (zfnet/_weights/zfnet-imagenette.npz, trained on Imagenette)")
_OUT_FOLDER_NOTE = "created if needed; files zfnet writes there are replaced on a rerun"


def _add_model_args(p: argparse.ArgumentParser, device: bool = True) -> None:
    from ..models import ARCHITECTURES

    which = p.add_mutually_exclusive_group()
    which.add_argument("--weights", metavar="FILE", help=_WEIGHTS_HELP)
    which.add_argument("--random-weights", action="store_true",
                       help="use a randomly initialised network instead of trained weights (shows the machinery, "
                            "not learned features)")
    p.add_argument("--arch", default=None, choices=ARCHITECTURES, metavar="ARCH",
                   help=f"architecture ({', '.join(ARCHITECTURES)}); default: read from the weights file; with "
                        "--random-weights, the network to build (default zfnet)")
    p.add_argument("--prototxt", default=None, metavar="FILE",
                   help="Caffe only: build the network from this .prototxt instead of the definition inside the "
                        ".caffemodel (docs/weights.md)")
    p.add_argument("--mean", default=None, metavar="FILE",
                   help="Caffe only: a .binaryproto mean image to subtract (default: the definition's or "
                        "ImageNet's mean pixel)")
    if device:
        p.add_argument("--device", default="cpu", choices=("cpu", "gpu"),
                       help="where to compute: cpu, or gpu (needs CuPy and a CUDA device) (default cpu)")


def _check_model_args(args: argparse.Namespace) -> None:
    # --weights is checked by load_model, the first step of every command (before any other work)
    if getattr(args, "device", None):
        _args.check_device("--device", args.device)
    for flag in ("prototxt", "mean"):
        value = getattr(args, flag, None)
        if value is not None:
            _args.existing_file(f"--{flag}", value)
            if not args.weights:
                raise argparse.ArgumentTypeError(f"argument --{flag}: applies to a Caffe --weights file; "
                                                 "give --weights FILE.caffemodel")


def _filters_paths(out: str, scaling: str) -> list[Path] | None:
    """The files ``zfnet filters --out OUT.png`` writes (None when OUT is a folder).

    The per-filter picture takes the given name and the shared one adds ``_shared``,
    as ``filters_<layer>.png`` and ``filters_<layer>_shared.png`` do in a folder.
    """
    path = Path(out)
    if path.suffix.lower() != ".png":
        return None
    if scaling == "both":
        return [path, path.with_name(f"{path.stem}_shared{path.suffix}")]
    return [path]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("top9", help="mine each unit's top-k images over a folder; figures and a gallery",
                       description="For every channel of the chosen layers, find the k strongest activations over "
                                   "an image folder (one per image), project chosen units to pixels with the "
                                   "deconvnet, and write top9.json, Fig. 2 style PNGs (fig2_<layer>.png), the "
                                   "first-layer filters (filters_<layer>.png, filters_<layer>_shared.png) and an "
                                   "offline HTML gallery (gallery/index.html) into --out.")
    _add_model_args(p)
    p.add_argument("--images", required=True, metavar="FOLDER", help="image folder (searched recursively)")
    p.add_argument("--out", required=True, metavar="FOLDER", help=f"output folder ({_OUT_FOLDER_NOTE})")
    p.add_argument("--layers", nargs="+", default=None,
                   help="layers to mine, e.g. conv1 conv5 (default: every conv layer; names: zfnet rf --arch ARCH)")
    p.add_argument("--k", type=_args.positive_int, default=9, help="top k images per channel (default 9)")
    p.add_argument("--units", type=_args.units, default=16,
                   help="units drawn per layer: a number (chosen reproducibly), 'all', or channels like 3,17,40 "
                        "(default 16); every channel is mined and written to top9.json regardless")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from OUT/topk_state.npz (with --workers/--scheduler: mine only "
                        "the shards missing from OUT/shards/)")
    p.add_argument("--batch-size", type=_args.positive_int, default=32,
                   help="images per forward pass while mining (default 32)")
    p.add_argument("--decode-threads", type=_args.nonnegative_int, default=2,
                   help="image decoding threads per process, 0 to decode on the computing thread (default 2; "
                        "before the Dask flags this was --workers)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=_args.positive_int, default=None, metavar="N",
                       help="mine and project on a local Dask cluster of N worker processes, one thread each "
                            "(needs pip install 'zfnet[dask]'); top9.json is identical to a single-process run")
    where.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="mine and project on an existing Dask cluster (e.g. tcp://host:8786, started with "
                            "'dask scheduler' and 'dask worker'); every worker must read the images at the same "
                            "path and run the same zfnet")
    p.add_argument("--shard-size", type=_args.positive_int, default=None, metavar="N",
                   help="with --workers/--scheduler: images per task, rounded up to a multiple of --batch-size "
                        "(default 512); finished shards are saved in OUT/shards/ for --resume")
    p.add_argument("--seed", type=_args.nonnegative_int, default=0, help="seed for choosing units (default 0)")
    p.add_argument("--rule", default="deconvnet", choices=("deconvnet", "backprop", "guided"),
                   help="ReLU rule on the way down: deconvnet rectifies the projected signal (the paper), "
                        "backprop masks it by the forward input, guided does both (default deconvnet)")
    p.add_argument("--tile", type=_args.positive_int, default=48,
                   help="patch size in the figures, pixels (default 48)")
    p.add_argument("--no-gallery", action="store_true", help="do not write the HTML gallery (OUT/gallery/)")
    p.add_argument("--limit", type=_args.positive_int, default=None,
                   help="mine only the first N image files, in folder order (default: all)")
    p.set_defaults(func=run_top9_cmd, check=check_top9)

    p = sub.add_parser(
        "filters", help="draw first-layer filters (or the rows of a first fc layer) as images",
        description="Draw the first layer's filters as a grid of colour images, with per-filter contrast (as in "
                    "the paper's figures), one shared scale (strengths comparable), or both. For a network whose "
                    "first layer is fully connected, its first 64 weight rows are drawn as images. File names: "
                    "with --out FOLDER, FOLDER/filters_<layer>.png (per-filter) and FOLDER/filters_<layer>_shared.png "
                    "(shared), the names zfnet top9 and zfnet demo use (fc_rows_<layer>[_shared].png for an fc "
                    "layer); with --out NAME.png, NAME.png is the per-filter picture (or the only one) and "
                    "NAME_shared.png the shared one.")
    _add_model_args(p, device=False)
    p.add_argument("--out", required=True, metavar="FOLDER|NAME.png",
                   help=f"output folder ({_OUT_FOLDER_NOTE}) or file name ending in .png (replaced only with "
                        "--force); see above for the file names")
    p.add_argument("--scaling", default="both", choices=("per-filter", "shared", "both"),
                   help="per-filter contrast (the paper's figures), one shared scale, or both (default both)")
    p.add_argument("--force", action="store_true", help=_args.FORCE_HELP)
    p.set_defaults(func=run_filters_cmd, check=check_filters)

    p = sub.add_parser(
        "featuremaps", help="every channel of one layer for one image, input beside it",
        description="Run one image through the network and draw every channel of one layer's output as a grey "
                    "map, the network's view of the input beside them.")
    _add_model_args(p)
    p.add_argument("--image", required=True, metavar="FILE", help="an image file (JPEG, PNG, ...)")
    p.add_argument("--layer", required=True, help="layer to draw, e.g. conv5 or pool5 (names: zfnet rf --arch ARCH)")
    p.add_argument("--out", required=True, metavar="NAME.png",
                   help="output file ending in .png (its folder is created if needed; an existing file is "
                        "replaced only with --force)")
    p.add_argument("--scaling", default="shared", choices=("shared", "per-channel"),
                   help="shared: one grey scale for all channels, so strengths compare; per-channel: each map "
                        "stretched on its own (default shared)")
    p.add_argument("--force", action="store_true", help=_args.FORCE_HELP)
    p.set_defaults(func=run_featuremaps_cmd, check=check_featuremaps)

    p = sub.add_parser("demo",
                       help="top-9 figures from photos bundled with the dependencies; no dataset or internet needed",
                       description="Makes a few hundred deterministic crops/flips of photographs that ship inside "
                                   "installed packages, mines top-9 units with the trained ZFNet that ships with "
                                   "zfnet and renders the figures and the gallery (OUT/gallery/index.html).")
    p.add_argument("--out", default="zfnet-demo", metavar="FOLDER",
                   help="output folder, relative to the current folder unless absolute (default zfnet-demo); "
                        + _OUT_FOLDER_NOTE)
    p.add_argument("--views", type=_args.positive_int, default=300, help="number of image views (default 300)")
    _add_model_args(p)
    p.add_argument("--layers", nargs="+", default=None,
                   help="layers to mine, e.g. conv1 conv5 (default: every conv layer)")
    p.add_argument("--units", type=_args.units, default=16,
                   help="units drawn per layer: a number (chosen reproducibly), 'all', or channels like 3,17,40 "
                        "(default 16)")
    p.add_argument("--k", type=_args.positive_int, default=9, help="top k images per channel (default 9)")
    p.add_argument("--seed", type=_args.nonnegative_int, default=0,
                   help="seed for choosing units (the views are always the same; default 0)")
    p.set_defaults(func=run_demo_cmd, check=check_demo)


def check_top9(args: argparse.Namespace) -> None:
    """Parse-time checks of ``zfnet top9`` (see :mod:`zfnet.cli._args`)."""
    _check_model_args(args)
    _args.existing_folder("--images", args.images)
    _args.output_folder("--out", args.out)
    if args.workers is not None or args.scheduler is not None:
        import importlib.util

        from ..cluster import INSTALL_HINT

        flag = "--workers" if args.workers is not None else "--scheduler"
        if importlib.util.find_spec("distributed") is None:
            raise argparse.ArgumentTypeError(f"argument {flag}: needs dask.distributed, which is not installed: "
                                             f"{INSTALL_HINT}")
        if args.device not in (None, "auto", "cpu"):
            raise argparse.ArgumentTypeError(f"argument {flag}: Dask workers compute on their CPUs; "
                                             f"leave out --device {args.device}")
    elif args.shard_size is not None:
        raise argparse.ArgumentTypeError("argument --shard-size: only with --workers or --scheduler")


def check_filters(args: argparse.Namespace) -> None:
    """Parse-time checks of ``zfnet filters``."""
    _check_model_args(args)
    paths = _filters_paths(args.out, args.scaling)
    if paths is None:
        _args.output_folder("--out", args.out)
    for path in paths or ():
        _args.output_file("--out", path, ".png", args.force)


def check_featuremaps(args: argparse.Namespace) -> None:
    """Parse-time checks of ``zfnet featuremaps``."""
    _check_model_args(args)
    _args.existing_file("--image", args.image)
    _args.output_file("--out", args.out, ".png", args.force)


def check_demo(args: argparse.Namespace) -> None:
    """Parse-time checks of ``zfnet demo``."""
    _check_model_args(args)
    _args.output_folder("--out", args.out)


def _check_layers(model, layers, option: str) -> None:
    """Unknown layer names end the command before any work, listing the right ones."""
    names = model.layer_names()
    bad = [name for name in layers or () if name not in names]
    if bad:
        from ..errors import ConfigError

        raise ConfigError(f"{option}: {model.arch} has no layer {', '.join(map(repr, bad))}; "
                          f"its layers: {', '.join(names)}")


def _prepare(model, device: str):
    model.eval()
    if device != "cpu":
        model.to(device)
    return model


def run_top9_cmd(args: argparse.Namespace) -> int:
    from ..figures.top9 import run_top9

    weights, arch, _ = resolve_weights(args)
    model, label, digest = load_model(weights, arch, args.prototxt, args.mean)
    _check_layers(model, args.layers, "--layers")
    _prepare(model, args.device)
    cluster = args.workers if args.workers is not None else args.scheduler
    result = run_top9(model, args.images, args.out, layers=args.layers, k=args.k, units=args.units,
                      resume=args.resume, batch_size=args.batch_size, workers=args.decode_threads, seed=args.seed,
                      weights_label=label, weights_digest=digest, rule=args.rule, gallery=not args.no_gallery,
                      stop=args.limit, tile=args.tile, cluster=cluster, shard_size=args.shard_size)
    print(result.summary())
    return 0


def run_filters_cmd(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..figures import fc_row_tiles, filter_grid, grid, save_png
    from ..figures.render import caption
    from ..figures.top9 import first_layer_weight

    t0 = time.perf_counter()
    weights, arch, _ = resolve_weights(args)
    model, label, _ = load_model(weights, arch, args.prototxt, args.mean)
    order = model.transform().config.channel_order
    scalings = ("per-filter", "shared") if args.scaling == "both" else (args.scaling,)
    named = _filters_paths(args.out, args.scaling)  # None: --out is a folder

    def destination(stem: str, scaling: str) -> Path:
        if named is not None:
            return named[scalings.index(scaling)]
        # the names zfnet top9 gives the same pictures
        return Path(args.out) / (f"{stem}.png" if scaling == "per-filter" else f"{stem}_{scaling}.png")

    first = first_layer_weight(model)
    written = []
    if first is not None:
        name, w = first
        for s in tqdm(scalings, desc="filters", unit="figure"):
            written.append(save_png(filter_grid(w, s, order), destination(f"filters_{name}", s)))
    else:
        from ..nn import Linear

        lin = next((l for l in model.layers if isinstance(l, Linear)), None)
        if lin is None or model.layers.index(lin) > 1:
            from ..errors import ConfigError

            raise ConfigError(f"{model.arch}: the first layer is neither a conv on RGB nor fully connected")
        w = np.asarray(lin.weight)
        shape = (3,) + tuple(model.input_size)
        for s in tqdm(scalings, desc="filters", unit="figure"):
            tiles = fc_row_tiles(w, shape, rows=range(min(64, w.shape[0])), scaling=s, channel_order=order)
            written.append(save_png(caption(grid(tiles, 8), f"{lin.name} rows as images, {s} scaling"),
                                    destination(f"fc_rows_{lin.name}", s)))
    print(f"Drew the first-layer filters of {label} with {', '.join(scalings)} scaling in "
          f"{time.perf_counter() - t0:.1f} s: {', '.join(str(p) for p in written)}. The paper's figures "
          "contrast-normalise each filter on its own (per-filter); shared scaling keeps strengths comparable.")
    return 0


def run_featuremaps_cmd(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..backend import asnumpy, to_device
    from ..figures import feature_map_figure, save_png

    t0 = time.perf_counter()
    weights, arch, _ = resolve_weights(args)
    model, label, _ = load_model(weights, arch, args.prototxt, args.mean)
    _check_layers(model, [args.layer], "--layer")
    _prepare(model, args.device)
    t = model.transform()
    with tqdm(total=2, desc="featuremaps", unit="step") as bar:
        picture = t.geometry(args.image)
        x = t(args.image)[None]  # (1, 3, H, W)
        if args.device != "cpu":
            x = to_device(x, args.device)
        bar.update(1)
        act = asnumpy(model.forward(x, upto=args.layer, keep=[args.layer], caches=False).activations[args.layer])[0]
        path = save_png(feature_map_figure(act, picture, args.layer, scaling=args.scaling), args.out)
        bar.update(1)
    print(f"Read 1 image ({args.image}) and drew the {act.shape[0]} feature maps of {args.layer} "
          f"({'x'.join(map(str, act.shape))}) of {label}, {args.scaling} scaling, in "
          f"{time.perf_counter() - t0:.1f} s: {path}.")
    return 0


def run_demo_cmd(args: argparse.Namespace) -> int:
    from ..figures.top9 import run_top9

    out = Path(args.out)
    weights, arch, why = resolve_weights(args)  # stops here, before any work, without trained weights
    print(f"zfnet demo: weights: {why}; output folder {out.resolve()}", flush=True)
    model, label, digest = load_model(weights, arch, args.prototxt, args.mean)
    _check_layers(model, args.layers, "--layers")
    _prepare(model, args.device)
    folder, photos = make_demo_views(out / "images", args.views)
    print(f"zfnet demo: {args.views} views of {len(photos)} bundled photos ({', '.join(photos)}).", flush=True)
    result = run_top9(model, folder, out, layers=args.layers, k=args.k, units=args.units, seed=args.seed,
                      weights_label=label, weights_digest=digest, batch_size=16)
    print(result.summary())
    if weights is None:
        print("Note: these weights are random, so the figures show the machinery, not learned features.")
    return 0
