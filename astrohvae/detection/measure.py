"""Catalogue measurements beyond the segment photometry: shapes, Kron and PSF fluxes.

Two sources, neither re-implemented here:

* `photutils_measurements` -- `photutils.segmentation.SourceCatalog` on the
  project's own segmentation and background, in SourceExtractor's dual-image
  mode: the shape and the Kron aperture come from the detection image
  (`astrohvae.detection.detect.detection_image`, the inverse-variance weighted g+r+i
  mean the centroids ``x, y`` are measured on), the Kron flux of every band
  through that aperture (``detection_catalog=``).  Columns under photutils'
  own names: ``semimajor_axis``, ``semiminor_axis`` (the 1-sigma extent of
  the second moments; photutils < 3 called them ``semimajor_sigma`` /
  ``semiminor_sigma``), ``orientation``, ``ellipticity``, ``fwhm``,
  ``kron_radius`` and per band ``kron_flux_<b>``, ``kron_flux_err_<b>``.
* `stamp_measurements` -- from the 64x64x5 stamps the classifier reads:
  ``r_half`` and ``snr`` (`astrohvae.morphology.statistics.profile_features`, the classifier's
  own half-light radius and S/N) and per band ``psf_flux_<b>``,
  ``psf_flux_err_<b>``: the amplitude of the field's PSF
  (`astrohvae.morphology.psf.estimate_psf`, the estimate the classifier makes from the
  same stamps) fitted to the source.

`measure_catalog` runs both and returns the extra catalogue columns.
"""

from __future__ import annotations

import warnings

import numpy as np
from astropy.table import Table

from astrohvae import BANDS

__all__ = ['KRON_PARAMS', 'PHOTUTILS_SHAPE_COLUMNS', 'measure_catalog', 'photutils_measurements', 'psf_photometry', 'stamp_measurements']

KRON_PARAMS = (2.5, 1.4, 0.0)
"""photutils' (and SourceExtractor's) Kron parameters: aperture = 2.5 Kron radii, at least 1.4."""

PHOTUTILS_SHAPE_COLUMNS = ("semimajor_axis", "semiminor_axis", "orientation", "ellipticity", "fwhm",
                           "kron_radius")
"""Shape columns taken from the detection image's `SourceCatalog`, under photutils' names."""

_OLD_NAMES = {"semimajor_axis": "semimajor_sigma", "semiminor_axis": "semiminor_sigma",
              "kron_flux_err": "kron_fluxerr"}

PSF_FIT_RADIUS = 6.0
"""Pixels (from the recentred source centre) used in the PSF fit: ~2 FWHM of an SDSS PSF."""


def _value(cat, name):
    """A SourceCatalog property as a float array (Quantity units dropped; photutils 2 names as fallback)."""
    attr = name if hasattr(type(cat), name) else _OLD_NAMES[name]
    val = getattr(cat, attr)
    val = getattr(val, "value", val)
    return np.atleast_1d(np.asarray(val, dtype=np.float64))


def photutils_measurements(field, segm, background, detection_bands=("g", "r", "i"),
                           kron_params=KRON_PARAMS):
    """Shapes and Kron fluxes from `photutils.segmentation.SourceCatalog`.

    Parameters
    ----------
    field : astrohvae.io.field.Field
    segm : photutils.segmentation.SegmentationImage
        Labels 1..N on the field's grid.
    background : astrohvae.detection.background.Background
    detection_bands : sequence of str
        Bands of the detection image (shape and Kron aperture).
    kron_params : tuple
        ``kron_params`` of `SourceCatalog`.

    Returns
    -------
    astropy.table.Table
        One row per label of ``segm`` in label order: ``id``, the
        `PHOTUTILS_SHAPE_COLUMNS` (pixels; ``orientation`` in degrees
        counter-clockwise from +x, in [0, 360) as photutils gives it), and
        ``kron_flux_<b>``, ``kron_flux_err_<b>`` (nanomaggies) per band; NaN
        where photutils gives no value (e.g. a Kron aperture with no valid
        pixel in that band).
    """
    from photutils.segmentation import SourceCatalog

    from astrohvae.detection.detect import detection_image

    det, noise = detection_image(field, background, detection_bands)
    det_mask = ~np.isfinite(noise)
    out = Table()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcat = SourceCatalog(det, segm, error=np.where(det_mask, 0, noise), mask=det_mask,
                             kron_params=kron_params)
        out["id"] = np.asarray(dcat.labels, np.int32)
        for name in PHOTUTILS_SHAPE_COLUMNS:
            out[name] = _value(dcat, name).astype(np.float32)
        for i, b in enumerate(field.bands):
            data = field.data[i] - background.level[i]
            bcat = SourceCatalog(data, segm, error=background.rms[i], mask=field.mask[i],
                                 detection_catalog=dcat)
            out[f"kron_flux_{b}"] = _value(bcat, "kron_flux").astype(np.float32)
            out[f"kron_flux_err_{b}"] = _value(bcat, "kron_flux_err").astype(np.float32)
    for name in ("semimajor_axis", "semiminor_axis", "fwhm", "kron_radius"):
        out[name].unit = "pix"
    out["orientation"].unit = "deg"
    return out


