"""Tests of astrohvae.stamps: background, detection, measurement, cutouts."""

from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from astrohvae.io.field import Field
from astrohvae.conventions import (
    FLAG_BLENDED,
    FLAG_EDGE,
    FLAG_MASKED,
    FLAG_TRUNCATED,
    MASK_INVALID,
    MASK_OTHER,
    MASK_OWN,
)
from astrohvae.detection.background import estimate_background
from astrohvae.detection.detect import detect
from astrohvae.detection.sources import measure_sources
from astrohvae.stamps.cutouts import StampSet, concatenate, cut_stamps

def baseline_chain(field):
    """The photutils baseline through the pipeline's one field -> sources chain, then the stamps."""
    from astrohvae.pipeline.field import find_sources

    bkg, segm, src = find_sources(field, segmenter=None)
    return bkg, segm, src, cut_stamps(field, segm, src, bkg)


DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SIGMAS = np.array([0.03, 0.01, 0.012, 0.015, 0.05], np.float32)
SKY = np.array([0.004, -0.002, 0.001, 0.0, 0.01], np.float32)


def gaussian_model(shape, sources, sigma_psf=1.5):
    """(ny, nx) image of unit-sum Gaussians scaled by flux, for (x, y, flux)."""
    ny, nx = shape
    yy, xx = np.mgrid[:ny, :nx]
    out = np.zeros(shape, np.float64)
    for x, y, f in sources:
        g = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma_psf**2))
        out += f * g / (2 * np.pi * sigma_psf**2)
    return out


def make_field(sources, shape=(240, 320), seed=0, wcs=None, mask=None, name="synth"):
    """Five-band field: constant sky + Gaussian sources (same flux in every band) + noise."""
    rng = np.random.default_rng(seed)
    model = gaussian_model(shape, sources)
    data = SKY[:, None, None] + model[None] + rng.normal(size=(5,) + shape) * SIGMAS[:, None, None]
    data = data.astype(np.float32)
    m = np.zeros(data.shape, bool) if mask is None else mask
    data[m] = 0.0
    return Field(data, m, wcs=wcs, name=name), model


BRIGHT = [(20.3, 50.7, 8.0), (200.6, 120.2, 5.0), (130.2, 190.4, 6.0), (270.45, 60.55, 4.0)]


@pytest.fixture(scope="module")
def synth():
    field, model = make_field(BRIGHT)
    bkg = estimate_background(field)
    segm = detect(field, bkg)
    src = measure_sources(field, segm, bkg)
    return field, model, bkg, segm, src


def test_background_recovers_noise_and_level_on_pure_noise():
    field, _ = make_field([], shape=(256, 256), seed=3)
    bkg = estimate_background(field)
    assert bkg.level.shape == bkg.rms.shape == (5, 256, 256)
    assert bkg.level.dtype == np.float32 and bkg.rms.dtype == np.float32
    np.testing.assert_allclose(bkg.sigma, SIGMAS, rtol=0.03)
    np.testing.assert_allclose(np.median(bkg.rms, axis=(1, 2)), SIGMAS, rtol=0.05)
    # level error well below the pixel noise
    assert np.all(np.abs(np.median(bkg.level, axis=(1, 2)) - SKY) < 0.05 * SIGMAS)


def test_background_ignores_masked_pixels_and_sources():
    mask = np.zeros((5, 256, 256), bool)
    mask[:, 100:140, 30:90] = True
    field, _ = make_field([(128, 60, 50.0), (60, 200, 30.0)], shape=(256, 256), seed=4, mask=mask)
    # garbage under the mask must not matter
    field.data[:, 100:140, 30:90] = 1e3
    bkg = estimate_background(field)
    np.testing.assert_allclose(bkg.sigma, SIGMAS, rtol=0.05)
    assert np.all(np.isfinite(bkg.level))
    assert np.all(np.abs(bkg.level - SKY[:, None, None]) < 0.5 * SIGMAS[:, None, None])
    assert bkg.source_mask[60, 128] and bkg.source_mask[200, 60]


