"""Build a PyTorch twin of a zfnet Network (same weights) for comparisons.

The twin's ReLU and LRN have a configurable backward so that autograd reproduces
the deconvnet: with ``rule="deconvnet"`` the ReLU's backward rectifies the incoming
signal instead of masking it, and LRN's backward passes the signal through (as the
paper's deconvnet does).  Max-pool's and conv's own backward are unpooling and the
transposed convolution.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from zfnet import nn as znn


class _RuleReLU(torch.autograd.Function):
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


class _PassThroughLRN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, size, alpha, beta, k):
        return F.local_response_norm(x, size, alpha, beta, k)

    @staticmethod
    def backward(ctx, g):
        return g, None, None, None, None


def twin(model, rule: str | None = None):
    """Return ``f(x, upto=None) -> dict of activations`` running ``model`` in torch.

    ``rule=None`` uses torch's own ReLU and LRN (true gradients).
    """
    layers = model.layers

    def relu(t):
        return F.relu(t) if rule is None else _RuleReLU.apply(t, rule)

    def run(x: torch.Tensor, upto: str | None = None) -> dict:
        acts = {}
        for layer in layers:
            if isinstance(layer, znn.Conv2d):
                b = None if layer.bias is None else torch.tensor(np.asarray(layer.bias))
                x = F.conv2d(x, torch.tensor(np.asarray(layer.weight)), b, layer.stride, layer.padding, 1, layer.groups)
                x = relu(x) if layer.relu else x
            elif isinstance(layer, znn.MaxPool2d):
                x = F.max_pool2d(x, layer.kernel_size, layer.stride, layer.padding, 1, layer.ceil_mode)
            elif isinstance(layer, znn.LRN):
                if rule is None:
                    x = F.local_response_norm(x, layer.size, layer.alpha, layer.beta, layer.k)
                else:
                    x = _PassThroughLRN.apply(x, layer.size, layer.alpha, layer.beta, layer.k)
            elif isinstance(layer, znn.Flatten):
                x = x.flatten(1)
            elif isinstance(layer, znn.Linear):
                x = F.linear(x, torch.tensor(np.asarray(layer.weight)), torch.tensor(np.asarray(layer.bias)))
                x = relu(x) if layer.relu else x
            elif isinstance(layer, znn.AdaptiveAvgPool2d):
                x = F.adaptive_avg_pool2d(x, layer.output_size)
            elif isinstance(layer, znn.Dropout):
                pass
            else:
                raise TypeError(f"no torch twin for {layer!r}")
            acts[layer.name] = x
            if layer.name == upto:
                break
        return acts

    return run


def torch_projection(model, x: np.ndarray, layer: str, units, rule: str = "deconvnet") -> np.ndarray:
    """Autograd projection of each unit ``(image, channel, y, x)``: the dense reference."""
    run = twin(model, rule)
    out = []
    for n, c, i, j in units:
        xt = torch.tensor(x[n : n + 1], requires_grad=True)
        act = run(xt, upto=layer)[layer]
        g = torch.zeros_like(act)
        g[0, c, i, j] = act[0, c, i, j].detach()
        act.backward(g)
        out.append(xt.grad.numpy()[0])
    return np.stack(out)
