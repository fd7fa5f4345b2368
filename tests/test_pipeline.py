"""`astrohvae run`: one field end to end, and every kind of bad input."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from astrohvae import BANDS
from astrohvae.cli import main
from astrohvae.io.catalog import CLASS_CODES, read_catalog

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FAST = ["--segmenter", "photutils"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def leftovers(folder):
    """Any file in ``folder`` (temporary ones included)."""
    return sorted(p.name for p in Path(folder).iterdir())


def run_ok(*args):
    res = invoke("run", *args)
    assert res.exit_code == 0, res.output + res.stderr
    return res


@pytest.fixture(scope="module")
def run_fails(one_line_error):
    """``run_fails(out_dir, *args, names)``: `astrohvae run` exits 2 with one line naming ``names``, leaves nothing."""

    def run(out_dir, *args, names):
        before = set(leftovers(out_dir))
        res = invoke("run", *args)
        assert res.exit_code == 2, (res.exit_code, res.output, res.stderr)
        line = one_line_error(res.stderr, names)
        assert set(leftovers(out_dir)) == before, "output (or a temporary file) left behind"
        return line

    return run


# ----------------------------------------------------------------------------- the good path
def test_run_end_to_end(tmp_path, tiny_weights, toy_cube, write_mef):
    mef = write_mef(tmp_path / "toy.fits", toy_cube((160, 160), seed=1))
    out = tmp_path / "out"
    out.mkdir()
    res = run_ok(mef, "--out", out / "toy.cat.fits", "--weights", tiny_weights, "--preview", *FAST)
    assert "catalogue:" in res.output and "preview:" in res.output and str(out / "toy.cat.png") in res.output

    cat = read_catalog(out / "toy.cat.fits")
    n = len(cat)
    assert n >= 8  # 12 sources injected, some may blend
    assert list(cat.table["id"]) == list(range(1, n + 1))
    assert set(np.unique(cat.segmap)) - {0} == set(range(1, n + 1))
    codes = np.array([0] + [CLASS_CODES[c] for c in cat.table["class"]], np.uint8)
    np.testing.assert_array_equal(cat.classmap, codes[cat.segmap])
    assert set(cat.table["class"]) <= {"star", "galaxy"}
    p = np.asarray(cat.table["p_galaxy"])
    assert np.all((p >= 0) & (p <= 1))
    np.testing.assert_array_equal(np.asarray(cat.table["class"]) == "galaxy", p >= 0.5)
    assert cat.table["z_ae"].shape == (n, 30) and np.isfinite(cat.table["z_ae"]).all()
    assert cat.table["z_hvae"].shape[0] == n and np.all(np.asarray(cat.table["z_hvae_sigma"]) > 0)
    # each MASKS row is the source's own segment: same pixel count as its area (when not truncated)
    own = cat.masks.reshape(n, -1).sum(axis=1)
    inner = (np.asarray(cat.table["flags"]) & 1) == 0
    assert np.all(own[inner] == np.asarray(cat.table["area"])[inner])
    assert cat.masks[np.arange(n), 32, 32].mean() > 0.8  # centred on the source
    h = cat.header
    from astrohvae.models.weights import weights_hash

    assert h["MODELSHA"] == weights_hash(tiny_weights) and h["CLFMETH"] == "A+Vr"
    assert h["INFILE1"] == "toy.fits" and h["DETMETH"] == "photutils" and h["DETNSIG"] == 1.5
    png = (out / "toy.cat.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert leftovers(out) == ["toy.cat.fits", "toy.cat.png"]


def test_chunked_classification_equals_one_batch(tiny_weights, toy_cube, write_mef):
    from astrohvae.io.readers import read_field
    from astrohvae.pipeline.field import process_field
    from astrohvae.pipeline.loading import load_classifier

    clf = load_classifier(tiny_weights, "cpu")
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        field = read_field(write_mef(Path(d) / "toy.fits", toy_cube((160, 160), seed=2)))
    a = process_field(field, clf, batch_size=3)
    b = process_field(field, clf, batch_size=1000)
    assert len(a.table) == len(b.table) > 3
    for col in ("p_galaxy", "z_hvae", "z_ae", "x", "flux_r", "flags"):
        np.testing.assert_allclose(np.asarray(a.table[col]), np.asarray(b.table[col]), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a.masks, b.masks)
    # one network pass per batch gives the classifier's own predict_proba
    from astrohvae.pipeline.field import predict_classes
    from astrohvae.detection.background import estimate_background
    from astrohvae.detection.detect import detect
    from astrohvae.detection.sources import measure_sources
    from astrohvae.stamps.cutouts import cut_stamps

    bg = estimate_background(field)
    segm = detect(field, bg)
    st = cut_stamps(field, segm, measure_sources(field, segm, bg), bg)
    p, lat = predict_classes(clf, st)
    np.testing.assert_allclose(p, clf.predict_proba(st), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lat["z_ae"], clf.transform(st)["z_ae"], rtol=1e-5, atol=1e-6)


def test_empty_field_gives_zero_row_catalogue(tmp_path, tiny_weights, noise_cube, write_mef):
    mef = write_mef(tmp_path / "empty.fits", noise_cube((128, 128), seed=3))
    run_ok(mef, "--out", tmp_path / "e.fits", "--weights", tiny_weights, "--preview", *FAST)
    cat = read_catalog(tmp_path / "e.fits")
    assert len(cat) == 0 and cat.masks.shape == (0, 64, 64) and not cat.segmap.any()
    assert cat.header["NSOURCES"] == 0 and (tmp_path / "e.png").is_file()


def test_nan_region_is_masked_and_flagged(tmp_path, tiny_weights, gaussian_source, noise_cube, write_mef):
    cube = noise_cube((160, 160), seed=4)
    for b in range(5):
        cube[b] += gaussian_source((160, 160), 80, 80, 30.0, 4.0)
        cube[b] += gaussian_source((160, 160), 30, 120, 30.0, 4.0)
    cube[:, 70:78, 60:100] = np.nan  # a dead region over the first source
    cube[2, 0:10, :] = np.inf
    mef = write_mef(tmp_path / "nan.fits", cube)
    run_ok(mef, "--out", tmp_path / "n.fits", "--weights", tiny_weights, *FAST)
    t = read_catalog(tmp_path / "n.fits").table
    d1 = np.hypot(t["x"] - 80, t["y"] - 80)
    d2 = np.hypot(t["x"] - 30, t["y"] - 120)
    assert d1.min() < 4 and d2.min() < 4
    assert t["flags"][np.argmin(d1)] & 4 and not t["flags"][np.argmin(d2)] & 4
    for b in BANDS:
        assert np.isfinite(np.asarray(t[f"flux_{b}"])).all()
    assert np.isfinite(np.asarray(t["p_galaxy"])).all()


def test_one_huge_saturated_star(tmp_path, tiny_weights, gaussian_source, noise_cube, write_mef):
    shape = (200, 200)
    cube = noise_cube(shape, seed=5)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    r = np.hypot(xx - 100, yy - 100)
    for b in range(5):
        cube[b] += gaussian_source(shape, 100, 100, 5e4, 5.0) + (200.0 / (1 + (r / 3) ** 3)).astype(np.float32)
        cube[b][r < 5] = np.inf  # saturated core, as marked by the camera
    for b in range(5):
        cube[b] += gaussian_source(shape, 30, 30, 10.0, 3.0)
    mef = write_mef(tmp_path / "sat.fits", cube)
    run_ok(mef, "--out", tmp_path / "s.fits", "--weights", tiny_weights, *FAST)
    t = read_catalog(tmp_path / "s.fits").table
    big = np.argmin(np.hypot(t["x"] - 100, t["y"] - 100))
    assert np.hypot(t["x"][big] - 100, t["y"][big] - 100) < 5
    assert t["flags"][big] & 4
    assert t["area"][big] == t["area"].max()


# ----------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    from astrohvae.simulate.io import write_simulation

    d = tmp_path_factory.mktemp("frames")
    write_simulation(d, seed=11, size=(128, 128))
    return d


def _copy_frames(src, dst):
    dst.mkdir()
    for p in src.glob("frame-*"):
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_missing_band(tmp_path, frames, tiny_weights, noise_cube, write_mef, run_fails):
    d = _copy_frames(frames, tmp_path / "f")
    next(d.glob("frame-u-*")).unlink()
    line = run_fails(tmp_path, d, "--out", tmp_path / "c.fits", "--weights", tiny_weights, *FAST, names=d)
    assert "band" in line and " u" in line
    mef = write_mef(tmp_path / "noz.fits", noise_cube((64, 64)), drop=("z",))
    run_fails(tmp_path, mef, "--out", tmp_path / "c.fits", "--weights", tiny_weights, *FAST, names=mef)


def test_truncated_band(tmp_path, frames, tiny_weights, run_fails):
    d = _copy_frames(frames, tmp_path / "f")
    g = next(d.glob("frame-g-*"))
    raw = g.read_bytes()
    g.write_bytes(raw[: int(len(raw) * 0.6)])
    run_fails(tmp_path, d, "--out", tmp_path / "c.fits", "--weights", tiny_weights, *FAST, names=g.name)


def test_all_nan_field(tmp_path, tiny_weights, write_mef, run_fails):
    mef = write_mef(tmp_path / "nan.fits", np.full((5, 64, 64), np.nan, np.float32))
    run_fails(tmp_path, mef, "--out", tmp_path / "c.fits", "--weights", tiny_weights, *FAST, names=mef)


def test_mismatched_band_shapes(tmp_path, tiny_weights, noise_cube, write_mef, run_fails):
    mef = write_mef(tmp_path / "mis.fits", noise_cube((96, 96)), shapes={"g": (90, 96)})
    run_fails(tmp_path, mef, "--out", tmp_path / "c.fits", "--weights", tiny_weights, *FAST, names=mef)


def test_missing_input(tmp_path, tiny_weights, run_fails):
    run_fails(tmp_path, tmp_path / "nope.fits", "--out", tmp_path / "c.fits", "--weights", tiny_weights, *FAST,
              names="nope.fits")


def _weights_copy(tiny_weights, dst):
    dst.mkdir()
    for p in Path(tiny_weights).iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_corrupt_weights(tmp_path, tiny_weights, toy_cube, write_mef, run_fails):
    mef = write_mef(tmp_path / "toy.fits", toy_cube((96, 96)))
    w = _weights_copy(tiny_weights, tmp_path / "w")
    raw = (w / "model.safetensors").read_bytes()
    (w / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    run_fails(tmp_path, mef, "--out", tmp_path / "c.fits", "--weights", w, *FAST, names=w)
    (w / "model.safetensors").write_bytes(b"\x00garbage" * 50)
    run_fails(tmp_path, mef, "--out", tmp_path / "c.fits", "--weights", w, *FAST, names=w)
    run_fails(tmp_path, mef, "--out", tmp_path / "c.fits", "--weights", tmp_path / "absent", *FAST,
              names="absent")


def test_foreign_weights(tmp_path, tiny_weights, toy_cube, write_mef, run_fails):
    import torch
    from safetensors.torch import save_file

    mef = write_mef(tmp_path / "toy.fits", toy_cube((96, 96)))
    w = _weights_copy(tiny_weights, tmp_path / "w")
    save_file({"encoder.weight": torch.zeros(3, 3)}, str(w / "model.safetensors"))
    run_fails(tmp_path, mef, "--out", tmp_path / "c.fits", "--weights", w, *FAST, names=w)
    (w / "config.json").write_text('{"hello": "world"}')
    run_fails(tmp_path, mef, "--out", tmp_path / "c.fits", "--weights", w, *FAST, names=w)
    # tensors that load but do not fit the features the code computes (e.g. an older version's weights)
    w2 = _weights_copy(tiny_weights, tmp_path / "w2")
    cfg = json.loads((w2 / "config.json").read_text())
    if not cfg.get("physical"):
        pytest.skip("tiny classifier has no physical features to drop")
    cfg["physical"] = False
    (w2 / "config.json").write_text(json.dumps(cfg))
    run_fails(tmp_path, mef, "--out", tmp_path / "c.fits", "--weights", w2, *FAST, names=w2)


class _Payload:
    marker = None

    def __reduce__(self):
        return (Path.mkdir, (Path(self.marker),))


def test_weights_never_execute_code(tmp_path, tiny_weights, toy_cube, write_mef, run_fails):
    mef = write_mef(tmp_path / "toy.fits", toy_cube((96, 96)))
    w = _weights_copy(tiny_weights, tmp_path / "w")
    marker = tmp_path / "PWNED"
    payload = _Payload()
    payload.marker = str(marker)
    blob = pickle.dumps({"state": payload})
    assert not marker.exists()
    for name in ("model.safetensors", "model.pt", "pytorch_model.bin"):
        (w / name).write_bytes(blob)
    run_fails(tmp_path, mef, "--out", tmp_path / "c.fits", "--weights", w, *FAST, names=w)
    assert not marker.exists(), "code from the weights file was executed"


def test_unwritable_output(tmp_path, tiny_weights, toy_cube, write_mef, run_fails):
    mef = write_mef(tmp_path / "toy.fits", toy_cube((96, 96)))
    run_ok(mef, "--out", tmp_path / "no" / "such" / "c.fits", "--weights", tiny_weights, *FAST)
    assert leftovers(tmp_path / "no" / "such") == ["c.fits"]  # missing output folders are created
    (tmp_path / "afile").write_text("x")
    run_fails(tmp_path, mef, "--out", tmp_path / "afile" / "c.fits", "--weights", tiny_weights, *FAST,
              names="afile")


def test_existing_catalogue_is_replaced_not_corrupted(tmp_path, tiny_weights, monkeypatch, toy_cube, write_mef):
    """A run that dies while writing leaves the previous catalogue intact."""
    from astropy.io import fits

    mef = write_mef(tmp_path / "toy.fits", toy_cube((128, 128), seed=6))
    out = tmp_path / "c.fits"
    run_ok(mef, "--out", out, "--weights", tiny_weights, *FAST)
    before = out.read_bytes()

    def boom(self, name, **kw):
        Path(name).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fits.HDUList, "writeto", boom)
    res = invoke("run", mef, "--out", out, "--weights", tiny_weights, *FAST, "--overwrite")
    assert res.exit_code != 0
    assert out.read_bytes() == before
    assert leftovers(tmp_path) == ["c.fits", "toy.fits"]


# ----------------------------------------------------------------------------- shipped weights
def _default_weights_present():
    from astrohvae.classify.base import DEFAULT_WEIGHTS

    return (Path(DEFAULT_WEIGHTS) / "model.safetensors").is_file()


@pytest.mark.slow
def test_example_with_shipped_weights(tmp_path, monkeypatch):
    if not _default_weights_present():
        pytest.skip("no shipped default weights in astrohvae/data/default yet")
    monkeypatch.chdir(tmp_path)
    res = run_ok("--example", "--preview")
    assert "example.cat.fits" in res.output and "example.cat.png" in res.output
    cat = read_catalog(tmp_path / "example.cat.fits")
    assert len(cat) > 50
    frac = np.mean(np.asarray(cat.table["class"]) == "star")
    assert 0.02 < frac < 0.98


@pytest.mark.realdata
@pytest.mark.skipif(not (DATA / "sdss" / "fields" / "004510-4-0030").is_dir(), reason="../shared/data absent")
def test_real_field_classes_do_not_depend_on_batch_size():
    """The shipped classifier calibrates on the whole field: batches must not change a class."""
    import warnings

    from astrohvae.classify.persist import load_default_classifier
    from astrohvae.io.readers import read_field
    from astrohvae.pipeline.field import process_field

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        field = read_field(DATA / "sdss" / "fields" / "004510-4-0030")
        clf = load_default_classifier("cpu")
        a = process_field(field, clf, batch_size=64)
        b = process_field(field, clf, batch_size=4096)
    assert len(a.table) == len(b.table) > 500
    np.testing.assert_allclose(np.asarray(a.table["p_galaxy"]), np.asarray(b.table["p_galaxy"]), atol=1e-5)
    assert list(a.table["class"]) == list(b.table["class"])


def test_classes_do_not_depend_on_the_isophote(default_classifier, default_segmenter):
    """``--isophote`` sets how far footprints grow, not what a source is: positions are windowed centroids and
    the S/N weight of the morphology is the PSF-fit S/N, so classes agree at 0.5 and 1 sigma."""
    import copy

    from astrohvae.pipeline.field import process_field
    from astrohvae.simulate.field import simulate_field

    sim = simulate_field(21, size=(512, 512))
    seg1 = copy.copy(default_segmenter)
    seg1.isophote = 1.0
    a = process_field(sim.field, default_classifier, segmenter=default_segmenter).table
    b = process_field(sim.field, default_classifier, segmenter=seg1).table
    assert len(a) == len(b) > 100 and (np.asarray(b["area"]) <= np.asarray(a["area"])).all()
    assert (np.asarray(b["area"]) < np.asarray(a["area"])).mean() > 0.5
    shift = np.hypot(np.asarray(a["x"]) - np.asarray(b["x"]), np.asarray(a["y"]) - np.asarray(b["y"]))
    assert np.median(shift) < 0.01 and (shift < 0.1).mean() > 0.9
    dp = np.abs(np.asarray(a["p_galaxy"]) - np.asarray(b["p_galaxy"]))
    assert np.median(dp) < 0.01 and (dp > 0.1).mean() < 0.02, np.sort(dp)[-5:]
    assert (np.asarray(a["class"]) != np.asarray(b["class"])).mean() < 0.01


def test_module_entry_points_run_the_cli():
    import subprocess
    import sys

    for mod in ("astrohvae", "astrohvae.cli"):
        res = subprocess.run([sys.executable, "-m", mod, "--help"], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        assert "run" in res.stdout and "survey" in res.stdout


def test_device_resolution_and_strict_float32_on_cuda():
    from types import SimpleNamespace

    import torch

    from astrohvae.device import _strict_float32, resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="not a device|unknown device"):
        resolve_device("warp-drive")
    fake = SimpleNamespace(backends=SimpleNamespace(cudnn=SimpleNamespace(allow_tf32=True),
                                                    cuda=SimpleNamespace(matmul=SimpleNamespace(allow_tf32=True))))
    _strict_float32(fake)
    assert fake.backends.cudnn.allow_tf32 is False and fake.backends.cuda.matmul.allow_tf32 is False


def test_model_cache_loads_once_and_again_after_a_rewrite(tiny_weights, tmp_path):
    """A survey worker loads its weights once; a rewritten weights folder is loaded afresh; clear() forgets."""
    import shutil

    from astrohvae.pipeline.loading import MODEL_CACHE, ModelCache, load_classifier

    w = tmp_path / "w"
    shutil.copytree(tiny_weights, w)
    a = load_classifier(w, "cpu")
    assert load_classifier(w, "cpu") is a
    cfg = w / "config.json"
    cfg.write_text(cfg.read_text() + "\n")  # the same model, rewritten: another file size
    b = load_classifier(w, "cpu")
    assert b is not a and load_classifier(w, "cpu") is b
    n = len(MODEL_CACHE)
    MODEL_CACHE.clear()
    assert len(MODEL_CACHE) == 0 < n and load_classifier(w, "cpu") is not b

    calls = []
    cache = ModelCache()
    assert cache.get("k", lambda: calls.append(1) or "m") == "m" == cache.get("k", lambda: calls.append(1) or "x")
    assert calls == [1]
