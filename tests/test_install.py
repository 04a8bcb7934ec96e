"""The installed package, used from a folder outside the repository, finds its trained weights.

A newcomer runs ``pip install ".[demo]" && zfnet demo``; the wheel must carry
``weights/zfnet-imagenette.npz`` (through the ``zfnet/_weights`` link) so the demo
uses trained weights wherever it is run from.  Here the package is installed with
``pip install --target`` into a temporary folder and run from another one, with
nothing of the repository on ``sys.path``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _can_build_offline() -> bool:
    """This environment's setuptools can build our wheel without fetching anything.

    setuptools 70.1 and later build wheels by themselves; older ones (the 65.5 a
    Python 3.11 venv starts with) need the ``wheel`` package beside them.
    """
    try:
        import setuptools
    except ImportError:
        return False
    major_minor = tuple(int(p) for p in setuptools.__version__.split(".")[:2] if p.isdigit())
    if major_minor >= (70, 1):
        return True
    try:
        import wheel  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """``pip install --target`` of this checkout: offline when setuptools can build here,
    else with pip's usual isolated build (which fetches setuptools from the package index)."""
    target = tmp_path_factory.mktemp("site")
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(ROOT)]
    if _can_build_offline():
        cmd.insert(-1, "--no-build-isolation")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        text = done.stdout + done.stderr
        if "--no-build-isolation" not in cmd and any(s in text for s in (
                "No matching distribution", "Could not find a version", "Failed to establish a new connection",
                "Temporary failure in name resolution")):
            pytest.skip("building the wheel needs setuptools>=70.1 (or wheel) here, or the package index, "
                        "and neither is available")
        pytest.fail(f"pip install --target failed:\n{text}")
    return target


def _run(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    return subprocess.run([sys.executable, "-m", "zfnet", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)


def test_installed_package_carries_the_trained_weights(installed: Path) -> None:
    shipped = installed / "zfnet" / "_weights" / "zfnet-imagenette.npz"
    assert shipped.is_file() and not shipped.is_symlink()  # the file itself, not a link into the checkout
    repo = ROOT / "weights" / "zfnet-imagenette.npz"
    assert hashlib.sha256(shipped.read_bytes()).digest() == hashlib.sha256(repo.read_bytes()).digest()


def test_demo_from_outside_the_repository_uses_the_trained_weights(installed: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "somewhere"
    elsewhere.mkdir()
    done = _run(installed, elsewhere, "demo", "--views", "4", "--k", "1", "--layers", "conv1", "--units", "2",
                "--out", "demo-out")
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads((elsewhere / "demo-out" / "top9.json").read_text())
    sha = hashlib.sha256((ROOT / "weights" / "zfnet-imagenette.npz").read_bytes()).hexdigest()
    assert "zfnet-imagenette.npz" in doc["weights"] and sha[:12] in doc["weights"]
    assert "random" not in (done.stdout + done.stderr).lower()
    # the module really came from the installed copy, not from the checkout
    where = _run(installed, elsewhere, "info", str(installed / "zfnet" / "_weights" / "zfnet-imagenette.npz"))
    assert where.returncode == 0, where.stderr
    code = "import zfnet, sys; print(zfnet.__file__)"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(installed)
    origin = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=elsewhere, env=env)
    assert Path(origin.stdout.strip()).is_relative_to(installed)
