"""Networks built from a layer list ("caffe graph"), and recognising the known ones.

A network read from a Caffe file is an ordinary :class:`~zfnet.models.Network`
whose layers come from the file's own definition (:mod:`zfnet.weights.caffe_net`
turns a Caffe ``NetParameter`` into the list of layer specs this module builds).
Its config says ``arch: "caffe-graph"`` and holds the list itself under
``"graph"``, so the native ``.npz`` format saves and reloads it like any model.

When the list describes one of our architectures exactly -- the same layers with
the same hyperparameters in the same order, names aside -- :func:`recognise` says
which, and the weights go onto that model instead (``alexnet(variant="caffe")``,
``zfnet()``, ``squeezenet1_0()``).  A final softmax and a final flatten are not
part of the comparison (our models return scores); nothing else is ignored, so
CaffeNet (pooling before normalisation) is *not* AlexNet.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..errors import ConfigError, ShapeError, WeightsError
from ..nn import check_spec, layer_from_spec, spec_param_shapes
from .base import Network

__all__ = ["CAFFE_GRAPH", "graph_network", "canonical", "recognise"]

CAFFE_GRAPH = "caffe-graph"


def graph_network(specs: list, config: Mapping[str, Any], state: Mapping[str, np.ndarray] | None = None,
                  source: str = "graph") -> Network:
    """Build a network from a list of layer specs (``layer.spec()`` dicts).

    Parameters
    ----------
    specs : list of dict
        Checked completely first (:func:`zfnet.nn.check_spec`).
    config : mapping
        The network's config; ``arch`` becomes ``"caffe-graph"`` and ``graph`` the
        specs.  ``input_size`` (H, W) is needed for the shape check.
    state : mapping of str to array, optional
        Parameters to load.  Their keys and shapes are compared with what the specs
        declare *before* any layer is built, so a spec cannot make us allocate more
        than the arrays we were given.
    source : str
        Named in error messages (a file name).

    Returns
    -------
    Network

    Raises
    ------
    WeightsError
        A bad spec, a state that does not fit it (naming the key, expected and found
        shape), or layers whose shapes do not chain from the input.
    """
    try:
        check_spec(specs, f"{source}: graph")
    except ConfigError as exc:
        raise WeightsError(str(exc)) from None
    if state is not None:
        want = spec_param_shapes(specs)
        missing = [k for k in want if k not in state]
        extra = [k for k in state if k not in want]
        if missing or extra:
            parts = ([f"missing {', '.join(missing[:8])}"] if missing else []) + (
                [f"unexpected {', '.join(extra[:8])}"] if extra else [])
            raise WeightsError(f"{source} does not fit its graph: " + "; ".join(parts))
        for key, shape in want.items():
            if tuple(np.shape(state[key])) != tuple(shape):
                raise WeightsError(f"{source}: '{key}' has shape {tuple(np.shape(state[key]))}, "
                                   f"the graph declares {tuple(shape)}")
            if not np.issubdtype(np.asarray(state[key]).dtype, np.floating) or not np.all(np.isfinite(state[key])):
                raise WeightsError(f"{source}: '{key}' is not floating point, or holds NaN or infinity")
    cfg = dict(config)
    cfg["arch"] = CAFFE_GRAPH
    cfg["graph"] = specs
    try:
        net = Network([layer_from_spec(s) for s in specs], cfg)
        shapes = net.shapes()
    except (ConfigError, ShapeError) as exc:
        raise WeightsError(f"{source}: the graph does not run on a {tuple(cfg.get('input_size', ()))} input: {exc}") \
            from None
    if "num_classes" not in cfg:
        net.config["num_classes"] = int(shapes[-1][1][1])
    if state is not None:
        net.load_state_dict({k: np.asarray(v, dtype=np.float32) for k, v in state.items()}, source=source)
    return net


# ------------------------------------------------------------------------ recognition


def _strip(spec: dict) -> tuple:
    """A spec without its name, as a hashable tuple; floats rounded to float32 (Caffe's)."""
    items = []
    for key in sorted(spec):
        value = spec[key]
        if key == "name":
            continue
        if key == "branches":
            value = tuple(tuple(_flat(branch)) for branch in value)
        elif isinstance(value, float):
            value = float(np.float32(value))
        elif isinstance(value, list):
            value = tuple(value)
        items.append((key, value))
    return tuple(items)


def _flat(specs: list) -> list:
    """Rewrite fire modules as a squeeze convolution plus a two-branch concatenation."""
    out = []
    for s in specs:
        if s["type"] == "fire":
            out.append(_strip(s["squeeze"]))
            out.append(_strip({"type": "concat", "branches": [[s["expand1x1"]], [s["expand3x3"]]]}))
        else:
            out.append(_strip(s))
    return out


def canonical(specs: list) -> tuple:
    """The structure of a layer list, for comparison: names dropped, fire modules
    rewritten, and a trailing softmax and flatten (in any order) left out."""
    flat = _flat(specs)
    while flat and dict(flat[-1])["type"] in ("softmax", "flatten"):
        flat.pop()
    return tuple(flat)


def _known(arch: str, kwargs: dict) -> Network:
    from . import alexnet, squeezenet1_0, zfnet

    if arch == "alexnet":
        return alexnet("caffe", **kwargs)
    if arch == "zfnet":
        return zfnet(**kwargs)
    return squeezenet1_0(**kwargs)


def recognise(net: Network) -> Network | None:
    """The known architecture ``net`` (a caffe-graph network) is, with its weights, or None.

    Compares :func:`canonical` structures and the input size with
    ``alexnet(variant="caffe")``, ``zfnet()`` and ``squeezenet1_0()`` sized like
    ``net`` (classes and fc width from its layers).  Candidates are compared first
    at a tiny fc width, so a near miss does not build a 60-million-parameter model.

    Returns
    -------
    Network or None
        The known model holding ``net``'s parameters (copied in order; every shape
        checked), in eval mode; its config is the known model's.
    """
    specs = [layer.spec() for layer in net.layers]
    target = canonical(specs)
    fcs = [s for s in specs if s["type"] == "fc"]
    convs = [s for s in specs if s["type"] == "conv"]
    candidates = []
    if len(fcs) >= 2:
        candidates += [(a, {"num_classes": fcs[-1]["out"], "fc_width": fcs[0]["out"]}) for a in ("alexnet", "zfnet")]
    if convs and not fcs:
        candidates.append(("squeezenet1_0", {"num_classes": convs[-1]["out"]}))

    def masked(structure):  # fully connected widths blanked out
        return tuple(tuple((k, None if dict(s)["type"] == "fc" and k in ("in", "out") else v) for k, v in s)
                     for s in structure)

    first = convs[0] if convs and specs[0]["type"] == "conv" else {}
    shape = (first.get("out"), first.get("kernel"), first.get("stride"), first.get("pad"))
    # conv1 settles it before anything is built: 96 11x11/4, 96 7x7/2 pad 1, 96 7x7/2 pad 0
    conv1 = {"alexnet": (96, [11, 11], [4, 4], [0, 0]), "zfnet": (96, [7, 7], [2, 2], [1, 1]),
             "squeezenet1_0": (96, [7, 7], [2, 2], [0, 0])}
    candidates = [(a, kw) for a, kw in candidates if conv1[a] == shape]
    for arch, kwargs in candidates:
        tiny_kwargs = dict(kwargs, fc_width=4) if "fc_width" in kwargs else kwargs
        tiny = _known(arch, tiny_kwargs)
        if tuple(tiny.input_size) != tuple(net.input_size):
            continue
        if masked(canonical([layer.spec() for layer in tiny.layers])) != masked(target):
            continue
        model = tiny if tiny_kwargs is kwargs else _known(arch, kwargs)
        if canonical([layer.spec() for layer in model.layers]) != target:
            continue
        ours, theirs = net.state_dict(), model.state_dict()
        if [v.shape for v in ours.values()] != [v.shape for v in theirs.values()]:
            continue  # same structure, parameters in another order: keep the graph
        model.load_state_dict(dict(zip(theirs, ours.values())), source=f"{net.arch} graph")
        return model.eval()
    return None
