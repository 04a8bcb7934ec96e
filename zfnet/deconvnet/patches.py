"""Former home of the unit patches and projections drawn for Fig. 2 (an old address).

Drawing moved to :mod:`zfnet.figures.units` (``checkerboard``,
``display_projection``, ``UnitView``, ``unit_views``, ``SCALINGS``) and the numbers to
:mod:`zfnet.deconvnet.crops` (``crop_with_border``, ``unit_crops``): ``deconvnet``
computes, ``figures`` draws.  The names still import from here, lazily, so that this
package does not import ``figures`` when it loads.
"""

from __future__ import annotations

from .crops import crop_with_border

__all__ = ["checkerboard", "crop_with_border", "display_projection", "UnitView", "unit_views", "SCALINGS"]

_MOVED = {"checkerboard", "display_projection", "UnitView", "unit_views", "SCALINGS", "CHECKER_COLOURS",
          "CHECKER_CELL"}


def __getattr__(name):
    if name in _MOVED:
        from ..figures import units

        return getattr(units, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
