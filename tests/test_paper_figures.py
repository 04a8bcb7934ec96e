"""Section 4 of the paper: occlusion (Fig. 7), invariance (Fig. 5), part correspondence (Table 1).

A tiny classifier (16 x 16 input, layers named like ZFNet's conv1/conv5/fc7/fc8)
keeps every test to a fraction of a second; the committed parts file and the
trained ZFNet are checked where they are present.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zfnet.cli import main
from zfnet.cli import visualize
from zfnet.errors import ConfigError, DataError, ShapeError, ZfnetError
from zfnet.figures.correspondence import (
    PAPER_TABLE1,
    ROWS,
    changed_statistics,
    correspondence,
    hamming_delta,
    input_point,
    load_parts,
    part_masks,
)
from zfnet.figures.invariance import invariance_curves, invariance_figure, transform_input
from zfnet.figures.occlusion import (
    as_input,
    nearest_centre_map,
    occlude,
    occluder_starts,
    occlusion_maps,
    paper_layer,
    top_conv_layer,
)
from zfnet.models import Network
from zfnet.nn import Conv2d, Flatten, Linear, MaxPool2d
from zfnet.ops.activation import softmax

ROOT = Path(__file__).resolve().parent.parent


def tiny_classifier(num_classes: int = 3, seed: int = 0) -> Network:
    """conv1 -> pool1 -> conv5 -> pool5 -> fc6 -> fc7 -> fc8 on 16 x 16 inputs, with positive biases."""
    rng = np.random.default_rng(seed)
    layers = [Conv2d("conv1", 3, 4, 3, padding=1, rng=rng), MaxPool2d("pool1", 2, 2),
              Conv2d("conv5", 4, 6, 3, padding=1, rng=rng), MaxPool2d("pool5", 2, 2), Flatten("flatten"),
              Linear("fc6", 6 * 4 * 4, 12, rng=rng), Linear("fc7", 12, 10, rng=rng),
              Linear("fc8", 10, num_classes, relu=False, rng=rng)]
    net = Network(layers, {"arch": "tiny", "input_size": [16, 16], "resize": 16, "num_classes": num_classes})
    for layer in net.layers:  # small positive biases keep most units alive in so small a net
        if "bias" in layer.params():
            layer.set_param("bias", np.full_like(layer.params()["bias"], 0.05))
    return net.eval()


def one_line(e: BaseException) -> str:
    text = str(e)
    assert text and "\n" not in text, text
    return text


# -- occlusion ------------------------------------------------------------------------

def test_occluder_starts_cover_the_far_edge():
    np.testing.assert_array_equal(occluder_starts(16, 5, 3), [0, 3, 6, 9, 11])
    np.testing.assert_array_equal(occluder_starts(16, 4, 4), [0, 4, 8, 12])
    np.testing.assert_array_equal(occluder_starts(16, 16, 1), [0])


def test_an_occlusion_value_is_a_forward_of_that_occluded_image(rng):
    net = tiny_classifier()
    x = rng.standard_normal((3, 16, 16)).astype(np.float32)
    maps = occlusion_maps(net, x, layer="conv5", size=5, stride=3, batch_size=4, label=1)
    assert maps.activation.shape == maps.top_class.shape == (5, 5)
    for i, j in [(0, 0), (2, 3), (4, 4)]:
        xo = occlude(x, int(maps.ys[i]), int(maps.xs[j]), 5)
        assert np.all(xo[:, maps.ys[i]: maps.ys[i] + 5, maps.xs[j]: maps.xs[j] + 5] == 0)
        trace = net.forward(xo[None])
        p = softmax(trace.output, axis=1)[0]
        total = trace.activations["conv5"][0, maps.channel].sum()
        np.testing.assert_allclose(maps.activation[i, j], total, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(maps.probability[i, j], p[1], rtol=1e-5, atol=1e-7)
        assert maps.top_class[i, j] == p.argmax()
    # the followed map is the one holding the strongest single activation
    a = net.forward(x[None]).activations["conv5"][0]
    assert maps.channel == int(a.reshape(6, -1).max(axis=1).argmax())
    assert maps.base["value"] == pytest.approx(float(a.max()))


def test_occlusion_takes_a_picture_file_and_a_chosen_channel(tmp_path, rng):
    path = tmp_path / "pic.png"
    Image.fromarray(rng.integers(0, 256, (20, 18, 3), dtype=np.uint8)).save(path)
    maps = occlusion_maps(tiny_classifier(), path, size=8, stride=8, channel=2)
    assert maps.channel == 2 and maps.probability is None and maps.picture.shape == (16, 16, 3)
    assert maps.activation.shape == (2, 2)


@pytest.mark.parametrize("kwargs, error, words", [
    ({"size": 17}, ShapeError, "smaller than the 17x17 occluder"),
    ({"layer": "conv9"}, ConfigError, "'conv9' does not exist"),
    ({"layer": "fc7"}, ConfigError, "not spatial"),
    ({"label": 3}, ConfigError, "out of range"),
    ({"label": -1}, ConfigError, "out of range"),
    ({"stride": 0}, ConfigError, "stride=0"),
    ({"size": 0}, ConfigError, "size=0"),
    ({"channel": 6}, ConfigError, "channel 6 does not exist"),
])
def test_occlusion_bad_input_is_one_line(kwargs, error, words, rng):
    x = rng.standard_normal((3, 16, 16)).astype(np.float32)
    with pytest.raises(error) as e:
        occlusion_maps(tiny_classifier(), x, **{"size": 4, "stride": 4, **kwargs})
    assert isinstance(e.value, ZfnetError) and words in one_line(e.value)


def test_nearest_centre_map_covers_the_image():
    values = np.arange(4).reshape(2, 2)
    full = nearest_centre_map(values, np.array([0, 8]), np.array([0, 8]), 8, (16, 16))
    assert full.shape == (16, 16)
    assert (full[:8, :8] == 0).all() and (full[8:, 8:] == 3).all() and (full[:8, 8:] == 1).all()


def test_paper_layers_of_the_three_architectures():
    from zfnet.models import build

    tiny = tiny_classifier()
    assert [paper_layer(tiny, n) for n in (1, 5, 7)] == ["conv1", "conv5", "fc7"]
    z = build("zfnet", num_classes=3, fc_width=8)
    assert [paper_layer(z, n) for n in (1, 5, 7)] == ["conv1", "conv5", "fc7"]
    sq = build("squeezenet1_0", num_classes=10)
    assert [paper_layer(sq, n) for n in (1, 5, 7)] == ["conv1", "fire8", "fire9"]
    assert [top_conv_layer(m) for m in (tiny, z, sq)] == ["conv5", "conv5", "fire9"]
    with pytest.raises(ConfigError):
        paper_layer(tiny, 3)


# -- invariance ------------------------------------------------------------------------

def test_identity_transforms_give_zero_distance(rng):
    net = tiny_classifier()
    x = rng.standard_normal((3, 16, 16)).astype(np.float32)
    for kind, identity, other in (("translate", 0, 3), ("scale", 1.0, 1.5), ("rotate", 0, 40)):
        c = invariance_curves(net, x, kind, [identity, other], label=2)
        assert c.layers == ["conv1", "fc7"]
        for name in c.layers:
            assert c.distances[name][0] == 0.0
            assert c.distances[name][1] > 0
        p = softmax(net.forward(x[None]).output, axis=1)[0, 2]
        np.testing.assert_allclose(c.probability[0], p, rtol=1e-5)
        assert c.pictures.shape == (2, 16, 16, 3) and c.label_from == "given"


def test_transforms_move_content_the_documented_way(rng):
    x = rng.standard_normal((3, 12, 12)).astype(np.float32)
    down = transform_input(x, "translate", 2)
    np.testing.assert_array_equal(down[:, 2:], x[:, :-2])
    assert (down[:, :2] == 0).all()  # the mean colour comes in
    np.testing.assert_allclose(transform_input(x, "rotate", 90), np.rot90(x, 1, axes=(1, 2)), atol=1e-5)
    np.testing.assert_allclose(transform_input(x, "rotate", 180), x[:, ::-1, ::-1], atol=1e-5)
    zoom = transform_input(x, "scale", 2.0)
    assert zoom.shape == x.shape and np.isfinite(zoom).all()
    with pytest.raises(ConfigError):
        transform_input(x, "scale", 0)
    with pytest.raises(ConfigError) as e:
        transform_input(x, "shear", 1)
    assert "expected one of translate, scale, rotate" in one_line(e.value)


def test_invariance_label_defaults_to_the_prediction_and_checks_input(rng):
    net = tiny_classifier()
    x = rng.standard_normal((3, 16, 16)).astype(np.float32)
    c = invariance_curves(net, x, "translate", [0])
    assert c.label_from == "prediction"
    assert c.label == int(net.forward(x[None]).output[0].argmax())
    for kwargs in ({"label": 5}, {"layers": ["conv1", "nope"]}, {"values": []}):
        with pytest.raises(ConfigError) as e:
            invariance_curves(net, x, "rotate", **{"values": [0, 10], **kwargs})
        one_line(e.value)


def test_invariance_figure_draws(rng):
    net = tiny_classifier()
    imgs = [rng.standard_normal((3, 16, 16)).astype(np.float32) for _ in range(2)]
    curves = [{k: invariance_curves(net, x, k, v, label=0) for k, v in
               (("translate", [-2, 0, 2]), ("scale", [1, 1.2]), ("rotate", [0, 90]))} for x in imgs]
    pic = invariance_figure(curves, ["a", "b"], ["zero", "one", "two"], title="t")
    assert pic.dtype == np.uint8 and pic.ndim == 3 and pic.shape[2] == 3 and pic.shape[0] > 300


# -- correspondence ---------------------------------------------------------------------

def test_delta_on_a_hand_made_example():
    signs = np.array([[1, 0, -1, 1],
                      [1, 0, 1, 1],
                      [-1, 0, -1, 1]])
    mean, std, pairs = hamming_delta(signs)
    np.testing.assert_allclose(pairs, [0.25, 0.25, 0.5])  # pairs (0,1), (0,2), (1,2)
    assert mean == pytest.approx(1 / 3) and std == pytest.approx(np.std([0.25, 0.25, 0.5]))
    # identical changes agree everywhere; so do "no change at all" vectors
    assert hamming_delta(np.ones((5, 7)))[0] == 0.0
    assert hamming_delta(np.zeros((5, 7)))[0] == 0.0
    c = changed_statistics(signs)
    assert c["changed"] == pytest.approx(9 / 12)
    np.testing.assert_allclose(c["on_changed_pairs"], [1 / 3, 1 / 3, 2 / 3])  # 3 changed entries per pair
    with pytest.raises(ConfigError):
        hamming_delta(np.ones((1, 4)))


def _parts_file(tmp_path: Path, rng, n: int = 3) -> tuple[Path, Path]:
    root = tmp_path / "imgs"
    (root / "dog").mkdir(parents=True)
    entries = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / "dog" / f"d{i}.png")
        entries.append({"path": f"dog/d{i}.png", "size": [16, 16], "object_box": [2, 2, 14, 14],
                        "right_eye": [4, 5], "left_eye": [11, 5], "nose": [8, 10]})
    parts = tmp_path / "parts.json"
    parts.write_text(json.dumps({"how_made": "test", "images": entries}))
    return root, parts


def test_correspondence_on_tiny_images(tmp_path, rng):
    root, parts = _parts_file(tmp_path, rng)
    items = load_parts(parts)
    res = correspondence(tiny_classifier(), items, root, mask_scale=0.5, random_draws=3, seed=1)
    assert res.layers == {"layer5": "conv5", "layer7": "fc7"}
    assert res.sides == [4, 4, 4]  # round(0.5 * 7)
    assert set(res.table) == set(ROWS)
    for row in ROWS:
        for key in ("layer5", "layer7"):
            v = res.table[row][key]
            assert 0 <= v["mean"] <= 1 and v["std"] >= 0
            assert len(v["pairs"]) == (3 if row != "random" else 9)
    for corner in res.corners:
        assert corner["right_eye"] == (4, 3)  # centre x 4, y 5: start (5.5 - 2, 4.5 - 2) rounded half up
    doc = res.to_dict()
    assert doc["paper"]["random"]["layer5"] == {"mean": 0.107, "std": 0.017}
    json.dumps(doc)
    again = correspondence(tiny_classifier(), items, root, mask_scale=0.5, random_draws=3, seed=1)
    assert again.random_corners == res.random_corners  # seeded


def test_input_point_follows_the_preprocessing():
    from zfnet.data import TransformConfig

    same = TransformConfig(input_size=16, resize=16)
    assert input_point(same, (16, 16), (3.0, 7.0)) == (3.0, 7.0, 1.0)
    caffe = TransformConfig(input_size=227, resize=256)  # 224 -> 256, crop 227 at (14, 14)
    x, y, s = input_point(caffe, (224, 224), (111.5, 111.5))
    assert s == pytest.approx(256 / 224)
    assert x == pytest.approx(128 - 0.5 - 14) and y == pytest.approx(x)


def test_bad_parts_files_are_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    for text, words in (("{", "cannot read it as JSON"), ('{"images": []}', "at least 2"),
                        ('{"images": [{"path": "a", "size": [4, 4], "left_eye": [1, 1], "nose": [2, 2]}, {}]}',
                         "'right_eye'")):
        bad.write_text(text)
        with pytest.raises(DataError) as e:
            load_parts(bad)
        assert words in one_line(e.value)


# -- the commands -------------------------------------------------------------------------

@pytest.fixture
def tiny(monkeypatch):
    """The commands get the tiny classifier whatever the weights."""
    monkeypatch.setattr(visualize, "load_model", lambda w, a=None, *caffe: (tiny_classifier(), "tiny weights", "tiny"))


@pytest.fixture
def picture(tmp_path, rng) -> Path:
    folder = tmp_path / "n02102040"
    folder.mkdir()
    path = folder / "in.png"
    Image.fromarray(rng.integers(0, 256, (20, 18, 3), dtype=np.uint8)).save(path)
    return path


def test_cli_occlusion(tmp_path, picture, tiny, capsys):
    out = tmp_path / "out"
    assert main(["occlusion", "--weights", "w.npz", "--image", str(picture), "--out", str(out), "--size", "6",
                 "--stride", "5", "--label", "1", "--json"]) == 0
    assert (out / "occlusion_tiny_in.png").is_file()
    doc = json.loads((out / "occlusion_tiny_in.json").read_text())
    assert doc["layer"] == "conv5" and doc["label"] == 1 and doc["ys"] == [0, 5, 10]
    assert "Occluded" in capsys.readouterr().out
    # no label: the prediction stands in, and the run says so
    assert main(["occlusion", "--weights", "w.npz", "--image", str(picture), "--out", str(out), "--size", "8",
                 "--stride", "8", "--json"]) == 0
    assert json.loads((out / "occlusion_tiny_in.json").read_text())["label_from"] == "predicted (no label)"


def test_cli_occlusion_with_a_top9_json(tmp_path, rng, tiny, capsys):
    from zfnet.figures.top9 import run_top9

    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(images / f"i{i}.png")
    run_top9(tiny_classifier(), images, tmp_path / "t9", layers=["conv5"], k=4, units=1, workers=0,
             gallery=False, progress=False)
    out = tmp_path / "out"
    assert main(["occlusion", "--weights", "w.npz", "--image", str(images / "i0.png"), "--out", str(out),
                 "--size", "8", "--stride", "8", "--top9", str(tmp_path / "t9" / "top9.json")]) == 0
    text = capsys.readouterr().out
    assert "panel (c): " in text and "panel (c): 1 projection" not in text  # others' projections were drawn


@pytest.mark.parametrize("extra, words", [
    (["--layer", "conv9"], "--layer: tiny has no layer 'conv9'"),
    (["--label", "7"], "out of range"),
    (["--label", "springer"], "not a class index"),
    (["--size", "40"], "smaller than the 40x40 occluder"),
])
def test_cli_occlusion_bad_values_are_one_line(extra, words, tmp_path, picture, tiny, capsys):
    assert main(["occlusion", "--weights", "w.npz", "--image", str(picture), "--out", str(tmp_path / "o")]
                + extra) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_stride_zero_stops_at_parse_time(tmp_path, picture, capsys):
    with pytest.raises(SystemExit) as e:
        main(["occlusion", "--image", str(picture), "--out", str(tmp_path), "--stride", "0"])
    assert e.value.code == 2
    assert "argument --stride: must be a positive integer, got '0'" in capsys.readouterr().err


def test_cli_invariance(tmp_path, picture, tiny, capsys, rng):
    other = tmp_path / "b.png"
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(other)
    out = tmp_path / "out"
    assert main(["invariance", "--weights", "w.npz", "--images", str(picture), str(other), "--labels", "0", "2",
                 "--out", str(out), "--json"]) == 0
    assert (out / "invariance_tiny.png").is_file()
    doc = json.loads((out / "invariance_tiny.json").read_text())
    assert doc["layers"] == ["conv1", "fc7"] and len(doc["images"]) == 2
    assert doc["images"][1]["curves"]["rotate"]["values"][-1] == 350
    with pytest.raises(SystemExit):
        main(["invariance", "--images", str(picture), str(other), "--labels", "0", "--out", str(out)])
    assert "2 images" in capsys.readouterr().err


def test_cli_correspondence(tmp_path, tiny, capsys, rng):
    root, parts = _parts_file(tmp_path, rng)
    out = tmp_path / "out"
    assert main(["correspondence", "--weights", "w.npz", "--images", str(root), "--parts", str(parts),
                 "--out", str(out), "--random", "2", "--mask-scale", "0.5"]) == 0
    doc = json.loads((out / "correspondence_tiny.json").read_text())
    assert doc["layers"] == {"layer5": "conv5", "layer7": "fc7"} and doc["random_draws"] == 2
    assert (out / "correspondence_tiny.png").is_file()
    text = capsys.readouterr().out
    assert "right eye" in text and "0.067" in text  # the paper's value beside ours
    assert main(["correspondence", "--weights", "w.npz", "--images", str(root), "--parts", str(parts),
                 "--out", str(out), "--layers", "conv5", "nope"]) == 2


# -- the committed parts file and real weights ----------------------------------------------

def test_committed_parts_file_follows_its_rule(shared_dir):
    path = ROOT / "docs" / "figures" / "correspondence_parts.json"
    items = load_parts(path)
    assert len(items) == 5
    val = shared_dir / "data" / "imagenette" / "val"
    for item in items:
        with Image.open(val / item.path) as im:
            assert im.size == item.size
        assert item.eye_distance() >= 20  # the rule: eyes at least 20 px apart
        # frontal: the dog's right eye is on the image's left, the nose below the eyes
        assert item.parts["right_eye"][0] < item.parts["nose"][0] < item.parts["left_eye"][0]
        assert item.parts["nose"][1] > max(item.parts["right_eye"][1], item.parts["left_eye"][1])
        x0, y0, x1, y1 = item.object_box
        assert all(x0 <= x < x1 and y0 <= y < y1 for x, y in item.parts.values())
    from zfnet.data import TransformConfig

    side, corners = part_masks(items[0], TransformConfig(input_size=224, resize=224), 0.6, (224, 224))
    assert side == round(0.6 * items[0].eye_distance())


def test_trained_zfnet_occlusion_matches_a_forward(rng):
    weights = ROOT / "weights" / "zfnet-imagenette.npz"
    if not weights.is_file():
        pytest.skip(f"trained weights not found at {weights}")
    from zfnet.weights import load

    net = load(weights)
    pic = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    maps = occlusion_maps(net, pic, size=112, stride=112, label=1)
    x, _ = as_input(net, pic)
    xo = occlude(x, 112, 0, 112)
    trace = net.forward(xo[None])
    np.testing.assert_allclose(maps.activation[1, 0], trace.activations["conv5"][0, maps.channel].sum(), rtol=1e-4)
    np.testing.assert_allclose(maps.probability[1, 0], softmax(trace.output, axis=1)[0, 1], rtol=1e-4, atol=1e-6)


def test_paper_values_are_the_papers():
    assert PAPER_TABLE1["right_eye"]["layer5"] == (0.067, 0.007)
    assert PAPER_TABLE1["nose"]["layer7"] == (0.069, 0.011)
    assert PAPER_TABLE1["random"]["layer7"] == (0.073, 0.014)


def test_cli_correspondence_defaults_to_the_committed_parts(shared_dir, tmp_path, tiny, capsys):
    val = shared_dir / "data" / "imagenette" / "val"
    assert main(["correspondence", "--weights", "w.npz", "--images", str(val), "--out", str(tmp_path),
                 "--random", "1"]) == 0
    doc = json.loads((tmp_path / "correspondence_tiny.json").read_text())
    assert doc["parts_file"] == "correspondence_parts.json" and len(doc["images"]) == 5


def test_panel_c_refuses_a_top9_json_of_another_network(tmp_path, rng):
    from zfnet.figures.occlusion import map_projections

    top9 = tmp_path / "top9.json"
    top9.write_text(json.dumps({"arch": "zfnet", "layers": {"conv5": [256, 13, 13]}, "results": []}))
    maps = occlusion_maps(tiny_classifier(), rng.standard_normal((3, 16, 16)).astype(np.float32), size=8, stride=8)
    assert len(map_projections(tiny_classifier(), maps)) == 1  # this image's projection alone
    with pytest.raises(ConfigError) as e:
        map_projections(tiny_classifier(), maps, top9=top9)
    assert "mined with 'zfnet', not 'tiny'" in one_line(e.value)
