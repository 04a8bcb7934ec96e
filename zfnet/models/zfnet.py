"""ZFNet: the architecture of Zeiler & Fergus (2014), Fig. 3 (arXiv v3).

Map sizes for a 224x224 input: 224 -> conv1 110 -> pool1 55 -> conv2 26 -> pool2 13
-> conv3 13 -> conv4 13 -> conv5 13 -> pool5 6, then fc6 4096, fc7 4096, fc8 classes.
The pools round up (ceil mode), which is what makes 110 -> 55 and 26 -> 13.
"""

from __future__ import annotations

import numpy as np

from ..nn import LRN, Conv2d, Dropout, Flatten, Linear, MaxPool2d
from .base import Network

__all__ = ["zfnet"]


def zfnet(num_classes: int = 1000, fc_width: int = 4096, seed: int = 0) -> Network:
    """Build ZFNet with freshly initialised weights (He normal, zero bias).

    Parameters
    ----------
    num_classes : int
        Width of fc8.
    fc_width : int
        Width of fc6 and fc7 (4096 in the paper; narrower for small datasets).
    seed : int
        Seed of the weight initialisation.

    Returns
    -------
    Network
        Layers conv1 (96x7x7/2 pad 1) pool1 norm1, conv2 (256x5x5/2) pool2 norm2,
        conv3 (384) conv4 (384) conv5 (256, all 3x3 pad 1), pool5, flatten, fc6,
        drop6, fc7, drop7, fc8.  LRN is size 5, alpha 1e-4, beta 0.75, k 2.

    References
    ----------
    Zeiler & Fergus (2014), section 3 and Fig. 3.
    """
    rng = np.random.default_rng(seed)
    layers = [
        Conv2d("conv1", 3, 96, 7, stride=2, padding=1, rng=rng),
        MaxPool2d("pool1", 3, 2, ceil_mode=True),
        LRN("norm1", size=5, alpha=1e-4, beta=0.75, k=2.0),
        Conv2d("conv2", 96, 256, 5, stride=2, padding=0, rng=rng),
        MaxPool2d("pool2", 3, 2, ceil_mode=True),
        LRN("norm2", size=5, alpha=1e-4, beta=0.75, k=2.0),
        Conv2d("conv3", 256, 384, 3, padding=1, rng=rng),
        Conv2d("conv4", 384, 384, 3, padding=1, rng=rng),
        Conv2d("conv5", 384, 256, 3, padding=1, rng=rng),
        MaxPool2d("pool5", 3, 2, ceil_mode=True),
        Flatten("flatten"),
        Linear("fc6", 256 * 6 * 6, fc_width, rng=rng),
        Dropout("drop6", 0.5, seed=seed + 6),
        Linear("fc7", fc_width, fc_width, rng=rng),
        Dropout("drop7", 0.5, seed=seed + 7),
        Linear("fc8", fc_width, num_classes, relu=False, rng=rng),
    ]
    config = {
        "arch": "zfnet",
        "variant": "paper",
        "num_classes": num_classes,
        "fc_width": fc_width,
        "input_size": [224, 224],
    }
    return Network(layers, config)
