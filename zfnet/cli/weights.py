"""``zfnet convert`` and ``zfnet info``: weight files in, our format out, and a look inside."""

from __future__ import annotations

import argparse
import os
from argparse import ArgumentTypeError
from pathlib import Path

from ._args import FORCE_HELP, existing_file, output_file


def register(sub: argparse._SubParsersAction) -> None:
    from ..models import ARCHITECTURES

    archs = ", ".join(a + (" (Caffe layout)" if a == "alexnet" else "") for a in ARCHITECTURES)
    p = sub.add_parser(
        "convert", help="convert .pth / .caffemodel / .npz weights to zfnet's .npz format",
        description="Read weights (PyTorch checkpoint, Caffe .caffemodel, Caffe-named or zfnet .npz), "
                    "map them onto a zfnet architecture (chosen from keys and shapes unless --arch), "
                    "and write zfnet's .npz with the preprocessing metadata the weights expect. "
                    "A Caffe file is built from its own layer definitions (or --prototxt): one of "
                    "zfnet's architectures when the graph is exactly that, else a 'caffe-graph' network "
                    "that the .npz keeps. "
                    "Nothing in the source file is executed. An existing DST is replaced only with --force.")
    p.add_argument("src", help="source weights file (.pth, .caffemodel or .npz)")
    p.add_argument("dst", help="output file ending in .npz, written exactly there (its folder is created "
                               "if needed); an existing file is replaced only with --force")
    p.add_argument("--arch", choices=ARCHITECTURES, metavar="ARCH", help=f"architecture: {archs} (default: detect)")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                   help="storage precision (float16 halves the file; loads as float32; default float32)")
    p.add_argument("--classes", help="text file of class names, one per line ('wnid name' lines keep the name)")
    _caffe_options(p)
    p.add_argument("--force", action="store_true", help=FORCE_HELP)
    p.set_defaults(func=run_convert, check=check_convert)

    p = sub.add_parser(
        "info", help="show a weights file: architecture, layers and shapes, parameters, metadata",
        description="Load a weights file of any supported format and print its architecture, "
                    "a table of layers with output shapes, the parameter count and the metadata "
                    "(preprocessing, class names, source).")
    p.add_argument("weights", help="weights file (.npz, .pth, .caffemodel)")
    p.add_argument("--arch", choices=ARCHITECTURES, metavar="ARCH",
                   help=f"architecture: {archs} (default: metadata or detect)")
    _caffe_options(p)
    p.set_defaults(func=run_info, check=check_info)


def _caffe_options(p: argparse.ArgumentParser) -> None:
    """``--prototxt``, ``--mean`` and ``--no-truncate``: how a Caffe file's network is built."""
    p.add_argument("--prototxt", metavar="FILE",
                   help="the network's Caffe definition (deploy.prototxt): the graph is built from it "
                        "(default: the .caffemodel's own layer list, when it has one)")
    p.add_argument("--mean", metavar="FILE",
                   help="a Caffe mean file (.binaryproto, e.g. imagenet_mean.binaryproto): its per-channel "
                        "average is subtracted (default: the definition's mean_value, else 104/117/123 BGR)")
    p.add_argument("--no-truncate", dest="truncate", action="store_false",
                   help="refuse a Caffe graph with a layer zfnet cannot run, instead of ending the network "
                        "before it (with a note)")


def _caffe_kwargs(args: argparse.Namespace) -> dict:
    return {"prototxt": args.prototxt, "mean": args.mean, "truncate": args.truncate}


def _check_caffe(args: argparse.Namespace) -> None:
    if args.prototxt:
        existing_file("--prototxt", args.prototxt)
    if args.mean:
        existing_file("--mean", args.mean)


def check_info(args: argparse.Namespace) -> None:
    """Parse-time checks of ``zfnet info``."""
    existing_file("WEIGHTS", args.weights)
    _check_caffe(args)


