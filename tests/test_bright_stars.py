"""Bright, saturated and crowded stars (issue 13 item 4): SDSS-interpolated cores, stamps not
centred on the star, saturated stars among neighbours."""

from types import SimpleNamespace

import numpy as np
import pytest
from astropy.table import Table

from astrohvae.morphology.psf import band_saturated, interpolated_core, peak_centred, saturated

YY, XX = np.mgrid[:64, :64]


def _gauss(dy=0.0, dx=0.0, sigma=1.4):
    g = np.exp(-((YY - 32 - dy) ** 2 + (XX - 32 - dx) ** 2) / (2 * sigma**2))
    return g / g.sum()


def _noisy(img, rng, gain=12.0):
    """Sky noise 1 plus the source's photon noise (sky sigma units, ~SDSS r: sigma^2 = 1 + f / 12)."""
    return img + rng.normal(0.0, 1.0, img.shape) * np.sqrt(1.0 + np.clip(img, 0, None) / gain)


def _sdss_interpolated(img, radius=3, trail=6):
    """What the SDSS pipeline does to a saturated core: the pixels within ``radius`` of the centre
    and a bleed trail ``trail`` pixels up and down the centre column are replaced, row by row, by the
    straight line between the row's first good pixels (noiseless), times a ~1 % per-column flat."""
    out = img.copy()
    bad = (np.hypot(YY - 32, XX - 32) <= radius) | ((np.abs(XX - 32) <= 1) & (np.abs(YY - 32) <= trail))
    flat = 1.0 + 0.004 * np.sin(np.arange(64))  # the calibration's column flat
    for b in range(out.shape[0]):
        for y in np.flatnonzero(bad.any(axis=1)):
            cols = np.flatnonzero(bad[y])
            a, z = cols.min() - 1, cols.max() + 1
            t = (cols - a) / (z - a)
            out[b, y, cols] = ((1 - t) * out[b, y, a] / flat[a] + t * out[b, y, z] / flat[z]) * flat[cols]
    return out


def _stampset(flux, mask=None, sky=1.0):
    n = len(flux)
    return SimpleNamespace(flux=np.asarray(flux, np.float32),
                           mask=np.zeros((n, 64, 64), np.uint8) if mask is None else np.asarray(mask, np.uint8),
                           sky_sigma=np.full((n, 5), sky, np.float32))


def test_interpolated_core_is_saturated():
    """An SDSS-interpolated saturated star is `saturated` (not flat-topped: the flat-core test alone
    misses it); an unsaturated bright star and a bright galaxy, with photon noise, are not."""
    rng = np.random.default_rng(0)
    star = np.stack([_gauss()] * 5) * 2e6
    gal = np.stack([np.exp(-np.hypot(YY - 32, XX - 32) / 3.0)] * 5)
    gal = gal / gal[0].sum() * 2e6
    # a star off the pixel grid's symmetry (as real ones are): its interpolated rows slope
    sat = _sdss_interpolated(_noisy(np.stack([_gauss(0.3, 0.45)] * 5) * 2e6, rng))
    st = _stampset([sat, _noisy(star, rng), _noisy(gal, rng), _noisy(star / 1e4, rng)])
    assert interpolated_core(st).tolist() == [True, False, False, False]
    assert saturated(st).tolist() == [True, False, False, False]
    assert not saturated(st, interpolated=False)[0]


def test_peak_centred_moves_a_bright_star_off_the_stamp_centre():
    """A bright star 9 px from the centre of its merged segment is moved to the centre; a centred
    star, a faint off-centre source and a hollow (interpolated) core are left alone."""
    rng = np.random.default_rng(1)
    merged = np.stack([_gauss(0, -9)] * 5) * 3e4 + np.stack([_gauss(2, 6) + _gauss(-3, 9)] * 5) * 2e3
    own = ((np.hypot(YY - 32, XX - 23) < 9) | (np.hypot(YY - 32, XX - 40) < 8)).astype(np.uint8)
    centred = np.stack([_gauss()] * 5) * 3e4
    hollow = _sdss_interpolated(np.stack([_gauss(0, -1)] * 5) * 2e6, radius=4)
    imgs = [_noisy(merged, rng), _noisy(centred, rng), _noisy(merged / 1e3, rng), _noisy(hollow, rng)]
    masks = [own, np.ones((64, 64)), own, np.ones((64, 64))]
    st = _stampset(imgs, masks)
    out = peak_centred(st)
    assert out is not st
    gri = out.flux[:, 1:4].sum(axis=1)
    assert np.unravel_index(np.argmax(gri[0]), (64, 64)) == (32, 32)
    np.testing.assert_array_equal(out.flux[1:], st.flux[1:])
    np.testing.assert_array_equal(out.mask[1:], st.mask[1:])
    assert (out.mask[0][:, :9] == 4).all()  # shifted in from outside the stamp: invalid
    rest = _stampset(imgs[1:], masks[1:])
    assert peak_centred(rest) is rest  # none of the other three moves


