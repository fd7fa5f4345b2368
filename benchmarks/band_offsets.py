"""Benchmark: how far the five bands of real SDSS frames are offset from r, and what that leaves unseen.

For every field folder under ``../shared/data/sdss/fields`` (or ``--fields``):
the offset of each band's frame from the r frame, ``(dx, dy)`` = band pixel
minus r pixel of the same sky position (through the frames' WCSs, at the
frame centre; x along the columns, y along the rows = the scan direction),
and the share of the r grid seen in fewer than five bands after `read_field`
aligns the bands (its per-band mask).

Usage::

    .venv/bin/python benchmarks/band_offsets.py [--fields DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FIELDS = ROOT.parent / "shared" / "data" / "sdss" / "fields"


def frame_offsets(folder):
    """{band: (dx, dy)} of each band's frame from the r frame (pixels), from the headers alone."""
    from astropy.io import fits
    from astropy.wcs import WCS

    from astrohvae import BANDS
    from astrohvae.io.align import exact_band_position

    wcs, shape = {}, None
    for b in BANDS:
        (path,) = sorted(Path(folder).glob(f"frame-{b}-*.fits*"))
        with fits.open(path) as hdul:
            hdr = hdul[0].header
            wcs[b] = WCS(hdr)
            if b == "r":
                shape = (hdr["NAXIS2"], hdr["NAXIS1"])
    y, x = (shape[0] - 1) / 2.0, (shape[1] - 1) / 2.0
    out = {}
    for b in BANDS:
        bx, by = exact_band_position(wcs["r"], wcs[b], np.array([x]), np.array([y]))
        out[b] = (float(bx[0] - x), float(by[0] - y))
    return out, shape


def fewer_bands_share(folder):
    """Share of the r grid's pixels that some band does not cover (`read_field`'s per-band mask)."""
    from astrohvae.io import read_field

    f = read_field(str(folder))
    return float(np.asarray(f.mask, bool).any(axis=0).mean()), f.shape


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fields", default=str(DEFAULT_FIELDS))
    ap.add_argument("--no-read", action="store_true", help="headers only (skip the coverage column)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from astrohvae import BANDS

    folders = sorted(p for p in Path(args.fields).iterdir() if p.is_dir())
    lines = ["dx, dy: band pixel - r pixel at the frame centre (px; y = rows = scan direction); "
             "share: r-grid pixels seen in < 5 bands after alignment",
             "field           " + "  ".join(f"{b:>13s}" for b in BANDS if b != "r") + "   share"]
    allo = {b: [] for b in BANDS}
    for folder in folders:
        off, _ = frame_offsets(folder)
        for b in BANDS:
            allo[b].append(off[b])
        share = "" if args.no_read else f"{fewer_bands_share(folder)[0]:7.4f}"
        lines.append(f"{folder.name:15s} " + "  ".join(f"{off[b][0]:6.2f},{off[b][1]:6.2f}" for b in BANDS
                                                      if b != "r") + f" {share}")
        print(lines[-1], flush=True)
    lines.append("median          " + "  ".join(
        f"{np.median([o[0] for o in allo[b]]):6.2f},{np.median([o[1] for o in allo[b]]):6.2f}"
        for b in BANDS if b != "r"))
    lines.append("range |dx|      " + "  ".join(
        f"{min(abs(o[0]) for o in allo[b]):5.2f}-{max(abs(o[0]) for o in allo[b]):5.2f}" + " " * 2
        for b in BANDS if b != "r"))
    lines.append("range |dy|      " + "  ".join(
        f"{min(abs(o[1]) for o in allo[b]):5.2f}-{max(abs(o[1]) for o in allo[b]):5.2f}" + " " * 2
        for b in BANDS if b != "r"))
    text = "\n".join(lines)
    print("\n".join(lines[-3:]))
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
