"""docs/tutorial.md as a Jupyter notebook, and its code run in order.

The tutorial is written in Markdown; every ```python block is a step that runs.
This file turns the page into a notebook (plain JSON, nbformat 4, no dependency)
and runs its blocks the way the tests do::

    python docs/tutorial_notebook.py             # write docs/tutorial.ipynb from docs/tutorial.md
    python docs/tutorial_notebook.py --check     # exit 1 if docs/tutorial.ipynb is out of date
    python docs/tutorial_notebook.py --figures   # run every block, refresh docs/figures/tutorial/
    python docs/tutorial_notebook.py --run DIR   # run every block in DIR (what the tests do)

``--figures`` is the one command to run after the weights change: it runs the blocks
in order, in one namespace, in a temporary folder (the blocks save their pictures
under ``tutorial-figures/`` relative to the working directory), then copies the
pictures the page links into ``docs/figures/tutorial/``, reduced to 256 colours to
keep them small, deletes PNGs there that the page no longer links, and rewrites the
notebook.  ``tests/test_tutorial.py`` runs the same blocks with ``--run`` in a
temporary folder and never writes into the repository.

``--run`` and ``--figures`` use one thread (BLAS, OpenMP and zfnet's own ops) unless
the environment says otherwise: the pictures then do not depend on the machine's
core count, and a job running beside them is barely slowed.  A block's line numbers
in a traceback are its lines in ``docs/tutorial.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
TUTORIAL = DOCS / "tutorial.md"
NOTEBOOK = DOCS / "tutorial.ipynb"
FIGURES = DOCS / "figures" / "tutorial"
#: Where the tutorial's blocks save pictures, relative to the working directory.
FIGURES_OUT = "tutorial-figures"
#: Committed pictures are kept under this size (bytes).
MAX_FIGURE_BYTES = 200_000
#: Thread settings for --run and --figures (read by BLAS/OpenMP when NumPy loads).
ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "ZFNET_NUM_THREADS": "1"}

_FENCE = re.compile(r"^(`{3,})(.*)$")
_FIGURE_LINK = re.compile(r"!\[[^\]]*\]\((figures/tutorial/[^)\s]+)\)")


@dataclass(frozen=True)
class Cell:
    """A piece of the page: ``kind`` is ``"markdown"`` or ``"code"``; ``line`` is
    the 1-based line in the Markdown where its text starts."""

    kind: str
    source: str
    line: int


def split_cells(markdown: str) -> list[Cell]:
    """Cut the page into Markdown and code cells.

    A fence whose info string is exactly ``python`` becomes a code cell (without the
    fences); every other fence (```text, ```bash) stays inside the Markdown.  Blank
    lines around a cell are dropped; empty cells are not produced.
    """
    lines = markdown.splitlines()
    cells: list[Cell] = []
    text: list[str] = []
    text_start = 1
    i = 0

    def flush_text() -> None:
        body = "\n".join(text).strip("\n")
        if body.strip():
            skipped = next(j for j, s in enumerate(text) if s.strip())  # leading blank lines
            cells.append(Cell("markdown", body, text_start + skipped))
        text.clear()

    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None:
            if not text:
                text_start = i + 1
            text.append(lines[i])
            i += 1
            continue
        fence, info = m.group(1), m.group(2).strip()
        close = next((j for j in range(i + 1, len(lines)) if lines[j].startswith(fence)
                      and not lines[j][len(fence):].strip()), None)
        if close is None:
            raise ValueError(f"line {i + 1}: a ``` fence that is never closed")
        if info == "python":
            flush_text()
            cells.append(Cell("code", "\n".join(lines[i + 1: close]), i + 2))
        else:
            if not text:
                text_start = i + 1
            text.extend(lines[i: close + 1])
        i = close + 1
    flush_text()
    return cells


def code_blocks(markdown: str) -> list[Cell]:
    """The ```python blocks, in page order."""
    return [c for c in split_cells(markdown) if c.kind == "code"]


def linked_figures(markdown: str) -> list[str]:
    """File names of the pictures the page shows from ``figures/tutorial/``, in order."""
    return [Path(p).name for p in _FIGURE_LINK.findall(markdown)]


def _lines(text: str) -> list[str]:
    """nbformat's multi-line string: a list of lines, each but the last ending in a newline."""
    parts = text.split("\n")
    return [p + "\n" for p in parts[:-1]] + [parts[-1]]


def notebook(markdown: str) -> dict:
    """The page as an nbformat 4.5 notebook (a dict ready for ``json.dump``)."""
    cells = []
    for n, cell in enumerate(split_cells(markdown)):
        entry = {"cell_type": cell.kind, "id": f"cell-{n:03d}", "metadata": {}, "source": _lines(cell.source)}
        if cell.kind == "code":
            entry.update(execution_count=None, outputs=[])
        cells.append(entry)
    return {
        "cells": cells,
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def dumps(nb: dict) -> str:
    """The notebook as text, formatted as Jupyter writes it (one-space indent)."""
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


@contextlib.contextmanager
def working_directory(path: Path):
    old = Path.cwd()
    os.chdir(path)
    try:
        yield path
    finally:
        os.chdir(old)


def run_blocks(markdown: str, workdir: Path, *, filename: str = str(TUTORIAL), verbose: bool = False) -> dict:
    """Run every ```python block of ``markdown`` in order, in one namespace, in ``workdir``.

    Returns the namespace.  Each block is compiled with its Markdown line numbers, so
    a traceback names the line of ``docs/tutorial.md`` that failed.
    """
    namespace: dict = {"__name__": "__tutorial__"}
    with working_directory(Path(workdir)):
        for block in code_blocks(markdown):
            t0 = time.perf_counter()
            code = compile("\n" * (block.line - 1) + block.source, filename, "exec")
            exec(code, namespace)  # noqa: S102 - the tutorial's own code
            if verbose:
                print(f"[block at line {block.line}: {time.perf_counter() - t0:.1f} s]", flush=True)
    return namespace


def shrink_png(src: Path, dest: Path) -> None:
    """Copy a PNG as 256 colours (median cut, no dithering), optimised."""
    from PIL import Image

    with Image.open(src) as im:
        small = im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    small.save(dest, format="PNG", optimize=True)


def write_figures(markdown: str, dest: Path = FIGURES) -> list[Path]:
    """Run the tutorial in a temporary folder and copy the pictures it links into ``dest``.

    PNGs in ``dest`` that the page no longer links are deleted.  Raises
    ``FileNotFoundError`` naming any linked picture the blocks did not produce.
    """
    wanted = linked_figures(markdown)
    with tempfile.TemporaryDirectory(prefix="zfnet-tutorial-") as tmp:
        run_blocks(markdown, Path(tmp), verbose=True)
        made = Path(tmp) / FIGURES_OUT
        missing = [name for name in wanted if not (made / name).is_file()]
        if missing:
            raise FileNotFoundError(f"the page links pictures its code did not write: {', '.join(missing)}")
        dest.mkdir(parents=True, exist_ok=True)
        written = []
        for name in wanted:
            shrink_png(made / name, dest / name)
            written.append(dest / name)
    for old in dest.glob("*.png"):
        if old.name not in wanted:
            old.unlink()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--check", action="store_true", help="exit 1 if docs/tutorial.ipynb is out of date")
    what.add_argument("--figures", action="store_true",
                      help="run every block, refresh docs/figures/tutorial/, rewrite the notebook")
    what.add_argument("--run", metavar="DIR", type=Path,
                      help="run every block with DIR as the working directory (what the tests do)")
    args = parser.parse_args(argv)
    markdown = TUTORIAL.read_text(encoding="utf-8")
    if args.run or args.figures:
        for key, value in ONE_THREAD.items():
            os.environ.setdefault(key, value)  # before the blocks import NumPy
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))  # run this checkout's zfnet, installed or not
        t0 = time.perf_counter()
        if args.run:
            args.run.mkdir(parents=True, exist_ok=True)
            run_blocks(markdown, args.run, verbose=True)
        else:
            for path in write_figures(markdown):
                print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size / 1024:.0f} KiB)")
        print(f"ran {len(code_blocks(markdown))} blocks in {time.perf_counter() - t0:.1f} s")
        if args.run:
            return 0
    text = dumps(notebook(markdown))
    n_code = sum(c["cell_type"] == "code" for c in json.loads(text)["cells"])
    if args.check:
        fresh = NOTEBOOK.is_file() and NOTEBOOK.read_text(encoding="utf-8") == text
        print(f"{NOTEBOOK.relative_to(ROOT)} is "
              + ("up to date" if fresh else "out of date: run python docs/tutorial_notebook.py"))
        return 0 if fresh else 1
    NOTEBOOK.write_text(text, encoding="utf-8")
    print(f"wrote {NOTEBOOK.relative_to(ROOT)}: {n_code} code cells")
    return 0


if __name__ == "__main__":
    sys.exit(main())
