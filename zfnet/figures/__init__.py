"""Figures: the paper's Fig. 2 per layer, first-layer filters, feature maps, a gallery.

Everything draws onto uint8 RGB arrays with Pillow (no GUI backend, no display) and
saves PNGs; :mod:`zfnet.figures.gallery` writes a static HTML folder.

The paper's other analyses live in their own modules, imported by name (they pull in
matplotlib): :mod:`zfnet.figures.occlusion` (Fig. 7), :mod:`zfnet.figures.invariance`
(Fig. 5), :mod:`zfnet.figures.correspondence` (Table 1), :mod:`zfnet.figures.compare`
(Fig. 6), :mod:`zfnet.figures.evolution` (Fig. 4); see ``docs/paper.md``.
"""

from .featuremaps import MAP_SCALINGS, feature_map_figure, feature_map_tiles
from .fig2 import layer_figure, select_units, unit_block
from .filters import FILTER_SCALINGS, fc_row_tiles, filter_grid, filter_tiles
from .render import caption, fit_tile, grid, hstack, save_png, vstack

__all__ = [
    "MAP_SCALINGS", "feature_map_figure", "feature_map_tiles",
    "layer_figure", "select_units", "unit_block",
    "FILTER_SCALINGS", "fc_row_tiles", "filter_grid", "filter_tiles",
    "caption", "fit_tile", "grid", "hstack", "save_png", "vstack",
]