def psf_photometry(stamps, psf_image, radius=PSF_FIT_RADIUS):
    """PSF-fit flux and its error per band.

    The band's PSF image (normalised to unit flux) is shifted onto the
    stamp's g+r+i centroid (`astrohvae.morphology.statistics.centroids`, as `psf_match` uses),
    then its amplitude is fitted by least squares over the pixels within ``radius`` that
    are neither another source's nor invalid: ``F = sum(P I) / sum(P^2)``,
    ``sigma_F = sigma_sky / sqrt(sum P^2)``.

    Parameters
    ----------
    stamps : StampSet-like (numpy arrays)
    psf_image : ndarray (B, ny, nx)
        The field's PSF per band (`astrohvae.morphology.psf.PSFModel.image`).
    radius : float
        Fit radius in pixels.

    Returns
    -------
    flux, err : ndarray (N, B) float32
        NaN in a band with no usable pixel within ``radius``.
    """
    from astrohvae.morphology.psf import PSF_HALF
    from astrohvae.morphology.statistics import centroids, radius_grid, recentre
    from astrohvae.stamps.preprocess import central_window, clean_gri, clean_stamps

    flux = np.asarray(stamps.flux, dtype=np.float32)
    mask = np.asarray(stamps.mask, dtype=np.uint8)
    sky = np.asarray(stamps.sky_sigma, dtype=np.float64)
    n, nb, ny, nx = flux.shape
    dy, dx = centroids(clean_gri(flux, mask))
    # the PSF (not the stamp) is shifted onto the source's centroid: a 25x25
    # Fourier shift per band instead of the whole 64x64 stamp's
    pwin = central_window(ny, nx, PSF_HALF)
    p = np.asarray(psf_image, dtype=np.float32)[(slice(None),) + pwin]
    with np.errstate(invalid="ignore", divide="ignore"):
        p = p / p.sum(axis=(1, 2), keepdims=True)
    p = recentre(np.ascontiguousarray(np.broadcast_to(p, (n,) + p.shape)), -dy, -dx).astype(np.float64)
    h = int(np.ceil(radius))
    win = central_window(ny, nx, h)
    img = clean_stamps(flux, mask, window=win).astype(np.float64)
    c = PSF_HALF - (ny // 2 - win[0].start), PSF_HALF - (nx // 2 - win[1].start)
    p = p[:, :, c[0]:c[0] + img.shape[2], c[1]:c[1] + img.shape[3]]
    r = radius_grid(img.shape[2], img.shape[3], ny // 2 - win[0].start, nx // 2 - win[1].start)
    # good pixels: within the radius, not another source's, valid in every band
    fit = (r <= radius)[None] & ((mask[(slice(None),) + win] & 6) == 0)
    pp = (p**2 * fit[:, None]).sum(axis=(2, 3))
    pi = (p * img * fit[:, None]).sum(axis=(2, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        f = np.where(pp > 0, pi / pp, np.nan)
        e = np.where(pp > 0, sky / np.sqrt(pp), np.nan)
    bad = ~np.isfinite(sky) | (sky <= 0)
    f[bad] = e[bad] = np.nan
    return f.astype(np.float32), e.astype(np.float32)


def stamp_measurements(stamps, psf=None):
    """``r_half``, ``snr`` and the PSF fluxes of every stamp.

    Parameters
    ----------
    stamps : StampSet-like, possibly dask/zarr-backed (read chunk by chunk)
    psf : astrohvae.morphology.psf.PSFModel or ndarray (B, ny, nx), optional
        The field's PSF; default `astrohvae.morphology.psf.estimate_psf` on ``stamps``
        (the classifier's estimate).  When it cannot be estimated (too few
        bright sources) the PSF columns are NaN.

    Returns
    -------
    astropy.table.Table
        ``r_half`` (pixels, g+r+i, within 8 px, other sources masked),
        ``snr`` (g+r+i flux in the own segment over its noise) and per band
        ``psf_flux_<b>``, ``psf_flux_err_<b>`` (nanomaggies).
    """
    from astrohvae.morphology.psf import estimate_psf, saturated
    from astrohvae.morphology.statistics import chunked_statistics, profile_features

    feat, sat = chunked_statistics(stamps, profile_features, saturated)
    n = len(feat["r_half"])
    image = getattr(psf, "image", psf)
    if image is None and n:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                image = estimate_psf(stamps, features=feat, saturated_flags=sat).image
        except ValueError:
            image = None
    out = Table()
    out["r_half"] = np.asarray(feat["r_half"], np.float32)
    out["r_half"].unit = "pix"
    out["snr"] = np.asarray(feat["snr"], np.float32)
    nb = len(BANDS)
    if image is not None and n:
        fit = chunked_statistics(stamps, lambda c: dict(zip("fe", psf_photometry(c, image))))[0]
        f, e = fit["f"], fit["e"]
    else:
        f = e = np.full((n, nb), np.nan, np.float32)
    for k, b in enumerate(BANDS):
        out[f"psf_flux_{b}"] = f[:, k]
    for k, b in enumerate(BANDS):
        out[f"psf_flux_err_{b}"] = e[:, k]
    return out


def measure_catalog(field, segm, background, stamps, psf=None):
    """All extra catalogue columns of one field, in label order.

    Parameters
    ----------
    field, segm, background
        As for `photutils_measurements`.
    stamps : StampSet-like
        The field's stamps, row i = label i+1.
    psf : optional
        See `stamp_measurements`.

    Returns
    -------
    astropy.table.Table
        `photutils_measurements` columns (without ``id``) followed by the
        `stamp_measurements` columns.
    """
    ph = photutils_measurements(field, segm, background)
    st = stamp_measurements(stamps, psf)
    if len(ph) != len(st):
        raise ValueError(f"{len(ph)} segments but {len(st)} stamps")
    ph.remove_column("id")
    for name in st.colnames:
        ph[name] = st[name]
    return ph
