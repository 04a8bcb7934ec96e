"""The one place where deconvnet, backprop and guided backprop differ: the ReLU rule.

Going down through a rectified layer with forward output ``a = relu(z)`` and an
incoming signal ``r`` (in the space of ``a``), the three methods pass on

==============  ===============================  =====================================
rule            signal passed down               reference
==============  ===============================  =====================================
``deconvnet``   ``relu(r)``                      Zeiler & Fergus (2014), section 2.1
``backprop``    ``r * [z > 0]``                  gradient (Simonyan et al. 2014)
``guided``      ``relu(r) * [z > 0]``            Springenberg et al. (2015)
==============  ===============================  =====================================

Everything else (unpooling with the switches, filtering with the transposed
filters) is shared, so every layer calls :func:`relu_rule` and nothing else branches
on the rule.
"""

from __future__ import annotations

from ..errors import ConfigError
from ..ops import relu

__all__ = ["RULES", "relu_rule", "check_rule"]

RULES = ("deconvnet", "backprop", "guided")


def check_rule(rule: str) -> str:
    """Return ``rule`` if it is one of :data:`RULES`, else raise :class:`ConfigError`."""
    if rule not in RULES:
        raise ConfigError(f"unknown projection rule {rule!r}: expected one of {', '.join(RULES)}")
    return rule


def relu_rule(signal, forward_positive, rule: str = "deconvnet"):
    """Pass a top-down ``signal`` through a ReLU according to ``rule``.

    Parameters
    ----------
    signal : array
        The signal arriving from above, same shape as the ReLU's output.
    forward_positive : bool array or None
        ``z > 0`` from the forward pass (the ReLU's mask).  Not needed by the
        deconvnet rule, which ignores the forward pass entirely.
    rule : {"deconvnet", "backprop", "guided"}

    Returns
    -------
    array, same shape as ``signal``
    """
    if rule == "deconvnet":
        return relu(signal)
    if rule == "backprop":
        return signal * forward_positive
    if rule == "guided":
        return relu(signal) * forward_positive
    check_rule(rule)  # raises
    raise AssertionError("unreachable")
