"""Contracts: every misuse ends in the ZfnetError family, docstrings say what the code does,
and each fact (architectures, ImageNet's mean/std) has one home.

Each test here failed on the code before issue 13's contract step.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from zfnet.errors import ConfigError, ShapeError, ZfnetError
from zfnet.models import ARCHITECTURES, Network
from zfnet.models.squeezenet import Fire
from zfnet.nn import Conv2d, MaxPool2d


def _small():
    rng = np.random.default_rng(0)
    return Network([Conv2d("conv1", 3, 4, 3, padding=1, rng=rng), MaxPool2d("pool1", 2),
                    Conv2d("conv2", 4, 5, 3, padding=1, rng=rng)], {"arch": "small", "input_size": [12, 12]})


def test_deconv_on_a_trace_recorded_with_keep():
    """The deconvnet rule needs no forward activations: a keep= trace projects (was a bare KeyError);
    the rules that do need them say which, in a ConfigError."""
    net = _small()
    x = np.random.default_rng(1).standard_normal((2, 3, 12, 12)).astype(np.float32)
    full, kept = net.forward(x), net.forward(x, keep=["conv2"])
    signal = np.zeros_like(full.activations["conv2"])
    signal[:, 1, 2, 3] = full.activations["conv2"][:, 1, 2, 3]
    np.testing.assert_array_equal(net.deconv(signal, kept, "conv2"), net.deconv(signal, full, "conv2"))
    with pytest.raises(ConfigError, match="conv1.*keep="):
        net.deconv(signal, kept, "conv2", rule="guided")
    with pytest.raises(ConfigError, match="caches=True"):
        net.deconv(signal, net.forward(x, caches=False), "conv2")


def test_fire_deconv_from_an_unknown_activation_is_a_config_error():
    from zfnet.nn import Trace

    fire = Fire("fire2", 4, 2, 3, 3)
    x = np.random.default_rng(0).standard_normal((1, 4, 5, 5)).astype(np.float32)
    trace = Trace(input_shape=x.shape)
    fire.forward(x, trace)
    with pytest.raises(ConfigError, match="fire2/nope"):
        fire.deconv(np.zeros((1, 6, 5, 5), np.float32), trace, start="fire2/nope")


def test_load_state_dict_raises_what_its_docstring_says():
    net = _small()
    doc = inspect.getdoc(Network.load_state_dict)
    assert "ShapeError" in doc
    state = net.state_dict()
    state["conv2.weight"] = np.zeros((5, 4, 5, 5), np.float32)
    with pytest.raises(ShapeError, match=r"conv2\.weight"):
        net.load_state_dict(state)


def test_one_architecture_registry_and_one_imagenet_mean_std():
    from zfnet.data import TransformConfig
    from zfnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from zfnet.weights import native

    assert native._ARCHS is ARCHITECTURES
    assert TransformConfig().mean == IMAGENET_MEAN and TransformConfig().std == IMAGENET_STD
    assert native.TORCHVISION_PREPROCESS["mean"] == list(IMAGENET_MEAN)
    assert native.TORCHVISION_PREPROCESS["std"] == list(IMAGENET_STD)


def test_evolution_figure_passes_its_scaling():
    """``scaling`` was documented and ignored: minmax and symmetric gave the same picture."""
    from zfnet.figures.evolution import evolution_figure

    net = _small()
    net.config.update({"input_size": [12, 12], "resize": 12, "mean": [0.5] * 3, "std": [0.25] * 3})
    images = np.random.default_rng(4).integers(0, 256, (3, 12, 12, 3), dtype=np.uint8)
    pics = [evolution_figure([("final", net)], images, layers=["conv1"], units=1, tile=24, scaling=s)[0]
            for s in ("symmetric", "minmax")]
    assert not np.array_equal(*pics)


def test_misuse_is_a_zfnet_error():
    net = _small()
    with pytest.raises(ZfnetError):
        net.deconv(np.zeros((1, 5, 6, 6), np.float32), net.forward(np.zeros((1, 3, 12, 12), np.float32)), "conv9")


def test_one_source_of_a_models_preprocessing():
    """preprocess, the figures' transform_for and evaluate's normalisation read Network.transform.

    Before, a 227-input AlexNet without metadata was resized to 256 by
    ``model.preprocess`` and to 259 by the figures.
    """
    from zfnet.figures.top9 import transform_for
    from zfnet.models import build
    from zfnet.train import _norm

    net = build("alexnet")
    assert net.transform().config.resize == 259 == transform_for(net).config.resize
    picture = np.random.default_rng(0).integers(0, 256, (300, 280, 3), dtype=np.uint8)
    np.testing.assert_array_equal(net.preprocess(picture), net.transform()(picture))
    caffe = build("squeezenet1_0")
    cfg = caffe.transform().config
    assert _norm(caffe.config) == {"mean": cfg.mean, "std": cfg.std, "scale": cfg.scale, "channel_order": "BGR"}


def test_deconvnet_computes_and_does_not_import_figures():
    """``deconvnet`` returns numbers; drawing lives in ``figures`` (the old patches names still import)."""
    import subprocess
    import sys

    code = ("import sys, zfnet.deconvnet, zfnet.deconvnet.crops, zfnet.deconvnet.patches; "
            "assert not any(m.startswith('zfnet.figures') for m in sys.modules), 'figures imported'; "
            "from zfnet.deconvnet.patches import unit_views, display_projection, UnitView; "
            "import zfnet.figures.units as u; assert unit_views is u.unit_views and UnitView is u.UnitView")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("windowed", [False, True])
def test_unit_crops_are_the_projection_under_the_receptive_field(windowed):
    from zfnet.deconvnet import project_units, unit_box
    from zfnet.deconvnet.crops import unit_crops

    net = _small()
    x = np.random.default_rng(5).standard_normal((2, 3, 12, 12)).astype(np.float32)
    units = np.array([[0, 1, 0, 0], [1, 3, 2, 4], [1, 0, 5, 5]])
    full = project_units(net, x, "conv2", units)
    crops = unit_crops(net, x, "conv2", units, windowed=windowed)
    for u, c in enumerate(crops):
        y0, x0, y1, x1 = unit_box(net, "conv2", int(units[u, 2]), int(units[u, 3]), clip=False)
        assert c.box == (y0, x0, y1, x1) and c.raw.dtype == np.float32 and c.inside.dtype == bool
        assert c.raw.shape == (3, y1 - y0, x1 - x0) == (3,) + c.inside.shape
        on = c.inside
        rows, cols = np.arange(y0, y1)[on.any(1)], np.arange(x0, x1)[on.any(0)]
        np.testing.assert_allclose(c.raw[:, on.any(1)][:, :, on.any(0)],
                                   full[u][:, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], atol=1e-6)
        assert not c.raw[:, ~on].any()  # zero off the image


def test_network_xp_is_the_one_answer_to_where_a_model_computes():
    assert _small().xp is np
    assert Network([MaxPool2d("pool", 2)], {"arch": "t"}).xp is np  # no parameters: NumPy


def test_run_top9_takes_the_device_from_the_model(tmp_path):
    """No device string beside an already-moved model: run_top9 asks the model, and a
    device that contradicts it is a ConfigError, not a silent copy."""
    from zfnet.errors import ConfigError
    from zfnet.figures.top9 import run_top9
    from zfnet.models import build

    model = build("zfnet")
    with pytest.raises(ConfigError, match="parameters are on the CPU"):
        run_top9(model, tmp_path / "no-images", tmp_path / "out", device="gpu")
