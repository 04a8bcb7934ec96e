"""A training step split over CPU threads by images: data parallelism on one machine.

Why
---
zfnet's ops split their own work over the cores: OpenBLAS threads each GEMM, and
:mod:`zfnet.ops._parallel` splits the elementwise work between GEMMs (column
building, Winograd transforms, pooling, LRN).  On 2 cores a ZFNet step scales only
1.59x that way (small GEMMs split badly; every op waits for its slowest part).  Here
each thread takes whole images instead and runs the convolutional trunk on them with
one-thread BLAS and no inner splitting, so both cores stay busy from the first layer
to the last: two 1-thread half-batch steps side by side take 1.20 s, one 2-thread
whole-batch step 1.43 s (ZFNet, batch 32; ``benchmarks/RESULTS.md``).

The step (``S`` shards, ``x_s`` the images of shard ``s``; ``L = mean_i l_i``)
--------------------------------------------------------------------------
1. **Trunk, forward**, each shard on its own thread: the leading layers that work
   on each image alone (convolution, ReLU, max/average pooling, LRN), on ``x_s``,
   through a shallow copy of each layer (the parameter arrays are shared, the
   gradients each copy leaves in ``.grads`` are its own), with a trace per shard.
2. **Head**, on the calling thread with threaded BLAS: the trunk outputs joined in
   image order, then the remaining layers (flatten, fully connected, dropout) on the
   whole batch, the loss, and back down to ``dL/d(trunk output)``.  Dropout draws
   its masks for the whole batch, exactly as the serial step does.
3. **Trunk, backward**, each shard on its own thread, from its rows of
   ``dL/d(trunk output)`` (which already carry the ``1/N`` of the mean).
4. **Gradients**: each trunk parameter's gradient is the sum of its shards',
   ``dL/dw = sum_s dL/dw|_s`` (the loss is a sum over images), added in shard order.

So the step computes what the serial step computes; only the order in which the
trunk's gradient sums over images differs (float32 rounding; the tests compare the
two).  For a given number of shards it is deterministic, so a resumed run repeats an
uninterrupted one bit for bit when both use the same number of threads.

When it applies
---------------
:func:`shard_count` says how many shards a step uses: the number of threads
(:func:`zfnet.ops._parallel.num_threads`), if the arrays are NumPy arrays, there is a
trunk, NumPy's BLAS is an OpenBLAS whose thread count we can set
(:mod:`zfnet.ops._blas`), each shard has at least ``min_per_shard`` images, and
``ZFNET_DATA_PARALLEL`` is not ``0``/``false``/``off``/``no``; otherwise 1, and the
trainer runs the serial step.
"""

from __future__ import annotations

import copy
import os

import numpy as np

from .nn.layers import LRN, AvgPool2d, Conv2d, MaxPool2d, ReLU, backward_layers
from .nn.trace import Trace
from .ops import softmax_cross_entropy
from .ops._blas import blas_thread_control, blas_threads
from .ops._parallel import num_threads, run_here_and_on_pool, serial

__all__ = ["trunk_length", "shard_count", "data_parallel_forward_backward"]

# Layers that compute each image from that image alone and keep no state but .grads
_PER_IMAGE = (Conv2d, MaxPool2d, AvgPool2d, LRN, ReLU)


def trunk_length(model) -> int:
    """How many leading layers of ``model`` a shard may run: the longest prefix of per-image layers.

    Exactly the types :class:`~zfnet.nn.Conv2d`, :class:`~zfnet.nn.MaxPool2d`,
    :class:`~zfnet.nn.AvgPool2d`, :class:`~zfnet.nn.LRN` and :class:`~zfnet.nn.ReLU`
    (not subclasses, which might keep state).  ZFNet and AlexNet: conv1 to pool5.
    The prefix stops before the last layer, so the head is never empty.
    """
    n = 0
    for layer in model.layers[:-1]:
        if type(layer) not in _PER_IMAGE:
            break
        n += 1
    return n


def _disabled() -> bool:
    return os.environ.get("ZFNET_DATA_PARALLEL", "").strip().lower() in ("0", "false", "off", "no")


def shard_count(model, x, min_per_shard: int = 4) -> int:
    """Shards a training step of ``model`` on the batch ``x`` would use here (1: the serial step)."""
    if not isinstance(x, np.ndarray) or _disabled() or trunk_length(model) == 0:
        return 1
    shards = min(num_threads(), len(x) // max(1, min_per_shard))
    if shards <= 1 or blas_thread_control() is None:
        return 1
    return shards


def _bounds(n: int, shards: int) -> list[int]:
    return [n * s // shards for s in range(shards + 1)]


def _in_shards(shards: int, fn) -> None:
    """``fn(s)`` for every shard, one thread each (the caller takes shard 0), with every op
    inside on that thread (:func:`~zfnet.ops._parallel.serial`) and BLAS on 1 thread.

    The shards' threads are a pool of their own ("zfnet-shard"), started on the first
    data-parallel step, not the ops' pool: that one may have started, and got a heap
    of its own, before :func:`~zfnet._memory.keep_freed_memory` was called, and glibc
    maps and unmaps every block over 64 MiB of such a heap anew each time (the page
    faults that setting removes on the main thread).  Threads started after it share
    the main heap.
    """

    def first():
        with serial():
            fn(0)

    with blas_threads(1):
        run_here_and_on_pool(first, [lambda s=s: fn(s) for s in range(1, shards)], prefix="zfnet-shard")


def data_parallel_forward_backward(model, x, y, shards: int):
    """Forward, loss and backward of one training step, in ``shards`` image shards.

    Parameters
    ----------
    model : Network
        In training mode (``model.train()``), NumPy parameters.
    x : float32 array, shape (N, 3, H, W)
    y : int array, shape (N,)
    shards : int
        From :func:`shard_count` (at least 2).

    Returns
    -------
    (loss, logits)
        The mean cross-entropy (a NumPy scalar) and the logits ``(N, classes)``; every
        layer's ``.grads`` holds the whole batch's gradient, as after
        ``model.backward``, so ``model.gradients()`` collects it.
    """
    k = trunk_length(model)
    trunk, head = model.layers[:k], model.layers[k:]
    bounds = _bounds(len(x), shards)
    copies = [[copy.copy(layer) for layer in trunk] for _ in range(shards)]  # params shared, .grads own
    traces = [Trace(input_shape=(bounds[s + 1] - bounds[s],) + tuple(x.shape[1:])) for s in range(shards)]
    outs: list = [None] * shards

    def forward(s):
        h = x[bounds[s] : bounds[s + 1]]
        for layer in copies[s]:
            h = layer.forward(h, traces[s])
        outs[s] = h

    _in_shards(shards, forward)
    feats = np.concatenate(outs)
    del outs[:]

    head_trace = Trace(input_shape=tuple(feats.shape))
    h = feats
    for layer in head:
        h = layer.forward(h, head_trace)
    loss, grad = softmax_cross_entropy(h, y)
    grad = backward_layers(head, grad, head_trace)

    def backward(s):
        backward_layers(copies[s], grad[bounds[s] : bounds[s + 1]], traces[s], input_grad=False)

    _in_shards(shards, backward)

    for i, layer in enumerate(trunk):  # each gradient summed over the shards, in shard order
        layer.grads = {key: sum((c[i].grads[key] for c in copies[1:]), start=g)
                       for key, g in copies[0][i].grads.items()}
    return loss, h
