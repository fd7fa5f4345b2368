"""Tests of astrohvae.preprocess (what the networks see)."""

import numpy as np
import pytest

from astrohvae.photometry import luptitude
from astrohvae.stamps.preprocess import (
    DEFAULT_REPRESENTATION,
    REPRESENTATIONS,
    clean_gri,
    clean_stamps,
    crop_window,
    network_input,
    source_flux,
)
from astrohvae.stamps.cutouts import StampSet


def _stamps(n=4, seed=0, amp=(1.0, 10.0, 100.0, 1000.0)):
    from astropy.table import Table

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :64]
    prof = np.exp(-((yy - 32) ** 2 + (xx - 32) ** 2) / (2 * 1.5**2))
    prof /= prof.sum()
    flux = np.zeros((n, 5, 64, 64), np.float32)
    mask = np.zeros((n, 64, 64), np.uint8)
    for k in range(n):
        flux[k] = amp[k % len(amp)] * prof[None] + rng.normal(0, 0.01, (5, 64, 64))
        mask[k][prof > prof.max() * 0.01] = 1
    return StampSet(flux, mask, np.full((n, 5), 0.01, np.float32), Table({"field": ["t"] * n}))


def test_registry_and_default():
    assert "lupt" in REPRESENTATIONS
    assert DEFAULT_REPRESENTATION in REPRESENTATIONS
    st = _stamps()
    for name in REPRESENTATIONS:
        x = network_input(st, name)
        assert x.shape == st.flux.shape and x.dtype == np.float32
        assert np.isfinite(x).all()


def test_unknown_representation():
    with pytest.raises(ValueError, match="unknown representation"):
        network_input(_stamps(), "nope")


def test_lupt_is_standardised_luptitudes():
    st = _stamps()
    x = network_input(st, "lupt")
    # per stamp mean 0, std 1 over all bands and pixels
    np.testing.assert_allclose(x.reshape(len(x), -1).mean(1), 0, atol=1e-4)
    np.testing.assert_allclose(x.reshape(len(x), -1).std(1), 1, atol=1e-3)
    # a monotone (bright = positive) function of the luptitude of each pixel
    lup = -luptitude(st.flux[0, 2], "r")
    corr = np.corrcoef(lup.ravel(), x[0, 2].ravel())[0, 1]
    assert corr > 0.999


def test_source_removes_brightness_and_neighbours():
    st = _stamps(amp=(10.0, 1000.0))
    st.flux[:] = st.flux - np.random.default_rng(1).normal(0, 0.01, st.flux.shape) * 0  # keep noise
    # a neighbour in stamp 0 marked as another source
    st.flux[0, :, 5:10, 5:10] += 50.0
    st.mask[0, 5:10, 5:10] = 2
    x = network_input(st, "source")
    assert np.all(x[0, :, 5:10, 5:10] == 0)
    # brightness gone: the two centres agree within the noise of the faint one
    c0, c1 = x[0, 2, 30:35, 30:35], x[1, 2, 30:35, 30:35]
    assert np.abs(c0 - c1).max() < 0.2 * c1.max()
    f = source_flux(st.flux, st.mask, st.sky_sigma)
    assert f[1] / f[0] == pytest.approx(100.0, rel=0.05)


def test_empty():
    st = _stamps()[0:0]
    assert network_input(st, "lupt").shape == (0, 5, 64, 64)


def test_clean_stamps_zeroes_bad_pixels_and_is_not_served_stale():
    rng = np.random.default_rng(3)
    flux = rng.normal(size=(4, 5, 8, 8)).astype(np.float32)
    flux[0, 1, 2, 3] = np.nan
    flux[1, 2, 4, 4] = np.inf
    flux[2, 0, 0, 0] = -np.inf
    mask = np.zeros((4, 8, 8), np.uint8)
    mask[3, 5:, :] = 2  # another source
    mask[2, :2, :] = 4  # invalid
    mask[1, 3, 3] = 1  # own segment: kept
    want = np.where(np.isfinite(flux) & ((mask & 6) == 0)[:, None], flux, 0.0)
    from astrohvae.stamps.preprocess import reuse_cleaned

    got = clean_stamps(flux, mask)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.float32 and not got.flags.writeable
    assert clean_stamps(flux, mask) is not got  # outside a pass nothing is remembered
    with reuse_cleaned():
        got = clean_stamps(flux, mask)
        assert clean_stamps(flux, mask) is got  # the same arrays again within a pass: the same result
        other = flux + 1.0  # same shape, other values: computed afresh
        np.testing.assert_array_equal(
            clean_stamps(other, mask), np.where(np.isfinite(other) & ((mask & 6) == 0)[:, None], other, 0.0)
        )
    np.testing.assert_array_equal(got, want)
    # input untouched
    assert np.isnan(flux[0, 1, 2, 3]) and np.isinf(flux[1, 2, 4, 4])


def test_windowed_cleaning_and_gri_match_the_whole_stamp():
    rng = np.random.default_rng(4)
    flux = rng.normal(size=(5, 5, 16, 16)).astype(np.float32)
    flux[0, 1, 8, 8] = np.nan  # g: a NaN inside the window and the g+r+i image
    flux[1, 3, 2, 2] = np.inf  # i: outside the window
    flux[2, 2, 7, 9] = -np.inf
    mask = np.zeros((5, 16, 16), np.uint8)
    mask[3, 6:10, 6:10] = 2
    mask[4, :, 9:] = 4
    full = clean_stamps(flux, mask)
    win = (slice(5, 12), slice(4, 11))
    part = clean_stamps(flux, mask, window=win)
    np.testing.assert_array_equal(part, full[:, :, 5:12, 4:11])
    gri = clean_gri(flux, mask)
    np.testing.assert_array_equal(gri, full[:, 1] + full[:, 2] + full[:, 3])
    assert np.isfinite(gri).all()
    from astrohvae.stamps.preprocess import reuse_cleaned

    with reuse_cleaned():  # within one statistics pass the g+r+i image is made once
        first = clean_gri(flux, mask)
        assert clean_gri(flux, mask) is first
    # source_flux from the g+r+i image = from the cleaned stamps
    np.testing.assert_allclose(source_flux(None, mask, gri=gri), source_flux(full, mask), rtol=1e-6)


@pytest.mark.parametrize("name", sorted(REPRESENTATIONS))
def test_cropped_input_is_the_crop_of_the_whole_input(name):
    st = _stamps(n=6)
    st.mask[2, 40:50, 40:50] = 2  # a neighbour outside the crop still counts in the normalisation
    whole = network_input(st, name)
    rows, cols = crop_window(64, 64, 32)
    assert (rows.start, rows.stop) == (16, 48)
    np.testing.assert_allclose(network_input(st, name, crop=32), whole[:, :, rows, cols], rtol=1e-6, atol=1e-7)
    assert network_input(st[0:0], name, crop=32).shape == (0, 5, 32, 32)
