"""The data-parallel training step (zfnet.data_parallel) against the serial one.

The two must compute the same loss, logits and gradients; only the order in which a
trunk parameter's gradient sums over images differs, so gradients agree to float32
rounding of the sum (rtol 1e-5 of each array's largest value: a sum of at most a few
thousand float32 products, compared against the serial step, which is itself
float32).  The serial reference runs with BLAS and the ops on one thread, as each
shard does: one- and two-thread GEMMs round differently, and near-tied maxima can
then pick other pooling switches (a gradient at another pixel, not a rounding
difference).
"""

from __future__ import annotations


import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zfnet import data_parallel as dp
from zfnet.models import Network
from zfnet.nn import LRN, AvgPool2d, Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU
from zfnet.ops import softmax_cross_entropy
from zfnet.ops._blas import blas_thread_control, blas_threads
from zfnet.ops._parallel import parallel_range, serial

needs_blas_control = pytest.mark.skipif(blas_thread_control() is None,
                                        reason="NumPy's BLAS is not an OpenBLAS whose thread count zfnet can set")


def net(seed=0, classes=5) -> Network:
    """Every per-image layer type in the trunk (strided, padded, grouped and dilated
    convolutions, a lone ReLU, overlapping max pooling, LRN both ways, average
    pooling), then a head with dropout.  At 45x45 conv1 keeps its columns for the
    filter gradient (conv2d_relu, keep_columns=True), conv2 does not (a map too small)."""
    rng = np.random.default_rng(seed)
    layers = [
        Conv2d("conv1", 3, 6, 5, stride=2, padding=1, rng=rng),
        MaxPool2d("pool1", 3, 2, ceil_mode=True),
        LRN("norm1", size=5, alpha=1e-2, beta=0.75, k=2.0),
        Conv2d("conv2", 6, 8, 3, padding=2, groups=2, dilation=2, relu=False, rng=rng),
        ReLU("relu2"),
        LRN("norm2", size=3, alpha=1e-2, region="within_channel"),
        AvgPool2d("pool2", 2, 2),
        Flatten("flatten"),
        Linear("fc6", 8 * 5 * 5, 16, rng=rng),
        Dropout("drop6", 0.5, seed=seed + 6),
        Linear("fc8", 16, classes, relu=False, rng=rng),
    ]
    for layer in layers:  # non-zero biases, so their gradients are not trivially zero
        if getattr(layer, "bias", None) is not None:
            layer.bias = rng.standard_normal(layer.bias.shape).astype(np.float32) * 0.1
    return Network(layers, {"arch": "dp", "num_classes": classes, "input_size": [45, 45]})


def serial_step(model, x, y):
    """The serial training step, with everything on one thread as in a shard."""
    with blas_threads(1), serial():
        trace = model.forward(x)
        loss, dlogits = softmax_cross_entropy(trace.output, y)
        model.backward(dlogits, trace, input_grad=False)
    return loss, trace.output, {k: v.copy() for k, v in model.gradients().items()}


def test_trunk_is_the_per_image_prefix():
    model = net()
    assert dp.trunk_length(model) == 7  # conv1 .. pool2; flatten starts the head
    from zfnet.models import alexnet, zfnet

    for build in (zfnet, lambda: alexnet(variant="caffe")):
        m = build()
        names = [layer.name for layer in m.layers]
        assert dp.trunk_length(m) == names.index("pool5") + 1
    # a dropout (a layer with random state) ends the trunk; so does any other type
    layers = [Conv2d("c", 3, 2, 3), Dropout("d", 0.5), Conv2d("c2", 2, 2, 3)]
    assert dp.trunk_length(Network(layers, {})) == 1
    assert dp.trunk_length(Network([Conv2d("c", 3, 2, 3)], {})) == 0  # the head is never empty


@needs_blas_control
@given(st.integers(2, 9), st.integers(2, 3), st.integers(0, 2**31 - 1))
@settings(max_examples=12, deadline=None)
def test_data_parallel_step_equals_the_serial_step(n, shards, seed):
    shards = min(shards, n)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3, 45, 45)).astype(np.float32)
    y = rng.integers(0, 5, n)
    model = net(seed % 7).train()
    loss0, logits0, g0 = serial_step(model, x, y)
    model.layers[9].rng = np.random.default_rng(seed % 7 + 6)  # the same dropout masks again
    loss, logits = dp.data_parallel_forward_backward(model, x, y, shards)
    g = model.gradients()
    np.testing.assert_allclose(loss, loss0, rtol=1e-6)
    np.testing.assert_allclose(logits, logits0, rtol=1e-5, atol=1e-6)
    assert set(g) == set(g0)
    for key in g0:
        scale = np.abs(g0[key]).max()
        np.testing.assert_allclose(g[key], g0[key], rtol=0, atol=1e-5 * scale, err_msg=key)


