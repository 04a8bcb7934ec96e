"""The ``zfnet`` command.  Each sub-command lives in its own module with a
``register(subparsers)`` function that adds its parser and sets ``func`` (the work)
and, where files or several options must be checked, ``check`` (see
:mod:`zfnet.cli._args`).  Every value is checked before any work starts."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys


def _short_openblas_spin_for_training(argv: list[str]) -> None:
    """``zfnet train``: make OpenBLAS's idle threads sleep after 2**4 cycles, not 2**28.

    After every GEMM OpenBLAS's threads spin for about 0.1 s before they sleep, and on
    a small machine they take the cores from the threaded NumPy work that follows
    each GEMM in a training step (im2col, Winograd transforms, pooling, LRN;
    ``zfnet.ops._parallel``): a ZFNet step is 5% faster on 2 cores with the short spin.
    Latency-bound work (one image, one projection: many small GEMMs in a row) is
    slower with it, because every GEMM then wakes sleeping threads, so only ``train``
    gets it (``benchmarks/RESULTS.md``, ``docs/speed.md``).  OpenBLAS reads the
    variable once, when NumPy loads it: a value already set wins, and nothing changes
    once NumPy is imported.
    """
    if argv[1:2] == ["train"] and "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")


_short_openblas_spin_for_training(sys.argv)

from .. import __version__  # noqa: E402
from ..errors import ZfnetError  # noqa: E402

# Sub-command modules, in the order `zfnet --help` lists them.
_MODULES = ("rf", "weights", "visualize", "train", "paper")


def build_parser() -> argparse.ArgumentParser:
    """The ``zfnet`` parser with every sub-command of this build."""
    parser = argparse.ArgumentParser(
        prog="zfnet",
        description="Zeiler & Fergus (2014) deconvnet visualisation in NumPy/CuPy. "
                    "'zfnet COMMAND --help' describes each command; 'zfnet demo' is the place to start.",
    )
    parser.add_argument("--version", action="version", version=f"zfnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _MODULES:
        module_name = f"{__name__}.{name}"
        if importlib.util.find_spec(module_name) is None:
            continue  # a sub-command that is not part of this build
        importlib.import_module(module_name).register(sub)
    return parser


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """``{name: sub-parser}`` of a parser made by :func:`build_parser`."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def main(argv: list[str] | None = None) -> int:
    """Run ``zfnet`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    A bad value on the command line exits through argparse (``SystemExit(2)``, a
    one-line message naming the option) before any work; a :class:`ZfnetError`
    raised by the work is printed the same way and returns 2.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    check = getattr(args, "check", None)
    if check is not None:
        try:
            check(args)
        except argparse.ArgumentTypeError as e:
            subcommands(parser)[args.command].error(str(e))  # exits with status 2
    try:
        return int(args.func(args) or 0)
    except ZfnetError as e:
        print(f"zfnet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"zfnet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
