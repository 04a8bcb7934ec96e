"""Layers as JSON-able dicts and back: :func:`layer_from_spec`, :func:`check_spec`.

A spec is what ``layer.spec()`` returns: ``{"type": ..., "name": ..., <hyperparameters>}``
with lists for pairs, and for a concatenation its branches as lists of specs.  The
native ``.npz`` format stores a network built from a Caffe file as the list of its
layer specs (``config["graph"]``); :func:`check_spec` is the gate such a list passes
before any layer is built from it, since the file may be hostile: every value is
type- and range-checked, nesting and counts are bounded, and
:func:`spec_param_shapes` says which parameter shapes the spec would allocate, so
they can be compared with the arrays the file really holds first.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import ConfigError
from .concat import Concat
from .layers import LRN, LRN_REGIONS, AdaptiveAvgPool2d, AvgPool2d, Conv2d, Dropout, Flatten, Linear, \
    MaxPool2d, ReLU, Softmax

__all__ = ["SPEC_TYPES", "layer_from_spec", "check_spec", "spec_param_shapes"]

#: spec ``type`` -> the layer class that builds it (``cls.from_spec``).
SPEC_TYPES = {
    "conv": Conv2d, "maxpool": MaxPool2d, "avgpool": AvgPool2d, "adaptive_avgpool": AdaptiveAvgPool2d,
    "lrn": LRN, "relu": ReLU, "fc": Linear, "dropout": Dropout, "flatten": Flatten, "softmax": Softmax,
    "concat": Concat,
}

MAX_LAYERS = 10_000      # layers in one graph, inner ones included
MAX_DEPTH = 8            # concatenations inside concatenations
MAX_CHANNELS = 1 << 20   # conv channels, fc widths
MAX_FEATURES = 1 << 31   # fc inputs (a flattened map)
MAX_WINDOW = 4096        # kernels, strides, pads, dilations, LRN sizes, pooled sizes
MAX_NAME = 256


def layer_from_spec(spec: dict):
    """Build the layer a spec describes (fresh weights of the spec's shapes)."""
    return SPEC_TYPES[spec["type"]].from_spec(spec)


def _int(v: Any, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _pair_ok(v: Any, lo: int, hi: int) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(_int(x, lo, hi) for x in v)


_SCHEMA = {  # key -> check, per type (name and type are checked for all)
    "conv": {"in": lambda v: _int(v, 1, MAX_CHANNELS), "out": lambda v: _int(v, 1, MAX_CHANNELS),
             "kernel": lambda v: _pair_ok(v, 1, MAX_WINDOW), "stride": lambda v: _pair_ok(v, 1, MAX_WINDOW),
             "pad": lambda v: _pair_ok(v, 0, MAX_WINDOW), "dilation": lambda v: _pair_ok(v, 1, MAX_WINDOW),
             "groups": lambda v: _int(v, 1, MAX_CHANNELS), "relu": lambda v: isinstance(v, bool),
             "bias": lambda v: isinstance(v, bool)},
    "maxpool": {"kernel": lambda v: _pair_ok(v, 1, MAX_WINDOW), "stride": lambda v: _pair_ok(v, 1, MAX_WINDOW),
                "pad": lambda v: _pair_ok(v, 0, MAX_WINDOW), "ceil": lambda v: isinstance(v, bool)},
    "adaptive_avgpool": {"out": lambda v: _pair_ok(v, 1, MAX_WINDOW)},
    "lrn": {"size": lambda v: _int(v, 1, MAX_WINDOW),
            "alpha": lambda v: _real(v), "beta": lambda v: _real(v), "k": lambda v: _real(v),
            "region": lambda v: v in LRN_REGIONS},
    "fc": {"in": lambda v: _int(v, 1, MAX_FEATURES), "out": lambda v: _int(v, 1, MAX_CHANNELS),
           "relu": lambda v: isinstance(v, bool), "bias": lambda v: isinstance(v, bool)},
    "dropout": {"p": lambda v: _real(v) and 0 <= v < 1},
    "relu": {}, "flatten": {}, "softmax": {},
    "concat": {"branches": lambda v: isinstance(v, list) and 1 <= len(v) <= 256},
}
_SCHEMA["avgpool"] = _SCHEMA["maxpool"]


def _real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_spec(specs: Any, where: str = "graph") -> None:
    """Check a list of layer specs completely before anything is built from it.

    Every spec must be a dict with exactly its type's keys (see :data:`SPEC_TYPES`),
    names non-empty strings of at most 256 characters, integers within bounds
    (channels at most 2**20, windows at most 4096, groups dividing the channels,
    pool padding at most half the kernel), floats finite, at most 10,000 layers and
    8 levels of nested concatenation.

    Raises
    ------
    ConfigError
        Naming the layer (or its position) and the key.
    """
    count = 0
    stack = [(specs, where, 0)]
    while stack:
        items, path, depth = stack.pop()
        if not isinstance(items, list):
            raise ConfigError(f"{path}: expected a list of layer specs, got {type(items).__name__}")
        if depth > MAX_DEPTH:
            raise ConfigError(f"{path}: concatenations nested more than {MAX_DEPTH} deep")
        for i, s in enumerate(items):
            count += 1
            if count > MAX_LAYERS:
                raise ConfigError(f"{where}: more than {MAX_LAYERS} layers")
            at = f"{path}[{i}]"
            if not isinstance(s, dict) or s.get("type") not in _SCHEMA:
                raise ConfigError(f"{at}: not a layer spec (expected a dict whose 'type' is one of "
                                  f"{', '.join(_SCHEMA)})")
            name = s.get("name")
            if not (isinstance(name, str) and 0 < len(name) <= MAX_NAME):
                raise ConfigError(f"{at}: 'name' must be a string of 1..{MAX_NAME} characters")
            at = f"{path}[{i}] ({name!r})"
            schema = _SCHEMA[s["type"]]
            keys = set(s) - {"type", "name"}
            if keys != set(schema):
                raise ConfigError(f"{at}: a {s['type']} spec has keys {sorted(schema)}, got {sorted(keys)}")
            for key, ok in schema.items():
                if not ok(s[key]):
                    raise ConfigError(f"{at}: '{key}' = {str(s[key])[:80]} is out of range or of the wrong type")
            if s["type"] == "conv" and (s["in"] % s["groups"] or s["out"] % s["groups"]):
                raise ConfigError(f"{at}: channels {s['in']}->{s['out']} not divisible by groups {s['groups']}")
            if s["type"] in ("maxpool", "avgpool") and any(p > k // 2 for p, k in zip(s["pad"], s["kernel"])):
                raise ConfigError(f"{at}: pool padding {s['pad']} must be at most half the kernel {s['kernel']}")
            if s["type"] == "lrn" and s["region"] == "within_channel" and s["size"] % 2 == 0:
                raise ConfigError(f"{at}: a within-channel LRN needs an odd size, got {s['size']}")
            if s["type"] == "concat":
                for b, branch in enumerate(s["branches"]):
                    stack.append((branch, f"{at}.branches[{b}]", depth + 1))


def spec_param_shapes(specs: list) -> dict[str, tuple]:
    """``{state-dict key: shape}`` the specs' layers would hold, without building them.

    Keys as :meth:`zfnet.models.Network.state_dict` names them (``conv1.weight``;
    inside a concatenation ``<concat>.<layer>.weight``).  Call on a checked list.
    """
    out: dict[str, tuple] = {}

    def walk(items, prefix):
        for s in items:
            key = prefix + s["name"]
            if s["type"] == "conv":
                out[f"{key}.weight"] = (s["out"], s["in"] // s["groups"]) + tuple(s["kernel"])
                if s["bias"]:
                    out[f"{key}.bias"] = (s["out"],)
            elif s["type"] == "fc":
                out[f"{key}.weight"] = (s["out"], s["in"])
                if s["bias"]:
                    out[f"{key}.bias"] = (s["out"],)
            elif s["type"] == "concat":
                for branch in s["branches"]:
                    walk(branch, key + ".")

    walk(specs, "")
    return out
