"""What a forward pass leaves behind for the way down."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Trace"]


def _take(value: Any, index):
    """Index the batch axis of an array; leave anything else (tuples, ints) alone."""
    if hasattr(value, "shape") and getattr(value, "ndim", 0) >= 1:
        return value[index]
    return value


# Training caches that hold one buffer for the whole batch, laid out in their own way
# (a convolution's columns or Winograd tiles, LRN's denominator): select() leaves them
# out, and a backward pass on the selection computes them again.
_WHOLE_BATCH_ONLY = ("cols", "scale")


@dataclass
class Trace:
    """Everything one forward pass recorded, keyed by layer name.

    Attributes
    ----------
    activations : dict[str, array]
        Each named layer's output, shape (N, C, H, W) or (N, F).  For conv layers
        with a ReLU the output is the *rectified* map, before pooling.
    switches : dict[str, int64 array]
        Each max-pool layer's switches, shape (N, C, H_out, W_out): flat indices
        into that layer's input planes (see :func:`zfnet.ops.max_pool2d`).
    caches : dict[str, dict]
        Whatever else a layer needs to go back down (input sizes, dropout masks).
    output : array or None
        The network's final output (N, num_classes), None if the pass stopped early.
    input_shape : tuple
        Shape of the input batch (N, C, H, W).
    """

    activations: dict = field(default_factory=dict)
    switches: dict = field(default_factory=dict)
    caches: dict = field(default_factory=dict)
    output: Any = None
    input_shape: tuple = ()
    keep_caches: bool = True

    def cache(self, name: str) -> dict | None:
        """The cache dict of layer ``name`` to write into, or None when not keeping caches."""
        if not self.keep_caches:
            return None
        return self.caches.setdefault(name, {})

    def select(self, index) -> "Trace":
        """A new Trace for the images ``index`` (ints, array of ints, slice), in that order.

        Used to project many units at once: image ``index[u]``'s switches and masks
        are gathered for unit ``u``, so each projection uses its own image's switches.
        """
        return Trace(
            activations={k: _take(v, index) for k, v in self.activations.items()},
            switches={k: _take(v, index) for k, v in self.switches.items()},
            caches={k: {kk: _take(vv, index) for kk, vv in c.items() if kk not in _WHOLE_BATCH_ONLY}
                    for k, c in self.caches.items()},
            output=None if self.output is None else _take(self.output, index),
            input_shape=self.input_shape,
            keep_caches=self.keep_caches,
        )
