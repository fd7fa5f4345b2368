"""Catalogue measurements (astrohvae.measure), bands without data, luptitude errors."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from astrohvae import BANDS
from astrohvae.io.field import Field
from astrohvae.detection.measure import measure_catalog, psf_photometry
from astrohvae.photometry import luptitude, luptitude_err
from astrohvae.conventions import FLAG_FEW_BANDS
from astrohvae.detection.background import estimate_background
from astrohvae.detection.detect import detect
from astrohvae.detection.sources import measure_sources
from astrohvae.stamps.cutouts import StampSet, cut_stamps

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sdss" / "fields"
REAL = DATA / "004510-4-0030"


def _real_data_or_skip():
    if not REAL.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{REAL} absent under CI")
        pytest.skip(f"{REAL} absent (../shared/data)")


def test_luptitude_err_is_the_derivative():
    f = np.array([3000.0, 20.0, 1.0, 0.0, -2.0])
    e = np.array([5.0, 1.0, 0.5, 0.5, 0.5])
    for b in BANDS:
        h = 1e-4
        num = np.abs(luptitude(f + h, b) - luptitude(f - h, b)) / (2 * h) * e
        assert np.allclose(luptitude_err(f, e, b), num, rtol=1e-5)
    # bright end: Pogson's 1.0857 sigma/f
    assert luptitude_err(3000.0, 3.0, "r") == pytest.approx(1.0857362 * 1e-3, rel=1e-4)


def _psf(gaussian_source, ny=64, nx=64, fwhm=3.4):
    return np.stack([gaussian_source((ny, nx), nx // 2, ny // 2, 1.0, fwhm)] * len(BANDS))


def test_psf_photometry_recovers_known_fluxes(gaussian_source):
    rng = np.random.default_rng(3)
    n, size, sigma = 40, 64, 0.02
    flux_true = rng.uniform(5, 200, (n, len(BANDS)))
    off = rng.uniform(-0.5, 0.5, (n, 2))
    flux = np.zeros((n, len(BANDS), size, size), np.float32)
    for k in range(n):
        img = gaussian_source((size, size), 32 + off[k, 0], 32 + off[k, 1], 1.0, 3.4)
        flux[k] = flux_true[k, :, None, None] * img[None] + rng.normal(0, sigma, (len(BANDS), size, size))
    mask = np.zeros((n, size, size), np.uint8)
    sky = np.full((n, len(BANDS)), sigma, np.float32)
    st = StampSet(flux, mask, sky, _meta(n))
    f, e = psf_photometry(st, _psf(gaussian_source))
    assert np.abs(np.median(f / flux_true) - 1) < 0.01
    assert np.percentile(np.abs(f / flux_true - 1), 95) < 0.03
    # where the noise dominates the centring systematics, the error is the scatter
    faint = flux_true < 30
    pull = ((f - flux_true) / e)[faint]
    assert faint.sum() > 20 and 0.7 < np.std(pull) < 1.4
    # a band whose pixels are all invalid gives NaN
    st.sky_sigma[0, 1] = np.nan
    f2, e2 = psf_photometry(st, _psf(gaussian_source))
    assert np.isnan(f2[0, 1]) and np.isnan(e2[0, 1]) and np.isfinite(f2[0, 0])


def _meta(n):
    from astropy.table import Table

    return Table({"field": ["t"] * n, "id": np.arange(1, n + 1, dtype=np.int32)})


def _toy_field(gaussian_source, noise_cube, masked_band=None):
    shape = (120, 160)
    cube = noise_cube(shape, seed=1)
    for x, y, fl, fw in ((40, 60, 30.0, 3.0), (110, 50, 15.0, 6.0), (130, 95, 8.0, 3.0)):
        src = gaussian_source(shape, x, y, fl, fw)
        cube += src[None]
    mask = np.zeros(cube.shape, bool)
    if masked_band is not None:  # no data in that band left of x = 80 (an SDSS edge strip)
        mask[BANDS.index(masked_band), :, :80] = True
        cube[BANDS.index(masked_band), :, :80] = 0
    return Field(cube, mask, name="toy")


def test_band_without_data_is_nan_and_flagged(gaussian_source, noise_cube):
    field = _toy_field(gaussian_source, noise_cube, masked_band="g")
    bkg = estimate_background(field)
    segm = detect(field, bkg)
    src = measure_sources(field, segm, bkg)
    left = np.asarray(src["x"]) < 70
    right = np.asarray(src["x"]) > 90
    assert left.any() and right.any()
    for col in ("flux_g", "flux_err_g", "mag_g", "mag_err_g"):
        assert np.isnan(src[col][left]).all(), col
        assert np.isfinite(src[col][right]).all(), col
    assert (src["nbands"][left] == 4).all() and (src["nbands"][right] == 5).all()
    assert (src["bands"][left] == 1 + 4 + 8 + 16).all() and (src["bands"][right] == 31).all()
    assert (src["flags"][left] & FLAG_FEW_BANDS).all() and not (src["flags"][right] & FLAG_FEW_BANDS).any()
    assert np.isfinite(src["flux_r"]).all()


def test_measure_catalog_columns_and_shapes(gaussian_source, noise_cube):
    field = _toy_field(gaussian_source, noise_cube)
    bkg = estimate_background(field)
    segm = detect(field, bkg)
    segm.relabel_consecutive()
    src = measure_sources(field, segm, bkg)
    st = cut_stamps(field, segm, src, bkg)
    extra = measure_catalog(field, segm, bkg, st, psf=_psf(gaussian_source, fwhm=3.0))
    assert len(extra) == len(src) == 3
    # the extended source (FWHM 6) is larger than the two point sources (FWHM 3) in every size measure
    big = int(np.argmax(np.asarray(extra["fwhm"])))
    assert abs(src["x"][big] - 110) < 2
    for col in ("semimajor_axis", "kron_radius", "r_half"):
        assert np.argmax(np.asarray(extra[col])) == big, col
    # fluxes: Kron and PSF flux of the bright point source near its true 30 nmgy
    bright = int(np.argmin(np.hypot(src["x"] - 40, src["y"] - 60)))
    for b in BANDS:
        assert extra[f"kron_flux_{b}"][bright] == pytest.approx(30.0, rel=0.08)
        assert extra[f"psf_flux_{b}"][bright] == pytest.approx(30.0, rel=0.05)
    assert extra["snr"][bright] > 100


def test_photutils_columns_equal_sourcecatalog_on_real_field():
    _real_data_or_skip()
    from photutils.segmentation import SegmentationImage, SourceCatalog

    from astrohvae.pipeline.field import process_field
    from astrohvae.pipeline.inputs import read_input
    from astrohvae.pipeline.loading import load_classifier
    from astrohvae.detection.detect import detection_image

    field = read_input(REAL)
    prod = process_field(field, load_classifier(), segmenter=None)
    t = prod.table
    bkg = estimate_background(field)
    segm = SegmentationImage(prod.segmap)
    det, noise = detection_image(field, bkg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcat = SourceCatalog(det, segm, error=np.where(np.isfinite(noise), noise, 0), mask=~np.isfinite(noise))
        ref = dcat.to_table(columns=["label", "semimajor_axis", "semiminor_axis", "orientation", "ellipticity",
                                     "fwhm", "kron_radius"])
        assert np.array_equal(np.asarray(ref["label"]), np.asarray(t["id"]))
        for col in ("semimajor_axis", "semiminor_axis", "orientation", "ellipticity", "fwhm", "kron_radius"):
            want = np.asarray(getattr(ref[col], "value", ref[col]), np.float32)
            np.testing.assert_allclose(np.asarray(t[col]), want, rtol=1e-5, atol=1e-6, err_msg=col)
        for i, b in enumerate(BANDS):
            bcat = SourceCatalog(field.data[i] - bkg.level[i], segm, error=bkg.rms[i], mask=field.mask[i],
                                 detection_catalog=dcat)
            np.testing.assert_allclose(np.asarray(t[f"kron_flux_{b}"]), np.asarray(bcat.kron_flux, np.float32),
                                       rtol=1e-5, atol=1e-6, equal_nan=True)
            np.testing.assert_allclose(np.asarray(t[f"kron_flux_err_{b}"]),
                                       np.asarray(bcat.kron_flux_err, np.float32), rtol=1e-5, atol=1e-6,
                                       equal_nan=True)
    # issue 13: rows without g data (the field's g edge strip) say so
    no_g = (np.asarray(t["bands"]) & 2) == 0
    assert no_g.any()
    assert np.isnan(t["flux_g"][no_g]).all() and np.isnan(t["mag_g"][no_g]).all()
    assert (t["flags"][no_g] & FLAG_FEW_BANDS).all() and (t["nbands"][no_g] < 5).all()
    assert np.isfinite(t["mag_g"][~no_g]).all()
    # stars: the PSF flux agrees with the Kron flux (ratio of the bright point sources ~1)
    star = (t["class"] == "star") & (t["snr"] > 100) & (t["flags"] == 0)
    ratio = np.median(np.asarray(t["psf_flux_r"][star]) / np.asarray(t["kron_flux_r"][star]))
    assert 0.9 < ratio < 1.15
