"""Sources seen in fewer bands: the simulator's edge strips and the classifier's statistics.

SDSS bands are offset from r along the scan, so every field has strips along its
edges that some band does not cover (`astrohvae.simulate.field.SDSS_BAND_OFFSETS`).  The
classifier's statistics use valid pixels only and marginalise over a statistic
that cannot be measured; these tests fail when missing data are read as zeros.
"""

from __future__ import annotations

import numpy as np
import pytest

from astrohvae import BANDS
from astrohvae.conventions import FLAG_FEW_BANDS, FLAG_MASKED, MASK_INVALID


def test_simulated_offsets_as_real_frames_and_stress_scale():
    from astrohvae.simulate.field import SDSS_BAND_OFFSETS, simulate_field

    one = simulate_field(31, size=(96, 96))
    two = simulate_field(31, size=(96, 96), band_offset_scale=2.0)
    for b in BANDS:
        dx, dy = one.field.meta["offsets"][b]
        if b == "r":
            assert (dx, dy) == (0.0, 0.0)
            continue
        (x0, x1), (y0, y1) = SDSS_BAND_OFFSETS[b]
        assert x0 <= dx <= x1 and y0 <= dy <= y1
        np.testing.assert_allclose(two.field.meta["offsets"][b], (2 * dx, 2 * dy))
    # the same objects and the same r frame: only the other bands move
    np.testing.assert_array_equal(one.frames["r"][0], two.frames["r"][0])
    assert len(one.truth) == len(two.truth)
    # every band lies ahead of r along the scan: the last rows of the r grid lack it
    g = BANDS.index("g")
    rows = np.flatnonzero(one.field.mask[g].all(axis=1))
    dy = one.field.meta["offsets"]["g"][1]
    assert rows.size >= int(dy) - 1 and rows.min() >= 96 - int(np.ceil(dy)) - 1
    with pytest.raises(ValueError, match="band_offset_scale"):
        simulate_field(31, size=(96, 96), band_offset_scale=-1.0)


@pytest.fixture(scope="module")
def field_stamps():
    """Stamps of a simulated field without band offsets (every band covers every pixel)."""
    from astrohvae.pipeline.field import find_sources
    from astrohvae.simulate.field import simulate_field
    from astrohvae.stamps.cutouts import cut_stamps
    from astrohvae.stamps.store import match_truth

    sim = simulate_field(13, size=(512, 512), band_offset_scale=0.0)
    bg, segm, src = find_sources(sim.field)
    st = cut_stamps(sim.field, segm, src, bg)
    st.meta["truth_type"], st.meta["truth_mag_r"] = match_truth(st.meta, sim.truth)
    assert not (st.mask & MASK_INVALID).any(axis=(1, 2)).all()
    return st


def _without_band(st, rows, band):
    """Copy of ``st`` where ``band`` has no data over the whole stamp of ``rows`` (as `cut_stamps` writes it)."""
    from astrohvae.stamps.cutouts import StampSet

    flux, mask = st.flux.copy(), st.mask.copy()
    flux[rows, BANDS.index(band)] = 0.0
    mask[rows] |= MASK_INVALID
    return StampSet(flux, mask, st.sky_sigma.copy(), st.meta.copy())


def test_statistics_from_valid_pixels_only(field_stamps):
    from astrohvae.morphology.physical import aperture_colours
    from astrohvae.morphology.psf import estimate_psf, psf_match
    from astrohvae.morphology.statistics import profile_features

    st = field_stamps
    clean = ~((st.mask & MASK_INVALID) != 0).any(axis=(1, 2))
    rows = np.flatnonzero(clean)[:40]
    f0 = profile_features(st)
    psf = estimate_psf(st, features=f0)
    m0, c0 = psf_match(st, psf), aperture_colours(st)
    # u missing everywhere: the morphology (g+r+i) is unchanged, u-g is not measured
    su = _without_band(st, rows, "u")
    f1, m1, c1 = profile_features(su), psf_match(su, psf), aperture_colours(su)
    for k in ("r_half", "concentration"):
        np.testing.assert_allclose(f1[k][rows], f0[k][rows], rtol=1e-6)
    for k in ("psf_ratio", "spread_model"):
        np.testing.assert_allclose(m1[k][rows], m0[k][rows], rtol=1e-5, atol=1e-7)
    assert np.isnan(c1[rows, 0]).all()
    np.testing.assert_allclose(c1[rows, 1:], c0[rows, 1:], rtol=1e-6)
    # g missing: g-r and u-g are not measured, the morphology comes from r+i
    sg = _without_band(st, rows, "g")
    f2, c2 = profile_features(sg), aperture_colours(sg)
    assert np.isnan(c2[rows, :2]).all() and np.isfinite(c2[rows, 2:]).all()
    bright = rows[(f0["snr"][rows] > 30) & np.isfinite(f0["r_half"][rows])]
    assert bright.size >= 5
    np.testing.assert_allclose(f2["r_half"][bright], f0["r_half"][bright], rtol=0.1)
    # the other stamps are untouched
    others = np.setdiff1d(np.arange(len(st)), rows)
    np.testing.assert_array_equal(f2["r_half"][others], f0["r_half"][others])


