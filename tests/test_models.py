"""Models: paper map sizes, state dicts, clear errors, and agreement with PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

from zfnet.errors import ConfigError, ShapeError, WeightsError
from zfnet.models import alexnet, build, zfnet


def test_zfnet_map_sizes_are_the_papers():
    shapes = dict(zfnet().shapes())
    got = [shapes[k][2] for k in ["conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5"]]
    assert got == [110, 55, 26, 13, 13, 13, 13, 6]
    assert [shapes[k][1] for k in ["conv1", "conv2", "conv3", "conv4", "conv5"]] == [96, 256, 384, 384, 256]
    assert shapes["fc8"] == (1, 1000)


@pytest.mark.parametrize("variant,sizes,widths", [
    ("caffe", [55, 27, 27, 13, 13, 13, 13, 6], [96, 256, 384, 384, 256]),
    ("torchvision", [55, 27, 27, 13, 13, 13, 13, 6], [64, 192, 384, 256, 256]),
])
def test_alexnet_map_sizes(variant, sizes, widths):
    shapes = dict(alexnet(variant).shapes())
    assert [shapes[k][2] for k in ["conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5"]] == sizes
    assert [shapes[k][1] for k in ["conv1", "conv2", "conv3", "conv4", "conv5"]] == widths


def test_forward_trace_records_rectified_conv_outputs_and_switches():
    m = zfnet(num_classes=10, fc_width=64)
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    tr = m(x)
    assert tr.output.shape == (2, 10)
    for name in ["conv1", "conv2", "conv3", "conv4", "conv5"]:
        assert tr.activations[name].min() >= 0  # rectified
    assert tr.activations["conv1"].shape == (2, 96, 110, 110)  # before pooling
    assert tr.switches["pool1"].shape == (2, 96, 55, 55) and tr.switches["pool1"].dtype == np.int64
    part = m.forward(x, upto="conv3", keep=["conv3"])
    assert part.output is None and list(part.activations) == ["conv3"]
    np.testing.assert_allclose(part.activations["conv3"], tr.activations["conv3"], rtol=1e-5, atol=1e-5)


def test_state_dict_round_trip_and_errors():
    a, b = zfnet(num_classes=10, fc_width=32, seed=1), zfnet(num_classes=10, fc_width=32, seed=2)
    sd = a.state_dict()
    assert list(sd)[:4] == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"]
    assert list(sd)[-1] == "fc8.bias" and all(v.dtype == np.float32 for v in sd.values())
    b.load_state_dict(sd)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    np.testing.assert_array_equal(a(x).output, b(x).output)
    bad = dict(sd, **{"conv2.weight": np.zeros((256, 96, 3, 3), np.float32)})
    with pytest.raises(ShapeError, match=r"conv2\.weight.*\(256, 96, 3, 3\).*\(256, 96, 5, 5\)"):
        b.load_state_dict(bad)
    with pytest.raises(WeightsError, match="missing keys.*fc8.bias"):
        b.load_state_dict({k: v for k, v in sd.items() if k != "fc8.bias"})
    with pytest.raises(WeightsError, match="unexpected keys.*extra"):
        b.load_state_dict(dict(sd, extra=np.zeros(1)))
    b.load_state_dict({"conv1.bias": np.ones(96)}, strict=False)
    assert (b.state_dict()["conv1.bias"] == 1).all()


def test_load_state_dict_changes_nothing_when_a_later_key_is_bad():
    a, b = zfnet(num_classes=10, fc_width=32, seed=1), zfnet(num_classes=10, fc_width=32, seed=2)
    before = b.state_dict()
    bad = dict(a.state_dict(), **{"conv3.weight": np.zeros((384, 256, 5, 5), np.float32)})
    with pytest.raises(ShapeError, match=r"conv3\.weight"):
        b.load_state_dict(bad)
    bad = dict(a.state_dict(), **{"fc8.bias": np.zeros(10, np.int32)})
    with pytest.raises(WeightsError, match=r"fc8\.bias.*int32"):
        b.load_state_dict(bad)
    for key, value in b.state_dict().items():  # conv1, conv2 (before the bad keys) kept too
        np.testing.assert_array_equal(value, before[key], err_msg=key)


def test_bad_input_and_names():
    m = zfnet(num_classes=10, fc_width=32)
    with pytest.raises(ShapeError, match=r"\(N, 3, H, W\)"):
        m(np.zeros((3, 224, 224), np.float32))
    with pytest.raises(ConfigError, match="no layer 'conv9'"):
        m.forward(np.zeros((1, 3, 224, 224), np.float32), upto="conv9")
    with pytest.raises(ConfigError, match="unknown architecture"):
        build("vgg16")
    with pytest.raises(ConfigError, match="unknown AlexNet variant"):
        alexnet("keras")


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason="PyTorch comparisons need torch (pip install zfnet[torch])")


@pytest.mark.parametrize("arch", ["zfnet", "alexnet", "alexnet-torchvision"])
def test_whole_forward_matches_torch(torch, arch):
    from benchmarks.torch_twin import twin

    m = build(arch, num_classes=10, fc_width=64, seed=3)
    # non-zero biases so that the bias paths are checked too
    rng = np.random.default_rng(4)
    m.load_state_dict({k: (rng.standard_normal(v.shape) * 0.1).astype(np.float32) if k.endswith("bias") else v
                       for k, v in m.state_dict().items()})
    x = rng.standard_normal((2, 3) + m.input_size).astype(np.float32)
    ours = m(x)
    theirs = {}
    twin(m)(torch.tensor(x), record=theirs)
    for name in ["conv1", "conv2", "conv5", "pool5", "fc8"]:
        a, b = ours.activations[name], theirs[name].numpy()
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(b).max())))


def test_feature_layer_names():
    assert zfnet().feature_layer_names() == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    names = build("squeezenet1_0").feature_layer_names()
    assert names[0] == "conv1" and names[-1] == "conv_final"
    assert [n for n in names if n.startswith("fire")] == [f"fire{i}" for i in range(2, 10)]
