"""The ``zfnet`` command.  Each sub-command lives in its own module with a
``register(subparsers)`` function that adds its parser and sets ``func`` (the work)
and, where files or several options must be checked, ``check`` (see
:mod:`zfnet.cli._args`).  Every value is checked before any work starts."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys


# `zfnet train` only (zfnet/_memory.py): OpenBLAS's short spin-wait, set before NumPy loads;
# and the allocator keeping freed memory, set before any thread starts (so that the
# data-parallel step's threads share the main heap: zfnet.data_parallel)
if sys.argv[1:2] == ["train"]:
    from .._memory import keep_freed_memory, short_openblas_spin

    short_openblas_spin()
    keep_freed_memory()

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