def check_convert(args: argparse.Namespace) -> None:
    """Parse-time checks of ``zfnet convert`` (see :mod:`zfnet.cli._args`)."""
    existing_file("SRC", args.src)
    output_file("DST", args.dst, ".npz", args.force)
    if Path(args.src).resolve() == Path(args.dst).resolve():
        raise ArgumentTypeError(f"argument DST: the same file as SRC ({args.dst!r})")
    if args.classes:
        existing_file("--classes", args.classes)
    _check_caffe(args)


def _read_classes(path: str) -> list[str]:
    from ..errors import ConfigError

    try:
        with open(path, encoding="utf-8") as fh:
            lines = [ln.strip() for ln in fh if ln.strip()]
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read class names ({exc.strerror or exc})") from exc
    # "n01440764 tench" -> "tench"; plain names are kept whole.
    return [ln.split(None, 1)[1] if ln[:1] == "n" and ln.split(None, 1)[0][1:].isdigit()
            and " " in ln else ln for ln in lines]


def run_convert(args: argparse.Namespace) -> int:
    from ..weights import load, save

    classes = _read_classes(args.classes) if args.classes else None
    model = load(args.src, arch=args.arch, class_names=classes, **_caffe_kwargs(args))  # convert, in two steps:
    Path(args.dst).parent.mkdir(parents=True, exist_ok=True)  # the folder only once SRC has loaded
    save(model, args.dst, dtype=args.dtype)
    size = os.path.getsize(args.dst)
    print(f"{args.src} -> {args.dst}: {model.arch} ({model.config.get('variant', '')}), "
          f"{model.num_parameters():,} parameters, {args.dtype}, {size / 2**20:.1f} MiB")
    _print_caffe(model.config)
    return 0


def _print_caffe(cfg: dict) -> None:
    """What a Caffe file's network is: recognised architecture or its own graph, and the notes."""
    caffe = cfg.get("caffe")
    if not isinstance(caffe, dict):
        return
    text = lambda v: str(v)[:300]  # noqa: E731  (the metadata of a file: print, never trust its size)
    recognised = caffe.get("recognised")
    if recognised:
        print(f"caffe graph:   recognised as {text(recognised)}: the file's layers are exactly that architecture")
    elif cfg.get("arch") == "caffe-graph":
        print(f"caffe graph:   '{text(caffe.get('net'))}', built layer by layer from {text(caffe.get('definition'))} "
              "(not one of zfnet's architectures; the file's own layer names)")
    else:
        print(f"caffe graph:   {text(caffe.get('definition'))}")
    notes = caffe.get("notes")
    for note in notes[:20] if isinstance(notes, list) else []:
        print(f"  note: {text(note)}")


def run_info(args: argparse.Namespace) -> int:
    from ..weights import detect_format, load

    fmt = detect_format(args.weights)
    model = load(args.weights, arch=args.arch, **_caffe_kwargs(args))
    cfg = model.config
    print(f"file:          {args.weights} ({fmt}, {os.path.getsize(args.weights) / 2**20:.1f} MiB)")
    print(f"architecture:  {model.arch} (variant {cfg.get('variant', '-')}), "
          f"{model.num_classes} classes, input {model.input_size[0]}x{model.input_size[1]}")
    print(f"parameters:    {model.num_parameters():,}")
    if "channel_order" in cfg:
        resize = cfg.get("resize")
        geometry = f"short side {resize}, centre crop" if resize else "resize to"
        print(f"preprocess:    {geometry} {model.input_size[0]}x{model.input_size[1]}, "
              f"{cfg['channel_order']}, pixel x {cfg.get('scale', 1):g}, "
              f"mean {cfg.get('mean')}, std {cfg.get('std')}")
    else:
        print("preprocess:    not recorded (zfnet.data.TransformConfig defaults apply)")
    names = cfg.get("class_names")
    if names:
        print(f"class names:   {len(names)}: {', '.join(names[:5])}{', ...' if len(names) > 5 else ''}")
    if "source" in cfg:
        print(f"converted from: {cfg['source'].get('format')} file {cfg['source'].get('file')}")
    _print_caffe(cfg)
    print()
    print(model.summary())
    print()
    print(f"{'parameter':<28} shape")
    for key, value in model.state_dict().items():
        print(f"{key:<28} {'x'.join(map(str, value.shape))}")
    return 0
