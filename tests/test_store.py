"""Tests of astrohvae.store: the zarr stamp store."""

import json
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

import astrohvae.stamps.store as store_mod
from astrohvae.errors import InputError
from astrohvae.io.field import Field
from astrohvae.pipeline.field import find_sources
from astrohvae.pipeline.loading import load_segmenter
from astrohvae.stamps.cutouts import cut_stamps
from astrohvae.stamps.store import build_store, match_truth, open_store

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def make_field(seed, name, n=5, shape=(160, 200), files=()):
    rng = np.random.default_rng(seed)
    ny, nx = shape
    yy, xx = np.mgrid[:ny, :nx]
    data = rng.normal(0, 0.01, (5, ny, nx))
    pos = []
    for _ in range(n):
        x, y = rng.uniform(10, nx - 10), rng.uniform(10, ny - 10)
        pos.append((x, y))
        g = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.5**2))
        data += rng.uniform(2, 6) * g / g.sum()
    f = Field(data.astype(np.float32), np.zeros(data.shape, bool), name=name, files=tuple(files))
    return f, pos


@pytest.fixture(scope="module")
def fields():
    return [make_field(s, f"f{s}")[0] for s in (1, 2, 3)]


_EXPECTED = {}


def expected(field):
    """The stamps `astrohvae run` would cut from ``field`` (cached by field name)."""
    if field.name not in _EXPECTED:
        bkg, segm, src = find_sources(field, segmenter=load_segmenter("auto", device="cpu"))
        _EXPECTED[field.name] = cut_stamps(field, segm, src, bkg)
    return _EXPECTED[field.name]


def test_round_trip_values_equal(tmp_path, fields):
    out = tmp_path / "s.zarr"
    summary = build_store(fields[:2], out, progress=False)
    exp = [expected(f) for f in fields[:2]]
    n = sum(len(e) for e in exp)
    assert summary["added"] == summary["total"] == n and summary["n_fields"] == 2
    assert summary["fields_added"] == ["f1", "f2"]
    st = open_store(out)
    assert len(st) == n and st.fields == ["f1", "f2"]
    assert st.flux.shape == (n, 5, 64, 64) and st.mask.shape == (n, 64, 64) and st.sky_sigma.shape == (n, 5)
    np.testing.assert_array_equal(st.flux.compute(), np.concatenate([e.flux for e in exp]))
    np.testing.assert_array_equal(st.mask.compute(), np.concatenate([e.mask for e in exp]))
    np.testing.assert_array_equal(st.sky_sigma.compute(), np.concatenate([e.sky_sigma for e in exp]))
    meta = st.meta
    assert list(meta["field"]) == ["f1"] * len(exp[0]) + ["f2"] * len(exp[1])
    for col in ("id", "x", "y", "flags", "xc", "yc", "dx", "dy"):
        np.testing.assert_array_equal(meta[col], np.concatenate([e.meta[col] for e in exp]))
    assert np.all(meta["truth_type"] == -1) and np.all(np.isnan(meta["truth_mag_r"]))
    # slicing to numpy StampSets
    part = st[2:5]
    np.testing.assert_array_equal(part.flux, exp[0].flux[2:5])
    rows = st[[n - 1, 0, n - 1]]
    assert list(rows.meta["field"]) == ["f2", "f1", "f2"]
    np.testing.assert_array_equal(rows.flux[1], exp[0].flux[0])
    np.testing.assert_array_equal(rows.mask[0], exp[1].mask[-1])
    assert len(st[np.zeros(n, bool)]) == 0
    assert len(st[-1]) == 1


def test_append_and_idempotent_rerun(tmp_path, fields):
    out = tmp_path / "s.zarr"
    s1 = build_store(fields[:1], out, progress=False)
    s2 = build_store(fields[:2], out, progress=False)
    assert s2["fields_skipped"] == ["f1"] and s2["fields_added"] == ["f2"]
    assert s2["total"] == s1["total"] + len(expected(fields[1]))
    s3 = build_store(fields[:2], out, progress=False)
    assert s3["added"] == 0 and s3["total"] == s2["total"] and s3["fields_skipped"] == ["f1", "f2"]
    st = open_store(out)
    assert len(st) == s2["total"] and st.fields == ["f1", "f2"]
    assert len(set(zip(st.meta["field"], st.meta["id"]))) == len(st)  # no duplicated rows
    # append=False starts over
    s4 = build_store(fields[2:], out, append=False, progress=False)
    assert s4["total"] == len(expected(fields[2])) and open_store(out).fields == ["f3"]


