"""Tests of astrohvae.simulate: the SDSS-like field simulator."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.stats import sigma_clipped_stats
from astropy.wcs import WCS

from astrohvae import BANDS, PIXEL_SCALE
from astrohvae.errors import InputError
from astrohvae.simulate.field import MASK_THRESHOLD, field_ids, simulate_field
from astrohvae.simulate.io import read_truth, write_simulation

SIZE = (256, 224)


@pytest.fixture(scope="module")
def sim():
    return simulate_field(7, size=SIZE)


@pytest.fixture(scope="module")
def starsim():
    """Only point sources: bright isolated stars for PSF and WCS checks."""
    return simulate_field(11, size=(320, 320), star_fraction=1.0)


@pytest.fixture(scope="module")
def galsim():
    return simulate_field(12, size=(512, 512), star_fraction=0.0)


def _bright_isolated_stars(s, n=3):
    t = s.truth
    ny, nx = s.truth_mask.shape
    ok = (
        (t["type"] == "star")
        & ~t["saturated"]
        & ~t["blended"]
        & ~t["edge"]
        & (t["x"] > 20) & (t["x"] < nx - 21) & (t["y"] > 20) & (t["y"] < ny - 21)
        & (t["snr_r"] > 150)
    )
    cand = t[ok]
    # no other object brighter than r = 23 within 12 px
    keep = []
    for row in cand:
        d = np.hypot(t["x"] - row["x"], t["y"] - row["y"])
        if np.sum((d < 12) & (t["mag_r"] < 23)) == 1:
            keep.append(row)
    # brightest in the faintest band (u for most stars, z for M dwarfs)
    keep.sort(key=lambda r: max(r["mag_u"] - 20.0, r["mag_z"] - 19.0, r["mag_r"] - 21.0))
    return keep[:n]


def _fit_moffat_fwhm(img, x, y, h=7):
    from astropy.modeling import fitting, models

    ix, iy = int(round(x)), int(round(y))
    cut = img[iy - h : iy + h + 1, ix - h : ix + h + 1].astype(float)
    yy, xx = np.mgrid[-h : h + 1, -h : h + 1]
    m0 = models.Moffat2D(amplitude=cut.max(), x_0=x - ix, y_0=y - iy, gamma=3.0, alpha=3.0) + models.Const2D(0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = fitting.TRFLSQFitter()(m0, xx, yy, cut)
    return m[0].fwhm * PIXEL_SCALE, ix + m[0].x_0.value, iy + m[0].y_0.value


def test_field_ids_distinct_and_named():
    ids = {field_ids(s) for s in (0, 1, 9999, 10000, 59999, 60000, 123456789)}
    assert len(ids) == 7
    assert field_ids(10000) == (100000, 2, 0)
    with pytest.raises(ValueError):
        field_ids(-1)


def test_deterministic(sim):
    again = simulate_field(7, size=SIZE)
    for b in BANDS:
        np.testing.assert_array_equal(sim.frames[b][0], again.frames[b][0])
    np.testing.assert_array_equal(sim.truth_mask, again.truth_mask)
    np.testing.assert_array_equal(sim.truth["mag_r"], again.truth["mag_r"])
    np.testing.assert_array_equal(sim.field.data, again.field.data)


def test_seeds_differ(sim):
    other = simulate_field(8, size=SIZE)
    assert other.name != sim.name
    assert not np.array_equal(other.frames["r"][0], sim.frames["r"][0])


def test_shapes_units_and_field(sim):
    ny, nx = SIZE[1], SIZE[0]
    f = sim.field
    assert f.data.shape == (5, ny, nx) and f.data.dtype == np.float32
    assert f.mask.shape == (5, ny, nx) and f.mask.dtype == bool
    assert f.unit == "nanomaggy" and f.bands == BANDS
    assert sim.truth_mask.shape == (ny, nx) and sim.truth_mask.dtype == np.int32
    # the r band of the field *is* the r frame; other bands lose a strip at
    # the edge equal to their offset
    np.testing.assert_array_equal(f.data[2], sim.frames["r"][0])
    assert not f.mask[2].any()
    for j, b in enumerate(BANDS):
        img, hdr = sim.frames[b]
        assert img.shape == (ny, nx) and img.dtype == np.float32
        assert hdr["FILTER"] == b and hdr["NMGY"] > 0
        assert (hdr["RUN"], hdr["CAMCOL"], hdr["FIELD"]) == field_ids(7)
        if b != "r":
            dx, dy = hdr["BANDDX"], hdr["BANDDY"]
            assert abs(dx) + abs(dy) > 0.5
            frac = f.mask[j].mean()
            expect = 1 - (1 - (abs(dx)) / nx) * (1 - (abs(dy)) / ny)
            assert frac == pytest.approx(expect, abs=0.02)
            assert np.all(f.data[j][f.mask[j]] == 0)


def test_noise_matches_configuration(sim):
    """Pixels far from every object have the configured sky sigma per band."""
    from scipy import ndimage

    for b in BANDS:
        img, hdr = sim.frames[b]
        # truth mask (r grid) shifted to this band, grown to be safe
        occupied = ndimage.shift((sim.truth_mask > 0).astype(float), (hdr["BANDDY"], hdr["BANDDX"]), order=0) > 0
        occupied = ndimage.binary_dilation(occupied, iterations=6)
        _, _, std = sigma_clipped_stats(img[~occupied], sigma=4, maxiters=5)
        assert std == pytest.approx(sim.sky_sigma[b], rel=0.05), b
        assert hdr["SKYSIG"] == pytest.approx(sim.sky_sigma[b])


def test_noise_level_is_sdss_like(sim):
    # measured on the real frames (benchmarks/sim_vs_real.py): u 0.04, g 0.017,
    # r 0.028, i 0.048, z 0.18 nanomaggies (medians)
    ref = {"u": 0.044, "g": 0.017, "r": 0.028, "i": 0.048, "z": 0.18}
    for b in BANDS:
        assert 0.5 < sim.sky_sigma[b] / ref[b] < 2.0


def test_star_fwhm_matches_psf(starsim):
    stars = _bright_isolated_stars(starsim)
    assert stars, "no bright isolated star in the test field"
    for b in BANDS:
        img, hdr = starsim.frames[b]
        w = WCS(hdr)
        fws = []
        for row in stars:
            bx, by = w.all_world2pix(row["ra"], row["dec"], 0)
            fw, _, _ = _fit_moffat_fwhm(img, float(bx), float(by))
            fws.append(fw)
        assert np.median(fws) == pytest.approx(starsim.psf_fwhm[b], rel=0.04), b
        assert 1.0 < starsim.psf_fwhm[b] < 2.2
    # u has the worst seeing
    assert starsim.psf_fwhm["u"] == max(starsim.psf_fwhm.values())


def test_band_offsets_through_wcs(starsim):
    star = _bright_isolated_stars(starsim, n=1)[0]
    wr = WCS(starsim.frames["r"][1])
    _, xr, yr = _fit_moffat_fwhm(starsim.frames["r"][0], star["x"], star["y"])
    assert np.hypot(xr - star["x"], yr - star["y"]) < 0.05
    for b in ("u", "g", "i", "z"):
        img, hdr = starsim.frames[b]
        wb = WCS(hdr)
        dx, dy = hdr["BANDDX"], hdr["BANDDY"]
        # the star sits in band b at its r position plus the header offset ...
        _, xb, yb = _fit_moffat_fwhm(img, star["x"] + dx, star["y"] + dy)
        assert abs(xb - (star["x"] + dx)) < 0.1 and abs(yb - (star["y"] + dy)) < 0.1, b
        # ... and the WCS maps that band position back onto the r position
        ra, dec = wb.all_pix2world(star["x"] + dx, star["y"] + dy, 0)
        x2, y2 = wr.all_world2pix(ra, dec, 0)
        assert abs(x2 - star["x"]) < 0.05 and abs(y2 - star["y"]) < 0.05
        # the aligned field has the star at the r position in every band
        j = BANDS.index(b)
        _, xa, ya = _fit_moffat_fwhm(starsim.field.data[j], star["x"], star["y"])
        assert np.hypot(xa - star["x"], ya - star["y"]) < 0.1, b


def test_truth_mask_covers_objects(galsim):
    t, m = galsim.truth, galsim.truth_mask
    ny, nx = m.shape
    ix, iy = np.round(t["x"]).astype(int), np.round(t["y"]).astype(int)
    inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
    bright = inside & (t["snr_r"] > 15) & ~t["blended"]
    assert bright.sum() >= 5
    assert np.all(m[iy[bright], ix[bright]] == t["id"][bright])
    # every label belongs to a truth object and areas agree
    labels = np.unique(m)
    assert set(labels[labels > 0]) <= set(t["id"])
    for row in t[bright][:5]:
        assert (m == row["id"]).sum() == row["mask_area"] > 0
    # a blended object's footprint touches another one
    assert t["blended"].sum() >= 1
    # the mask threshold is what is documented
    assert MASK_THRESHOLD == 0.5


def test_star_fraction(starsim, galsim):
    assert np.all(starsim.truth["type"] == "star")
    assert np.all(galsim.truth["type"] == "galaxy")
    half = simulate_field(13, size=(200, 200), star_fraction=0.3)
    nstar = np.sum(half.truth["type"] == "star")
    assert nstar == round(0.3 * len(half.truth))
    # the default mix follows the star and galaxy number counts, scaled by
    # the field's Galactic star density
    import astrohvae.simulate.field as S
    from astrohvae.simulate.population import _count

    default = simulate_field(14, size=(300, 300))
    dens = default.meta["params"]["star_density"]

    def expected(d):
        ns = _count(S.STAR_SLOPE, S.STAR_AMP * d, 14.0, 23.5, 1.0)
        ng = _count(S.GAL_SLOPE, S.GAL_AMP, 14.0, 23.5, 1.0)
        return ns / (ns + ng)

    f, n = np.mean(default.truth["type"] == "star"), len(default.truth)
    fe = expected(dens)
    assert abs(f - fe) < 3 * np.sqrt(fe * (1 - fe) / n) + 0.01
    # at typical high latitude (density 1) galaxies dominate
    assert expected(1.0) < 0.2
    with pytest.raises(ValueError):
        simulate_field(1, size=(64, 64), star_fraction=1.5)


def test_faint_galaxies_smaller(galsim):
    t = galsim.truth
    assert np.all(t["size"] > 0)
    bright = t["mag_r"] < 21.0
    faint = t["mag_r"] > 22.5
    assert bright.sum() >= 5 and faint.sum() >= 20
    assert np.median(t["size"][faint]) < 0.6 * np.median(t["size"][bright])
    # faint galaxies are smaller than the PSF (half-light radius < FWHM / 2)
    assert np.median(t["size"][faint]) < 0.5 * galsim.psf_fwhm["r"]


def test_magnitudes_and_colours(sim, starsim):
    t = starsim.truth
    gr = t["mag_g"] - t["mag_r"]
    ri = t["mag_r"] - t["mag_i"]
    # the stellar locus: r-i grows with g-r
    assert np.corrcoef(gr, ri)[0, 1] > 0.6
    tt = sim.truth
    assert np.all((tt["mag_r"] > 11) & (tt["mag_r"] < 23.6))
    # total flux in the noiseless sense: a bright isolated star's aperture sum
    star = _bright_isolated_stars(starsim, n=1)[0]
    img = starsim.frames["r"][0]
    ix, iy = int(round(star["x"])), int(round(star["y"]))
    ap = img[iy - 12 : iy + 13, ix - 12 : ix + 13].sum()
    assert ap == pytest.approx(10 ** (-0.4 * (star["mag_r"] - 22.5)), rel=0.06)


def test_write_read_round_trip(tmp_path):
    out = tmp_path / "sim"
    paths = write_simulation(out, seed=21, size=(96, 80))
    run, camcol, fld = field_ids(21)
    assert [p.name for p in paths] == [f"frame-{b}-{run:06d}-{camcol}-{fld:04d}.fits" for b in BANDS] + [
        f"truth-{run:06d}-{camcol}-{fld:04d}.fits"
    ]
    ref = simulate_field(21, size=(96, 80))
    for b, p in zip(BANDS, paths):
        with fits.open(p) as h:
            assert h[0].data.shape == (80, 96)
            assert h[0].header["FILTER"] == b
            np.testing.assert_array_equal(h[0].data, ref.frames[b][0])
            w = WCS(h[0].header)
            assert w.has_celestial
    t, m = read_truth(out)
    t2, m2 = read_truth(paths[-1])
    np.testing.assert_array_equal(m, ref.truth_mask)
    np.testing.assert_array_equal(m2, m)
    assert list(t["id"]) == list(ref.truth["id"])
    assert list(t["type"]) == list(ref.truth["type"])
    np.testing.assert_allclose(t["x"], ref.truth["x"])
    # no half-written or temporary files left behind
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths)
    # writing again, or into a folder with other content, refuses and
    # leaves the folder as it was
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(InputError, match="not empty"):
        write_simulation(out, seed=21, size=(96, 80))
    with pytest.raises(InputError, match="not empty"):
        write_simulation(out, seed=22, size=(64, 64))
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    with pytest.raises(InputError, match="not a folder"):
        write_simulation(paths[0], seed=23, size=(64, 64))
    # an empty existing folder is fine
    (tmp_path / "empty").mkdir()
    assert len(write_simulation(tmp_path / "empty", seed=24, size=(32, 32))) == 6
    # read_truth: ambiguous folder, missing file, not a truth file
    (out / "truth-copy.fits").write_bytes(paths[-1].read_bytes())
    with pytest.raises(InputError, match="expected exactly one"):
        read_truth(out)
    with pytest.raises(InputError):
        read_truth(tmp_path / "nothing.fits")
    with pytest.raises(InputError, match="not a truth file"):
        read_truth(paths[0])


def test_cli(tmp_path):
    from click.testing import CliRunner

    from astrohvae.cli import main

    res = CliRunner().invoke(main, ["simulate", str(tmp_path / "o"), "--seed", "5", "--size", "64x48"])
    assert res.exit_code == 0, res.output
    assert len(res.output.strip().splitlines()) == 6
    res = CliRunner().invoke(main, ["simulate", str(tmp_path / "o"), "--seed", "5", "--size", "64x48"])
    assert res.exit_code == 2 and "not empty" in res.output


def test_cli_bad_arguments(tmp_path):
    from click.testing import CliRunner

    from astrohvae.cli import main

    for extra in (["--star-fraction", "1.5"], ["--size", "8x8"], ["--size", "abc"]):
        res = CliRunner().invoke(main, ["simulate", str(tmp_path / "o"), "--seed", "5", *extra])
        assert res.exit_code == 2, extra
        assert "Traceback" not in res.output
    res = CliRunner().invoke(main, ["simulate", str(tmp_path / "o"), "--seed", "-3"])
    assert res.exit_code == 2
    assert not (tmp_path / "o").exists()


def test_bleed_conserves_charge():
    from astrohvae.simulate.field import bleed_trails

    counts = np.full((40, 5), 100.0)
    counts[20, 2] = 5000.0
    counts[21, 2] = 3000.0
    out = bleed_trails(counts, 1000.0)
    assert out.max() <= 1000.0 + 1e-9
    assert out.sum() == pytest.approx(counts.sum())
    # the excess runs along the column only, symmetrically-ish around the core
    np.testing.assert_array_equal(out[:, [0, 1, 3, 4]], counts[:, [0, 1, 3, 4]])
    trail = np.nonzero(out[:, 2] >= 1000.0)[0]
    assert trail.size >= 7 and np.all(np.diff(trail) == 1)
    assert 20 in trail and 21 in trail


@pytest.mark.slow
def test_full_field_realistic():
    import time

    t0 = time.process_time()
    s = simulate_field(1)
    cpu = time.process_time() - t0
    assert cpu < 60
    t = s.truth
    assert s.field.data.shape == (5, 1489, 2048)
    # of order two thousand objects to r = 23.5, galaxies dominate faint of r ~ 20
    assert 1000 < len(t) < 4000
    faint = t["mag_r"] > 21
    assert np.mean(t["type"][faint] == "galaxy") > 0.8
    # objects cut by the edges, blends and cosmic rays are present
    assert t["edge"].sum() > 20 and t["blended"].sum() > 20
    assert sum(len(v) for v in s.meta["cosmic_rays"].values()) > 10


def test_cosmic_rays_are_sharp_single_pixel_tracks():
    from astrohvae.simulate.field import add_cosmic_rays

    img = np.zeros((400, 400), np.float32)
    rng = np.random.default_rng(0)
    crs = add_cosmic_rays(rng, img, 0.03, 20.0)  # many, for the statistics
    assert len(crs) > 50
    hit = img > 0
    # sharp: every hit pixel is at least 8 sigma, with no PSF-like wings
    assert img[hit].min() >= 0.6 * 8 * 0.03
    from scipy import ndimage

    lab, n = ndimage.label(hit)
    sizes = np.bincount(lab.ravel())[1:]
    assert np.median(sizes) <= 6


def test_header_keywords(sim):
    for b in BANDS:
        hdr = sim.frames[b][1]
        for key in ("RUN", "CAMCOL", "FIELD", "FRAME", "FILTER", "NMGY", "BUNIT", "SKYSIG", "PSF_FWHM", "EBV", "SATUR"):
            assert key in hdr, (b, key)
        assert hdr["PSF_FWHM"] == pytest.approx(sim.psf_fwhm[b])
        assert 0 < hdr["EBV"] < 1


def test_structured_discs_keep_their_light_and_truth(galsim):
    """Knots and arms move light within a late-type disc: same objects, same total flux, own truth."""

    smooth = simulate_field(12, size=(512, 512), star_fraction=0.0, structure=False)
    t, ts = galsim.truth, smooth.truth
    assert np.array_equal(t["x"], ts["x"]) and np.array_equal(t["mag_r"], ts["mag_r"])
    late = np.flatnonzero((t["knot_frac"] > 0) & (t["mag_r"] < 21))
    assert late.size >= 3 and (ts["knot_frac"] == 0).all()
    assert ((t["knot_frac"][late] >= 0.1) & (t["knot_frac"][late] <= 0.4)).all()
    r = galsim.field.data[2].astype(np.float64)
    rs = smooth.field.data[2].astype(np.float64)
    diff = 0
    for i in late:
        x, y = int(round(t["x"][i])), int(round(t["y"][i]))
        if not (15 <= x < 497 and 15 <= y < 497):
            continue
        box = (slice(y - 15, y + 16), slice(x - 15, x + 16))
        # the same noise draw: the difference is the structure only; it sums to ~0 (flux moved, not added)
        d = r[box] - rs[box]
        assert abs(d.sum()) < 0.05 * max(rs[box].sum(), 1.0) + 10 * galsim.sky_sigma["r"]
        diff += np.abs(d).max() > 3 * galsim.sky_sigma["r"]
    assert diff >= 1
    # every galaxy's knots lie in its own truth footprint (the mask assigns pixels to objects)
    assert (galsim.truth["mask_area"][late] > 0).all()


def test_truth_mask_at_another_isophote(sim):
    from astrohvae.simulate.field import truth_mask

    m05, m1 = truth_mask(sim, MASK_THRESHOLD), truth_mask(sim, 1.0)
    assert np.array_equal(m05, sim.truth_mask)
    assert (m1 > 0).sum() < (m05 > 0).sum()
    inside = m1 > 0
    assert np.array_equal(m1[inside], m05[inside])   # same owner, a subset of the 0.5-sigma footprints
    assert (truth_mask(sim, 0.3) > 0).sum() > (m05 > 0).sum()
