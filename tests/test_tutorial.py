"""docs/tutorial.md runs, its pictures are committed, and its notebook is in step.

* The ```python blocks of the page run in order, in one namespace, in a temporary
  folder (a fresh process, ``docs/tutorial_notebook.py --run DIR``, on one thread:
  the only way to set BLAS threads is before NumPy loads), and they write every
  picture the page links.  Nothing is written into the repository.  The blocks need
  nothing optional: without scikit-image ``demo_photos()`` has only matplotlib's
  photograph, and every block still runs.
* Every picture the page links is committed under docs/figures/tutorial/, small,
  and nothing else is there.
* Every relative link and anchor of the page resolves (other pages change too).
* docs/tutorial_notebook.py turns the page into valid nbformat-4 JSON with one code
  cell per block, and the committed docs/tutorial.ipynb is what it produces now.

Regenerate the pictures (after the bundled weights change) and the notebook with::

    python docs/tutorial_notebook.py --figures
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "docs" / "tutorial_notebook.py"


def _load_converter():
    spec = importlib.util.spec_from_file_location("tutorial_notebook", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


tn = _load_converter()
MARKDOWN = tn.TUTORIAL.read_text(encoding="utf-8")


def test_tutorial_blocks_run_and_write_every_linked_figure(tmp_path):
    env = dict(os.environ, **tn.ONE_THREAD)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, str(SCRIPT), "--run", str(tmp_path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"a tutorial block failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    assert f"ran {len(tn.code_blocks(MARKDOWN))} blocks" in proc.stdout
    made = tmp_path / tn.FIGURES_OUT
    missing = [name for name in tn.linked_figures(MARKDOWN) if not (made / name).is_file()]
    assert not missing, f"the page links pictures its code does not write: {missing}"


def test_every_linked_figure_is_committed_and_small():
    linked = tn.linked_figures(MARKDOWN)
    assert len(linked) >= 8 and len(set(linked)) == len(linked)
    for name in linked:
        path = tn.FIGURES / name
        assert path.is_file(), f"{path.relative_to(ROOT)} is linked but missing: run python docs/tutorial_notebook.py --figures"
        assert path.stat().st_size < tn.MAX_FIGURE_BYTES, f"{name}: {path.stat().st_size} bytes"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{name} is not a PNG"
    unlinked = sorted(p.name for p in tn.FIGURES.iterdir() if p.name not in linked)
    assert not unlinked, f"docs/figures/tutorial/ holds files the page does not show: {unlinked}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(markdown: str) -> set[str]:
    body = re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)  # headings inside code do not count
    return {_slug(m) for m in re.findall(r"^#{1,6} (.+)$", body, flags=re.M)}


def test_every_relative_link_and_anchor_resolves():
    links = re.findall(r"\]\(([^)\s]+)\)", MARKDOWN)
    assert links
    for link in links:
        if re.match(r"[a-z]+:", link):
            continue
        target, _, anchor = link.partition("#")
        page = tn.DOCS / target if target else tn.TUTORIAL
        assert page.exists(), f"docs/tutorial.md links {link!r}: {page} does not exist"
        if anchor:
            assert anchor in _anchors(page.read_text(encoding="utf-8")), f"docs/tutorial.md links {link!r}: no such heading"


def test_notebook_is_valid_nbformat_with_one_code_cell_per_block():
    nb = json.loads(tn.dumps(tn.notebook(MARKDOWN)))
    assert nb["nbformat"] == 4 and nb["nbformat_minor"] >= 4
    assert nb["metadata"]["kernelspec"]["language"] == "python"
    fences = re.findall(r"^```python$", MARKDOWN, flags=re.M)
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert len(code) == len(fences) == len(tn.code_blocks(MARKDOWN)) >= 10
    ids = [c["id"] for c in nb["cells"]]
    assert len(set(ids)) == len(ids)
    for cell in nb["cells"]:
        assert set(cell) >= {"cell_type", "id", "metadata", "source"}
        assert all(isinstance(line, str) for line in cell["source"])
        assert all(line.endswith("\n") for line in cell["source"][:-1])
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None
            assert "```" not in "".join(cell["source"])
    for cell, block in zip(code, tn.code_blocks(MARKDOWN)):
        assert "".join(cell["source"]) == block.source
    # nothing of the page is lost: every line but the fences is in some cell
    text = "\n".join("".join(c["source"]) for c in nb["cells"])
    for line in MARKDOWN.splitlines():
        if not line.startswith("```"):
            assert line in text, line


def test_committed_notebook_is_up_to_date():
    assert tn.NOTEBOOK.is_file(), "docs/tutorial.ipynb is missing: run python docs/tutorial_notebook.py"
    assert tn.NOTEBOOK.read_text(encoding="utf-8") == tn.dumps(tn.notebook(MARKDOWN)), (
        "docs/tutorial.ipynb is stale: run python docs/tutorial_notebook.py")


def test_split_cells_keeps_other_fences_in_markdown_and_refuses_an_open_fence():
    page = "# T\n\nText.\n\n```bash\nzfnet rf\n```\n\n```python\nx = 1\n\ny = 2\n```\nMore.\n"
    cells = tn.split_cells(page)
    assert [c.kind for c in cells] == ["markdown", "code", "markdown"]
    assert "```bash\nzfnet rf\n```" in cells[0].source
    assert cells[1].source == "x = 1\n\ny = 2" and cells[1].line == 10
    assert cells[2].source == "More." and cells[2].line == 14
    with pytest.raises(ValueError, match="line 3"):
        tn.split_cells("a\n\n```python\nx = 1\n")


def test_a_failing_block_is_reported_at_its_line_in_the_page(tmp_path):
    page = "Intro.\n\n```python\nvalue = 41\n```\n\nThen:\n\n```python\nvalue += 1\nraise RuntimeError(value)\n```\n"
    with pytest.raises(RuntimeError, match="42") as info:
        tn.run_blocks(page, tmp_path, filename="page.md")
    frame = traceback.extract_tb(info.value.__traceback__)[-1]
    assert (frame.filename, frame.lineno) == ("page.md", 11)
    assert Path.cwd() != tmp_path  # the working directory is restored
