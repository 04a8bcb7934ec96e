"""Deconvnet projection and receptive fields.

* Projections equal PyTorch autograd through a ReLU whose backward follows the rule
  (deconvnet: rectify the incoming signal) and an LRN that passes it through.
* Receptive fields equal the region an activation really depends on (measured by
  perturbing pixels), and an interior activation equals the unpadded network applied
  to its receptive-field crop.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import reference as ref
from zfnet.deconvnet import project, project_units, receptive_fields, unit_box
from zfnet.errors import ConfigError, ShapeError
from zfnet.models import Network, zfnet
from zfnet.nn import LRN, Conv2d, MaxPool2d


def tiny_zf(seed=0, positive=False, size=48):
    """ZFNet's layer types and strides at toy width: conv 7/2 p1, pool 3/2 ceil, LRN, conv 5/2, pool, conv 3 p1."""
    rng = np.random.default_rng(seed)
    layers = [
        Conv2d("conv1", 3, 4, 7, stride=2, padding=1, rng=rng),
        MaxPool2d("pool1", 3, 2, ceil_mode=True),
        LRN("norm1", 5, 1e-4, 0.75, 2.0),
        Conv2d("conv2", 4, 5, 5, stride=2, rng=rng),
        MaxPool2d("pool2", 3, 2, ceil_mode=True),
        Conv2d("conv3", 5, 3, 3, padding=1, rng=rng),
    ]
    net = Network(layers, {"arch": "tiny", "input_size": [size, size]})
    if positive:  # all weights > 0: every pixel in the field moves the unit (no ReLU/max can hide it)
        net.load_state_dict({k: np.abs(v) + 0.05 for k, v in net.state_dict().items()})
    else:
        net.load_state_dict({k: v + 0.01 for k, v in net.state_dict().items()})
    return net


def test_three_by_three_stack_grows_by_two():
    layers = [Conv2d(f"c{i}", 1, 1, 3, padding=1) for i in range(6)]
    rfs = receptive_fields(Network(layers, {"input_size": [32, 32]}))
    assert [rf.size for rf in rfs.values()] == [3, 5, 7, 9, 11, 13]
    assert all(rf.stride == 1 and rf.start == 0 for rf in rfs.values())


def test_zfnet_receptive_fields():
    rfs = receptive_fields(zfnet(num_classes=10, fc_width=32))
    got = {k: (rf.size, rf.stride, rf.start) for k, rf in rfs.items()}
    assert got["conv1"] == (7, 2, 2)
    assert got["pool1"] == (11, 4, 4)
    assert got["conv2"] == (27, 8, 12)
    assert got["pool2"] == (43, 16, 20)
    assert got["conv5"] == (139, 16, 20)
    assert got["pool5"] == (171, 32, 36)
    assert "fc6" not in got


@pytest.mark.parametrize("layer,units", [
    ("conv1", [(0, 0), (5, 7), (21, 21)]),
    ("pool1", [(0, 0), (4, 6), (10, 10)]),
    ("conv2", [(0, 0), (1, 2), (3, 3)]),
    ("conv3", [(0, 0), (1, 1)]),
])
def test_receptive_field_is_the_region_the_unit_depends_on(layer, units):
    net = tiny_zf(positive=True)
    x = np.random.default_rng(1).random((1, 3, 48, 48))

    def f(img):
        return net.forward(img, upto=layer, caches=False).activations[layer]

    for y, x_ in units:
        mask = ref.brute_force_receptive_field(f, x, (0, 1, y, x_))
        assert ref.mask_box(mask) == unit_box(net, layer, y, x_), (layer, y, x_)


