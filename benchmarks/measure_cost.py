"""Cost of the catalogue measurements (`astrohvae.detection`) per field.

For each real SDSS field: background, segmentation (the photutils baseline
`stamps.detect` by default, or ``--segmenter network``), stamps, then, timed
apart, the photutils `SourceCatalog` columns (`photutils_measurements`:
shapes on the g+r+i detection image and Kron fluxes in five bands) and the
stamp columns (`stamp_measurements`: r_half, snr, the field PSF and the PSF
fluxes).  Best of ``--repeat`` runs, one thread.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/measure_cost.py [--fields N] [--segmenter network]

Results: printed, and ``benchmarks/results/measure_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "sdss" / "fields"


def best(fn, repeat):
    out, times = None, []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fields", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--segmenter", choices=["photutils", "network"], default="photutils")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    import torch

    torch.set_num_threads(1)
    import astrohvae.stamps.cutouts as S
    from astrohvae.detection.background import estimate_background
    from astrohvae.detection.detect import detect
    from astrohvae.detection.sources import measure_sources
    from astrohvae.detection.measure import photutils_measurements, stamp_measurements
    from astrohvae.pipeline.inputs import read_input
    from astrohvae.pipeline.loading import load_segmenter

    seg = load_segmenter("network", "cpu") if args.segmenter == "network" else None
    rows = []
    for d in sorted(DATA.iterdir())[: args.fields]:
        field = read_input(d, threads=1)
        bkg = estimate_background(field)
        segm = seg.segment(field, bkg) if seg is not None else detect(field, bkg)
        segm.relabel_consecutive()
        src = measure_sources(field, segm, bkg)
        st = S.cut_stamps(field, segm, src, bkg)
        _, t_ph = best(lambda: photutils_measurements(field, segm, bkg), args.repeat)
        _, t_st = best(lambda: stamp_measurements(st), args.repeat)
        rows.append({"field": d.name, "sources": len(src), "photutils_s": round(t_ph, 3),
                     "stamps_s": round(t_st, 3), "total_s": round(t_ph + t_st, 3),
                     "ms_per_source": round(1e3 * (t_ph + t_st) / max(len(src), 1), 3)})
        r = rows[-1]
        print(f"| {r['field']} | {r['sources']} | {r['photutils_s']:.2f} | {r['stamps_s']:.2f} | "
              f"{r['total_s']:.2f} | {r['ms_per_source']:.2f} |", flush=True)
    out = ROOT / "benchmarks" / "results" / "measure_cost.json"
    out.write_text(json.dumps({"segmenter": args.segmenter, "repeat": args.repeat, "rows": rows}, indent=1))
    print("| field | sources | photutils s | stamps s | total s | ms/source |")


if __name__ == "__main__":
    main()