def test_interrupted_run_recovers_without_duplicates(tmp_path, fields, monkeypatch):
    out = tmp_path / "s.zarr"
    build_store(fields[:1], out, progress=False)
    n1 = len(open_store(out))
    real_write = store_mod._write_one
    calls = {"n": 0}

    def crashing_write(array, start, values):
        calls["n"] += 1
        if calls["n"] == 4:  # flux, mask, sky_sigma written, then "killed"
            raise KeyboardInterrupt("simulated kill mid-field")
        real_write(array, start, values)

    monkeypatch.setattr(store_mod, "_write_one", crashing_write)
    with pytest.raises(KeyboardInterrupt):
        build_store(fields[:2], out, progress=False)
    monkeypatch.setattr(store_mod, "_write_one", real_write)
    # the half-written field is not recorded; readers see only complete fields
    st = open_store(out)
    assert len(st) == n1 and st.fields == ["f1"] and st.flux.shape[0] == n1
    s = build_store(fields[:3], out, progress=False)
    assert s["fields_added"] == ["f2", "f3"] and s["fields_skipped"] == ["f1"]
    st = open_store(out)
    exp = [expected(f) for f in fields]
    assert len(st) == sum(len(e) for e in exp)
    np.testing.assert_array_equal(st.flux.compute(), np.concatenate([e.flux for e in exp]))
    np.testing.assert_array_equal(st.meta["id"], np.concatenate([e.meta["id"] for e in exp]))
    assert list(st.meta["field"]) == sum(([f.name] * len(e) for f, e in zip(fields, exp)), [])


def test_crash_inside_processing_keeps_previous_fields(tmp_path, fields, monkeypatch):
    out = tmp_path / "s.zarr"

    import astrohvae.pipeline.field as pipeline_mod

    real = pipeline_mod.find_sources

    def boom(field, **kw):
        if field.name == "f2":
            raise RuntimeError("died while processing f2")
        return real(field, **kw)

    monkeypatch.setattr(pipeline_mod, "find_sources", boom)
    with pytest.raises(RuntimeError):
        build_store(fields, out, progress=False)
    assert open_store(out).fields == ["f1"]


def test_parallel_workers_give_the_same_store(tmp_path, fields):
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    build_store(fields, a, progress=False)
    build_store(fields, b, progress=False, workers=2)
    sa, sb = open_store(a), open_store(b)
    assert sa.fields == sb.fields
    np.testing.assert_array_equal(sa.flux.compute(), sb.flux.compute())
    np.testing.assert_array_equal(sa.meta["id"], sb.meta["id"])


def test_path_inputs_are_keyed_by_resolved_path(tmp_path, fields, monkeypatch):
    by_path = {str((tmp_path / f.name).resolve()): f for f in fields}
    for p in by_path:
        Path(p).mkdir()
    monkeypatch.setattr(store_mod, "_read", lambda inp: by_path[str(Path(inp).resolve())])
    out = tmp_path / "s.zarr"
    s1 = build_store([tmp_path / "f1", str(tmp_path / "f2")], out, progress=False)
    s2 = build_store([tmp_path / "f2", tmp_path / "." / "f1", tmp_path / "f3"], out, progress=False)
    assert s1["fields_added"] == ["f1", "f2"]
    assert s2["fields_added"] == ["f3"] and s2["fields_skipped"] == ["f2", "f1"]


