"""SqueezeNet v1.0: the graph of deploy.prototxt, fire-module deconvnet vs torch, real weights."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zfnet.deconvnet import project_units, receptive_fields
from zfnet.models.squeezenet import Fire, squeezenet1_0
from zfnet.nn import AdaptiveAvgPool2d, Conv2d, MaxPool2d
from zfnet.weights import load, parse_prototxt


def _random_biases(model, seed=0, scale=0.05):
    rng = np.random.default_rng(seed)
    model.load_state_dict({k: (rng.standard_normal(v.shape).astype(np.float32) * scale
                               if k.endswith("bias") else v) for k, v in model.state_dict().items()})
    return model


def test_map_sizes_and_names():
    net = squeezenet1_0()
    shapes = dict(net.shapes())
    assert shapes["conv1"] == (1, 96, 111, 111) and shapes["pool1"] == (1, 96, 55, 55)
    assert shapes["fire4"] == (1, 256, 55, 55) and shapes["pool4"] == (1, 256, 27, 27)
    assert shapes["fire8"] == (1, 512, 27, 27) and shapes["pool8"] == (1, 512, 13, 13)
    assert shapes["conv_final"] == (1, 1000, 15, 15) and shapes["flatten"] == (1, 1000)
    names = net.layer_names()
    assert names[2:6] == ["fire2/squeeze", "fire2/expand1x1", "fire2/expand3x3", "fire2"]
    keys = list(net.state_dict())
    assert keys[:4] == ["conv1.weight", "conv1.bias", "fire2.squeeze.weight", "fire2.squeeze.bias"]
    assert "fire9.expand3x3.weight" in keys and keys[-1] == "conv_final.bias"
    assert net.num_parameters() == 1_248_424
    x = np.random.default_rng(0).standard_normal((2, 3, 227, 227)).astype(np.float32)
    tr = net(x)
    assert tr.output.shape == (2, 1000)
    a = tr.activations
    np.testing.assert_array_equal(a["fire3"], np.concatenate([a["fire3/expand1x1"], a["fire3/expand3x3"]], 1))


def test_graph_matches_deploy_prototxt(shared_dir):
    """Every Convolution and Pooling of the Caffe definition, in order, with its parameters."""
    path = shared_dir / "weights" / "squeezenet1_0" / "deploy.prototxt"
    if not path.exists():
        pytest.skip(f"{path} not found")
    proto = [l for l in parse_prototxt(path)["layer"] if l["type"] in ("Convolution", "Pooling", "Concat")]
    ours = []
    for layer in squeezenet1_0().layers:
        if isinstance(layer, Fire):
            ours += [layer.squeeze, layer.expand1x1, layer.expand3x3, ("concat", layer)]
        elif isinstance(layer, (Conv2d, MaxPool2d, AdaptiveAvgPool2d)):
            ours.append(layer)
    assert len(ours) == len(proto)
    for spec, layer in zip(proto, ours):
        if spec["type"] == "Concat":
            _, fire = layer
            assert spec["bottom"] == [f"{fire.name}/conv1x1_2", f"{fire.name}/conv3x3_2"]  # 1x1 first
        elif spec["type"] == "Convolution":
            p = spec["convolution_param"]
            assert isinstance(layer, Conv2d) and layer.relu, spec["name"]
            assert (layer.weight.shape[0], layer.kernel_size[0], layer.stride[0], layer.padding[0]) == (
                p["num_output"], p["kernel_size"], p.get("stride", 1), p.get("pad", 0)), spec["name"]
        elif spec["pooling_param"]["pool"] == "MAX":
            p = spec["pooling_param"]
            assert isinstance(layer, MaxPool2d) and layer.ceil_mode  # Caffe rounds up
            assert (layer.kernel_size[0], layer.stride[0]) == (p["kernel_size"], p["stride"])
        else:
            assert spec["pooling_param"] == {"pool": "AVE", "global_pooling": True}
            assert isinstance(layer, AdaptiveAvgPool2d) and layer.output_size == (1, 1)


def test_fire_receptive_field_is_the_3x3_branch():
    fire = Fire("f", 8, 4, 4, 4)
    assert fire.rf() == (3, 1, 1)
    rfs = receptive_fields(squeezenet1_0(num_classes=10))
    assert rfs["fire2/squeeze"].size == rfs["pool1"].size == 11
    assert rfs["fire2/expand1x1"].size == 11 and rfs["fire2/expand3x3"].size == rfs["fire2"].size == 19
    assert rfs["fire3/squeeze"].size == 19


# --------------------------------------------------------------- deconvnet vs torch


@pytest.fixture(scope="module")
def small_net():
    pytest.importorskip("torch")
    return _random_biases(squeezenet1_0(num_classes=10, seed=3), seed=4)


@pytest.mark.parametrize("rule", ["deconvnet", "guided", "backprop"])
@given(seed=st.integers(0, 1000),
       layer=st.sampled_from(["fire2", "fire3/expand3x3", "fire4/expand1x1", "fire5/squeeze", "fire7",
                              "fire9", "conv_final"]))
@settings(max_examples=6, deadline=None)
def test_projection_through_fire_modules_matches_torch(small_net, rule, seed, layer):
    """Split at the concat, project each branch, sum at the squeeze == autograd with the rule's ReLU."""
    x = np.random.default_rng(seed).standard_normal((2, 3, 47, 47)).astype(np.float32)  # conv_final 4x4
    trace = small_net(x, upto=layer)
    act = trace.activations[layer]
    rng = np.random.default_rng(seed + 1)
    units = []
    for n in range(2):  # the strongest unit of a random channel (so it is not a dead one)
        c = int(rng.integers(act.shape[1]))
        flat = int(act[n, c].argmax())
        units.append((n, c, flat // act.shape[3], flat % act.shape[3]))
    ours = project_units(small_net, x, layer, np.array(units), rule=rule)
    from benchmarks.torch_twin import torch_projection

    # through our switches: near-tied maxima (float32 rounding of two libraries) may pick
    # other winners, which the pooling tests check on identical inputs (see twin())
    theirs = torch_projection(small_net, x, layer, units, rule, switches=trace.switches)
    scale = max(float(np.abs(theirs).max()), 1e-6)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4 * scale)


def test_forward_and_backward_match_torch(small_net):
    import torch

    from benchmarks.torch_twin import twin

    x = np.random.default_rng(5).standard_normal((2, 3, 47, 47)).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    out_t = twin(small_net)(xt)  # the network's output (after flatten)
    small_net.train()
    small_net.layer("drop9").training = False  # the twin has no dropout
    tr = small_net(x)
    try:
        np.testing.assert_allclose(tr.output, out_t.detach().numpy(), rtol=1e-4, atol=1e-5)
        dy = np.random.default_rng(6).standard_normal(tr.output.shape).astype(np.float32)
        dx = small_net.backward(dy, tr)
        out_t.backward(torch.from_numpy(dy))
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-3, atol=1e-5)
        grads = small_net.gradients()
        assert set(grads) == set(small_net.state_dict())
    finally:
        small_net.eval()


# ------------------------------------------------------------------------ real data


def test_real_weights_classify_imagenette(shared_dir):
    path = shared_dir / "weights" / "squeezenet1_0" / "squeezenet1_0_deep_compression.npz"
    if not path.exists():
        pytest.skip(f"{path} not found")
    net = load(path, arch="squeezenet1_0")
    assert net.config["channel_order"] == "BGR" and net.input_size == (227, 227)
    val = shared_dir / "data" / "imagenette" / "val"
    classes = {"n01440764": 0, "n02102040": 217, "n02979186": 482, "n03000684": 491, "n03028079": 497,
               "n03394916": 566, "n03417042": 569, "n03425413": 571, "n03445777": 574, "n03888257": 701}
    files, labels = [], []
    for wnid, index in classes.items():
        files.append(sorted((val / wnid).iterdir())[0])
        labels.append(index)
    x = np.stack([net.preprocess(f) for f in files])
    out = net(x).output
    top5 = np.argsort(-out, axis=1)[:, :5]
    hits = sum(label in row for label, row in zip(labels, top5))
    # These ten images give 6 top-5 hits; chance is 0.05 hits, a wrong graph or BGR/RGB mix-up far fewer.
    assert hits >= 5, (hits, top5[:, 0].tolist())
