"""Tests of the opt-in colour likelihood of astrohvae.classify (PSF colours, templates, llr)."""

import numpy as np
import pytest
import torch

from astrohvae import BANDS
from astrohvae.classify.hierarchical import HierarchicalClassifier
from astrohvae.morphology.physical import (
    COLOUR_CLIP,
    colour_llr,
    colour_templates,
    physical_statistics,
    psf_colours,
)
from astrohvae.photometry import luptitude
from astropy.table import Table

from astrohvae.stamps.cutouts import StampSet

torch.set_num_threads(1)


def _moffat(size=64, fwhm=3.5, beta=3.0, dx=0.0, dy=0.0):
    yy, xx = np.mgrid[:size, :size].astype(float)
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    p = (1 + ((xx - size // 2 - dx) ** 2 + (yy - size // 2 - dy) ** 2) / alpha**2) ** -beta
    return p / p.sum()


def _point_sources(fluxes, sky, fwhm_per_band, rng, dx=0.3, dy=-0.2):
    n = len(fluxes)
    flux = np.zeros((n, 5, 64, 64), "f4")
    for b in range(5):
        flux[:, b] = fluxes[:, b, None, None] * _moffat(fwhm=fwhm_per_band[b], dx=dx, dy=dy)
    flux += rng.normal(0, 1, flux.shape).astype("f4") * sky[None, :, None, None]
    mask = np.zeros((n, 64, 64), "u1")
    mask[:, 24:41, 24:41] = 1
    return StampSet(flux, mask, np.tile(sky, (n, 1)).astype("f4"), Table({"field": ["t"] * n}))


def test_psf_colours_recover_true_colours_whatever_the_seeing_per_band():
    rng = np.random.default_rng(0)
    fwhm = np.array([4.6, 4.1, 3.5, 3.3, 3.2])  # u worst, as on real data
    true = np.array([40.0, 120.0, 200.0, 260.0, 300.0])  # nmgy, bright
    sky = np.full(5, 0.02, "f4")
    st = _point_sources(np.tile(true, (20, 1)), sky, fwhm, rng)
    psf = np.stack([_moffat(fwhm=f) for f in fwhm])
    out = psf_colours(st, psf)
    want = -np.diff([luptitude(true[k], b) for k, b in enumerate(BANDS)])
    np.testing.assert_allclose(np.median(out[:, :4], axis=0), want, atol=0.02)
    # errors: small and positive for bright sources, and they follow the sky noise
    assert np.all(out[:, 4:] > 0) and np.all(out[:, 4:] < 0.01)
    st_noisy = _point_sources(np.tile(true, (20, 1)), sky * 20, fwhm, rng)
    assert np.all(psf_colours(st_noisy, psf)[:, 4:] > 10 * out[:, 4:])


def test_colour_llr_sign_and_error_convolution():
    rng = np.random.default_rng(1)
    t = rng.uniform(0, 1, 400)
    stars = np.c_[1.0 + t, 0.3 + 0.8 * t, 0.1 + 0.3 * t, 0.05 + 0.1 * t] + rng.normal(0, 0.03, (400, 4))
    gals = np.c_[1.2, 0.5, 0.6, 0.4] + rng.normal(0, 0.08, (400, 4))
    cols = np.r_[stars, gals]
    is_star = np.r_[np.ones(400, bool), np.zeros(400, bool)]
    tpl = colour_templates(cols, is_star, ~is_star, seed=0)
    err = np.full((800, 4), 0.01)
    llr = colour_llr(tpl, cols, err)
    assert np.median(llr[is_star]) < -5 and np.median(llr[~is_star]) > 5
    # with huge colour errors both densities are flat: no colour evidence either way
    big = colour_llr(tpl, cols, np.full((800, 4), 20.0))
    assert np.all(np.abs(big) < 0.1)
    # too few template sources: no templates
    few = np.zeros(800, bool)
    few[:5] = True
    assert colour_templates(cols, few, ~is_star) is None


def test_physical_statistics_columns(make_toy_stamps):
    st = make_toy_stamps(120, seed=3, mag_range=(16, 20))
    full = physical_statistics(st)
    assert full.shape == (120, 16) and np.isfinite(full).all()
    np.testing.assert_allclose(physical_statistics(st, colours=False), full[:, :8], atol=1e-6)


@pytest.fixture(scope="module")
def colour_fitted(make_toy_stamps):
    train = make_toy_stamps(360, seed=10, mag_range=(16, 20.5))
    return HierarchicalClassifier(ae_epochs=1, vae_epochs=10, colour_prior=True, random_state=0).fit(train)


def test_colour_prior_round_trip_and_clip(colour_fitted, tmp_path, make_toy_stamps):
    test = make_toy_stamps(150, seed=11, mag_range=(16, 20.5))
    clf = colour_fitted
    assert clf.colour_templates_ is not None
    t = clf.transform(test)
    assert "colour_llr" in t and t["colour_llr"].shape == (150,)
    p = clf.predict_proba(test)
    # the colour term moves the log odds by at most COLOUR_CLIP
    p0 = np.clip(clf._posterior(t["z_hvae"][:, 0], t["z_hvae_sigma"][:, 0])[:, 1 - clf.star_peak_], 1e-4, 1 - 1e-4)
    d = np.log(p / (1 - p)) - np.log(p0 / (1 - p0))
    assert np.all(np.abs(d) <= COLOUR_CLIP + 1e-3)
    assert np.abs(d).max() > 0  # and it does move them
    clf.save(tmp_path / "w")
    back = HierarchicalClassifier.load(tmp_path / "w", device="cpu")
    assert back.colour_prior and back.colour_templates_ is not None
    np.testing.assert_allclose(back.predict_proba(test), p, atol=1e-5)


def test_default_colour_term_is_the_locus_one():
    # the former template colour likelihood stays opt-in (colour_prior=True); the default is the
    # flux-space stellar-locus term (tests/test_classify_locus.py)
    assert HierarchicalClassifier().colour_prior == "locus"


def test_noise_scale_measures_correlated_noise():
    from astrohvae.morphology.physical import noise_scale

    rng = np.random.default_rng(2)
    n = 200
    sky = np.full(5, 0.05, "f4")
    white = rng.normal(0, 1, (n, 5, 64, 64)).astype("f4")
    # band 1 smoothed by a 2x2 box (like resampling onto another grid), renormalised to the same pixel sigma
    sm = (white[:, 1] + np.roll(white[:, 1], 1, -1) + np.roll(white[:, 1], 1, -2)
          + np.roll(np.roll(white[:, 1], 1, -1), 1, -2)) / 2.0
    img = white.copy()
    img[:, 1] = sm
    st = StampSet(img * sky[None, :, None, None], np.zeros((n, 64, 64), "u1"), np.tile(sky, (n, 1)),
                  Table({"field": ["t"] * n}))
    k = noise_scale(st, np.stack([_moffat()] * 5))
    assert np.all(np.abs(k[[0, 2, 3, 4]] - 1.0) < 0.1)  # white noise: the formula is right
    assert 1.6 < k[1] < 2.4  # correlated: a PSF-sized sum is ~2x noisier than white noise predicts
    # too few blank positions: None
    assert noise_scale(st[:5], np.stack([_moffat()] * 5)) is None