def test_detect_finds_each_injected_source(synth):
    field, _, _, segm, _ = synth
    assert segm.n_labels == len(BRIGHT)
    labels = {int(segm.data[int(round(y)), int(round(x))]) for x, y, _ in BRIGHT}
    assert 0 not in labels and len(labels) == len(BRIGHT)
    assert segm.data.shape == field.shape


def test_detect_empty_field_gives_empty_segmentation():
    field, _ = make_field([], shape=(128, 128), seed=5)
    bkg = estimate_background(field)
    segm = detect(field, bkg, nsigma=6.0)
    assert segm is not None and segm.n_labels == 0
    assert segm.data.shape == (128, 128)
    src = measure_sources(field, segm, bkg)
    assert len(src) == 0 and "flux_err_z" in src.colnames and "flags" in src.colnames
    stamps = cut_stamps(field, segm, src, bkg)
    assert len(stamps) == 0 and stamps.flux.shape == (0, 5, 64, 64)


def test_measure_sources_positions_and_fluxes(synth):
    field, model, bkg, segm, src = synth
    assert list(src["id"]) == sorted(segm.labels)
    for col in ("id", "x", "y", "ra", "dec", "flux_r", "flux_err_r", "mag_r", "area", "flags"):
        assert col in src.colnames
    assert np.all(np.isnan(src["ra"])) and np.all(np.isnan(src["dec"]))
    for x, y, f in BRIGHT:
        lab = segm.data[int(round(y)), int(round(x))]
        row = src[src["id"] == lab][0]
        assert abs(row["x"] - x) < 0.1 and abs(row["y"] - y) < 0.1
        assert row["area"] == np.sum(segm.data == lab)
        inside = model[segm.data == lab].sum()  # the injected flux inside the segment
        for b in "ugriz":
            assert abs(row[f"flux_{b}"] - inside) < 4 * row[f"flux_err_{b}"]
            assert abs(row[f"flux_{b}"] - f) < 0.1 * f + 4 * row[f"flux_err_{b}"]
        # errors: sqrt(area) * sigma
        np.testing.assert_allclose(row["flux_err_g"], np.sqrt(row["area"]) * SIGMAS[1], rtol=0.1)
        # luptitude ~ Pogson magnitude of a bright flux
        assert abs(row["mag_r"] - (22.5 - 2.5 * np.log10(row["flux_r"]))) < 0.01
    assert src["flags"].dtype == np.int32 and np.all(src["flags"] == 0)


def test_positions_do_not_depend_on_the_footprint():
    """Windowed centroids: growing every footprint by 4 px (a lower isophote) leaves the positions of faint
    sources where they were, on the true centres; flux-weighted centroids over the grown footprints, which
    the positions were before, wander by the noise of the added sky pixels."""
    from scipy import ndimage

    faint = [(40.3 + 60 * k, 40.6 + 37 * (k % 4), 0.8) for k in range(5)]  # S/N ~ 20 in g, r, i
    field, _ = make_field(faint, seed=3)
    bkg = estimate_background(field)
    segm = detect(field, bkg)
    grown = ndimage.grey_dilation(segm.data, size=9)
    src, src_grown = measure_sources(field, segm.data, bkg), measure_sources(field, grown, bkg)
    xy, xy_grown = np.c_[src["x"], src["y"]], np.c_[src_grown["x"], src_grown["y"]]
    truth = np.array([(x, y) for x, y, _ in faint])
    err = np.hypot(*(xy[:, None] - truth[None]).transpose(2, 0, 1)).min(axis=1)
    assert len(src) == len(faint) and np.all(err < 0.3), err
    np.testing.assert_allclose(xy_grown, xy, atol=0.05)
    # the former positions: positive-flux-weighted mean over the grown footprint
    from astrohvae.detection.detect import detection_image

    det, _ = detection_image(field, bkg)
    w = np.clip(det, 0, None)
    yy, xx = np.mgrid[: det.shape[0], : det.shape[1]]
    old = np.array([[(w * xx)[grown == lab].sum() / w[grown == lab].sum(),
                     (w * yy)[grown == lab].sum() / w[grown == lab].sum()] for lab in src_grown["id"]])
    assert np.hypot(*(old - xy).T).max() > 0.1