def test_band_saturated_among_neighbours():
    """A star saturated (hollow) in g, r, i whose u and z still show the PSF, with neighbours inside
    5 px (a crowded field), is flagged; an isolated galaxy and an r = 18 blend are not."""
    rng = np.random.default_rng(2)
    psf = _gauss()
    hollow = psf.copy()
    core = np.hypot(YY - 32, XX - 32) <= 2
    hollow[core] = psf[~core & (np.hypot(YY - 32, XX - 32) <= 3)].mean() * 0.8
    neigh = 0.25 * (_gauss(3, 3) + _gauss(-4, 1) + _gauss(1, -4))
    star = np.stack([psf + neigh, hollow + neigh, hollow + neigh, hollow + neigh, psf + neigh]) * 5e4
    gal = np.stack([np.exp(-np.hypot(YY - 32, XX - 32) / 2.5)] * 5)
    blend = np.stack([psf + neigh, hollow + neigh, hollow + neigh, hollow + neigh, psf + neigh]) * 60
    imgs = [_noisy(star, rng), _noisy(gal / gal[0].sum() * 5e4, rng), _noisy(blend, rng, gain=1e9)]
    st = _stampset(imgs, sky=0.05)
    psf5 = np.stack([psf] * 5)
    assert band_saturated(st, psf5).tolist() == [True, False, False]
    assert not band_saturated(st, psf5, pedestal=None)[0]  # the plain concentration misses it


def test_classifier_recognises_a_bright_star_its_stamp_is_not_centred_on(default_classifier):
    """The shipped classifier: a bright star 9 px off the centre of its merged segment (three fainter
    neighbours on the other side) is labelled star, as the same star centred is; without
    `peak_centre` it was labelled galaxy."""
    clf = default_classifier
    psf = np.asarray(clf.ref_["psf"], np.float64)
    rng = np.random.default_rng(1)
    sky = np.array([0.05, 0.03, 0.05, 0.07, 0.2])

    def star(flux, dy, dx):
        return np.roll(psf, (dy, dx), axis=(1, 2)) * flux

    merged = star(3000, 0, -9) + star(150, 2, 6) + star(120, -3, 9) + star(100, 4, 11)
    own = ((np.hypot(YY - 32, XX - 23) < 9) | (np.hypot(YY - 32, XX - 40) < 8)).astype(np.uint8)
    flux = np.stack([merged, star(3000, 0, 0)]) + rng.normal(0, 1, (2, 5, 64, 64)) * sky[None, :, None, None]
    from astrohvae.stamps.cutouts import StampSet

    st = StampSet(flux=flux.astype(np.float32),
                  mask=np.stack([own, (np.hypot(YY - 32, XX - 32) < 9).astype(np.uint8)]),
                  sky_sigma=np.tile(sky, (2, 1)).astype(np.float32), meta=Table({"field": ["t", "t"]}))
    assert clf.peak_centre
    assert (clf.predict_proba(st) < 0.5).all()
    off = type(clf)(**{**clf.get_params(), "peak_centre": False})
    off._set_fitted_state(*clf._fitted_state())
    assert off.predict_proba(st)[0] > 0.5


@pytest.mark.parametrize("n", [0, 3])
def test_peak_centred_returns_its_input_when_nothing_moves(n):
    st = _stampset(np.zeros((n, 5, 64, 64)))
    assert peak_centred(st) is st
