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


def _moffat(shape, x, y, flux, fwhm=3.4, beta=3.0):
    """A normalised circular Moffat profile (SDSS-like PSF) of total ``flux`` at (x, y)."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    a = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    m = (1 + ((xx - x) ** 2 + (yy - y) ** 2) / a**2) ** -beta
    return m / m.sum() * flux


def test_deblend_floor_splits_the_faint_neighbours_of_a_bright_star():
    """A bright star with three neighbours of 2.5-4 % of its flux 10-13 px away, all in one segment
    that reaches the noise (a pixel <= 0, as the network's segments do): photutils' levels (linear
    from the segment's minimum, peak/33 apart) leave it one source; levels from a floor of 3 noise
    sigma split each neighbour off, and the star's child holds its core."""
    from photutils.segmentation import SegmentationImage

    from astrohvae.detection.detect import deblend_segments

    rng = np.random.default_rng(3)
    shape = (80, 80)
    stars = [(40.3, 39.6, 6e4), (51.3, 41.6, 1800.0), (35.3, 49.6, 1500.0), (32.3, 30.6, 2400.0)]
    det = sum(_moffat(shape, x, y, f) for x, y, f in stars) + rng.normal(0, 1, shape)
    segm = SegmentationImage(np.ones(shape, np.int32))
    assert det.min() <= 0
    at = [(int(round(y)), int(round(x))) for x, y, _ in stars]
    old = deblend_segments(det, segm, 5).data
    assert len({old[p] for p in at}) == 1
    new = deblend_segments(det, segm, 5, floor=3.0).data
    assert len({new[p] for p in at}) == 4
    assert new[at[0]] == new[40, 40]
    with pytest.raises(ValueError, match="floor"):
        deblend_segments(det, segm, 5, floor=3.0, backend="photutils")


def _crowded_bright_star(halo_dx=0.0, halo_dy=0.0):
    """A small simulated field with a bright star (r ~ 15) and three fainter neighbours 10-13 px
    away on a faint diffuse halo (2 r sky sigma at its centre, sigma 25 px) that makes the
    network's segment reach the noise; returns ``(field, star (x, y), neighbours [(x, y)])``."""
    from astrohvae.io.field import Field
    from astrohvae.simulate.field import simulate_field

    sim = simulate_field(3, size=(384, 384))
    f = sim.field
    yy, xx = np.mgrid[:f.shape[0], :f.shape[1]]
    x0, y0 = 200.3, 180.6
    stars = [(x0, y0, 1000.0), (x0 + 11, y0 + 2, 30.0), (x0 - 5, y0 + 10, 25.0), (x0 - 8, y0 - 9, 40.0)]
    colour = [0.3, 0.7, 1.0, 1.15, 1.25]  # nanomaggies per r nanomaggy, a G-K star
    data = f.data.copy()
    halo = np.exp(-((xx - x0 - halo_dx) ** 2 + (yy - y0 - halo_dy) ** 2) / (2 * 25.0**2))
    for b, band in enumerate(f.bands):
        data[b] += sum(_moffat(f.shape, x, y, fl * colour[b]) for x, y, fl in stars)
        data[b] += 2.0 * sim.sky_sigma[band] * halo
    return Field(data.astype(np.float32), f.mask, wcs=f.wcs, name=f.name), (x0, y0), [s[:2] for s in stars[1:]]


def test_bright_star_among_fainter_neighbours_is_its_own_star(default_segmenter, default_classifier):
    """The shipped path: the bright star's fainter neighbours are sources of their own (before the
    deblending floor they were part of its segment, which pulled its position 1.3 px off and made
    it a galaxy, as 10 stars brighter than r = 15 of the crowded real field 005405-6-0099 were)."""
    from astrohvae.pipeline.field import process_field

    field, (x0, y0), neigh = _crowded_bright_star()
    prod = process_field(field, default_classifier, segmenter=default_segmenter)
    t, seg = prod.table, np.asarray(prod.segmap)
    d = np.hypot(np.asarray(t["x"]) - x0, np.asarray(t["y"]) - y0)
    i = int(np.argmin(d))
    assert d[i] < 0.5
    assert t["class"][i] == "star"
    own = seg[int(round(y0)), int(round(x0))]
    assert own == t["id"][i]
    assert all(seg[int(round(y)), int(round(x))] not in (0, own) for x, y in neigh)
