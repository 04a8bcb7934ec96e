"""Patches, projections, figures, the top-9 pipeline, the HTML gallery and the CLI."""

from __future__ import annotations

import inspect
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from PIL import Image

from zfnet.data import ImageFolder, Transform, TransformConfig
from zfnet.deconvnet import project_units, receptive_fields, unit_box
from zfnet.deconvnet.patches import checkerboard, crop_with_border, display_projection, unit_views
from zfnet.errors import ConfigError, ShapeError
from zfnet.figures import (
    fc_row_tiles,
    feature_map_figure,
    feature_map_tiles,
    filter_tiles,
    select_units,
)
from zfnet.figures.top9 import run_top9, transform_for
from zfnet.models import Network
from zfnet.nn import Conv2d, MaxPool2d


def tiny_net() -> Network:
    rng = np.random.default_rng(5)
    layers = [Conv2d("c1", 3, 4, 3, padding=1, rng=rng), MaxPool2d("p1", 2, 2), Conv2d("c2", 4, 6, 3, padding=1, rng=rng)]
    return Network(layers, {"arch": "tiny", "input_size": [16, 16], "resize": 16})


@pytest.fixture(scope="module")
def tiny_images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fig_images")
    rng = np.random.default_rng(2)
    for i in range(14):
        sub = root / f"class{i % 2}"
        sub.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 18, 3), dtype=np.uint8)).save(sub / f"img {i:02d}&.png")
    (root / "class0" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (root / "class1" / "notes.txt").write_text("not an image")  # not read, but reported
    return root


# -- patches and display scaling ------------------------------------------------

def test_crop_with_border_keeps_box_size_and_position() -> None:
    img = np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3)
    crop, inside = crop_with_border(img, (-2, 4, 3, 9))  # rows -2..3, cols 4..9
    assert crop.shape == (5, 5, 3) and inside.shape == (5, 5)
    assert inside.sum() == 3 * 2  # rows 0..2, cols 4..5 lie on the image
    np.testing.assert_array_equal(crop[2:5, 0:2], img[0:3, 4:6])
    assert not inside[:2].any() and not inside[:, 2:].any()
    board = checkerboard(8, 8, cell=4)
    assert (board[0, 0] != board[0, 4]).all() and (board[0, 0] == board[4, 4]).all()


def test_display_projection_symmetric_and_minmax() -> None:
    t = Transform(TransformConfig(input_size=2, resize=2, channel_order="BGR", mean=0, std=(1, 2, 4), scale=1))
    p = np.zeros((3, 2, 2), np.float32)
    p[0, 0, 0] = 2.0  # B channel, pixel units 2 * std 1 = 2
    p[2, 1, 1] = -1.0  # R channel, pixel units -1 * 4 = -4 -> the largest magnitude
    pic = display_projection(p, t, clip=100)
    assert pic[0, 1].tolist() == [128, 128, 128]  # zero -> mid grey
    assert pic[1, 1, 0] == 0  # R = -4 = -max -> black
    assert pic[0, 0, 2] == round(255 * (0.5 + 0.5 * 2 / 4))  # B = 2 -> three quarters
    mm = display_projection(p, t, scaling="minmax")
    assert mm.min() == 0 and mm.max() == 255
    inside = np.array([[True, True], [True, False]])
    assert display_projection(p, t, inside)[1, 1].tolist() == list(checkerboard(2, 2)[1, 1])
    # A percentile stretch saturates the few strongest pixels instead of dimming the rest.
    big = np.zeros((3, 20, 20), np.float32)
    big[:, :, :] = 0.1
    big[0, 0, 0] = 100.0  # one outlier (B channel)
    # Pixel units: B 0.1 * 1, G 0.1 * 2, R 0.1 * 4 = 0.4, the 99th percentile of |q|.
    assert display_projection(big, t, clip=100)[5, 5, 0] == 128  # 0.4 of 100: looks like zero
    assert display_projection(big, t, clip=99)[5, 5, 0] == 255  # 0.4 saturates
    with pytest.raises(ConfigError):
        display_projection(p, t, scaling="log")
    with pytest.raises(ConfigError):
        display_projection(p, t, clip=20)


