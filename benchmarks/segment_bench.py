"""Segment benchmark: network segmenters (VAE+HC, AE+HC, AE+res+HC) vs photutils at 1.5 sigma.

On simulated full fields (2048x1489, with truth) it reports per variant:

* IoU: pixels with a label (segm > 0) vs the simulator's truth mask
  (truth_mask > 0: noiseless r surface brightness above
  `astrohvae.simulate.field.MASK_THRESHOLD` = 0.5 r sky sigma);
* completeness by true r magnitude (bins to r = 22.5): a truth object inside
  the field counts as detected when its true position (rounded to the pixel)
  lies in a segment, or a segment centroid lies within 2 px of it;
* purity: fraction of segments that match a truth object (any magnitude): the
  segment contains the true position of a simulated object, or its centroid
  lies within 2 px of one;
* IoU with the 1-sigma truth (`astrohvae.simulate.field.truth_mask(sim, 1.0)`), for
  ``--isophote 1`` footprints;
* fragments per truth galaxy brighter than r = 20 (`fragments`: detections
  matched to it beyond the first, plus unmatched detections whose centroid
  lies in its truth footprint) and the fraction of such galaxies shredded;
* seconds to segment the field (network + rule + connected components +
  deblending, from the network input / from the background-subtracted
  field for photutils; the background is estimated once and shared).

On a real SDSS field it reports the same with the photutils segments as the
reference (their centroids as "truth"), plus the recall of the SDSS-catalogued
stars when the field has a star list.

The network variants run as `NetworkSegmenter.segment` ships them: network
seeds, matched-filter seeds, deblending and isophotal growth to 0.5 r sky
sigma (see `astrohvae.segmentation`), with the band test, the halo test, the
PSF-scaled growth of faint segments, the smoothed isophote of large ones and
the trimming of small bright seeds.  ``--plain`` adds each variant with the
network's own footprints only (``isophote=None, seed_nsigma=None,
band_nsigma=None, halo_peak=None``).  With several seeds, a table over all
of them follows (pooled IoU: sum of intersections over sum of unions).
``--compare`` adds sep (SExtractor's library, DEBLEND_CONT 0.005), each
variant with photutils' contrast criterion alone (``fragment_excess=None``:
the deblending before issue 14) and with ``isophote=1``; ``--levels`` each
variant with photutils' deblending levels (``deblend_floor=None``, before
issue 13 item 4); ``--smooth`` also
runs every seed with smooth galaxies (``simulate_field(structure=False)``).

Writes ``segment_bench.json`` and ``README.md`` (the tables) into ``--out``;
``--readme-only`` rewrites the README from an existing JSON.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/segment_bench.py [--seeds 1 2] \
        [--real 004510-4-0030] [--weights astrohvae/data/segment] [--refit] [--plain] \
        [--plots] [--variants ae-res-hc] [--compare] [--levels] [--smooth] [--size NX NY] \
        [--out benchmarks/results/segment]
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "sdss" / "fields"
VARIANTS = ("vae-hc", "ae-hc", "ae-res-hc")
BINS = [14.0, 18.0, 19.0, 20.0, 21.0, 21.5, 22.0, 22.5]


def _centroids(segm):
    from scipy import ndimage

    data = segm.data
    n = int(data.max())
    if n == 0:
        return np.zeros((0, 2))
    c = ndimage.center_of_mass(np.ones_like(data, np.float32), data, np.arange(1, n + 1))
    return np.asarray(c, float)  # (y, x)


def match(segm, tx, ty, shape, radius=2.0):
    """Detected flag per truth position, and matched flag per segment."""
    from scipy.spatial import cKDTree

    ny, nx = shape
    data = np.zeros(shape, np.int32) if segm is None else np.asarray(segm.data)
    ix, iy = np.round(tx).astype(int), np.round(ty).astype(int)
    inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
    lab = np.zeros(len(tx), np.int32)
    lab[inside] = data[iy[inside], ix[inside]]
    det = lab > 0
    nseg = int(data.max())
    seg_ok = np.zeros(nseg + 1, bool)
    seg_ok[lab[lab > 0]] = True
    if nseg:
        cen = _centroids(segm)
        tree = cKDTree(np.c_[ty, tx])
        d, j = tree.query(cen, k=1)
        close = d <= radius
        seg_ok[1:][close] = True
        det[j[close]] = True
    return det, seg_ok[1:]


def fragments(segm, truth, truth_mask, shape, mag_max=20.0, radius=2.0):
    """Shredding of the truth galaxies brighter than ``mag_max`` (r) inside the field.

    A galaxy's fragments: the detections matched to it beyond the first (a
    detection matches a truth object when it contains its true position or
    its centroid lies within ``radius`` px of it) plus the detections whose
    centroid lies in its truth footprint and that match no truth object.
    Returns ``(mean fragments per galaxy, fraction with >= 1, n galaxies)``.
    """
    from scipy.spatial import cKDTree

    ny, nx = shape
    tx, ty = np.asarray(truth["x"], float), np.asarray(truth["y"], float)
    gal = ((np.asarray(truth["type"]) == "galaxy") & (np.asarray(truth["mag_r"]) < mag_max)
           & (tx >= 0) & (tx <= nx - 1) & (ty >= 0) & (ty <= ny - 1))
    if segm is None or not gal.any():
        return 0.0, 0.0, int(gal.sum())
    data = np.asarray(segm.data if hasattr(segm, "data") else segm)
    nseg = int(data.max())
    ix, iy = np.clip(np.round(tx).astype(int), 0, nx - 1), np.clip(np.round(ty).astype(int), 0, ny - 1)
    pairs = set()
    lab = data[iy, ix]
    for i in np.flatnonzero(lab > 0):
        pairs.add((int(i), int(lab[i])))
    cen = _centroids(segm)
    for j, near in enumerate(cKDTree(np.c_[ty, tx]).query_ball_point(cen, radius)):
        for i in near:
            pairs.add((int(i), j + 1))
    n_match = np.zeros(len(tx), int)
    matched_seg = np.zeros(nseg + 1, bool)
    for i, j in pairs:
        n_match[i] += 1
        matched_seg[j] = True
    extra = np.zeros(len(tx) + 1, int)
    cy = np.clip(np.round(cen[:, 0]).astype(int), 0, ny - 1)
    cx = np.clip(np.round(cen[:, 1]).astype(int), 0, nx - 1)
    host = np.asarray(truth_mask)[cy, cx]
    lone = ~matched_seg[1:] & (host > 0)
    np.add.at(extra, host[lone], 1)
    ids = np.asarray(truth["id"])
    frag = np.maximum(n_match - 1, 0) + extra[ids]
    return float(frag[gal].mean()), float((frag[gal] > 0).mean()), int(gal.sum())


def table_for(segm, truth, truth_mask, shape, truth_mask_1=None):
    ny, nx = shape
    t = truth
    inside = (t["x"] >= 0) & (t["x"] <= nx - 1) & (t["y"] >= 0) & (t["y"] <= ny - 1)
    det, seg_ok = match(segm, np.asarray(t["x"]), np.asarray(t["y"]), shape)
    mag = np.asarray(t["mag_r"])
    comp = {}
    for lo, hi in zip(BINS[:-1], BINS[1:]):
        sel = inside & (mag >= lo) & (mag < hi)
        comp[f"{lo:g}-{hi:g}"] = [float(det[sel].mean()) if sel.any() else None, int(sel.sum())]
    sel22 = inside & (mag < 22.0)
    sel225 = inside & (mag < 22.5)
    pred = np.zeros(shape, bool) if segm is None else segm.data > 0
    truth_b = truth_mask > 0
    inter, union = int((pred & truth_b).sum()), int((pred | truth_b).sum())
    iou = float(inter / max(1, union))
    frag, shred, n_gal = fragments(segm, truth, truth_mask, shape)
    extra = {}
    if truth_mask_1 is not None:
        t1 = truth_mask_1 > 0
        extra["iou_1sigma"] = float((pred & t1).sum() / max(1, (pred | t1).sum()))
    return {**extra,
        "fragments_per_galaxy_r<20": frag,
        "shredded_fraction_r<20": shred,
        "n_galaxies_r<20": n_gal,
        "iou": iou,
        "iou_intersection_px": inter,
        "iou_union_px": union,
        "n_segments": int(0 if segm is None else segm.n_labels),
        "purity": float(seg_ok.mean()) if seg_ok.size else None,
        "completeness_r<22": float(det[sel22].mean()),
        "completeness_r<22.5": float(det[sel225].mean()),
        "completeness_by_mag": comp,
        "n_truth_r<22.5": int(sel225.sum()),
    }


def _segmenters(weights, refit, plain=False, device="cpu", variants=VARIANTS, compare=False, levels=False):
    from astrohvae.segmentation.network import NetworkSegmenter

    out = {}
    for v in variants:
        d = Path(weights) / v
        if d.is_dir():
            out[v] = NetworkSegmenter.load(d, device=device)
            if refit:
                out[v + " (refit)"] = NetworkSegmenter.load(d, device=device, rule="refit")
            if plain:
                out[v + " (network footprints only)"] = NetworkSegmenter.load(
                    d, device=device, isophote=None, seed_nsigma=None, band_nsigma=None, halo_peak=None)
            if compare:
                out[v + " (contrast only)"] = NetworkSegmenter.load(d, device=device, fragment_excess=None)
                out[v + " --isophote 1"] = NetworkSegmenter.load(d, device=device, isophote=1.0)
            if levels:
                out[v + " (photutils levels)"] = NetworkSegmenter.load(d, device=device, deblend_floor=None)
    return out


def sep_detect(field, bkg, nsigma=1.5, minarea=5, deblend_cont=0.005):
    """sep (SExtractor's library) on the g+r+i detection image (`astrohvae.detection.detect.detection_image`) with its
    per-pixel noise, as SExtractor thresholds (the 3x3 pyramid-filtered image against the unfiltered noise:
    ``filter_type="conv"``), 32 levels, DEBLEND_CONT 0.005;
    None without sep."""
    try:
        import sep
    except ImportError:
        return None
    from photutils.segmentation import SegmentationImage

    from astrohvae.detection.detect import detection_image

    det, noise = detection_image(field, bkg)
    noise = np.where(np.isfinite(noise), noise, 1e30)
    sep.set_extract_pixstack(20_000_000)
    sep.set_sub_object_limit(65536)
    try:
        _, seg = sep.extract(np.ascontiguousarray(det, np.float64), nsigma,
                             err=np.ascontiguousarray(noise, np.float64), minarea=minarea,
                             deblend_cont=deblend_cont, filter_type="conv", segmentation_map=True)
    except Exception as exc:  # noqa: BLE001 - sep's buffers overflow on crowded fields: no row, say why
        print(f"sep failed: {exc}", flush=True)
        return None
    return SegmentationImage(seg.astype(np.int32)) if seg.max() > 0 else None


def _pooled_lines(simulated, goal=0.80):
    """Markdown table over all simulated fields: pooled and per-field IoU, mean purity and completeness."""
    fields = list(simulated.values())
    if len(fields) < 2:
        return []
    names = [k for k in fields[0] if not k.startswith("_")]
    lines = [f"## Over all {len(fields)} simulated fields", "",
             "Pooled IoU: the truth and segmented pixels of every field together (sum of intersections over "
             "sum of unions).", "",
             f"| method | pooled IoU | mean IoU ± std | min – max | fields with IoU ≥ {goal:.2f} | mean purity | "
             "mean compl. r<22 |",
             "|---|---|---|---|---|---|---|"]
    for name in names:
        rows = [f[name] for f in fields if name in f]
        iou = np.array([r["iou"] for r in rows])
        pooled = (sum(r["iou_intersection_px"] for r in rows) / max(1, sum(r["iou_union_px"] for r in rows))
                  if all("iou_union_px" in r for r in rows) else None)
        lines.append(f"| {name} | {_f(pooled)} | {iou.mean():.3f} ± {iou.std(ddof=1):.3f} | "
                     f"{iou.min():.3f} – {iou.max():.3f} | {(iou >= goal).sum()} of {iou.size} | "
                     f"{np.mean([r['purity'] for r in rows]):.3f} | "
                     f"{np.mean([r['completeness_r<22'] for r in rows]):.3f} |")
    return lines + [""]


def _f(x, nd=3):
    return "–" if x is None else f"{x:.{nd}f}"


def write_readme(report, out, command):
    """The benchmark's tables as Markdown (``out/README.md``)."""
    lines = ["# Segment benchmark (benchmarks/segment_bench.py)", "",
             f"Command: `{command}`  ",
             f"({report.get('machine', '')}; the machine is shared with other jobs: seconds are indicative).",
             "Background estimated once per field (astrohvae.detection.background.estimate_background) and shared by every method.",
             "Matching: a truth object counts as detected if its true position lies in a segment or a segment "
             "centroid lies within 2 px;",
             "a segment is pure if it contains a truth position (any magnitude, simulated to r = 23.5) or its "
             "centroid is within 2 px of one.",
             "IoU: segm > 0 vs simulator truth mask > 0 (noiseless r surface brightness > 0.5 r sky sigma).",
             "Network variants: network seeds + matched-filter seeds (4 sigma) + deblending + band test "
             "(2 of 5 bands at 2 sigma) + halo test (segments that stand out only on a bright star's halo "
             "dropped) + growth to 0.5 r sky sigma (PSF-convolved exponential ellipses below S/N 30, "
             "stellar profile for bright point sources, smoothed isophote from 30 px; seeds of bright "
             "sources up to 12 px and of point sources trimmed to their footprints), as shipped, with the "
             "fragment test after deblending (`astrohvae.segmentation.footprints.merge_fragments`; "
             "'(contrast only)': without it).",
             "Fragments: per truth galaxy with r < 20 in the field, detections matched to it beyond the first "
             "plus unmatched detections whose centroid lies in its 0.5σ truth footprint; 'shredded': the "
             "fraction of those galaxies with at least one.", ""]
    if report.get("simulated"):
        lines += [f"## Simulated full fields ({'x'.join(str(v) for v in report.get('size', (2048, 1489)))})", "",
                  "| field | method | IoU | IoU 1σ truth | purity | compl. r<22 | compl. r<22.5 | compl. 22-22.5 | "
                  "fragments / r<20 galaxy | shredded r<20 | segments | seconds |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for field, rows in report["simulated"].items():
            for name, r in rows.items():
                if name.startswith("_"):
                    continue
                c = r["completeness_by_mag"].get("22-22.5", [None])[0]
                lines.append(f"| {field} | {name} | {_f(r['iou'])} | {_f(r.get('iou_1sigma'))} | {_f(r['purity'])} | "
                             f"{_f(r['completeness_r<22'])} | {_f(r['completeness_r<22.5'])} | {_f(c)} | "
                             f"{_f(r.get('fragments_per_galaxy_r<20'))} | {_f(r.get('shredded_fraction_r<20'))} | "
                             f"{r['n_segments']} | {r['seconds']:.1f} |")
        lines.append("")
        lines += _pooled_lines(report["simulated"])
    for field, rows in report.get("real", {}).items():
        n = next((r.get("n_sdss_stars") for k, r in rows.items() if not k.startswith("_")), None)
        lines += [f"## Real SDSS field (photutils as reference; {n} SDSS-catalogued stars)", "",
                  "| field | method | recall of photutils sources | segments matching a photutils source | "
                  "pixel IoU with photutils | SDSS star recall | segments | seconds |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, r in rows.items():
            if name.startswith("_"):
                continue
            lines.append(f"| {field} | {name} | {_f(r['recall_of_photutils_sources'])} | "
                         f"{_f(r['fraction_of_segments_matching_a_photutils_source'])} | "
                         f"{_f(r['pixel_iou_with_photutils'])} | {_f(r.get('recall_sdss_stars'))} | "
                         f"{r['n_segments']} | {r['seconds']:.1f} |")
        lines.append("")
    notes = Path(out) / "NOTES.md"
    if notes.is_file():
        lines += [notes.read_text().rstrip(), ""]
    (Path(out) / "README.md").write_text("\n".join(lines))


def run_one(field, bkg, segmenters, extra=None, sep_too=False):
    from astrohvae.segmentation.network import network_input
    from astrohvae.detection.detect import detect

    res = {}
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res["photutils 1.5σ"] = (detect(field, bkg, nsigma=1.5), time.perf_counter() - t0)
        if sep_too:
            t0 = time.perf_counter()
            s = sep_detect(field, bkg)
            if s is not None:
                res["sep 1.5σ"] = (s, time.perf_counter() - t0)
    t0 = time.perf_counter()
    img = network_input(field, bkg)
    t_in = time.perf_counter() - t0
    for name, seg in segmenters.items():
        t0 = time.perf_counter()
        s = seg.segment(img)
        res[name] = (s, time.perf_counter() - t0 + t_in)
    return res, img


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="*", default=[1])
    ap.add_argument("--real", nargs="*", default=["004510-4-0030"])
    ap.add_argument("--weights", default=str(ROOT / "astrohvae" / "data" / "segment"))
    ap.add_argument("--refit", action="store_true", help="also run each variant with the mixture refitted per field")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "segment"))
    ap.add_argument("--plots", action="store_true", help="write PNG panels per field")
    ap.add_argument("--plain", action="store_true",
                    help="also run each variant with the network's own footprints only (no extra seeds, no growth)")
    ap.add_argument("--readme-only", action="store_true", help="rewrite README.md from the existing JSON")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), help="network variants to run")
    ap.add_argument("--compare", action="store_true",
                    help="also sep, each variant with photutils' contrast criterion only (no fragment merging), "
                         "and with --isophote 1 (IoU with the 1-sigma truth)")
    ap.add_argument("--levels", action="store_true",
                    help="also run each variant with photutils' deblending levels (deblend_floor=None: linear "
                         "from a segment's minimum when that is not positive, as before issue 13 item 4)")
    ap.add_argument("--smooth", action="store_true",
                    help="also run every seed with smooth galaxies (simulate_field(structure=False))")
    ap.add_argument("--size", type=int, nargs=2, default=None, metavar=("NX", "NY"),
                    help="simulated field size [default: a full SDSS frame]")
    args = ap.parse_args()
    import sys

    command = "OMP_NUM_THREADS=1 python benchmarks/segment_bench.py " + " ".join(
        a for a in sys.argv[1:] if a != "--readme-only")
    out = Path(args.out)
    if args.readme_only:
        report = json.loads((out / "segment_bench.json").read_text())
        write_readme(report, out, report.get("command", command))
        print(f"wrote {out / 'README.md'}")
        return
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from astrohvae.detection.background import estimate_background

    segs = _segmenters(args.weights, args.refit, args.plain, variants=args.variants, compare=args.compare,
                       levels=args.levels)
    out.mkdir(parents=True, exist_ok=True)
    report = {"machine": f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}",
              "command": command, "simulated": {}, "real": {}}
    if args.size:
        report["size"] = list(args.size)
    runs = [(seed, structure) for seed in args.seeds for structure in ((True, False) if args.smooth else (True,))]
    for seed, structure in runs:
        from astrohvae.simulate.field import FULL_SIZE, simulate_field, truth_mask

        sim = simulate_field(seed, size=tuple(args.size) if args.size else FULL_SIZE, structure=structure)
        tm1 = truth_mask(sim, 1.0)
        t0 = time.perf_counter()
        bkg = estimate_background(sim.field)
        t_bkg = time.perf_counter() - t0
        res, img = run_one(sim.field, bkg, segs, sep_too=args.compare)
        rows = {}
        for name, (s, sec) in res.items():
            rows[name] = table_for(s, sim.truth, sim.truth_mask, sim.field.shape, truth_mask_1=tm1)
            rows[name]["seconds"] = sec
        rows["_background_seconds"] = t_bkg
        key = f"seed {seed}" + ("" if structure else " smooth")
        report["simulated"][key] = rows
        print(json.dumps({key: rows}, indent=1), flush=True)
        if args.plots:
            from astrohvae.viz.panels import zoom_window, plot_panels

            results = {k: (v[0], None) for k, v in res.items()}
            tm = sim.truth_mask
            results = {"truth mask": (tm, None), **results}
            tag = f"{seed}" + ("" if structure else "-smooth")
            plot_panels(img, results, out / f"sim-{tag}.png", title=f"simulated {key}")
            plot_panels(img, results, out / f"sim-{tag}-zoom.png",
                        zoom=zoom_window(res["photutils 1.5σ"][0], sim.field.shape, 300),
                        title=f"simulated {key}, zoom")
    for name in args.real:
        folder = DATA / name
        if not folder.is_dir():
            print(f"skip real field {name}: not found")
            continue
        from astropy.io import fits

        from astrohvae.io.readers import read_field

        field = read_field(folder)
        t0 = time.perf_counter()
        bkg = estimate_background(field)
        t_bkg = time.perf_counter() - t0
        res, img = run_one(field, bkg, segs, sep_too=args.compare)
        ref = res["photutils 1.5σ"][0]
        cen = _centroids(ref)
        rows = {"_background_seconds": t_bkg}
        stars = sorted(folder.glob("stars_in_frame_*.fits"))
        st = None
        if stars:
            with fits.open(stars[0]) as h:
                st = h[1].data
        for k, (s, sec) in res.items():
            det, seg_ok = match(s, cen[:, 1], cen[:, 0], field.shape)
            row = {"n_segments": int(0 if s is None else s.n_labels), "seconds": sec,
                   "recall_of_photutils_sources": float(det.mean()),
                   "fraction_of_segments_matching_a_photutils_source": float(seg_ok.mean()) if seg_ok.size else None,
                   "pixel_iou_with_photutils": float(((s.data > 0) & (ref.data > 0)).sum()
                                                     / max(1, ((s.data > 0) | (ref.data > 0)).sum()))}
            if st is not None:
                d, _ = match(s, np.asarray(st["x_r"], float), np.asarray(st["y_r"], float), field.shape)
                row["recall_sdss_stars"] = float(d.mean())
                row["n_sdss_stars"] = int(len(d))
            rows[k] = row
        report["real"][name] = rows
        print(json.dumps({name: rows}, indent=1), flush=True)
        if args.plots:
            from astrohvae.viz.panels import zoom_window, plot_panels

            results = {k: (v[0], None) for k, v in res.items()}
            plot_panels(img, results, out / f"real-{name}.png", title=f"SDSS {name}")
            plot_panels(img, results, out / f"real-{name}-zoom.png",
                        zoom=zoom_window(ref, field.shape, 300), title=f"SDSS {name}, zoom")
    (out / "segment_bench.json").write_text(json.dumps(report, indent=1))
    write_readme(report, out, command)
    print(f"wrote {out / 'segment_bench.json'} and README.md")


if __name__ == "__main__":
    main()
