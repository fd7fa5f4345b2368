"""Benchmark: sources seen in fewer bands against the rest, AUC per r bin, side by side.

Simulated test fields (seeds never used for training) whose bands are offset
from r as real SDSS frames are (`astrohvae simulate`, default) and twice as
far (``--band-offset-scale 2``, the stress test) leave strips along the edges
that some band does not cover.  Their stamps, cut by the run chain
(`astrohvae stamps`), are classified by each set of weights.  Two splits:
``flags``, a source counts as *missing bands* when its catalogue flags say a
band has no data in its segment or has masked pixels there
(``FLAG_FEW_BANDS | FLAG_MASKED``); ``aperture``, when a pixel within 8 px
of its centre lacks data in some band (stamp mask bit 4; what the
statistics measure).

Usage::

    for s in 700 701 702 703; do
      astrohvae simulate /tmp/bands/s1_$s --seed $s --size 1024x1024
      astrohvae simulate /tmp/bands/s2_$s --seed $s --size 1024x1024 --band-offset-scale 2
    done
    astrohvae stamps /tmp/bands/s1_70? --out /tmp/bands/test_s1.zarr
    astrohvae stamps /tmp/bands/s2_70? --out /tmp/bands/test_s2.zarr
    .venv/bin/python benchmarks/missing_bands.py --store sdss=/tmp/bands/test_s1.zarr \\
        --store stress=/tmp/bands/test_s2.zarr --weights shipped=astrohvae/data/default [--label code]

Prints one row per (store, weights, r bin): AUC and counts of the sources
missing bands and of the rest; the AUC of the rest weighted to the missing-band
sources' r distribution (0.5 mag bins; the strips hold a different mix of
magnitudes within a bin) and the bootstrap 95 % interval (500 draws) of
AUC(missing) - AUC(rest, r-matched); and the AUC of the complete sources
within half a stamp of the field's edge (``rest at edge``, r-matched): the
strips lie along the edges, and there every faint source is classified better
than inside the field, so that is the like-for-like control; ``--json FILE``
appends the rows.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

BINS = (("all", -np.inf, np.inf), ("r<19", -np.inf, 19.0), ("19-21", 19.0, 21.0), ("r>21", 21.0, np.inf))


def auc(y, p):
    """ROC AUC (galaxy positive); NaN with one class only."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, p))


def matched_weights(r_rest, r_missing, width=0.5):
    """Weights that give the rest the r-magnitude histogram (bins of ``width``) of the missing-band sources."""
    lo = np.floor(min(r_rest.min(), r_missing.min()) / width) * width
    edges = np.arange(lo, max(r_rest.max(), r_missing.max()) + width, width)
    hm = np.histogram(r_missing, edges)[0] / len(r_missing)
    ho = np.histogram(r_rest, edges)[0] / len(r_rest)
    k = np.clip(np.digitize(r_rest, edges) - 1, 0, len(edges) - 2)
    return np.where(ho[k] > 0, hm[k] / np.where(ho[k] > 0, ho[k], 1.0), 0.0)


def diff_interval(y, p, few, w_rest, n_boot=500, seed=0):
    """Bootstrap 95 % interval of AUC(missing) - AUC(rest, r-matched); NaN where a class is absent."""
    from sklearn.metrics import roc_auc_score

    mi, oi = np.flatnonzero(few), np.flatnonzero(~few)
    if len(np.unique(y[mi])) < 2 or len(np.unique(y[oi])) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    d = []
    for _ in range(n_boot):
        a, c = rng.integers(0, mi.size, mi.size), rng.integers(0, oi.size, oi.size)
        if len(np.unique(y[mi[a]])) < 2 or len(np.unique(y[oi[c]])) < 2 or w_rest[c].sum() == 0:
            continue
        d.append(roc_auc_score(y[mi[a]], p[mi[a]]) - roc_auc_score(y[oi[c]], p[oi[c]], sample_weight=w_rest[c]))
    return tuple(float(v) for v in np.percentile(d, [2.5, 97.5]))


def edge_distance(meta, size):
    """Distance (pixels) of each source from the nearest edge of its ``size`` x ``size`` field."""
    x, y = np.asarray(meta["x"], float), np.asarray(meta["y"], float)
    return np.minimum.reduce([x, y, size - 1 - x, size - 1 - y])