def test_unit_views_crop_the_projection_to_its_whole_support(tiny_images: Path) -> None:
    net, folder = tiny_net(), ImageFolder(tiny_images)
    t = transform_for(net)
    good = [i for i, p in enumerate(folder.paths) if "broken" not in p]
    recs = [dict(layer="c2", channel=c, rank=0, image=good[c], y=y, x=x, value=1.0)
            for c, (y, x) in enumerate([(0, 0), (3, 4), (7, 7)])]
    views = unit_views(net, folder, t, recs)
    rfs = receptive_fields(net)
    for r, v in zip(recs, views):
        assert v.box == unit_box(rfs, "c2", r["y"], r["x"], clip=False)
        # The projection lives inside the receptive field: nothing outside the box.
        x = t(folder[r["image"]])[None]
        full = project_units(net, x, "c2", np.array([[0, r["channel"], r["y"], r["x"]]]))[0]
        y0, x0, y1, x1 = v.box
        assert np.abs(full).sum() == pytest.approx(np.abs(v.raw).sum(), rel=1e-6)
        # The patch is the preprocessed image under the box; checkerboard outside.
        picture = t.geometry(folder[r["image"]])
        sy0, sx0 = max(y0, 0), max(x0, 0)
        np.testing.assert_array_equal(v.patch[v.inside].reshape(-1, 3),
                                      picture[sy0: y1, sx0: x1].reshape(-1, 3))
        assert v.patch.shape[:2] == (rfs["c2"].size, rfs["c2"].size)
    assert not views[0].inside.all() and views[1].inside.all()  # corner unit reaches into the padding


# -- filters, feature maps, unit choice -----------------------------------------

def test_filter_scalings_by_hand() -> None:
    w = np.zeros((2, 3, 1, 2), np.float32)
    w[0, :, 0, 1] = 1.0  # filter 0 in [0, 1]
    w[1, :, 0, 1] = 4.0  # filter 1 in [0, 4]
    w[1, 0, 0, 0] = 2.0
    per = filter_tiles(w, "per-filter")
    assert per[0][0, 1].tolist() == [255, 255, 255] and per[1][0, 1].tolist() == [255, 255, 255]
    assert per[1][0, 0].tolist() == [128, 0, 0]  # R = 2 of 0..4
    shared = filter_tiles(w, "shared")
    assert shared[0][0, 1].tolist() == [64, 64, 64]  # 1 of 0..4
    bgr = filter_tiles(w, "per-filter", channel_order="BGR")
    assert bgr[1][0, 0].tolist() == [0, 0, 128]  # input channel 0 is blue
    rows = fc_row_tiles(np.arange(2 * 12, dtype=np.float32).reshape(2, 12), (3, 2, 2))
    assert rows[0].shape == (2, 2, 3) and rows[0][0, 0].tolist() == [0, 93, 185]  # (0, 4, 8) of 0..11
    with pytest.raises(ShapeError):
        fc_row_tiles(np.zeros((2, 10)), (3, 2, 2))


def test_feature_map_tiles_and_figure() -> None:
    a = np.zeros((3, 2, 2), np.float32)
    a[0, 0, 0], a[1, 1, 1], a[2] = 4.0, 2.0, -1.0
    shared = feature_map_tiles(a, "shared")
    assert shared[0][0, 0, 0] == 255 and shared[1][1, 1, 0] == 128 and shared[2].max() == 0
    per = feature_map_tiles(a, "per-channel")
    assert per[1][1, 1, 0] == 255
    fig = feature_map_figure(a, np.zeros((16, 16, 3), np.uint8), "conv5")
    assert fig.ndim == 3 and fig.dtype == np.uint8


