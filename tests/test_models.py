"""Models: paper map sizes, state dicts, clear errors, and agreement with PyTorch."""

from __future__ import annotations

from pathlib import Path

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


def _spec(model):
    """Each layer's hyper-parameters, written out, independent of how the model builds them."""
    out = []
    for l in model.layers:
        kind = type(l).__name__
        if kind == "Conv2d":
            out.append((l.name, "conv", tuple(l.weight.shape), l.stride[0], l.padding[0], l.groups, l.relu))
        elif kind == "MaxPool2d":
            out.append((l.name, "pool", l.kernel_size[0], l.stride[0], l.padding[0], l.ceil_mode))
        elif kind == "LRN":
            out.append((l.name, "lrn", l.size, l.alpha, l.beta, l.k))
        elif kind == "Linear":
            out.append((l.name, "fc", tuple(l.weight.shape), l.relu))
        elif kind == "Dropout":
            out.append((l.name, "dropout", l.p))
    return out


def test_zfnet_layers_are_the_papers():
    """The paper's Fig. 3 (v3) layer by layer.  The PyTorch twin copies our layers'
    settings, so only a check like this one can catch a wrong stride or padding."""
    lrn = (5, 1e-4, 0.75, 2.0)
    assert _spec(zfnet()) == [
        ("conv1", "conv", (96, 3, 7, 7), 2, 1, 1, True), ("pool1", "pool", 3, 2, 0, True), ("norm1", "lrn", *lrn),
        ("conv2", "conv", (256, 96, 5, 5), 2, 0, 1, True), ("pool2", "pool", 3, 2, 0, True), ("norm2", "lrn", *lrn),
        ("conv3", "conv", (384, 256, 3, 3), 1, 1, 1, True), ("conv4", "conv", (384, 384, 3, 3), 1, 1, 1, True),
        ("conv5", "conv", (256, 384, 3, 3), 1, 1, 1, True), ("pool5", "pool", 3, 2, 0, True),
        ("fc6", "fc", (4096, 9216), True), ("drop6", "dropout", 0.5),
        ("fc7", "fc", (4096, 4096), True), ("drop7", "dropout", 0.5), ("fc8", "fc", (1000, 4096), False),
    ]


def test_alexnet_layers_are_bvlc_and_torchvision():
    """BVLC's deploy.prototxt (LRN k=1 before pooling, conv2/4/5 in two groups, Caffe's
    ceil-mode pools) and torchvision's alexnet (dropout before fc6/fc7, floor pools)."""
    lrn = (5, 1e-4, 0.75, 1.0)
    fc_caffe = [("fc6", "fc", (4096, 9216), True), ("drop6", "dropout", 0.5),
                ("fc7", "fc", (4096, 4096), True), ("drop7", "dropout", 0.5), ("fc8", "fc", (1000, 4096), False)]
    assert _spec(alexnet("caffe")) == [
        ("conv1", "conv", (96, 3, 11, 11), 4, 0, 1, True), ("norm1", "lrn", *lrn), ("pool1", "pool", 3, 2, 0, True),
        ("conv2", "conv", (256, 48, 5, 5), 1, 2, 2, True), ("norm2", "lrn", *lrn), ("pool2", "pool", 3, 2, 0, True),
        ("conv3", "conv", (384, 256, 3, 3), 1, 1, 1, True), ("conv4", "conv", (384, 192, 3, 3), 1, 1, 2, True),
        ("conv5", "conv", (256, 192, 3, 3), 1, 1, 2, True), ("pool5", "pool", 3, 2, 0, True),
    ] + fc_caffe
    assert _spec(alexnet("torchvision")) == [
        ("conv1", "conv", (64, 3, 11, 11), 4, 2, 1, True), ("pool1", "pool", 3, 2, 0, False),
        ("conv2", "conv", (192, 64, 5, 5), 1, 2, 1, True), ("pool2", "pool", 3, 2, 0, False),
        ("conv3", "conv", (384, 192, 3, 3), 1, 1, 1, True), ("conv4", "conv", (256, 384, 3, 3), 1, 1, 1, True),
        ("conv5", "conv", (256, 256, 3, 3), 1, 1, 1, True), ("pool5", "pool", 3, 2, 0, False),
        ("drop6", "dropout", 0.5), ("fc6", "fc", (4096, 9216), True),
        ("drop7", "dropout", 0.5), ("fc7", "fc", (4096, 4096), True), ("fc8", "fc", (1000, 4096), False),
    ]


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


def test_wrong_input_size_names_the_size_the_network_expects() -> None:
    import zfnet

    model = zfnet.models.zfnet(num_classes=10, fc_width=32)
    with pytest.raises(zfnet.ShapeError, match=r"expects inputs of \(N, 3, 224, 224\), got \(N, 3, 100, 100\); "
                                               r"at layer fc6"):
        model(np.zeros((1, 3, 100, 100), np.float32))


def test_import_zfnet_is_lazy_and_exposes_subpackages() -> None:
    """``import zfnet`` imports no subpackage; ``zfnet.models`` etc. work on first use."""
    import subprocess
    import sys

    code = ("import sys, zfnet; heavy = [m for m in ('zfnet.ops', 'zfnet.models', 'zfnet.figures', 'numpy') "
            "if m in sys.modules]; print(heavy); print(callable(zfnet.models.zfnet), zfnet.ops.conv2d.__name__, "
            "'models' in dir(zfnet))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(Path(__file__).resolve().parent.parent)).stdout.split("\n")
    assert out[0] == "[]"
    assert out[1] == "True conv2d True"
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        import zfnet

        zfnet.nonsense  # noqa: B018
