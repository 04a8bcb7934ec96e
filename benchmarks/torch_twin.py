"""PyTorch twins of zfnet networks (same weights), for timing against.

The twin does the same work as our forward: max-pooling returns its indices (our
``max_pool2d`` always computes switches), dropout is the identity (inference).  For
projections the ReLU's backward follows the projection rule (the deconvnet rectifies
the signal coming down) and LRN's backward passes the signal through, so that
autograd computes exactly the paper's deconvnet, densely, as PyTorch users do.

The tests use the same twin (``tests/`` imports this module) to check our forward
passes and projections against PyTorch.

One translation per layer type: :data:`TWINS` maps each zfnet layer class to a small
``torch.nn.Module`` built from it (the same class serves the projection twin,
:func:`twin`, and the trainable network of the training-step benchmark,
:func:`trainable`; a ``_Build`` says which).  A layer type without an entry raises
``TypeError`` naming the layer, so a forgotten entry fails loudly.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F

from zfnet import nn as znn
from zfnet.models.squeezenet import Fire


class RuleReLU(torch.autograd.Function):
    """``relu`` forward; backward by the projection rule (deconvnet: ``relu(g)``)."""

    @staticmethod
    def forward(ctx, x, rule):
        ctx.rule = rule
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        if ctx.rule == "deconvnet":
            return g.clamp(min=0), None
        if ctx.rule == "guided":
            return g.clamp(min=0) * (x > 0), None
        return g * (x > 0), None


class PassLRN(torch.autograd.Function):
    """LRN forward; the deconvnet passes signals through it unchanged."""

    @staticmethod
    def forward(ctx, x, size, alpha, beta, k):
        return F.local_response_norm(x, size, alpha, beta, k)

    @staticmethod
    def backward(ctx, g):
        return g, None, None, None, None


def _t(a, device):
    return None if a is None else torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device)


class _Build:
    """How the twins of one network are made.

    ``training=False``: the projection twin (:func:`twin`): ``rule`` picks the ReLU's
    and LRN's backward, max-pooling returns indices (as ours computes switches) or
    gathers at given ``switches``, dropout is the identity or applies given masks,
    weights are copies (or the caller's ``params``).  ``training=True``: what a
    PyTorch user trains (:func:`trainable`): ``nn.Parameter`` weights, pooling
    without indices, real dropout in ``train()`` mode.
    """

    def __init__(self, rule=None, device="cpu", switches=None, params=None, dropout=None,
                 training=False, dropout_on=True):
        self.rule, self.device, self.switches, self.params = rule, device, switches, params
        self.dropout, self.training, self.dropout_on = dropout, training, dropout_on

    def tensor(self, key: str, array):
        """The weight under state-dict ``key``: the caller's tensor, a copy, or a parameter."""
        if array is None:
            return None
        if self.params is not None:
            return self.params[key]
        t = _t(array, self.device)
        # A trainable copy must own its memory: from_numpy shares the array, and an
        # optimizer stepping it would change the zfnet model too.
        return torch.nn.Parameter(t.clone()) if self.training else t

    def relu(self, t):
        return F.relu(t) if self.rule is None else RuleReLU.apply(t, self.rule)


class _Twin(torch.nn.Module):
    """Base: ``forward(x, acts=None)``; a composite layer records its inner activations in ``acts``."""

    def __init__(self, build: _Build):
        super().__init__()
        self.build = build


class _Conv(_Twin):
    def __init__(self, layer, build, key):
        super().__init__(build)
        self.weight, self.bias = build.tensor(f"{key}.weight", layer.weight), build.tensor(f"{key}.bias", layer.bias)
        self.args, self.relu = (layer.stride, layer.padding, layer.dilation, layer.groups), layer.relu

    def forward(self, x, acts=None):
        x = F.conv2d(x, self.weight, self.bias, *self.args)
        return self.build.relu(x) if self.relu else x


class _Linear(_Twin):
    def __init__(self, layer, build, key):
        super().__init__(build)
        self.weight, self.bias = build.tensor(f"{key}.weight", layer.weight), build.tensor(f"{key}.bias", layer.bias)
        self.relu = layer.relu

    def forward(self, x, acts=None):
        x = F.linear(x, self.weight, self.bias)
        return self.build.relu(x) if self.relu else x


class _MaxPool(_Twin):
    def __init__(self, layer, build, key):
        super().__init__(build)
        self.args = (layer.kernel_size, layer.stride, layer.padding, 1, layer.ceil_mode)
        self.switches = None if build.switches is None else build.switches.get(layer.name)

    def forward(self, x, acts=None):
        if self.switches is not None:  # gather at given flat indices (N, C, h, w); autograd scatter-adds
            idx = torch.as_tensor(np.asarray(self.switches), device=x.device)
            return x.flatten(2).gather(2, idx.flatten(2)).view(idx.shape)
        if self.build.training:  # training does not need the indices
            return F.max_pool2d(x, *self.args)
        return F.max_pool2d(x, *self.args, return_indices=True)[0]


class _AvgPool(_Twin):
    def __init__(self, layer, build, key):
        super().__init__(build)
        self.args = (layer.kernel_size, layer.stride, layer.padding, layer.ceil_mode)

    def forward(self, x, acts=None):
        # count_include_pad: divide by the window clipped to the padded map, Caffe's divisor
        return F.avg_pool2d(x, *self.args, count_include_pad=True)


class _LRN(_Twin):
    def __init__(self, layer, build, key):
        super().__init__(build)
        if getattr(layer, "region", "across_channels") != "across_channels":
            raise TypeError(f"no PyTorch twin for {layer!r}: PyTorch has no within-channel LRN")
        self.args = (layer.size, layer.alpha, layer.beta, layer.k)

    def forward(self, x, acts=None):
        if self.build.rule is None:
            return F.local_response_norm(x, *self.args)
        return PassLRN.apply(x, *self.args)


class _Dropout(_Twin):
    def __init__(self, layer, build, key):
        super().__init__(build)
        self.p = layer.p if build.dropout_on else 0.0
        self.mask = None if build.dropout is None else build.dropout.get(layer.name)

    def forward(self, x, acts=None):
        if self.build.training:
            return F.dropout(x, self.p, self.training)
        if self.mask is not None:  # inverted dropout with the caller's keep mask
            return x * torch.as_tensor(np.asarray(self.mask), device=x.device) / (1 - self.p)
        return x


class _Pointwise(_Twin):
    """ReLU, Flatten, Softmax, adaptive average pooling: no parameters."""

    def __init__(self, layer, build, key):
        super().__init__(build)
        self.layer = layer

    def forward(self, x, acts=None):
        layer = self.layer
        if isinstance(layer, znn.ReLU):
            return self.build.relu(x)
        if isinstance(layer, znn.Flatten):
            return x.flatten(1)
        if isinstance(layer, znn.Softmax):
            return F.softmax(x, dim=1)
        return F.adaptive_avg_pool2d(x, layer.output_size)


class _Concat(_Twin):
    """Branches of twins on one input, concatenated along channels (a ``Concat`` layer)."""

    def __init__(self, layer, build, key):
        super().__init__(build)
        self.names = [[inner.name for inner in branch] for branch in layer.branches]
        self.branches = torch.nn.ModuleList(
            torch.nn.ModuleList(twin_of(inner, build, f"{key}.{inner.name}") for inner in branch)
            for branch in layer.branches)

    def forward(self, x, acts=None):
        outs = []
        for names, branch in zip(self.names, self.branches):
            h = x
            for name, m in zip(names, branch):
                h = m(h, acts)
                if acts is not None:
                    acts[name] = h
            outs.append(h)
        return torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]


