"""SDSS asinh magnitudes (luptitudes) of fluxes in nanomaggies.

The SDSS asinh magnitude (Lupton, Gunn & Szalay 1999) of a flux ``f`` in
units of the AB zero point ``f0`` (1 nanomaggy = 1e-9 f0) is

.. math:: m = -\\frac{2.5}{\\ln 10}\\left[\\operatorname{asinh}\\left(\\frac{f/f_0}{2b}\\right) + \\ln b\\right]

with the per-band softening ``b`` of `astrohvae.SOFTENING`.  It equals the
Pogson magnitude for bright sources and stays finite for zero and negative
flux, which is why the paper's stamps are stored in these units.
"""

from __future__ import annotations

import numpy as np

from astrohvae import BANDS, SOFTENING

__all__ = ["luptitude", "luptitude_err", "luptitude_to_flux", "softening", "STELLAR_LOCUS", "QUASAR_COLOURS",
           "colour_seds"]

_K = 2.5 / np.log(10.0)


STELLAR_LOCUS = np.array(
    [
        # g-r,  u-g,  r-i,   i-z
        [-0.20, 0.60, -0.15, -0.10],
        [0.00, 0.85, -0.05, -0.05],
        [0.20, 0.95, 0.04, 0.00],
        [0.30, 1.02, 0.09, 0.02],
        [0.40, 1.12, 0.13, 0.04],
        [0.50, 1.28, 0.17, 0.07],
        [0.60, 1.48, 0.21, 0.09],
        [0.80, 1.88, 0.29, 0.14],
        [1.00, 2.25, 0.40, 0.21],
        [1.20, 2.50, 0.56, 0.30],
        [1.35, 2.55, 0.85, 0.43],
        [1.45, 2.60, 1.20, 0.58],
        [1.50, 2.60, 1.60, 0.80],
        # mid and late M dwarfs (r-i 2-2.8), which the first rows stop short of
        [1.55, 2.70, 2.00, 1.00],
        [1.60, 2.80, 2.40, 1.25],
        [1.65, 2.90, 2.80, 1.50],
    ]
)
"""The SDSS stellar locus: a polyline of (g-r, u-g, r-i, i-z), after the median colours of Covey et al.
(2007) and Ivezic et al. (2008), from hot halo stars (g-r = -0.2) to late M dwarfs (r-i = 2.8).
The stars of `astrohvae.simulate` lie along its first 13 rows."""

QUASAR_COLOURS = ((0.2, 0.15, 0.12, 0.05), (0.15, 0.12, 0.10, 0.10))
"""Mean and spread of the (u-g, g-r, r-i, i-z) colours of z < 2.2 quasars (UV-excess point
sources; Richards et al. 2001)."""


def colour_seds(colours):
    """Relative fluxes (K, 5) in u, g, r, i, z, r = 1, of (K, 4) colours (u-g, g-r, r-i, i-z) in magnitudes."""
    ug, gr, ri, iz = np.asarray(colours, dtype=np.float64).T
    return 10.0 ** (-0.4 * np.stack([ug + gr, gr, np.zeros_like(gr), -ri, -ri - iz], axis=1))


def softening(bands=BANDS):
    """Softening ``b`` for each band, as a float64 array."""
    return np.array([SOFTENING[b] for b in bands])


def _b_for(band, ndim):
    """Broadcastable softening for a band name, or for axis 0 = bands."""
    if isinstance(band, str):
        return SOFTENING[band]
    b = softening(band)
    return b.reshape((-1,) + (1,) * (ndim - 1))


def luptitude(flux_nmgy, band):
    """Asinh magnitude of ``flux_nmgy`` (nanomaggies).

    Parameters
    ----------
    flux_nmgy : array_like
        Flux in nanomaggies; zero and negative values are allowed.
    band : str or sequence of str
        One band name, or a sequence of band names matching axis 0 of
        ``flux_nmgy``.

    Returns
    -------
    numpy.ndarray
        Luptitudes, same shape as ``flux_nmgy``.
    """
    f = np.asarray(flux_nmgy, dtype=np.float64) * 1e-9
    b = _b_for(band, f.ndim)
    return -_K * (np.arcsinh(f / (2.0 * b)) + np.log(b))


def luptitude_to_flux(mag, band):
    """Inverse of `luptitude`: nanomaggies from asinh magnitudes."""
    m = np.asarray(mag, dtype=np.float64)
    b = _b_for(band, m.ndim)
    return 2.0 * b * np.sinh(-m / _K - np.log(b)) * 1e9


def luptitude_err(flux_nmgy, flux_err_nmgy, band):
    """Error of `luptitude` propagated from the flux error.

    .. math:: \\sigma_m = \\frac{2.5}{\\ln 10}\\,\\frac{\\sigma_f}{\\sqrt{(2 b f_0)^2 + f^2}}

    (the derivative of the asinh magnitude; equal to the Pogson
    ``1.0857 sigma_f / f`` for bright sources, bounded by the softening for
    faint ones).

    Parameters
    ----------
    flux_nmgy, flux_err_nmgy : array_like
        Flux and its 1-sigma error in nanomaggies.
    band : str or sequence of str
        As for `luptitude`.

    Returns
    -------
    numpy.ndarray
    """
    f = np.asarray(flux_nmgy, dtype=np.float64) * 1e-9
    e = np.asarray(flux_err_nmgy, dtype=np.float64) * 1e-9
    b = _b_for(band, f.ndim)
    return _K * e / np.sqrt((2.0 * b) ** 2 + f**2)
