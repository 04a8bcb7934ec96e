"""zfnet: Zeiler & Fergus (ECCV 2014) deconvnet visualisation in NumPy/CuPy.

``import zfnet`` is cheap: the subpackages (``zfnet.ops``, ``zfnet.nn``,
``zfnet.models``, ``zfnet.deconvnet``, ``zfnet.weights``, ``zfnet.data``,
``zfnet.figures``, ``zfnet.train``, ...) are imported on first use (PEP 562), so
``zfnet.models.zfnet()`` works after a plain ``import zfnet``, as ``numpy.linalg``
does after ``import numpy``.
"""

from __future__ import annotations

import importlib

from .errors import ConfigError, DataError, ShapeError, WeightsError, ZfnetError

__version__ = "0.1.0"

#: Subpackages and modules reachable as attributes of ``zfnet`` (imported lazily).
SUBMODULES = ("backend", "ops", "nn", "models", "deconvnet", "weights", "data", "figures", "train", "cli")

__all__ = ["ZfnetError", "ShapeError", "WeightsError", "DataError", "ConfigError", "__version__", *SUBMODULES]


def __getattr__(name: str):
    if name in SUBMODULES:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module  # later lookups skip this function
        return module
    raise AttributeError(f"module 'zfnet' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(SUBMODULES))
