"""``zfnet convert`` and ``zfnet info``: weight files in, our format out, and a look inside."""

from __future__ import annotations

import argparse
import os


def register(sub: argparse._SubParsersAction) -> None:
    archs = "zfnet, alexnet (Caffe layout), alexnet-torchvision, squeezenet1_0"
    p = sub.add_parser(
        "convert", help="convert .pth / .caffemodel / .npz weights to zfnet's .npz format",
        description="Read weights (PyTorch checkpoint, Caffe .caffemodel, Caffe-named or zfnet .npz), "
                    "map them onto a zfnet architecture (chosen from keys and shapes unless --arch), "
                    "and write zfnet's .npz with the preprocessing metadata the weights expect. "
                    "Nothing in the source file is executed.")
    p.add_argument("src", help="source weights file")
    p.add_argument("dst", help="output .npz (written exactly there)")
    p.add_argument("--arch", help=f"architecture: {archs} (default: detect)")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                   help="storage precision (float16 halves the file; loads as float32)")
    p.add_argument("--classes", help="class names, one per line ('wnid name' lines keep the name)")
    p.set_defaults(func=run_convert)

    p = sub.add_parser(
        "info", help="show a weights file: architecture, layers and shapes, parameters, metadata",
        description="Load a weights file of any supported format and print its architecture, "
                    "a table of layers with output shapes, the parameter count and the metadata "
                    "(preprocessing, class names, source).")
    p.add_argument("weights", help="weights file (.npz, .pth, .caffemodel)")
    p.add_argument("--arch", help=f"architecture: {archs} (default: metadata or detect)")
    p.set_defaults(func=run_info)


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
    from ..weights import convert

    classes = _read_classes(args.classes) if args.classes else None
    model = convert(args.src, args.dst, arch=args.arch, dtype=args.dtype, class_names=classes)
    size = os.path.getsize(args.dst)
    print(f"{args.src} -> {args.dst}: {model.arch} ({model.config.get('variant', '')}), "
          f"{model.num_parameters():,} parameters, {args.dtype}, {size / 2**20:.1f} MiB")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from ..weights import detect_format, load

    fmt = detect_format(args.weights)
    model = load(args.weights, arch=args.arch)
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
    print()
    print(model.summary())
    print()
    print(f"{'parameter':<28} shape")
    for key, value in model.state_dict().items():
        print(f"{key:<28} {'x'.join(map(str, value.shape))}")
    return 0
