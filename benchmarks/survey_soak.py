"""Soak test of `astrohvae survey`: many small simulated fields on one and on two workers.

Simulates N fields of SIZE×SIZE pixels as consecutive fields of simulated scans (``write_adjacent``,
100 fields a scan, 128 shared rows), runs ``run_survey`` over them with a LocalCluster of 1 and of 2
single-threaded worker processes (the shipped network segmenter and classifier, as ``astrohvae
survey`` runs), and prints:

* fields/min per run, over the whole call (cluster start-up included) and over the busy span
  (first field started to last field finished), and the speed-up of two workers over one;
* peak resident memory (VmHWM) of each worker after 10, 100, ... N fields of the survey;
* the scheduler's overhead per field: on each worker, the gap between one field's end and the
  next one's start (the result travels to the client, the ledger is written, the next field is
  submitted and scheduled), median and 90th percentile;
* the split of a field's task into reading and the rest (from the ledger's timings);
* the combined survey catalogue (rows, primaries, seconds to rebuild it).

Usage::

    nice -n 10 python benchmarks/survey_soak.py [--fields 200] [--size 256] [--workers 1 2]

Writes ``benchmarks/results/survey_soak.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "survey_soak.json"


def make_fields(root, n, size, per_scan=100):
    from astrohvae.simulate.io import write_adjacent

    folders, seed = [], 7000
    while len(folders) < n:
        k = min(per_scan, n - len(folders))
        folders += write_adjacent(root / f"scan{seed}", seed=seed, n=k, size=(size, size), overlap=128)
        seed += 1000
    return folders


def soak(fields, out, workers):
    from astrohvae.pipeline.survey import run_survey

    t0 = time.perf_counter()
    res = run_survey(fields, out, workers=workers, progress=False, device="cpu", combine=False)
    wall = time.perf_counter() - t0
    recs = list(json.loads((out / "survey.json").read_text())["fields"].values())
    assert all(r["status"] == "done" for r in recs), [r["error"] for r in recs if r["status"] != "done"]
    recs.sort(key=lambda r: r["finished"])
    busy = recs[-1]["finished"] - min(r["started"] for r in recs)
    # peak memory of each worker after the survey's 10th, 100th, ... field
    marks = [m for m in (10, 100, 200, 500, 1000) if m <= len(recs)] + ([len(recs)] if len(recs) not in
                                                                         (10, 100, 200, 500, 1000) else [])
    peaks = {}
    for m in marks:
        last = {}
        for r in recs[:m]:
            last[r["worker"]] = r["peak_rss_mb"]
        peaks[m] = sorted(last.values())
    gaps = []
    by_worker = {}
    for r in recs:
        by_worker.setdefault(r["worker"], []).append(r)
    for rs in by_worker.values():
        rs.sort(key=lambda r: r["started"])
        gaps += [b["started"] - a["finished"] for a, b in zip(rs, rs[1:])]
    read = np.array([r["timings"].get("read", 0.0) for r in recs])
    task = np.array([r["seconds"] for r in recs])
    return {"workers": workers, "fields": len(recs), "wall_s": wall, "busy_s": busy,
            "fields_per_min_wall": 60 * len(recs) / wall, "fields_per_min_busy": 60 * len(recs) / busy,
            "peak_rss_mb": {str(k): v for k, v in peaks.items()},
            "gap_median_ms": 1000 * float(np.median(gaps)) if gaps else None,
            "gap_p90_ms": 1000 * float(np.percentile(gaps, 90)) if gaps else None,
            "task_median_s": float(np.median(task)), "read_median_s": float(np.median(read)),
            "rows": int(sum(r["rows"] for r in recs)), "per_worker_fields": sorted(len(v) for v in by_worker.values())}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fields", type=int, default=200)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--keep", type=Path, default=None, help="Folder to keep the fields and outputs in.")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="survey-soak-")) if args.keep is None else args.keep
    try:
        t0 = time.perf_counter()
        fields = make_fields(tmp / "fields", args.fields, args.size)
        print(f"simulated {len(fields)} fields of {args.size}x{args.size} in {time.perf_counter() - t0:.0f} s")
        runs = []
        for w in args.workers:
            runs.append(soak(fields, tmp / f"out{w}", w))
            print(f"  {w} worker(s): {runs[-1]['fields_per_min_busy']:.1f} fields/min", flush=True)
        from astrohvae.pipeline.combine import combine_catalogues

        t0 = time.perf_counter()
        comb = combine_catalogues(tmp / f"out{args.workers[-1]}")
        comb["seconds"] = time.perf_counter() - t0
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)

    print()
    print("| workers | fields | wall s | fields/min (wall) | fields/min (busy) | per worker | task median s "
          "| read median s | gap median / p90 ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['workers']} | {r['fields']} | {r['wall_s']:.1f} | {r['fields_per_min_wall']:.1f} | "
              f"{r['fields_per_min_busy']:.1f} | {r['fields_per_min_busy'] / r['workers']:.1f} | "
              f"{r['task_median_s']:.2f} | {r['read_median_s']:.3f} | {r['gap_median_ms']:.0f} / {r['gap_p90_ms']:.0f} |")
    if len(runs) >= 2:
        print(f"\nspeed-up {runs[-1]['workers']} vs {runs[0]['workers']} worker(s): "
              f"{runs[-1]['fields_per_min_busy'] / runs[0]['fields_per_min_busy']:.2f}x (busy span), "
              f"{runs[-1]['fields_per_min_wall'] / runs[0]['fields_per_min_wall']:.2f}x (wall)")
    print("\npeak memory per worker (MB, VmHWM) after the survey's n-th field:")
    for r in runs:
        print(f"  {r['workers']} worker(s): " + "; ".join(f"{k}: {', '.join(f'{v:.0f}' for v in vs)}"
                                                         for k, vs in r["peak_rss_mb"].items()))
    print(f"\ncombined catalogue: {comb['rows']} rows from {comb['fields']} fields, {comb['primary']} primary, "
          f"{comb['seconds']:.1f} s")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs,
                                   "combined": {k: v for k, v in comb.items() if k in ("rows", "fields", "primary",
                                                                                       "seconds")}}, indent=1))


if __name__ == "__main__":
    main()
