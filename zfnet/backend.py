"""Array backend: NumPy always, CuPy when it is installed and a GPU is present.

Every op starts with ``xp = get_array_module(x)`` and then writes ``xp.zeros``,
``xp.matmul`` and so on, so one readable code path serves both libraries.  A CuPy
kernel, where one exists, is a fast path behind a single ``if xp is cupy`` inside
the op, and the readable path stays the reference it is tested against.
"""

from __future__ import annotations

from typing import Any

import numpy as np

try:  # CuPy is optional: ``pip install zfnet[gpu]``.
    import cupy  # type: ignore[import-not-found]

    try:
        _GPU = cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # CuPy installed but no driver or no device.
        _GPU = False
except ImportError:  # pragma: no cover - depends on the machine
    cupy = None
    _GPU = False

__all__ = [
    "cupy",
    "gpu_available",
    "get_array_module",
    "asnumpy",
    "to_device",
]


def gpu_available() -> bool:
    """Return True when CuPy imported and sees at least one CUDA device."""
    return _GPU


def get_array_module(*arrays: Any):
    """Return ``cupy`` if any argument is a CuPy array, else ``numpy``."""
    if cupy is not None:
        for a in arrays:
            if isinstance(a, cupy.ndarray):
                return cupy
    return np


def asnumpy(a: Any) -> np.ndarray:
    """Copy a CuPy array to the host; return NumPy arrays (and scalars) as arrays."""
    if cupy is not None and isinstance(a, cupy.ndarray):
        return cupy.asnumpy(a)
    return np.asarray(a)


def to_device(a: Any, device: str = "cpu"):
    """Move ``a`` to ``"cpu"`` (NumPy) or ``"gpu"`` (CuPy)."""
    if device == "cpu":
        return asnumpy(a)
    if device in ("gpu", "cuda"):
        if not _GPU:
            from .errors import ConfigError

            raise ConfigError("device='gpu' asked for, but CuPy with a CUDA device is not available")
        return cupy.asarray(a)
    from .errors import ConfigError

    raise ConfigError(f"unknown device {device!r}: expected 'cpu' or 'gpu'")

