"""Streaming top-k miner: brute force agreement, tie order, resume, merge, persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from zfnet.data import ImageBatches, ImageFolder, TransformConfig
from zfnet.deconvnet.topk import TopK, mine, paths_digest
from zfnet.errors import ConfigError, DataError, ShapeError
from zfnet.models import Network
from zfnet.nn import Conv2d, MaxPool2d


def brute_force(acts: np.ndarray, k: int) -> list[list[tuple[float, int, int, int]]]:
    """Per channel, the k best (value, image, y, x), one per image, by the documented order.

    acts: (N, C, H, W).  Written with plain loops: the specification.
    """
    n_img, c_n, h, w = acts.shape
    out = []
    for c in range(c_n):
        cands = []
        for n in range(n_img):
            best = None
            for y in range(h):
                for x in range(w):
                    v = float(acts[n, c, y, x])
                    if best is None or v > best[0]:  # strict: first max in row-major order
                        best = (v, n, y, x)
            cands.append(best)
        cands.sort(key=lambda t: (-t[0], t[1], t[2] * w + t[3]))
        out.append(cands[:k])
    return out


def table_as_lists(state: TopK, layer: str) -> list[list[tuple[float, int, int, int]]]:
    t = state.layers[layer]
    return [
        [(float(t.values[c, r]), int(t.images[c, r]), int(t.ys[c, r]), int(t.xs[c, r]))
         for r in range(t.k) if t.images[c, r] >= 0]
        for c in range(t.channels)
    ]


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 12), c=st.integers(1, 4), h=st.integers(1, 4), w=st.integers(1, 4), k=st.integers(1, 5),
    levels=st.integers(1, 4), seed=st.integers(0, 2**16), cut=st.integers(0, 12), batch=st.integers(1, 5),
)
def test_streaming_equals_brute_force_and_merge_equals_one_run(n, c, h, w, k, levels, seed, cut, batch):
    # Few distinct values (levels) make ties common, so the tie order is exercised.
    acts = np.random.default_rng(seed).integers(0, levels, (n, c, h, w)).astype(np.float32)
    full = TopK({"L": (c, h, w)}, k)
    for lo in range(0, n, batch):
        full.update("L", acts[lo: lo + batch], np.arange(lo, min(lo + batch, n)))
    assert table_as_lists(full, "L") == brute_force(acts, k)
    # Two shards split at `cut`, merged either way round, equal the single run.
    cut = min(cut, n)
    a, b = TopK({"L": (c, h, w)}, k), TopK({"L": (c, h, w)}, k)
    a.update("L", acts[:cut], np.arange(cut))
    b.update("L", acts[cut:], np.arange(cut, n))
    assert table_as_lists(a.merge(b), "L") == table_as_lists(full, "L")
    assert table_as_lists(b.merge(a), "L") == table_as_lists(full, "L")
    # Merging is idempotent: overlapping shards do not duplicate images.
    assert table_as_lists(full.merge(full), "L") == table_as_lists(full, "L")
    assert table_as_lists(full.merge(a), "L") == table_as_lists(full, "L")


def test_tie_order_by_hand() -> None:
    acts = np.zeros((3, 1, 2, 2), np.float32)
    acts[2, 0, 1, 1] = 5.0  # image 2: a clear winner at (1, 1)
    acts[1, 0, 0, 1] = 2.0
    acts[1, 0, 1, 0] = 2.0  # image 1: tie inside the map -> first in row-major order, (0, 1)
    # image 0: all zeros -> its candidate is (0, 0) with value 0
    state = TopK({"L": (1, 2, 2)}, k=3)
    state.update("L", acts[[2, 0]], [2, 0])  # arrival order does not matter
    state.update("L", acts[[1]], [1])
    assert table_as_lists(state, "L") == [[(5.0, 2, 1, 1), (2.0, 1, 0, 1), (0.0, 0, 0, 0)]]
    recs = state.records(paths=["a.jpg", "b.jpg", "c.jpg"])
    assert [(r["rank"], r["path"], r["y"], r["x"], r["value"]) for r in recs] == [
        (0, "c.jpg", 1, 1, 5.0), (1, "b.jpg", 0, 1, 2.0), (2, "a.jpg", 0, 0, 0.0)]
    # Equal values: lower image index first.
    tie = TopK({"L": (1, 1, 1)}, k=2)
    tie.update("L", np.ones((3, 1, 1, 1), np.float32), [7, 3, 5])
    assert tie.layers["L"].images.tolist() == [[3, 5]]


def test_fully_connected_layers_and_errors() -> None:
    state = TopK({"fc": (4,)}, k=2)
    state.update("fc", np.arange(12, dtype=np.float32).reshape(3, 4), [0, 1, 2])
    assert state.layers["fc"].images[:, 0].tolist() == [2, 2, 2, 2]
    with pytest.raises(ShapeError):
        state.update("fc", np.zeros((2, 5), np.float32), [0, 1])
    with pytest.raises(ConfigError):
        state.update("conv9", np.zeros((2, 4), np.float32), [0, 1])
    with pytest.raises(DataError, match="non-finite"):
        state.update("fc", np.full((1, 4), np.nan, np.float32), [3])
    with pytest.raises(ConfigError, match="different inputs"):
        TopK({"fc": (4,)}, 2, {"weights": "a"}).merge(TopK({"fc": (4,)}, 2, {"weights": "b"}))
    with pytest.raises(ConfigError):
        TopK({"fc": (4,)}, 2).merge(TopK({"fc": (4,)}, 3))


def test_save_load_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    state = TopK({"a": (3, 2, 2), "b": (5,)}, k=4, fingerprint={"arch": "tiny", "paths_sha256": "x"})
    state.update_all({"a": rng.random((6, 3, 2, 2), np.float32), "b": rng.random((6, 5), np.float32)}, np.arange(6))
    state.mark_covered(0, 7)
    state.skipped.append({"index": 6, "path": "bad.jpg", "kind": "corrupt", "detail": "truncated"})
    path = state.save(tmp_path / "state.npz")
    assert (tmp_path / "state.json").exists()
    again = TopK.load(path)
    assert again == state and again.fingerprint == state.fingerprint and again.skipped == state.skipped
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "state.npz"]  # no temp files left
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError):
        TopK.load(tmp_path / "junk.npz")
    with pytest.raises(DataError, match="does not exist"):
        TopK.load(tmp_path / "missing.npz")


# -- mining a real (tiny) network over an image folder --------------------------

LAYERS = ("c1", "c2")


def tiny_net() -> Network:
    rng = np.random.default_rng(3)
    layers = [Conv2d("c1", 3, 4, 3, padding=1, rng=rng), MaxPool2d("p1", 2, 2), Conv2d("c2", 4, 5, 3, rng=rng)]
    return Network(layers, {"arch": "tiny", "input_size": [12, 12]})


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny_images")
    rng = np.random.default_rng(11)
    for i in range(23):
        sub = root / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(sub / f"{i:02d}.png")
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return root


CFG = TransformConfig(input_size=12, resize=None)


def new_state(net: Network, folder: ImageFolder, k: int = 3) -> TopK:
    shapes = {name: shape[1:] for name, shape in net.shapes() if name in LAYERS}
    return TopK(shapes, k, {"arch": net.arch, "paths_sha256": paths_digest(folder.paths)})


def forward_fn(net: Network):
    return lambda x: net.forward(x, upto=LAYERS[-1], keep=LAYERS, caches=False).activations


def test_mine_tiny_network_equals_brute_force(tiny_folder: Path) -> None:
    net, folder = tiny_net(), ImageFolder(tiny_folder)
    batches = ImageBatches(folder, CFG, batch_size=4)
    state = mine(forward_fn(net), batches, new_state(net, folder))
    assert state.covered == [[0, len(folder)]]
    assert state.n_images == 23 and [s["path"] for s in state.skipped] == ["a/broken.png"]
    good = [i for i in range(len(folder)) if folder.paths[i] != "a/broken.png"]
    x = np.stack([ImageBatches(folder, CFG, start=i, stop=i + 1).__iter__().__next__().images[0] for i in good])
    acts = net.forward(x, keep=LAYERS).activations
    for layer in LAYERS:
        expected = [[(v, good[n], y, xx) for v, n, y, xx in row] for row in brute_force(acts[layer], 3)]
        got = table_as_lists(state, layer)
        assert [[t[1:] for t in row] for row in got] == [[t[1:] for t in row] for row in expected]
        np.testing.assert_allclose([[t[0] for t in row] for row in got],
                                   [[t[0] for t in row] for row in expected], rtol=1e-5)


@pytest.mark.parametrize("crash", [KeyboardInterrupt, RuntimeError])
def test_resume_after_interruption_equals_uninterrupted(tiny_folder: Path, tmp_path: Path, crash) -> None:
    net, folder = tiny_net(), ImageFolder(tiny_folder)
    whole = mine(forward_fn(net), ImageBatches(folder, CFG, batch_size=3), new_state(net, folder))

    calls = {"n": 0}
    inner = forward_fn(net)

    def flaky(x):
        calls["n"] += 1
        if calls["n"] == 5:
            raise crash("power cut")
        return inner(x)

    path = tmp_path / "state.npz"
    with pytest.raises(crash):
        mine(flaky, ImageBatches(folder, CFG, batch_size=3), new_state(net, folder), state_path=path, save_every=3)
    saved = TopK.load(path)
    # KeyboardInterrupt saves the 4 finished batches; a crash keeps the checkpoint after 3.
    assert saved.covered == [[0, 12 if crash is KeyboardInterrupt else 9]]
    resumed = mine(forward_fn(net), ImageBatches(folder, CFG, batch_size=3, start=saved.next_index(0)), saved,
                   state_path=path)
    assert resumed == whole
    assert resumed.skipped == whole.skipped
    assert TopK.load(path) == whole


def test_merge_of_shards_equals_one_run(tiny_folder: Path, tmp_path: Path) -> None:
    net, folder = tiny_net(), ImageFolder(tiny_folder)
    whole = mine(forward_fn(net), ImageBatches(folder, CFG, batch_size=5), new_state(net, folder))
    a = mine(forward_fn(net), ImageBatches(folder, CFG, batch_size=5, stop=10), new_state(net, folder),
             state_path=tmp_path / "a.npz")
    b = mine(forward_fn(net), ImageBatches(folder, CFG, batch_size=5, start=10), new_state(net, folder),
             state_path=tmp_path / "b.npz")
    merged = TopK.load(tmp_path / "a.npz").merge(TopK.load(tmp_path / "b.npz"))
    assert merged == whole and merged.skipped == whole.skipped
    assert merged.merge(b) == whole  # overlap: counted once


def test_records_min_value_and_firing_counts() -> None:
    """min_value=0 keeps only slots where the unit fired; firing_counts counts them."""
    state = TopK({"l": (3, 2, 2)}, k=3)
    a = np.zeros((4, 3, 2, 2), np.float32)  # channel 0 fires in every image, 1 in one, 2 never
    a[:, 0] = np.arange(1, 5, dtype=np.float32)[:, None, None]
    a[2, 1, 1, 0] = 0.5
    a[:, 2] = -1.0
    state.update("l", a, np.arange(4))
    counts = state.firing_counts()["l"]
    assert counts.tolist() == [3, 1, 0]
    every = state.records()
    assert len(every) == 9  # the table itself keeps all k slots of every channel
    fired = state.records(min_value=0.0)
    assert [(r["channel"], r["image"]) for r in fired] == [(0, 3), (0, 2), (0, 1), (1, 2)]
    assert fired[-1]["y"] == 1 and fired[-1]["x"] == 0 and fired[-1]["value"] == 0.5
