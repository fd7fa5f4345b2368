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

The frame WCSs of SDSS agree between bands to ~0.1 px in most fields but
not in all (in 005405-6-0099 the i frame is off by ~1 px against r), so
`align_band` can refine the WCS mapping with a constant shift measured on
bright isolated stars (median of Gaussian-windowed centroid differences).
"""

from __future__ import annotations

import numpy as np
from scipy import interpolate, ndimage

__all__ = [
    "exact_band_position",
    "reference_to_band_pixels",
    "mapping_error",
    "resample",
    "align_band",
    "find_alignment_stars",
    "windowed_centroids",
    "noise_factor",
]

#: Spacing of the coarse grid on which the WCS mapping is computed exactly.
NODE_SPACING = 64


def _nodes(n, spacing):
    """Node positions covering 0..n-1 (both ends included), at most ``spacing`` apart."""
    k = max(int(np.ceil((n - 1) / spacing)), 3)  # >= 4 nodes for a cubic spline
    return np.linspace(0.0, n - 1.0, k + 1)


def exact_band_position(ref_wcs, band_wcs, x, y):
    """Exact band-pixel position of reference pixels (x, y) through both WCSs."""
    ra, dec = ref_wcs.all_pix2world(x, y, 0)
    bx, by = band_wcs.all_world2pix(ra, dec, 0, quiet=True)
    return np.asarray(bx, float), np.asarray(by, float)


def _mapping_splines(ref_wcs, band_wcs, shape, spacing):
    ny, nx = shape
    xs, ys = _nodes(nx, spacing), _nodes(ny, spacing)
    gx, gy = np.meshgrid(xs, ys)
    bx, by = exact_band_position(ref_wcs, band_wcs, gx, gy)
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
    ex, ey = exact_band_position(ref_wcs, band_wcs, mx, my)
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
          i.e. < 3 % in FWHM for the SDSS PSF (FWHM ~ 3.5 px; measured on
          field 004510-4-0030: star second-moment radius +3 % in g and i,
          box flux within 0.6 %), and a lower, correlated pixel noise (rms
          x 0.6-0.75 on that field, x 0.82-0.95 with ``order=3``; see
          `noise_factor`, recorded per band in ``Field.meta``).  Estimate
          the noise from the aligned image, not from the raw frame.

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


def _robust_sigma(img, mask=None, step=7):
    v = img[::step, ::step]
    if mask is not None:
        v = v[~mask[::step, ::step]]
    v = v[np.isfinite(v)]
    if v.size == 0:
        return np.nan
    med = np.median(v)
    return 1.4826 * np.median(np.abs(v - med))


def find_alignment_stars(image, mask=None, nsigma=20.0, isolation=10, half=7, max_stars=200):
    """Bright, isolated, compact peaks of the reference image for astrometric refinement.

    Parameters
    ----------
    image : numpy.ndarray
        Reference (r) image, sky-subtracted.
    mask : numpy.ndarray, optional
        Pixels to avoid (no star whose cutout touches one is kept).
    nsigma : float
        Peak threshold in units of the robust pixel noise.
    isolation : int
        No other > 5 sigma peak within this many pixels.
    half : int
        Half-size of the cutouts used later (stars this close to the edge are
        dropped).
    max_stars : int
        Keep at most this many (the faintest of the selection are dropped
        first, the brightest 5 % are dropped as possibly saturated).

    Returns
    -------
    x, y : numpy.ndarray
        Integer pixel positions of the peaks.
    """
    sig = _robust_sigma(image, mask)
    if not np.isfinite(sig) or sig <= 0:
        return np.array([], int), np.array([], int)
    img = np.where(mask, 0.0, image) if mask is not None else image
    local_max = ndimage.maximum_filter(img, size=5, mode="constant", cval=0.0) == img
    faint = local_max & (img > 5 * sig)
    py, px = np.nonzero(faint)
    ny, nx = img.shape
    edge = half + 3
    bright = (img[py, px] > nsigma * sig) & (px >= edge) & (px < nx - edge) & (py >= edge) & (py < ny - edge)
    if not bright.any():
        return np.array([], int), np.array([], int)
    # isolation: count 5-sigma peaks within `isolation` px (the star itself included)
    count = np.zeros(img.shape, np.int32)
    count[py, px] = 1
    k = 2 * isolation + 1
    near = ndimage.uniform_filter(count.astype(np.float32), size=k, mode="constant") * k * k
    bx, by = px[bright], py[bright]
    keep = near[by, bx] < 1.5
    bx, by = bx[keep], by[keep]
    if mask is not None and bx.size:
        grown = ndimage.maximum_filter(mask, size=2 * half + 1)
        ok = ~grown[by, bx]
        bx, by = bx[ok], by[ok]
    if bx.size == 0:
        return bx, by
    peak = img[by, bx]
    order = np.argsort(peak)[::-1]
    n_sat = int(np.ceil(0.05 * order.size)) if order.size >= 20 else 0
    order = order[n_sat : n_sat + max_stars]
    return bx[order], by[order]


def windowed_centroids(image, x, y, half=7, sigma_w=1.5, iterations=8, noise=None):
    """Gaussian-windowed centroids (SExtractor ``XWIN``-like) around integer positions.

    Unbiased for a symmetric PSF and much less sensitive to noise and
    neighbours than a plain centre of mass.  The local background is the
    median of the cutout's border.

    Parameters
    ----------
    image : numpy.ndarray
        2-D image.
    x, y : array_like of int
        Starting positions (at least ``half`` pixels inside the image).
    half, sigma_w, iterations
        Cutout half-size, window width (px) and number of iterations.
    noise : float, optional
        Pixel noise of ``image``; when given the windowed S/N is returned.

    Returns
    -------
    cx, cy : numpy.ndarray
        Centroids in the image's pixel coordinates (NaN where undefined).
    snr : numpy.ndarray
        Signal-to-noise ratio of the windowed flux (only with ``noise``).
    """
    x = np.asarray(x, int)
    y = np.asarray(y, int)
    if x.size == 0:
        empty = (np.array([]), np.array([]))
        return empty if noise is None else empty + (np.array([]),)
    off = np.arange(-half, half + 1)
    cut = image[y[:, None, None] + off[None, :, None], x[:, None, None] + off[None, None, :]].astype(float)
    border = np.concatenate([cut[:, 0, :], cut[:, -1, :], cut[:, 1:-1, 0], cut[:, 1:-1, -1]], axis=1)
    cut = cut - np.median(border, axis=1)[:, None, None]
    yy, xx = np.meshgrid(off, off, indexing="ij")
    cx = np.zeros(x.size)
    cy = np.zeros(x.size)
    for _ in range(iterations):
        dx = xx[None] - cx[:, None, None]
        dy = yy[None] - cy[:, None, None]
        win = np.exp(-(dx**2 + dy**2) / (2 * sigma_w**2))
        w = win * cut
        s = w.sum(axis=(1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            cx = cx + 2 * (w * dx).sum(axis=(1, 2)) / s
            cy = cy + 2 * (w * dy).sum(axis=(1, 2)) / s
        bad = ~(s > 0) | (np.abs(cx) > half - 2) | (np.abs(cy) > half - 2)
        cx[bad] = np.nan
        cy[bad] = np.nan
    if noise is None:
        return x + cx, y + cy
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = s / (noise * np.sqrt((win**2).sum(axis=(1, 2))))
    snr[~np.isfinite(cx)] = np.nan
    return x + cx, y + cy, snr


def gaussian_centroid(image, x, y, half=7, sky_half=20):
    """Centroid of the source near ``(x, y)`` by a 2-D Gaussian fit.

    A ``(2 half + 1)``-pixel square cutout around the rounded position, less
    the median of a ``(2 sky_half + 1)``-pixel square (the local sky), is fitted
    with `photutils.centroids.centroid_2dg`.  The reference measurement of the
    alignment tests and benchmark.

    Returns
    -------
    (float, float)
        0-based ``x``, ``y`` on ``image``'s grid.
    """
    import warnings

    from photutils.centroids import centroid_2dg

    xi, yi = int(round(x)), int(round(y))
    cut = image[yi - half : yi + half + 1, xi - half : xi + half + 1]
    cut = cut - np.median(image[yi - sky_half : yi + sky_half + 1, xi - sky_half : xi + sky_half + 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cx, cy = centroid_2dg(cut)
    return cx + xi - half, cy + yi - half


def noise_factor(coords, order=1, size=64, seed=0):
    """Ratio of the pixel noise after resampling to the noise before.

    Interpolation averages neighbouring pixels, so white noise comes out with
    a lower per-pixel rms (and correlated between pixels): for bilinear
    interpolation with fractional shifts ``(fx, fy)`` the ratio is
    ``sqrt((fx^2 + (1-fx)^2) (fy^2 + (1-fy)^2))``, between 0.5 and 1.
    Measured here on white noise at the fractional shifts of the grid's
    corners and centre (averaged in variance).
    """
    ny, nx = coords.shape[1:]
    noise = np.random.default_rng(seed).normal(size=(size + 4, size + 4))
    base = np.mgrid[:size, :size].astype(float) + 2
    var = []
    for j, i in ((0, 0), (0, nx - 1), (ny - 1, 0), (ny - 1, nx - 1), (ny // 2, nx // 2)):
        frac = coords[:, j, i] - np.floor(coords[:, j, i])
        out = ndimage.map_coordinates(noise, base + frac[:, None, None], order=order, mode="nearest",
                                      prefilter=order > 1)
        var.append(out.var() / noise[2:-2, 2:-2].var())
    return float(np.sqrt(np.mean(var)))


def _jacobian(coords):
    """d(band y, band x)/d(r y, r x) at the centre of the grid."""
    ny, nx = coords.shape[1:]
    j, i = ny // 2, nx // 2
    return np.array([
        [coords[0, j + 1, i] - coords[0, j, i], coords[0, j, i + 1] - coords[0, j, i]],
        [coords[1, j + 1, i] - coords[1, j, i], coords[1, j, i + 1] - coords[1, j, i]],
    ])


def align_band(image, mask, band_wcs, ref_wcs, ref_shape, order=1, spacing=NODE_SPACING,
               ref_image=None, stars=None, min_stars=5, min_snr=20.0, significance=3.0,
               min_shift=0.1, max_refine=3.0):
    """Resample one band onto the reference grid, optionally refined on stars.

    The WCS of each SDSS frame is good to ~0.1 px in most fields but off by up
    to ~1 px between bands in some (e.g. 005405-6-0099, i band).  When
    ``ref_image`` and ``stars`` (integer r positions, see
    `find_alignment_stars`) are given, the band is first resampled through the
    WCS, the median residual shift of the stars (windowed centroids, band
    minus r) is measured, and if at least ``min_stars`` stars give a finite,
    plausible (< ``max_refine`` px) shift the band is resampled once more with
    that shift removed.  Only stars with a windowed S/N >= ``min_snr`` in
    both r and the band count, and the shift is applied only when it differs
    from zero by more than ``significance`` times its uncertainty (robust
    scatter of the stars / sqrt(n)) and is at least ``min_shift`` px: the
    SDSS WCS is good to ~0.1 px in most fields, and below that the centroid
    of an asymmetric PSF depends on the centroiding method (in the elongated-
    PSF field 008162-6-0080 a windowed centroid and a 2-D Gaussian fit
    disagree by ~0.15 px), so smaller corrections are not trusted.

    Returns
    -------
    data, mask : numpy.ndarray
        As `resample`.
    info : dict
        ``offset`` (dx, dy) total band-minus-r offset in band pixels at the
        grid centre, ``wcs_offset`` the part from the WCS alone,
        ``refine`` (dx, dy) the star-based correction in r pixels (0, 0 when
        not applied), ``nstars`` the number of stars used,
        ``residual`` median residual distance (px) of the stars after
        alignment, ``noise_factor`` the pixel-noise ratio after/before
        resampling (`noise_factor`).
    """
    coords, wcs_offset = reference_to_band_pixels(ref_wcs, band_wcs, ref_shape, spacing)
    data, out_mask = resample(image, mask, coords, order=order)
    info = {"offset": wcs_offset, "wcs_offset": wcs_offset, "refine": (0.0, 0.0), "nstars": 0,
            "residual": float("nan"), "noise_factor": noise_factor(coords, order)}
    if ref_image is None or stars is None or len(stars[0]) < min_stars:
        return data, out_mask, info
    sx, sy = stars
    ok = ~out_mask[sy, sx]
    sx, sy = sx[ok], sy[ok]
    rx, ry, rsn = windowed_centroids(ref_image, sx, sy, noise=_robust_sigma(ref_image))
    bx, by, bsn = windowed_centroids(data, sx, sy, noise=_robust_sigma(data, out_mask))  # 0 under mask
    with np.errstate(invalid="ignore"):
        good = (rsn >= min_snr) & (bsn >= min_snr)
    good &= np.isfinite(rx) & np.isfinite(bx) & np.isfinite(ry) & np.isfinite(by)
    info["nstars"] = int(good.sum())
    if good.sum() < min_stars:
        return data, out_mask, info
    ddx = bx[good] - rx[good]
    ddy = by[good] - ry[good]
    dx, dy = float(np.median(ddx)), float(np.median(ddy))
    info["residual"] = float(np.median(np.hypot(ddx, ddy)))
    # uncertainty of the median (robust scatter / sqrt(n), x 1.25 for the median)
    n = ddx.size
    ex = 1.2533 * 1.4826 * np.median(np.abs(ddx - dx)) / np.sqrt(n)
    ey = 1.2533 * 1.4826 * np.median(np.abs(ddy - dy)) / np.sqrt(n)
    significant = np.hypot(dx / max(ex, 1e-3), dy / max(ey, 1e-3)) > significance
    significant &= np.hypot(dx, dy) >= min_shift
    if not (abs(dx) < max_refine and abs(dy) < max_refine) or not significant:
        return data, out_mask, info
    jac = _jacobian(coords)
    shift = jac @ np.array([dy, dx])
    coords[0] += shift[0]
    coords[1] += shift[1]
    data, out_mask = resample(image, mask, coords, order=order)
    info["refine"] = (dx, dy)
    info["noise_factor"] = noise_factor(coords, order)
    info["offset"] = (wcs_offset[0] + float(shift[1]), wcs_offset[1] + float(shift[0]))
    info["residual"] = float(np.median(np.hypot(ddx - dx, ddy - dy)))
    return data, out_mask, info
