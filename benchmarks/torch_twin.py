"""PyTorch twins of zfnet networks (same weights), for timing against.

The twin does the same work as our forward: max-pooling returns its indices (our
``max_pool2d`` always computes switches), dropout is the identity (inference).  For
projections the ReLU's backward follows the projection rule (the deconvnet rectifies
the signal coming down) and LRN's backward passes the signal through, so that
autograd computes exactly the paper's deconvnet, densely, as PyTorch users do.

The tests use the same twin (``tests/`` imports this module) to check our forward
passes and projections against PyTorch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from zfnet import nn as znn


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


def twin(model, rule: str | None = None, device: str = "cpu", switches: dict | None = None,
         params: dict | None = None, dropout: dict | None = None):
    """``run(x, upto=None, record=None) -> tensor``: the activation ``upto`` (or the output).

    ``rule=None``: PyTorch's own ReLU and LRN.  Otherwise the projection twin.  The
    weights live on ``device`` (``"cuda"`` for the GPU benchmark).  ``upto`` may name a
    branch of a fire module (``"fire3/squeeze"``); pass a dict as ``record`` to collect
    every named activation on the way (the tests compare them layer by layer).

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
    weights = {}
    for layer in model.layers:
        for prefix, lin in [(layer.name, layer)] if isinstance(layer, znn.Linear) else _named_convs(layer):
            if params is not None:
                weights[lin.name] = (params[f"{prefix}.weight"], params.get(f"{prefix}.bias"))
            else:
                weights[lin.name] = (_t(lin.weight, device), _t(lin.bias, device))

    def relu(t):
        return F.relu(t) if rule is None else RuleReLU.apply(t, rule)

    def conv(layer, x):
        w, b = weights[layer.name]
        x = F.conv2d(x, w, b, layer.stride, layer.padding, layer.dilation, layer.groups)
        return relu(x) if layer.relu else x

    def run(x, upto=None, record=None):
        acts = {} if record is None else record
        for layer in model.layers:
            if isinstance(layer, znn.Conv2d):
                x = conv(layer, x)
            elif isinstance(layer, znn.MaxPool2d) and switches is not None and layer.name in switches:
                idx = torch.as_tensor(np.asarray(switches[layer.name]), device=x.device)  # (N, C, h, w)
                x = x.flatten(2).gather(2, idx.flatten(2)).view(idx.shape)
            elif isinstance(layer, znn.MaxPool2d):
                x, _ = F.max_pool2d(x, layer.kernel_size, layer.stride, layer.padding, 1, layer.ceil_mode,
                                    return_indices=True)
            elif isinstance(layer, znn.LRN):
                if getattr(layer, "region", "across_channels") != "across_channels":
                    raise TypeError(f"no PyTorch twin for {layer!r}: PyTorch has no within-channel LRN")
                args = (layer.size, layer.alpha, layer.beta, layer.k)
                x = F.local_response_norm(x, *args) if rule is None else PassLRN.apply(x, *args)
            elif isinstance(layer, znn.ReLU):
                x = relu(x)
            elif isinstance(layer, znn.AvgPool2d):
                # count_include_pad: divide by the window clipped to the padded map, Caffe's divisor
                x = F.avg_pool2d(x, layer.kernel_size, layer.stride, layer.padding, layer.ceil_mode,
                                 count_include_pad=True)
            elif isinstance(layer, znn.Softmax):
                x = F.softmax(x, dim=1)
            elif isinstance(layer, znn.Flatten):
                x = x.flatten(1)
            elif isinstance(layer, znn.Linear):
                w, b = weights[layer.name]
                x = F.linear(x, w, b)
                x = relu(x) if layer.relu else x
            elif isinstance(layer, znn.AdaptiveAvgPool2d):
                x = F.adaptive_avg_pool2d(x, layer.output_size)
            elif isinstance(layer, znn.Dropout):
                if dropout is not None and layer.name in dropout:
                    keep = torch.as_tensor(np.asarray(dropout[layer.name]), device=x.device)
                    x = x * keep / (1 - layer.p)
            elif _convs(layer):  # a fire module: squeeze, then two expand branches concatenated
                squeeze, e1, e3 = _convs(layer)
                s = acts[squeeze.name] = conv(squeeze, x)
                acts[e1.name], acts[e3.name] = conv(e1, s), conv(e3, s)
                if upto in (squeeze.name, e1.name, e3.name):
                    return acts[upto]
                x = torch.cat([acts[e1.name], acts[e3.name]], dim=1)
            else:
                raise TypeError(f"no PyTorch twin for {layer!r}")
            acts[layer.name] = x
            if layer.name == upto:
                break
        return x

    return run


