"""Classifiers side by side on the same test: the shipped weights against ones made by `astrohvae train`.

For every weights folder given (default: the shipped classifier only):

* AUC per r-magnitude bin on simulated test fields (seeds 500-507, 1024 px; never used in training),
  stamps cut by the chain of ``astrohvae run`` (`astrohvae.evaluation.data.simulated_stamps`);
* the SDSS star recall of the real field 004510-4-0030 (`astrohvae.evaluation.data.star_recall`);
* the accuracy on the 20 labelled stamps of ../shared/data/sdss/stamps-dl4astro.

    .venv/bin/python benchmarks/retrain_compare.py --weights shipped /tmp/acc/w-avr

A weights entry ``PATH@name=value[,name=value]`` loads PATH and sets those classifier parameters
before scoring (e.g. ``/tmp/w@morph_snr=0``: the same weights without the S/N weighting of the
morphology).  ``share`` is the r > 21 AUC over the supervised ceiling (``--ceiling``, README
"Classification"); ``sim star frac`` the share of the simulated test sources labelled star (truth
in the header line); ``field labelled star`` how many of all the sources of 004510-4-0030 are labelled star.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "sdss"


def load_variant(spec):
    """The classifier of a weights entry: ``shipped`` or a folder, with ``@name=value,...`` parameters set."""
    from astrohvae.classify.base import DEFAULT_WEIGHTS
    from astrohvae.classify.persist import load_model

    path, _, sets = spec.partition("@")
    clf = load_model(DEFAULT_WEIGHTS if path == "shipped" else Path(path), device="cpu")
    for item in filter(None, sets.split(",")):
        key, _, value = item.partition("=")
        try:
            value = json.loads(value)
        except ValueError:
            pass
        setattr(clf, key, value)
    return clf


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", nargs="+", default=["shipped"], help="weights folders ('shipped' = the default)")
    ap.add_argument("--test-seeds", type=int, nargs="*", default=list(range(500, 508)))
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--cache", default=str(ROOT / "scratch" / "classify" / "run-chain-cache"))
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--ceiling", type=float, default=0.931, help="supervised ceiling of the r > 21 AUC")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from astrohvae.evaluation.data import load_dl4astro, simulated_stamps, star_recall
    from astrohvae.evaluation.metrics import ALL_BINS, binary_metrics, labels_from_meta

    t0 = time.time()
    test = simulated_stamps(args.test_seeds, args.size, cache=args.cache,
                            log=lambda m: print(f"[{time.time() - t0:5.0f} s] {m}", flush=True))
    test = test[np.asarray(test.meta["truth_type"]) >= 0]
    y, mag = labels_from_meta(test.meta)
    fld = SHARED / "fields" / "004510-4-0030"
    rows = []
    for w in args.weights:
        clf = load_variant(w)
        p = clf.predict_proba(test)
        row = {"weights": w, "hash": clf.weights_hash[:12], "auc_all": binary_metrics(y, p)["auc"]}
        for lo, hi, name in ALL_BINS:
            sel = (mag >= lo) & (mag < hi)
            row[f"auc {name}"] = binary_metrics(y[sel], p[sel])["auc"]
        row["share"] = row["auc r>21"] / args.ceiling
        row["sim star frac"] = float((p < 0.5).mean())
        if fld.is_dir():
            rec = star_recall(clf, fld, fld / "stars_in_frame_004510-4-0030.fits")
            row["sdss stars"] = f"{rec['n_star']}/{rec['n_matched']}"
            row["star recall"] = rec["share"]
            # all of the field's sources labelled star: a recall bought by calling every faint source a star shows here
            row["field labelled star"] = f"{round(rec['star_fraction_all'] * rec['n_sources'])}/{rec['n_sources']}"
        if (SHARED / "stamps-dl4astro").is_dir():
            st, yd = load_dl4astro(SHARED / "stamps-dl4astro")
            row["dl4astro acc"] = binary_metrics(yd, clf.predict_proba(st))["accuracy"]
        rows.append(row)
        print(f"[{time.time() - t0:5.0f} s] {w}: done", flush=True)
    keys = list(rows[0])
    print(f"\ntest: {len(y)} labelled stamps of seeds {args.test_seeds} ({args.size} px), "
          f"true star fraction {float((y == 0).mean()):.3f}\n")
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=float))


if __name__ == "__main__":
    main()
