"""Resample one band onto the reference band's pixel grid through the WCS.

The SDSS camera sees the five bands of a field at different times, so the
five ``frame-*`` images of one field are offset from one another by several
pixels (and very slightly rotated / scaled).  Each frame carries its own WCS;
`reference_to_band_pixels` turns every reference (r-band) pixel into the
matching position in another band's pixel grid and `resample` interpolates
the band there.

The mapping is computed *exactly* through the two WCSs (``all_pix2world`` of
the reference, then ``all_world2pix`` of the band, so SIP distortions are
honoured) on a coarse grid of nodes only, and interpolated to every pixel with
a bicubic spline.  The pixel-to-pixel mapping between two frames of the same
camera is smooth (nearly affine), so the spline reproduces the exact mapping
to far below 1e-3 pixel (`mapping_error` measures it), at a small fraction of
the cost of transforming all 3 million pixels through the WCS.
"""

from __future__ import annotations

import numpy as np
from scipy import interpolate, ndimage

__all__ = ["reference_to_band_pixels", "mapping_error", "resample", "align_band"]

#: Spacing of the coarse grid on which the WCS mapping is computed exactly.
NODE_SPACING = 64


def _nodes(n, spacing):
    """Node positions covering 0..n-1 (both ends included), at most ``spacing`` apart."""
    k = max(int(np.ceil((n - 1) / spacing)), 3)  # >= 4 nodes for a cubic spline
    return np.linspace(0.0, n - 1.0, k + 1)


def _exact(ref_wcs, band_wcs, x, y):
    """Exact band-pixel position of reference pixels (x, y) through both WCSs."""
    ra, dec = ref_wcs.all_pix2world(x, y, 0)
    bx, by = band_wcs.all_world2pix(ra, dec, 0, quiet=True)
    return np.asarray(bx, float), np.asarray(by, float)


def _mapping_splines(ref_wcs, band_wcs, shape, spacing):
    ny, nx = shape
    xs, ys = _nodes(nx, spacing), _nodes(ny, spacing)
    gx, gy = np.meshgrid(xs, ys)
    bx, by = _exact(ref_wcs, band_wcs, gx, gy)
    if not (np.all(np.isfinite(bx)) and np.all(np.isfinite(by))):
        raise ValueError("the WCS mapping between the bands is not finite on the reference grid")
    sx = interpolate.RectBivariateSpline(ys, xs, bx, kx=3, ky=3)
    sy = interpolate.RectBivariateSpline(ys, xs, by, kx=3, ky=3)
    return sx, sy, (gx, gy, bx, by)


def reference_to_band_pixels(ref_wcs, band_wcs, shape, spacing=NODE_SPACING):
    """Band-pixel coordinates of every pixel of the reference grid.

    Parameters
    ----------
    ref_wcs, band_wcs : astropy.wcs.WCS
        Celestial WCS of the reference grid and of the band to resample.
    shape : tuple of int
        ``(ny, nx)`` of the reference grid.
    spacing : int, optional
        Spacing in pixels of the coarse grid on which the mapping is computed
        exactly through the WCS (then interpolated with a bicubic spline).

    Returns
    -------
    coords : numpy.ndarray
        float64, shape ``(2, ny, nx)``: ``coords[0]`` is the band row (y) and
        ``coords[1]`` the band column (x) of each reference pixel, 0-based,
        ready for `scipy.ndimage.map_coordinates`.
    offset : tuple of float
        Median ``(dx, dy)`` = band pixel minus reference pixel over the grid.
    """
    ny, nx = shape
    sx, sy, (gx, gy, bx, by) = _mapping_splines(ref_wcs, band_wcs, shape, spacing)
    yy = np.arange(ny, dtype=float)
    xx = np.arange(nx, dtype=float)
    coords = np.empty((2, ny, nx), dtype=float)
    coords[0] = sy(yy, xx)
    coords[1] = sx(yy, xx)
    offset = (float(np.median(bx - gx)), float(np.median(by - gy)))
    return coords, offset


def mapping_error(ref_wcs, band_wcs, shape, spacing=NODE_SPACING):
    """Largest difference (pixels) between the interpolated and the exact mapping.

    Evaluated at the centres of the coarse-grid cells, where the spline is
    least constrained.  Used by the tests and the benchmark.
    """
    ny, nx = shape
    sx, sy, (gx, gy, _, _) = _mapping_splines(ref_wcs, band_wcs, shape, spacing)
    xm = 0.5 * (gx[0, 1:] + gx[0, :-1])
    ym = 0.5 * (gy[1:, 0] + gy[:-1, 0])
    mx, my = np.meshgrid(xm, ym)
    ex, ey = _exact(ref_wcs, band_wcs, mx, my)
    return float(max(np.max(np.abs(sx(ym, xm) - ex)), np.max(np.abs(sy(ym, xm) - ey))))


