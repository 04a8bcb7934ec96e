"""Numbers that describe learned filters (used by ``zfnet train``'s log and by Fig. 6).

Kept free of any drawing code so the trainer can import it cheaply.
"""

from __future__ import annotations

import numpy as np

from ..backend import asnumpy

__all__ = ["low_frequency_fraction", "LOW_FREQUENCY_CUTOFF"]

#: Spatial frequency (cycles per pixel) at or below which energy counts as "low".
LOW_FREQUENCY_CUTOFF = 2.0 / 7.0


def low_frequency_fraction(weight, cutoff: float = LOW_FREQUENCY_CUTOFF) -> np.ndarray:
    """Fraction of each filter's energy at spatial frequencies of at most ``cutoff``.

    For filter ``o`` with channels ``w[o, c]`` of size ``kH x kW``, take the 2-D DFT
    of every channel and sum the energy over channels,

    ``E_o(fy, fx) = sum_c |DFT2(w[o, c])(fy, fx)|^2``,

    on the grid ``fy = numpy.fft.fftfreq(kH)``, ``fx = numpy.fft.fftfreq(kW)``
    (cycles per pixel, in ``[-1/2, 1/2)``).  The measure is

    ``L_o = sum_{sqrt(fy^2 + fx^2) <= cutoff} E_o / sum E_o``.

    A constant filter gives 1; a checkerboard (all energy near 1/2 cycle per pixel)
    gives about 0; white noise gives the share of grid points inside the disc
    (13 of 49 = 0.265 for 7x7 with the default cutoff 2/7).  Learned first-layer
    filters (smooth colour blobs, soft edges) lie far above noise: ImageNet-trained
    SqueezeNet's 7x7 conv1 has a median of about 0.8.

    Parameters
    ----------
    weight : array, (C_out, C_in, kH, kW) (NumPy or CuPy)
    cutoff : float
        In cycles per pixel.

    Returns
    -------
    numpy.ndarray, (C_out,) float64
        ``L_o`` per filter; NaN for an all-zero filter.  Summarise with the median.
    """
    w = np.asarray(asnumpy(weight), dtype=np.float64)
    if w.ndim != 4:
        raise ValueError(f"low_frequency_fraction: expected a (C_out, C_in, kH, kW) weight, got shape {w.shape}")
    kh, kw = w.shape[2:]
    energy = (np.abs(np.fft.fft2(w, axes=(2, 3))) ** 2).sum(axis=1)  # (C_out, kH, kW)
    fy, fx = np.fft.fftfreq(kh)[:, None], np.fft.fftfreq(kw)[None, :]
    low = np.hypot(fy, fx) <= cutoff + 1e-12  # (kH, kW)
    total = energy.reshape(len(w), -1).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return energy[:, low].sum(axis=1) / total