def test_missing_statistics_marginalised_not_zero(field_stamps, default_classifier):
    """Bright stars whose u band is missing stay stars (their u-g is marginalised over)."""
    from astrohvae.morphology.physical import physical_statistics
    from astrohvae.morphology.psf import saturated

    st = field_stamps
    y, r = np.asarray(st.meta["truth_type"]), np.asarray(st.meta["truth_mag_r"])
    # (saturated stars get their field's stellar colours whatever their bands)
    stars = np.flatnonzero((y == 0) & (r < 19.5) & ~((st.mask & MASK_INVALID) != 0).any(axis=(1, 2))
                           & ~saturated(st))
    assert stars.size >= 5
    p0 = default_classifier.predict_proba(st)
    assert (p0[stars] < 0.5).all()
    su = _without_band(st, stars, "u")
    assert np.isnan(physical_statistics(su, default_classifier.ref_)[stars, 4]).all()
    p1 = default_classifier.predict_proba(su)
    assert (p1[stars] < 0.5).all(), p1[stars]
    # the morphology is unchanged and u-g marginalised; the colour term loses the u band's evidence
    # (the strongest star/galaxy colour), which moves a star's p_galaxy by up to ~0.12 here
    np.testing.assert_allclose(p1[stars], p0[stars], atol=0.15)
    # the others move only through the field's PSF, now estimated without the altered stars
    others = np.setdiff1d(np.arange(len(st)), stars)
    # (and through the field's colour-noise factor and galaxy colour templates: the typical source by far
    # less than 0.02; a coin flip at p ~ 0.5, where p moves fastest with its log odds, by up to ~0.21 with
    # the windowed-centroid stamps: in this 512 px field the altered stars are most of those the PSF and
    # the u noise factor were measured from)
    diff = np.abs(p1[others] - p0[others])
    assert diff.max() < 0.25 and np.median(diff) < 0.02, (diff.max(), np.median(diff))
    assert (diff > 0.1).mean() < 0.05, np.sort(diff)[-5:]


def test_bright_stars_in_stress_strips_are_stars(default_classifier, default_segmenter):
    """The stress offset (x2) leaves wide strips; their bright stars are not `galaxy` (before: p >= 0.99)."""
    from astrohvae.pipeline.field import process_field
    from astrohvae.simulate.field import simulate_field
    from astrohvae.stamps.store import match_truth

    sim = simulate_field(13, size=(512, 512), band_offset_scale=2.0)
    t = process_field(sim.field, default_classifier, segmenter=default_segmenter).table
    y, r = match_truth(t, sim.truth)
    few = (np.asarray(t["flags"]) & (FLAG_FEW_BANDS | FLAG_MASKED)) != 0
    stars = few & (y == 0) & (r < 19)
    assert stars.sum() >= 4
    p = np.asarray(t["p_galaxy"])[stars]
    assert (p < 0.5).all(), p


def test_marginal_draws_follow_the_conditional_gaussian():
    """Known answer: for one 2-D Gaussian, x2 | x1 ~ N(m2 + c/s1^2 (x1 - m1), s2^2 - c^2/s1^2)."""
    from astrohvae.classify.mixture import marginal_draws

    mean = np.array([1.0, -2.0])
    cov = np.array([[4.0, 1.2], [1.2, 1.0]])
    density = (np.array([1.0]), mean[None], cov[None])
    x = np.array([[3.0, np.nan], [1.0, 0.5], [np.nan, np.nan]])
    d = marginal_draws(density, x, n_draws=20000, seed=1)
    assert d.shape == (3, 20000, 2)
    np.testing.assert_array_equal(d[1], np.broadcast_to(x[1], (20000, 2)))  # complete rows are kept
    assert (d[0, :, 0] == 3.0).all()
    assert abs(d[0, :, 1].mean() - (-2.0 + 1.2 / 4.0 * 2.0)) < 0.02
    assert abs(d[0, :, 1].var() - (1.0 - 1.2**2 / 4.0)) < 0.02
    np.testing.assert_allclose(np.cov(d[2].T), cov, atol=0.1)


def test_density_saved_with_the_weights(tiny_weights, default_classifier):
    """`train` fits the statistics density and `save_model` keeps it; the shipped weights, made by `train`, hold theirs."""
    from astrohvae.classify.persist import load_model
    from astrohvae.morphology.physical import N_PHYSICAL

    clf = load_model(tiny_weights, device="cpu")
    w, means, covs = clf.stat_density_
    assert means.shape[1] == N_PHYSICAL and covs.shape[1:] == (N_PHYSICAL, N_PHYSICAL)
    np.testing.assert_allclose(w.sum(), 1.0)
    w, means, covs = default_classifier.stat_density_
    assert means.shape[1] == N_PHYSICAL and covs.shape[1:] == (N_PHYSICAL, N_PHYSICAL)
    np.testing.assert_allclose(w.sum(), 1.0)
