"""`astrohvae survey`: many fields on dask.distributed, failures recorded, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from astrohvae.io.catalog import is_complete, read_catalog
from astrohvae.pipeline.survey import run_survey

def _catalogues(folder):
    return sorted(p.name for p in Path(folder).glob("*.cat.fits"))


def _temporaries(folder):
    return sorted(p.name for p in Path(folder).iterdir() if p.name.endswith(".tmp") or p.name.startswith(".survey"))


def test_failures_are_recorded_and_do_not_stop_others(tmp_path, survey_fields, tiny_weights, survey_reference,
                                                      survey_opts):
    bad = tmp_path / "broken"
    bad.mkdir()
    for p in survey_fields[0].glob("frame-*"):
        (bad / p.name.replace(survey_fields[0].name, "x")).write_bytes(p.read_bytes())
    g = next(bad.glob("frame-g-*"))
    g.write_bytes(g.read_bytes()[:3000])  # truncated band
    missing = tmp_path / "nothere"
    inputs = [survey_fields[1], bad, missing, survey_fields[2]]
    out = tmp_path / "out"
    res = run_survey(inputs, out, weights=tiny_weights, workers=1, processes=False, **survey_opts)
    status = dict(zip(res.table["field"], res.table["status"]))
    assert status == {survey_fields[1].name: "done", "broken": "failed", "nothere": "failed",
                      survey_fields[2].name: "done"}
    err = dict(zip(res.table["field"], res.table["error"]))
    assert g.name in err["broken"] and "nothere" in err["nothere"]
    assert "\n" not in err["broken"]
    ledger = json.loads((out / "survey.json").read_text())
    assert ledger["fields"]["broken"]["status"] == "failed" and g.name in ledger["fields"]["broken"]["error"]
    assert _catalogues(out) == sorted([f"{survey_fields[1].name}.cat.fits", f"{survey_fields[2].name}.cat.fits"])
    assert _temporaries(out) == []
    for f in (survey_fields[1], survey_fields[2]):
        got = read_catalog(out / f"{f.name}.cat.fits").table
        np.testing.assert_array_equal(got["x"], survey_reference[f.name].table["x"])

    # rerun: complete fields are skipped (not rewritten), failed ones retried
    stamp = (out / f"{survey_fields[1].name}.cat.fits").stat().st_mtime_ns
    res2 = run_survey(inputs, out, weights=tiny_weights, workers=1, processes=False, **survey_opts)
    status2 = dict(zip(res2.table["field"], res2.table["status"]))
    assert status2 == {survey_fields[1].name: "skipped", "broken": "failed", "nothere": "failed",
                       survey_fields[2].name: "skipped"}
    assert (out / f"{survey_fields[1].name}.cat.fits").stat().st_mtime_ns == stamp
    assert res2.n_failed == 2


def test_cli_summary_and_exit_status(tmp_path, survey_fields, tiny_weights):
    from click.testing import CliRunner

    from astrohvae.cli import main

    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["survey", str(survey_fields[3]), str(tmp_path / "nope"), "--out", str(out),
                                    "--weights", str(tiny_weights), "--segmenter", "photutils", "--no-progress"])
    assert res.exit_code == 1, res.output
    assert "1/2 fields complete, 1 failed" in res.output
    assert survey_fields[3].name in res.output and "failed" in res.output
    res = CliRunner().invoke(main, ["survey", str(survey_fields[3]), "--out", str(out), "--weights",
                                    str(tmp_path / "noweights"), "--no-progress"])
    assert res.exit_code == 2 and "noweights" in res.stderr


@pytest.mark.slow
def test_kill_and_resume(tmp_path, survey_fields, tiny_weights, survey_reference, survey_opts):
    """Kill a survey (all its processes) after its first catalogue; rerun; every field done exactly once."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", "from astrohvae.cli import main; main()", "survey",
           *[str(f) for f in survey_fields], "--out", str(out), "--weights", str(tiny_weights), "--workers", "1",
           "--segmenter", "photutils", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, env=env)
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and proc.poll() is None:
            if out.is_dir() and _catalogues(out):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "survey ended before it could be killed: " + proc.stderr.read().decode()[-500:]
        assert _catalogues(out), "no catalogue appeared in time"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and its worker processes
        except ProcessLookupError:
            pass
        proc.wait()
    done_before = _catalogues(out)
    assert 1 <= len(done_before) < len(survey_fields)
    assert all(is_complete(out / name) for name in done_before)

    res = run_survey(survey_fields, out, weights=tiny_weights, workers=1, processes=False, **survey_opts)
    status = dict(zip(res.table["field"], res.table["status"]))
    assert sorted(k for k, v in status.items() if v == "skipped") == sorted(n[: -len(".cat.fits")]
                                                                          for n in done_before)
    assert set(status.values()) <= {"skipped", "done"}
    assert _catalogues(out) == sorted(f"{f.name}.cat.fits" for f in survey_fields)
    assert _temporaries(out) == []
    for f in survey_fields:
        got = read_catalog(out / f"{f.name}.cat.fits")
        ref = survey_reference[f.name]
        assert len(got) == len(ref)
        np.testing.assert_array_equal(got.table["id"], ref.table["id"])
        np.testing.assert_array_equal(got.table["x"], ref.table["x"])
        np.testing.assert_array_equal(got.segmap, ref.segmap)
    ledger = json.loads((out / "survey.json").read_text())
    assert sorted(ledger["fields"]) == sorted(f.name for f in survey_fields)
    assert all(v["status"] in ("done", "skipped") for v in ledger["fields"].values())
    assert sum(v.get("rows", 0) for v in ledger["fields"].values()) == sum(len(r) for r in survey_reference.values())


