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

# train flag -> TrainConfig field (None default = "not given": the config's default,
# or on --resume the checkpoint's value)
_CONFIG_FLAGS = {
    "arch": str, "fc_width": int, "epochs": int, "batch_size": int, "lr": float, "momentum": float,
    "weight_decay": float, "schedule": str, "warmup_epochs": float, "gamma": float, "min_scale": float,
    "renorm_radius": float, "input_size": int, "seed": int, "eval_every": int, "val_limit": int,
    "train_limit": int, "log_every": int, "snapshot_dtype": str,
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train zfnet or alexnet from scratch (SGD, checkpoints, exact resume)",
        description="Train a network on a packed dataset (zfnet pack-data) or an image folder with "
                    "train/<class>/ and val/<class>/ subfolders. Writes OUT/last.npz every epoch (resume with "
                    "--resume), weight snapshots OUT/epoch-NNN.npz and OUT/final.npz, and OUT/metrics.jsonl.")
    p.add_argument("--data", required=True, help="packed folder (with meta.json) or a folder with train/ and val/")
    p.add_argument("--out", default=None, help="run folder (default runs/ARCH)")
    p.add_argument("--arch", choices=("zfnet", "alexnet", "alexnet-torchvision"), default=None,
                   help="architecture (default zfnet)")
    p.add_argument("--fc-width", type=int, default=None, help="width of fc6/fc7 (default 1024)")
    p.add_argument("--epochs", type=int, default=None, help="default 30")
    p.add_argument("--batch-size", type=int, default=None, help="default 128")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 0.01)")
    p.add_argument("--momentum", type=float, default=None, help="default 0.9")
    p.add_argument("--weight-decay", type=float, default=None, help="on weights, not biases (default 5e-4)")
    p.add_argument("--schedule", choices=("cosine", "step"), default=None, help="default cosine")
    p.add_argument("--warmup-epochs", type=float, default=None, help="linear warm-up (default 1)")
    p.add_argument("--milestones", type=int, nargs="*", default=None, help="step schedule epochs (default 15 25)")
    p.add_argument("--gamma", type=float, default=None, help="step schedule factor (default 0.1)")
    p.add_argument("--min-scale", type=float, default=None, help="smallest crop area fraction (default 0.35)")
    p.add_argument("--no-flip", action="store_true", help="no horizontal flips")
    p.add_argument("--renorm-radius", type=float, default=None,
                   help="filter RMS radius, 0 = off (default 1.0; see docs/training.md)")
    p.add_argument("--input-size", type=int, default=None, help="network input side (default 224)")
    p.add_argument("--seed", type=int, default=None, help="default 0")
    p.add_argument("--keep-epochs", type=int, nargs="*", default=None,
                   help="epochs whose weights are kept for Fig. 4 (default 1 2 5 10 20; final always)")
    p.add_argument("--eval-every", type=int, default=None, help="validate every N epochs (default 1)")
    p.add_argument("--val-limit", type=int, default=None, help="validate on an evenly spaced subset")
    p.add_argument("--train-limit", type=int, default=None, help="train on an evenly spaced subset")
    p.add_argument("--log-every", type=int, default=None, help="steps per metrics record (default 20)")
    p.add_argument("--snapshot-dtype", choices=("float16", "float32"), default=None)
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                   help="gpu needs CuPy and a CUDA device (auto: gpu when available)")
    p.add_argument("--resume", action="store_true", help="continue exactly from OUT/last.npz if it exists")
    p.add_argument("--time-limit", type=float, default=None,
                   help="minutes; stop cleanly (checkpoint written) after the step that passes it")
    p.add_argument("--stop-at-epoch", type=int, default=None,
                   help="stop cleanly once this many epochs are done (resume later with --resume)")
    p.add_argument("--workers", type=int, default=4, help="threads decoding the data (default 4)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_train)

    q = sub.add_parser(
        "pack-data", help="pack an image dataset into uint8 .npy shards for training",
        description="Pack SRC/<split>/<class>/<image> (e.g. Imagenette) into DST: meta.json, labels and shards "
                    "each below --shard-mib, so a GPU machine can receive them one transfer at a time.")
    q.add_argument("src", help="dataset root holding the split folders")
    q.add_argument("dst", help="output folder")
    q.add_argument("--splits", nargs="+", default=["train", "val"], help="default: train val")
    q.add_argument("--size", type=int, default=224, help="side of the stored square images (default 224)")
    q.add_argument("--encoding", choices=("jpeg", "raw"), default="jpeg",
                   help="jpeg: source JPEG bytes (re-encoded only when resized); raw: pixels (default jpeg)")
    q.add_argument("--shard-mib", type=float, default=48.0, help="largest shard in MiB (default 48)")
    q.add_argument("--class-names", default=None, help="file of 'wnid name' lines (default: built-in Imagenette)")
    q.add_argument("--workers", type=int, default=2)
    q.set_defaults(func=run_pack)

    e = sub.add_parser("evaluate", help="top-1 accuracy of weights on a labelled split",
                       description="Evaluate weights (native .npz) on a packed dataset or image folder split, "
                                   "each image seen whole at the weights' input size.")
    e.add_argument("--weights", required=True)
    e.add_argument("--data", required=True, help="packed folder or a folder with <split>/<class>/ images")
    e.add_argument("--split", default="val")
    e.add_argument("--batch-size", type=int, default=100)
    e.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    e.add_argument("--json", default=None, help="also write the result here as JSON")
    e.set_defaults(func=run_evaluate)

    f4 = sub.add_parser("fig4", help="Fig. 4: feature evolution over a run's checkpoints",
                        description="For a few units per conv layer, project the strongest activation over a fixed "
                                    "subset of images at each kept checkpoint (rows = units, columns = epochs).")
    f4.add_argument("--run", default=None, help="run folder of zfnet train (uses epoch-*.npz and final.npz)")
    f4.add_argument("--checkpoints", nargs="*", default=None, help="weight files in training order (instead of --run)")
    f4.add_argument("--data", required=True, help="packed folder or folder with <split>/<class>/ images")
    f4.add_argument("--split", default="train", help="images searched (default train, as in the paper)")
    f4.add_argument("--images", type=int, default=256, help="size of the evenly spaced subset (default 256)")
    f4.add_argument("--units", type=int, default=4, help="units per layer (default 4)")
    f4.add_argument("--layers", nargs="*", default=None, help="default: every conv layer")
    f4.add_argument("--tile", type=int, default=64)
    f4.add_argument("--seed", type=int, default=0, help="choice of units")
    f4.add_argument("--out", default="fig4.png")
    f4.add_argument("--json", default=None, help="record of the chosen units and images")
    f4.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    f4.set_defaults(func=run_fig4)

    f6 = sub.add_parser("fig6", help="Fig. 6: first-layer filters, layer-2 projections and measures of two networks",
                        description="Side by side for each network: conv1 filters (per-filter and shared scaling), "
                                    "conv2 projections; measures dead conv1 filters, high-frequency/aliasing energy "
                                    "of conv2 projections, and validation accuracy.")
    f6.add_argument("--weights", nargs="+", required=True, help="weight files, e.g. alexnet then zfnet")
    f6.add_argument("--labels", nargs="*", default=None)
    f6.add_argument("--data", required=True)
    f6.add_argument("--split", default="val")
    f6.add_argument("--images", type=int, default=256)
    f6.add_argument("--units", type=int, default=16, help="conv2 units per network (default 16)")
    f6.add_argument("--evaluate", action="store_true",
                    help="measure top-1 on the whole split (default: the accuracy stored by training)")
    f6.add_argument("--out", default="fig6.png")
    f6.add_argument("--json", default=None)
    f6.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    f6.set_defaults(func=run_fig6)


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
    if args.milestones is not None:
        given["milestones"] = tuple(args.milestones)
    if args.keep_epochs is not None:
        given["keep_epochs"] = tuple(args.keep_epochs)
    if args.no_flip:
        given["flip"] = False
    return given


def run_train(args: argparse.Namespace) -> int:
    from ..train import RUNTIME_KEYS, TrainConfig, Trainer, load_checkpoint

    given = _config_from_args(args)
    arch = given.get("arch", "zfnet")
    out = Path(args.out or os.path.join("runs", arch))
    ckpt = out / "last.npz"
    if args.resume and ckpt.exists():
        saved = load_checkpoint(ckpt)["state"]["config"]
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
                      stop_at_epoch=args.stop_at_epoch)
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
        Path(args.json).write_text(json.dumps({"weights": str(args.weights), "split": args.split, **res}, indent=1))
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
    device = _device(args.device)
    models = []
    for i, p in enumerate(paths):
        m = load(p).to(device)
        models.append((_epoch_label(m, p, i == len(paths) - 1 and p.name == "final.npz"), m))
    subset = _subset(args.data, args.split, args.images, models[-1][1].input_size[0])
    pic, record = evolution_figure(models, subset.images, args.layers, args.units, args.tile, args.seed)
    save_png(pic, args.out)
    record.update(checkpoints=[str(p) for p in paths], data=args.data, split=args.split,
                  image_paths=subset.paths)
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1))
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
        Path(args.json).write_text(json.dumps(measures, indent=1))
    for label in labels:
        m = measures[label]
        acc = m["val_acc"]
        print(f"{label}: dead conv1 filters {m['dead_filters']['count']}/{m['dead_filters']['total']}, "
              f"never-active {m['never_active']['count']}, conv2 hf {m['layer2']['hf_fraction']:.3f}, "
              f"grid4 {m['layer2']['grid4']:.2f}, grid2 {m['layer2']['grid2']:.2f}, "
              f"val top-1 {'n/a' if acc is None else f'{acc:.4f}'}")
    print(f"Fig. 6: {args.out}")
    return 0