def test_select_units_is_reproducible_and_prefers_live_channels() -> None:
    top = np.array([0, 1.0, 0, 3.0, 2.0, 0, 5.0, 0])
    a = select_units("conv3", top, 3, seed=1)
    assert a == select_units("conv3", top, 3, seed=1) and len(a) == 3 and all(top[c] > 0 for c in a)
    assert len(select_units("conv3", top, 6)) == 6  # 4 live + 2 dead
    assert select_units("conv3", top, "all") == list(range(8))
    assert select_units("conv3", top, [6, 1, 6]) == [1, 6]
    with pytest.raises(ConfigError):
        select_units("conv3", top, [9])


# -- the pipeline, the gallery, the browser ----------------------------------------

class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ("src", "href") and v is not None:
                self.links.append(v)


def check_gallery_links(root: Path) -> int:
    """Every src/href of every page is a relative link to an existing file; returns the count."""
    n = 0
    for page in root.rglob("*.html"):
        parser = _Links()
        parser.feed(page.read_text(encoding="utf-8"))
        for link in parser.links:
            u = urlparse(link)
            assert not u.scheme and not u.netloc and not link.startswith("/"), f"{page}: non-relative link {link}"
            assert (page.parent / unquote(u.path)).resolve().is_file(), f"{page}: missing {link}"
            n += 1
        text = page.read_text(encoding="utf-8")
        assert "http://" not in text and "https://" not in text, f"{page} refers to the network"
    return n


@pytest.fixture(scope="module")
def top9_run(tiny_images: Path, tmp_path_factory):
    out = tmp_path_factory.mktemp("top9")
    res = run_top9(tiny_net(), tiny_images, out, layers=["c1", "c2"], k=4, units=3, batch_size=4, workers=0,
                   progress=False, weights_label="tiny test weights", tile=24)
    return res


def test_top9_outputs(top9_run) -> None:
    out = top9_run.out
    doc = json.loads((out / "top9.json").read_text())
    assert doc["n_images"] == 14
    assert [(s["path"], s["kind"]) for s in doc["skipped"]] == [("class0/broken.jpg", "corrupt")]
    res = doc["results"]
    assert len(res) == (4 + 6) * 4  # every channel of both layers, k = 4 each
    first = res[0]
    assert set(first) >= {"layer", "channel", "rank", "path", "y", "x", "value", "box"}
    state = top9_run.state
    assert first["value"] == pytest.approx(float(state.layers["c1"].values[0, 0]))
    for name in ("fig2_c1.png", "fig2_c2.png", "filters_c1.png", "filters_c1_shared.png"):
        assert Image.open(out / name).size[0] > 50
    assert "read 14 images" in top9_run.summary() and "broken.jpg" in top9_run.summary()
    assert doc["ignored"] == ["class1/notes.txt"]
    assert "1 file with extensions no image reader knows was not read (class1/notes.txt" in top9_run.summary()


def test_gallery_links_resolve(top9_run) -> None:
    root = top9_run.gallery.parent
    assert check_gallery_links(root) > 20
    units = sorted(p.name for p in (root / "c2").glob("unit_*.html"))
    assert len(units) == 3
    page = (root / "c2" / units[0]).read_text()
    assert "img 0" in page and "&amp;.png" in page  # image names are shown, escaped


def _interrupted_top9(monkeypatch, after: int, *args, **kw) -> None:
    """run_top9 stopped by KeyboardInterrupt after ``after`` mining batches (a killed run)."""
    from zfnet.figures import top9

    monkeypatch.setattr(top9, "_INTERRUPT_AFTER", after)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_top9(*args, **kw)
    finally:
        monkeypatch.setattr(top9, "_INTERRUPT_AFTER", None)


