"""Tests of astrohvae.io.readers / astrohvae.io.align (reading and aligning fields)."""

from __future__ import annotations

import bz2
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from astrohvae import BANDS
from astrohvae.errors import InputError
from astrohvae.io import Field, read_field
from astrohvae.io.align import gaussian_centroid, mapping_error, noise_factor, resample

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_FIELD = DATA / "sdss" / "fields" / "004510-4-0030"
NEEDS_DATA = pytest.mark.skipif(
    not (REAL_FIELD / "frame-r-004510-4-0030.fits.bz2").exists(),
    reason=f"real SDSS data not found at {REAL_FIELD} (../shared/data absent)",
)

NY, NX = 60, 80
SHIFTS = {"u": (3.3, 4.6), "g": (5.55, -2.25), "r": (0.0, 0.0), "i": (1.6, 2.95), "z": (-4.2, 6.5)}
STARS = [(20.3, 15.7, 50.0), (55.6, 40.2, 30.0), (40.0, 30.5, 80.0)]  # (x, y, flux) on the r grid


# --------------------------------------------------------------------------- helpers
def wcs_header(dx=0.0, dy=0.0):
    """A TAN WCS like SDSS's (0.396"/px, rotated by 90 deg); band pixel = r pixel + (dx, dy)."""
    h = fits.Header()
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CUNIT1"], h["CUNIT2"] = "deg", "deg"
    h["CRPIX1"], h["CRPIX2"] = 40.0 + dx, 30.0 + dy
    h["CRVAL1"], h["CRVAL2"] = 200.45, 36.81
    s = 0.396 / 3600
    h["CD1_1"], h["CD1_2"], h["CD2_1"], h["CD2_2"] = 1.6e-5, s, s, -1.6e-5
    return h