def evaluate(store, weights, size=1024):
    """Rows of AUC per r bin and split for the missing-band sources and the rest of ``store``."""
    from astrohvae.classify.persist import load_model
    from astrohvae.conventions import FLAG_FEW_BANDS, FLAG_MASKED
    from astrohvae.stamps.store import open_store

    st = open_store(store).to_stampset()
    clf = load_model(weights, device="cpu")
    p = clf.predict_proba(st)
    y = np.asarray(st.meta["truth_type"]).astype(int)
    r = np.asarray(st.meta["truth_mag_r"], float)
    flags = np.asarray(st.meta["flags"]).astype(int)
    from astrohvae.conventions import MASK_INVALID

    ny, nx = st.flux.shape[-2:]
    yy, xx = np.mgrid[:ny, :nx]
    near = np.hypot(yy - ny // 2, xx - nx // 2) <= 8
    splits = {"flags": (flags & (FLAG_FEW_BANDS | FLAG_MASKED)) != 0,
              "aperture": ((st.mask[:, near] & MASK_INVALID) != 0).any(axis=1)}
    ok = (y == 0) | (y == 1)
    edge = edge_distance(st.meta, size)
    rows = []
    for (split, few), (name, lo, hi) in ((sp, bn) for sp in splits.items() for bn in BINS):
        b = ok & (r >= lo) & (r < hi)
        row = {"split": split, "bin": name, "n_missing": int((b & few).sum()), "n_rest": int((b & ~few).sum()),
               "auc_missing": auc(y[b & few], p[b & few]), "auc_rest": auc(y[b & ~few], p[b & ~few]),
               "auc_all": auc(y[b], p[b])}
        # the rest weighted to the missing-band sources' r distribution (strips hold a different mix of
        # magnitudes within a bin), and the bootstrap 95 % interval of the difference
        row["auc_rest_matched"], row["diff_lo"], row["diff_hi"] = float("nan"), float("nan"), float("nan")
        if (b & few).sum() >= 5 and len(np.unique(y[b & few])) == 2:
            from sklearn.metrics import roc_auc_score

            w = matched_weights(r[b & ~few], r[b & few])
            row["auc_rest_matched"] = float(roc_auc_score(y[b & ~few], p[b & ~few], sample_weight=w))
            row["diff_lo"], row["diff_hi"] = diff_interval(y[b], p[b], few[b], w)
        # the complete sources whose stamps the field's edge cuts, as the missing-band ones' (those lie in
        # the edge strips, and at r > 21 every source near an edge is classified better than one inside),
        # r-matched too
        row["auc_edge"], row["n_edge"] = float("nan"), 0
        if (b & few).sum() >= 5 and len(np.unique(y[b & few])) == 2:
            ctrl = b & ~few & (edge < st.flux.shape[-1] // 2)
            row["n_edge"] = int(ctrl.sum())
            if len(np.unique(y[ctrl])) == 2:
                from sklearn.metrics import roc_auc_score

                row["auc_edge"] = float(roc_auc_score(y[ctrl], p[ctrl], sample_weight=matched_weights(r[ctrl], r[b & few])))
        # bright stars labelled galaxy with confidence, among the sources missing bands
        row["missing_stars_p99"] = int((b & few & (y == 0) & (p >= 0.99)).sum())
        rows.append(row)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", action="append", required=True, help="NAME=PATH of a stamp store with truth")
    ap.add_argument("--weights", action="append", required=True, help="NAME=DIR of a weights folder")
    ap.add_argument("--label", default="", help="what code ran (e.g. a commit)")
    ap.add_argument("--size", type=int, default=1024, help="side of the simulated fields (pixels)")
    ap.add_argument("--json", default=None, help="append the rows to this JSON-lines file")
    args = ap.parse_args(argv)
    print(f"{'store':8s} {'weights':13s} {'code':5s} {'split':8s} {'bin':6s} {'AUC missing':>11s} {'n':>5s} "
          f"{'AUC rest':>9s} {'n':>5s} {'diff':>6s} {'rest r-matched':>14s} {'diff 95% (r-matched)':>20s} "
          f"{'rest at edge':>12s} {'n':>5s} "
          f"{'AUC all':>8s} {'stars p>=.99':>12s}")
    for s in args.store:
        sname, spath = s.split("=", 1)
        for w in args.weights:
            wname, wpath = w.split("=", 1)
            for row in evaluate(spath, wpath, args.size):
                d = row["auc_missing"] - row["auc_rest"]
                print(f"{sname:8s} {wname:13s} {args.label:5s} {row['split']:8s} {row['bin']:6s} {row['auc_missing']:11.3f} "
                      f"{row['n_missing']:5d} {row['auc_rest']:9.3f} {row['n_rest']:5d} {d:6.3f} "
                      f"{row['auc_rest_matched']:14.3f} {'[%.3f, %.3f]' % (row['diff_lo'], row['diff_hi']):>20s} "
                      f"{row['auc_edge']:12.3f} {row['n_edge']:5d} "
                      f"{row['auc_all']:8.4f} {row['missing_stars_p99']:12d}", flush=True)
                if args.json:
                    with open(args.json, "a") as fh:
                        fh.write(json.dumps({"store": sname, "weights": wname, "code": args.label, **row}) + "\n")


if __name__ == "__main__":
    sys.exit(main())
