"""Tests of astrohvae.evaluate: metrics, classical baseline, ROC, adapters, CLI."""

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from astrohvae.cli import main
from astrohvae.evaluation.baselines import ClassicalClassifier
from astrohvae.evaluation.data import load_dl4astro, stamps_from_images
from astrohvae.evaluation.metrics import binary_metrics, format_table, labels_from_meta, summarise
from astrohvae.viz.roc import plot_roc

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sdss"


def test_binary_metrics_by_hand():
    y = np.array([0, 0, 0, 1, 1, 1, 1, -1])
    p = np.array([0.1, 0.6, 0.2, 0.9, 0.8, 0.4, 0.7, 0.5])
    m = binary_metrics(y, p)
    assert m["n"] == 7 and m["n_star"] == 3 and m["n_galaxy"] == 4
    # predictions: star, gal, star, gal, gal, star, gal
    assert m["accuracy"] == pytest.approx(5 / 7)
    assert m["star_purity"] == pytest.approx(2 / 3)
    assert m["star_completeness"] == pytest.approx(2 / 3)
    assert m["galaxy_purity"] == pytest.approx(3 / 4)
    assert m["galaxy_completeness"] == pytest.approx(3 / 4)
    # AUC: 12 star-galaxy pairs, galaxy scored higher in 10 (0.4 < 0.6 loses to one star... count)
    pairs = [(g > s) for g in p[3:7] for s in p[:3]]
    assert m["auc"] == pytest.approx(np.mean(pairs))


def test_binary_metrics_one_class_gives_nan_auc():
    m = binary_metrics(np.zeros(5, int), np.linspace(0, 1, 5))
    assert np.isnan(m["auc"])


def test_summarise_seeds_and_bins():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    mag = rng.uniform(17, 23, 300)
    good = y + rng.normal(0, 0.3, 300)
    runs = {"good": [good, good + rng.normal(0, 0.3, 300)], "brightness": [mag]}
    rows = summarise(y, mag, runs)
    r = {row["method"]: row for row in rows}
    assert r["good"]["n_seeds"] == 2 and r["good"]["auc_std"] > 0
    assert r["good"]["auc_mean"] > 0.85
    # sorting by brightness alone fails (labels independent of magnitude here)
    assert abs(r["brightness"]["auc_mean"] - 0.5) < 0.1
    assert r["good"]["n_r<19"] + r["good"]["n_19<r<21"] + r["good"]["n_r>21"] == 300
    txt = format_table(rows)
    assert "AUC r<19" in txt and "brightness" in txt


def test_classical_baseline_on_toy(make_toy_stamps):
    st = make_toy_stamps(300, seed=3, mag_range=(16, 20))
    y, _ = labels_from_meta(st.meta)
    clf = ClassicalClassifier().fit(st)
    assert 1.2 < clf.r_star_ < 3.5  # Moffat FWHM 3.5 px -> r_half ~ 2 px
    m = binary_metrics(y, clf.predict_proba(st))
    assert m["auc"] > 0.9 and m["accuracy"] > 0.8


def test_plot_roc_writes_png(tmp_path):
    y = np.array([0, 1, 0, 1, 1])
    out = plot_roc(y, {"a": [np.array([0.1, 0.8, 0.3, 0.7, 0.9])]}, tmp_path / "roc.png")
    assert Path(out).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stamps_from_images_pads_and_segments(make_toy_stamps):
    st0 = make_toy_stamps(3, seed=1, mag_range=(17, 18), neighbours=0)
    small = st0.flux[:, :, 8:56, 8:56]  # 48x48
    st = stamps_from_images(small)
    assert st.flux.shape == (3, 5, 64, 64)
    assert np.all(st.mask[:, :8] & 4) and np.all(st.mask[:, 32, 32] & 1)
    np.testing.assert_allclose(st.flux[:, :, 32, 32], st0.flux[:, :, 32, 32])
    assert np.all(st.sky_sigma > 0)


@pytest.mark.skipif(not (DATA / "stamps-dl4astro").is_dir(), reason="../shared/data/sdss/stamps-dl4astro absent")
def test_load_dl4astro():
    st, y = load_dl4astro(DATA / "stamps-dl4astro")
    assert len(st) == 20 and set(np.unique(y)) <= {0, 1}
    assert np.isfinite(st.flux).all()
    # the central source is bright and positive in r (nanomaggies)
    assert np.all(st.flux[:, 2, 30:34, 30:34].sum(axis=(1, 2)) > 0)


def test_cli_evaluate_bad_input(tmp_path):
    bad = tmp_path / "notastore"
    bad.mkdir()
    res = CliRunner().invoke(main, ["evaluate", str(bad), "-o", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert "astrohvae: error:" in res.output


def test_cli_evaluate_on_a_simulated_store(tmp_path):
    from astrohvae.simulate.io import write_simulation
    from astrohvae.stamps.store import build_store

    write_simulation(tmp_path / "sim", seed=4321, size=(400, 400), star_fraction=0.4)
    build_store([tmp_path / "sim"], tmp_path / "s.zarr", progress=False)
    out = tmp_path / "res"
    res = CliRunner().invoke(main, ["evaluate", str(tmp_path / "s.zarr"), "-o", str(out),
                                    "--methods", "classical", "--seeds", "1"])
    assert res.exit_code == 0, res.output
    assert "classical r_half" in res.output and "AUC r<19" in res.output
    assert (out / "classification_roc.png").is_file() and (out / "classification.csv").is_file()
    assert "classical" in (out / "classification.md").read_text()


def test_faint_sub_bins_in_summary():
    from astrohvae.evaluation.metrics import FAINT_BINS

    rng = np.random.default_rng(1)
    mag = rng.uniform(20, 24, 400)
    y = rng.integers(0, 2, 400)
    score = np.where(mag < 22, y + rng.normal(0, 0.2, 400), rng.normal(0, 1, 400))  # informative only bright
    r = summarise(y, mag, {"s": [score]})[0]
    for lo, hi, name in FAINT_BINS:
        assert r[f"n_{name}"] == int(((mag >= lo) & (mag < hi)).sum())
    assert r["auc_21<r<22_mean"] > 0.9 and abs(r["auc_22<r<23_mean"] - 0.5) < 0.15
    assert r["n_21<r<22"] + r["n_22<r<23"] + r["n_r>23"] == r["n_r>21"]
    assert "AUC 22<r<23" in format_table([r])


def test_supervised_ceilings_need_and_use_labels(make_toy_stamps):
    from astrohvae.evaluation.baselines import SupervisedStatsCeiling

    train = make_toy_stamps(200, seed=4, mag_range=(16, 20))
    test = make_toy_stamps(120, seed=5, mag_range=(16, 20))
    y, _ = labels_from_meta(test.meta)
    c = SupervisedStatsCeiling(random_state=0).fit(train)
    assert binary_metrics(y, c.predict_proba(test))["auc"] > 0.9
    no_labels = train[np.arange(len(train))]
    no_labels.meta.remove_column("truth_type")
    with pytest.raises(ValueError):
        SupervisedStatsCeiling().fit(no_labels)