def torch_projection(model, x: np.ndarray, layer: str, units, rule: str = "deconvnet") -> np.ndarray:
    """Autograd projection of each unit ``(image, channel, y, x)``, one at a time: the
    dense reference the tests hold our deconvnet to."""
    run = twin(model, rule)
    out = []
    for n, c, i, j in units:
        xt = torch.tensor(x[n : n + 1], requires_grad=True)
        act = run(xt, upto=layer)
        g = torch.zeros_like(act)
        g[0, c, i, j] = act[0, c, i, j].detach()
        act.backward(g)
        out.append(xt.grad.numpy()[0])
    return np.stack(out)


def _named_convs(layer) -> list:
    """``[(state-dict prefix, Conv2d)]`` of a convolution or of a fire module's three."""
    if isinstance(layer, znn.Conv2d):
        return [(layer.name, layer)]
    names = ("squeeze", "expand1x1", "expand3x3")
    return [(f"{layer.name}.{b}", conv) for b, conv in zip(names, _convs(layer))]


def _convs(layer) -> list:
    if isinstance(layer, znn.Conv2d):
        return [layer]
    branches = [getattr(layer, b, None) for b in ("squeeze", "expand1x1", "expand3x3")]
    return branches if all(isinstance(b, znn.Conv2d) for b in branches) else []


def trainable(model, dropout: bool = True) -> "torch.nn.Sequential":
    """A plain ``torch.nn.Sequential`` with ``model``'s layers and a copy of its weights.

    What a PyTorch user trains: ``nn.Conv2d`` + ``nn.ReLU``, ``nn.LocalResponseNorm``,
    ``nn.MaxPool2d`` (no indices: training does not need them), ``nn.Linear``,
    ``nn.Dropout`` (``p=0`` with ``dropout=False``, for a deterministic check).  Used
    by the training-step benchmark; chains of conv/pool/LRN/fc layers only.
    """
    mods = []
    for layer in model.layers:
        if isinstance(layer, znn.Conv2d):
            o, i, kh, kw = layer.weight.shape
            m = torch.nn.Conv2d(i * layer.groups, o, (kh, kw), layer.stride, layer.padding, groups=layer.groups)
            with torch.no_grad():
                m.weight.copy_(_t(layer.weight, "cpu"))
                m.bias.copy_(_t(layer.bias, "cpu"))
            mods += [m] + ([torch.nn.ReLU()] if layer.relu else [])
        elif isinstance(layer, znn.MaxPool2d):
            mods.append(torch.nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding, ceil_mode=layer.ceil_mode))
        elif isinstance(layer, znn.LRN):
            mods.append(torch.nn.LocalResponseNorm(layer.size, layer.alpha, layer.beta, layer.k))
        elif isinstance(layer, znn.Flatten):
            mods.append(torch.nn.Flatten())
        elif isinstance(layer, znn.Linear):
            m = torch.nn.Linear(layer.weight.shape[1], layer.weight.shape[0])
            with torch.no_grad():
                m.weight.copy_(_t(layer.weight, "cpu"))
                m.bias.copy_(_t(layer.bias, "cpu"))
            mods += [m] + ([torch.nn.ReLU()] if layer.relu else [])
        elif isinstance(layer, znn.Dropout):
            mods.append(torch.nn.Dropout(layer.p if dropout else 0.0))
        else:
            raise TypeError(f"no trainable PyTorch twin for {layer!r}")
    return torch.nn.Sequential(*mods)
