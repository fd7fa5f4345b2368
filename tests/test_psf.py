"""Tests of astrohvae.psf: label-free per-stamp statistics with known answers."""

import numpy as np
from astropy.table import Table

from astrohvae.morphology.psf import PSFModel, psf_match
from astrohvae.morphology.statistics import centroids, profile_features, recentre
from astrohvae.stamps.cutouts import StampSet


def _gauss(sigma, dy=0.0, dx=0.0, size=64):
    yy, xx = np.mgrid[:size, :size]
    g = np.exp(-((yy - size // 2 - dy) ** 2 + (xx - size // 2 - dx) ** 2) / (2 * sigma**2))
    return g / g.sum()


def _stampset(images, amp=1000.0, sky=0.01):
    n = len(images)
    flux = np.stack([amp * np.repeat(im[None], 5, axis=0) for im in images]).astype(np.float32)
    mask = np.stack([(im > im.max() * 1e-3).astype(np.uint8) for im in images])
    return StampSet(flux, mask, np.full((n, 5), sky, np.float32), Table({"field": ["t"] * n}))


def test_recentre_moves_the_centroid_to_the_centre():
    offsets = [(0.3, -0.4), (-0.7, 0.2), (0.0, 0.9)]
    img = np.stack([_gauss(1.5, dy, dx) for dy, dx in offsets]).astype(np.float32)
    dy, dx = centroids(img)
    # first moments inside 3 px of a Gaussian are biased toward the centre, but have the offset's sign
    assert np.all(np.sign(dy[:2]) == np.sign([o[0] for o in offsets[:2]]))
    true_dy, true_dx = (np.array(v) for v in zip(*offsets))
    out = recentre(img[:, None], true_dy, true_dx)[:, 0]
    want = _gauss(1.5)[None]
    np.testing.assert_allclose(out, np.broadcast_to(want, out.shape), atol=2e-4 * want.max())
    assert out.dtype == np.float32
    # no shift: identity
    np.testing.assert_allclose(recentre(img[:, None], np.zeros(3), np.zeros(3))[:, 0], img, atol=1e-7)


def test_profile_features_of_a_gaussian():
    st = _stampset([_gauss(1.5), _gauss(3.0)])
    f = profile_features(st)
    # half-light radius of a circular Gaussian: sigma sqrt(2 ln 2); radii are measured to pixel
    # centres, so a pixel's flux counts from its centre's radius on: up to half a pixel less
    want = np.array([1.5, 3.0]) * np.sqrt(2 * np.log(2))
    assert np.all(f["r_half"] <= want) and np.all(f["r_half"] >= want - 0.5)
    assert 1.9 < f["r_half"][1] / f["r_half"][0] < 2.2
    assert f["concentration"][0] > f["concentration"][1]
    np.testing.assert_allclose(f["flux"], 3000.0, rtol=0.01)  # g+r+i own flux


def test_psf_match_point_source_versus_extended():
    psf = np.repeat(_gauss(1.5)[None], 5, axis=0)
    st = _stampset([_gauss(1.5, 0.3, -0.2), _gauss(2.5)])
    m = psf_match(st, PSFModel(psf, 1.5 * 1.1774, 10))
    assert abs(m["psf_ratio"][0] - 1.0) < 0.02 and abs(m["spread_model"][0]) < 0.003
    assert m["psf_ratio"][1] < 0.8 and m["spread_model"][1] > 0.01


def test_spread_err_is_the_scatter_of_point_sources_spread_model():
    # 400 point sources at S/N ~ 15 in white noise, fitted with their own PSF:
    # SPREAD_MODEL / SPREADERR_MODEL is then a unit normal (SExtractor, Desai et al. 2012)
    rng = np.random.default_rng(3)
    n, sky = 400, 0.01
    psf = np.repeat(_gauss(1.5)[None], 5, axis=0)
    clean = np.stack([_gauss(1.5)] * n)
    # S/N of the g+r+i PSF fit: amp * sqrt(3 sum P^2) / (sqrt(3) sky) = 15
    amp = 15.0 * sky / np.sqrt((_gauss(1.5) ** 2).sum())
    st = _stampset(clean, amp=amp, sky=sky)
    st.flux[:] += rng.normal(0.0, sky, st.flux.shape).astype(np.float32)
    st.mask[:] = (np.hypot(*np.mgrid[-32:32, -32:32]) <= 6)[None].astype(np.uint8)  # no neighbours
    m = psf_match(st, PSFModel(psf, 1.5 * 1.1774, 10))
    z = m["spread_model"] / m["spread_err"]
    assert abs(np.median(z)) < 0.2
    assert 0.85 < np.std(z) < 1.2
    # the error of a point source: sqrt(G.G/P.P - (G.P/P.P)^2) / (S/N of the PSF fit), a property of
    # the PSF (G: the PSF convolved with an exponential disc of scale FWHM/16, over r <= 10 px)
    from astrohvae.morphology.psf import _extended_model

    p = 3 * _gauss(1.5)
    g = _extended_model(p, 2 * 1.5 * 1.1774 / 16)
    big = np.hypot(*np.mgrid[-32:32, -32:32]) <= 10
    pp, gg, gp = ((a * b * big).sum() for a, b in ((p, p), (g, g), (g, p)))
    snr = amp * np.sqrt(pp) / (sky * np.sqrt(3))
    want = np.sqrt(gg / pp - (gp / pp) ** 2) / snr
    assert np.all(np.isfinite(m["spread_err"]))
    np.testing.assert_allclose(np.median(m["spread_err"]), want, rtol=0.1)
