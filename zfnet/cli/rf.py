"""``zfnet rf``: print the receptive-field table of an architecture."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from ..models import ARCHITECTURES

    p = sub.add_parser("rf", help="print the receptive-field table of an architecture",
                       description="Print each layer's kernel, stride, padding, output size, "
                                   "receptive-field size, jump and start (input coordinate of unit 0's centre).")
    p.add_argument("--arch", default="zfnet", choices=ARCHITECTURES,
                   help=f"architecture: {', '.join(ARCHITECTURES)} (default zfnet)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..deconvnet import rf_table
    from ..models import build

    model = build(args.arch)
    print(f"{args.arch}: input {model.input_size[0]}x{model.input_size[1]}")
    print(rf_table(model))
    return 0