def test_windowed_centroids_leave_out_neighbours():
    """A neighbour 5 px away pulls a windowed centroid unless its segment is left out of the window."""
    from astrohvae.detection.centroids import windowed_centroids

    img = gaussian_model((40, 40), [(18.0, 20.0, 10.0), (23.0, 20.0, 10.0)])
    labels = np.where(np.mgrid[:40, :40][1] <= 20, 1, 2)
    y0, x0 = windowed_centroids(img, np.array([20.0]), np.array([18.0]))
    y1, x1 = windowed_centroids(img, np.array([20.0]), np.array([18.0]), segm_data=labels, labels=np.array([1]))
    assert x0[0] - 18.0 > 0.3 and abs(x1[0] - 18.0) < abs(x0[0] - 18.0) / 3
    # a window over invalid pixels keeps its start
    valid = np.ones((40, 40), bool)
    valid[20, 17] = False
    y2, x2 = windowed_centroids(img, np.array([20.3]), np.array([18.4]), valid=valid)
    assert (y2[0], x2[0]) == (20.3, 18.4)


def test_measure_sources_flags_and_wcs():
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [100.0, 80.0]
    w.wcs.cdelt = [-0.396 / 3600, 0.396 / 3600]
    mask = np.zeros((5, 240, 320), bool)
    mask[2, 150, 150] = True  # one masked r pixel inside source at (150, 150)
    srcs = [(1.0, 100.0, 6.0), (150.0, 150.0, 6.0), (60.0, 60.0, 6.0), (67.0, 60.0, 6.0)]
    field, _ = make_field(srcs, wcs=w, mask=mask, seed=7)
    bkg = estimate_background(field)
    segm = detect(field, bkg)
    src = measure_sources(field, segm, bkg)
    by_pos = {(x, y): src[src["id"] == segm.data[int(y), int(x)]][0] for x, y, _ in srcs}
    assert by_pos[(1.0, 100.0)]["flags"] & FLAG_EDGE
    assert by_pos[(150.0, 150.0)]["flags"] & FLAG_MASKED
    assert not by_pos[(150.0, 150.0)]["flags"] & FLAG_EDGE
    pair = [by_pos[(60.0, 60.0)], by_pos[(67.0, 60.0)]]
    assert pair[0]["id"] != pair[1]["id"]  # deblended
    assert all(r["flags"] & FLAG_BLENDED for r in pair)
    ra, dec = w.all_pix2world(src["x"], src["y"], 0)
    np.testing.assert_allclose(src["ra"], ra)
    np.testing.assert_allclose(src["dec"], dec)


def test_cut_stamps_centres_values_and_masks(synth):
    field, _, bkg, segm, src = synth
    st = cut_stamps(field, segm, src, bkg)
    n = len(src)
    assert st.flux.shape == (n, 5, 64, 64) and st.flux.dtype == np.float32
    assert st.mask.shape == (n, 64, 64) and st.mask.dtype == np.uint8
    assert st.sky_sigma.shape == (n, 5) and st.sky_sigma.dtype == np.float32
    np.testing.assert_allclose(st.sky_sigma, np.broadcast_to(SIGMAS, (n, 5)), rtol=0.1)
    assert list(st.meta["id"]) == list(src["id"])
    resid = field.data - bkg.level
    ny, nx = field.shape
    for i, row in enumerate(st.meta):
        xc, yc = int(row["xc"]), int(row["yc"])
        assert abs(row["x"] - xc) <= 0.5 and abs(row["y"] - yc) <= 0.5
        assert row["dx"] == pytest.approx(row["x"] - xc) and row["dy"] == pytest.approx(row["y"] - yc)
        # stamp pixel (32, 32) is field pixel (yc, xc)
        np.testing.assert_array_equal(st.flux[i, :, 32, 32], resid[:, yc, xc])
        assert st.mask[i, 32, 32] & MASK_OWN
        # the whole window, where inside the field, equals the field
        y0, x0 = yc - 32, xc - 32
        ys, xs = slice(max(y0, 0), min(y0 + 64, ny)), slice(max(x0, 0), min(x0 + 64, nx))
        sub = (slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0))
        np.testing.assert_array_equal(st.flux[i][(slice(None),) + sub], resid[:, ys, xs])
        own = segm.data[ys, xs] == row["id"]
        other = (segm.data[ys, xs] != 0) & ~own
        np.testing.assert_array_equal((st.mask[i][sub] & MASK_OWN) > 0, own)
        np.testing.assert_array_equal((st.mask[i][sub] & MASK_OTHER) > 0, other)
        # off-field: 0 flux and mask bit 4, exactly outside the field
        off = np.ones((64, 64), bool)
        off[sub] = False
        np.testing.assert_array_equal((st.mask[i] & MASK_INVALID) > 0, off)
        assert np.all(st.flux[i][:, off] == 0)
        assert bool(row["flags"] & FLAG_TRUNCATED) == bool(off.any())
    # x = 20.3 -> stamp columns -12..51: truncated; the others are >= 32 px from every edge
    trunc = {round(float(r["x"])): bool(r["flags"] & FLAG_TRUNCATED) for r in st.meta}
    assert trunc == {20: True, 201: False, 130: False, 270: False}


