"""zfnet: Zeiler & Fergus (ECCV 2014) deconvnet visualisation in NumPy/CuPy."""

from .errors import ConfigError, DataError, ShapeError, WeightsError, ZfnetError

__version__ = "0.1.0"

__all__ = ["ZfnetError", "ShapeError", "WeightsError", "DataError", "ConfigError", "__version__"]
