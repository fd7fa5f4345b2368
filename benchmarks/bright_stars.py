"""Bright stars on the eight real SDSS fields: how many sources brighter than r = 15 are labelled galaxy.

Each field goes through the chain of ``astrohvae run`` (`astrohvae.pipeline.field.find_sources` with the
default segmenter, stamps cut as `process_field` cuts them; r = the catalogue's ``mag_r``, the
segment's asinh magnitude) and is classified by the shipped classifier as it is, and with the
bright-star switch ``peak_centre`` off (`astrohvae.morphology.physical.PHYSICAL_OPTIONS`).  Also printed: the
SDSS star recall of 004510-4-0030 (its stars_in_frame list, matched within 3 px, as
`astrohvae.evaluation.data.star_recall`), per field how many sources `astrohvae.morphology.psf.interpolated_core`
(SDSS-interpolated saturated cores) fires for, brighter and fainter than r = 14, and the CPU seconds of
the segment step.  ``--deblend-floor none`` (or a number) also runs every field with the network
segmenter's ``deblend_floor`` set so (None: photutils' deblending levels, as before issue 13 item 4),
side by side with the default, in the same run.

    .venv/bin/python benchmarks/bright_stars.py [--json benchmarks/results/bright_stars.json] [--deblend-floor none]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ROOT.parent / "shared" / "data" / "sdss" / "fields"
RECALL_FIELD = "004510-4-0030"


def field_stamps(name, workdir, segmenter, steps=None):
    """Sources and zarr-backed stamps of one real field, cut by the chain of ``astrohvae run``
    (``steps``: a `astrohvae.pipeline.field._Steps` that gets the steps' times)."""
    import astrohvae.stamps.cutouts as stamps_mod
    from astrohvae.io.readers import read_field
    from astrohvae.pipeline.field import stamp_store, find_sources

    field = read_field(FIELDS / name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bkg, segm, src = find_sources(field, segmenter=segmenter, steps=steps)
        flux, mask, sky, meta = stamp_store(field, segm, src, bkg, 256, workdir, stamps_mod)
    return src, stamps_mod.StampSet(flux, np.asarray(mask), np.asarray(sky), meta)


def variant(clf, **params):
    """``clf`` with other parameters, the same fitted networks."""
    out = type(clf)(**{**clf.get_params(), **params})
    out._set_fitted_state(*clf._fitted_state())
    out.weights_hash = getattr(clf, "weights_hash", None)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fields", nargs="*", default=None, help="field folders under ../shared (default: all)")
    ap.add_argument("--bright", type=float, default=15.0, help="r limit of 'bright'")
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--deblend-floor", default=None,
                    help="also run with the segmenter's deblend_floor set so ('none': photutils' levels)")
    ap.add_argument("--weights", nargs="*", default=[],
                    help="more classifiers to count for (retrain_compare.py's entries: DIR or DIR@name=value)")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from astropy.table import Table

    from astrohvae.classify.persist import load_default_classifier
    from astrohvae.pipeline.loading import load_segmenter
    from astrohvae.morphology.psf import interpolated_core
    from astrohvae.stamps.store import match_truth

    t0 = time.time()
    clf = load_default_classifier(device="cpu")
    variants = {"shipped": clf, "peak_centre=False": variant(clf, peak_centre=False)}
    if args.weights:
        from retrain_compare import load_variant

        variants.update({w: load_variant(w) for w in args.weights})
    from astrohvae.pipeline.field import _Steps

    segs = {"default": load_segmenter("auto", device="cpu")}
    if args.deblend_floor is not None:
        from astrohvae.segmentation.network import load_default_segmenter

        v = None if args.deblend_floor.lower() == "none" else float(args.deblend_floor)
        segs[f"deblend_floor={v}"] = load_default_segmenter(device="cpu", deblend_floor=v)
    names = args.fields or sorted(p.name for p in FIELDS.iterdir() if p.is_dir())
    out = {}
    for skey, seg in segs.items():
        rows, worst = [], []
        for name in names:
            with tempfile.TemporaryDirectory(prefix="bright-") as tmp:
                steps = _Steps()
                src, st = field_stamps(name, tmp, seg, steps=steps)
                mag = np.asarray(src["mag_r"], float)
                bright = mag < args.bright
                interp = interpolated_core(st)
                row = {"field": name, "sources": len(src), f"r<{args.bright:g}": int(bright.sum()),
                       "interp r<14": int((interp & (mag < 14)).sum()),
                       "interp r>=14": int((interp & (mag >= 14)).sum())}
                for key, c in variants.items():
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        p = c.predict_proba(st)
                    row[f"galaxy ({key})"] = int((bright & (p >= 0.5)).sum())
                    if key == "shipped":
                        for i in np.flatnonzero(bright & (p >= 0.5)):
                            worst.append((name, int(i) + 1, float(mag[i]), float(src["x"][i]), float(src["y"][i]),
                                          float(p[i])))
                    stars = FIELDS / name / f"stars_in_frame_{name}.fits"
                    if stars.is_file():
                        s = Table.read(stars)
                        pts = Table({"x": np.asarray(s["x_r"], float), "y": np.asarray(s["y_r"], float)})
                        code, _ = match_truth(pts, Table({"x": src["x"], "y": src["y"],
                                                          "type": np.where(p >= 0.5, "galaxy", "star")}), radius=3.0)
                        row[f"sdss stars ({key})"] = f"{int((code == 0).sum())}/{int((code >= 0).sum())}"
                row["segment CPU s"] = round(steps.cpu["segment"], 1)
                rows.append(row)
            print(f"[{time.time() - t0:5.0f} s] {skey} {name}", flush=True)
        keys = [k for k in rows[0] if not k.startswith("sdss")]
        total = {k: (round(sum(r[k] for r in rows), 1) if k != "field" else "all") for k in keys}
        print(f"\nsegmenter: {skey}\n| " + " | ".join(keys) + " |")
        print("|" + "---|" * len(keys))
        for r in rows + [total]:
            print("| " + " | ".join(str(r[k]) for k in keys) + " |")
        for r in rows:
            for k in r:
                if k.startswith("sdss"):
                    print(f"{r['field']} {k}: {r[k]}")
        print(f"\nsources brighter than r = {args.bright:g} labelled galaxy by the shipped classifier "
              f"(field, id, mag_r, x, y, p_galaxy):")
        for w in worst:
            print("  %s id %d r=%.2f (x %.0f, y %.0f) p=%.3f" % w)
        out[skey] = {"rows": rows, "total": total, "worst": worst}
    if args.json:
        Path(args.json).write_text(json.dumps(out["default"] if len(out) == 1 else out, indent=1))


if __name__ == "__main__":
    main()
