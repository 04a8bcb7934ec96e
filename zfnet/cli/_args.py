"""Argument types and checks shared by the sub-commands.

Every value typed on the command line is checked while it is parsed, before any
work starts (no mining, no loading of data or weights), and a mistake ends the
command with argparse's one-line error that names the option, exit status 2::

    zfnet top9: error: argument --tile: must be a positive integer, got '-4'

Two kinds of check:

* **types** (``positive_int``, ``units`` ...) run inside argparse on one value;
* **checks on files and folders** (``existing_file``, ``output_file`` ...) need the
  file system or several options at once (``--force``).  A command lists them in a
  ``check(args)`` function given to ``set_defaults(check=...)``; ``zfnet.cli.main``
  calls it right after parsing and turns the ``argparse.ArgumentTypeError`` they
  raise into the same one-line error.

The rule for outputs, the same in every command: a *file* named on the command line
(``--out x.png``, ``convert``'s ``DST``, ``--json``) is never replaced unless
``--force`` is given; a *folder* named on the command line is zfnet's to write in,
and a rerun replaces the files zfnet writes there.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Callable

__all__ = [
    "positive_int", "nonnegative_int", "int_at_least", "positive_float", "nonnegative_float",
    "float_in", "units", "existing_file", "existing_folder", "output_folder", "output_file",
    "check_device", "FORCE_HELP",
]

#: Help of every ``--force`` flag.
FORCE_HELP = "replace output files that already exist (default: refuse and stop before any work)"

Error = argparse.ArgumentTypeError


# -- types: one value, checked by argparse ------------------------------------------

def _named(name: str):
    """Give a type function the name argparse prints (``invalid <name> value``)."""
    def deco(fn):
        fn.__name__ = name
        return fn
    return deco


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise Error(f"must be {what}, got {text!r}") from None


def _float(text: str, what: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise Error(f"must be {what}, got {text!r}") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise Error(f"must be {what}, got {text!r}")
    return v


@_named("positive integer")
def positive_int(text: str) -> int:
    """An integer >= 1."""
    v = _int(text, "a positive integer")
    if v < 1:
        raise Error(f"must be a positive integer, got {text!r}")
    return v


@_named("non-negative integer")
def nonnegative_int(text: str) -> int:
    """An integer >= 0."""
    v = _int(text, "an integer >= 0")
    if v < 0:
        raise Error(f"must be an integer >= 0, got {text!r}")
    return v


def int_at_least(low: int) -> Callable[[str], int]:
    """A type function for integers >= ``low``."""
    @_named(f"integer >= {low}")
    def parse(text: str) -> int:
        v = _int(text, f"an integer >= {low}")
        if v < low:
            raise Error(f"must be an integer >= {low}, got {text!r}")
        return v
    return parse


@_named("positive number")
def positive_float(text: str) -> float:
    """A finite number > 0."""
    v = _float(text, "a positive number")
    if not v > 0:
        raise Error(f"must be a positive number, got {text!r}")
    return v


@_named("non-negative number")
def nonnegative_float(text: str) -> float:
    """A finite number >= 0."""
    v = _float(text, "a number >= 0")
    if v < 0:
        raise Error(f"must be a number >= 0, got {text!r}")
    return v


def float_in(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Callable[[str], float]:
    """A type function for numbers in an interval, e.g. ``float_in(0, 1, high_open=True)`` is [0, 1)."""
    what = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    @_named(what[2:])
    def parse(text: str) -> float:
        v = _float(text, what)
        if v < low or v > high or (low_open and v == low) or (high_open and v == high):
            raise Error(f"must be {what}, got {text!r}")
        return v
    return parse


@_named("units")
def units(text: str) -> int | str | list[int]:
    """``--units``: a positive count, ``all``, or channel indices ``3,17,40``.

    A single number is how many units to draw (chosen reproducibly); a list, even of
    one (``5,``), names the channels themselves.
    """
    what = ("a positive number of units, 'all', or a comma-separated list of channel indices "
            f"(like 3,17,40), got {text!r}")
    text = text.strip()
    if text.lower() == "all":
        return "all"
    if "," in text:
        parts = [t.strip() for t in text.split(",")]
        if parts and parts[-1] == "":
            parts.pop()  # "5," is the list [5]
        try:
            chosen = [int(t) for t in parts]
        except ValueError:
            raise Error(f"must be {what}") from None
        if not chosen or min(chosen) < 0:
            raise Error(f"must be {what}")
        return chosen
    try:
        n = int(text)
    except ValueError:
        raise Error(f"must be {what}") from None
    if n < 1:
        raise Error(f"must be {what}")
    return n


# -- checks after parsing: files, folders, devices ------------------------------------

def _why_not_creatable(folder: Path) -> str | None:
    """Why ``folder`` cannot be created (None when it exists or can be)."""
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            return f"cannot create the folder {str(folder)!r}"
        probe = probe.parent
    if not probe.is_dir():
        return f"cannot create the folder {str(folder)!r}: {str(probe)!r} is a file"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"cannot write in {str(probe)!r} (permission denied)"
    return None


def existing_file(option: str, path: str | os.PathLike) -> None:
    """``path`` must be an existing file."""
    p = Path(path)
    if p.is_dir():
        raise Error(f"argument {option}: {str(p)!r} is a folder, expected a file")
    if not p.is_file():
        raise Error(f"argument {option}: no such file: {str(p)!r}")


def existing_folder(option: str, path: str | os.PathLike) -> None:
    """``path`` must be an existing folder."""
    p = Path(path)
    if p.is_file():
        raise Error(f"argument {option}: {str(p)!r} is a file, expected a folder")
    if not p.is_dir():
        raise Error(f"argument {option}: no such folder: {str(p)!r}")


def output_folder(option: str, path: str | os.PathLike) -> None:
    """``path`` must be a folder, or something that can be created as one."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise Error(f"argument {option}: {str(p)!r} is a file, expected a folder")
    why = _why_not_creatable(p)
    if why:
        raise Error(f"argument {option}: {why}")


def output_file(option: str, path: str | os.PathLike, suffix: str, force: bool) -> None:
    """``path`` must end in ``suffix``, not exist unless ``force``, and have a creatable folder."""
    p = Path(path)
    if p.is_dir():
        raise Error(f"argument {option}: {str(p)!r} is a folder, expected a {suffix} file")
    if p.suffix.lower() != suffix:
        raise Error(f"argument {option}: must be a file name ending in {suffix}, got {str(p)!r}")
    if p.exists() and not force:
        raise Error(f"argument {option}: {str(p)!r} already exists; give --force to replace it")
    why = _why_not_creatable(p.parent)
    if why:
        raise Error(f"argument {option}: {why}")


def check_device(option: str, device: str) -> None:
    """``gpu`` needs CuPy and a CUDA device."""
    if device == "gpu":
        from ..backend import gpu_available

        if not gpu_available():
            raise Error(f"argument {option}: gpu needs CuPy and a CUDA device, and none was found "
                        "(pip install cupy-cuda12x; or use --device cpu)")
