"""`astrohvae evaluate CAT --truth LIST` against any truth list (astrohvae.evaluation.truth.evaluate_truth)."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table
from click.testing import CliRunner

from astrohvae.cli import main
from astrohvae.evaluation.truth import evaluate_truth, read_truth_list, truth_labels
from astrohvae.io.catalog import write_catalog


def test_truth_label_conventions():
    assert truth_labels(np.array(["STAR", "galaxy", "Gal", "qso"])).tolist() == [0, 1, 1, -1]
    assert truth_labels(np.array([6, 3, 6, 0])).tolist() == [0, 1, 0, -1]  # SDSS TYPE
    assert truth_labels(np.array([1, -1, 1])).tolist() == [0, 1, 0]  # +1 star, -1 galaxy
    assert truth_labels(np.array([0, 1, -1])).tolist() == [0, 1, -1]  # astrohvae truth_type
    assert truth_labels(np.array([True, False])).tolist() == [0, 1]
    with pytest.raises(ValueError):
        truth_labels(np.array([17, 42]))


def _catalogue(path, n=6):
    """A catalogue with sources 10" apart along dec; classes alternate star/galaxy; mag_r 15, 17, ... 25."""
    rows = Table()
    rows["id"] = np.arange(1, n + 1)
    rows["x"] = np.arange(n) * 25.0
    rows["y"] = np.zeros(n)
    rows["ra"] = np.full(n, 150.0)
    rows["dec"] = 2.0 + np.arange(n) * 10 / 3600
    rows["class"] = np.where(np.arange(n) % 2, "galaxy", "star")
    rows["p_galaxy"] = np.where(np.arange(n) % 2, 0.9, 0.1)
    rows["z_hvae"] = np.zeros((n, 1))
    rows["z_hvae_sigma"] = np.ones((n, 1))
    rows["z_ae"] = np.zeros((n, 30))
    for b in "ugriz":
        rows[f"flux_{b}"] = np.ones(n)
        rows[f"flux_err_{b}"] = np.ones(n)
        rows[f"mag_{b}"] = 15.0 + 2 * np.arange(n)
    rows["area"] = np.full(n, 10)
    rows["flags"] = np.zeros(n, int)
    seg = np.zeros((10, 10), np.int32)
    return write_catalog(path, rows, seg, seg.astype(np.uint8), np.zeros((n, 64, 64), np.uint8))


def test_two_class_list_counts_by_bin(tmp_path):
    cat = _catalogue(tmp_path / "c.fits")
    # truth: sources 1-4 at 0.5" (matched), source 5 at 2" (not within 1"), one extra far away
    dec = 2.0 + np.arange(6) * 10 / 3600
    truth = Table({"RA": [150.0] * 6, "DEC": [dec[0] + 0.5 / 3600, dec[1] - 0.5 / 3600, dec[2], dec[3],
                                              dec[4] + 2 / 3600, 3.0],
                   "TYPE": [6, 3, 3, 3, 6, 6], "r": [15.0, 17.0, 19.0, 21.0, 23.0, 18.0]})
    truth.write(tmp_path / "t.csv", format="ascii.csv")
    res = evaluate_truth(cat, tmp_path / "t.csv")
    assert not res["star_only"] and res["n_truth"] == 6 and res["n_matched"] == 4
    t = {row["bin"]: row for row in res["table"]}
    allr = t["all"]
    assert (allr["n_star"], allr["n_galaxy"], allr["matched_star"], allr["matched_galaxy"]) == (3, 3, 1, 3)
    # source 3 (truth galaxy) is labelled star: galaxy completeness 2/3, star purity 1/2
    assert allr["galaxy_completeness"] == pytest.approx(2 / 3) and allr["star_purity"] == pytest.approx(0.5)
    assert allr["star_completeness"] == 1.0 and allr["galaxy_purity"] == 1.0
    assert t["r<16"]["matched_star"] == 1 and t["16<r<18"]["matched_galaxy"] == 1
    assert t["r>22"]["matched_star"] == 0 and t["r>22"]["n_star"] == 1
    # a wider radius takes source 5 in
    assert evaluate_truth(cat, tmp_path / "t.csv", radius=2.5)["n_matched"] == 5


def test_star_list_and_pixel_positions(tmp_path):
    cat = _catalogue(tmp_path / "c.fits")
    stars = Table({"x_r": [0.3, 25.0, 50.0, 100.0], "y_r": [0.0, 0.5, 0.0, 9.0]})  # no class column: a star list
    stars.write(tmp_path / "s.fits")
    tl = read_truth_list(tmp_path / "s.fits")
    assert tl.meta["star_only"] and np.isnan(tl["ra"]).all()
    res = evaluate_truth(cat, tmp_path / "s.fits")
    allr = res["table"][-1]
    # the 4th star is 9 px = 3.6" off: unmatched; of the 3 matched, ids 1 and 3 are labelled star
    assert res["star_only"] and (allr["n_star"], allr["matched"], allr["labelled_star"]) == (4, 3, 2)
    assert allr["star_recall"] == pytest.approx(2 / 3)
    r = CliRunner().invoke(main, ["evaluate", str(cat), "--truth", str(tmp_path / "s.fits")])
    assert r.exit_code == 0, r.output
    assert "3 of 4 truth objects matched within 1\"" in r.output and "star_recall" in r.output
    assert "±" not in r.output and "| all | 4 | 3 | 2 | 0.667 |" in r.output


def test_bad_truth_lists(tmp_path):
    cat = _catalogue(tmp_path / "c.fits")
    Table({"a": [1.0], "b": [2.0]}).write(tmp_path / "nopos.csv", format="ascii.csv")
    Table({"ra": [150.0], "dec": [2.0], "class": [17]}).write(tmp_path / "badclass.csv", format="ascii.csv")
    for name, words in (("nopos.csv", "no sky (ra/dec) or pixel (x/y)"), ("badclass.csv", "fit no convention")):
        r = CliRunner().invoke(main, ["evaluate", str(cat), "--truth", str(tmp_path / name)])
        assert r.exit_code == 2 and "astrohvae: error:" in r.output and words in r.output, r.output


def test_simulator_truth_folder(tmp_path):
    """The simulator's truth (folder or TRUTH HDU) is a two-class list like any other."""
    from astrohvae.simulate.io import write_simulation

    write_simulation(tmp_path / "sim", seed=5, size=(64, 64))
    tl = read_truth_list(tmp_path / "sim")
    assert not tl.meta["star_only"] and set(np.unique(tl["label"])) <= {0, 1}
    assert np.isfinite(tl["ra"]).all() and np.isfinite(tl["mag_r"]).all()
    f = next((tmp_path / "sim").glob("truth-*.fits"))
    tl2 = read_truth_list(f)
    np.testing.assert_array_equal(tl["label"], tl2["label"])
