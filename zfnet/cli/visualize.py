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

__all__ = ["register", "load_model", "demo_weights", "demo_photos", "make_demo_views"]

REPO = Path(__file__).resolve().parents[2]


# -- models and weights ----------------------------------------------------------

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_model(weights: str | os.PathLike | None, arch: str | None = None):
    """Build ``arch`` and load ``weights`` into it; returns ``(model, label, digest)``.

    With ``weights=None`` the model keeps its random initialisation (the label
    says so).  Loading goes through ``zfnet.weights.load`` when that exists (it
    knows every supported format); otherwise a native ``.npz`` state dict
    (``conv1.weight`` ... keys) is read with ``allow_pickle=False``.
    """
    from ..errors import WeightsError
    from ..models import build

    if weights is None:
        model = build(arch or "zfnet")
        return model, f"randomly initialised {model.arch} (no trained weights)", "random-init"
    path = Path(weights)
    if not path.is_file():
        raise WeightsError(f"weights file {str(path)!r} does not exist")
    digest = _sha256(path)
    try:
        from ..weights import load as _load  # the weights issue's loader
    except ImportError:
        _load = None
    if _load is not None:
        model = _load(path, arch=arch) if arch else _load(path)
    else:
        model = build(arch or "zfnet")
        if path.suffix != ".npz":
            raise WeightsError(f"{path}: this build reads only native .npz state dicts")
        try:
            with np.load(path, allow_pickle=False) as z:
                state = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise WeightsError(f"{path}: not a readable .npz ({e})") from None
        model.load_state_dict(state, source=str(path))
    return model, f"{model.arch} weights {path.name} (sha256 {digest[:12]})", digest


def demo_weights() -> tuple[str | None, str | None, str]:
    """Which weights ``zfnet demo`` uses: ``(path or None, arch or None, why)``.

    In order of preference:

    1. ``weights/zfnet-imagenette.npz`` committed in this repository (our ZFNet);
    2. ``../shared/weights/squeezenet1_0/squeezenet1_0_deep_compression.npz`` (real
       ImageNet weights, present on the project's machines only), if this build
       can load SqueezeNet;
    3. none: a randomly initialised ZFNet, which shows the machinery but not what a
       trained network sees.
    """
    # A clone run in place has the package beside weights/; a pip-installed copy does
    # not, so the working directory (the clone the README's command runs in) counts too.
    roots = list(dict.fromkeys([REPO, Path.cwd()]))
    for root in roots:
        own = root / "weights" / "zfnet-imagenette.npz"
        if own.is_file():
            return str(own), "zfnet", f"the ZFNet weights committed in {own}"
    for root in roots:
        shared = root.parent / "shared" / "weights" / "squeezenet1_0" / "squeezenet1_0_deep_compression.npz"
        if not shared.is_file():
            continue
        try:
            from ..models import build

            build("squeezenet1_0")
            from ..weights import load  # noqa: F401
            return str(shared), "squeezenet1_0", "the shared SqueezeNet v1.0 ImageNet weights in ../shared"
        except Exception:  # noqa: BLE001 -- any failure means: not loadable in this build
            break
    return None, "zfnet", ("NO trained weights (weights/zfnet-imagenette.npz not found from here; run from the "
                           "repository root): a randomly initialised ZFNet")


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
    resized to 256 x 256.  The same ``seed`` gives the same files.

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

def _add_model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--weights", required=required, help="weights file (native .npz, or any format zfnet.weights reads)")
    p.add_argument("--arch", default=None, help="architecture (zfnet, alexnet, alexnet-torchvision, squeezenet1_0); "
                                                "default: from the weights file, else zfnet")
    p.add_argument("--device", default="cpu", choices=("cpu", "gpu"), help="where to run (gpu needs CuPy)")


