"""Layers that hold parameters; each has ``forward()`` and ``deconv()``."""

from .concat import Concat
from .layers import (
    LRN,
    LRN_REGIONS,
    AdaptiveAvgPool2d,
    AvgPool2d,
    Conv2d,
    Dropout,
    Flatten,
    Layer,
    Linear,
    MaxPool2d,
    ReLU,
    Softmax,
)
from .rules import RULES, check_rule, relu_rule
from .spec import SPEC_TYPES, check_spec, layer_from_spec, spec_param_shapes
from .trace import Trace
from .window import Window, WindowUnsupported

__all__ = [
    "Layer", "Conv2d", "MaxPool2d", "LRN", "Linear", "Dropout", "Flatten", "AdaptiveAvgPool2d",
    "ReLU", "AvgPool2d", "Softmax", "Concat", "LRN_REGIONS",
    "SPEC_TYPES", "layer_from_spec", "check_spec", "spec_param_shapes",
    "Trace", "Window", "WindowUnsupported", "RULES", "relu_rule", "check_rule",
]
