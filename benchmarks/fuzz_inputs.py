"""Fuzz the field reader with hypothesis: random header cards, truncations and corrupted bytes.

One of the five frames of a field is mutated per example (optionally
re-compressed as .bz2) and the folder read with `astrohvae.io.readers.read_field`
plus the pipeline's field check.  A failure is any exception that is not the
one-line `InputError`, or no answer within 60 s (a hang).  Prints the number
of inputs tried and every failure.

    python benchmarks/fuzz_inputs.py [--examples 200] [--seed 0] [--field FOLDER]

Default field: the real SDSS field 004510-4-0030 from ../shared/data when
present (frames decompressed once), else a 512x512 simulated one.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/bad_input_cases.py

import bad_input_cases as bic  # noqa: E402

REAL = ROOT.parent / "shared" / "data" / "sdss" / "fields" / "004510-4-0030"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--field", type=Path, default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="astrohvae-fuzz-") as tmp:
        tmp = Path(tmp)
        src = args.field
        if src is None and REAL.is_dir():
            src = REAL
        if src is None:
            from astrohvae.simulate.io import write_simulation

            write_simulation(tmp / "sim", seed=1, size=(512, 512))
            src = tmp / "sim"
        frames = bic.load_frames(src)
        work = tmp / "work"
        work.mkdir()
        t0 = time.time()

        def report(n, err):
            if n % 25 == 0:
                print(f"  {n} tried, {time.time() - t0:.0f} s", file=sys.stderr, flush=True)

        tried, failures = bic.run_fuzz(frames, work, args.examples, seed=args.seed, on_result=report)
        wall = time.time() - t0
    print(f"field: {src}")
    print(f"inputs tried: {tried}   failures: {len(failures)}   wall: {wall:.0f} s   seed: {args.seed}")
    if failures:
        print("| band | mutation | args | bz2 | failure |")
        print("|---|---|---|---|---|")
        for band, op, a, comp, err in failures:
            print(f"| {band} | {op} | `{a}` | {comp} | {err} |")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