def test_resume_through_the_pipeline(tiny_images: Path, tmp_path: Path, top9_run, monkeypatch) -> None:
    kw = dict(layers=["c1", "c2"], k=4, units=3, batch_size=4, workers=0, progress=False, gallery=False, tile=24)
    _interrupted_top9(monkeypatch, 2, tiny_net(), tiny_images, tmp_path, **kw)
    resumed = run_top9(tiny_net(), tiny_images, tmp_path, resume=True, **kw)
    assert resumed.resumed_from == 8
    a = json.loads((tmp_path / "top9.json").read_text())["results"]
    b = json.loads((top9_run.out / "top9.json").read_text())["results"]
    assert a == b
    other = tiny_net()
    other.layers[0].weight = other.layers[0].weight * 2
    with pytest.raises(ConfigError, match="different inputs"):
        run_top9(other, tiny_images, tmp_path, resume=True, weights_digest="other", **kw)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_gallery_renders_in_headless_chromium(top9_run, tmp_path: Path) -> None:
    exe = _chromium()
    if exe is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    root = top9_run.gallery.parent
    flags = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
             "--virtual-time-budget=4000"]
    unit = sorted((root / "c2").glob("unit_*.html"))[0]
    for page in (root / "index.html", root / "c2" / "index.html", unit):
        dom = subprocess.run(flags + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=90).stdout
        m = re.search(r'data-missing="(\w+)" data-images="(\d+)"', dom)
        assert m, f"the page's load check did not run in chromium: {page}"
        assert m.group(1) == "0" and int(m.group(2)) > 0, f"{page}: {m.group(1)} of {m.group(2)} images missing"
    shot = tmp_path / "unit.png"
    subprocess.run(flags + ["--window-size=1000,800", f"--screenshot={shot}", unit.as_uri()],
                   capture_output=True, timeout=90)
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.std() > 10  # something was drawn, not a blank page


# -- the CLI (model loading swapped for the tiny network) -------------------------

