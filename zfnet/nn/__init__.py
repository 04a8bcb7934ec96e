"""Layers that hold parameters; each has ``forward()`` and ``deconv()``."""

from .layers import LRN, AdaptiveAvgPool2d, Conv2d, Dropout, Flatten, Layer, Linear, MaxPool2d
from .rules import RULES, check_rule, relu_rule
from .trace import Trace

__all__ = [
    "Layer", "Conv2d", "MaxPool2d", "LRN", "Linear", "Dropout", "Flatten", "AdaptiveAvgPool2d",
    "Trace", "RULES", "relu_rule", "check_rule",
]
