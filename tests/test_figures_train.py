"""Fig. 4 (feature evolution) and Fig. 6 (first layers compared) on tiny checkpoints made here."""

from __future__ import annotations

import json

import numpy as np
import pytest

from zfnet.deconvnet import project_units
from zfnet.figures.compare import compare_networks, dead_filters, filter_rms, spectral_measures
from zfnet.figures.evolution import evolution_figure, strongest_units
from zfnet.models import Network
from zfnet.nn import Conv2d, Flatten, Linear, MaxPool2d
from zfnet.train import TrainConfig, Trainer
from zfnet.weights import read_npz

PRE = {"input_size": [24, 24], "resize": 24, "channel_order": "RGB", "mean": [0.5, 0.5, 0.5],
       "std": [0.25, 0.25, 0.25], "scale": 1 / 255}


def tiny(seed=0, k1=3, s1=2) -> Network:
    rng = np.random.default_rng(seed)
    layers = [
        Conv2d("conv1", 3, 6, k1, stride=s1, padding=1, rng=rng),
        MaxPool2d("pool1", 3, 2, ceil_mode=True),
        Conv2d("conv2", 6, 5, 3, padding=1, rng=rng),
        Flatten("flatten"),
    ]
    probe = Network(layers, {})
    flat = int(np.prod(probe.shapes((1, 3, 24, 24))[-1][1][1:]))
    layers.append(Linear("fc8", flat, 3, relu=False, rng=rng))
    return Network(layers, {"arch": "tiny", "num_classes": 3, **PRE})


def pictures(n=6, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 24, 24, 3), dtype=np.uint8)


