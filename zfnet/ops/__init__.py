"""Pure array functions, NCHW, no state; each forward op sits beside its pair.

=====================  ==========================  ==================================
forward                paired with                 used in the deconvnet for
=====================  ==========================  ==================================
:func:`conv2d`         :func:`conv_transpose2d`    "filtering" with transposed filters
:func:`max_pool2d`     :func:`max_unpool2d`        "unpooling" with the switches
:func:`relu`           :func:`relu` (on the way    "rectification"
                       down)
:func:`lrn`            passed through              (not inverted, paper section 2.1)
:func:`linear`         ``y @ w``                   fully connected layers
=====================  ==========================  ==================================
"""

from ._shape import conv_out_size, conv_transpose_out_size, pool_out_size
from .activation import relu, softmax
from .conv import conv2d, conv_transpose2d
from .im2col import col2im, im2col
from .linear import linear
from .norm import lrn
from .pool import max_pool2d, max_unpool2d

__all__ = [
    "conv2d",
    "conv_transpose2d",
    "max_pool2d",
    "max_unpool2d",
    "relu",
    "softmax",
    "lrn",
    "linear",
    "im2col",
    "col2im",
    "conv_out_size",
    "conv_transpose_out_size",
    "pool_out_size",
]
