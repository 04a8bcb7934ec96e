"""The deconvnet: top-down projections, receptive fields, top-k mining."""

from .project import project, project_units, strongest_position
from .receptive_field import ReceptiveField, receptive_fields, rf_table, unit_box
from .windowed import WindowUnsupported, project_units_windowed, window_sizes

__all__ = [
    "project", "project_units", "strongest_position",
    "ReceptiveField", "receptive_fields", "unit_box", "rf_table",
    "project_units_windowed", "window_sizes", "WindowUnsupported",
]
