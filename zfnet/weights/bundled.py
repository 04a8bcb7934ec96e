"""The trained weights that travel with the installed package.

``weights/zfnet-imagenette.npz`` (with its model card ``weights/README.md``) is where
readers of the repository find our trained ZFNet.  ``zfnet/_weights/`` holds a
symbolic link to it, and ``pyproject.toml`` declares ``_weights/*.npz`` as package
data, so building a wheel copies the file itself into the package: one file in git,
one source of truth, and ``zfnet demo`` finds it from any working directory after
``pip install``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["BUNDLED", "bundled_weights_path"]

#: Trained weights shipped inside the package: name -> architecture.
BUNDLED = {"zfnet-imagenette.npz": "zfnet"}

_DIR = Path(__file__).resolve().parent.parent / "_weights"


def bundled_weights_path(name: str = "zfnet-imagenette.npz") -> Path | None:
    """Path of the bundled weights file ``name``, or None when it is missing.

    It is missing only in a broken install or a checkout whose ``weights/`` file was
    deleted (a dangling link counts as missing).
    """
    if name not in BUNDLED:
        from ..errors import WeightsError

        raise WeightsError(f"no bundled weights named {name!r}; bundled: {', '.join(BUNDLED)}")
    path = _DIR / name
    return path if path.is_file() else None