class _Fire(_Twin):
    """SqueezeNet's fire module: squeeze, then the two expand branches concatenated."""

    def __init__(self, layer, build, key):
        super().__init__(build)
        self.names = [getattr(layer, b).name for b in Fire.BRANCHES]
        self.squeeze, self.e1, self.e3 = (_Conv(getattr(layer, b), build, f"{key}.{b}") for b in Fire.BRANCHES)

    def forward(self, x, acts=None):
        s = self.squeeze(x)
        e1, e3 = self.e1(s), self.e3(s)
        if acts is not None:
            acts.update(zip(self.names, (s, e1, e3)))
        return torch.cat([e1, e3], dim=1)


#: zfnet layer class -> its twin (looked up along the class's MRO).
TWINS = {znn.Conv2d: _Conv, znn.Linear: _Linear, znn.MaxPool2d: _MaxPool, znn.AvgPool2d: _AvgPool,
         znn.LRN: _LRN, znn.Dropout: _Dropout, znn.ReLU: _Pointwise, znn.Flatten: _Pointwise,
         znn.Softmax: _Pointwise, znn.AdaptiveAvgPool2d: _Pointwise, znn.Concat: _Concat, Fire: _Fire}


def twin_of(layer, build: _Build, key: str | None = None) -> _Twin:
    """The twin module of one layer (``key``: its state-dict prefix, default its name)."""
    for cls in type(layer).__mro__:
        if cls in TWINS:
            return TWINS[cls](layer, build, layer.name if key is None else key)
    raise TypeError(f"no PyTorch twin for {layer!r}")