def test_cut_stamps_other_source_and_masked_pixels():
    mask = np.zeros((5, 200, 200), bool)
    mask[3, 95:98, 110:113] = True  # masked in i only
    field, _ = make_field([(100.0, 100.0, 8.0), (120.0, 100.0, 8.0)], shape=(200, 200), mask=mask)
    bkg, segm, src, st = baseline_chain(field)
    assert len(st) == 2
    i = int(np.flatnonzero(np.isclose(st.meta["x"], 100.0, atol=0.5))[0])
    # the neighbour at +20 px in x appears at stamp column 52 as "another source"
    assert st.mask[i, 32, 52] & MASK_OTHER and not st.mask[i, 32, 52] & MASK_OWN
    # masked-in-one-band pixels are invalid (bit 4) but keep the other bands' values
    assert np.all(st.mask[i, 32 - 5 : 32 - 2, 42:45] & MASK_INVALID)
    assert np.all(st.flux[i, 3, 32 - 5 : 32 - 2, 42:45] == 0)
    np.testing.assert_array_equal(st.flux[i, 2, 27:30, 42:45], (field.data - bkg.level)[2, 95:98, 110:113])
    assert list(src["flags"]) == list(st.meta["flags"])


def test_cut_stamps_odd_size_and_explicit_sources(synth):
    field, _, bkg, segm, _ = synth
    sources = Table({"id": [1, 2], "x": [0.4, 319.6], "y": [0.2, 239.5]})
    st = cut_stamps(field, segm, sources, bkg, size=15)
    assert st.flux.shape == (2, 5, 15, 15)
    # centre index 7: corner source -> 7 rows/cols off field
    assert np.all(st.mask[0, :7, :] & MASK_INVALID) and not np.any(st.mask[0, 7:, 7:] & MASK_INVALID)
    # y = 239.5 rounds up to 240 (off the last row by one) -> floor(y + 0.5)
    assert st.meta["yc"][1] == 240 and st.meta["xc"][1] == 320
    assert np.all(st.meta["flags"] & FLAG_TRUNCATED)
    assert np.all(np.isnan(st.meta["ra"]))


def test_stampset_indexing_and_concatenate(synth):
    field, _, bkg, segm, src = synth
    st = cut_stamps(field, segm, src, bkg)
    sub = st[np.array([2, 0])]
    assert len(sub) == 2 and list(sub.meta["id"]) == [st.meta["id"][2], st.meta["id"][0]]
    np.testing.assert_array_equal(sub.flux[0], st.flux[2])
    one = st[-1]
    assert len(one) == 1 and one.flux.shape == (1, 5, 64, 64)
    boolsel = st[st.meta["flags"] == 0]
    assert len(boolsel) == int(np.sum(st.meta["flags"] == 0))
    both = concatenate([st, st[1:3]])
    assert len(both) == len(st) + 2
    np.testing.assert_array_equal(both.mask[len(st)], st.mask[1])
    assert len(StampSet.concatenate([])) == 0
    with pytest.raises(ValueError):
        StampSet(st.flux, st.mask[:1], st.sky_sigma, st.meta)


