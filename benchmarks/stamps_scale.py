"""Does the stamp store's memory stay flat as the number of fields grows?

Builds a fresh store from the first 2 and then from all 8 real SDSS fields in
``../shared/data/sdss/fields``, each run in its own subprocess, and prints
for each: stamps, wall time, the child's peak resident memory (``ru_maxrss``
from ``os.wait4``), the peak after each field, and the store's size on disk.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/stamps_scale.py [--counts 2 8] [--single 005405-6-0099]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ROOT.parent / "shared" / "data" / "sdss" / "fields"

CHILD = """
import json, resource, sys, time
from astrohvae.store import build_store
t0 = time.perf_counter()
peaks = []
# one build_store call per field (appending): same result as one call with all
# fields, and lets us record the peak RSS after each field
for inp in sys.argv[2:]:
    s = build_store([inp], sys.argv[1], progress=False, workers=int({workers}))
    peaks.append(round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
s["seconds"] = time.perf_counter() - t0
s["peaks"] = peaks
print("RESULT " + json.dumps(s))
"""


def du(path):
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def run(fields, out, workers=1):
    if out.exists():
        shutil.rmtree(out)
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(workers=workers), str(out), *map(str, fields)],
        stdout=subprocess.PIPE, env=env, text=True,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stdout = proc.stdout.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"child failed with status {proc.returncode}")
    res = json.loads(next(line for line in stdout.splitlines() if line.startswith("RESULT "))[7:])
    return {
        "fields": len(fields),
        "stamps": res["total"],
        "wall_s": round(wall, 1),
        "build_s": round(res["seconds"], 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux: KiB
        "store_mb": round(du(out) / 2**20, 1),
        "peak_rss_mb_after_each_field": res["peaks"],
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", type=int, nargs="+", default=[2, 8])
    ap.add_argument("--out-dir", type=Path, default=ROOT / "scratch" / "stamps")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--single", nargs="*", default=[],
                    help="Also build a store from each of these fields alone (e.g. the most crowded one).")
    args = ap.parse_args(argv)
    if not FIELDS.is_dir():
        print(f"real SDSS fields not found at {FIELDS}; nothing to do")
        return 0
    fields = sorted(p for p in FIELDS.iterdir() if p.is_dir())
    args.out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.counts:
        row = run(fields[:n], args.out_dir / f"bench-{n}.zarr", args.workers)
        rows.append(row)
        print(json.dumps(row), flush=True)
    for name in args.single:
        row = run([FIELDS / name], args.out_dir / f"bench-{name}.zarr", args.workers)
        row["fields"] = f"1 ({name})"
        rows.append(row)
        print(json.dumps(row), flush=True)
    print()
    print(f"{'fields':>6} {'stamps':>7} {'wall s':>7} {'s/field':>8} {'peak RSS MB':>12} {'store MB':>9}")
    for r in rows:
        nf = r["fields"] if isinstance(r["fields"], int) else 1
        print(f"{r['fields']!s:>6} {r['stamps']:>7} {r['wall_s']:>7} {r['wall_s'] / nf:>8.1f} "
              f"{r['peak_rss_mb']:>12} {r['store_mb']:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
