"""Compare simulated fields with the real SDSS fields of ../shared/data.

For each band it measures, with the *same* code on real and simulated frames:

* the sky noise: sigma-clipped (3 sigma, 10 iterations) standard deviation of
  the whole sky-subtracted frame, in nanomaggies;
* the PSF FWHM: a 2-D Moffat + constant fit (astropy) to 15x15 pixel cutouts
  of bright (peak > 30 sigma), isolated, unsaturated-looking sources; the
  field's PSF FWHM is the median of the smallest third of the fitted FWHMs
  (stars are the most compact sources);
* objects detected per field (r band): photutils ``Background2D`` (64 px
  boxes, 3x3 median filter), data convolved with a Gaussian of FWHM 3 px,
  ``detect_sources`` at 1.5 x background rms, 5 connected pixels, no
  deblending.

Usage::

    python benchmarks/sim_vs_real.py [--seeds 1 2 3] [--real PATH] [--fields N]

Prints one table; takes a few minutes on one core (the real frames are
bz2-compressed).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

BANDS = ("u", "g", "r", "i", "z")
DEFAULT_REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "sdss" / "fields"


def sky_noise(img):
    """Sigma-clipped standard deviation of a frame (nanomaggies)."""
    from astropy.stats import sigma_clipped_stats

    return float(sigma_clipped_stats(img, sigma=3.0, maxiters=10)[2])


def _background(img):
    from photutils.background import Background2D, MedianBackground

    return Background2D(img, 64, filter_size=3, bkg_estimator=MedianBackground())


def detect(img, bkg=None):
    """photutils segmentation of a frame at 1.5 sigma, 5 pixels."""
    from astropy.convolution import convolve
    from photutils.segmentation import detect_sources, make_2dgaussian_kernel

    bkg = bkg or _background(img)
    data = img - bkg.background
    kernel = make_2dgaussian_kernel(3.0, size=5)
    conv = convolve(data, kernel)
    segm = detect_sources(conv, 1.5 * bkg.background_rms, n_pixels=5)
    return segm, data, bkg


def psf_fwhm(img, max_fits=60):
    """Median FWHM (arcsec) of the most compact bright isolated sources."""
    import warnings

    from astropy.modeling import fitting, models

    segm, data, bkg = detect(img)
    if segm is None:
        return float("nan"), 0
    rms = float(np.median(bkg.background_rms))
    lab = segm.data
    ny, nx = data.shape
    h = 7
    cand = []
    from scipy import ndimage

    peaks = ndimage.maximum(data, lab, index=segm.labels)
    pos = ndimage.maximum_position(data, lab, index=segm.labels)
    for lbl, pk, (py, px) in zip(segm.labels, peaks, pos):
        if pk < 30 * rms or not (h <= px < nx - h and h <= py < ny - h):
            continue
        cut_lab = lab[py - h : py + h + 1, px - h : px + h + 1]
        if np.any((cut_lab != 0) & (cut_lab != lbl)):
            continue
        cut = data[py - h : py + h + 1, px - h : px + h + 1]
        # flat-topped (saturated) cores: several pixels within 2 % of the peak
        if (cut > 0.98 * pk).sum() > 2:
            continue
        cand.append((pk, px, py))
    cand.sort(reverse=True)
    # skip the very brightest (possibly saturated / non-linear) ones
    cand = cand[len(cand) // 10 :][:max_fits]
    yy, xx = np.mgrid[-h : h + 1, -h : h + 1]
    fitter = fitting.TRFLSQFitter()
    fw = []
    for pk, px, py in cand:
        cut = data[py - h : py + h + 1, px - h : px + h + 1]
        m0 = models.Moffat2D(amplitude=pk, x_0=0, y_0=0, gamma=3.0, alpha=3.0) + models.Const2D(0.0)
        m0[0].alpha.bounds = (1.0, 10.0)
        m0[0].gamma.bounds = (0.5, 20.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = fitter(m0, xx, yy, cut)
        f = float(m[0].fwhm)
        if np.isfinite(f) and 1.8 < f < 15:
            fw.append(f)
    if not fw:
        return float("nan"), 0
    fw = np.sort(fw)
    k = max(len(fw) // 3, 1)
    return float(np.median(fw[:k]) * 0.396), len(fw)


def measure(frames):
    """dict band -> (noise, fwhm, nfit); plus r-band detections."""
    out = {}
    ndet = None
    for b in BANDS:
        img = frames[b]
        noise = sky_noise(img)
        fw, nfit = psf_fwhm(img)
        out[b] = (noise, fw, nfit)
        if b == "r":
            segm, data, _ = detect(img)
            ndet = 0 if segm is None else segm.n_labels
            out["hist"] = _mag_hist(data, segm)
    return out, ndet


#: r-magnitude bins of the detection counts (segment flux, Pogson).
MAG_BINS = np.arange(14.0, 25.0, 1.0)


def _mag_hist(data, segm):
    from photutils.segmentation import SourceCatalog

    if segm is None:
        return np.zeros(len(MAG_BINS) - 1, int)
    f = np.asarray(SourceCatalog(data, segm).segment_flux)
    f = f[np.isfinite(f) & (f > 0)]
    return np.histogram(22.5 - 2.5 * np.log10(f), MAG_BINS)[0]


def real_fields(root, nfields=None):
    from astropy.io import fits

    dirs = sorted(p for p in Path(root).iterdir() if p.is_dir())[:nfields]
    for d in dirs:
        frames = {}
        for b in BANDS:
            f = sorted(glob.glob(str(d / f"frame-{b}-*.fits*")))[0]
            frames[b] = fits.getdata(f, 0).astype(np.float32)
        yield d.name, frames


def sim_fields(seeds):
    from astrohvae.simulate.field import simulate_field

    for s in seeds:
        sim = simulate_field(s)
        yield f"sim{s}", {b: sim.frames[b][0] for b in BANDS}, sim


def _fmt_range(vals, fmt):
    vals = np.asarray(vals, float)
    vals = vals[np.isfinite(vals)]
    if not vals.size:
        return "n/a"
    return f"{fmt.format(np.median(vals))} [{fmt.format(vals.min())}-{fmt.format(vals.max())}]"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--real", default=str(DEFAULT_REAL))
    ap.add_argument("--fields", type=int, default=None, help="use only the first N real fields")
    args = ap.parse_args(argv)
    t0 = time.time()
    real = {}
    if Path(args.real).is_dir():
        for name, frames in real_fields(args.real, args.fields):
            real[name] = measure(frames)
            print(f"# real {name}: r detections {real[name][1]}", file=sys.stderr)
    else:
        print(f"# real data not found at {args.real}; simulated only", file=sys.stderr)
    sim, conf = {}, {}
    for name, frames, s in sim_fields(args.seeds):
        sim[name] = measure(frames)
        conf[name] = (s.sky_sigma, s.psf_fwhm)
        print(f"# {name}: r detections {sim[name][1]}", file=sys.stderr)
    print(f"# real fields: {len(real)}; simulated seeds: {args.seeds}; {time.time() - t0:.0f} s")
    print("# values: median [min-max] over fields; noise in nanomaggies, FWHM in arcsec")
    print(f"{'band':4} | {'noise real':22} | {'noise sim':22} | {'sim config':7} | {'FWHM real':18} | {'FWHM sim':18} | {'sim config':10}")
    for b in BANDS:
        nr = [v[0][b][0] for v in real.values()]
        ns = [v[0][b][0] for v in sim.values()]
        fr = [v[0][b][1] for v in real.values()]
        fs = [v[0][b][1] for v in sim.values()]
        cn = [c[0][b] for c in conf.values()]
        cf = [c[1][b] for c in conf.values()]
        print(
            f"{b:4} | {_fmt_range(nr, '{:.4f}'):22} | {_fmt_range(ns, '{:.4f}'):22} | {np.median(cn):.4f}  "
            f"| {_fmt_range(fr, '{:.2f}'):18} | {_fmt_range(fs, '{:.2f}'):18} | {np.median(cf):.2f}"
        )
    dr = [v[1] for v in real.values()]
    ds = [v[1] for v in sim.values()]
    print(f"r-band detections per field: real {_fmt_range(dr, '{:.0f}')}, simulated {_fmt_range(ds, '{:.0f}')}")
    print("r detections per magnitude bin (segment flux), median over fields:")
    print("  r bin     " + " ".join(f"{m:>5.0f}" for m in MAG_BINS[:-1]))
    for label, group in (("real", real), ("sim", sim)):
        if group:
            h = np.median([v[0]["hist"] for v in group.values()], axis=0)
            print(f"  {label:9} " + " ".join(f"{x:5.0f}" for x in h))
    print("# per field: band noise/FWHM/number of PSF fits [sim: configured noise/FWHM]")
    for name, v in list(real.items()) + list(sim.items()):
        cfg = conf.get(name)
        print(
            f"#   {name}: "
            + ", ".join(
                f"{b} {v[0][b][0]:.4f}/{v[0][b][1]:.2f}\"/{v[0][b][2]}"
                + (f" [{cfg[0][b]:.4f}/{cfg[1][b]:.2f}\"]" if cfg else "")
                for b in BANDS
            )
            + f"; r det {v[1]}"
        )


if __name__ == "__main__":
    main()
