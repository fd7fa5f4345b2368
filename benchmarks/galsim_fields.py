"""Independent simulated fields made with GalSim, to check the segmentation and the classifier
on light the project's own simulator (`astrohvae.simulate`) did not make.

Nothing here is shared with `astrohvae.simulate`: GalSim draws every profile, the PSF is
Kolmogorov turbulence (not a Moffat core plus wing), the stars' magnitudes and colours are
bootstrapped from the 178 real SDSS stars of 004510-4-0030 (``shared/data``, PSFFLUX), the
galaxies are GalSim's de Vaucouleurs, exponential and ``RandomKnots`` profiles with their own
counts, sizes and colours, and the noise is Poisson in electrons from a sky brightness in
mag/arcsec^2.  The physics (numbers below):

* 0.396"/px; the five bands are drawn on their own grids, offset from r by a few pixels
  (|dx| <= 2, |dy| <= 6, as SDSS's drift scan), and written as one multi-extension FITS
  (one HDU per band with ``FILTER`` and a TAN WCS) that `astrohvae.io.read_field` aligns;
* PSF: Kolmogorov, r FWHM uniform 0.95-1.55" per field, FWHM proportional to
  wavelength^-0.2 across the bands, a small shear (|g| <= 0.03);
* sky: u 22.1, g 21.8, r 20.9, i 20.2, z 19.0 mag/arcsec^2 +- 0.25 per field, 53.9 s
  exposures, gain u 1.6, g 3.9, r 4.7, i 5.1, z 4.6 e-/DN, nanomaggies per DN u 0.0105,
  g 0.0038, r 0.005, i 0.0065, z 0.0335 (+-10 %): the r sky sigma comes out near 0.027
  nanomaggies as on real frames;
* stars: Poisson(178 x area / 0.0368 deg^2 x density) draws of the real SDSS stars'
  magnitudes (jittered by 0.3 mag) and colours, density log-normal (0.5 e-folds), r >= 15
  (no saturation is simulated);
* galaxies: counts dN/dm = 2000 x 10^(0.40 (r - 20)) per deg^2 per mag to r = 21, slope
  0.30 beyond, r 15-24; 35 % early (de Vaucouleurs, axis ratio 0.5-1), 65 % late
  (exponential disc with a bulge of 0-40 % of the light and, for discs of half-light radius
  >= 0.6" when ``structure`` is on, 10-40 % of the disc light in GalSim's ``RandomKnots``
  with 10-60 knots, bluer than the disc); disc half-light radius log-normal around
  1.6" x 10^(-0.15 (r - 18)) (0.25 dex), early types 0.7 times that; colours from a red
  and a blue sequence; 5 % of the galaxies get a companion 1-4" away;
* truth: per pixel the brightest object's noiseless r light in units of the r sky sigma
  (the level map, kept for any isophote), its owner, and the total noiseless r light.

Usage::

    python benchmarks/galsim_fields.py --seeds 101 102 --out /tmp/galsim [--size 2048 1489]
        [--smooth]

writes ``gs-SEED.fits`` (the five bands), ``gs-SEED-truth.fits`` (the truth table: id, x, y,
ra, dec, type, mag_u..z, r_half, knot_frac) and ``gs-SEED-levels.npz`` (level, owner, total
light, r sky sigma).  `benchmarks/galsim_bench.py` runs the segmentation and the catalogue
on them.  Needs ``pip install galsim`` (not a dependency of the package).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STARS = ROOT.parent / "shared" / "data" / "sdss" / "fields" / "004510-4-0030" / "stars_in_frame_004510-4-0030.fits"
BANDS = "ugriz"
PIXEL = 0.396
WAVE = {"u": 355.0, "g": 469.0, "r": 617.0, "i": 748.0, "z": 893.0}
SKY_MAG = {"u": 22.1, "g": 21.8, "r": 20.9, "i": 20.2, "z": 19.0}
GAIN = {"u": 1.6, "g": 3.9, "r": 4.7, "i": 5.1, "z": 4.6}
NMGY = {"u": 0.0105, "g": 0.0038, "r": 0.005, "i": 0.0065, "z": 0.0335}
DARK_VAR = {"u": 9.0, "g": 1.6, "r": 1.8, "i": 7.0, "z": 1.0}  # DN^2
STAR_AREA_DEG2 = 2048 * 1489 * (PIXEL / 3600.0) ** 2
KNOT_FRAC = (0.1, 0.4)
STRUCT_MIN_HLR = 0.6


def _flux(mag):
    return 10.0 ** (-0.4 * (np.asarray(mag, float) - 22.5))


def _real_stars():
    from astropy.table import Table

    t = Table.read(STARS)
    f = np.asarray(t["PSFFLUX"], float)
    ok = np.all(f > 0, axis=1)
    return 22.5 - 2.5 * np.log10(f[ok])  # (n, 5) u..z


def _galaxy_mags(rng, n_area_deg2):
    """r magnitudes from a broken power law (slope 0.40 to r = 21, 0.30 beyond)."""
    lo, brk, hi = 15.0, 21.0, 24.0
    a, b = 0.40, 0.30

    def integral(m0, m1, slope, amp):
        return amp / (slope * np.log(10)) * (10 ** (slope * (m1 - 20)) - 10 ** (slope * (m0 - 20)))

    amp = 2000.0
    amp2 = amp * 10 ** ((a - b) * (brk - 20))
    n1 = rng.poisson(integral(lo, brk, a, amp) * n_area_deg2)
    n2 = rng.poisson(integral(brk, hi, b, amp2) * n_area_deg2)

    def draw(n, m0, m1, slope):
        u = rng.uniform(size=n)
        e0, e1 = 10 ** (slope * m0), 10 ** (slope * m1)
        return np.log10(e0 + u * (e1 - e0)) / slope

    return np.concatenate([draw(n1, lo, brk, a), draw(n2, brk, hi, b)])


def _galaxy_colours(rng, mag_r, early):
    n = len(mag_r)
    z = np.clip((mag_r - 17.0) / 5.0, 0, 1)  # fainter: redder (redshift proxy)
    ug = np.where(early, rng.normal(1.75, 0.15, n), rng.normal(1.15, 0.25, n))
    gr = np.where(early, rng.normal(0.75, 0.07, n) + 0.35 * z, rng.normal(0.42, 0.12, n) + 0.2 * z)
    ri = np.where(early, rng.normal(0.40, 0.05, n) + 0.15 * z, rng.normal(0.28, 0.08, n) + 0.1 * z)
    iz = np.where(early, rng.normal(0.33, 0.06, n), rng.normal(0.18, 0.10, n))
    r = mag_r
    return np.c_[r + gr + ug, r + gr, r, r - ri, r - ri - iz]


def draw_objects(rng, nx, ny, structure=True):
    """The object list: dict of arrays (x, y on the r grid, 0-based; mags (n, 5); type; shape)."""
    area = nx * ny * (PIXEL / 3600.0) ** 2
    margin = 15
    real = _real_stars()
    density = float(np.exp(rng.normal(0.0, 0.5)))
    n_star = rng.poisson(len(real) * area / STAR_AREA_DEG2 * density)
    smag = real[rng.integers(0, len(real), n_star)] + rng.normal(0, 0.3, (n_star, 1))
    smag = smag[smag[:, 2] >= 15.0]
    n_star = len(smag)
    gr = _galaxy_mags(rng, area)
    ng = len(gr)
    early = rng.uniform(size=ng) < 0.35
    gmag = _galaxy_colours(rng, gr, early)
    hlr_d = 1.6 * 10 ** (-0.15 * (gr - 18.0)) * 10 ** rng.normal(0, 0.25, ng)
    hlr = np.where(early, 0.7 * hlr_d, hlr_d)
    q = np.where(early, rng.uniform(0.5, 1.0, ng), np.sqrt(np.cos(rng.uniform(0, np.pi / 2, ng)) ** 2 * 0.96 + 0.04))
    bt = np.where(early, 1.0, rng.uniform(0.0, 0.4, ng))
    late_big = ~early & (hlr >= STRUCT_MIN_HLR) & bool(structure)
    kf = np.where(late_big, rng.uniform(*KNOT_FRAC, ng), 0.0)
    nk = rng.integers(10, 61, ng)
    n = n_star + ng
    x = rng.uniform(-margin, nx - 1 + margin, n)
    y = rng.uniform(-margin, ny - 1 + margin, n)
    # 5 % of the galaxies get a companion (the next object in the list) 1-4" away
    pair = np.flatnonzero(rng.uniform(size=n) < 0.05)
    pair = pair[(pair >= n_star) & (pair + 1 < n)]
    ang = rng.uniform(0, 2 * np.pi, len(pair))
    sep = rng.uniform(1.0, 4.0, len(pair)) / PIXEL
    x[pair + 1] = x[pair] + sep * np.cos(ang)
    y[pair + 1] = y[pair] + sep * np.sin(ang)
    zeros = np.zeros(n_star)
    return {
        "x": x, "y": y,
        "mags": np.r_[smag, gmag],
        "type": np.r_[np.full(n_star, "star"), np.full(ng, "galaxy")],
        "early": np.r_[zeros.astype(bool), early],
        "hlr": np.r_[zeros, hlr], "q": np.r_[zeros + 1, q], "beta": rng.uniform(0, np.pi, n),
        "bt": np.r_[zeros, bt], "knot_frac": np.r_[zeros, kf], "n_knots": np.r_[zeros.astype(int), nk],
        "seeds": rng.integers(1, 2**31 - 1, n),
    }


def _profile(galsim, o, k, band_flux, band):
    """GalSim profile of object ``k`` in one band, flux in nanomaggies (before the PSF)."""
    if o["type"][k] == "star":
        return galsim.DeltaFunction(flux=band_flux)
    gsp = galsim.GSParams(maximum_fft_size=16384, folding_threshold=1e-2)
    hlr, q, beta = o["hlr"][k], o["q"][k], o["beta"][k] * galsim.radians
    if o["early"][k]:
        return galsim.DeVaucouleurs(half_light_radius=hlr, flux=band_flux, trunc=8 * hlr,
                                    gsparams=gsp).shear(q=q, beta=beta)
    bt, kf = o["bt"][k], o["knot_frac"][k]
    # knots bluer than the disc: more of the disc light in knots in u and g, less in i and z
    kf_b = min(0.8, kf * {"u": 1.6, "g": 1.3, "r": 1.0, "i": 0.85, "z": 0.75}[band]) if kf > 0 else 0.0
    disc_flux = band_flux * (1 - bt)
    parts = [galsim.Exponential(half_light_radius=hlr, flux=disc_flux * (1 - kf_b), gsparams=gsp)]
    if kf_b > 0:
        parts.append(galsim.RandomKnots(int(o["n_knots"][k]), half_light_radius=hlr, flux=disc_flux * kf_b,
                                        rng=galsim.BaseDeviate(int(o["seeds"][k])), gsparams=gsp))
    disc = galsim.Add(parts).shear(q=q, beta=beta) if len(parts) > 1 else parts[0].shear(q=q, beta=beta)
    if bt <= 0:
        return disc
    bulge = galsim.DeVaucouleurs(half_light_radius=0.3 * hlr, flux=band_flux * bt, trunc=8 * 0.3 * hlr,
                                 gsparams=gsp).shear(q=min(1.0, q + 0.3), beta=beta)
    return galsim.Add([disc, bulge])


def _stamp_half(o, k, mag_r, fwhm_px):
    if o["type"][k] == "star":
        return int(np.clip(12 + 14 * (21.0 - mag_r), 12, 110))
    return int(np.clip(4 * fwhm_px + 6 * o["hlr"][k] / PIXEL * (1 + 0.6 * (22 - mag_r) / 4), 12, 300))


def simulate(seed, size=(2048, 1489), structure=True):
    """One field: dict with ``images`` (band -> (ny, nx) float32 nanomaggies on its own grid),
    ``offsets`` (band -> (dx, dy) of its grid from r's), ``objects``, ``level``, ``owner``,
    ``total`` (r, noiseless, on the r grid), ``sky_sigma`` (band -> nanomaggies), ``fwhm``."""
    import galsim

    rng = np.random.default_rng(seed)
    nx, ny = size
    o = draw_objects(rng, nx, ny, structure=structure)
    # the field's conditions come from a second stream, so that structure on/off keeps them
    rng2 = np.random.default_rng([seed, 2])
    fwhm_r = rng2.uniform(0.95, 1.55)
    g1, g2 = rng2.uniform(-0.03, 0.03, 2)
    sky_shift = rng2.normal(0, 0.25)
    offsets = {b: (0.0, 0.0) if b == "r" else (rng2.uniform(-2, 2), rng2.uniform(-6, 6)) for b in BANDS}
    nmgy = {b: NMGY[b] * rng2.uniform(0.9, 1.1) for b in BANDS}
    images, sky_sigma, fwhm = {}, {}, {}
    n = len(o["x"])
    level = np.zeros((ny, nx), np.float32)
    owner = np.zeros((ny, nx), np.int32)
    total = np.zeros((ny, nx), np.float32)
    for b in BANDS:
        fwhm[b] = fwhm_r * (WAVE[b] / WAVE["r"]) ** -0.2
        psf = galsim.Kolmogorov(fwhm=fwhm[b]).shear(g1=g1, g2=g2)
        full = galsim.ImageF(nx, ny, scale=PIXEL)
        dx, dy = offsets[b]
        for k in range(n):
            mag = o["mags"][k, BANDS.index(b)]
            half = _stamp_half(o, k, o["mags"][k, 2], fwhm[b] / PIXEL)
            x, y = o["x"][k] + dx, o["y"][k] + dy
            if x < -half or y < -half or x > nx - 1 + half or y > ny - 1 + half:
                continue
            prof = galsim.Convolve([_profile(galsim, o, k, _flux(mag), b), psf])
            st = prof.drawImage(nx=2 * half + 1, ny=2 * half + 1, scale=PIXEL,
                                center=galsim.PositionD(x + 1, y + 1))
            bounds = st.bounds & full.bounds
            if not bounds.isDefined():
                continue
            full[bounds] += st[bounds]
            if b == "r":
                sub = st[bounds].array
                ys = slice(bounds.ymin - 1, bounds.ymax)
                xs = slice(bounds.xmin - 1, bounds.xmax)
                total[ys, xs] += sub
                better = sub > level[ys, xs]
                level[ys, xs][better] = sub[better]
                owner[ys, xs][better] = k + 1
        # noise: Poisson electrons of sky + object, dark variance, back to sky-subtracted nanomaggies
        sky_nmgy = _flux(SKY_MAG[b] + sky_shift) * PIXEL**2
        gain = GAIN[b]
        electrons = (np.clip(full.array, 0, None) + sky_nmgy) / nmgy[b] * gain
        noisy = rng2.poisson(electrons).astype(np.float64) / gain + rng2.normal(0, np.sqrt(DARK_VAR[b]), electrons.shape)
        images[b] = ((noisy - sky_nmgy / nmgy[b]) * nmgy[b]).astype(np.float32)
        sky_sigma[b] = float(np.sqrt(sky_nmgy / nmgy[b] / gain + DARK_VAR[b]) * nmgy[b])
    level /= sky_sigma["r"]
    return {"images": images, "offsets": offsets, "objects": o, "level": level, "owner": owner,
            "total": total / sky_sigma["r"], "sky_sigma": sky_sigma, "fwhm": fwhm, "size": size}


def _wcs(nx, ny, dx, dy, seed):
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0 + (seed % 97) * 0.5, 2.0 + (seed % 13) * 0.3]
    # band grids are offset by (dx, dy) px: the same sky pixel sits at (x + dx, y + dy)
    w.wcs.crpix = [nx / 2 + 1 + dx, ny / 2 + 1 + dy]
    s = PIXEL / 3600.0
    w.wcs.cd = [[0.0, s], [s, 0.0]]  # RA along rows, as SDSS frames
    return w


def truth_mask(sim, isophote=0.5):
    """Owner of each pixel where the brightest object's noiseless r light exceeds ``isophote`` sky sigma."""
    return np.where(sim["level"] > isophote, sim["owner"], 0).astype(np.int32)


def truth_table(sim, seed):
    from astropy.table import Table

    o = sim["objects"]
    w = _wcs(*sim["size"], 0.0, 0.0, seed)
    ra, dec = w.pixel_to_world_values(o["x"], o["y"])
    t = Table()
    t["id"] = np.arange(1, len(o["x"]) + 1, dtype=np.int32)
    t["x"], t["y"] = o["x"], o["y"]
    t["ra"], t["dec"] = ra, dec
    t["type"] = o["type"]
    for j, b in enumerate(BANDS):
        t[f"mag_{b}"] = o["mags"][:, j].astype(np.float32)
    t["mag_r"] = o["mags"][:, 2].astype(np.float32)
    t["r_half"] = o["hlr"].astype(np.float32)
    t["knot_frac"] = o["knot_frac"].astype(np.float32)
    t.meta["SEED"] = int(seed)
    return t


def write(sim, seed, out, tag=None):
    """Write the five bands (MEF), the truth table and the level maps; return the field's path."""
    from astropy.io import fits

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tag = tag or f"gs-{seed}"
    nx, ny = sim["size"]
    hdus = [fits.PrimaryHDU()]
    for b in BANDS:
        h = _wcs(nx, ny, *sim["offsets"][b], seed).to_header()
        h["FILTER"] = b
        h["BUNIT"] = "nanomaggy"
        h["PSF_FWHM"] = (round(sim["fwhm"][b], 3), "arcsec, Kolmogorov")
        h["SKYSIG"] = (sim["sky_sigma"][b], "nanomaggy per pixel")
        hdus.append(fits.ImageHDU(sim["images"][b], header=h, name=b.upper()))
    path = out / f"{tag}.fits"
    tmp = out / f".{tag}.fits.tmp"
    fits.HDUList(hdus).writeto(tmp, overwrite=True)
    tmp.replace(path)
    truth_table(sim, seed).write(out / f"{tag}-truth.fits", overwrite=True)
    np.savez_compressed(out / f"{tag}-levels.npz", level=sim["level"], owner=sim["owner"], total=sim["total"],
                        sky_sigma_r=sim["sky_sigma"]["r"])
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[101])
    ap.add_argument("--size", type=int, nargs=2, default=[2048, 1489], metavar=("NX", "NY"))
    ap.add_argument("--smooth", action="store_true", help="also write each seed with smooth galaxies (no knots)")
    ap.add_argument("--out", default="galsim-fields")
    args = ap.parse_args()
    for seed in args.seeds:
        for structure in (True, False) if args.smooth else (True,):
            t0 = time.perf_counter()
            sim = simulate(seed, tuple(args.size), structure=structure)
            tag = f"gs-{seed}" + ("" if structure else "-smooth")
            path = write(sim, seed, args.out, tag)
            o = sim["objects"]
            print(f"{path}: {int((o['type'] == 'star').sum())} stars, {int((o['type'] == 'galaxy').sum())} galaxies, "
                  f"r FWHM {sim['fwhm']['r']:.2f}\", r sky sigma {sim['sky_sigma']['r']:.4f} nMgy; "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
