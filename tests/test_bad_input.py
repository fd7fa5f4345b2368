"""Issue 16: every bad input gives one line and exit 2, and nothing is destroyed or left behind.

The cases are data (`CASES` of `benchmarks/bad_input_cases.py`, shared with two
benchmarks; `tests/conftest.py` loads it and parametrizes ``bad_input_case``); each runs over a fresh copy of
the fixtures and checks the exit status, the single stderr line naming the
offending file or option, and that the folder is unchanged byte for byte.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from astrohvae.cli import main


@pytest.fixture(scope="session")
def template(tmp_path_factory, bad_input_cases):
    return bad_input_cases.make_template(tmp_path_factory.mktemp("bad-input-template"))


def _run(case, argv, cwd, isolated_env):
    if case.isolated:
        res = subprocess.run([sys.executable, "-m", "astrohvae.cli", *argv], cwd=cwd, capture_output=True,
                             text=True, timeout=300, preexec_fn=isolated_env())
        return res.returncode, res.stderr
    old = os.getcwd()
    os.chdir(cwd)
    try:
        res = CliRunner().invoke(main, argv)
    finally:
        os.chdir(old)
    return res.exit_code, res.stderr


def test_bad_input(bad_input_case, bad_input_cases, template, tmp_path, one_line_error):
    """One case of the table (parametrized by `tests/conftest.py`'s ``pytest_generate_tests``)."""
    case, bic = bad_input_case, bad_input_cases
    if case.root and os.geteuid() != 0:
        pytest.skip("mknod needs root")
    paths = bic.make_fixtures(tmp_path, template)
    argv, names = bic.render(case, paths)
    before = bic.snapshot(tmp_path)
    code, stderr = _run(case, argv, tmp_path, bic.isolated_env)
    assert code == 2, (code, stderr[-2000:])
    one_line_error(stderr, names)
    assert bic.diff(before, bic.snapshot(tmp_path)) == []


def test_overwrite_replaces_only_own_outputs(bad_input_cases, template, tmp_path):
    """--overwrite replaces a previous catalogue; without it the catalogue stays byte for byte."""
    paths = bad_input_cases.make_fixtures(tmp_path, template)
    out = tmp_path / "new" / "sub" / "c.cat.fits"  # missing folders are created
    args = ["run", str(paths["field"]), "--segmenter", "photutils", "--out", str(out)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.stderr
    first = out.read_bytes()
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and "--overwrite" in res.stderr
    assert out.read_bytes() == first
    res = CliRunner().invoke(main, args + ["--overwrite"])
    assert res.exit_code == 0, res.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ["c.cat.fits"]


def test_train_overwrite_keeps_foreign_folder(bad_input_cases, template, tmp_path):
    """train --overwrite replaces its own weights folder, never a folder holding anything else."""
    from astrohvae.pipeline.train import train_from_store
    from astrohvae.errors import OutputError

    paths = bad_input_cases.make_fixtures(tmp_path, template)
    w = tmp_path / "w"
    kw = dict(model="ae", epochs=1, progress=False, seed=0)
    train_from_store(paths["store"], w, **kw)
    first = os.stat(w).st_ino
    with pytest.raises(OutputError, match="--overwrite"):
        train_from_store(paths["store"], w, overwrite=False, **kw)
    assert os.stat(w).st_ino == first
    train_from_store(paths["store"], w, overwrite=True, **kw)
    assert os.stat(w).st_ino != first  # a new folder renamed into place
    assert {"config.json", "model.safetensors"} <= {p.name for p in w.iterdir()}
    (w / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="did not write"):
        train_from_store(paths["store"], w, overwrite=True, **kw)
    assert (w / "notes.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_sigterm_leaves_no_temporary(tmp_path):
    """SIGTERM while a command writes: exit 143, no .NAME.tmp left behind."""
    out = tmp_path / "sim"
    proc = subprocess.Popen([sys.executable, "-m", "astrohvae.cli", "simulate", str(out), "--seed", "2",
                             "--size", "1500x1500"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    t0 = time.time()
    try:
        while time.time() - t0 < 240 and proc.poll() is None:
            if out.is_dir() and any(p.name.endswith(".tmp") for p in out.iterdir()):
                proc.send_signal(signal.SIGTERM)
                break
            time.sleep(0.005)
        else:
            pytest.skip("the writes finished before a temporary was seen")
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr.read()[-2000:]
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_bz2_decompression_stops_at_declared_size(tmp_path):
    """A bz2 frame that inflates to far more than its header declares is read only as far as declared."""
    import bz2

    from astropy.io import fits

    from astrohvae.io import readers

    hdu = fits.PrimaryHDU(np.ones((100, 100), np.float32))
    hdu.header["FILTER"] = "r"
    raw = fits.HDUList([hdu])
    path = tmp_path / "bomb.fits.bz2"
    comp = bz2.BZ2Compressor(9)
    import io

    buf = io.BytesIO()
    raw.writeto(buf)
    blob = comp.compress(buf.getvalue())
    zeros = bytes(2**22)
    for _ in range(50):  # 200 MB of trailing zeros
        blob += comp.compress(zeros)
    path.write_bytes(blob + comp.flush())
    src = readers._source(path)
    assert len(src.getvalue()) == len(buf.getvalue())  # header + padded data, nothing more
    with fits.open(src) as h:
        assert h[0].data.shape == (100, 100) and float(h[0].data.sum()) == 10000.0


def test_help_short_option_and_defaults_as_values():
    for cmd in ([], ["run"], ["segment"], ["train"], ["simulate"], ["stamps"], ["evaluate"], ["survey"]):
        res = CliRunner().invoke(main, cmd + ["-h"])
        assert res.exit_code == 0 and "Usage:" in res.output, cmd
        assert "DEFAULT_" not in res.output and not re.search(r"\bmps\b", res.output), cmd
    for cmd in (["run"], ["segment"], ["train"], ["simulate"], ["stamps"], ["evaluate"]):
        out = CliRunner().invoke(main, cmd + ["-h"]).output
        assert "--quiet" in out and "--verbose" in out and "--overwrite" in out, cmd
    assert "[default: ae-res-hc]" in CliRunner().invoke(main, ["segment", "-h"]).output


def test_warning_is_one_line():
    import warnings

    from astrohvae.cli import _one_line_warning

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        res = CliRunner().invoke(main, ["simulate", "-h"])
    assert res.exit_code == 0
    runner = CliRunner()
    with runner.isolation() as (_, _, err):
        _one_line_warning(UserWarning("only 1 field(s):\n splitting by stamp"), UserWarning, "x.py", 3)
        text = err.getvalue().decode()
    assert text == "astrohvae: warning: only 1 field(s): splitting by stamp\n"


@pytest.mark.slow
def test_fuzz_reader(bad_input_cases, template, tmp_path):
    """Random header cards, truncations and corrupted bytes in one frame: InputError or a field, nothing else."""
    pytest.importorskip("hypothesis")
    frames = bad_input_cases.load_frames(template / "field")
    work = tmp_path / "f"
    work.mkdir()
    tried, failures = bad_input_cases.run_fuzz(frames, work, max_examples=40, seed=16)
    assert tried >= 40
    assert failures == []


def _copy_weights(dst):
    import shutil

    from astrohvae.classify.base import DEFAULT_WEIGHTS

    shutil.copytree(DEFAULT_WEIGHTS, dst)
    return dst


def _rewrite_config(folder, edit):
    import json

    cfg = json.loads((folder / "config.json").read_text())
    edit(cfg)
    (folder / "config.json").write_text(json.dumps(cfg))


def test_weights_with_nan_tensors_are_refused(tmp_path, one_line_error):
    """Issue 16: NaN weights used to load and give p_galaxy NaN in every row; now one line, exit 2."""
    import hashlib

    from safetensors.torch import load_file, save_file

    w = _copy_weights(tmp_path / "w")
    tensors = load_file(str(w / "model.safetensors"))
    name = next(k for k, v in tensors.items() if k.startswith("latent_vae.") and v.is_floating_point())
    tensors[name][...] = float("nan")
    save_file(tensors, str(w / "model.safetensors"))
    sha = hashlib.sha256((w / "model.safetensors").read_bytes()).hexdigest()  # a consistent, NaN-holding folder
    _rewrite_config(w, lambda c: c.update(tensors_sha256=sha))
    res = CliRunner().invoke(main, ["run", "--example", "--weights", str(w), "--out", str(tmp_path / "c.fits")])
    assert res.exit_code == 2
    line = one_line_error(res.stderr, "model.safetensors")
    assert "non-finite" in line and name in line
    assert not (tmp_path / "c.fits").exists()


def test_weights_config_asking_for_a_huge_network_is_refused_before_allocating(tmp_path, one_line_error):
    """Issue 16: hidden [40000, 40000] allocated 12.8 GB before failing; the meta-device check refuses it first."""
    import resource

    w = _copy_weights(tmp_path / "w")
    _rewrite_config(w, lambda c: c["modules"]["latent_vae"]["kwargs"].update(hidden=[40000, 40000]))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res = CliRunner().invoke(main, ["run", "--example", "--weights", str(w), "--out", str(tmp_path / "c.fits")])
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert res.exit_code == 2
    line = one_line_error(res.stderr, "config.json")
    assert "parameters" in line and "limit" in line
    assert grown_mb < 1000, grown_mb  # the 12.8 GB of the two 40000-wide layers were never allocated
    assert not (tmp_path / "c.fits").exists()