@needs_blas_control
def test_data_parallel_step_is_deterministic():
    """Two runs give identical bits (a fixed split, gradients added in shard order)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 3, 45, 45)).astype(np.float32)
    y = rng.integers(0, 5, 6)
    runs = []
    for _ in range(2):
        model = net(1).train()
        dp.data_parallel_forward_backward(model, x, y, 3)
        runs.append(model.gradients())
    for key in runs[0]:
        np.testing.assert_array_equal(runs[0][key], runs[1][key])


def test_shard_count(monkeypatch):
    model = net()
    x = np.zeros((16, 3, 45, 45), np.float32)
    monkeypatch.setenv("ZFNET_NUM_THREADS", "2")
    expected = 2 if blas_thread_control() is not None else 1
    assert dp.shard_count(model, x) == expected
    assert dp.shard_count(model, x[:7]) == 1  # fewer than 4 images a shard
    monkeypatch.setenv("ZFNET_NUM_THREADS", "3")
    assert dp.shard_count(model, x) == (3 if expected == 2 else 1)
    monkeypatch.setenv("ZFNET_NUM_THREADS", "1")
    assert dp.shard_count(model, x) == 1
    monkeypatch.setenv("ZFNET_NUM_THREADS", "2")
    for off in ("0", "false", "OFF", "no"):
        monkeypatch.setenv("ZFNET_DATA_PARALLEL", off)
        assert dp.shard_count(model, x) == 1
    monkeypatch.delenv("ZFNET_DATA_PARALLEL")
    assert dp.shard_count(Network([Flatten("f"), Linear("fc", 3 * 45 * 45, 2)], {}), x) == 1  # no trunk
    assert dp.shard_count(model, x.tolist()) == 1  # not a NumPy array (e.g. CuPy): the serial step


@needs_blas_control
def test_trainer_step_takes_the_data_parallel_path(monkeypatch):
    """Trainer.train_step with 2 threads runs the shards, and lands where the serial step does."""
    from zfnet.train import SGD, Trainer

    rng = np.random.default_rng(4)
    x = rng.standard_normal((8, 3, 45, 45)).astype(np.float32)
    y = rng.integers(0, 5, 8)
    monkeypatch.setenv("ZFNET_NUM_THREADS", "2")
    weights = {}
    for mode in ("1", "0"):
        monkeypatch.setenv("ZFNET_DATA_PARALLEL", mode)
        calls = []
        original = dp.data_parallel_forward_backward
        monkeypatch.setattr("zfnet.train.data_parallel_forward_backward",
                            lambda *a: calls.append(a[3]) or original(*a))
        tr = Trainer.__new__(Trainer)  # only what train_step touches
        tr.model = net(2).train()
        tr.opt = SGD(tr.model)
        with blas_threads(1), serial():
            loss, correct = tr.train_step(x, y, 0.1)
        assert calls == ([2] if mode == "1" else [])
        assert 0 <= int(correct) <= 8 and np.isfinite(loss)
        weights[mode] = tr.model.state_dict()
    for key in weights["0"]:
        scale = np.abs(weights["0"][key]).max()
        np.testing.assert_allclose(weights["1"][key], weights["0"][key], rtol=0, atol=1e-5 * scale, err_msg=key)


def test_serial_keeps_parallel_range_on_the_calling_thread(monkeypatch):
    import threading

    monkeypatch.setenv("ZFNET_NUM_THREADS", "2")
    seen = set()
    parallel_range(8, lambda lo, hi: seen.add(threading.get_ident()))
    assert len(seen) == 2
    seen.clear()
    with serial():
        with serial():
            pass
        parallel_range(8, lambda lo, hi: seen.add(threading.get_ident()))  # still serial after the inner block
    assert seen == {threading.get_ident()}
    seen.clear()
    parallel_range(8, lambda lo, hi: seen.add(threading.get_ident()))
    assert len(seen) == 2  # restored


@needs_blas_control
def test_blas_threads_sets_and_restores():
    set_, get = blas_thread_control()
    before = get()
    set_(2)  # so that "restored" differs from the value set inside
    try:
        with blas_threads(1) as ok:
            assert ok and get() == 1
        assert get() == 2
        with pytest.raises(RuntimeError):
            with blas_threads(1):
                raise RuntimeError("inside")
        assert get() == 2
    finally:
        set_(before)


@needs_blas_control
def test_blas_threads_sets_numpys_own_openblas_even_with_scipy_loaded():
    """Another package's OpenBLAS loaded first (SciPy's wheel) must not be the one set."""
    import subprocess
    import sys

    pytest.importorskip("scipy.linalg")
    code = ("import scipy.linalg, os, numpy; from zfnet.ops import _blas; _blas.blas_thread_control(); "
            "libs = os.path.join(os.path.dirname(os.path.dirname(numpy.__file__)), 'numpy.libs'); "
            "print(_blas._found_path[0].startswith(libs) if os.path.isdir(libs) and any('openblas' in f for f in "
            "os.listdir(libs)) else 'no numpy.libs')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    if res.stdout.strip() == "no numpy.libs":
        pytest.skip("this NumPy does not bundle its OpenBLAS in numpy.libs")
    assert res.stdout.strip() == "True"


@needs_blas_control
def test_a_failing_shard_raises_after_every_shard_is_done(monkeypatch):
    """An exception in one shard reaches the caller once all shards have stopped, with
    BLAS's thread count and the calling thread's serial flag restored."""
    import threading
    import time

    from zfnet.ops import _parallel

    _, get = blas_thread_control()
    before = get()
    finished = []

    def shard(s):
        if s == 1:
            raise ValueError("shard 1 failed")
        time.sleep(0.2 * s)  # shards 0 and 2 run on after the failure
        finished.append(s)

    with pytest.raises(ValueError, match="shard 1 failed"):
        dp._in_shards(3, shard)
    assert sorted(finished) == [0, 2]
    assert get() == before
    assert not getattr(_parallel._local, "serial", False)
    assert threading.current_thread().name == "MainThread"


@needs_blas_control
def test_winograd_layers_in_the_shards():
    """A trunk whose 3x3 convolution takes Winograd (its tiles and transformed filters
    kept, the input gradient from them): the data-parallel step equals the serial one."""
    rng = np.random.default_rng(9)
    layers = [Conv2d("conv1", 3, 96, 5, stride=2, padding=1, rng=rng),
              Conv2d("conv2", 96, 96, 3, padding=1, rng=rng), MaxPool2d("pool2", 3, 2),
              Flatten("flatten"), Linear("fc", 96 * 10 * 10, 5, relu=False, rng=rng)]
    model = Network(layers, {"arch": "w", "num_classes": 5, "input_size": [45, 45]}).train()
    x = rng.standard_normal((6, 3, 45, 45)).astype(np.float32)
    y = rng.integers(0, 5, 6)
    trace = model.forward(x)
    from zfnet.ops.conv import SavedTiles

    assert isinstance(trace.caches["conv2"]["cols"], SavedTiles)  # the Winograd path is the one tested
    _, _, g0 = serial_step(model, x, y)
    dp.data_parallel_forward_backward(model, x, y, 2)
    for key, value in model.gradients().items():
        np.testing.assert_allclose(value, g0[key], rtol=0, atol=1e-5 * np.abs(g0[key]).max(), err_msg=key)


@needs_blas_control
def test_kernel_rows_layers_in_the_shards():
    """A trunk whose 5x5 grouped convolution takes kernel rows (the input kept, its
    columns built again image by image for the filter gradient; AlexNet's conv2 in
    small): the data-parallel step equals the serial one, and so does a backward
    pass after Trace.select, which drops the saved input and computes it again."""
    rng = np.random.default_rng(10)
    layers = [Conv2d("conv1", 3, 32, 5, stride=2, padding=1, rng=rng),
              Conv2d("conv2", 32, 32, 5, padding=2, groups=2, rng=rng), MaxPool2d("pool2", 3, 2),
              Flatten("flatten"), Linear("fc", 32 * 10 * 10, 5, relu=False, rng=rng)]
    model = Network(layers, {"arch": "k", "num_classes": 5, "input_size": [45, 45]}).train()
    x = rng.standard_normal((6, 3, 45, 45)).astype(np.float32)
    y = rng.integers(0, 5, 6)
    trace = model.forward(x)
    from zfnet.ops.conv import SavedInput

    assert isinstance(trace.caches["conv2"]["cols"], SavedInput)  # the kernel-rows path is the one tested
    _, _, g0 = serial_step(model, x, y)
    dp.data_parallel_forward_backward(model, x, y, 2)
    for key, value in model.gradients().items():
        np.testing.assert_allclose(value, g0[key], rtol=0, atol=1e-5 * np.abs(g0[key]).max(), err_msg=key)
    sub = trace.select(np.arange(3))
    assert "cols" not in sub.caches["conv2"]
    dout = rng.standard_normal(sub.output.shape).astype(np.float32)
    dx_sub = model.backward(dout, sub)
    dx_all = model.backward(np.concatenate([dout, np.zeros_like(dout)]), trace)
    np.testing.assert_allclose(dx_sub, dx_all[:3], rtol=0, atol=1e-5 * np.abs(dx_all).max())


def test_blas_threads_without_openblas_changes_nothing(monkeypatch):
    from zfnet.ops import _blas

    monkeypatch.setattr(_blas, "_found", [None])
    with blas_threads(1) as ok:
        assert ok is False
    assert dp.shard_count(net(), np.zeros((16, 3, 45, 45), np.float32)) == 1