def write_truth(folder, pos, types, mags, name="000001-1-0001"):
    t = Table(
        {
            "id": np.arange(1, len(pos) + 1, dtype=np.int32),
            "x": [p[0] for p in pos],
            "y": [p[1] for p in pos],
            "ra": np.full(len(pos), np.nan),
            "dec": np.full(len(pos), np.nan),
            "type": types,
            "mag_r": np.asarray(mags, np.float32),
            "size": np.zeros(len(pos), np.float32),
        }
    )
    hdus = fits.HDUList(
        [
            fits.PrimaryHDU(),
            fits.BinTableHDU(t, name="TRUTH"),
            fits.ImageHDU(np.zeros((160, 200), np.int32), name="MASK"),
        ]
    )
    hdus.writeto(folder / f"truth-{name}.fits")


def test_truth_beside_frames_is_matched(tmp_path):
    folder = tmp_path / "sim"
    folder.mkdir()
    field, pos = make_field(9, "000001-1-0001", n=4, files=[folder / "frame-r-000001-1-0001.fits"])
    types = ["star", "galaxy", "star", "galaxy"]
    # shift truth positions by 1 px (still within 1.5 px) and add a far-away decoy
    write_truth(folder, [(x + 1.0, y) for x, y in pos] + [(3.0, 3.0)], types + ["star"], [18, 19, 20, 21, 17])
    out = tmp_path / "s.zarr"
    build_store([field], out, progress=False)
    meta = open_store(out).meta
    assert len(meta) == 4
    for x, y, t, m in zip(meta["x"], meta["y"], meta["truth_type"], meta["truth_mag_r"]):
        k = int(np.argmin([(x - px) ** 2 + (y - py) ** 2 for px, py in pos]))
        assert t == (0 if types[k] == "star" else 1) and m == 18 + k


def test_match_truth_radius():
    meta = Table({"x": [10.0, 50.0, 90.0], "y": [10.0, 50.0, 90.0]})
    truth = Table({"x": [10.4, 51.6, 90.0], "y": [10.0, 50.0, 91.4], "type": ["galaxy", "star", "star"], "mag_r": [20.0, 21.0, 22.0]})
    t, m = match_truth(meta, truth)
    assert list(t) == [1, -1, 0]
    assert m[0] == 20.0 and np.isnan(m[1]) and m[2] == 22.0


def test_bad_stores_raise_input_error(tmp_path, fields):
    with pytest.raises(InputError, match="no such"):
        open_store(tmp_path / "missing.zarr")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "x.txt").write_text("hi")
    with pytest.raises(InputError, match="not a zarr"):
        open_store(tmp_path / "plain")
    with pytest.raises(InputError, match="not an astrohvae stamp store"):
        build_store(fields[:1], tmp_path / "plain", progress=False)
    assert (tmp_path / "plain" / "x.txt").exists()  # never deleted
    import zarr

    zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    with pytest.raises(InputError, match="not an astrohvae"):
        open_store(tmp_path / "other.zarr")
    # wrong shapes
    out = tmp_path / "s.zarr"
    build_store(fields[:1], out, progress=False)
    g = zarr.open_group(str(out), mode="r+")
    del g["mask"]
    g.create_array("mask", shape=(3, 5), dtype="uint8")
    with pytest.raises(InputError, match="mask has shape"):
        open_store(out)
    # a store claiming more rows than its arrays hold
    out2 = tmp_path / "s2.zarr"
    build_store(fields[:1], out2, progress=False)
    g2 = zarr.open_group(str(out2), mode="r+")
    g2.attrs["n"] = 10_000
    with pytest.raises(InputError, match="rows but the store records"):
        open_store(out2)
    with pytest.raises(InputError):
        build_store(fields[1:2], out2, progress=False)


@pytest.mark.slow
def test_real_fields_store(tmp_path):
    folder = DATA / "sdss" / "fields" / "004510-4-0030"
    if not folder.is_dir():
        pytest.skip(f"real SDSS data not found at {folder}")
    out = tmp_path / "real.zarr"
    s = build_store([folder], out, progress=False)
    assert s["total"] > 500 and s["fields_added"] == ["004510-4-0030"]
    st = open_store(out)
    assert np.all(st.meta["truth_type"] == -1)
    assert json.loads((out / "zarr.json").read_text())["attributes"]["n"] == s["total"]
    assert build_store([folder], out, progress=False)["added"] == 0