@pytest.mark.parametrize("suffix", [".fits", ".fits.bz2", ".fits.gz"])
def test_cost_hint_reads_galactic_latitude_from_the_header(tmp_path, suffix):
    import bz2
    import gzip

    from astropy.coordinates import SkyCoord
    from astropy.io import fits
    from astropy.wcs import WCS

    from astrohvae.pipeline.survey import cost_hint

    for b_true in (1.5, 62.0):
        c = SkyCoord(l=120.0, b=b_true, unit="deg", frame="galactic").icrs
        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.crval = [c.ra.deg, c.dec.deg]
        w.wcs.crpix = [50.5, 40.5]
        w.wcs.cdelt = [-0.396 / 3600, 0.396 / 3600]
        hdu = fits.PrimaryHDU(np.zeros((80, 100), np.float32), header=w.to_header())
        raw = tmp_path / f"raw-{b_true}.fits"
        hdu.writeto(raw)
        folder = tmp_path / f"b{b_true}{suffix.replace('.', '_')}"
        folder.mkdir()
        target = folder / f"frame-r-000001-1-0001{suffix}"
        opener = {".fits": open, ".fits.bz2": bz2.open, ".fits.gz": gzip.open}[suffix]
        with opener(target, "wb") as fh:
            fh.write(raw.read_bytes())
        assert cost_hint(folder) == pytest.approx(b_true, abs=0.01)
        assert cost_hint(target) == pytest.approx(b_true, abs=0.01)
    nowcs = tmp_path / "nowcs.fits"
    fits.PrimaryHDU(np.zeros((8, 8), np.float32)).writeto(nowcs)
    assert cost_hint(nowcs) is None
    (tmp_path / "junk.fits").write_bytes(b"not a fits file at all")
    assert cost_hint(tmp_path / "junk.fits") is None
    assert cost_hint(tmp_path / "missing") is None


def test_worker_environment_keeps_glibc_dynamic_mmap_threshold():
    import dask

    from astrohvae.pipeline.survey import worker_environ

    with dask.config.set({"distributed.nanny.pre-spawn-environ": {"MALLOC_TRIM_THRESHOLD_": 65536,
                                                                    "OMP_NUM_THREADS": 1}}):
        env = worker_environ()
    assert "MALLOC_TRIM_THRESHOLD_" not in env and env["OMP_NUM_THREADS"] == 1


def test_reader_threads_one_runs_in_the_calling_thread():
    import threading

    from astrohvae.io.readers import _map_threads

    me = threading.get_ident()
    assert _map_threads(lambda _: threading.get_ident(), range(5), threads=1) == [me] * 5
    assert _map_threads(lambda x: x * x, range(5), threads=3) == [0, 1, 4, 9, 16]


def test_a_rerun_removes_every_temporary_a_killed_run_left(tmp_path, survey_fields, tiny_weights, survey_opts):
    """A SIGKILL can fall inside any atomic write: of a catalogue, its preview or region file, or the ledger."""
    out = tmp_path / "out"
    out.mkdir()
    name = survey_fields[0].name
    left = [f".{name}.cat.fits.a1.tmp", f".{name}.cat.png.b2.tmp", f".{name}.cat.reg.c3.tmp",
            ".survey.json.d4.tmp", ".survey-catalogue.parquet.e5.tmp"]
    for n in left:
        (out / n).write_text("half-written")
    (out / "notes.txt.tmp").write_text("not ours")  # a user's file of another name stays
    run_survey(survey_fields[:1], out, weights=tiny_weights, workers=1, processes=False, **survey_opts)
    assert not any((out / n).exists() for n in left)
    assert (out / "notes.txt.tmp").read_text() == "not ours"