def test_cli_top9_filters_featuremaps_demo(tiny_images: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from zfnet.cli import main
    from zfnet.cli import visualize

    monkeypatch.setattr(visualize, "load_model", lambda w, a=None, *caffe: (tiny_net(), "tiny weights", "tiny"))
    assert main(["top9", "--weights", "w.npz", "--images", str(tiny_images), "--out", str(tmp_path / "t9"),
                 "--layers", "c1", "c2", "--k", "3", "--units", "2", "--batch-size", "5"]) == 0
    text = capsys.readouterr().out
    assert "read 14 images" in text and "top9.json" in text and "gallery" in text
    assert main(["top9", "--weights", "w.npz", "--images", str(tiny_images), "--out", str(tmp_path / "t9"),
                 "--layers", "c1", "--resume"]) == 2  # different layers: refused, not silently mixed
    assert main(["filters", "--out", str(tmp_path / "filters")]) == 0
    assert len(list((tmp_path / "filters").glob("*.png"))) == 2
    img = next(tiny_images.rglob("*.png"))
    assert main(["featuremaps", "--image", str(img), "--layer", "c2", "--out", str(tmp_path / "fm.png")]) == 0
    assert (tmp_path / "fm.png").is_file()
    assert main(["demo", "--out", str(tmp_path / "demo"), "--views", "10", "--units", "2", "--layers", "c1",
                 "--k", "4"]) == 0
    text = capsys.readouterr().out
    assert "grace_hopper" in text and (tmp_path / "demo" / "gallery" / "index.html").is_file()
    assert len(list((tmp_path / "demo" / "images").rglob("*.jpg"))) == 10
    assert json.loads((tmp_path / "demo" / "top9.json").read_text())["k"] == 4


# -- dead and weak units --------------------------------------------------------

def test_dead_and_weak_units_are_reported_not_illustrated(tiny_images: Path, tmp_path: Path, top9_run) -> None:
    """A unit that never fires gets no records; one that fires in 2 images gets 2.

    Channel 2 of c1 gets a bias of -1e6 (never positive: dead).  Channel 1 gets
    minus its third-best per-image maximum from the unbiased run: a bias shifts
    every activation of the channel equally, so exactly the two images above that
    value still fire.
    """
    net = tiny_net()
    third = float(top9_run.state.layers["c1"].values[1, 2])
    net.layers[0].bias[2] = -1e6
    net.layers[0].bias[1] = -third
    res = run_top9(net, tiny_images, tmp_path, layers=["c1"], k=4, units="all", batch_size=4, workers=0,
                   progress=False, tile=24)
    doc = json.loads((tmp_path / "top9.json").read_text())
    assert doc["dead_units"] == {"c1": [2]}
    assert doc["weak_units"] == {"c1": {"1": 2}}
    recs = doc["results"]
    assert all(r["value"] > 0 for r in recs)
    assert [r["channel"] for r in recs].count(2) == 0
    assert [r["channel"] for r in recs].count(1) == 2
    assert len(recs) == 4 + 2 + 0 + 4
    assert "Dead units (never fired on these images): c1 1 of 4; 1 more fired in fewer than 4" in res.summary()
    page = (tmp_path / "gallery" / "c1" / "unit_2.html").read_text()
    assert "Dead unit" in page
    assert "fired (activation &gt; 0) in only 2 images" in (tmp_path / "gallery" / "c1" / "unit_1.html").read_text()
    assert "dead" in (tmp_path / "gallery" / "c1" / "index.html").read_text()


def test_unit_label_says_dead_and_weak() -> None:
    from zfnet.figures.fig2 import unit_label

    assert "DEAD" in unit_label(3, [], 9)
    view = type("V", (), {"value": 2.5})()
    assert unit_label(3, [view] * 2, 9) == "ch 3  max 2.5  fired in 2 images"
    assert unit_label(3, [view] * 9, 9) == "ch 3  max 2.5"


def test_rerun_with_fewer_layers_removes_stale_figures(tiny_images: Path, tmp_path: Path) -> None:
    kw = dict(k=2, units=2, batch_size=4, workers=0, progress=False, tile=24)
    run_top9(tiny_net(), tiny_images, tmp_path, layers=["c1", "c2"], **kw)
    assert (tmp_path / "fig2_c2.png").is_file()
    (tmp_path / "notes.png").write_bytes(b"not ours")  # a file of the user's is left alone
    run_top9(tiny_net(), tiny_images, tmp_path, layers=["c1"], gallery=False, **kw)
    assert not (tmp_path / "fig2_c2.png").exists()
    assert not (tmp_path / "gallery").exists()
    assert (tmp_path / "fig2_c1.png").is_file() and (tmp_path / "notes.png").is_file()


# -- odd input and interrupted output (issue 14) -------------------------------------

def _tiny_kw():
    return dict(layers=["c1"], k=2, units=2, batch_size=4, workers=0, progress=False, tile=24)


def test_a_file_name_that_is_not_utf8_is_mined_and_shown(tmp_path: Path) -> None:
    import os

    root = tmp_path / "imgs"
    root.mkdir()
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(root / "plain.png")
    raw = os.path.join(os.fsencode(root), b"caf\xe9.png")  # Latin-1 bytes: not valid UTF-8
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(open(raw, "wb"), format="PNG")
    out = tmp_path / "out"
    res = run_top9(tiny_net(), root, out, units="all", **{k: v for k, v in _tiny_kw().items() if k != "units"})
    doc = json.loads((out / "top9.json").read_text(encoding="utf-8"))
    assert doc["n_images"] == 2
    assert "caf\ufffd.png" in {r["path"] for r in doc["results"]}
    res.summary().encode("utf-8")  # printable
    pages = "".join(p.read_text(encoding="utf-8") for p in (out / "gallery").rglob("unit_*.html"))
    assert "caf\ufffd.png" in pages


def test_folders_deeper_than_the_recursion_limit(tmp_path: Path) -> None:
    import os
    import sys

    from zfnet.data import ImageFolder

    depth = sys.getrecursionlimit() + 100
    root = tmp_path / "deep"
    root.mkdir()
    d = str(root)
    for _ in range(depth):  # one level at a time (os.makedirs recurses)
        d = os.path.join(d, "d")
        os.mkdir(d)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(os.path.join(d, "bottom.png"))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "top.png")
    try:
        folder = ImageFolder(root)
        assert len(folder) == 2 and folder.paths[-1] == "top.png" and folder.paths[0].endswith("/d/bottom.png")
        assert folder.paths[0].count("/") == depth
    finally:  # remove it bottom-up without recursion (shutil.rmtree recurses too)
        os.remove(os.path.join(d, "bottom.png"))
        while d != str(root):
            os.rmdir(d)
            d = os.path.dirname(d)


