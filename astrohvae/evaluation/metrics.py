"""Metrics, the classical baseline, ROC curves and the evaluation table.

Convention: the positive class is *galaxy*; every score is a ``p_galaxy``-like
number (higher = more galaxy-like).  Truth labels are 0 = star, 1 = galaxy,
-1 = unknown (ignored).

* `ClassicalClassifier` -- the half-light-radius separator SExtractor and SDSS
  users rely on, label-free: the stellar locus is found as the narrow peak of
  the bright sources' half-light radii, a source is a galaxy when its
  half-light radius exceeds the locus by a margin.
* `binary_metrics` -- AUC, accuracy, star and galaxy purity / completeness.
* `summarise` -- mean +- std over training seeds, overall and per r-magnitude
  bin.
* `plot_roc` -- the paper's Fig. 6.
* `evaluate` -- all of it for a set of fitted methods on labelled stamps.
"""

from __future__ import annotations

import numpy as np

__all__ = ['MAG_BINS', 'FAINT_BINS', 'binary_metrics', 'summarise', 'format_table', 'evaluate', 'labels_from_meta']

MAG_BINS = ((-np.inf, 19.0, "r<19"), (19.0, 21.0, "19<r<21"), (21.0, np.inf, "r>21"))
"""The r-magnitude bins of the table (lower, upper, name)."""

FAINT_BINS = ((21.0, 22.0, "21<r<22"), (22.0, 23.0, "22<r<23"), (23.0, np.inf, "r>23"))
"""Sub-bins of the faint end (r > 21), reported next to `MAG_BINS`."""

ALL_BINS = MAG_BINS + FAINT_BINS


def labels_from_meta(meta):
    """``(y, mag_r)`` from a stamp ``meta`` table with ``truth_type`` (0/1/-1) and a magnitude.

    ``mag_r`` is ``truth_mag_r`` when present, else ``mag_r``, else NaN.
    """
    if "truth_type" not in meta.colnames:
        raise ValueError("stamps have no truth_type column")
    y = np.asarray(meta["truth_type"]).astype(int)
    for col in ("truth_mag_r", "mag_r"):
        if col in meta.colnames:
            return y, np.asarray(meta[col], dtype=float)
    return y, np.full(len(y), np.nan)


def binary_metrics(y, p_galaxy, threshold=0.5):
    """AUC, accuracy, purity and completeness of both classes.

    Parameters
    ----------
    y : array of int (0 star, 1 galaxy; other values ignored)
    p_galaxy : array of float
    threshold : float
        ``p_galaxy >= threshold`` -> galaxy.

    Returns
    -------
    dict : ``auc`` (NaN when one class is absent), ``accuracy``,
    ``star_purity``, ``star_completeness``, ``galaxy_purity``,
    ``galaxy_completeness``, ``n``, ``n_star``, ``n_galaxy``.
    """
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y)
    p = np.asarray(p_galaxy, dtype=float)
    ok = ((y == 0) | (y == 1)) & np.isfinite(p)
    y, p = y[ok], p[ok]
    pred = (p >= threshold).astype(int)
    out = {"n": int(y.size), "n_star": int((y == 0).sum()), "n_galaxy": int((y == 1).sum())}
    out["auc"] = float(roc_auc_score(y, p)) if 0 < y.sum() < y.size else float("nan")
    out["accuracy"] = float((pred == y).mean()) if y.size else float("nan")

    def ratio(a, b):
        return float(a / b) if b else float("nan")

    out["star_purity"] = ratio(((pred == 0) & (y == 0)).sum(), (pred == 0).sum())
    out["star_completeness"] = ratio(((pred == 0) & (y == 0)).sum(), (y == 0).sum())
    out["galaxy_purity"] = ratio(((pred == 1) & (y == 1)).sum(), (pred == 1).sum())
    out["galaxy_completeness"] = ratio(((pred == 1) & (y == 1)).sum(), (y == 1).sum())
    return out


_COLS = ("auc", "accuracy", "star_purity", "star_completeness", "galaxy_purity", "galaxy_completeness")


def summarise(y, mag_r, runs, threshold=0.5):
    """Mean and std over seeds of the metrics, overall and per magnitude bin.

    Parameters
    ----------
    y, mag_r : arrays (N,)
    runs : dict method -> list of p_galaxy arrays (one per training seed)

    Returns
    -------
    list of dict rows: ``method``, ``n_seeds``, ``<metric>_mean``,
    ``<metric>_std`` for every metric, and ``auc_<bin>_mean/std`` per bin.
    """
    rows = []
    mag_r = np.asarray(mag_r, dtype=float)
    for name, plist in runs.items():
        per = [binary_metrics(y, p, threshold) for p in plist]
        row = {"method": name, "n_seeds": len(plist), "n": per[0]["n"]}
        for c in _COLS:
            v = np.array([m[c] for m in per], dtype=float)
            row[f"{c}_mean"] = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
            row[f"{c}_std"] = float(np.nanstd(v)) if np.isfinite(v).any() else float("nan")
        for lo, hi, bname in ALL_BINS:
            sel = (mag_r >= lo) & (mag_r < hi)
            v = np.array([binary_metrics(np.asarray(y)[sel], np.asarray(p)[sel])["auc"] for p in plist])
            row[f"auc_{bname}_mean"] = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
            row[f"auc_{bname}_std"] = float(np.nanstd(v)) if np.isfinite(v).any() else float("nan")
            row[f"n_{bname}"] = int(sel.sum())
        rows.append(row)
    return rows


def format_table(rows):
    """Markdown table of `summarise` rows: mean ± std over seeds; the value alone for one seed."""
    heads = ["method", "seeds", "AUC", "accuracy", "star pur.", "star compl.", "gal. pur.", "gal. compl."]
    heads += [f"AUC {b[2]}" for b in ALL_BINS]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in rows:
        cells = [r["method"], str(r["n_seeds"])]
        one = r["n_seeds"] == 1

        def cell(key):
            return f"{r[key + '_mean']:.3f}" if one else f"{r[key + '_mean']:.3f} ± {r[key + '_std']:.3f}"

        cells += [cell(c) for c in _COLS] + [cell(f"auc_{b[2]}") for b in ALL_BINS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def evaluate(train_stamps, test_stamps, methods, seeds=(0, 1, 2, 3, 4), roc_path=None, progress=None):
    """Fit every method on ``train_stamps`` for every seed and score ``test_stamps``.

    Parameters
    ----------
    train_stamps, test_stamps : StampSet-like; ``test_stamps.meta`` must hold
        ``truth_type`` (labels are never given to the methods).
    methods : dict name -> callable(random_state) -> unfitted estimator with
        ``fit(stamps)`` and ``predict_proba(stamps) -> p_galaxy``.  An
        estimator class with ``deterministic = True`` is fitted once.
    seeds : sequence of int
    roc_path : path of the ROC PNG, optional

    Returns
    -------
    (rows, runs) : `summarise` rows and the raw ``{method: [p_galaxy, ...]}``.
    """
    from astrohvae.viz.roc import plot_roc
    y, mag = labels_from_meta(test_stamps.meta)
    runs = {}
    for name, make in methods.items():
        plist = []
        for s in seeds:
            est = make(s)
            est.fit(train_stamps)
            plist.append(np.asarray(est.predict_proba(test_stamps), dtype=float))
            if progress:
                progress(name, s, binary_metrics(y, plist[-1])["auc"])
            if getattr(est, "deterministic", False):
                break
        runs[name] = plist
    rows = summarise(y, mag, runs)
    if roc_path is not None:
        plot_roc(y, runs, roc_path)
    return rows, runs