def brute_strongest(model, x, layer):
    act = model.forward(x, upto=layer).activations[layer]
    out = []
    for c in range(act.shape[1]):
        flat = act[:, c].reshape(-1)  # image-major, then row-major positions
        i = int(np.argmax(flat))
        n, rest = divmod(i, act.shape[2] * act.shape[3])
        out.append((float(flat[i]), (n, c, rest // act.shape[3], rest % act.shape[3])))
    return out


def test_strongest_units_matches_brute_force_across_batches():
    model = tiny()
    imgs = pictures(7)
    from zfnet.figures.evolution import preprocess_images

    x = preprocess_images(model, imgs)
    best = strongest_units(model, x, ["conv1", "conv2"], batch_size=3)  # several batches
    for layer in ("conv1", "conv2"):
        vals, units = best[layer]
        for c, (v, u) in enumerate(brute_strongest(model, x, layer)):
            assert vals[c] == pytest.approx(v) and tuple(units[c]) == u


def test_evolution_figure_on_tiny_checkpoints(tmp_path):
    # three "epochs" of one run: snapshots written by a real (tiny) training run
    class Split:
        images = pictures(12, 1)
        labels = np.arange(12) % 3
        names = ["a", "b", "c"]

    cfg = TrainConfig(arch="tiny", epochs=3, batch_size=4, lr=0.05, input_size=24, keep_epochs=(0, 1, 2),
                      renorm_radius=None)
    Trainer(cfg, Split(), None, tmp_path, model=tiny(), progress=False).fit()
    ckpts = []
    for name in ("epoch-000.npz", "epoch-001.npz", "epoch-002.npz", "final.npz"):
        arrays, meta = read_npz(tmp_path / name)
        m = tiny()
        m.load_state_dict(arrays)
        m.config.update(meta)
        ckpts.append((f"epoch {meta['training']['epoch']}", m))
    pic, rec = evolution_figure(ckpts, pictures(5), units=2, tile=20)
    assert pic.ndim == 3 and pic.dtype == np.uint8 and pic.shape[2] == 3
    assert rec["columns"] == ["epoch 0", "epoch 1", "epoch 2", "epoch 3"]
    for layer in ("conv1", "conv2"):
        cells = rec["layers"][layer]["cells"]
        assert len(rec["layers"][layer]["channels"]) == 2 and len(cells) == 2 and len(cells[0]) == 4
    # each cell is that checkpoint's own strongest activation of the unit
    c = rec["layers"]["conv2"]["channels"][0]
    from zfnet.figures.evolution import preprocess_images

    for col, (_, m) in enumerate(ckpts):
        v, u = brute_strongest(m, preprocess_images(m, pictures(5)), "conv2")[c]
        cell = rec["layers"]["conv2"]["cells"][0][col]
        assert cell["value"] == pytest.approx(v) and (cell["image"], cell["y"], cell["x"]) == (u[0], u[2], u[3])
    # projections in the cells are non-trivial pictures
    assert pic.std() > 5


def test_dead_filters_and_rms():
    w = np.random.default_rng(0).standard_normal((8, 3, 5, 5))
    w[[2, 5]] *= 0.01
    d = dead_filters(w, rel=0.05)
    assert d["dead"] == [2, 5] and d["fraction"] == 0.25 and d["count"] == 2
    assert filter_rms(np.ones((2, 1, 2, 2)) * [[[[3.0]]], [[[4.0]]]]).tolist() == [3.0, 4.0]


def test_spectral_measures_tell_grids_from_smooth_pictures():
    yy, xx = np.mgrid[0:40, 0:40]
    smooth = np.exp(-((yy - 20) ** 2 + (xx - 20) ** 2) / 60.0)
    grid4 = smooth * (1 + np.cos(2 * np.pi * xx / 4) * np.cos(2 * np.pi * yy / 4))
    noise = np.random.default_rng(0).standard_normal((40, 40))
    s, g, n = spectral_measures(smooth), spectral_measures(grid4), spectral_measures(np.stack([noise] * 3))
    assert s["hf_fraction"] < 0.01 and g["hf_fraction"] > 0.2
    assert g["grid4"] > 3 > 1 > s["grid4"]
    assert 0.5 < n["grid4"] < 2 and 0.7 < n["hf_fraction"] < 0.9  # white noise: no preference
    assert np.isnan(spectral_measures(np.zeros((5, 5)))["hf_fraction"])


def test_compare_networks_measures_and_layout():
    a, b = tiny(1, k1=5, s1=4), tiny(2, k1=3, s1=2)
    a.layer("conv1").weight[:2] *= 1e-3  # two dead filters in "AlexNet"
    pic, meas = compare_networks([("big stride", a), ("small stride", b)], pictures(6), {"small stride": 0.5},
                                 units=3, tile=16)
    assert pic.dtype == np.uint8 and pic.shape[1] > pic.shape[0] / 4
    assert meas["big stride"]["dead_filters"]["dead"] == [0, 1]
    assert meas["small stride"]["dead_filters"]["count"] == 0
    assert meas["big stride"]["first_layer"] == {"kernel": [5, 5], "stride": [4, 4], "filters": 6}
    assert meas["small stride"]["val_acc"] == 0.5 and meas["big stride"]["val_acc"] is None
    l2 = meas["small stride"]["layer2"]
    assert len(l2["channels"]) == 3 and len(l2["per_unit"]) == 3
    assert all(0 <= u["hf_fraction"] <= 1 for u in l2["per_unit"])
    from zfnet.figures.measures import low_frequency_fraction

    lf = meas["small stride"]["low_frequency"]
    assert lf["per_filter"] == pytest.approx(low_frequency_fraction(b.layer("conv1").weight).tolist())
    assert lf["median"] == pytest.approx(float(np.median(lf["per_filter"])))
    assert "low_frequency" in meas["definitions"]
    json.dumps(meas)  # the record is JSON-ready


def test_projection_is_the_unit_in_the_figures():
    # the figure's projections go through project_units with each unit's own image: check one by hand
    model = tiny()
    from zfnet.figures.evolution import preprocess_images

    x = preprocess_images(model, pictures(4))
    vals, units = strongest_units(model, x, ["conv2"])["conv2"]
    u = units[1]
    one = project_units(model, x[u[0] : u[0] + 1], "conv2", [[0, u[1], u[2], u[3]]])
    many = project_units(model, x, "conv2", [u])
    np.testing.assert_allclose(one, many, rtol=1e-5, atol=1e-6)
