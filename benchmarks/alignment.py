"""Benchmark: how well `read_field` puts the five SDSS bands on the r grid.

For every real field under ``../shared/data/sdss/fields`` (or ``--fields``):

* read it with `astrohvae.io.read_field` (timed: wall and CPU seconds, and
  separately the time to just decompress and parse the five frames);
* pick bright, unsaturated, isolated, point-like sources by objective
  criteria (see `select_stars`);
* measure their centroids (photutils ``centroid_2dg`` on a 15x15 cutout) in
  every aligned band and report the median and max distance to the r-band
  centroid (px);
* measure the same stars in the *raw* band frames to show the offset that
  the alignment removed (px).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/alignment.py [--fields DIR] [--order 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FIELDS = ROOT.parent / "shared" / "data" / "sdss" / "fields"
HALF = 7  # cutout half-size for centroids


def sky_sigma(img, mask):
    v = img[~mask]
    return 1.4826 * np.median(np.abs(v - np.median(v)))


def centroid(img, x, y, h=HALF):
    from astrohvae.io.align import gaussian_centroid

    return gaussian_centroid(img, x, y, half=h)


def moment_radius(img, x, y, h=HALF):
    xi, yi = int(round(x)), int(round(y))
    cut = img[yi - h : yi + h + 1, xi - h : xi + h + 1].astype(float)
    cut = cut - np.median(img[yi - 20 : yi + 21, xi - 20 : xi + 21])
    cut = np.clip(cut, 0, None)
    yy, xx = np.mgrid[-h : h + 1, -h : h + 1]
    s = cut.sum()
    mx, my = (cut * xx).sum() / s, (cut * yy).sum() / s
    return np.sqrt((cut * ((xx - mx) ** 2 + (yy - my) ** 2)).sum() / s)


def select_stars(field, snr_min=20.0, flux_max=1000.0, isolation=12.0):
    """Positions (r grid) of clean point sources, by objective criteria only.

    * a >5 sigma local peak in r (photutils ``find_peaks``, 5x5 box);
    * S/N >= `snr_min` in every band (aperture sum in a 15x15 box over the
      noise in that box; at S/N 20 the centroid noise alone is ~0.1 px per
      band, so the default 50 keeps the residuals about the alignment);
    * not saturated: r flux in the box < `flux_max` nmgy (r > 15 mag) and
      no masked pixel in the box in any band;
    * isolated: no other 5 sigma r peak within `isolation` px;
    * point-like: second-moment radius in r within 10 % of the median of the
      most compact third of the candidates (the stellar locus).
    """
    from photutils.detection import find_peaks

    ri = field.bands.index("r")
    sig = np.array([sky_sigma(field.data[i], field.mask[i]) for i in range(5)])
    peaks = find_peaks(field.data[ri], 5 * sig[ri], box_size=5, mask=field.mask[ri])
    px, py = np.asarray(peaks["x_peak"], float), np.asarray(peaks["y_peak"], float)
    ny, nx = field.shape
    h = HALF
    cand = []
    for k in range(len(px)):
        xi, yi = int(px[k]), int(py[k])
        if not (25 <= xi < nx - 25 and 25 <= yi < ny - 25):
            continue
        d = np.hypot(px - px[k], py - py[k])
        if np.sum(d < isolation) > 1:
            continue
        box = (slice(None), slice(yi - h, yi + h + 1), slice(xi - h, xi + h + 1))
        if field.mask[box].any():
            continue
        cut = field.data[box]
        bkg = np.median(field.data[:, yi - 20 : yi + 21, xi - 20 : xi + 21], axis=(1, 2))
        flux = cut.sum(axis=(1, 2)) - bkg * cut[0].size
        snr = flux / (sig * (2 * h + 1))
        if snr.min() < snr_min or flux[ri] >= flux_max:
            continue
        cand.append((xi, yi, moment_radius(field.data[ri], xi, yi)))
    if not cand:
        return []
    cand = np.array(cand)
    rad = cand[:, 2]
    locus = np.median(np.sort(rad)[: max(3, len(rad) // 3)])
    return [(x, y) for x, y, r in cand if abs(r - locus) <= 0.1 * locus]


def measure(folder, order=1, refine=True, snr_min=50.0):
    from astrohvae.io import read_field
    from astrohvae.io.readers import _open_checked

    frames = sorted(folder.glob("frame-r-*.fits*"))
    if not frames:
        return None
    t0, c0 = time.perf_counter(), time.process_time()
    field = read_field(frames[0], order=order, refine=refine)
    t_read, c_read = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    raw = {b: _open_checked(Path(f))[0][1] for b, f in zip(field.bands, field.files)}
    t_dec, c_dec = time.perf_counter() - t0, time.process_time() - c0

    stars = select_stars(field, snr_min=snr_min)
    ri = field.bands.index("r")
    rpos = [centroid(field.data[ri], x, y) for x, y in stars]
    rows = []
    for i, b in enumerate(field.bands):
        if i == ri:
            continue
        res, vec, rawoff = [], [], []
        dx, dy = field.meta["offsets"][b]
        for x0, y0 in rpos:
            x1, y1 = centroid(field.data[i], x0, y0)
            res.append(np.hypot(x1 - x0, y1 - y0))
            vec.append((x1 - x0, y1 - y0))
            # the same star in the raw frame: around r position + the WCS offset
            # rounded to whole pixels, refined on the brightest pixel
            xi, yi = int(round(x0 + dx)), int(round(y0 + dy))
            img = raw[b]
            if not (20 <= xi < img.shape[1] - 20 and 20 <= yi < img.shape[0] - 20):
                continue
            box = img[yi - 3 : yi + 4, xi - 3 : xi + 4]
            by, bx = np.unravel_index(np.argmax(box), box.shape)
            x2, y2 = centroid(img, xi - 3 + bx, yi - 3 + by)
            rawoff.append(np.hypot(x2 - x0, y2 - y0))
        res = np.array(res)
        rows.append(dict(
            field=field.name, band=b, n=len(res),
            med=float(np.median(res)) if len(res) else np.nan,
            max=float(res.max()) if len(res) else np.nan,
            raw=float(np.median(rawoff)) if rawoff else np.nan,
            wcs_off=float(np.hypot(*field.meta["wcs_offsets"][b])),
            sys=tuple(np.median(np.array(vec), axis=0)) if vec else (np.nan, np.nan),
            refine=field.meta["refinement"][b]["refine"],
        ))
    timing = dict(read_wall=t_read, read_cpu=c_read, decomp_wall=t_dec, decomp_cpu=c_dec)
    return rows, timing


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fields", type=Path, default=DEFAULT_FIELDS)
    ap.add_argument("--order", type=int, default=1, choices=(0, 1, 3))
    ap.add_argument("--no-refine", action="store_true", help="WCS only, no star-based refinement")
    ap.add_argument("--snr-min", type=float, default=50.0,
                    help="minimum S/N of a star in every band (centroid noise ~ 1.5 px / S/N)")
    args = ap.parse_args(argv)
    if not args.fields.is_dir():
        print(f"no field folder {args.fields}", file=sys.stderr)
        return 2
    try:
        import torch  # noqa: F401  (only to keep thread counts low if imported elsewhere)

        torch.set_num_threads(1)
    except ImportError:
        pass
    print(f"interpolation order {args.order}; star refinement {not args.no_refine}; stars S/N >= "
          f"{args.snr_min:g} in every band; centroids: photutils centroid_2dg, 15x15 px")
    print("med_res/max_res: per-star distance band-r after alignment; sys: median (dx, dy) vector; "
          "raw_off: median star offset in the raw frames; wcs_off: offset from the WCS (px)")
    print(f"{'field':15s} {'band':4s} {'nstar':>5s} {'med_res':>8s} {'max_res':>8s} "
          f"{'sys dx,dy':>13s} {'raw_off':>8s} {'wcs_off':>8s} {'refine dx,dy':>13s}   read+align wall/cpu s (decompress+parse wall/cpu s)")
    all_med, all_max = [], []
    for folder in sorted(p for p in args.fields.iterdir() if p.is_dir()):
        out = measure(folder, order=args.order, refine=not args.no_refine, snr_min=args.snr_min)
        if out is None:
            continue
        rows, t = out
        for j, r in enumerate(rows):
            tail = ""
            if j == 0:
                tail = (f"   {t['read_wall']:.2f}/{t['read_cpu']:.2f} "
                        f"({t['decomp_wall']:.2f}/{t['decomp_cpu']:.2f})")
            print(f"{r['field']:15s} {r['band']:4s} {r['n']:5d} {r['med']:8.3f} {r['max']:8.3f} "
                  f"{r['sys'][0]:6.3f},{r['sys'][1]:6.3f} {r['raw']:8.2f} {r['wcs_off']:8.2f} {r['refine'][0]:6.2f},{r['refine'][1]:6.2f}{tail}")
            all_med.append(r["med"])
            all_max.append(r["max"])
        sys.stdout.flush()
    print(f"over all fields and bands: worst median residual {np.nanmax(all_med):.3f} px, "
          f"worst max residual {np.nanmax(all_max):.3f} px")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
