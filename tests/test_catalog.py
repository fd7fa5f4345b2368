"""The catalogue FITS writer/reader follows catalog-schema.md exactly."""

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from astrohvae import BANDS
from astrohvae.errors import InputError, OutputError
from astrohvae.io.catalog import (
    CATALOG_COLUMNS,
    empty_table,
    is_complete,
    read_catalog,
    write_catalog,
)

EXPECTED_FITS_TYPES = {
    "id": "J", "x": "D", "y": "D", "ra": "D", "dec": "D", "p_galaxy": "E",
    "z_hvae": "2E", "z_hvae_sigma": "2E", "z_ae": "30E", "area": "J", "flags": "J",
    **{f"flux_{b}": "E" for b in BANDS}, **{f"flux_err_{b}": "E" for b in BANDS},
    **{f"mag_{b}": "E" for b in BANDS},
}


def make_table(n=3, d=2, rng=None):
    rng = rng or np.random.default_rng(0)
    t = Table()
    t["id"] = np.arange(1, n + 1, dtype=np.int64)  # wrong width on purpose: the writer casts
    t["x"] = rng.uniform(0, 100, n)
    t["y"] = rng.uniform(0, 80, n)
    t["ra"] = np.full(n, np.nan)
    t["dec"] = np.full(n, np.nan)
    t["class"] = np.where(np.arange(n) % 2, "galaxy", "star")
    t["p_galaxy"] = rng.uniform(0, 1, n)
    t["z_hvae"] = rng.normal(size=(n, d))
    t["z_hvae_sigma"] = rng.uniform(0.1, 1, (n, d))
    t["z_ae"] = rng.normal(size=(n, 30))
    for b in BANDS:
        t[f"flux_{b}"] = rng.uniform(1, 10, n)
        t[f"flux_err_{b}"] = rng.uniform(0.1, 1, n)
        t[f"mag_{b}"] = rng.uniform(18, 24, n)
    t["area"] = rng.integers(5, 100, n)
    t["flags"] = np.zeros(n, dtype=np.int64)
    t["flags"][0] = 4
    return t


def test_roundtrip_types_and_hdus(tmp_path):
    t = make_table(4)
    seg = np.zeros((80, 100), np.int64)
    seg[10:12, 10:12] = 1
    cls = (seg > 0).astype(np.int64)
    masks = np.zeros((4, 64, 64), bool)
    masks[0, 32, 32] = True
    out = write_catalog(tmp_path / "c.fits", t, seg, cls, masks,
                        {"MODELSHA": "deadbeef", "CLFMETH": "A+Vr", "DETNSIG": 1.5,
                         "INFILE": ["frame-r.fits", "frame-g.fits"]})
    with fits.open(out) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "CATALOG", "SEGMAP", "CLASSMAP", "MASKS"]
        h = hdul[0].header
        assert (h["BANDS"], h["REFBAND"], h["XYORIGIN"], h["MODELSHA"]) == ("ugriz", "r", 0, "deadbeef")
        assert h["ASTHVVER"] and h["FLUXTYPE"] == "segment" and h["NINFILE"] == 2
        assert h["INFILE2"] == "frame-g.fits" and h["DETNSIG"] == 1.5
        cols = hdul["CATALOG"].columns
        assert cols.names[: len(CATALOG_COLUMNS)] == [c[0] for c in CATALOG_COLUMNS]
        for name, form in EXPECTED_FITS_TYPES.items():
            assert cols[name].format == form, name
        assert cols["class"].format.startswith("A") or cols["class"].format.endswith("A")
        assert hdul["SEGMAP"].data.dtype.name in ("int32", ">i4") or hdul["SEGMAP"].header["BITPIX"] == 32
        assert hdul["CLASSMAP"].header["BITPIX"] == 8 and hdul["MASKS"].header["BITPIX"] == 8
        assert hdul["MASKS"].data.shape == (4, 64, 64)
    cat = read_catalog(out)
    assert len(cat) == 4 and list(cat.table["id"]) == [1, 2, 3, 4]
    assert list(cat.table["class"]) == ["star", "galaxy", "star", "galaxy"]
    assert cat.table["z_hvae"].shape == (4, 2) and cat.table["z_ae"].shape == (4, 30)
    np.testing.assert_allclose(cat.table["x"], t["x"])  # float64 kept exactly
    assert cat.masks[0, 32, 32] == 1 and cat.masks.sum() == 1
    assert cat.segmap.dtype == np.int32 and cat.classmap.dtype == np.uint8
    assert is_complete(out)
    assert not list(tmp_path.glob(".*tmp"))


def test_empty_catalogue_is_valid(tmp_path):
    out = write_catalog(tmp_path / "e.fits", empty_table(1), np.zeros((30, 40)), np.zeros((30, 40)),
                        np.zeros((0, 64, 64)))
    cat = read_catalog(out)
    assert len(cat) == 0 and cat.masks.shape == (0, 64, 64)
    assert cat.table["z_hvae"].shape == (0, 1) and cat.table["z_ae"].shape == (0, 30)
    assert set(c[0] for c in CATALOG_COLUMNS) <= set(cat.table.colnames)
    assert is_complete(out)


