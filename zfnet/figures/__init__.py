"""Figures: the paper's Fig. 2 per layer, first-layer filters, feature maps, a gallery.

Everything draws onto uint8 RGB arrays with Pillow (no GUI backend, no display) and
saves PNGs; :mod:`zfnet.figures.gallery` writes a static HTML folder.
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