def test_an_image_gone_after_mining_leaves_its_slot_empty(tiny_images: Path, tmp_path: Path) -> None:
    from zfnet.data import ImageFolder, ImageReadError

    class Vanishing(ImageFolder):
        """Image 3 is deleted between mining and drawing."""

        def __getitem__(self, index):
            if index == 3:
                raise ImageReadError(self.path(index), "unreadable", "no such file (deleted after mining)")
            return super().__getitem__(index)

    res = run_top9(tiny_net(), Vanishing(tiny_images), tmp_path, layers=["c1"], k=14, units="all", batch_size=4,
                   workers=0, progress=False, tile=24)
    doc = json.loads((tmp_path / "top9.json").read_text())
    assert [x["image"] for x in doc["unreadable_at_figures"]] == [3]
    assert any(r["image"] == 3 for r in doc["results"])  # its records are kept
    assert "could not be read again for the figures" in res.summary()
    assert (tmp_path / "fig2_c1.png").is_file() and (tmp_path / "gallery" / "index.html").is_file()


def test_second_run_into_a_busy_folder_is_refused_and_stale_locks_are_taken_over(tiny_images, tmp_path) -> None:
    import os
    import socket

    from zfnet._files import LOCK_NAME

    lock = tmp_path / LOCK_NAME
    lock.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "command": "zfnet top9",
                                "started": 0}))
    with pytest.raises(ConfigError, match=rf"another run is writing here \(zfnet top9, pid {os.getppid()}"):
        run_top9(tiny_net(), tiny_images, tmp_path, **_tiny_kw())
    assert not (tmp_path / "top9.json").exists()
    dead = 2**22 + 12345  # above the usual pid_max: no such process
    lock.write_text(json.dumps({"pid": dead, "host": socket.gethostname(), "command": "zfnet top9", "started": 0}))
    run_top9(tiny_net(), tiny_images, tmp_path, **_tiny_kw())
    assert (tmp_path / "top9.json").is_file() and not lock.exists()  # taken over, then released


def test_outputs_are_atomic_and_leftovers_of_a_killed_run_are_cleaned(tiny_images: Path, tmp_path: Path,
                                                                       monkeypatch) -> None:
    from zfnet.figures import gallery as gallery_mod

    run_top9(tiny_net(), tiny_images, tmp_path, **_tiny_kw())
    before = (tmp_path / "gallery" / "index.html").read_text()
    fig = (tmp_path / "fig2_c1.png").read_bytes()
    # what a kill -9 in the middle of atomic writes leaves behind
    (tmp_path / ".top9.json.x1y2.part").write_bytes(b"half")
    (tmp_path / ".gallery.building-999999").mkdir()

    def boom(*a, **k):
        raise KeyboardInterrupt  # the run is stopped while it writes the gallery's pages

    monkeypatch.setattr(gallery_mod, "_write_layer", boom)
    with pytest.raises(KeyboardInterrupt):
        run_top9(tiny_net(), tiny_images, tmp_path, **_tiny_kw())
    assert (tmp_path / "gallery" / "index.html").read_text() == before  # the old gallery is intact
    assert (tmp_path / "fig2_c1.png").read_bytes()[:8] == fig[:8]  # a whole PNG, old or new
    assert not (tmp_path / ".top9.json.x1y2.part").exists()
    monkeypatch.undo()
    run_top9(tiny_net(), tiny_images, tmp_path, **_tiny_kw())
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no .part files, no half-built galleries, no lock


