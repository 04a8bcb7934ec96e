"""Shared pytest setup: import path, hypothesis profile, markers, fixtures.

* The repository root goes on ``sys.path`` so ``import zfnet`` works from a fresh
  clone without installing (run pytest from the repository root).
* Hypothesis runs the ``ci`` profile (no deadline, a moderate number of examples)
  unless ``HYPOTHESIS_PROFILE`` names another (``dev`` is quicker, ``thorough`` longer).
* ``xp`` runs a test once with NumPy and once with CuPy; the CuPy case is marked
  ``gpu`` and skipped when CuPy or a CUDA device is missing.
* ``rng`` is a NumPy generator seeded from the test's own id (never a shared one).
* ``shared_dir`` is ``../shared`` (data and weights shared outside the repository);
  tests using it skip when ``../shared/data`` is absent.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

settings.register_profile(
    "ci", deadline=None, max_examples=30, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", deadline=None, max_examples=10)
settings.register_profile("thorough", deadline=None, max_examples=300)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs CuPy and a CUDA device (skipped otherwise)")
    config.addinivalue_line("markers", "slow: slower than a second or two; deselect with -m 'not slow'")


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request):
    """The array module under test: ``numpy``, or ``cupy`` when a GPU is usable."""
    if request.param == "numpy":
        import numpy

        return numpy
    from zfnet.backend import cupy, gpu_available

    if cupy is None:
        pytest.skip("CuPy is not installed (pip install zfnet[gpu])")
    if not gpu_available():
        pytest.skip("CuPy is installed but no CUDA device is available")
    return cupy


@pytest.fixture
def rng(request) -> "np.random.Generator":
    """A generator of this test's own, seeded from the test's id.

    Tests never share a module-level generator: what one test draws must not depend
    on which tests ran (or skipped) before it.
    """
    import zlib

    import numpy as np

    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` relative to the repository root; skips when ``../shared/data`` is absent."""
    shared = ROOT.parent / "shared"
    if not (shared / "data").is_dir():
        pytest.skip(f"shared data not found at {shared / 'data'} (it lives outside the repository)")
    return shared