def _units_arg(text: str):
    if text == "all":
        return "all"
    if "," in text:
        return [int(t) for t in text.split(",") if t]
    return int(text)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("top9", help="mine each unit's top-k images over a folder; figures and a gallery",
                       description="For every channel of the chosen layers, find the k strongest activations over "
                                   "an image folder (one per image), project chosen units to pixels with the "
                                   "deconvnet, and write top9.json, Fig. 2 style PNGs and an offline HTML gallery.")
    _add_model_args(p)
    p.add_argument("--images", required=True, help="image folder (searched recursively)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--layers", nargs="+", default=None, help="layers to mine (default: every conv layer)")
    p.add_argument("--k", type=int, default=9, help="top k per channel (default 9)")
    p.add_argument("--units", type=_units_arg, default=16,
                   help="units drawn per layer: a number (chosen reproducibly), 'all', or a list like 3,17,40")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from OUT/topk_state.npz")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2, help="image decoding threads (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed for choosing units")
    p.add_argument("--rule", default="deconvnet", choices=("deconvnet", "backprop", "guided"))
    p.add_argument("--tile", type=int, default=48, help="patch size in the figures, pixels (default 48)")
    p.add_argument("--no-gallery", action="store_true")
    p.add_argument("--limit", type=int, default=None, help="mine only the first N files")
    p.set_defaults(func=run_top9_cmd)

    p = sub.add_parser("filters", help="draw first-layer filters (and fc rows) as images")
    _add_model_args(p, required=False)
    p.add_argument("--out", required=True, help="output PNG file or folder")
    p.add_argument("--scaling", default="both", choices=("per-filter", "shared", "both"),
                   help="per-filter contrast (the paper's figures), one shared scale, or both (default)")
    p.set_defaults(func=run_filters_cmd)

    p = sub.add_parser("featuremaps", help="every channel of one layer for one image, input beside it")
    _add_model_args(p, required=False)
    p.add_argument("--image", required=True, help="an image file")
    p.add_argument("--layer", required=True, help="e.g. conv5 or pool5")
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument("--scaling", default="shared", choices=("shared", "per-channel"))
    p.set_defaults(func=run_featuremaps_cmd)

    p = sub.add_parser("demo", help="top-9 figures from photos bundled with the dependencies; no data or network needed",
                       description="Makes a few hundred deterministic crops/flips of photographs that ship inside "
                                   "installed packages, mines top-9 units and renders the figures and gallery.")
    p.add_argument("--out", default="zfnet-demo", help="output folder (default ./zfnet-demo)")
    p.add_argument("--views", type=int, default=300, help="number of image views (default 300)")
    p.add_argument("--weights", default=None, help="override the weights (default: see zfnet.cli.visualize.demo_weights)")
    p.add_argument("--arch", default=None)
    p.add_argument("--layers", nargs="+", default=None)
    p.add_argument("--units", type=_units_arg, default=16)
    p.add_argument("--k", type=int, default=9, help="top k per channel (default 9)")
    p.add_argument("--seed", type=int, default=0, help="seed for choosing units (the views are always the same)")
    p.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    p.set_defaults(func=run_demo_cmd)


def _prepare(model, device: str):
    model.eval()
    if device != "cpu":
        model.to(device)
    return model


def run_top9_cmd(args: argparse.Namespace) -> int:
    from ..figures.top9 import run_top9

    model, label, digest = load_model(args.weights, args.arch)
    _prepare(model, args.device)
    result = run_top9(model, args.images, args.out, layers=args.layers, k=args.k, units=args.units,
                      resume=args.resume, batch_size=args.batch_size, workers=args.workers, seed=args.seed,
                      weights_label=label, weights_digest=digest, rule=args.rule, gallery=not args.no_gallery,
                      device=args.device, stop=args.limit, tile=args.tile)
    print(result.summary())
    return 0


def run_filters_cmd(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..figures import fc_row_tiles, filter_grid, grid, save_png
    from ..figures.render import caption
    from ..figures.top9 import first_layer_weight, transform_for

    t0 = time.perf_counter()
    model, label, _ = load_model(args.weights, args.arch)
    order = transform_for(model).config.channel_order
    out = Path(args.out)
    scalings = ("per-filter", "shared") if args.scaling == "both" else (args.scaling,)
    first = first_layer_weight(model)
    written = []
    if first is not None:
        name, w = first
        for s in tqdm(scalings, desc="filters", unit="figure"):
            dst = out / f"filters_{name}_{s}.png" if out.suffix != ".png" else (
                out if len(scalings) == 1 else out.with_name(f"{out.stem}_{s}.png"))
            written.append(save_png(filter_grid(w, s, order), dst))
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
            dst = out / f"fc_rows_{lin.name}_{s}.png" if out.suffix != ".png" else out
            written.append(save_png(caption(grid(tiles, 8), f"{lin.name} rows as images, {s} scaling"), dst))
    print(f"Drew the first-layer filters of {label} with {', '.join(scalings)} scaling in "
          f"{time.perf_counter() - t0:.1f} s: {', '.join(str(p) for p in written)}. The paper's figures "
          "contrast-normalise each filter on its own (per-filter); shared scaling keeps strengths comparable.")
    return 0


def run_featuremaps_cmd(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..backend import asnumpy, to_device
    from ..figures import feature_map_figure, save_png
    from ..figures.top9 import transform_for

    t0 = time.perf_counter()
    model, label, _ = load_model(args.weights, args.arch)
    _prepare(model, args.device)
    t = transform_for(model)
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
    weights, arch, why = (args.weights, args.arch, "the weights given with --weights") if args.weights else demo_weights()
    if args.arch:
        arch = args.arch
    folder, photos = make_demo_views(out / "images", args.views)
    model, label, digest = load_model(weights, arch)
    _prepare(model, args.device)
    print(f"zfnet demo: {args.views} views of {len(photos)} bundled photos ({', '.join(photos)}); weights: {why}.")
    result = run_top9(model, folder, out, layers=args.layers, k=args.k, units=args.units, seed=args.seed,
                      weights_label=label, weights_digest=digest, device=args.device, batch_size=16)
    print(result.summary())
    if weights is None:
        print("Note: these weights are random, so the figures show the machinery, not learned features.")
    return 0