def test_cli_stamps_appends_and_skips(tmp_path, fields, monkeypatch):
    from click.testing import CliRunner

    from astrohvae.cli import main

    by_path = {}
    for f in fields:
        d = tmp_path / f.name
        d.mkdir()
        by_path[str(d.resolve())] = f
    monkeypatch.setattr(store_mod, "_read", lambda inp: by_path[str(Path(inp).resolve())])
    out = tmp_path / "cli.zarr"
    runner = CliRunner()
    r1 = runner.invoke(main, ["stamps", str(tmp_path / "f1"), str(tmp_path / "f2"), "--out", str(out), "--quiet"])
    assert r1.exit_code == 0, r1.output
    n12 = len(expected(fields[0])) + len(expected(fields[1]))
    assert f"added {n12} stamps from 2 fields;" in r1.output
    r2 = runner.invoke(main, ["stamps", str(tmp_path / "f2"), str(tmp_path / "f3"), "--out", str(out), "--quiet"])
    assert r2.exit_code == 0, r2.output
    assert "skipped 1 already stored" in r2.output and "from 3 fields" in r2.output
    assert len(open_store(out)) == n12 + len(expected(fields[2]))
    r3 = runner.invoke(main, ["stamps", str(tmp_path / "nope"), "--out", str(out)])
    assert r3.exit_code == 2 and "no such file or folder" in r3.output


def test_chunked_cutting_and_crash_after_some_chunks(tmp_path, fields, monkeypatch):
    monkeypatch.setattr(store_mod, "CUT_CHUNK", 2)  # several write steps per field
    out = tmp_path / "s.zarr"
    real_write = store_mod._write_one
    ncols = 3 + len(store_mod.META_DTYPES)
    calls = {"n": 0}

    def crashing_write(array, start, values):
        calls["n"] += 1
        if calls["n"] == 3 * ncols + ncols + 5:  # f1 = 3 chunks (5 stamps), then f2's 2nd chunk
            raise KeyboardInterrupt("simulated kill")
        real_write(array, start, values)

    assert len(expected(fields[0])) == 5
    monkeypatch.setattr(store_mod, "_write_one", crashing_write)
    with pytest.raises(KeyboardInterrupt):
        build_store(fields, out, progress=False)
    monkeypatch.setattr(store_mod, "_write_one", real_write)
    assert open_store(out).fields == ["f1"] and len(open_store(out)) == 5
    build_store(fields, out, progress=False)
    st = open_store(out)
    exp = [expected(f) for f in fields]
    np.testing.assert_array_equal(st.flux.compute(), np.concatenate([e.flux for e in exp]))
    np.testing.assert_array_equal(st.mask.compute(), np.concatenate([e.mask for e in exp]))
    np.testing.assert_array_equal(st.meta["x"], np.concatenate([e.meta["x"] for e in exp]))
    np.testing.assert_array_equal(st.meta["flags"], np.concatenate([e.meta["flags"] for e in exp]))


@pytest.mark.parametrize("case", ["not_fits", "missing_band"])
def test_cli_bad_input_leaves_no_store(tmp_path, case):
    """A new store whose first input is bad is not left behind."""
    from click.testing import CliRunner

    from astrohvae.cli import main

    if case == "not_fits":
        bad = tmp_path / "field.fits"
        bad.write_text("not a FITS file")
    else:
        bad = tmp_path / "frames"
        bad.mkdir()
        for b in "ugri":  # no z band
            hdu = fits.PrimaryHDU(np.zeros((32, 32), np.float32))
            hdu.header["FILTER"] = b
            hdu.writeto(bad / f"frame-{b}-000001-1-0001.fits")
    out = tmp_path / "s.zarr"
    res = CliRunner().invoke(main, ["stamps", str(bad), "--out", str(out), "--quiet"])
    assert res.exit_code == 2
    assert str(bad.name) in res.output and res.output.count("\n") == 1
    assert not out.exists()
    assert not list(tmp_path.glob(".s.zarr*"))
