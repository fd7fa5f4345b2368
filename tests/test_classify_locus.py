"""Tests of the default colour term of the A+Vr classifier: PSF fluxes against the physical stellar locus."""

import numpy as np
import pytest
import torch
from astropy.table import Table

from astrohvae.classify.hierarchical import HierarchicalClassifier
from astrohvae.morphology.physical import (
    COLOUR_CLIP,
    galaxy_seds,
    locus_llr,
    psf_fluxes,
    sed_loglik,
)
from astrohvae.photometry import colour_seds
from astrohvae.stamps.cutouts import StampSet

torch.set_num_threads(1)

M_DWARF = (2.6, 1.45, 1.2, 0.58)  # u-g, g-r, r-i, i-z on the stellar locus (M dwarf)
HALO = (1.02, 0.30, 0.09, 0.02)  # F/G halo star
RED_GALAXY = (1.9, 1.45, 0.55, 0.40)  # early-type galaxy at z ~ 0.4: as red in g-r as an M dwarf, not in r-i
BLUE_GALAXY = (1.15, 0.60, 0.40, 0.35)


def _fluxes(colours, r_flux, sigma, n, rng):
    """(n, 10) PSF fluxes and errors of sources of the given colours, r flux and per-band errors."""
    true = colour_seds(np.tile(colours, (n, 1))) * r_flux
    sig = np.tile(sigma, (n, 1))
    return np.c_[true + rng.normal(0, 1, true.shape) * sig, sig]


@pytest.fixture(scope="module")
def faint_sets():
    """Point sources and galaxies at r-band S/N 10 (r ~ 22.6 on SDSS frames), each band's error as SDSS's."""
    rng = np.random.default_rng(0)
    sigma = np.array([0.35, 0.10, 0.09, 0.12, 0.45])  # nanomaggies, u and z noisier (SDSS-like)
    r_flux = 0.9  # S/N 10 in r
    return {name: _fluxes(c, r_flux, sigma, 300, rng)
            for name, c in (("mdwarf", M_DWARF), ("halo", HALO), ("red", RED_GALAXY), ("blue", BLUE_GALAXY))}


def _galaxy_templates(rng):
    cols = np.r_[np.tile(RED_GALAXY, (60, 1)), np.tile(BLUE_GALAXY, (60, 1))] + rng.normal(0, 0.05, (120, 4))
    return colour_seds(cols)


def test_locus_llr_classifies_faint_sources_by_their_fluxes(faint_sets):
    g = _galaxy_templates(np.random.default_rng(1))
    llr = {k: locus_llr(v, g) for k, v in faint_sets.items()}
    # faint stars on the locus (an M dwarf barely seen in u, a blue halo star) favour star ...
    assert np.median(llr["mdwarf"]) < -1.0 and np.median(llr["halo"]) < -1.0
    assert (llr["mdwarf"] < 0).mean() > 0.8 and (llr["halo"] < 0).mean() > 0.7
    # ... galaxies off the locus favour galaxy
    assert np.median(llr["red"]) > 1.0 and np.median(llr["blue"]) > 0.5
    # with no flux information there is no colour evidence
    blind = faint_sets["mdwarf"].copy()
    blind[:, 5:] = 1e6
    assert np.all(np.abs(locus_llr(blind, g)) < 0.05)
    # unmeasured (saturated) sources: 0
    nan = faint_sets["mdwarf"][:3].copy()
    nan[:] = np.nan
    assert np.all(locus_llr(nan, g) == 0.0)


def test_sed_loglik_is_the_amplitude_marginal_of_a_gaussian():
    """Known answer: one template, no scatter, against a numerical integral over the amplitude."""
    s = np.array([[0.2, 0.5, 1.0, 1.3, 1.5]])
    f = np.array([0.3, 0.4, 1.1, 1.2, 1.9])
    sig = np.array([0.3, 0.1, 0.1, 0.15, 0.4])
    got = sed_loglik(np.r_[f, sig][None], s, [1.0], scatter=0.0)[0]
    a = np.linspace(0, 20, 200001)
    ll = -0.5 * (((f[None] - a[:, None] * s) / sig) ** 2).sum(1) - np.log(sig).sum() - 2.5 * np.log(2 * np.pi)
    want = np.log(np.trapezoid(np.exp(ll), a))
    assert got == pytest.approx(want, abs=1e-4)


def test_galaxy_seds_normalised_and_capped():
    rng = np.random.default_rng(3)
    fx = np.c_[rng.uniform(0.5, 5, (1000, 5)), np.ones((1000, 5))]
    sel = np.ones(1000, bool)
    g = galaxy_seds(fx, sel, seed=0)
    assert g.shape == (400, 5) and np.allclose(g[:, 2], 1.0)
    assert galaxy_seds(fx, np.arange(1000) < 5) is None


