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

__all__ = ["luptitude", "luptitude_err", "luptitude_to_flux", "softening"]

_K = 2.5 / np.log(10.0)


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
