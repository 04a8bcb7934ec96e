"""Training-time augmentation on uint8 image batches, on NumPy or CuPy.

The random choices (crop boxes, flips) are drawn on the host from a seeded
:class:`numpy.random.Generator`, a fixed number of draws per image, so a run is
reproducible and resumable whatever device does the arithmetic.  The pixel work
(gathering, bilinear interpolation, normalisation) is written with ``xp`` and runs
where the images are.

Random-resized crop ("lite"): for an ``H x W`` source image draw an area fraction
``a ~ U(min_scale, 1)`` and a log aspect ratio ``log r ~ U(log 3/4, log 4/3)``; the
crop is ``h = sqrt(a H W / r)``, ``w = sqrt(a H W r)`` (clipped to the image) at a
uniform position, resized to ``S x S`` with bilinear interpolation, and mirrored
left-right with probability 1/2.  Unlike torchvision's ``RandomResizedCrop`` there is
no rejection loop (so every image costs exactly five uniform draws) and no
antialiasing (crops of a 224 image resized to 224 are never shrunk).

Bilinear sampling uses the half-pixel convention of ``align_corners=False``: output
pixel ``i`` of ``S`` samples the source at ``y = top + (i + 1/2) h / S - 1/2``.  With
the full image as the box and ``S = H`` that is ``y = i`` exactly, so the evaluation
view of a 224 image at 224 is the image itself, bit for bit.
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import get_array_module
from ..errors import ShapeError

__all__ = ["random_boxes", "center_boxes", "crop_resize", "normalize_batch"]


def random_boxes(rng: np.random.Generator, n: int, hw: tuple[int, int], min_scale: float = 0.35,
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = True):
    """Draw ``n`` random-resized-crop boxes and flips (see the module docstring).

    Parameters
    ----------
    rng : numpy.random.Generator
        Exactly ``5 n`` uniforms are drawn, whatever the arguments.
    n : int
    hw : (H, W)
        Source image size.
    min_scale : float in (0, 1]
        Smallest crop area as a fraction of the image.
    ratio : (float, float)
        Range of the aspect ratio ``w / h``.
    flip : bool
        Mirror with probability 1/2 (False: never).

    Returns
    -------
    boxes : ndarray, float64, (n, 4)
        ``(top, left, height, width)`` in source pixels.
    flips : ndarray, bool, (n,)
    """
    if not 0 < min_scale <= 1:
        raise ShapeError(f"min_scale={min_scale}: expected a fraction in (0, 1]")
    h, w = hw
    u = rng.random((n, 5))  # (n, 5): area, ratio, top, left, flip
    area = (min_scale + (1 - min_scale) * u[:, 0]) * h * w
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    r = np.exp(log_r)
    ch = np.clip(np.sqrt(area / r), 1, h)
    cw = np.clip(np.sqrt(area * r), 1, w)
    top = u[:, 2] * (h - ch)
    left = u[:, 3] * (w - cw)
    flips = (u[:, 4] < 0.5) & flip
    return np.stack([top, left, ch, cw], axis=1), flips


def center_boxes(n: int, hw: tuple[int, int]):
    """The evaluation view: the largest centred square, ``(n, 4)`` boxes and no flips."""
    h, w = hw
    s = min(h, w)
    box = np.array([(h - s) / 2, (w - s) / 2, s, s], np.float64)
    return np.tile(box, (n, 1)), np.zeros(n, bool)


def _axis(xp, start, length, out: int, limit: int, reverse):
    """Source coordinates and weights along one axis for every image: ``(B, out)`` each."""
    i = xp.arange(out, dtype=xp.float32)
    if reverse is not None:  # a mirrored output reads the row/column from the other end
        i = xp.where(reverse[:, None], out - 1 - i, i)  # (B, out)
    pos = start[:, None] + (i + 0.5) * (length[:, None] / out) - 0.5  # (B, out)
    pos = xp.clip(pos, 0, limit - 1)
    lo = xp.floor(pos).astype(xp.int64)
    hi = xp.minimum(lo + 1, limit - 1)
    return lo, hi, (pos - lo).astype(xp.float32)


def crop_resize(images, boxes, out_size: int, flips=None):
    """Crop each image to its box, resize to ``out_size`` (bilinear), mirror where asked.

    Parameters
    ----------
    images : uint8 array, (B, H, W, 3), NumPy or CuPy
    boxes : (B, 4) ``(top, left, height, width)``, any array type
    out_size : int
    flips : (B,) bool, optional

    Returns
    -------
    float32 array, (B, 3, S, S), pixel values in 0..255, on ``images``' device
    """
    xp = get_array_module(images)
    if images.ndim != 4 or images.shape[3] != 3:
        raise ShapeError(f"crop_resize: images must be (B, H, W, 3) uint8, got {tuple(images.shape)}")
    b, h, w, _ = images.shape
    boxes = xp.asarray(boxes, dtype=xp.float32)
    if tuple(boxes.shape) != (b, 4):
        raise ShapeError(f"crop_resize: boxes must be ({b}, 4), got {tuple(boxes.shape)}")
    rev = None if flips is None else xp.asarray(flips, dtype=bool)
    y0, y1, wy = _axis(xp, boxes[:, 0], boxes[:, 2], out_size, h, None)  # (B, S) each
    x0, x1, wx = _axis(xp, boxes[:, 1], boxes[:, 3], out_size, w, rev)
    n = xp.arange(b)[:, None, None]  # (B, 1, 1)
    wy, wx = wy[:, :, None, None], wx[:, None, :, None]  # (B, S, 1, 1), (B, 1, S, 1)

    def gather(ys, xs):
        return images[n, ys[:, :, None], xs[:, None, :]].astype(xp.float32)  # (B, S, S, 3)

    top = gather(y0, x0) * (1 - wx) + gather(y0, x1) * wx
    bottom = gather(y1, x0) * (1 - wx) + gather(y1, x1) * wx
    out = top * (1 - wy) + bottom * wy  # (B, S, S, 3)
    return xp.ascontiguousarray(out.transpose(0, 3, 1, 2))  # (B, 3, S, S)


def normalize_batch(x, mean, std, scale: float = 1.0 / 255.0):
    """``(x * scale - mean[c]) / std[c]`` per channel for a (B, 3, H, W) float batch, RGB order.

    The same numbers as :class:`zfnet.data.TransformConfig` (``mean``/``std`` in
    scaled units), applied on the batch's device.
    """
    xp = get_array_module(x)
    m = xp.asarray(mean, dtype=xp.float32).reshape(1, 3, 1, 1)
    s = xp.asarray(std, dtype=xp.float32).reshape(1, 3, 1, 1)
    return (x * xp.float32(scale) - m) / s
