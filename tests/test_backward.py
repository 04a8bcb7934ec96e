"""Layer-level backward: ``Network.backward`` against PyTorch autograd.

A small ZFNet-like stack (conv with stride and padding, overlapping ceil-mode
pooling, LRN, a grouped conv, adaptive pooling, fully connected layers with
dropout) and the real ``zfnet()`` at a narrow fc width on one 224x224 image: every
parameter gradient and the input gradient must equal torch's for the same
weights, the same dropout masks and the same cross-entropy loss.
"""

from __future__ import annotations

import numpy as np
import pytest

from zfnet.errors import ConfigError
from zfnet.models import Network, zfnet
from zfnet.nn import LRN, AdaptiveAvgPool2d, Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU
from zfnet.ops import softmax_cross_entropy


def small_net(seed=0) -> Network:
    rng = np.random.default_rng(seed)
    layers = [
        Conv2d("conv1", 3, 6, 5, stride=2, padding=1, rng=rng),
        MaxPool2d("pool1", 3, 2, ceil_mode=True),
        LRN("norm1", size=5, alpha=1e-2, beta=0.75, k=2.0),  # alpha large enough to matter
        Conv2d("conv2", 6, 8, 3, padding=1, groups=2, rng=rng),
        MaxPool2d("pool2", 3, 2, ceil_mode=True),
        AdaptiveAvgPool2d("avgpool", (2, 2)),
        Flatten("flatten"),
        Linear("fc6", 8 * 2 * 2, 16, rng=rng),
        Dropout("drop6", 0.5, seed=seed + 6),
        Linear("fc8", 16, 5, relu=False, rng=rng),
    ]
    for layer in layers:  # non-zero biases, so their gradients flow through something
        if getattr(layer, "bias", None) is not None:
            layer.bias = rng.standard_normal(layer.bias.shape).astype(np.float32) * 0.1
    return Network(layers, {"arch": "small", "num_classes": 5, "input_size": [23, 23]})


def torch_grads(model: Network, x: np.ndarray, labels: np.ndarray, trace):
    """Autograd of the same loss through the PyTorch twin with our weights and dropout masks."""
    torch = pytest.importorskip("torch")
    from benchmarks.torch_twin import twin

    F = torch.nn.functional
    params = {k: torch.tensor(v, requires_grad=True) for k, v in model.state_dict().items()}
    masks = {name: c["keep"] for name, c in trace.caches.items() if "keep" in c}
    xt = torch.tensor(x, requires_grad=True)
    h = twin(model, params=params, dropout=masks)(xt)
    loss = F.cross_entropy(h, torch.tensor(labels))
    loss.backward()
    return loss.item(), {k: v.grad.numpy() for k, v in params.items()}, xt.grad.numpy()


def check_against_torch(model, x, labels, rtol, atol):
    model.train()
    trace = model.forward(x)
    loss, dlogits = softmax_cross_entropy(trace.output, labels)
    dx = model.backward(dlogits, trace)
    grads = model.gradients()
    t_loss, t_grads, t_dx = torch_grads(model, x, labels, trace)
    assert np.isclose(float(loss), t_loss, rtol=1e-5)
    assert set(grads) == set(t_grads)
    for key in t_grads:
        scale = np.abs(t_grads[key]).max() + 1e-12
        np.testing.assert_allclose(grads[key] / scale, t_grads[key] / scale, rtol=rtol, atol=atol, err_msg=key)
    np.testing.assert_allclose(dx / np.abs(t_dx).max(), t_dx / np.abs(t_dx).max(), rtol=rtol, atol=atol)
    return model


def test_small_network_backward_matches_torch():
    model = small_net()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 3, 23, 23)).astype(np.float32)
    check_against_torch(model, x, np.array([0, 3, 4]), rtol=1e-4, atol=1e-5)


def test_zfnet_backward_matches_torch_on_one_image():
    model = zfnet(num_classes=10, fc_width=32, seed=0)
    x = np.random.default_rng(2).standard_normal((1, 3, 224, 224)).astype(np.float32)
    check_against_torch(model, x, np.array([7]), rtol=1e-3, atol=1e-4)


def test_backward_without_input_gradient_gives_the_same_parameter_gradients():
    model = small_net().train()
    x = np.random.default_rng(3).standard_normal((2, 3, 23, 23)).astype(np.float32)
    trace = model.forward(x)
    _, d = softmax_cross_entropy(trace.output, np.array([1, 2]))
    model.backward(d, trace)
    full = {k: v.copy() for k, v in model.gradients().items()}
    assert model.backward(d, trace, input_grad=False) is None
    for k, v in model.gradients().items():
        np.testing.assert_array_equal(v, full[k])


