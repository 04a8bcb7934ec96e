"""Adding a layer type touches ``ops/``, ``nn/`` and its test: shown by a layer defined only here.

``Blur`` is a fixed depthwise 3x3 binomial filter (stride and padding as given): a
spatial layer with no parameters that nothing in ``zfnet`` knows about.  It defines
the methods ``docs/architecture.md`` lists (``forward``, ``deconv``,
``deconv_window``, ``rf``, ``output_shape``) from public ops and the public
:class:`~zfnet.nn.Window`, and then runs, unchanged, through the forward pass, the
dense deconvnet, the windowed projection, the unit crops, the receptive fields and
``Network.unpadded``.
"""

from __future__ import annotations

import numpy as np
import pytest

from zfnet.backend import get_array_module
from zfnet.deconvnet import project_units, project_units_windowed, receptive_fields, unit_box, window_sizes
from zfnet.deconvnet.crops import unit_crops
from zfnet.models import Network
from zfnet.nn import Conv2d, Layer, MaxPool2d, Window
from zfnet.ops import conv2d, conv_transpose2d
from zfnet.ops._shape import conv_out_size, pair


class Blur(Layer):
    """``y[c] = conv2d(x[c], b)`` with ``b`` the 3x3 binomial filter ``[1 2 1]^T [1 2 1] / 16``."""

    def __init__(self, name, stride=1, padding=1):
        super().__init__(name)
        self.stride, self.padding = pair(stride), pair(padding)

    def _filters(self, xp, channels, dtype):
        b = np.outer([1, 2, 1], [1, 2, 1]) / 16.0
        return xp.asarray(np.broadcast_to(b, (channels, 1, 3, 3)), dtype=dtype)  # (C, 1, 3, 3)

    def forward(self, x, trace=None):
        if trace is not None and (c := trace.cache(self.name)) is not None:
            c["in_hw"] = tuple(x.shape[2:])
        w = self._filters(get_array_module(x), x.shape[1], x.dtype)
        return conv2d(x, w, None, self.stride, self.padding, x.shape[1])

    def deconv(self, signal, trace, rule="deconvnet", start=None):
        w = self._filters(get_array_module(signal), signal.shape[1], signal.dtype)
        return conv_transpose2d(signal, w, None, self.stride, self.padding, signal.shape[1],
                                output_size=trace.caches[self.name]["in_hw"])

    def deconv_window(self, win: Window, trace, rule="deconvnet", start=None) -> Window:
        c = win.sig.shape[1]
        w = self._filters(get_array_module(win.sig), c, win.sig.dtype)
        sig = conv_transpose2d(win.sig, w, None, self.stride, 0, c)  # no padding: the origin moves instead
        return win.down(sig, self.stride, self.padding, trace.caches[self.name]["in_hw"])

    def rf(self):
        return (3, self.stride[0], self.padding[0])

    def output_shape(self, shape):
        n, c, h, w = shape
        return (n, c, conv_out_size(h, 3, self.stride[0], self.padding[0]),
                conv_out_size(w, 3, self.stride[1], self.padding[1]))


def _net():
    rng = np.random.default_rng(0)
    return Network([Conv2d("conv1", 3, 4, 3, padding=1, rng=rng), Blur("blur", stride=2, padding=1),
                    MaxPool2d("pool", 2), Conv2d("conv2", 4, 5, 3, padding=1, rng=rng)],
                   {"arch": "blurnet", "input_size": [20, 20]})


@pytest.fixture(scope="module")
def net_x():
    return _net(), np.random.default_rng(1).standard_normal((2, 3, 20, 20))


def test_forward_shapes_and_the_adjoint(net_x):
    net, x = net_x
    trace = net.forward(x)
    assert trace.activations["blur"].shape == net.shapes((2, 3, 20, 20))[1][1] == (2, 4, 10, 10)
    blur = net.layer("blur")
    a = trace.activations["conv1"]
    y = np.random.default_rng(2).standard_normal(trace.activations["blur"].shape)
    assert np.vdot(blur.forward(a), y) == pytest.approx(np.vdot(a, blur.deconv(y, trace)), rel=1e-10)


@pytest.mark.parametrize("rule", ["deconvnet", "guided"])
def test_windowed_projection_equals_the_dense_one(net_x, rule):
    net, x = net_x
    units = np.array([[0, 1, 0, 0], [1, 4, 2, 3], [0, 2, 4, 4]])
    for layer in ("conv2", "blur"):
        act = net.forward(x, upto=layer).activations[layer]
        units[:, 2:] = np.minimum(units[:, 2:], act.shape[2] - 1)
        units[:, 1] = np.minimum(units[:, 1], act.shape[1] - 1)
        dense = project_units(net, x, layer, units, rule=rule)
        win = project_units_windowed(net, x, layer, units, rule=rule)
        np.testing.assert_allclose(win, dense, rtol=0, atol=1e-10 * max(np.abs(dense).max(), 1.0))
        for u, c in enumerate(unit_crops(net, x, layer, units, rule=rule, windowed=True)):
            assert c.box == tuple(unit_box(net, layer, int(units[u, 2]), int(units[u, 3]), clip=False))
    # n -> (n - 1) s + k from conv2's 1: conv2 (3, 1) gives 3, pool (2, 2) 6, blur (3, 2) 13
    assert dict(window_sizes(net, "conv2"))["conv1"] == (6 - 1) * 2 + 3


def test_receptive_field_holds_what_a_unit_reads(net_x):
    net, x = net_x
    rfs = receptive_fields(net)
    assert rfs["blur"].size == 5  # conv1 3, blur 3 at stride 1 below: 3 + 2
    y, x_ = 2, 3
    y0, x0, y1, x1 = unit_box(rfs, "conv2", y, x_, image_size=(20, 20))
    base = net.forward(x[:1], upto="conv2").activations["conv2"][0, :, y, x_]
    outside = [(py, px) for py, px in [(y0 - 1, x0), (y1, x1 - 1), (y0, x1), (0, 19)]
               if 0 <= py < 20 and 0 <= px < 20 and not (y0 <= py < y1 and x0 <= px < x1)]
    assert len(outside) >= 2
    for py, px in outside:
        bumped = x[:1].copy()
        bumped[0, :, py, px] += 100.0  # a pixel outside the field: the unit does not move
        np.testing.assert_array_equal(net.forward(bumped, upto="conv2").activations["conv2"][0, :, y, x_], base)


def test_unpadded_network_gives_an_interior_activation_on_its_crop(net_x):
    net, x = net_x
    act = net.forward(x, upto="conv2").activations["conv2"]
    for y, x_ in [(2, 2)]:  # the one interior unit of a 20x20 input
        y0, x0, y1, x1 = unit_box(net, "conv2", y, x_, clip=False)
        assert y0 >= 0 and x0 >= 0 and y1 <= 20 and x1 <= 20  # interior
        out = net.unpadded().forward(x[:, :, y0:y1, x0:x1], upto="conv2").activations["conv2"]
        assert out.shape[2:] == (1, 1)
        np.testing.assert_allclose(out[:, :, 0, 0], act[:, :, y, x_], rtol=1e-10, atol=1e-10)