def test_resume_after_files_were_deleted_keeps_the_indices(tiny_images: Path, tmp_path: Path, monkeypatch) -> None:
    """--resume over a folder that only lost files continues over the list it started with."""
    import shutil

    src = tmp_path / "imgs"
    shutil.copytree(tiny_images, src)
    out = tmp_path / "out"
    kw = dict(layers=["c1"], k=3, units=2, batch_size=4, workers=0, progress=False, gallery=False, tile=24)
    _interrupted_top9(monkeypatch, 2, tiny_net(), src, out, **kw)  # images 0-7 mined
    from zfnet.data import ImageFolder

    paths = ImageFolder(src).paths
    (src / paths[1]).unlink()  # already mined
    (src / paths[12]).unlink()  # not yet mined
    res = run_top9(tiny_net(), src, out, resume=True, **kw)
    assert res.resumed_from == 8
    doc = json.loads((out / "top9.json").read_text())
    assert doc["n_files"] == len(paths) and sorted(doc["deleted_since_start"]) == sorted([paths[1], paths[12]])
    assert [s["path"] for s in doc["skipped"] if s["index"] == 12] == [paths[12]]  # skipped with a reason
    assert "2 file(s) deleted since then" in res.summary()
    # a file added since the first run makes the lists incompatible: refused, as before
    _interrupted_top9(monkeypatch, 1, tiny_net(), src, tmp_path / "out2", **kw)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src / "class0" / "zz_new.png")
    with pytest.raises(ConfigError, match="different inputs"):
        run_top9(tiny_net(), src, tmp_path / "out2", resume=True, **kw)


def test_top9_steps_run_alone(tiny_images: Path, tmp_path: Path) -> None:
    """run_top9 is named steps over one options object; mining and records run and test alone."""
    from zfnet.figures.top9 import Top9Options, mine_step, records_step

    opts = Top9Options(layers=["c1"], k=3, units=2, batch_size=4, workers=0, progress=False, gallery=False)
    mined = mine_step(tiny_net(), tiny_images, tmp_path, opts)
    assert mined.state.n_images + len(mined.state.skipped) == mined.n_files and mined.layers == ["c1"]
    records, doc = records_step(tiny_net(), tmp_path, opts, mined)
    assert json.loads((tmp_path / "top9.json").read_text()) == json.loads(json.dumps(doc))
    assert records and all(r["layer"] == "c1" and r["value"] > 0 for r in records)
    assert "interrupt_after" not in inspect.signature(run_top9).parameters  # no test hook in the public signature


def test_each_image_is_decoded_once_per_phase(tiny_images: Path, tmp_path: Path, monkeypatch) -> None:
    """Mining decodes each file once; projections of every layer and the gallery share one more decode.

    Before, the projection phase decoded an image again per layer and chunk, and the
    gallery once more.
    """
    from collections import Counter

    from zfnet.data import ImageFolder

    counts: Counter = Counter()
    real = ImageFolder.decode

    def counting(self, probed):
        counts[getattr(probed, "filename", id(probed))] += 1
        return real(self, probed)

    monkeypatch.setattr(ImageFolder, "decode", counting)
    run_top9(tiny_net(), tiny_images, tmp_path, layers=["c1", "c2"], k=4, units="all", batch_size=4, workers=0,
             progress=False, gallery=True, tile=24)
    assert counts and max(counts.values()) <= 2
