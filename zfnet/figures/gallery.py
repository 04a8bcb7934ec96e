"""An offline HTML gallery of mined units: open ``index.html`` in any browser.

Layout of the folder (every link relative, no server, no external asset -- the
styles are inline and every picture is a PNG inside the folder)::

    gallery/
      index.html                    layers, with their Fig. 2 pictures
      <layer>/index.html            one thumbnail per unit
      <layer>/unit_<c>.html         the unit's top k: projection, patch, the whole
                                    image with the receptive field drawn, value,
                                    image name, position
      <layer>/img/*.png

Each page carries a few lines of inline JavaScript that, once the page has loaded,
counts images that failed to load and writes the count to
``<body data-missing="N">``; the headless-browser test reads it back.
"""

from __future__ import annotations

import html
import os
import shutil
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from ..data.images import display_path
from .units import UnitView
from .render import save_png

__all__ = ["write_gallery", "context_picture"]

_STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:1.5em;background:#f4f4f4;color:#222}
a{color:#0645ad;text-decoration:none}a:hover{text-decoration:underline}
h1{font-size:1.4em;margin:.2em 0}h2{font-size:1.1em;margin:1.2em 0 .4em}
.nav{margin-bottom:1em;font-size:.95em}
.units{display:flex;flex-wrap:wrap;gap:14px}
.unit{background:#fff;padding:6px;border:1px solid #ddd;border-radius:4px}
.unit img{display:block}
.ranks{border-collapse:collapse;background:#fff}
.ranks td,.ranks th{border:1px solid #ddd;padding:6px;vertical-align:middle;text-align:center}
.ranks td.meta{text-align:left;font-size:.9em;font-family:ui-monospace,monospace}
img.px{image-rendering:pixelated;width:128px;height:128px;object-fit:contain;background:#ccc}
img.ctx{width:160px;height:auto}
img.fig{max-width:100%;height:auto;border:1px solid #ddd;background:#fff}
.note{color:#555;font-size:.9em;max-width:60em}
"""

_CHECK_SCRIPT = """<script>
window.addEventListener('load', function () {
  var bad = 0, imgs = document.images;
  for (var i = 0; i < imgs.length; i++) { if (!imgs[i].complete || imgs[i].naturalWidth === 0) bad++; }
  document.body.setAttribute('data-missing', String(bad));
  document.body.setAttribute('data-images', String(imgs.length));
});
</script>"""


def _page(title: str, body: str, up: str | None = None) -> str:
    nav = f'<div class="nav"><a href="{up}">&larr; back</a></div>' if up else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n"
        f"<body data-missing=\"unknown\">{nav}<h1>{html.escape(title)}</h1>\n{body}\n{_CHECK_SCRIPT}</body></html>\n"
    )


def context_picture(picture: np.ndarray, box: Sequence[int], width: int = 2) -> np.ndarray:
    """The whole (preprocessed) image with the unit's receptive field outlined.

    The box is drawn where it is, clipped to the image; a box reaching past the
    border shows as a rectangle cut by the edge.
    """
    img = Image.fromarray(picture)
    h, w = picture.shape[:2]
    y0, x0, y1, x1 = box
    draw = ImageDraw.Draw(img)
    draw.rectangle([max(x0, 0), max(y0, 0), min(x1, w) - 1, min(y1, h) - 1], outline=(255, 40, 40), width=width)
    return np.asarray(img)


def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


def write_gallery(
    out: str | os.PathLike,
    views: Mapping[str, Mapping[int, Sequence[UnitView]]],
    *,
    pictures: Mapping[int, np.ndarray] | None = None,
    layer_figures: Mapping[str, str | os.PathLike] | None = None,
    extra_figures: Sequence[tuple[str, str | os.PathLike]] = (),
    title: str = "Top-9 gallery",
    notes: str = "",
    unit_thumbs: Mapping[str, Mapping[int, np.ndarray]] | None = None,
    k: int | None = None,
) -> Path:
    """Write the gallery folder.

    Parameters
    ----------
    out : path
        The gallery folder (created; an existing one is replaced).
    views : mapping layer -> mapping channel -> views (best first)
    pictures : mapping image index -> uint8 (H, W, 3), optional
        Preprocessed images, for the context pictures with the box drawn.
    layer_figures : mapping layer -> PNG path, optional
        Fig. 2 pictures, copied in and shown on the index.
    extra_figures : sequence of (caption, PNG path)
        Other pictures for the index (filters, feature maps).
    title : str
    notes : str
        A paragraph for the index (what was mined, with which weights); plain text.
    unit_thumbs : mapping layer -> mapping channel -> uint8 image, optional
        Thumbnails for the layer pages (e.g. :func:`~zfnet.figures.unit_block`);
        default: the unit's rank-0 projection beside its patch.
    k : int, optional
        Slots per unit (the top k); with it, a unit with fewer views is labelled as
        having fired in fewer images, and one with none as dead.

    Returns
    -------
    Path
        ``out / "index.html"``.
    """
    final = Path(out)
    # Built beside the old gallery and swapped in at the end: an interrupted run
    # leaves the previous gallery (or none), never a half-written one.
    out = final.parent / f".{final.name}.building-{os.getpid()}"
    if out.exists():
        shutil.rmtree(out)
    (out / "figures").mkdir(parents=True)
    index_parts = []
    if notes:
        index_parts.append(f'<p class="note">{html.escape(notes)}</p>')
    index_parts.append("<h2>Layers</h2><ul>")
    for layer, units in views.items():
        index_parts.append(
            f'<li><a href="{html.escape(slug(layer))}/index.html">{html.escape(layer)}</a> '
            f"({len(units)} units)</li>"
        )
    index_parts.append("</ul>")
    for layer, units in views.items():
        _write_layer(out, layer, units, pictures or {}, (unit_thumbs or {}).get(layer), k)
        if layer_figures and layer in layer_figures:
            dst = out / "figures" / f"{slug(layer)}.png"
            shutil.copyfile(layer_figures[layer], dst)
            index_parts.append(
                f'<h2><a href="{slug(layer)}/index.html">{html.escape(layer)}</a></h2>'
                f'<a href="{slug(layer)}/index.html"><img class="fig" src="{_rel(dst, out)}" '
                f'alt="{html.escape(layer)} top-9 figure"></a>'
            )
    for i, (cap, src) in enumerate(extra_figures):
        dst = out / "figures" / f"extra_{i}.png"
        shutil.copyfile(src, dst)
        index_parts.append(f'<h2>{html.escape(cap)}</h2><img class="fig" src="{_rel(dst, out)}" alt="{html.escape(cap)}">')
    (out / "index.html").write_text(_page(title, "\n".join(index_parts)), encoding="utf-8")
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        os.replace(final, old)
    os.replace(out, final)
    if old.exists():
        shutil.rmtree(old)
    return final / "index.html"


def slug(layer: str) -> str:
    """A file-system and URL safe folder name for a layer (``fire9/expand3x3`` -> ``fire9_expand3x3``)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in layer)


def _write_layer(out: Path, layer: str, units: Mapping[int, Sequence[UnitView]],
                 pictures: Mapping[int, np.ndarray], thumbs: Mapping[int, np.ndarray] | None,
                 k: int | None = None) -> None:
    ldir = out / slug(layer)
    idir = ldir / "img"
    idir.mkdir(parents=True)
    cards = []
    for c in sorted(units):
        vs = sorted(units[c], key=lambda v: v.rank)
        rows = []
        for v in vs:
            stem = f"c{c}_r{v.rank}"
            save_png(v.projection, idir / f"{stem}_proj.png")
            save_png(v.patch, idir / f"{stem}_patch.png")
            ctx = ""
            if v.image in pictures:
                save_png(context_picture(pictures[v.image], v.box), idir / f"{stem}_ctx.png")
                ctx = f'<img class="ctx" src="img/{stem}_ctx.png" alt="image with receptive field">'
            y0, x0, y1, x1 = v.box
            rows.append(
                f"<tr><td>{v.rank}</td>"
                f'<td><img class="px" src="img/{stem}_proj.png" alt="projection rank {v.rank}"></td>'
                f'<td><img class="px" src="img/{stem}_patch.png" alt="patch rank {v.rank}"></td>'
                f"<td>{ctx}</td>"
                f'<td class="meta">value {v.value:.6g}<br>image #{v.image}<br>{html.escape(display_path(v.path))}<br>'
                f"map (y, x) = ({v.y}, {v.x})<br>box rows {y0}..{y1}, cols {x0}..{x1}</td></tr>"
            )
        if not vs:
            fired = ("<strong>Dead unit:</strong> it never fired (no positive activation in any image of the "
                     "folder), so it has no patches to show. ")
        elif k is not None and len(vs) < k:
            fired = (f"It fired (activation &gt; 0) in only {len(vs)} image{'s' if len(vs) != 1 else ''}; "
                     f"the other {k - len(vs)} of the top {k} slots are empty. ")
        else:
            fired = ""
        body = (
            f'<p class="note">{fired}Channel {c} of {html.escape(layer)}: its {len(vs)} strongest activations over the '
            "image folder, one per image. Projection: the deconvnet projection of that one activation, "
            "contrast stretched per patch (grey = zero). Patch: the input under the unit's receptive field; "
            "checkerboard = outside the image.</p>"
            '<table class="ranks"><tr><th>rank</th><th>projection</th><th>patch</th><th>in the image</th>'
            "<th>details</th></tr>" + "".join(rows) + "</table>"
        )
        (ldir / f"unit_{c}.html").write_text(_page(f"{layer} channel {c}", body, up="index.html"), encoding="utf-8")
        if thumbs is not None and c in thumbs:
            thumb = thumbs[c]
        else:
            from .render import fit_tile, hstack

            thumb = hstack([fit_tile(vs[0].projection, 64), fit_tile(vs[0].patch, 64)], pad=2) if vs else None
        img = ""
        if thumb is not None:
            save_png(thumb, idir / f"c{c}_thumb.png")
            img = f'<img src="img/c{c}_thumb.png" alt="channel {c}">'
        top = f"max {vs[0].value:.4g}" if vs else "<strong>dead</strong> (never fired)"
        if vs and k is not None and len(vs) < k:
            top += f" (fired in {len(vs)})"
        cards.append(f'<div class="unit"><a href="unit_{c}.html">{img}channel {c}</a> &middot; {top}</div>')
    body = f'<div class="units">{"".join(cards)}</div>'
    (ldir / "index.html").write_text(_page(f"{layer}: {len(units)} units", body, up="../index.html"), encoding="utf-8")
