"""AlexNet in its two common layouts.

``variant="caffe"``: BVLC AlexNet / CaffeNet as trained by Krizhevsky et al. (2012):
227 input, conv1 96x11x11/4, LRN before pooling, conv2/4/5 with ``groups=2`` (the
two-GPU split), widths 96-256-384-384-256.  Map sizes 227 -> 55 -> 27 -> 27 -> 13
-> 13 -> 13 -> 13 -> 6.

``variant="torchvision"``: torchvision's single-tower rewrite: 224 input, widths
64-192-384-256-256, conv1 11x11/4 pad 2, no LRN, no groups, adaptive 6x6 average
pool before the classifier.  Map sizes 224 -> 55 -> 27 -> 27 -> 13 -> 13 -> 13 -> 6.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..nn import LRN, AdaptiveAvgPool2d, Conv2d, Dropout, Flatten, Linear, MaxPool2d
from .base import Network

__all__ = ["alexnet", "ALEXNET_VARIANTS"]

ALEXNET_VARIANTS = ("caffe", "torchvision")


def alexnet(variant: str = "caffe", num_classes: int = 1000, fc_width: int = 4096, seed: int = 0) -> Network:
    """Build AlexNet with freshly initialised weights.

    Parameters
    ----------
    variant : {"caffe", "torchvision"}
        See the module docstring.
    num_classes, fc_width, seed :
        As in :func:`zfnet.models.zfnet`.

    Returns
    -------
    Network
        Layers named conv1..conv5, pool1/pool2/pool5 (norm1/norm2 for caffe),
        fc6..fc8, so that ``state_dict()`` keys are ``conv1.weight`` ... ``fc8.bias``.

    References
    ----------
    Krizhevsky, Sutskever & Hinton (2012); Zeiler & Fergus (2014) section 4.1.
    """
    rng = np.random.default_rng(seed)
    if variant == "caffe":
        layers = [
            Conv2d("conv1", 3, 96, 11, stride=4, padding=0, rng=rng),
            LRN("norm1", size=5, alpha=1e-4, beta=0.75, k=1.0),
            MaxPool2d("pool1", 3, 2, ceil_mode=True),
            Conv2d("conv2", 96, 256, 5, padding=2, groups=2, rng=rng),
            LRN("norm2", size=5, alpha=1e-4, beta=0.75, k=1.0),
            MaxPool2d("pool2", 3, 2, ceil_mode=True),
            Conv2d("conv3", 256, 384, 3, padding=1, rng=rng),
            Conv2d("conv4", 384, 384, 3, padding=1, groups=2, rng=rng),
            Conv2d("conv5", 384, 256, 3, padding=1, groups=2, rng=rng),
            MaxPool2d("pool5", 3, 2, ceil_mode=True),
            Flatten("flatten"),
        ]
        input_size = [227, 227]
    elif variant == "torchvision":
        layers = [
            Conv2d("conv1", 3, 64, 11, stride=4, padding=2, rng=rng),
            MaxPool2d("pool1", 3, 2),
            Conv2d("conv2", 64, 192, 5, padding=2, rng=rng),
            MaxPool2d("pool2", 3, 2),
            Conv2d("conv3", 192, 384, 3, padding=1, rng=rng),
            Conv2d("conv4", 384, 256, 3, padding=1, rng=rng),
            Conv2d("conv5", 256, 256, 3, padding=1, rng=rng),
            MaxPool2d("pool5", 3, 2),
            AdaptiveAvgPool2d("avgpool", (6, 6)),
            Flatten("flatten"),
        ]
        input_size = [224, 224]
    else:
        raise ConfigError(f"unknown AlexNet variant {variant!r}: expected one of {', '.join(ALEXNET_VARIANTS)}")
    # torchvision puts dropout BEFORE fc6 and fc7; Caffe after fc6 and fc7. At inference
    # both are the identity; we keep each layout's order so training matches too.
    if variant == "caffe":
        layers += [
            Linear("fc6", 256 * 6 * 6, fc_width, rng=rng),
            Dropout("drop6", 0.5, seed=seed + 6),
            Linear("fc7", fc_width, fc_width, rng=rng),
            Dropout("drop7", 0.5, seed=seed + 7),
        ]
    else:
        layers += [
            Dropout("drop6", 0.5, seed=seed + 6),
            Linear("fc6", 256 * 6 * 6, fc_width, rng=rng),
            Dropout("drop7", 0.5, seed=seed + 7),
            Linear("fc7", fc_width, fc_width, rng=rng),
        ]
    layers.append(Linear("fc8", fc_width, num_classes, relu=False, rng=rng))
    config = {
        "arch": "alexnet",
        "variant": variant,
        "num_classes": num_classes,
        "fc_width": fc_width,
        "input_size": input_size,
    }
    return Network(layers, config)
