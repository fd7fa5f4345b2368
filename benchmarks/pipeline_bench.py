"""End-to-end speed of astrohvae against sep, and survey throughput.

Part 1 (one process, model loaded once): for each real SDSS field
* ``read``: `read_field` (bz2 decompression + WCS alignment onto r), reported apart;
* ``astrohvae``: `process_field` (background, segmentation, measurement,
  stamps through the zarr/dask path, classifier) + `write_catalog`;
* ``sep``: SExtractor's algorithm as a library on the same aligned field:
  `sep.Background` per band, `sep.extract` at 1.5 sigma on r,
  `sep.sum_circle` (r = 5 px) fluxes in the five bands;
and the ratio astrohvae / sep, each the best of ``--repeat`` runs (default 2).

Part 2: `run_survey` over the same fields with 1 and 2 single-threaded
LocalCluster worker processes (wall clock including cluster start-up and
the model load on each worker), fields/min, speed-up, and the peak RSS of
each worker (VmHWM read inside the tasks).  Each worker count runs
``--survey-repeat`` times (default 3, in turn 1, 2, 1, 2, ...); the fastest
run of each is kept, as in part 1, and every run's wall clock and speed-up
are reported too (on this 2-core VM single runs spread by +-5 %).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/pipeline_bench.py            # all eight fields
    python benchmarks/pipeline_bench.py --fields 2 --no-survey        # quick look

Results go to ``benchmarks/results/pipeline_bench.json`` (and are printed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "sdss" / "fields"


def sep_field(field, nsigma=1.5, radius=5.0):
    """sep on an aligned Field: per-band background, extraction on r, circular fluxes in all bands."""
    import sep

    t0 = time.perf_counter()
    r = field.bands.index("r")
    subs, rms = [], []
    for i in range(len(field.bands)):
        img = np.ascontiguousarray(field.data[i], dtype=np.float32)
        m = np.ascontiguousarray(field.mask[i])
        bkg = sep.Background(img, mask=m)
        subs.append(img - bkg.back())
        rms.append(bkg.globalrms)
    sep.set_extract_pixstack(5_000_000)
    objs = sep.extract(subs[r], nsigma, err=rms[r], mask=np.ascontiguousarray(field.mask[r]), minarea=5)
    fluxes = []
    for i in range(len(field.bands)):
        f, ferr, flag = sep.sum_circle(subs[i], objs["x"], objs["y"], radius, err=rms[i],
                                       mask=np.ascontiguousarray(field.mask[i]))
        fluxes.append(f)
    return len(objs), time.perf_counter() - t0


def part1(fields, weights, segmenter, batch_size, device, repeat=1):
    from astrohvae.io.catalog import write_catalog
    from astrohvae.pipeline.field import process_field
    from astrohvae.pipeline.inputs import read_input
    from astrohvae.pipeline.loading import load_classifier, load_segmenter

    t0 = time.perf_counter()
    clf = load_classifier(weights, device)
    seg = load_segmenter(segmenter, device)
    startup = time.perf_counter() - t0
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
    try:
        for path in fields:
            t = time.perf_counter()
            field = read_input(path)
            t_read = time.perf_counter() - t

            # best of `repeat` runs for both tools (timeit's convention: the
            # minimum is the run least disturbed by other processes)
            t_ours = c_ours = t_sep = c_sep = np.inf
            for _ in range(repeat):
                t, c = time.perf_counter(), time.process_time()
                prod = process_field(field, clf, segmenter=seg, batch_size=batch_size)
                write_catalog(tmp / f"{field.name}.fits", prod.table, prod.segmap, prod.classmap, prod.masks,
                              prod.header, latent_dim=prod.latent_dim)
                t_ours, c_ours = min(t_ours, time.perf_counter() - t), min(c_ours, time.process_time() - c)

                c = time.process_time()
                n_sep, t1 = sep_field(field)
                t_sep, c_sep = min(t_sep, t1), min(c_sep, time.process_time() - c)
            cls = np.asarray(prod.table["class"])
            row = {
                "field": field.name, "read_s": round(t_read, 2), "astrohvae_s": round(t_ours, 2),
                "sep_s": round(t_sep, 3), "ratio": round(t_ours / t_sep, 1),
                "astrohvae_cpu_s": round(c_ours, 2), "sep_cpu_s": round(c_sep, 3),
                "cpu_ratio": round(c_ours / c_sep, 1),
                "rows": len(prod.table), "sep_rows": int(n_sep),
                "star_fraction": round(float(np.mean(cls == "star")), 3) if len(cls) else None,
                "steps": {k: round(v, 2) for k, v in prod.timings.items()},
                "steps_cpu": {k: round(v, 2) for k, v in prod.cpu_timings.items()},
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            del field, prod
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"startup_s": round(startup, 2), "fields": rows,
            "segmenter": getattr(seg, "method", None) or ("photutils" if seg is None else "network"),
            "classifier": getattr(clf, "method", "?"), "weights_hash": getattr(clf, "weights_hash", "?")}


def part2(fields, weights, segmenter, batch_size, workers_list, memory_limit, repeat=1):
    """Survey wall clock per worker count: the best of ``repeat`` runs (run in turn: 1, 2, 1, 2, ...)."""
    from astrohvae.pipeline.survey import run_survey

    out = {}
    for _ in range(repeat):
        for n in workers_list:
            d = Path(tempfile.mkdtemp(prefix=f"survey-bench-{n}-"))
            try:
                t = time.perf_counter()
                res = run_survey(fields, d, workers=n, weights=weights, segmenter=segmenter,
                                 batch_size=batch_size, progress=False, memory_limit=memory_limit, device="cpu")
                wall = time.perf_counter() - t
                ledger = json.loads(res.ledger.read_text())["fields"]
            finally:
                shutil.rmtree(d, ignore_errors=True)
            per_worker = {}
            for rec in ledger.values():
                w = rec.get("worker", "?")
                per_worker[w] = max(per_worker.get(w, 0.0), float(rec.get("peak_rss_mb", 0.0)))
            run = {"wall_s": round(wall, 1), "failed": res.n_failed, "peak_rss_mb_per_worker": per_worker,
                   "task_s": [rec.get("seconds") for rec in ledger.values()]}
            print(json.dumps({"workers": n, **run}), flush=True)
            prev = out.get(n)
            walls = (prev["walls_s"] if prev else []) + [run["wall_s"]]
            if prev is None or run["wall_s"] < prev["wall_s"]:
                out[n] = run
            out[n]["walls_s"] = walls
            out[n]["fields_per_min"] = round(60 * len(fields) / out[n]["wall_s"], 2)
    if 1 in out and 2 in out:
        out["speedup_1_to_2"] = round(out[1]["wall_s"] / out[2]["wall_s"], 2)  # best against best
        out["speedup_each_run"] = [round(a / b, 2) for a, b in zip(out[1]["walls_s"], out[2]["walls_s"])]
        print(json.dumps({k: out[k] for k in ("speedup_1_to_2", "speedup_each_run")}), flush=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA, help="folder of SDSS field folders")
    ap.add_argument("--fields", type=int, default=8, help="how many fields (default all eight)")
    ap.add_argument("--only", nargs="*", default=None, metavar="NAME",
                    help="only these field folders (e.g. 005405-6-0099), instead of the first --fields")
    ap.add_argument("--weights", default=None, help="classifier weights (default: shipped)")
    ap.add_argument("--segmenter", default="auto", choices=["auto", "network", "photutils"])
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=2, help="runs per field in part 1 (the fastest is kept)")
    ap.add_argument("--no-single", action="store_true", help="skip part 1")
    ap.add_argument("--no-survey", action="store_true", help="skip part 2")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--survey-repeat", type=int, default=3,
                    help="runs of part 2 per worker count (the fastest is kept, as in part 1)")
    ap.add_argument("--memory-limit", default="4GiB")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "pipeline_bench.json")
    args = ap.parse_args(argv)

    if not args.data.is_dir():
        print(f"no data in {args.data}; nothing to benchmark", file=sys.stderr)
        return 0
    warnings.simplefilter("ignore")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    fields = sorted(p for p in args.data.iterdir() if p.is_dir())[: args.fields]
    if args.only:
        fields = [args.data / name for name in args.only]
        missing = [str(p) for p in fields if not p.is_dir()]
        if missing:
            print(f"no such field folder: {', '.join(missing)}", file=sys.stderr)
            return 2
    result = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "torch_threads": torch.get_num_threads(), "platform": platform.platform()},
              "n_fields": len(fields), "segmenter_option": args.segmenter}
    t0 = time.perf_counter()
    if not args.no_single:
        p1 = part1(fields, args.weights, args.segmenter, args.batch_size, args.device, args.repeat)
        f = p1["fields"]
        ours = sum(r["astrohvae_s"] for r in f)
        sep_total = sum(r["sep_s"] for r in f)
        p1["repeat"] = args.repeat
        p1["summary"] = {
            "mean_read_s": round(np.mean([r["read_s"] for r in f]), 2),
            "mean_astrohvae_s": round(ours / len(f), 2),
            "mean_sep_s": round(sep_total / len(f), 3),
            "ratio_total": round(ours / sep_total, 1),
            "cpu_ratio_total": round(sum(r["astrohvae_cpu_s"] for r in f) / sum(r["sep_cpu_s"] for r in f), 1),
            "ratio_incl_startup": round((ours + p1["startup_s"]) / sep_total, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
        print(json.dumps(p1["summary"]), flush=True)
        result["single_process"] = p1
    if not args.no_survey:
        result["survey"] = part2([str(p) for p in fields], args.weights, args.segmenter, args.batch_size,
                                 [int(w) for w in args.workers.split(",")], args.memory_limit,
                                 repeat=args.survey_repeat)
    result["total_s"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from astrohvae.io.atomic import atomic_path

    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
