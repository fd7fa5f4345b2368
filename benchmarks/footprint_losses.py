"""Where the footprints' IoU with the simulator's 0.5-sigma truth is lost (issue 14, eighth round).

For each simulated field the shipped default segmenter is run once (as
`isophote_limits.py` does: the arguments of `grow_isophotal` and the
noiseless r image are kept), and the false-negative and false-positive
pixels of the union IoU (``segm > 0`` vs ``truth_mask > 0``) are split, on
the observed image and with the same seeds grown on the noiseless one:

* a false negative goes to its truth object, a false positive to its
  segment; a truth object is tied to the segment holding most of its truth
  pixels, a segment to the truth object it overlaps most;
* rows: growth rule of that segment (``stellar-profile``: bright and
  point-like, ``profile-crossing``: bright, its own elliptical profile or,
  from 30 px, its smoothed isophote, ``faint``: below ``psf_snr``, the
  PSF-convolved model), true class and true r magnitude; ``no segment``:
  truth objects no segment overlaps; ``unmatched``: segments on no truth
  pixel;
* loss: (FN + FP) / union, the IoU's shortfall from 1 that the row causes.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/footprint_losses.py [--seeds 10]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

MAG_BINS = ((-99, 18), (18, 20), (20, 21), (21, 22), (22, 23), (23, 99))


def _rules(seeds, image, isophote, kw):
    """The growth rule of every segment, as `grow_isophotal` chooses it (indexed by label)."""
    from astrohvae.segmentation.footprints import _star_radii

    W, _, _, _, _, _, npx, flux = kw["moments"]
    snr = flux / np.sqrt(np.maximum(npx, 1))
    wy, wx = kw["centres"]
    lab = np.flatnonzero((W > 0) & (snr >= kw["psf_snr"]))
    lab = lab[lab > 0]
    star_R = np.full(W.size, np.nan)
    star_R[lab] = _star_radii(image, seeds, lab, wy[lab], wx[lab], isophote, valid=kw["valid"], snr=snr[lab])
    rule = np.full(W.size, "profile-crossing", dtype=object)
    rule[(snr < kw["psf_snr"]) & (W > 0)] = "faint"
    rule[np.isfinite(star_R)] = "stellar-profile"
    return rule


def _major(a, b):
    """For each label of ``a`` (>0 where ``b`` > 0 too), the label of ``b`` it shares most pixels with."""
    m = (a > 0) & (b > 0)
    nb = int(b.max()) + 1
    u, c = np.unique(a[m].astype(np.int64) * nb + b[m], return_counts=True)
    ia, ib = u // nb, u % nb
    o = np.lexsort((-c, ia))
    first = np.r_[True, ia[o][1:] != ia[o][:-1]]
    out = np.zeros(int(a.max()) + 1, np.int64)
    out[ia[o][first]] = ib[o][first]
    return out


def losses(seg, truth_lab, table, rule):
    """Rows ``(rule, class, r range, objects, truth px, FN, FP, loss)`` and ``(IoU, union, FN, FP)``."""
    truth = truth_lab > 0
    FN, FP = truth & (seg == 0), (seg > 0) & ~truth
    union = int((truth | (seg > 0)).sum())
    nt, ns = int(truth_lab.max()) + 1, int(seg.max()) + 1
    tseg, segt = _major(truth_lab, seg), _major(seg, truth_lab)
    tseg = np.r_[tseg, np.zeros(max(0, nt - tseg.size), np.int64)]
    segt = np.r_[segt, np.zeros(max(0, ns - segt.size), np.int64)]
    mag = np.r_[np.nan, np.asarray(table["mag_r"], float)]
    typ = np.r_[np.array(["-"]), np.asarray(table["type"]).astype(str)]
    fn_t = np.bincount(truth_lab[FN], minlength=nt)
    fp_s = np.bincount(seg[FP], minlength=ns)
    area = np.bincount(truth_lab.ravel(), minlength=nt)
    srule = np.r_[rule, np.full(max(0, ns - rule.size), "?", dtype=object)][:ns]
    trule = np.where(tseg > 0, srule[np.minimum(tseg, ns - 1)], "no segment")
    smag = np.where(segt > 0, mag[segt], np.nan)
    styp = np.where(segt > 0, typ[segt], "none")
    rows = []
    for r in ("stellar-profile", "profile-crossing", "faint", "no segment"):
        for ty in ("star", "galaxy"):
            for lo, hi in MAG_BINS:
                selt = (trule == r) & (typ == ty) & (mag >= lo) & (mag < hi)
                sels = (srule == r) & (styp == ty) & (smag >= lo) & (smag < hi)
                fn, fp = int(fn_t[selt].sum()), int(fp_s[sels].sum())
                if fn + fp:
                    rows.append((r, ty, f"{lo}-{hi}".replace("-99-", "<").replace("-99", "+"), int(selt.sum()),
                                 int(area[selt].sum()), fn, fp, (fn + fp) / union))
    un = segt == 0
    un[0] = False
    rows.append(("unmatched", "-", "-", int(un.sum()), 0, 0, int(fp_s[un].sum()), fp_s[un].sum() / union))
    iou = float((truth & (seg > 0)).sum() / max(1, union))
    return rows, (iou, union, int(FN.sum()), int(FP.sum()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="*", default=[10])
    args = ap.parse_args()
    import torch

    from isophote_limits import _run, noiseless_growth

    torch.set_num_threads(1)
    for seed in args.seeds:
        sim, bkg, segm, kept = _run(seed, True)
        (seeds, image, iso), kw = kept["grow"][0][:3], dict(kept["grow"][1])
        rule = _rules(seeds, image, iso, kw)
        rms = float(np.median(np.asarray(bkg.rms[2])))
        for name, seg in (("observed", np.asarray(segm.data)), ("noiseless", noiseless_growth(kept, rms))):
            rows, (iou, union, fn, fp) = losses(seg, sim.truth_mask, sim.truth, rule)
            print(f"\n### seed {seed}, {name} image: IoU {iou:.4f}, union {union} px, FN {fn}, FP {fp}\n")
            print("| rule | class | r | objects | truth px | FN px | FP px | loss |")
            print("|---|---|---|---|---|---|---|---|")
            for r in rows:
                print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]} | {r[6]} | {r[7]:.4f} |", flush=True)


if __name__ == "__main__":
    main()
