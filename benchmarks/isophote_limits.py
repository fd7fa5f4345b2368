"""What limits the footprints' IoU with the simulator's 0.5-sigma truth (issue 14).

For each simulated field (full SDSS frame) the shipped default segmenter is
run once; the arguments it passes to `grow_isophotal` and the simulator's
noiseless r image (the sum of every object's light) are kept, and the table
reports:

* IoU: the shipped footprints against the truth (``segm > 0`` vs
  ``truth_mask > 0``, as `segment_bench.py`);
* r > 22: the fraction of the truth pixels that belong to objects fainter
  than r = 22, and of those with no segment at all;
* ceiling: the IoU if every object that has a segment had a perfect
  footprint (the truth pixels of objects with no segment stay missed);
* noiseless pixels: the same seeds grown by the same rules on the noiseless
  r image (and its smoothed g+r+i stand-in, 3 r) instead of the observed
  one: what the footprint shapes (ellipses, circles, smoothed isophotes)
  lose without pixel noise;
* total-light truth: IoU against the noiseless *total* light above 0.5 sky
  sigma instead of the brightest single object's (where two objects' wings
  overlap, the observed isophote includes the overlap);
* rms / SKYSIG: the background rms the footprints are measured in, over
  the sky sigma the truth is cut in (3-sigma clipping narrows the rms).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/isophote_limits.py [--seeds 1 2] [--smooth]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402


def _run(seed, structure):
    """Segment one simulated field; keep the growth's arguments and the noiseless r image."""
    import astrohvae.segmentation.footprints as fp
    import astrohvae.simulate.field as sf
    from astrohvae.detection.background import estimate_background
    from astrohvae.segmentation.network import load_default_segmenter, network_input

    kept = {}
    render, grow = sf._render, fp.grow_isophotal

    def _render(*a, **k):   # the noiseless r image of every object together
        out = render(*a, **k)
        kept["model_r"] = out[0]["r"].astype(np.float32)
        return out

    def _grow(*a, **k):
        kept["grow"] = (a, k)
        return grow(*a, **k)

    sf._render, fp.grow_isophotal = _render, _grow
    try:
        sim = sf.simulate_field(seed, structure=structure)
        bkg = estimate_background(sim.field)
        segm = load_default_segmenter(device="cpu").segment(network_input(sim.field, bkg))
    finally:
        sf._render, fp.grow_isophotal = render, grow
    return sim, bkg, segm, kept


def noiseless_growth(kept, rms):
    """The same seeds grown by the same rules on the noiseless r image (in the observed ``rms`` units).

    ``kept`` is what `_run` keeps: the arguments of the shipped `grow_isophotal`
    call and the simulator's noiseless r image.  The moments, windowed
    centroids and centroid image (the smoothed g+r+i stand-in, 3 r) are
    measured on the noiseless image; the seeds' S/N (their growth paths) stay
    the observed ones.
    """
    from scipy.ndimage import gaussian_filter

    from astrohvae.segmentation.footprints import grow_isophotal
    from astrohvae.detection.centroids import windowed_centroids
    from astrohvae.segmentation.seeds import segment_moments

    (seeds, _, iso), kw = kept["grow"][0][:3], dict(kept["grow"][1])
    r0 = (kept["model_r"] / rms).astype(np.float32)
    mom = segment_moments(seeds, r0)
    kw["moments"] = mom[:6] + tuple(kw["moments"][6:8])   # the same growth paths (S/N of the seeds)
    det0 = gaussian_filter(3 * r0, 2.0 / 2.3548)
    lab = np.flatnonzero(mom[0] > 0)
    lab = lab[lab > 0]
    wy, wx = mom[1].copy(), mom[2].copy()
    wy[lab], wx[lab] = windowed_centroids(det0, mom[1][lab], mom[2][lab], sigma=1.5)
    kw.update(centres=(wy, wx), centroid_image=det0)
    return grow_isophotal(seeds, r0, iso, **kw)


def limits(seed, structure=True):
    """The table row of one field (see the module docstring)."""
    sim, bkg, segm, kept = _run(seed, structure)
    truth_lab = sim.truth_mask
    truth = truth_lab > 0
    pred = segm.data > 0

    def iou(a, b):
        return float((a & b).sum() / max(1, (a | b).sum()))

    n = int(truth_lab.max()) + 1
    area = np.bincount(truth_lab.ravel(), minlength=n)
    mag = np.r_[np.nan, np.asarray(sim.truth["mag_r"])]
    has_seg = np.zeros(n, bool)
    has_seg[np.unique(truth_lab[pred & truth])] = True
    has_seg[0] = False
    faint = mag > 22.0
    rms = float(np.median(np.asarray(bkg.rms[2])))
    skysig = float(sim.sky_sigma["r"])
    noiseless = noiseless_growth(kept, rms) > 0
    return {
        "field": f"seed {seed}" + ("" if structure else " smooth"),
        "iou": iou(pred, truth),
        "truth_px": int(truth.sum()),
        "r>22": float(area[faint].sum() / truth.sum()),
        "r>22 no segment": float(area[faint & ~has_seg].sum() / truth.sum()),
        "ceiling": float(area[has_seg].sum() / area[1:].sum()),
        "noiseless pixels": iou(noiseless, truth),
        "total-light truth": iou(pred, kept["model_r"] / skysig > 0.5),
        "rms/SKYSIG": rms / skysig,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--smooth", action="store_true", help="also every seed with smooth galaxies")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    cols = ["iou", "truth_px", "r>22", "r>22 no segment", "ceiling", "noiseless pixels", "total-light truth",
            "rms/SKYSIG"]
    print("| field | IoU | truth px | truth px of r > 22 objects | of r > 22 objects with no segment | "
          "ceiling (objects with a segment perfect) | same seeds, noiseless pixels | total-light truth | "
          "rms / SKYSIG |")
    print("|---" * (len(cols) + 1) + "|")
    for seed in args.seeds:
        for structure in (True, False) if args.smooth else (True,):
            row = limits(seed, structure)
            cells = [str(row[c]) if c == "truth_px" else f"{row[c]:.4f}" for c in cols]
            print(f"| {row['field']} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
