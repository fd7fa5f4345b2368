"""DS9 region files beside the catalogue (astrohvae.io.ds9, run/survey --regions)."""

from __future__ import annotations

import numpy as np
import pytest
from astropy import units as u
from astropy.table import Table
from astropy.wcs import WCS
from click.testing import CliRunner
from regions import CircleSkyRegion, EllipsePixelRegion, EllipseSkyRegion, Regions

from astrohvae.cli import main
from astrohvae.io.ds9 import GALAXY_COLOUR, STAR_COLOUR, catalog_regions, write_regions


def _wcs():
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [200.0, 36.8]
    w.wcs.crpix = [100, 80]
    # SDSS-like: rotated, flipped (north not up)
    s = 0.396 / 3600
    ang = np.radians(30)
    w.wcs.cd = s * np.array([[-np.cos(ang), np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    w.wcs.radesys = "ICRS"
    return w


def _axis_diff(a, b):
    """Difference of two axis angles (degrees, modulo 180)."""
    return abs((a - b + 90.0) % 180.0 - 90.0)


def _table():
    t = Table()
    t["id"] = np.arange(1, 5, dtype=np.int32)
    t["x"] = [20.0, 60.5, 120.25, 150.0]
    t["y"] = [30.0, 90.0, 40.0, 120.0]
    t["class"] = ["star", "galaxy", "galaxy", "star"]
    t["semimajor_axis"] = np.array([1.5, 4.0, 3.0, 1.4], np.float32)
    t["semiminor_axis"] = np.array([1.4, 2.0, 1.0, 1.3], np.float32)
    t["orientation"] = np.array([0.0, 30.0, 120.0, 10.0], np.float32)
    t["kron_radius"] = np.array([1.2, 1.5, np.nan, 1.1], np.float32)
    return t


def test_regions_round_trip_in_world_coordinates(tmp_path):
    t, w = _table(), _wcs()
    path = write_regions(tmp_path / "c.cat.reg", t, w)
    regs = Regions.read(path, format="ds9")
    assert len(regs) == 4
    kinds = [type(r) for r in regs]
    assert kinds == [CircleSkyRegion, EllipseSkyRegion, EllipseSkyRegion, CircleSkyRegion]
    assert [r.visual["edgecolor"] for r in regs] == [STAR_COLOUR, GALAXY_COLOUR, GALAXY_COLOUR, STAR_COLOUR]
    assert [str(r.meta["text"]) for r in regs] == ["1", "2", "3", "4"]
    sky = w.pixel_to_world(t["x"], t["y"])
    for r, c in zip(regs, sky):
        assert r.center.separation(c).to_value(u.arcsec) < 1e-3
    # back in pixels, the ellipse is the Kron aperture: 2.5 kron_radius x the semi-axes, at the orientation
    g = regs[1].to_pixel(w)
    assert isinstance(g, EllipsePixelRegion)
    assert g.width == pytest.approx(2 * 2.5 * 1.5 * 4.0, rel=1e-3)
    assert g.height == pytest.approx(2 * 2.5 * 1.5 * 2.0, rel=1e-3)
    assert _axis_diff(g.angle.to_value(u.deg), 30.0) < 0.05
    # no Kron radius: 3 x the semi-axes
    g3 = regs[2].to_pixel(w)
    assert g3.width == pytest.approx(2 * 3 * 3.0, rel=1e-3)
    assert _axis_diff(g3.angle.to_value(u.deg), 120.0) < 0.05
    # stars: a circle of 3 sqrt(ab), at least 3 px
    assert regs[0].to_pixel(w).radius == pytest.approx(3 * np.sqrt(1.5 * 1.4), rel=1e-3)


def test_regions_without_wcs_are_in_image_coordinates():
    regs = catalog_regions(_table(), None)
    assert len(regs) == 4 and regs[1].center.x == 60.5 and regs[1].center.y == 90.0


def test_run_writes_regions_beside_the_catalogue(tmp_path):
    from astrohvae.io.catalog import read_catalog
    from astrohvae.simulate.io import write_simulation

    d = tmp_path / "sim"
    write_simulation(d, seed=21, size=(256, 256))
    out = tmp_path / "f.cat.fits"
    res = CliRunner().invoke(main, ["run", str(d), "--out", str(out), "--regions", "--segmenter", "photutils"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert f"regions:   {tmp_path / 'f.cat.reg'}" in res.output
    cat = read_catalog(out)
    regs = Regions.read(tmp_path / "f.cat.reg", format="ds9")
    t = cat.table
    assert len(regs) == len(t) > 5
    star = np.asarray(t["class"]) == "star"
    assert sum(isinstance(r, CircleSkyRegion) for r in regs) == star.sum()
    ra = np.array([r.center.ra.deg for r in regs])
    dec = np.array([r.center.dec.deg for r in regs])
    np.testing.assert_allclose(ra, np.asarray(t["ra"]), atol=1e-7)
    np.testing.assert_allclose(dec, np.asarray(t["dec"]), atol=1e-7)


def test_survey_writes_regions_per_field(tmp_path):
    from astrohvae.pipeline.survey import run_survey
    from astrohvae.simulate.io import write_simulation

    d = tmp_path / "sim"
    write_simulation(d, seed=22, size=(192, 192))
    res = run_survey([d], tmp_path / "out", workers=1, processes=False, progress=False, regions=True,
                     segmenter="photutils")
    assert res.n_failed == 0
    regs = Regions.read(tmp_path / "out" / "sim.cat.reg", format="ds9")
    assert len(regs) == int(res.table["rows"][0]) > 0