def test_backward_needs_a_training_forward_with_caches():
    model = small_net()
    x = np.zeros((1, 3, 23, 23), np.float32)
    trace = model.eval().forward(x)
    with pytest.raises(ConfigError, match="training mode"):
        model.backward(np.zeros((1, 5), np.float32), trace)
    trace = model.train().forward(x, caches=False)
    with pytest.raises(ConfigError, match="caches=True"):
        model.backward(np.zeros((1, 5), np.float32), trace)
    with pytest.raises(ConfigError, match="no gradient"):
        small_net().gradients()


def test_training_mode_leaves_the_forward_and_deconv_unchanged():
    model = small_net()
    x = np.random.default_rng(4).standard_normal((2, 3, 23, 23)).astype(np.float32)
    ev = model.eval().forward(x)
    for layer in model.layers:  # dropout off, so eval and train forwards agree
        if isinstance(layer, Dropout):
            layer.p = 0.0
    tr = model.train().forward(x)
    np.testing.assert_array_equal(ev.output, tr.output)
    sig = np.maximum(ev.activations["conv2"], 0)
    np.testing.assert_array_equal(model.deconv(sig, ev, "conv2"), model.deconv(sig, tr, "conv2"))


def test_the_torch_twin_fails_loudly_on_a_layer_it_does_not_know():
    """One twin for tests and benchmarks: an unknown layer is an error, never skipped."""
    pytest.importorskip("torch")
    from benchmarks.torch_twin import twin

    from zfnet.nn import Layer

    class Mystery(Layer):
        def forward(self, x, trace=None):
            return x

    net = Network([Conv2d("conv1", 3, 2, 3, rng=np.random.default_rng(0)), Mystery("mystery1")], {"arch": "t"})
    with pytest.raises(TypeError, match="mystery1"):
        twin(net)(__import__("torch").zeros(1, 3, 8, 8))
    within = Network([LRN("norm1", 3, region="within_channel")], {"arch": "t"})
    with pytest.raises(TypeError, match="within-channel"):
        twin(within)(__import__("torch").zeros(1, 3, 8, 8))