def test_bad_pieces_raise_and_leave_nothing(tmp_path):
    t = make_table(3)
    with pytest.raises(ValueError, match="MASKS"):
        write_catalog(tmp_path / "c.fits", t, np.zeros((5, 5)), np.zeros((5, 5)), np.zeros((2, 64, 64)))
    t2 = make_table(3)
    t2["id"] = [1, 3, 2]
    with pytest.raises(ValueError, match="ids"):
        write_catalog(tmp_path / "c.fits", t2, np.zeros((5, 5)), np.zeros((5, 5)), np.zeros((3, 64, 64)))
    t3 = make_table(3)
    t3.remove_column("p_galaxy")
    with pytest.raises(ValueError, match="p_galaxy"):
        write_catalog(tmp_path / "c.fits", t3, np.zeros((5, 5)), np.zeros((5, 5)), np.zeros((3, 64, 64)))
    assert list(tmp_path.iterdir()) == []


def test_failure_during_write_leaves_no_file(tmp_path, monkeypatch):
    def half_write(self, name, **kw):
        with open(name, "wb") as fh:
            fh.write(b"SIMPLE  =" + b" " * 100)
        raise OSError("disk full")

    monkeypatch.setattr(fits.HDUList, "writeto", half_write)
    with pytest.raises(OutputError, match="disk full"):
        write_catalog(tmp_path / "c.fits", make_table(2), np.zeros((5, 5)), np.zeros((5, 5)),
                      np.zeros((2, 64, 64)))
    assert list(tmp_path.iterdir()) == []


def test_unwritable_folder_and_truncated_file(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        write_catalog(tmp_path / "nope" / "c.fits", make_table(1), np.zeros((5, 5)), np.zeros((5, 5)),
                      np.zeros((1, 64, 64)))
    out = write_catalog(tmp_path / "c.fits", make_table(2), np.zeros((500, 500)), np.zeros((500, 500)),
                        np.zeros((2, 64, 64)))
    raw = out.read_bytes()
    trunc = tmp_path / "t.fits"
    trunc.write_bytes(raw[: len(raw) // 2])
    assert not is_complete(trunc)
    assert not is_complete(tmp_path / "missing.fits")
    with pytest.raises(InputError):
        read_catalog(tmp_path / "missing.fits")
    junk = tmp_path / "j.fits"
    junk.write_bytes(b"not a fits file")
    with pytest.raises(InputError):
        read_catalog(junk)


def _wcs(ny=80, nx=100):
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [15.0, 0.5]
    w.wcs.crpix = [nx / 2, ny / 2]
    w.wcs.cdelt = [-0.396 / 3600, 0.396 / 3600]
    w.wcs.radesys = "ICRS"
    return w


def _full_table(n=4):
    from astrohvae.io.catalog import MEASURE_COLUMNS

    t = make_table(n)
    rng = np.random.default_rng(1)
    for name, dtype in MEASURE_COLUMNS:
        t[name] = rng.uniform(0.5, 5, n).astype(dtype)
    t["flux_g"][1] = np.nan
    return t


def test_fits_conventions_read_cleanly(tmp_path):
    """Units parse without a warning, checksums verify, every column is described, WCS on the maps."""
    import warnings

    from astropy import units as u
    from astropy.wcs import WCS

    from astrohvae.io.catalog import COLUMN_INFO, FLAG_BITS

    n = 4
    seg = np.zeros((80, 100), np.int32)
    out = write_catalog(tmp_path / "c.fits", _full_table(n), seg, seg.astype(np.uint8),
                        np.zeros((n, 64, 64), np.uint8), wcs=_wcs())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = Table.read(out, hdu="CATALOG")
        with fits.open(out, checksum=True) as hdul:  # raises/warns on a wrong CHECKSUM or DATASUM
            for h in hdul:
                assert "CHECKSUM" in h.header and "DATASUM" in h.header
            ph, ch = hdul[0].header, hdul["CATALOG"].header
            for name in ("SEGMAP", "CLASSMAP"):
                w = WCS(hdul[name].header)
                assert w.has_celestial
                assert np.allclose(w.wcs.crval, [15.0, 0.5])
    assert t["area"].unit == u.pix**2 and t["ra"].unit == u.deg and t["mag_err_r"].unit == u.mag
    assert t["flux_r"].unit is None  # no FITS unit string is a nanomaggy: see FLUX_UNIT_NOTE
    for i, name in enumerate(t.colnames, 1):
        assert ch[f"TCOMM{i}"] == COLUMN_INFO[name][2], name
        if COLUMN_INFO[name][1]:
            assert ch[f"TUCD{i}"] == COLUMN_INFO[name][1]
    assert ph["RADESYS"] == "ICRS" and ph["EQUINOX"] == 2000.0 and len(ph["DATE"]) == 19
    assert ph["FLUXUNIT"] == "nanomaggy" and ph["MAGTYPE"] == "asinh"
    assert ph["SOFTB_R"] == pytest.approx(1.2e-10) and ph["SOFTB_U"] == pytest.approx(1.4e-10)
    assert [ph[f"FLAGBIT{k}"] for k in range(5)] == [v[:47] for v in FLAG_BITS.values()]
    # the project's reader gives the fluxes their unit back; NaN stays NaN
    cat = read_catalog(out)
    assert cat.table["flux_r"].unit == u.nanomaggy
    assert np.isnan(np.ma.filled(cat.table["flux_g"], np.nan)[1])


def test_fitsverify_clean(tmp_path):
    import shutil
    import subprocess

    exe = shutil.which("fitsverify")
    if exe is None:
        pytest.skip("fitsverify not installed (apt-get install fitsverify)")
    n = 3
    seg = np.zeros((80, 100), np.int32)
    out = write_catalog(tmp_path / "c.fits", _full_table(n), seg, seg.astype(np.uint8),
                        np.zeros((n, 64, 64), np.uint8), wcs=_wcs())
    res = subprocess.run([exe, "-e", str(out)], capture_output=True, text=True)
    assert "0 warning(s) and 0 error(s)" in res.stdout, res.stdout[-2000:]