def star_image(dx=0.0, dy=0.0, sigma=1.5, shape=(NY, NX)):
    """Noiseless Gaussian stars at r positions + (dx, dy) in the band's own pixels."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(float)
    img = np.zeros(shape)
    for x, y, f in STARS:
        img += f / (2 * np.pi * sigma**2) * np.exp(-((xx - x - dx) ** 2 + (yy - y - dy) ** 2) / (2 * sigma**2))
    return img.astype(np.float32)


def write_frames(folder, fid="004510-4-0030", shifts=SHIFTS, bands=BANDS, suffix=".fits", wcs=True, run=None):
    """SDSS-style frame files (one band each) in ``folder``; returns {band: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for b in bands:
        dx, dy = shifts[b]
        h = wcs_header(dx, dy) if wcs else fits.Header()
        h["FILTER"] = b
        h["BUNIT"] = "nanomaggy"
        if run is not None:
            h["RUN"], h["CAMCOL"], h["FRAME"] = run, 4, 30
        p = folder / f"frame-{b}-{fid}{suffix}"
        hdu = fits.PrimaryHDU(star_image(dx, dy), header=h)
        if suffix.endswith(".bz2"):
            raw = folder / f"tmp-{b}.fits"
            hdu.writeto(raw)
            p.write_bytes(bz2.compress(raw.read_bytes()))
            raw.unlink()
        else:
            hdu.writeto(p)
        paths[b] = p
    return paths


def com(img, x, y, h=6):
    """Flux-weighted centroid of a noiseless image in a box around (x, y)."""
    xi, yi = int(round(x)), int(round(y))
    cut = img[yi - h : yi + h + 1, xi - h : xi + h + 1].astype(float)
    yy, xx = np.mgrid[-h : h + 1, -h : h + 1]
    return xi + (cut * xx).sum() / cut.sum(), yi + (cut * yy).sum() / cut.sum()


def random_planes(seed=1, shape=(20, 30)):
    return np.random.default_rng(seed).normal(size=(5,) + shape).astype(np.float32)


# --------------------------------------------------------------------------- (b) cubes
@pytest.mark.parametrize("order_kw", ["ugriz", "zirgu", "u,g,r,i,z"])
def test_cube_round_trip(tmp_path, order_kw):
    planes = random_planes()
    names = [c for c in order_kw if c in BANDS]
    cube = np.stack([planes[BANDS.index(b)] for b in names])
    h = wcs_header()
    h["BANDS"] = order_kw
    h["BUNIT"] = "nanomaggy"
    path = tmp_path / "mycube.fits"
    fits.PrimaryHDU(cube, header=h).writeto(path)
    f = read_field(path)
    assert isinstance(f, Field)
    np.testing.assert_array_equal(f.data, planes)
    assert f.data.dtype == np.float32 and f.mask.dtype == bool
    assert not f.mask.any()
    assert f.name == "mycube" and f.bands == BANDS and f.unit == "nanomaggy"
    assert f.files == (str(path),)
    ra, dec = f.pixel_to_world(39.0, 29.0)  # CRPIX is 1-based
    assert ra == pytest.approx(200.45) and dec == pytest.approx(36.81)


def test_cube_without_wcs_and_nan_inf_masked(tmp_path):
    planes = random_planes()
    planes[1, 3, 4] = np.nan
    planes[4, 10, 11] = np.inf
    planes[0, 0, 0] = -np.inf
    path = tmp_path / "c.fits"
    fits.PrimaryHDU(planes, header=fits.Header([("BANDS", "ugriz")])).writeto(path)
    f = read_field(path)
    assert f.wcs is None
    assert np.isnan(f.pixel_to_world(1, 1)[0])
    expected = ~np.isfinite(planes)
    np.testing.assert_array_equal(f.mask, expected)
    assert np.all(f.data[expected] == 0) and np.all(np.isfinite(f.data))
    np.testing.assert_array_equal(f.data[~expected], planes[~expected])


def test_cube_counts_with_nmgy_are_scaled(tmp_path):
    planes = random_planes()
    h = fits.Header([("BANDS", "ugriz"), ("BUNIT", "counts"), ("NMGY", 0.005)])
    path = tmp_path / "c.fits"
    fits.PrimaryHDU(planes, header=h).writeto(path)
    np.testing.assert_allclose(read_field(path).data, planes * np.float32(0.005), rtol=1e-6)


# --------------------------------------------------------------------------- (a) MEF
def write_mef(path, shifts=None, order=("z", "r", "u", "i", "g"), wcs=True, shapes=None, planes=None):
    hdus = [fits.PrimaryHDU()]
    for b in order:
        dx, dy = (shifts or {}).get(b, (0.0, 0.0))
        h = wcs_header(dx, dy) if wcs else fits.Header()
        h["FILTER"] = b
        data = planes[BANDS.index(b)] if planes is not None else star_image(dx, dy)
        if shapes and b in shapes:
            data = np.zeros(shapes[b], np.float32)
        hdus.append(fits.ImageHDU(data, header=h, name=b.upper()))
    fits.HDUList(hdus).writeto(path)
    return path


def test_mef_round_trip_any_order(tmp_path):
    planes = random_planes(shape=(NY, NX))
    path = write_mef(tmp_path / "mef.fits", planes=planes)
    f = read_field(path)
    np.testing.assert_array_equal(f.data, planes)  # same WCS everywhere: no resampling
    assert not f.mask.any() and f.name == "mef" and f.meta["aligned"] == []
    assert f.meta["offsets"] == {b: (0.0, 0.0) for b in BANDS}


def test_mef_with_offset_wcs_is_aligned_onto_r(tmp_path):
    path = write_mef(tmp_path / "mef.fits", shifts=SHIFTS)
    f = read_field(path)
    assert sorted(f.meta["aligned"]) == sorted(b for b in BANDS if b != "r")
    for b in BANDS:
        dx, dy = f.meta["offsets"][b]
        assert (dx, dy) == pytest.approx(SHIFTS[b], abs=1e-6)
    for x, y, flux in STARS:
        for i, b in enumerate(BANDS):
            cx, cy = com(f.data[i], x, y)
            assert (cx, cy) == pytest.approx((x, y), abs=0.02), b
            # bilinear weights sum to one: the star's flux is kept
            assert f.data[i][int(y) - 8 : int(y) + 9, int(x) - 8 : int(x) + 9].sum() == pytest.approx(flux, rel=0.01)


# --------------------------------------------------------------------------- (c) SDSS frames
def test_frames_one_file_folder_glob_list_agree(tmp_path):
    paths = write_frames(tmp_path / "f")
    fields = [
        read_field(paths["g"]),
        read_field(tmp_path / "f"),
        read_field(str(tmp_path / "f" / "frame-*-004510-4-0030.fits")),
        read_field([str(paths[b]) for b in ("z", "i", "r", "g", "u")]),
    ]
    for f in fields:
        assert f.name == "004510-4-0030"
        assert f.files == tuple(str(paths[b]) for b in BANDS)
        np.testing.assert_array_equal(f.data, fields[0].data)
        np.testing.assert_array_equal(f.mask, fields[0].mask)
    f = fields[0]
    np.testing.assert_array_equal(f.data[2], star_image())  # r untouched
    for b in BANDS:
        assert f.meta["offsets"][b] == pytest.approx(SHIFTS[b], abs=1e-6)
    for x, y, _ in STARS:
        for i in range(5):
            assert com(f.data[i], x, y) == pytest.approx((x, y), abs=0.02)


def write_gz(folder):
    import gzip

    paths = write_frames(folder)
    for b, p in paths.items():
        gz = p.with_name(p.name + ".gz")
        gz.write_bytes(gzip.compress(p.read_bytes()))
        p.unlink()
        paths[b] = gz
    return paths


@pytest.mark.parametrize("kind", ["bz2", "gz"])
def test_frames_compressed(tmp_path, kind):
    if kind == "bz2":
        paths = write_frames(tmp_path / "f", suffix=".fits.bz2")
    else:
        paths = write_gz(tmp_path / "f")
    f = read_field(paths["r"])
    plain = read_field(write_frames(tmp_path / "p")["r"])
    np.testing.assert_array_equal(f.data, plain.data)
    assert f.name == "004510-4-0030"
    assert f.files == tuple(str(paths[b]) for b in BANDS)
    assert read_field(f) is f  # a Field passes through


def test_footprint_edges_are_masked(tmp_path):
    f = read_field(write_frames(tmp_path / "f")["r"])
    assert not f.mask[2].any()
    # z is shifted by dx = -4.2: r columns x with x - 4.2 < 0 have no z data
    zi = BANDS.index("z")
    cols = np.where(f.mask[zi].all(axis=0))[0]
    np.testing.assert_array_equal(cols, np.arange(5))
    # and dy = +6.5: r rows with y + 6.5 > NY - 1 are outside
    rows = np.where(f.mask[zi].all(axis=1))[0]
    np.testing.assert_array_equal(rows, np.arange(NY - 7, NY))
    assert np.all(f.data[f.mask] == 0)


def test_nan_mask_propagates_through_resampling(tmp_path):
    paths = write_frames(tmp_path / "f")
    with fits.open(paths["g"], mode="update") as h:
        h[0].data[30, 40] = np.nan
    f = read_field(paths["r"])
    gi = BANDS.index("g")
    inner = f.mask[gi][10:-10, 10:-10]
    # g pixel (40, 30) is reached from r pixels x + 5.55 in (39, 41), y - 2.25 in (29, 31):
    # x in {34, 35}, y in {32, 33} -> exactly the 2x2 block whose bilinear weights touch it
    ys, xs = np.where(inner)
    assert sorted(zip(ys + 10, xs + 10)) == [(32, 34), (32, 35), (33, 34), (33, 35)]
    assert np.all(f.data[gi][f.mask[gi]] == 0)


@pytest.mark.parametrize("fx,fy", [(0.0, 0.0), (0.5, 0.5), (0.55, 0.24), (0.3, 0.0)])
def test_noise_factor_bilinear_known_answer(fx, fy):
    coords = np.mgrid[:50, :60].astype(float)
    coords[0] += 7 + fy
    coords[1] += 3 + fx
    expected = np.sqrt((fx**2 + (1 - fx) ** 2) * (fy**2 + (1 - fy) ** 2))
    assert noise_factor(coords, order=1) == pytest.approx(expected, rel=0.03)
    assert noise_factor(coords, order=0) == pytest.approx(1.0, abs=0.01)


def test_noise_factor_recorded_in_meta(tmp_path):
    f = read_field(write_frames(tmp_path / "f")["r"])
    for b in BANDS:
        fx, fy = np.mod(SHIFTS[b], 1.0)
        expected = np.sqrt((fx**2 + (1 - fx) ** 2) * (fy**2 + (1 - fy) ** 2))
        assert f.meta["noise_factor"][b] == pytest.approx(expected, rel=0.03), b


def test_resample_identity_and_order_check():
    img = random_planes(shape=(10, 12))[0]
    coords = np.mgrid[:10, :12].astype(float)
    for order in (0, 1, 3):
        out, m = resample(img, None, coords, order=order)
        np.testing.assert_allclose(out[~m], img[~m], atol=1e-5)
    with pytest.raises(ValueError):
        resample(img, None, coords, order=2)


def many_star_frames(folder, wcs_error, n=25, shape=(160, 200), seed=3):
    """Frames with ``n`` stars whose band WCS is wrong by ``wcs_error[band]`` px."""
    rng = np.random.default_rng(seed)
    pos = []
    while len(pos) < n:
        x, y = rng.uniform(20, shape[1] - 20), rng.uniform(20, shape[0] - 20)
        if all(np.hypot(x - a, y - b) > 15 for a, b, _ in pos):
            pos.append((x, y, rng.uniform(200, 1000)))
    folder.mkdir(parents=True)
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(float)
    for b in BANDS:
        dx, dy = SHIFTS[b]
        ex, ey = wcs_error.get(b, (0.0, 0.0))
        img = rng.normal(0, 0.05, shape)
        for x, y, f in pos:
            img += f / (2 * np.pi * 1.5**2) * np.exp(-((xx - x - dx - ex) ** 2 + (yy - y - dy - ey) ** 2) / 4.5)
        h = wcs_header(dx, dy)
        h["FILTER"] = b
        fits.PrimaryHDU(img.astype(np.float32), header=h).writeto(folder / f"frame-{b}-000001-1-0001.fits")
    return [(x, y) for x, y, _ in pos]


def test_star_refinement_corrects_a_wrong_wcs(tmp_path):
    err = {"g": (0.6, -0.4), "z": (-0.3, 0.25)}
    pos = many_star_frames(tmp_path / "f", err)
    fixed = read_field(tmp_path / "f")
    plain = read_field(tmp_path / "f", refine=False)
    for b in BANDS:
        ref = fixed.meta["refinement"][b]
        expected = err.get(b, (0.0, 0.0))
        if b != "r":
            assert ref["nstars"] >= 15
            assert ref["refine"] == pytest.approx(expected, abs=0.03), b
            assert fixed.meta["offsets"][b] == pytest.approx(np.add(SHIFTS[b], expected), abs=0.03)
        assert plain.meta["refinement"][b]["refine"] == (0.0, 0.0)
        assert plain.meta["offsets"][b] == pytest.approx(SHIFTS[b], abs=1e-6)
    gi = BANDS.index("g")
    for x, y in pos[:8]:
        assert com(fixed.data[gi], x, y, h=4) == pytest.approx((x, y), abs=0.05)
        cx, cy = com(plain.data[gi], x, y, h=4)
        assert (cx - x, cy - y) == pytest.approx(err["g"], abs=0.05)


# --------------------------------------------------------------------------- bad input
def check_error(target, path_part, *words):
    with pytest.raises(InputError) as exc:
        read_field(target)
    msg = str(exc.value)
    assert "\n" not in msg
    assert path_part in exc.value.path, (exc.value.path, path_part)
    for w in words:
        assert w in exc.value.problem, (exc.value.problem, w)
    return exc.value


def test_error_missing_path(tmp_path):
    check_error(tmp_path / "nope.fits", "nope.fits", "no such file")


def test_error_glob_matches_nothing(tmp_path):
    check_error(str(tmp_path / "frame-*-nothing.fits"), "frame-*-nothing", "no file matches")


def test_error_missing_band_in_folder_and_beside_file(tmp_path):
    paths = write_frames(tmp_path / "f", bands=("u", "g", "r", "z"))
    e = check_error(tmp_path / "f", "f", "missing band(s) i", "004510-4-0030")
    e = check_error(paths["r"], "f", "missing band(s) i", "004510-4-0030")
    assert e.path == str(tmp_path / "f")


def test_error_not_fits(tmp_path):
    p = tmp_path / "notes.fits"
    p.write_text("hello, I am not a FITS file\n" * 10)
    check_error(p, "notes.fits", "not a FITS file")


def test_error_truncated_fits(tmp_path):
    path = write_mef(tmp_path / "mef.fits")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    check_error(path, "mef.fits", "truncated")


def test_error_truncated_bz2(tmp_path):
    paths = write_frames(tmp_path / "f", suffix=".fits.bz2")
    raw = paths["i"].read_bytes()
    paths["i"].write_bytes(raw[: len(raw) // 2])
    check_error(paths["r"], "frame-i-004510-4-0030.fits.bz2", "truncated")


def test_error_bz2_name_but_not_bz2(tmp_path):
    paths = write_frames(tmp_path / "f", suffix=".fits.bz2")
    paths["u"].write_bytes(b"SIMPLE  = garbage" * 100)
    check_error(paths["r"], "frame-u", "not a valid bzip2 file")


def test_error_mef_mismatched_shapes(tmp_path):
    path = write_mef(tmp_path / "m.fits", wcs=False, shapes={"g": (NY, NX - 1)})
    check_error(path, "m.fits", "mismatched shapes", "g:")


def test_error_mef_missing_band_and_duplicate(tmp_path):
    check_error(write_mef(tmp_path / "m.fits", order=("u", "g", "r", "i")), "m.fits", "missing band(s) z")
    check_error(write_mef(tmp_path / "d.fits", order=("u", "g", "r", "i", "z", "g")), "d.fits", "band g", "more than one")


def test_error_cube_plane_count_and_no_bands(tmp_path):
    p = tmp_path / "c4.fits"
    fits.PrimaryHDU(random_planes()[:4], header=fits.Header([("BANDS", "ugriz")])).writeto(p)
    check_error(p, "c4.fits", "4 planes")
    q = tmp_path / "c5.fits"
    fits.PrimaryHDU(random_planes()).writeto(q)
    check_error(q, "c5.fits", "BANDS")


def test_error_all_nan_band(tmp_path):
    planes = random_planes()
    planes[3] = np.nan
    p = tmp_path / "c.fits"
    fits.PrimaryHDU(planes, header=fits.Header([("BANDS", "ugriz")])).writeto(p)
    check_error(p, "c.fits", "band i", "NaN")


def test_error_frames_without_wcs(tmp_path):
    paths = write_frames(tmp_path / "f", wcs=False)
    check_error(paths["r"], "frame-u", "no celestial WCS")


def test_error_mixed_fields(tmp_path):
    a = write_frames(tmp_path / "a", fid="004510-4-0030")
    b = write_frames(tmp_path / "b", fid="001035-6-0017")
    check_error([a["u"], a["g"], a["r"], a["i"], b["z"]], "frame-z-001035-6-0017", "different fields")
    both = tmp_path / "both"
    both.mkdir()
    for p in list(a.values()) + list(b.values()):
        (both / p.name).write_bytes(p.read_bytes())
    check_error(both, "both", "2 different fields", "001035-6-0017", "004510-4-0030")
    # same names but RUN/CAMCOL headers of different fields
    c = write_frames(tmp_path / "c", run=4510)
    with fits.open(c["g"], mode="update") as h:
        h[0].header["RUN"] = 1035
    check_error(c["r"], "frame-g", "different fields")


def test_error_unknown_unit(tmp_path):
    p = tmp_path / "c.fits"
    fits.PrimaryHDU(random_planes(), header=fits.Header([("BANDS", "ugriz"), ("BUNIT", "Jy")])).writeto(p)
    check_error(p, "c.fits", "BUNIT", "Jy")


def test_error_single_band_file(tmp_path):
    p = tmp_path / "one.fits"
    fits.PrimaryHDU(star_image(), header=fits.Header([("FILTER", "r")])).writeto(p)
    check_error(p, "one.fits", "only band r")


# --------------------------------------------------------------------------- real SDSS data
def _sky_sigma(img, mask):
    v = img[~mask]
    return 1.4826 * np.median(np.abs(v - np.median(v)))


def _clean_bright_stars(field, stars, h):
    """Indices of catalogued stars usable for astrometry, by objective criteria only.

    S/N >= 20 in every band (PSF flux over the noise in an effective PSF area),
    not saturated (r PSF flux < 1000 nmgy, i.e. fainter than r = 15), the
    cutout fully inside all bands and unmasked, and isolated: no other
    catalogued star within 12 px and no other >5 sigma peak within 12 px in r.
    """
    from photutils.detection import find_peaks

    sig = np.array([_sky_sigma(field.data[i], field.mask[i]) for i in range(5)])
    flux = np.asarray(stars["PSFFLUX"], float)
    x, y = np.asarray(stars["x_r"], float), np.asarray(stars["y_r"], float)
    snr = flux / (sig * np.sqrt(4 * np.pi) * 1.6)  # PSF sigma ~ 1.6 px
    ri = BANDS.index("r")
    peaks = find_peaks(field.data[ri], 5 * sig[ri], box_size=5, mask=field.mask[ri])
    px, py = np.asarray(peaks["x_peak"], float), np.asarray(peaks["y_peak"], float)
    keep = []
    ny, nx = field.shape
    for k in range(len(stars)):
        if not (snr[k].min() >= 20 and flux[k, ri] < 1000):
            continue
        xi, yi = int(round(x[k])), int(round(y[k]))
        if not (20 <= xi < nx - 20 and 20 <= yi < ny - 20):
            continue
        if field.mask[:, yi - h : yi + h + 1, xi - h : xi + h + 1].any():
            continue
        d_star = np.hypot(x - x[k], y - y[k])
        d_peak = np.hypot(px - x[k], py - y[k])
        if np.sum(d_star < 12) > 1 or np.sum(d_peak < 12) > 1:
            continue
        keep.append(k)
    return keep




@pytest.fixture(scope="module")
def real_field():
    return read_field(REAL_FIELD / "frame-r-004510-4-0030.fits.bz2")


@pytest.fixture(scope="module")
def real_stars():
    from astropy.table import Table

    return Table.read(REAL_FIELD / "stars_in_frame_004510-4-0030.fits")


@NEEDS_DATA
@pytest.mark.realdata
def test_real_field_basic(real_field):
    f = real_field
    assert f.name == "004510-4-0030" and f.shape == (1489, 2048)
    assert f.data.dtype == np.float32 and f.unit == "nanomaggy"
    assert f.wcs is not None and f.wcs.has_celestial
    assert not f.mask[2].any()
    # the masked strips are the footprint edges: a few px, not more
    for i in range(5):
        assert f.mask[i].mean() < 0.02
    assert np.all(f.data[f.mask] == 0)
    # offsets are those of the real frames: several pixels
    dx, dy = f.meta["offsets"]["g"]
    assert np.hypot(dx, dy) > 5


@NEEDS_DATA
@pytest.mark.realdata
def test_real_mapping_interpolation_is_exact(real_field):
    from astrohvae.io.readers import _celestial_wcs

    for b in BANDS:
        wb = _celestial_wcs(real_field.meta["headers"][b])
        assert mapping_error(real_field.wcs, wb, real_field.shape) < 1e-4


@NEEDS_DATA
@pytest.mark.realdata
def test_real_stars_aligned_within_02_px(real_field, real_stars):
    h = 7
    keep = _clean_bright_stars(real_field, real_stars, h)
    assert len(keep) >= 8, f"only {len(keep)} clean bright stars"
    ri = BANDS.index("r")
    for i, b in enumerate(BANDS):
        if i == ri:
            continue
        res = []
        for k in keep:
            x0, y0 = gaussian_centroid(real_field.data[ri], real_stars["x_r"][k], real_stars["y_r"][k], h)
            x1, y1 = gaussian_centroid(real_field.data[i], x0, y0, h)
            res.append(np.hypot(x1 - x0, y1 - y0))
        res = np.array(res)
        assert np.median(res) < 0.1, (b, np.median(res))
        assert res.max() < 0.2, (b, res.max())


@NEEDS_DATA
@pytest.mark.realdata
def test_real_raw_frames_are_offset_by_several_pixels(real_field, real_stars):
    """Without alignment the same stars sit several pixels away in g: the test above can fail."""
    from astrohvae.io.readers import _open_checked

    raw_g = _open_checked(REAL_FIELD / "frame-g-004510-4-0030.fits.bz2")[0][1]
    h = 7
    keep = _clean_bright_stars(real_field, real_stars, h)
    ri = BANDS.index("r")
    dx, dy = real_field.meta["offsets"]["g"]
    offs = []
    for k in keep:
        x0, y0 = gaussian_centroid(real_field.data[ri], real_stars["x_r"][k], real_stars["y_r"][k], h)
        # search the raw g frame around the r position with a box big enough for the offset
        xi, yi = int(round(x0)), int(round(y0))
        box = raw_g[yi - 15 : yi + 16, xi - 15 : xi + 16]
        py, px = np.unravel_index(np.argmax(box), box.shape)
        x1, y1 = gaussian_centroid(raw_g, xi - 15 + px, yi - 15 + py, h)
        offs.append((x1 - x0, y1 - y0))
    offs = np.array(offs)
    raw = np.hypot(offs[:, 0], offs[:, 1])
    assert np.median(raw) > 5  # several pixels
    # and the WCS-derived offset recorded in meta is what the stars show
    assert np.median(offs[:, 0]) == pytest.approx(dx, abs=0.2)
    assert np.median(offs[:, 1]) == pytest.approx(dy, abs=0.2)