@pytest.mark.parametrize("ceil", [False, True])
def test_the_torch_twin_knows_caffe_graph_layers(rng, ceil):
    """Standalone ReLU, Caffe average pooling (padded, ceil) and Softmax: the twin equals our forward."""
    torch = pytest.importorskip("torch")
    from benchmarks.torch_twin import twin
    from zfnet.nn import AvgPool2d, Softmax

    net = Network([Conv2d("c1", 3, 4, 3, padding=1, relu=False, rng=rng), ReLU("r1"),
                   AvgPool2d("a1", 3, 2, 1, ceil_mode=ceil), Conv2d("c2", 4, 5, 1, relu=False, rng=rng),
                   Softmax("prob")], {"arch": "t", "num_classes": 5, "input_size": [12, 12]})
    x = rng.standard_normal((2, 3, 12, 12)).astype(np.float32)
    ours = net.forward(x).activations
    theirs = {}
    twin(net)(torch.from_numpy(x), record=theirs)
    for name in ("r1", "a1", "prob"):  # float32 rounding of a 27-term conv, carried through
        np.testing.assert_allclose(theirs[name].numpy(), ours[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_the_torch_twin_knows_concat_and_trains_the_same_layers(rng):
    """The twin's one table serves both uses: a ``Concat`` layer (an empty branch too)
    in the projection twin, and ``trainable()`` (its own copy of the parameters) whose
    gradients equal ours on the same small network."""
    torch = pytest.importorskip("torch")
    from benchmarks.torch_twin import trainable, twin
    from zfnet.nn import Concat

    net = Network([Conv2d("c1", 3, 4, 3, padding=1, rng=rng),
                   Concat("mix", [[Conv2d("mix/a", 4, 2, 1, rng=rng)],
                                  [Conv2d("mix/b", 4, 3, 3, padding=1, rng=rng), ReLU("mix/r")], []]),
                   MaxPool2d("p1", 2, 2), Flatten("flat"), Linear("fc", 9 * 4 * 4, 3, relu=False, rng=rng)],
                  {"arch": "t", "num_classes": 3, "input_size": [8, 8]})
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    net.train()  # keep what backward needs (there is no dropout here: same outputs)
    trace = net.forward(x)
    theirs = {}
    twin(net)(torch.from_numpy(x), record=theirs)
    for name in ("mix/a", "mix/r", "mix", "fc"):
        np.testing.assert_allclose(theirs[name].numpy(), trace.activations[name], rtol=1e-5, atol=1e-6, err_msg=name)
    inner = twin(net)(torch.from_numpy(x), upto="mix/b")  # an inner activation of the Concat
    np.testing.assert_allclose(inner.numpy(), trace.activations["mix/b"], rtol=1e-5, atol=1e-6)

    labels = np.array([0, 2])
    loss, dlogits = softmax_cross_entropy(trace.output, labels)
    net.backward(dlogits, trace, input_grad=False)
    ref = trainable(net, dropout=False)
    assert sum(p.numel() for p in ref.parameters()) == sum(v.size for v in net.state_dict().values())
    lt = torch.nn.functional.cross_entropy(ref(torch.from_numpy(x)), torch.from_numpy(labels))
    lt.backward()
    mods = dict(ref.named_children())
    assert not np.shares_memory(mods["c1"].weight.detach().numpy(), net.layers[0].weight)  # its own copy
    assert float(lt.detach()) == pytest.approx(float(loss), rel=1e-5)
    np.testing.assert_allclose(mods["fc"].weight.grad.numpy(), net.gradients()["fc.weight"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(mods["c1"].weight.grad.numpy(), net.gradients()["c1.weight"], rtol=1e-4, atol=1e-6)


def test_trainable_dropout_is_live_in_train_mode_only(rng):
    torch = pytest.importorskip("torch")
    from benchmarks.torch_twin import trainable

    net = Network([Flatten("flat"), Linear("fc", 12, 64, rng=rng), Dropout("drop", 0.5, seed=1)],
                  {"arch": "t", "num_classes": 64, "input_size": [2, 2]})
    seq = trainable(net)
    x = torch.from_numpy(rng.standard_normal((4, 3, 2, 2)).astype(np.float32))
    ev = seq.eval()(x).detach()
    np.testing.assert_allclose(ev.numpy(), net.forward(x.numpy()).output, rtol=1e-5, atol=1e-6)  # identity
    tr = seq.train()(x).detach()
    live = ev > 0  # units the ReLU passed: dropout zeroes about half, doubles the rest
    dropped = tr[live] == 0
    assert 0.3 < dropped.float().mean() < 0.7
    torch.testing.assert_close(tr[live][~dropped], 2 * ev[live][~dropped])
    assert torch.equal(trainable(net, dropout=False).train()(x), trainable(net, dropout=False).eval()(x))


@pytest.mark.parametrize("lone_relu", [False, True])
def test_pooling_takes_the_relu_mask_with_the_same_result(lone_relu):
    """backward_layers fuses a max pooling with the ReLU below it (the mask at the
    pooled resolution); every gradient is the same, bit for bit, as the layer-by-layer
    walk, including where ReLU zeros tie in a window."""
    from zfnet.nn.layers import backward_layers

    rng = np.random.default_rng(7)
    conv = Conv2d("conv1", 3, 6, 5, stride=2, padding=1, relu=not lone_relu, rng=rng)
    layers = [conv] + ([ReLU("relu1")] if lone_relu else []) + [
        MaxPool2d("pool1", 3, 2), Conv2d("conv2", 6, 8, 3, padding=1, rng=rng), MaxPool2d("pool2", 2),
        Flatten("flatten"), Linear("fc", 8 * 2 * 2, 5, relu=False, rng=rng)]
    model = Network(layers, {"arch": "t", "num_classes": 5, "input_size": [23, 23]}).train()
    x = rng.standard_normal((4, 3, 23, 23)).astype(np.float32)
    trace = model.forward(x)
    _, dlogits = softmax_cross_entropy(trace.output, np.array([0, 1, 2, 3]))
    fused = backward_layers(model.layers, dlogits, trace)
    fused_grads = {k: v.copy() for k, v in model.gradients().items()}
    assert (trace.activations["conv1" if not lone_relu else "relu1"] == 0).mean() > 0.2  # many tied zeros
    grad = dlogits
    for layer in reversed(model.layers):  # unfused: every layer on its own
        grad = layer.backward(grad, trace)
    np.testing.assert_array_equal(fused, grad)
    for key, value in model.gradients().items():
        np.testing.assert_array_equal(fused_grads[key], value, err_msg=key)
