"""``zfnet train``, ``pack-data``, ``evaluate``, ``fig4`` and ``fig6``: training our own weights and its figures.

See ``docs/training.md`` for the recipe and the exact commands that made the
committed weights.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from . import _args
from ._args import FORCE_HELP, nonnegative_float, nonnegative_int, positive_float, positive_int

# train flag -> TrainConfig field (None default = "not given": the config's default,
# or on --resume the checkpoint's value)
_CONFIG_FLAGS = {
    "arch": str, "fc_width": int, "epochs": int, "batch_size": int, "lr": float, "momentum": float,
    "weight_decay": float, "schedule": str, "warmup_epochs": float, "gamma": float, "min_scale": float,
    "renorm_radius": float, "input_size": int, "seed": int, "eval_every": int, "val_limit": int,
    "train_limit": int, "log_every": int, "snapshot_dtype": str, "input_scale": str, "init_std": float,
    "conv1_init_std": float, "init_from": str,
}


_DEVICE_HELP = "auto (gpu when CuPy sees a CUDA device, else cpu), cpu, or gpu (default auto)"


def _std_or_he(text: str):
    """A positive standard deviation, or "he" for He-normal initialisation."""
    if text.strip().lower() == "he":
        return "he"
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number or 'he', got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number or 'he', got {text!r}")
    return v


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train zfnet or alexnet from scratch (SGD, checkpoints, exact resume)",
        description="Train a network on a packed dataset (zfnet pack-data) or an image folder with "
                    "train/<class>/ and val/<class>/ subfolders. Writes OUT/last.npz every epoch (resume with "
                    "--resume), weight snapshots OUT/epoch-NNN.npz and OUT/final.npz, and OUT/metrics.jsonl.")
    p.add_argument("--data", required=True, metavar="FOLDER",
                   help="packed folder (with meta.json) or a folder with train/ and val/")
    p.add_argument("--out", default=None, metavar="FOLDER",
                   help="run folder, created if needed (default runs/ARCH); without --resume a rerun starts over "
                        "and replaces the files it writes there")
    p.add_argument("--arch", choices=("zfnet", "alexnet", "alexnet-torchvision"), default=None,
                   help="architecture (default zfnet)")
    p.add_argument("--fc-width", type=positive_int, default=None, help="width of fc6/fc7 (default 1024)")
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs to train (default 30)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="images per step (default 128)")
    p.add_argument("--lr", type=positive_float, default=None, help="peak learning rate (default 0.01)")
    p.add_argument("--momentum", type=_args.float_in(0, 1, high_open=True), default=None,
                   help="SGD momentum, in [0, 1) (default 0.9)")
    p.add_argument("--weight-decay", type=nonnegative_float, default=None,
                   help="on weights, not biases (default 5e-4)")
    p.add_argument("--schedule", choices=("cosine", "step"), default=None,
                   help="learning-rate schedule after warm-up: cosine decay to 0, or step (times --gamma at each of "
                        "--milestones) (default cosine)")
    p.add_argument("--warmup-epochs", type=nonnegative_float, default=None, help="linear warm-up (default 1)")
    p.add_argument("--milestones", type=positive_int, nargs="*", default=None,
                   help="step schedule epochs (default 15 25)")
    p.add_argument("--gamma", type=positive_float, default=None, help="step schedule factor (default 0.1)")
    p.add_argument("--min-scale", type=_args.float_in(0, 1, low_open=True), default=None,
                   help="smallest random-crop area fraction, in (0, 1] (default 0.35)")
    p.add_argument("--no-flip", action="store_true", help="no horizontal flips")
    p.add_argument("--renorm-radius", type=nonnegative_float, default=None,
                   help="filter RMS radius, 0 = off (default 1.0; see docs/training.md)")
    p.add_argument("--input-size", type=_args.int_at_least(16), default=None,
                   help="network input side, >= 16 (default 224)")
    p.add_argument("--input-scale", choices=("unit", "pixel"), default=None,
                   help="unit: (pixel/255 - mean)/std with ImageNet's mean/std; pixel: pixel - 255*mean, "
                        "the paper's [-128, 128] (default unit)")
    p.add_argument("--init-std", type=_std_or_he, default=None, metavar="STD|he",
                   help="draw every conv/fc weight from N(0, STD^2) (the paper: 0.01); 'he' = N(0, 2/fan_in) "
                        "(default he)")
    p.add_argument("--conv1-init-std", type=_std_or_he, default=None, metavar="STD|he",
                   help="conv1's weights from N(0, STD^2) whatever --init-std says; 'he' = as the other layers "
                        "(default 1e-3: a small layer 1 learns smooth filters instead of keeping its "
                        "initial noise; docs/training.md)")
    p.add_argument("--init-from", default=None, metavar="FILE",
                   help="start from these weights instead of a random draw: a native .npz of the same network "
                        "(e.g. a run's final.npz) or a run's last.npz; optimizer, schedule and data order start "
                        "afresh (a warm restart, docs/training.md)")
    p.add_argument("--seed", type=nonnegative_int, default=None,
                   help="seed of initialisation and data order (default 0)")
    p.add_argument("--keep-epochs", type=nonnegative_int, nargs="*", default=None,
                   help="epochs whose weights are kept for Fig. 4, 0 = the initial weights (default 1 2 5 10 20; "
                        "final always)")
    p.add_argument("--eval-every", type=positive_int, default=None, help="validate every N epochs (default 1)")
    p.add_argument("--val-limit", type=positive_int, default=None,
                   help="validate on an evenly spaced subset of this many images (default: all)")
    p.add_argument("--train-limit", type=positive_int, default=None,
                   help="train on an evenly spaced subset of this many images (default: all)")
    p.add_argument("--log-every", type=positive_int, default=None, help="steps per metrics record (default 20)")
    p.add_argument("--snapshot-dtype", choices=("float16", "float32"), default=None,
                   help="precision of the kept weight snapshots epoch-NNN.npz and final.npz (default float16; "
                        "last.npz, the resume checkpoint, is always exact)")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto", help=_DEVICE_HELP)
    p.add_argument("--resume", action="store_true", help="continue exactly from OUT/last.npz if it exists")
    p.add_argument("--time-limit", type=positive_float, default=None,
                   help="minutes; stop cleanly (checkpoint written) after the step that passes it")
    p.add_argument("--stop-at-epoch", type=positive_int, default=None,
                   help="stop cleanly once this many epochs are done (resume later with --resume)")
    p.add_argument("--workers", type=positive_int, default=4, help="threads decoding the data (default 4)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_train, check=check_train)

    q = sub.add_parser(
        "pack-data", help="pack an image dataset into uint8 .npy shards for training",
        description="Pack SRC/<split>/<class>/<image> (e.g. Imagenette) into DST: meta.json, labels and shards "
                    "each below --shard-mib, so a GPU machine can receive them one transfer at a time.")
    q.add_argument("src", help="dataset root holding the split folders")
    q.add_argument("dst", help="output folder (created if needed; the splits packed are replaced, "
                               "others already there are kept)")
    q.add_argument("--splits", nargs="+", default=["train", "val"],
                   help="split folders to pack (default: train val)")
    q.add_argument("--size", type=_args.int_at_least(16), default=224,
                   help="side of the stored square images, >= 16 (default 224)")
    q.add_argument("--encoding", choices=("jpeg", "raw"), default="jpeg",
                   help="jpeg: source JPEG bytes (re-encoded only when resized); raw: pixels (default jpeg)")
    q.add_argument("--shard-mib", type=positive_float, default=48.0, help="largest shard in MiB (default 48)")
    q.add_argument("--class-names", default=None,
                   help="text file of 'wnid name' lines (default: built-in Imagenette)")
    q.add_argument("--workers", type=positive_int, default=2, help="image decoding threads (default 2)")
    q.set_defaults(func=run_pack, check=check_pack)

    e = sub.add_parser("evaluate", help="top-1 accuracy of weights on a labelled split",
                       description="Evaluate weights (native .npz) on a packed dataset or image folder split, "
                                   "each image seen whole at the weights' input size.")
    e.add_argument("--weights", required=True, metavar="FILE", help="weights file (.npz, .pth, .caffemodel)")
    e.add_argument("--data", required=True, metavar="FOLDER",
                   help="packed folder or a folder with <split>/<class>/ images")
    e.add_argument("--split", default="val", help="split to evaluate (default val)")
    e.add_argument("--batch-size", type=positive_int, default=100, help="images per forward pass (default 100)")
    e.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto", help=_DEVICE_HELP)
    e.add_argument("--json", default=None, metavar="NAME.json",
                   help="also write the result to this .json file (replaced only with --force)")
    e.add_argument("--force", action="store_true", help=FORCE_HELP)
    e.set_defaults(func=run_evaluate, check=check_evaluate)

    f4 = sub.add_parser("fig4", help="Fig. 4: feature evolution over a run's checkpoints",
                        description="For a few units per conv layer, project the strongest activation over a fixed "
                                    "subset of images at each kept checkpoint (rows = units, columns = epochs).")
    which = f4.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", default=None, metavar="FOLDER",
                       help="run folder of zfnet train (uses its epoch-*.npz and final.npz)")
    which.add_argument("--checkpoints", nargs="+", default=None, metavar="FILE",
                       help="weight files in training order (instead of --run)")
    f4.add_argument("--data", required=True, metavar="FOLDER",
                    help="packed folder or folder with <split>/<class>/ images")
    f4.add_argument("--split", default="train", help="images searched (default train, as in the paper)")
    f4.add_argument("--images", type=positive_int, default=256, help="size of the evenly spaced subset (default 256)")
    f4.add_argument("--units", type=positive_int, default=4, help="units per layer (default 4)")
    f4.add_argument("--layers", nargs="+", default=None, help="layers, e.g. conv1 conv2 (default: every conv layer)")
    f4.add_argument("--tile", type=positive_int, default=64, help="side of each projection in pixels (default 64)")
    f4.add_argument("--seed", type=nonnegative_int, default=0, help="seed for the choice of units (default 0)")
    f4.add_argument("--labels", nargs="+", default=None, metavar="LABEL",
                    help="column titles, one per checkpoint (default: the epoch each file records; give them "
                         "when checkpoints come from several runs, e.g. a warm restart counting from 0 again)")
    f4.add_argument("--out", default="fig4.png", metavar="NAME.png",
                    help="output .png, relative to the current folder (default fig4.png; replaced only with --force)")
    f4.add_argument("--json", default=None, metavar="NAME.json",
                    help="also write the record of the chosen units and images to this .json file")
    f4.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto", help=_DEVICE_HELP)
    f4.add_argument("--force", action="store_true", help=FORCE_HELP)
    f4.set_defaults(func=run_fig4, check=check_fig4)

    f6 = sub.add_parser("fig6", help="Fig. 6: first-layer filters, layer-2 projections and measures of two networks",
                        description="Side by side for each network: conv1 filters (per-filter and shared scaling), "
                                    "conv2 projections; measures dead conv1 filters, conv1's low-frequency fraction, "
                                    "high-frequency/aliasing energy "
                                    "of conv2 projections, and validation accuracy.")
    f6.add_argument("--weights", nargs="+", required=True, metavar="FILE", help="weight files, e.g. alexnet then zfnet")
    f6.add_argument("--labels", nargs="+", default=None,
                    help="one column title per weight file (default: architecture, conv1 kernel and stride)")
    f6.add_argument("--data", required=True, metavar="FOLDER",
                    help="packed folder or folder with <split>/<class>/ images")
    f6.add_argument("--split", default="val", help="split the images (and with --evaluate, the accuracy) come from "
                                                   "(default val)")
    f6.add_argument("--images", type=positive_int, default=256,
                    help="size of the evenly spaced image subset projected (default 256)")
    f6.add_argument("--units", type=positive_int, default=16, help="conv2 units per network (default 16)")
    f6.add_argument("--evaluate", action="store_true",
                    help="measure top-1 on the whole split (default: the accuracy stored by training)")
    f6.add_argument("--out", default="fig6.png", metavar="NAME.png",
                    help="output .png, relative to the current folder (default fig6.png; replaced only with --force)")
    f6.add_argument("--json", default=None, metavar="NAME.json",
                    help="also write the measures and their definitions to this .json file")
    f6.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto", help=_DEVICE_HELP)
    f6.add_argument("--force", action="store_true", help=FORCE_HELP)
    f6.set_defaults(func=run_fig6, check=check_fig6)


def _check_data(option: str, data: str, splits: list[str]) -> None:
    """``data`` is a packed folder, or a folder with at least one of ``splits`` inside."""
    _args.existing_folder(option, data)
    root = Path(data)
    if not (root / "meta.json").exists() and not any((root / s).is_dir() for s in splits):
        raise argparse.ArgumentTypeError(
            f"argument {option}: {data!r} is neither a packed dataset (no meta.json) nor a folder with "
            f"{' or '.join(s + '/' for s in splits)} inside")


def _check_json(args: argparse.Namespace) -> None:
    if args.json:
        _args.output_file("--json", args.json, ".json", args.force)


def check_train(args: argparse.Namespace) -> None:
    """Parse-time checks of ``zfnet train`` (see :mod:`zfnet.cli._args`)."""
    _check_data("--data", args.data, ["train"])
    out = args.out or os.path.join("runs", args.arch or "zfnet")
    _args.output_folder("--out", out)
    _args.check_device("--device", args.device)
    resuming = args.resume and (Path(out) / "last.npz").is_file()
    if args.init_from is not None and not resuming:  # a resumed run has its start in last.npz
        _args.existing_file("--init-from", args.init_from)


def check_pack(args: argparse.Namespace) -> None:
    """Parse-time checks of ``zfnet pack-data``."""
    _args.existing_folder("SRC", args.src)
    missing = [s for s in args.splits if not (Path(args.src) / s).is_dir()]
    if missing:
        raise argparse.ArgumentTypeError(
            f"argument SRC: {args.src!r} has no split folder {', '.join(missing)} (expected SRC/<split>/<class>/"
            "<image>; choose the splits with --splits)")
    _args.output_folder("DST", args.dst)
    if args.class_names:
        _args.existing_file("--class-names", args.class_names)


def check_evaluate(args: argparse.Namespace) -> None:
    """Parse-time checks of ``zfnet evaluate``."""
    _args.existing_file("--weights", args.weights)
    _check_data("--data", args.data, [args.split])
    _args.check_device("--device", args.device)
    _check_json(args)


def check_fig4(args: argparse.Namespace) -> None:
    """Parse-time checks of ``zfnet fig4``."""
    if args.run is not None:
        _args.existing_folder("--run", args.run)
        run = Path(args.run)
        if not any(run.glob("epoch-*.npz")) and not (run / "final.npz").exists():
            raise argparse.ArgumentTypeError(f"argument --run: no checkpoints in {args.run!r} "
                                             "(expected epoch-*.npz and final.npz from zfnet train)")
    for path in args.checkpoints or ():
        _args.existing_file("--checkpoints", path)
    if args.labels is not None and args.checkpoints is not None and len(args.labels) != len(args.checkpoints):
        raise argparse.ArgumentTypeError(f"argument --labels: {len(args.labels)} labels for "
                                         f"{len(args.checkpoints)} checkpoints; give one per file")
    _check_data("--data", args.data, [args.split])
    _args.output_file("--out", args.out, ".png", args.force)
    _check_json(args)
    _args.check_device("--device", args.device)


def check_fig6(args: argparse.Namespace) -> None:
    """Parse-time checks of ``zfnet fig6``."""
    for path in args.weights:
        _args.existing_file("--weights", path)
    if args.labels is not None and len(args.labels) != len(args.weights):
        raise argparse.ArgumentTypeError(f"argument --labels: {len(args.labels)} labels for "
                                         f"{len(args.weights)} weight files; give one per file")
    _check_data("--data", args.data, [args.split])
    _args.output_file("--out", args.out, ".png", args.force)
    _check_json(args)
    _args.check_device("--device", args.device)


def _write_json(path: str, text: str) -> None:
    """Write a result file atomically (the project's one way of writing results)."""
    from .._files import atomic_write

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def _device(name: str) -> str:
    from ..backend import gpu_available

    if name == "auto":
        return "gpu" if gpu_available() else "cpu"
    return name


def load_split(data: str, split: str, size: int | None = None, workers: int = 4, required: bool = True):
    """A split from a packed folder (``meta.json``) or from ``data/<split>/<class>/`` images."""
    from ..data.packed import load_folder, load_packed

    root = Path(data)
    if (root / "meta.json").exists():
        from ..data.packed import _read_meta

        if split not in _read_meta(root / "meta.json")["splits"]:
            if required:
                raise ConfigError(f"{data}: the packed dataset has no split {split!r}")
            return None
        return load_packed(root, split, workers=workers)
    if (root / split).is_dir():
        return load_folder(root / split, size=size or 224, workers=workers)
    if required:
        raise ConfigError(f"{data}: neither a packed dataset (no meta.json) nor a folder with {split}/ inside")
    return None


def _config_from_args(args) -> dict:
    given = {k: getattr(args, k) for k in _CONFIG_FLAGS if getattr(args, k) is not None}
    given.update({k: None for k, v in given.items() if v == "he"})  # "he": the models' own initialisation
    if args.milestones is not None:
        given["milestones"] = tuple(args.milestones)
    if args.keep_epochs is not None:
        given["keep_epochs"] = tuple(args.keep_epochs)
    if args.no_flip:
        given["flip"] = False
    return given


def run_train(args: argparse.Namespace) -> int:
    from ..train import LEGACY_DEFAULTS, RUNTIME_KEYS, TrainConfig, Trainer, load_checkpoint

    given = _config_from_args(args)
    arch = given.get("arch", "zfnet")
    out = Path(args.out or os.path.join("runs", arch))
    ckpt = out / "last.npz"
    if args.resume and ckpt.exists():
        saved = {**LEGACY_DEFAULTS, **load_checkpoint(ckpt)["state"]["config"]}
        clash = {k: (saved.get(k), v) for k, v in given.items()
                 if k not in RUNTIME_KEYS and _norm_val(saved.get(k)) != _norm_val(v)}
        if clash:
            raise ConfigError(f"--resume: {ckpt} was made with different settings (checkpoint, now): {clash}")
        saved.update({k: v for k, v in given.items() if k in RUNTIME_KEYS})
        config = TrainConfig.from_dict(saved)
    else:
        config = TrainConfig(**given)
    device = _device(args.device)
    train = load_split(args.data, "train", config.input_size, args.workers)
    val = load_split(args.data, "val", config.input_size, args.workers, required=False)
    print(f"data: {len(train)} train images" + (f", {len(val)} val images" if val is not None else ", no val split")
          + f" of {train.size}x{train.size}, {len(train.names)} classes; device {device}")
    trainer = Trainer(config, train, val, out, device=device, progress=not args.no_progress,
                      time_limit=None if args.time_limit is None else args.time_limit * 60,
                      stop_at_epoch=args.stop_at_epoch, keep_freed_memory=True)  # a process of its own
    print(trainer.model.summary())
    summary = trainer.fit(resume=args.resume)
    last = summary["history"][-1] if summary["history"] else {}
    print(f"{summary['status']}: {summary['epoch']}/{config.epochs} epochs, {summary['step']} steps, "
          f"{summary['images_per_s']:.1f} images/s this session"
          + (f", last val top-1 {last['val_acc']:.4f}" if last.get("val_acc") is not None else "")
          + f"; files in {out}")
    return 0


def _norm_val(v):
    return list(v) if isinstance(v, tuple) else v


def run_pack(args: argparse.Namespace) -> int:
    from ..data.packed import pack_dataset, read_class_names

    names = read_class_names(args.class_names) if args.class_names else None
    meta = pack_dataset(args.src, args.dst, args.splits, size=args.size, encoding=args.encoding,
                        shard_mib=args.shard_mib, class_names=names, workers=args.workers, progress=True)
    for split, entry in meta["splits"].items():
        sizes = [os.path.getsize(Path(args.dst) / s["file"]) / 2**20 for s in entry["shards"]]
        print(f"{split}: {entry['count']} images in {len(sizes)} shards "
              f"({', '.join(f'{m:.1f}' for m in sizes)} MiB), {len(entry['skipped'])} skipped")
        for s in entry["skipped"][:5]:
            print(f"  skipped {s['path']}: {s['reason']}")
    print(f"classes: {', '.join(f'{c} {n}' for c, n in zip(meta['classes'], meta['names']))}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from ..train import evaluate
    from ..weights import load

    model = load(args.weights)
    device = _device(args.device)
    model.to(device)
    split = load_split(args.data, args.split, model.input_size[0])
    res = evaluate(model, split.images, split.labels, batch_size=args.batch_size, preprocess=model.config,
                   progress=True)
    print(f"{args.weights} on {args.data} {args.split}: top-1 {res['acc']:.4f} ({res['correct']}/{res['count']}), "
          f"loss {res['loss']:.4f}")
    names = model.config.get("class_names") or split.names
    for name, acc in zip(names, res["per_class_acc"]):
        print(f"  {name:<20} {acc:.3f}")
    if args.json:
        _write_json(args.json, json.dumps({"weights": str(args.weights), "split": args.split, **res}, indent=1))
    return 0


def _subset(data: str, split: str, count: int, size: int):
    """An evenly spaced subset of ``count`` images of a split (only those are decoded when packed)."""
    from ..data.packed import _read_meta, load_packed

    root = Path(data)
    if (root / "meta.json").exists():
        meta = _read_meta(root / "meta.json")
        if split not in meta["splits"]:
            raise ConfigError(f"{data}: the packed dataset has no split {split!r}")
        n = int(meta["splits"][split]["count"])
        idx = np.unique(np.linspace(0, n - 1, min(count, n)).round().astype(np.int64))
        return load_packed(root, split, indices=idx)
    full = load_split(data, split, size)
    idx = np.unique(np.linspace(0, len(full) - 1, min(count, len(full))).round().astype(np.int64))
    return full.subset(idx)


def _epoch_label(model, path: Path, final: bool) -> str:
    epoch = (model.config.get("training") or {}).get("epoch")
    if epoch is None:
        return path.stem
    return f"epoch {epoch}" + (" (final)" if final else "")


def run_fig4(args: argparse.Namespace) -> int:
    from ..figures.evolution import evolution_figure
    from ..figures.render import save_png
    from ..weights import load

    if args.checkpoints:
        paths = [Path(p) for p in args.checkpoints]
    elif args.run:
        run = Path(args.run)
        paths = sorted(run.glob("epoch-*.npz")) + ([run / "final.npz"] if (run / "final.npz").exists() else [])
    else:
        raise ConfigError("fig4 needs --run or --checkpoints")
    if not paths:
        raise ConfigError(f"no checkpoints found ({args.run}/epoch-*.npz, final.npz)")
    if args.labels is not None and len(args.labels) != len(paths):
        raise ConfigError(f"--labels: {len(args.labels)} labels for {len(paths)} checkpoints "
                          f"({', '.join(p.name for p in paths)}); give one per file")
    device = _device(args.device)
    models = []
    for i, p in enumerate(paths):
        m = load(p).to(device)
        label = args.labels[i] if args.labels else _epoch_label(m, p, i == len(paths) - 1 and p.name == "final.npz")
        models.append((label, m))
    subset = _subset(args.data, args.split, args.images, models[-1][1].input_size[0])
    pic, record = evolution_figure(models, subset.images, args.layers, args.units, args.tile, args.seed)
    save_png(pic, args.out)
    record.update(checkpoints=[str(p) for p in paths], data=args.data, split=args.split,
                  image_paths=subset.paths)
    if args.json:
        _write_json(args.json, json.dumps(record, indent=1))
    print(f"Fig. 4 of {len(paths)} checkpoints over {len(subset)} {args.split} images: {args.out}")
    return 0


def run_fig6(args: argparse.Namespace) -> int:
    from ..figures.compare import compare_networks
    from ..figures.render import save_png
    from ..train import evaluate
    from ..weights import load

    device = _device(args.device)
    models = [load(p).to(device) for p in args.weights]
    labels = args.labels or []
    if labels and len(labels) != len(models):
        raise ConfigError(f"{len(labels)} labels for {len(models)} weight files")
    if not labels:
        for m in models:
            conv1 = m.layer("conv1")
            k, st = conv1.kernel_size[0], conv1.stride[0]
            name = {"zfnet": "ZFNet", "alexnet": "AlexNet"}.get(m.arch, m.arch)
            labels.append(f"{name} {k}x{k}/{st}")
    accs = {}
    for label, m, p in zip(labels, models, args.weights):
        if args.evaluate:
            split = load_split(args.data, args.split, m.input_size[0])
            accs[label] = evaluate(m, split.images, split.labels, preprocess=m.config, progress=True)["acc"]
        else:
            accs[label] = (m.config.get("training") or {}).get("val_acc")
    subset = _subset(args.data, args.split, args.images, models[0].input_size[0])
    pic, measures = compare_networks(list(zip(labels, models)), subset.images, accs, units=args.units)
    save_png(pic, args.out)
    measures["definitions"].update(weights=[str(p) for p in args.weights], data=args.data, split=args.split,
                                   accuracy_source="measured now" if args.evaluate else "stored by training")
    if args.json:
        _write_json(args.json, json.dumps(measures, indent=1))
    for label in labels:
        m = measures[label]
        acc = m["val_acc"]
        print(f"{label}: dead conv1 filters {m['dead_filters']['count']}/{m['dead_filters']['total']}, "
              f"conv1 low-frequency median {m['low_frequency']['median']:.3f}, never-active {m['never_active']['count']}, conv2 hf {m['layer2']['hf_fraction']:.3f}, "
              f"grid4 {m['layer2']['grid4']:.2f}, grid2 {m['layer2']['grid2']:.2f}, "
              f"val top-1 {'n/a' if acc is None else f'{acc:.4f}'}")
    print(f"Fig. 6: {args.out}")
    return 0