@st.composite
def spatial_nets(draw):
    """A random stack of 1-4 conv (k 1-5, stride 1-3, padding 0..k//2) and max-pool
    (k 2-3, stride 1-2, floor or ceil) layers on a 14-26 pixel input, 2 channels wide,
    with positive weights and biases so that every pixel a unit reads can move it."""
    size = draw(st.integers(14, 26))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    layers, h = [], size
    for i in range(draw(st.integers(1, 4))):
        if draw(st.booleans()):
            k, s = draw(st.integers(1, 5)), draw(st.integers(1, 3))
            p = draw(st.integers(0, k // 2))
            layer = Conv2d(f"c{i}", 3 if i == 0 else 2, 2, k, stride=s, padding=p, rng=rng)
        else:
            k, s = draw(st.integers(2, 3)), draw(st.integers(1, 2))
            layer = MaxPool2d(f"p{i}", k, s, ceil_mode=draw(st.booleans()))
            if i == 0:
                layers.append(Conv2d("c_in", 3, 2, 1, rng=rng))  # pools keep channels: start at 2
        try:
            h_next = layer.output_shape((1, 2, h, h))[2]
        except ShapeError:  # the map is already smaller than this kernel
            break
        if h_next < 1:
            break
        layers.append(layer)
        h = h_next
    if not layers:
        layers.append(Conv2d("c0", 3, 2, 3, rng=rng))
    net = Network(layers, {"arch": "random", "input_size": [size, size]})
    net.load_state_dict({k: np.abs(v) + 0.05 for k, v in net.state_dict().items()})
    return net


@given(net=spatial_nets(), data=st.data())
def test_receptive_field_property_on_random_stacks(net, data):
    """Measured dependence region vs receptive-field arithmetic, on random geometries.

    Always: every pixel the unit depends on lies in its (clipped) box.  For an interior
    unit (unclipped box inside the image: no padding, no partial ceil-mode window, no
    unused trailing pixels in its field) the box is the region's bounding box, and the
    region fills it unless a layer's stride exceeds its kernel (a field with holes).
    """
    layer = net.layers[-1].name
    size = net.input_size[0]
    h = net.forward(np.zeros((1, 3, size, size)), upto=layer, caches=False).activations[layer].shape[2]
    y, x_ = data.draw(st.integers(0, h - 1)), data.draw(st.integers(0, h - 1))
    img = np.random.default_rng(0).random((1, 3, size, size))

    def f(a):
        return net.forward(a, upto=layer, caches=False).activations[layer]

    mask = ref.brute_force_receptive_field(f, img, (0, 1, y, x_))
    y0, x0, y1, x1 = unit_box(net, layer, y, x_)
    inside = np.zeros_like(mask)
    inside[y0:y1, x0:x1] = True
    assert not (mask & ~inside).any(), "the unit depends on a pixel outside its receptive field"
    u0, v0, u1, v1 = unit_box(net, layer, y, x_, clip=False)
    if u0 >= 0 and v0 >= 0 and u1 <= size and v1 <= size:
        assert ref.mask_box(mask) == (y0, x0, y1, x1)
        if all(l.kernel_size[0] >= l.stride[0] for l in net.layers):  # no layer skips pixels
            assert mask[y0:y1, x0:x1].all()


@given(net=spatial_nets(), data=st.data())
def test_crop_identity_property_on_random_stacks(net, data):
    """An interior activation equals the unpadded network applied to its receptive-field crop."""
    layer = net.layers[-1].name
    size = net.input_size[0]
    img = np.random.default_rng(1).standard_normal((1, 3, size, size))
    act = net.forward(img, upto=layer, caches=False).activations[layer]
    interior = [(y, x_) for y in range(act.shape[2]) for x_ in range(act.shape[3])
                if (lambda b: b[0] >= 0 and b[1] >= 0 and b[2] <= size and b[3] <= size)(
                    unit_box(net, layer, y, x_, clip=False))]
    assume(interior)
    y, x_ = data.draw(st.sampled_from(interior))
    y0, x0, y1, x1 = unit_box(net, layer, y, x_, clip=False)
    out = net.unpadded().forward(img[:, :, y0:y1, x0:x1], upto=layer, caches=False).activations[layer]
    assert out.shape[2:] == (1, 1)
    np.testing.assert_allclose(out[0, :, 0, 0], act[0, :, y, x_], rtol=1e-10, atol=1e-10)


def test_interior_activation_equals_network_on_its_crop():
    """The 'two methods' of finding top patches agree away from the padding."""
    m = zfnet(num_classes=10, fc_width=32, seed=5)
    x = np.random.default_rng(2).standard_normal((1, 3, 224, 224)).astype(np.float32)
    tr = m(x, upto="conv5")
    crop_net = m.unpadded()
    for layer, (y, x_) in [("conv5", (6, 6)), ("conv5", (4, 8)), ("conv2", (10, 13)), ("conv1", (40, 3))]:
        y0, x0, y1, x1 = unit_box(m, layer, y, x_, clip=False)
        assert y0 >= 0 and x0 >= 0 and y1 <= 224 and x1 <= 224  # interior
        out = crop_net.forward(x[:, :, y0:y1, x0:x1], upto=layer, caches=False).activations[layer]
        assert out.shape[2:] == (1, 1)
        np.testing.assert_allclose(out[0, :, 0, 0], tr.activations[layer][0, :, y, x_], rtol=1e-4, atol=1e-4)


def test_projection_basics():
    net = tiny_zf()
    x = np.random.default_rng(3).standard_normal((3, 3, 48, 48)).astype(np.float32)
    p = project(net, x, "conv3", 1)
    assert p.shape == (3, 3, 48, 48) and p.dtype == np.float32
    # projections of units in the same image = one dense signal projected (linearity given switches)
    tr = net(x, upto="conv3")
    units = np.array([[0, 1, 0, 0], [2, 0, 1, 1], [0, 2, 1, 0]])
    batch = project_units(net, tr, "conv3", units)
    for u, row in enumerate(units):
        single = project(net, x[row[0] : row[0] + 1], "conv3", int(row[1]), position=tuple(row[2:]))
        np.testing.assert_allclose(batch[u], single[0], rtol=1e-5, atol=1e-6)
    # the projection of a unit lies inside its receptive field
    for u, (n, c, y, x_) in enumerate(units):
        y0, x0, y1, x1 = unit_box(net, "conv3", y, x_)
        outside = batch[u].copy()
        outside[:, y0:y1, x0:x1] = 0
        assert not outside.any()
    with pytest.raises(ConfigError, match="rule"):
        project(net, x, "conv3", 0, rule="magic")
    with pytest.raises(ConfigError, match="channel 7"):
        project(net, x, "conv3", 7)
    with pytest.raises(ShapeError, match="outside"):
        project(net, x, "conv3", 0, position=(9, 0))


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason="PyTorch comparisons need torch (pip install zfnet[torch])")


@pytest.mark.parametrize("rule", ["deconvnet", "backprop", "guided"])
@given(seed=st.integers(0, 10_000), layer=st.sampled_from(["conv1", "pool1", "conv2", "pool2", "conv3"]))
@settings(max_examples=8)
def test_projection_matches_torch_autograd_tiny(torch, rule, seed, layer):
    from benchmarks.torch_twin import torch_projection

    net = tiny_zf(seed % 7)
    x = np.random.default_rng(seed).standard_normal((2, 3, 48, 48)).astype(np.float32)
    act = net(x, upto=layer).activations[layer]
    rng = np.random.default_rng(seed + 1)
    units = [(int(rng.integers(2)), int(rng.integers(act.shape[1])), int(rng.integers(act.shape[2])),
              int(rng.integers(act.shape[3]))) for _ in range(3)]
    ours = project_units(net, x, layer, np.array(units), rule=rule)
    theirs = torch_projection(net, x, layer, units, rule)
    scale = max(1.0, float(np.abs(theirs).max()))
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4 * scale)


