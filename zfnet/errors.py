"""The one exception family for bad user input.

Every error that a user can cause (a wrong shape, a corrupt file, an unknown layer
name) is a :class:`ZfnetError`, so a caller can catch exactly the mistakes that are
theirs and let programming errors propagate.  Messages name the file, key, layer or
shape involved and say what was expected.
"""

from __future__ import annotations

__all__ = [
    "ZfnetError",
    "ShapeError",
    "WeightsError",
    "DataError",
    "ConfigError",
]


class ZfnetError(Exception):
    """Base class of every error caused by bad input to zfnet."""


class ShapeError(ZfnetError, ValueError):
    """An array has the wrong number of dimensions or the wrong size."""


class WeightsError(ZfnetError):
    """A weight file is unreadable, corrupt, hostile, or does not fit the model."""


class DataError(ZfnetError):
    """An image or image folder cannot be used."""


class ConfigError(ZfnetError, ValueError):
    """An argument names something that does not exist (layer, architecture, rule)."""
