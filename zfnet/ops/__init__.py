"""Pure array functions, NCHW, no state; each forward op sits beside its pair.

=====================  ==========================  ==================================
forward                paired with                 used in the deconvnet for
=====================  ==========================  ==================================
:func:`conv2d`         :func:`conv_transpose2d`    "filtering" with transposed filters
:func:`max_pool2d`     :func:`max_unpool2d`        "unpooling" with the switches
:func:`relu`           :func:`relu` (on the way    "rectification"
                       down)
:func:`lrn`            passed through              (not inverted, paper section 2.1)
:func:`lrn_within_     passed through              (Caffe's WITHIN_CHANNEL LRN, e.g.
channel`                                           the py-faster-rcnn ZF layout)
:func:`avg_pool2d`     :func:`avg_unpool2d` (its   Caffe AVE pooling
                       adjoint)
:func:`linear`         ``y @ w``                   fully connected layers
=====================  ==========================  ==================================

Training uses the same pairs.  The gradients that back-propagation needs are:

=====================  ===============================================================
forward                backward
=====================  ===============================================================
:func:`conv2d`         input: :func:`conv_transpose2d` (the adjoint IS the gradient);
                       filters: :func:`conv2d_weight_grad`; bias: :func:`conv2d_bias_grad`
:func:`max_pool2d`     :func:`max_unpool2d` with the switches (scatter-add)
:func:`relu`           :func:`relu_backward` (mask by the forward output)
:func:`lrn`            :func:`lrn_backward`
:func:`lrn_within_     :func:`lrn_within_channel_backward`
channel`
:func:`avg_pool2d`     :func:`avg_unpool2d` (the adjoint is the gradient)
:func:`linear`         :func:`linear_backward`
:func:`dropout`        :func:`dropout_backward` (same mask)
loss                   :func:`softmax_cross_entropy` returns the loss and ``dL/dlogits``
=====================  ===============================================================
"""

from ._shape import conv_out_size, conv_transpose_out_size, pool_out_size
from .activation import relu, relu_backward, softmax
from .conv import conv2d, conv2d_bias_grad, conv2d_weight_grad, conv_transpose2d
from .dropout import dropout, dropout_backward
from .im2col import col2im, im2col
from .linear import linear, linear_backward
from .loss import softmax_cross_entropy
from .avg_pool import avg_pool2d, avg_unpool2d
from .norm import lrn, lrn_backward, lrn_within_channel, lrn_within_channel_backward
from .pool import max_pool2d, max_unpool2d

__all__ = [
    "conv2d",
    "conv_transpose2d",
    "max_pool2d",
    "max_unpool2d",
    "relu",
    "softmax",
    "lrn",
    "lrn_within_channel",
    "avg_pool2d",
    "avg_unpool2d",
    "linear",
    "im2col",
    "col2im",
    "conv2d_weight_grad",
    "conv2d_bias_grad",
    "relu_backward",
    "lrn_backward",
    "lrn_within_channel_backward",
    "linear_backward",
    "dropout",
    "dropout_backward",
    "softmax_cross_entropy",
    "conv_out_size",
    "conv_transpose_out_size",
    "pool_out_size",
]