@pytest.mark.parametrize("layer", ["conv1", "conv2", "conv5"])
def test_zfnet_projection_matches_torch_autograd(torch, layer):
    """The whole ZFNet: the deconvnet == autograd with a rectifying ReLU backward."""
    from benchmarks.torch_twin import torch_projection

    m = zfnet(num_classes=10, fc_width=32, seed=7)
    x = np.random.default_rng(8).standard_normal((2, 3, 224, 224)).astype(np.float32)
    ours = project(m, x, layer, 5)  # each image's strongest position of channel 5
    act = m(x, upto=layer).activations[layer]
    units = []
    for n in range(2):
        flat = int(act[n, 5].argmax())
        units.append((n, 5, flat // act.shape[3], flat % act.shape[3]))
    theirs = torch_projection(m, x, layer, units, "deconvnet")
    scale = float(np.abs(theirs).max())
    assert scale > 0
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4 * scale)


def test_rf_command_prints_the_readme_table(capsys):
    """`zfnet rf --arch zfnet` prints exactly the table the README shows."""
    import re
    from pathlib import Path

    from zfnet.cli import main

    assert main(["rf", "--arch", "zfnet"]) == 0
    printed = capsys.readouterr().out.strip()
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = re.search(r"`zfnet rf --arch zfnet` prints the receptive-field table:\n\n```\n(.*?)```", readme, re.S)
    assert block is not None
    assert printed == block.group(1).strip()
    assert "conv5                3   1   1        13      139    16     20" in printed


@pytest.mark.parametrize("composite", ["fire", "concat"])
def test_unpadded_composite_layers_give_the_interior_activation_on_its_crop(composite):
    """``Network.unpadded()`` removes a fire module's (or a concatenation's) padding too.

    Before, the 3x3 branch kept its padding of 1, so a crop of the receptive field
    gave a 3x3 map, not the unit's 1x1 activation.
    """
    from zfnet.models import Network
    from zfnet.models.squeezenet import Fire
    from zfnet.nn import Concat, Conv2d

    rng = np.random.default_rng(3)
    block = (Fire("fire", 4, 3, 2, 2, rng=rng) if composite == "fire" else
             Concat("cat", [[Conv2d("b1", 4, 2, 1, rng=rng)], [Conv2d("b3", 4, 2, 3, padding=1, rng=rng)],
                            [Conv2d("b5", 4, 1, 5, padding=2, rng=rng)]]))
    net = Network([Conv2d("conv1", 3, 4, 3, stride=2, padding=1, rng=rng), block], {"arch": "t", "input_size": [31, 31]})
    x = rng.standard_normal((1, 3, 31, 31))
    layer = block.name
    act = net.forward(x, caches=False).activations[layer]
    for y, x_ in [(5, 7), (6, 6)]:
        y0, x0, y1, x1 = unit_box(net, layer, y, x_, clip=False)
        assert y0 >= 0 and x0 >= 0 and y1 <= 31 and x1 <= 31  # interior
        out = net.unpadded().forward(x[:, :, y0:y1, x0:x1], caches=False).activations[layer]
        assert out.shape[2:] == (1, 1)
        np.testing.assert_allclose(out[0, :, 0, 0], act[0, :, y, x_], rtol=1e-10, atol=1e-10)
