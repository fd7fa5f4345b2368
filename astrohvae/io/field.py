"""The in-memory form of one five-band field on the reference (r-band) grid."""

from __future__ import annotations

from dataclasses import dataclass, field as dc_field

import numpy as np

from astrohvae import BANDS, REF_BAND

__all__ = ["Field"]


@dataclass(frozen=True)
class Field:
    """A five-band image resampled onto the reference band's pixel grid.

    Attributes
    ----------
    data : numpy.ndarray
        float32, shape ``(5, ny, nx)``, in nanomaggies, bands in `bands`
        order.  Pixels flagged in `mask` hold 0.0 and must be ignored through
        the mask (they were NaN/inf in the input, or fell outside a band's
        footprint after alignment).
    mask : numpy.ndarray
        bool, shape ``(5, ny, nx)``; True where a pixel is unusable.
    wcs : astropy.wcs.WCS or None
        Celestial WCS of the reference grid (None when the input has none).
    bands : tuple of str
        Band names, ``('u', 'g', 'r', 'i', 'z')``.
    name : str
        Short field name (``RUN-CAMCOL-FIELD`` for SDSS frames, else the
        file stem).
    files : tuple of str
        The input files the field was read from.
    unit : str
        Pixel unit, ``'nanomaggy'``.
    meta : dict
        Free-form extra information (e.g. per-band alignment offsets).
    """

    data: np.ndarray
    mask: np.ndarray
    wcs: object = None
    bands: tuple = BANDS
    name: str = ""
    files: tuple = ()
    unit: str = "nanomaggy"
    meta: dict = dc_field(default_factory=dict)

    @property
    def shape(self):
        """``(ny, nx)`` of the reference grid."""
        return self.data.shape[1:]

    @property
    def ref_index(self):
        """Index of the reference band along axis 0."""
        return self.bands.index(REF_BAND)

    def to_dask(self, chunks=(5, 512, 512)):
        """The data as a dask array (no copy), chunked for tile-wise work."""
        import dask.array as da

        return da.from_array(self.data, chunks=chunks)

    def pixel_to_world(self, x, y):
        """(ra, dec) in degrees of 0-based pixel positions; NaN without WCS."""
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        if self.wcs is None:
            nan = np.full(np.broadcast(x, y).shape, np.nan)
            return nan, nan.copy()
        ra, dec = self.wcs.all_pix2world(x, y, 0)
        return np.asarray(ra, float), np.asarray(dec, float)