def resample(image, mask, coords, order=1):
    """Interpolate ``image`` at ``coords`` and propagate its mask.

    Parameters
    ----------
    image : numpy.ndarray
        2-D band image (its own pixel grid).  Non-finite pixels are treated as
        masked.
    mask : numpy.ndarray or None
        bool, same shape, True where ``image`` is unusable.
    coords : numpy.ndarray
        ``(2, ny, nx)`` band (row, column) position of every output pixel, as
        returned by `reference_to_band_pixels`.
    order : {1, 0, 3}, optional
        Interpolation order.  The default, **1 (bilinear)**, is the deliberate
        choice for survey imaging:

        * its weights are non-negative and sum to one, so flux is conserved
          locally and nothing rings: a cosmic ray or a saturated star stays a
          compact positive feature instead of growing negative side lobes
          (cubic splines overshoot by ~10 % next to a sharp spike);
        * its support is the 2x2 input pixels around each position, so a
          masked input pixel spoils at most the output pixels whose
          interpolation actually touches it (the mask stays exact and small);
          the spline prefilter of ``order=3`` spreads every pixel, masked ones
          included, over the whole row and column;
        * it is unbiased for positions (a symmetric kernel), so centroids stay
          put; the price is a small extra blur of variance
          ``f (1 - f) <= 0.25`` px^2 per axis for a fractional shift ``f``,
          i.e. < 3 % in FWHM for the SDSS PSF (FWHM ~ 3.5 px), and a
          correspondingly lower (correlated) pixel noise.

        ``order=0`` (nearest pixel) keeps pixel values and noise untouched
        but moves positions by up to half a pixel.  ``order=3`` keeps the PSF
        sharpest; its mask is grown by one pixel to cover the 4x4 support,
        but it rings around sharp features.

    Returns
    -------
    data : numpy.ndarray
        float32 ``(ny, nx)`` resampled image, 0.0 where masked.
    out_mask : numpy.ndarray
        bool ``(ny, nx)``; True where the interpolation touched a masked
        input pixel or the position falls outside the band's footprint.
    """
    if order not in (0, 1, 3):
        raise ValueError(f"order must be 0, 1 or 3, not {order!r}")
    image = np.asarray(image)
    bad = ~np.isfinite(image)
    if mask is not None:
        bad |= np.asarray(mask, bool)
    filled = np.where(bad, 0.0, image).astype(np.float32, copy=False)
    ny_b, nx_b = image.shape
    data = ndimage.map_coordinates(
        filled, coords, order=order, mode="nearest", prefilter=(order > 1), output=np.float32
    )
    # Outside the footprint: positions beyond the outermost pixel centres
    # (a tiny tolerance keeps exactly-aligned edges inside).
    eps = 1e-6
    y, x = coords[0], coords[1]
    out = (x < -eps) | (x > nx_b - 1 + eps) | (y < -eps) | (y > ny_b - 1 + eps)
    if order == 3:
        out |= (x < 1 - eps) | (x > nx_b - 2 + eps) | (y < 1 - eps) | (y > ny_b - 2 + eps)
    if bad.any():
        mbad = bad
        if order == 3:
            mbad = ndimage.binary_dilation(bad, structure=np.ones((3, 3), bool))
        touched = ndimage.map_coordinates(
            mbad.astype(np.float32), coords, order=min(order, 1), mode="nearest",
            prefilter=False, output=np.float32,
        )
        out |= touched > 0
    data[out] = 0.0
    return data, out


def align_band(image, mask, band_wcs, ref_wcs, ref_shape, order=1, spacing=NODE_SPACING):
    """Resample one band onto the reference grid.

    Returns
    -------
    data, mask : numpy.ndarray
        As `resample`.
    offset : tuple of float
        Median ``(dx, dy)`` band minus reference pixel before alignment.
    """
    coords, offset = reference_to_band_pixels(ref_wcs, band_wcs, ref_shape, spacing)
    data, out_mask = resample(image, mask, coords, order=order)
    return data, out_mask, offset