def _moffat(size=64, fwhm=3.5, beta=3.0):
    yy, xx = np.mgrid[:size, :size].astype(float)
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    p = (1 + ((xx - size // 2) ** 2 + (yy - size // 2) ** 2) / alpha**2) ** -beta
    return p / p.sum()


def test_psf_fluxes_recover_fluxes_and_their_errors():
    rng = np.random.default_rng(4)
    fwhm = np.array([4.6, 4.1, 3.5, 3.3, 3.2])
    psf = np.stack([_moffat(fwhm=f) for f in fwhm])
    true = np.array([1.0, 3.0, 5.0, 6.0, 7.0])
    sky = np.full(5, 0.05, "f4")
    n = 400
    flux = (true[None, :, None, None] * psf[None] + rng.normal(0, 1, (n, 5, 64, 64)) * sky[None, :, None, None])
    st = StampSet(flux.astype("f4"), np.zeros((n, 64, 64), "u1"), np.tile(sky, (n, 1)), Table({"field": ["t"] * n}))
    out = psf_fluxes(st, psf)
    # the measured scatter matches the stated error; the mean is the true flux (centroiding aside)
    np.testing.assert_allclose(np.std(out[:, :5], axis=0) / np.median(out[:, 5:], axis=0), 1.0, atol=0.15)
    np.testing.assert_allclose(np.median(out[:, :5], axis=0), true, rtol=0.05)


@pytest.fixture(scope="module")
def locus_fitted(make_toy_stamps):
    train = make_toy_stamps(360, seed=10, mag_range=(16, 20.5))
    return HierarchicalClassifier(ae_epochs=1, vae_epochs=10, random_state=0).fit(train)


def test_locus_default_round_trip_and_weighting(locus_fitted, tmp_path, make_toy_stamps):
    clf = locus_fitted
    assert clf.colour_prior == "locus" and clf.galaxy_seds_ is not None and clf.colour_templates_ is None
    test = make_toy_stamps(150, seed=11, mag_range=(16, 23))
    t = clf.transform(test)
    assert {"colour_llr", "morph_weight", "spread_llr"} <= set(t)
    p = clf.predict_proba(test)
    # p_galaxy = sigmoid(w(S/N) logit(p_morph) + clip(llr) + (1 - w) spread_llr), w = S/N / (S/N + MORPH_SNR)
    p0 = np.clip(clf._posterior(t["z_hvae"][:, 0], t["z_hvae_sigma"][:, 0])[:, 1 - clf.star_peak_], 1e-4, 1 - 1e-4)
    if "p_galaxy_marginal" in t:
        p0 = np.where(np.isfinite(t["p_galaxy_marginal"]), np.clip(t["p_galaxy_marginal"], 1e-4, 1 - 1e-4), p0)
    want = 1 / (1 + np.exp(-(np.log(p0 / (1 - p0)) * t["morph_weight"]
                             + np.clip(t["colour_llr"], -COLOUR_CLIP, COLOUR_CLIP)
                             + (1 - t["morph_weight"]) * t["spread_llr"])))
    np.testing.assert_allclose(p, want, atol=1e-5)
    assert np.all((t["morph_weight"] >= 0) & (t["morph_weight"] < 1))
    # the colour evidence is clipped, then weighted by 1 / (1 + S/N / colour_snr)
    snr = clf.morph_snr * t["morph_weight"] / (1 - t["morph_weight"])
    assert np.all(np.abs(t["colour_llr"]) <= COLOUR_CLIP / (1 + snr / clf.colour_snr) + 1e-4)
    clf.save(tmp_path / "w")
    back = HierarchicalClassifier.load(tmp_path / "w", device="cpu")
    assert back.colour_prior == "locus"
    np.testing.assert_allclose(back.galaxy_seds_, clf.galaxy_seds_)
    np.testing.assert_allclose(back.predict_proba(test), p, atol=1e-5)


def test_weights_saved_without_the_option_keep_their_answers(locus_fitted, tmp_path, make_toy_stamps):
    """Weights whose config says colour_prior=False (the former default) load without a colour term."""
    import json

    clf = locus_fitted
    clf.save(tmp_path / "w")
    cfg = json.loads((tmp_path / "w" / "config.json").read_text())
    cfg["params"]["colour_prior"] = False
    (tmp_path / "w" / "config.json").write_text(json.dumps(cfg))
    old = HierarchicalClassifier.load(tmp_path / "w", device="cpu")
    assert old.galaxy_seds_ is None
    test = make_toy_stamps(60, seed=12, mag_range=(16, 22))
    t = old.transform(test)
    assert "colour_llr" not in t and "morph_weight" not in t
    p0 = old._posterior(t["z_hvae"][:, 0], t["z_hvae_sigma"][:, 0])[:, 1 - old.star_peak_]
    if "p_galaxy_marginal" in t:
        p0 = np.where(np.isfinite(t["p_galaxy_marginal"]), t["p_galaxy_marginal"], p0)
    np.testing.assert_allclose(old.predict_proba(test), p0, atol=1e-6)


def test_faint_stars_and_compact_galaxies_separate_better_with_the_locus_term(locus_fitted):
    """Known answer on rendered stamps at r-band S/N ~ 8-15: M dwarfs and halo stars (the PSF) against
    compact red and blue galaxies (a PSF 1.3 times wider, hard to tell by shape at this S/N): the
    locus term separates them better than the morphology-only classifier, and labels more stars star."""
    import copy

    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(5)
    clf = copy.copy(locus_fitted)
    clf.galaxy_seds_ = _galaxy_templates(np.random.default_rng(6))
    morph_only = copy.copy(clf)
    morph_only.galaxy_seds_ = None
    n = 240
    is_gal = np.arange(n) >= n // 2
    k = np.arange(n) % 2 == 0
    cols = np.where(is_gal[:, None], np.where(k[:, None], RED_GALAXY, BLUE_GALAXY), np.where(k[:, None], M_DWARF, HALO))
    sky = np.array([0.035, 0.012, 0.012, 0.016, 0.05], "f4")  # nanomaggies per pixel, SDSS-like
    true = colour_seds(cols) * rng.uniform(0.55, 1.1, n)[:, None]  # r-band S/N ~ 8-15 at this sky
    shape = np.where(is_gal[:, None, None], _moffat(fwhm=4.5)[None], _moffat(fwhm=3.5)[None])
    flux = true[:, :, None, None] * shape[:, None] + rng.normal(0, 1, (n, 5, 64, 64)) * sky[None, :, None, None]
    mask = np.zeros((n, 64, 64), "u1")
    mask[:, 26:39, 26:39] = 1
    st = StampSet(flux.astype("f4"), mask, np.tile(sky, (n, 1)), Table({"field": ["faint"] * n}))
    p_new, p_old = clf.predict_proba(st), morph_only.predict_proba(st)
    auc_new, auc_old = roc_auc_score(is_gal, p_new), roc_auc_score(is_gal, p_old)
    assert auc_new > auc_old + 0.05, (auc_new, auc_old)
    assert (p_new[~is_gal] < 0.5).mean() >= (p_old[~is_gal] < 0.5).mean()
    # the noise-aware SPREAD_MODEL term: these galaxies are 1.3 times wider than the PSF, a few
    # sigma in SPREAD_MODEL at this S/N: it adds to the separation, and labels more of the stars star
    no_spread = copy.copy(clf)
    no_spread.spread_term = False
    p_ns = no_spread.predict_proba(st)
    auc_ns = roc_auc_score(is_gal, p_ns)
    assert auc_new >= auc_ns, (auc_new, auc_ns)
    assert (p_new[~is_gal] < 0.5).mean() >= (p_ns[~is_gal] < 0.5).mean()
    assert (p_new[is_gal] < 0.5).mean() < (p_ns[is_gal] < 0.5).mean()


def test_spread_galaxies_recovers_the_galaxy_component_and_spread_llr_is_noise_aware():
    from astrohvae.morphology.physical import (
        SPREAD_ERR_SCALE,
        SPREAD_FLOOR,
        SPREAD_GALAXY_MIN_WIDTH,
        spread_galaxies,
        spread_llr,
    )

    rng = np.random.default_rng(0)
    n_star, n_gal = 600, 900
    snr = rng.uniform(6, 45, n_star + n_gal)
    err = 0.04 / snr  # a point source's SPREADERR_MODEL at that S/N (`psf_match`)
    true = np.r_[np.zeros(n_star), rng.normal(0.010, 0.004, n_gal)]
    sd = np.sqrt((err * SPREAD_ERR_SCALE) ** 2 + SPREAD_FLOOR**2)
    spread = true + rng.normal(0.0, 1.0, len(true)) * sd
    mu, width = spread_galaxies(spread, err, snr)
    assert abs(mu - 0.010) < 0.001 and abs(width - 0.004) < 0.001
    assert spread_galaxies(spread[:40], err[:40], snr[:40]) is None  # too few: the caller's default
    # a point source at 0: star-like, and less so the larger its error; a 10-sigma extended one: galaxy
    lo, hi = spread_llr(np.zeros(2), np.array([0.002, 0.02]), (mu, width))
    assert lo < hi < 0 and abs(hi) < 0.3
    assert spread_llr(np.array([0.02]), np.array([0.002]), (mu, width))[0] > 3
    # unmeasured (saturated: NaN error) gives no evidence
    assert spread_llr(np.array([0.0]), np.array([np.nan]))[0] == 0.0
    assert SPREAD_GALAXY_MIN_WIDTH <= width

