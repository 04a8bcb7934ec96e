"""The receptive-field-windowed projection equals the dense projection.

``project_units_windowed`` computes each level only inside the unit's window; the
dense :func:`zfnet.deconvnet.project_units` computes everywhere.  They must agree
for any network built from the supported layers, any unit (border units included,
whose windows hang over the map), and all three ReLU rules.  Random small networks
run in float64 so that the comparison is tight (only GEMM rounding differs).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from zfnet.deconvnet import project_units, unit_box
from zfnet.deconvnet.windowed import WindowUnsupported, project_units_windowed, window_sizes
from zfnet.errors import ShapeError
from zfnet.models import Network, zfnet
from zfnet.nn import LRN, Conv2d, Dropout, MaxPool2d


def _float64(model):
    for _, layer, attr in model.named_parameters():
        layer.set_param(attr, layer.params()[attr].astype(np.float64))
    return model


@st.composite
def tiny_networks(draw):
    """A random stack of conv / pool / LRN / dropout (and a fire module) on a small input."""
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    size = draw(st.integers(9, 26))
    shape = (1, 3, size, size)
    layers, ch = [], 3
    for i in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["conv", "conv", "pool", "lrn", "drop", "fire"]))
        name = f"l{i}"
        if kind == "conv":
            k = draw(st.integers(1, 5))
            out = draw(st.integers(1, 5))
            groups = draw(st.sampled_from([1, 1, 2])) if ch % 2 == 0 and out % 2 == 0 else 1
            layer = Conv2d(name, ch, out, k, stride=draw(st.integers(1, 3)), padding=draw(st.integers(0, k - 1)),
                           groups=groups, relu=draw(st.booleans()) or i == 0, rng=rng)
        elif kind == "pool":
            k = draw(st.integers(2, 3))
            layer = MaxPool2d(name, k, draw(st.integers(1, 2)), draw(st.integers(0, k // 2)), draw(st.booleans()))
        elif kind == "lrn":
            layer = LRN(name, size=3, alpha=1e-2, beta=0.75, k=2.0)
        elif kind == "drop":
            layer = Dropout(name, 0.5)
        else:
            from zfnet.models.squeezenet import Fire

            layer = Fire(name, ch, 2, 2, 3, rng=rng)
        try:
            shape = layer.output_shape(shape)
        except Exception:  # too small for this layer
            assume(False)
        assume(min(shape[2:]) >= 1)
        ch = shape[1]
        layers.append(layer)
    net = _float64(Network(layers, {"arch": "tiny", "input_size": [size, size]}))
    x = rng.standard_normal((2, 3, size, size))
    return net, x, layers[-1].name, shape


@given(tiny_networks(), st.sampled_from(["deconvnet", "backprop", "guided"]), st.data())
@settings(max_examples=60, deadline=None)
def test_windowed_equals_dense_on_random_networks(case, rule, data):
    net, x, top, (_, c, h, w) = case
    trace = net.forward(x, upto=top)
    # units: corners and edges (windows hang over the map) and random interior ones
    ys = data.draw(st.lists(st.sampled_from(sorted({0, h - 1, h // 2}) + list(range(h))), min_size=1, max_size=4))
    act = trace.activations[top]
    units = []
    for y in ys:
        n, x = data.draw(st.integers(0, 1)), data.draw(st.sampled_from(sorted({0, w - 1}) + list(range(w))))
        units.append([n, int(np.abs(act[n, :, y, x]).argmax()), y, x])  # a nonzero activation if there is one
    units = np.array(units)
    dense = project_units(net, trace, top, units, rule)
    windowed = project_units_windowed(net, trace, top, units, rule)
    assert windowed.shape == dense.shape
    np.testing.assert_allclose(windowed, dense, rtol=0, atol=1e-12 * max(1.0, np.abs(dense).max()))


@pytest.fixture(scope="module")
def zf_trace():
    net = zfnet()
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    return net, net.forward(x, upto="conv5")


@pytest.mark.parametrize("rule", ["deconvnet", "backprop", "guided"])
def test_windowed_equals_dense_zfnet_conv5(zf_trace, rule):
    net, trace = zf_trace
    act = trace.activations["conv5"]
    # corners, an edge and the centre, each with its strongest channel (a zero activation projects to 0)
    units = np.array([[n, int(act[n, :, y, x].argmax()), y, x]
                      for n, y, x in [(0, 0, 0), (1, 12, 12), (0, 0, 12), (1, 6, 7), (0, 12, 3)]])
    assert (act[units[:, 0], units[:, 1], units[:, 2], units[:, 3]] > 0).all()
    dense = project_units(net, trace, "conv5", units, rule)
    windowed = project_units_windowed(net, trace, "conv5", units, rule)
    np.testing.assert_allclose(windowed, dense, rtol=0, atol=1e-5 * np.abs(dense).max())
    # the projection is zero outside the unit's receptive field (unit_box, unclipped)
    for u, (_, _, y, x) in enumerate(units):
        y0, x0, y1, x1 = unit_box(net, "conv5", int(y), int(x), clip=False)
        outside = dense[u].copy()
        outside[:, max(y0, 0) : y1, max(x0, 0) : x1] = 0
        assert not outside.any()


def test_crops_place_into_the_full_projection(zf_trace):
    net, trace = zf_trace
    units = np.array([[0, 3, 0, 0], [1, 9, 7, 11]])
    full = project_units_windowed(net, trace, "conv5", units)
    crops, origins = project_units_windowed(net, trace, "conv5", units, crops=True)
    assert crops.shape == (2, 3, 139, 139)
    # the windows are the receptive fields of the receptive-field module
    assert origins.tolist() == [list(unit_box(net, "conv5", 0, 0, clip=False)[:2]),
                                list(unit_box(net, "conv5", 7, 11, clip=False)[:2])]
    for u, (y, x) in enumerate(origins):
        canvas = np.zeros((3, 224 + 2 * 139, 224 + 2 * 139), np.float32)
        canvas[:, y + 139 : y + 278, x + 139 : x + 278] = crops[u]
        np.testing.assert_array_equal(canvas[:, 139:-139, 139:-139], full[u])
        assert canvas.sum() == pytest.approx(full[u].sum(), abs=float(1e-5 * np.abs(full[u]).sum()))


def test_window_sizes_zfnet():
    sizes = dict(window_sizes(zfnet(), "conv5"))
    assert [sizes[k] for k in ("conv5", "conv4", "conv3", "pool2", "conv2", "pool1", "conv1", "input")] == \
        [1, 3, 5, 7, 15, 33, 67, 139]


def test_unsupported_layers_and_bad_units(zf_trace):
    net, trace = zf_trace
    full = net.forward(np.zeros((1, 3, 224, 224), np.float32), upto="fc6")
    with pytest.raises(WindowUnsupported):
        project_units_windowed(net, full, "fc6", [[0, 1, 0, 0]])
    with pytest.raises(ShapeError):
        project_units_windowed(net, trace, "conv5", [[0, 1, 13, 0]])
    with pytest.raises(ShapeError):
        project_units_windowed(net, trace, "conv5", [[2, 1, 0, 0]])


def test_project_units_windowed_flag(zf_trace):
    """``project_units(..., windowed=True)`` is the windowed pass on spatial layers and the
    dense pass where no windowed step exists (fully connected layers)."""
    net, trace = zf_trace
    act = trace.activations["conv4"]
    units = np.array([[0, int(act[0, :, 5, 6].argmax()), 5, 6], [1, int(act[1, :, 0, 12].argmax()), 0, 12]])
    dense = project_units(net, trace, "conv4", units)
    flagged = project_units(net, trace, "conv4", units, windowed=True)
    np.testing.assert_array_equal(flagged, project_units_windowed(net, trace, "conv4", units))
    np.testing.assert_allclose(flagged, dense, rtol=0, atol=1e-5 * np.abs(dense).max())
    # fc6 has no windowed step: the flag falls back to the dense projection, same result
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    full = net.forward(x, upto="fc6")
    unit = [[0, int(full.activations["fc6"][0].argmax()), 0, 0]]
    np.testing.assert_array_equal(project_units(net, full, "fc6", unit, windowed=True),
                                  project_units(net, full, "fc6", unit))


def test_a_layer_without_a_windowed_step_is_named_once_not_silent():
    """The windowed flag falls back to the dense pass loudly: a WindowFallback warning names the layer."""
    from zfnet.deconvnet.project import WindowFallback
    from zfnet.nn import AdaptiveAvgPool2d, Layer

    rng = np.random.default_rng(0)
    net = Network([Conv2d("c1", 3, 2, 3, rng=rng), AdaptiveAvgPool2d("adapt", (5, 5)),
                   Conv2d("c2", 2, 2, 3, rng=rng)], {"arch": "t", "input_size": [9, 9]})
    x = rng.standard_normal((1, 3, 9, 9)).astype(np.float32)
    with pytest.raises(WindowUnsupported, match="adapt"):
        project_units_windowed(net, x, "c2", [[0, 0, 1, 1]])
    with pytest.warns(WindowFallback, match="adapt"):
        got = project_units(net, x, "c2", [[0, 0, 1, 1]], windowed=True)
    np.testing.assert_array_equal(got, project_units(net, x, "c2", [[0, 0, 1, 1]]))
    assert Layer.deconv_window is not Conv2d.deconv_window  # each layer owns its windowed step