def test_cut_stamps_many_sources_is_fast():
    import time

    rng = np.random.default_rng(11)
    n = 1500
    srcs = Table({"id": np.arange(1, n + 1), "x": rng.uniform(0, 600, n), "y": rng.uniform(0, 500, n)})
    field, _ = make_field([], shape=(500, 600))
    bkg = estimate_background(field)
    t0 = time.perf_counter()
    st = cut_stamps(field, None, srcs, bkg)
    dt = time.perf_counter() - t0
    assert len(st) == n
    assert n / dt > 300  # ~thousands/s unloaded; generous for a shared 2-core machine


@pytest.mark.slow
def test_real_field_recovers_catalogued_stars():
    folder = DATA / "sdss" / "fields" / "004510-4-0030"
    if not folder.is_dir():
        pytest.skip(f"real SDSS data not found at {folder}")
    from astrohvae.io.readers import read_field

    field = read_field(folder)
    bkg, segm, src, st = baseline_chain(field)
    assert 500 < len(src) < 5000 and len(st) == len(src)
    stars = Table.read(folder / "stars_in_frame_004510-4-0030.fits")
    from scipy.spatial import cKDTree

    # SDSS-catalogued stars with r_psf < 22 (PSFFLUX in nanomaggies; many listed
    # "stars" have zero or negative flux and are not real detections)
    stars = stars[stars["PSFFLUX"][:, 2] > 10 ** ((22.5 - 22.0) / 2.5)]
    assert len(stars) > 80
    d, _ = cKDTree(np.column_stack([src["x"], src["y"]])).query(
        np.column_stack([stars["x_r"], stars["y_r"]])
    )
    assert np.mean(d < 1.5) > 0.95  # measured 0.98 (105 of 107)
    # sky noise of SDSS r frames is ~0.02 nmgy/pixel
    assert 0.005 < bkg.sigma[2] < 0.05


def _blended_scene(seed):
    """Noisy image with isolated, blended and faint sources, and a negative-minimum blend."""
    rng = np.random.default_rng(seed)
    ny, nx = 160, 200
    yy, xx = np.mgrid[:ny, :nx]
    img = rng.normal(0.0, 1.0, (ny, nx))
    for _ in range(40):
        x, y = rng.uniform(5, nx - 5), rng.uniform(5, ny - 5)
        amp, s = 10 ** rng.uniform(0.5, 3), rng.uniform(1.0, 4.0)
        img += amp * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * s * s))
        if rng.uniform() < 0.5:  # a close companion
            img += 0.3 * amp * np.exp(-((yy - y - 4) ** 2 + (xx - x - 3) ** 2) / (2 * s * s))
    return img.astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_deblend_is_photutils_deblend_sources(seed):
    """Our vectorised deblender gives photutils' segmentation, label for label."""
    from astropy.convolution import Gaussian2DKernel, convolve
    from photutils.segmentation import deblend_sources, detect_sources

    from astrohvae.detection.detect import _deblend_sources, deblend_segments

    img = _blended_scene(seed)
    det = convolve(img, Gaussian2DKernel(1.5)).astype(np.float32)
    for thr in (1.0, -0.05):  # -0.05: some segments reach negative values (linear levels)
        segm = detect_sources(det, thr, 5)
        assert segm is not None and segm.n_labels > 5
        labels = segm.labels
        ref = deblend_sources(det, segm, 5, labels=labels, n_levels=32, contrast=0.001, progress_bar=False,
                              n_processes=1)
        ours = _deblend_sources(det, segm, 5, labels, n_levels=32, contrast=0.001)
        np.testing.assert_array_equal(ours.data, ref.data)
        np.testing.assert_array_equal(ours.deblended_labels, ref.deblended_labels)
        assert ref.n_labels > segm.n_labels  # the scene does hold blends
        # through deblend_segments (local-peak pre-selection and top-2 level cut) as well
        ref2 = deblend_sources(det, segm, 5, labels=labels[segm.areas >= 10], n_levels=32, contrast=0.001,
                               progress_bar=False, n_processes=1)
        np.testing.assert_array_equal(deblend_segments(det, segm, 5).data, ref2.data)
        np.testing.assert_array_equal(deblend_segments(det, segm, 5, backend="photutils").data, ref2.data)