def twin(model, rule: str | None = None, device: str = "cpu", switches: dict | None = None,
         params: dict | None = None, dropout: dict | None = None):
    """``run(x, upto=None, record=None) -> tensor``: the activation ``upto`` (or the output).

    ``rule=None``: PyTorch's own ReLU and LRN.  Otherwise the projection twin.  The
    weights live on ``device`` (``"cuda"`` for the GPU benchmark).  ``upto`` may name a
    branch of a composite layer (``"fire3/squeeze"``); pass a dict as ``record`` to
    collect every named activation on the way (the tests compare them layer by layer).

    ``switches`` (pool name -> int64 (N, C, h, w), e.g. ``trace.switches``): pool by
    gathering at these flat indices instead of letting PyTorch choose the maxima.  Its
    autograd is then a scatter-add to the same places.  Two float32 libraries round a
    convolution differently (about 1e-6 relative), so in a window whose candidates tie to
    that precision (often ReLU zeros) they can pick different winners, and a projection
    through that window then differs.  With ``switches`` a comparison checks everything
    but that choice, which the op tests check on identical inputs.

    ``params`` (state-dict key -> tensor, e.g. leaf tensors with ``requires_grad``):
    use these instead of copies of the model's weights, so autograd reaches them (the
    backward tests).  ``dropout`` (dropout layer name -> keep mask, e.g. from a
    training-mode trace): apply inverted dropout with these masks; without it dropout
    is the identity.  A layer type the twin does not know raises ``TypeError``.
    """
    build = _Build(rule, device, switches, params, dropout)
    twins = [(layer, twin_of(layer, build)) for layer in model.layers]

    def run(x, upto=None, record=None):
        acts = {} if record is None else record
        for layer, m in twins:
            x = acts[layer.name] = m(x, acts)
            if upto is not None and upto in layer.names():
                return acts[upto]
        return x

    return run


def torch_projection(model, x: np.ndarray, layer: str, units, rule: str = "deconvnet",
                     switches: dict | None = None) -> np.ndarray:
    """Autograd projection of each unit ``(image, channel, y, x)``, one at a time: the
    dense reference the tests hold our deconvnet to.  ``switches`` (pool name -> (N, C,
    h, w), e.g. our ``trace.switches`` for ``x``) pins the pooling choice, see :func:`twin`."""
    run = twin(model, rule)
    out = []
    for n, c, i, j in units:
        if switches is not None:  # this image's switches
            run = twin(model, rule, switches={k: v[n : n + 1] for k, v in switches.items()})
        xt = torch.tensor(x[n : n + 1], requires_grad=True)
        act = run(xt, upto=layer)
        g = torch.zeros_like(act)
        g[0, c, i, j] = act[0, c, i, j].detach()
        act.backward(g)
        out.append(xt.grad.numpy()[0])
    return np.stack(out)


def trainable(model, dropout: bool = True) -> "torch.nn.Sequential":
    """A ``torch.nn.Sequential`` of ``model``'s layers with a copy of its weights as parameters.

    What a PyTorch user trains: ``F.conv2d`` / ``F.linear`` on ``nn.Parameter``
    weights (what ``nn.Conv2d`` / ``nn.Linear`` run), ``F.relu``, pooling without
    indices, ``F.local_response_norm``, dropout in ``train()`` mode (``p=0`` with
    ``dropout=False``, for a deterministic check).  Used by the training-step
    benchmark; the same twins as :func:`twin`.  Children are named as the layers
    (``dict(seq.named_children())["conv1"].weight``).
    """
    build = _Build(training=True, dropout_on=dropout)
    return torch.nn.Sequential(OrderedDict((layer.name, twin_of(layer, build)) for layer in model.layers))