def test_cut_stamps_window_gather_equals_per_source_slices(monkeypatch):
    """The vectorised gather (many sources) and the per-source slicing give the same stamps,
    including sources at and beyond the field's edges and masked pixels."""
    import astrohvae.stamps.cutouts as st

    mask = np.zeros((5, 240, 320), bool)
    mask[2, 10:20, 10:40] = True  # a masked region in one band
    field, _ = make_field(BRIGHT, mask=mask)
    bkg = estimate_background(field)
    segm = detect(field, bkg)
    sources = measure_sources(field, segm, bkg)
    ny, nx = field.shape
    ex = np.array([-20.0, -3.2, 0.0, nx - 1.0, nx + 20.0, 5.5, nx / 2, 10.0, nx - 4.4, 30.0, 25.0])
    ey = np.array([5.0, ny + 10.0, 0.4, ny - 1.0, -25.0, ny / 2, -1.0, ny + 30.0, 3.0, 30.0, 15.0])
    src = Table({"id": np.concatenate([np.asarray(sources["id"], np.int32), 1000 + np.arange(ex.size)]),
                 "x": np.concatenate([np.asarray(sources["x"], float), ex]),
                 "y": np.concatenate([np.asarray(sources["y"], float), ey])})
    monkeypatch.setattr(st, "CUT_VECTOR_MIN", 10**9)
    a = st.cut_stamps(field, segm, src, bkg)
    monkeypatch.setattr(st, "CUT_VECTOR_MIN", 1)
    b = st.cut_stamps(field, segm, src, bkg)
    np.testing.assert_array_equal(a.flux, b.flux)
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.sky_sigma, b.sky_sigma)
    assert (b.mask[: len(sources)] & MASK_OWN).any() and (b.mask & MASK_INVALID).any()
    # the field prepared once and handed to several calls (as the pipeline does)
    planes = st.padded_planes(field, segm, bkg)
    c = st.concatenate([st.cut_stamps(field, segm, src[:5], bkg, padded=planes),
                        st.cut_stamps(field, segm, src[5:], bkg, padded=planes)])
    np.testing.assert_array_equal(a.flux, c.flux)
    np.testing.assert_array_equal(a.mask, c.mask)
    assert (b.flux[-1, 2] == 0).sum() >= 300  # the masked region lies in the last stamp


def test_aperture_snr_is_the_circle_flux_over_its_noise_whatever_the_footprint():
    """`profile_features`' ``aperture_snr``: g+r+i flux within SOURCE_RADIUS over sqrt(n) x the g, r, i sky
    sigmas in quadrature; the own segment's extent changes ``snr``, not it."""
    from astrohvae.conventions import MASK_OWN
    from astrohvae.morphology.statistics import profile_features
    from astrohvae.stamps.preprocess import SOURCE_RADIUS

    rng = np.random.default_rng(5)
    n, size = 200, 33
    sky = np.array([0.05, 0.02, 0.02, 0.03, 0.06], np.float32)
    model = gaussian_model((size, size), [(16.0, 16.0, 1.0)])  # centre pixel (16, 16)
    flux = (model[None, None] + rng.normal(size=(n, 5, size, size)) * sky[None, :, None, None]).astype(np.float32)
    yy, xx = np.mgrid[:size, :size]
    rr = np.hypot(yy - 16, xx - 16)
    small = np.where(rr <= 2, MASK_OWN, 0).astype(np.uint8)
    big = np.where(rr <= 6, MASK_OWN, 0).astype(np.uint8)
    meta = Table({"id": np.arange(n)})
    a = profile_features(StampSet(flux, np.repeat(small[None], n, 0), np.tile(sky, (n, 1)), meta))
    b = profile_features(StampSet(flux, np.repeat(big[None], n, 0), np.tile(sky, (n, 1)), meta))
    np.testing.assert_array_equal(a["aperture_snr"], b["aperture_snr"])
    assert np.median(np.abs(a["snr"] - b["snr"])) > 0.5
    circ = rr <= SOURCE_RADIUS
    expect = 3 * model[circ].sum() / np.sqrt((sky[1:4] ** 2).sum() * circ.sum())
    np.testing.assert_allclose(np.mean(a["aperture_snr"]), expect, rtol=0.05)
    assert abs(np.std(a["aperture_snr"]) - 1.0) < 0.15  # white noise: unit scatter
