"""Star and galaxy populations: number counts, magnitudes and colours."""

from __future__ import annotations

import math

import numpy as np

from astrohvae import BANDS, PIXEL_SCALE
from astrohvae.photometry import STELLAR_LOCUS

_LOCUS = STELLAR_LOCUS[:13]
"""The simulated stars' part of the stellar locus (to early M dwarfs)."""


# --------------------------------------------------------------- populations
def _powerlaw_mags(rng, n, slope, lo, hi):
    """``n`` magnitudes with dN/dm ~ 10^(slope m) between lo and hi."""
    a, b = 10.0 ** (slope * lo), 10.0 ** (slope * hi)
    return np.log10(a + rng.random(n) * (b - a)) / slope


def _count(slope, amp20, lo, hi, area_deg2):
    """Expected number with dN/dm = amp20 10^(slope (m-20)) per deg^2."""
    k = slope * math.log(10.0)
    return amp20 * area_deg2 * (10.0 ** (slope * (hi - 20)) - 10.0 ** (slope * (lo - 20))) / k


def _star_colours(rng, mag_r):
    """(u-g, g-r, r-i, i-z) along the stellar locus; quasar flag."""
    n = len(mag_r)
    # position along the locus in g-r, a magnitude-dependent mixture
    faint = np.clip((mag_r - 16.0) / 5.0, 0.0, 1.0)
    comp = rng.random(n)
    p_halo = 0.10 + 0.25 * faint
    p_m = 0.20 + 0.25 * faint
    gr = np.where(
        comp < p_halo,
        rng.normal(0.32, 0.08, n),
        np.where(comp < p_halo + p_m, rng.normal(1.38, 0.08, n), rng.uniform(0.35, 1.3, n)),
    )
    gr = np.clip(gr, -0.2, 1.5)
    # M dwarfs: spread along the steep r-i part of the locus
    t = np.interp(gr, _LOCUS[:, 0], np.arange(len(_LOCUS)))
    mdw = gr > 1.3
    t[mdw] = rng.uniform(9.5, len(_LOCUS) - 1, mdw.sum())
    idx = np.arange(len(_LOCUS))
    cols = np.stack([np.interp(t, idx, _LOCUS[:, j]) for j in range(4)], axis=1)
    ug, gr, ri, iz = cols[:, 1], cols[:, 0], cols[:, 2], cols[:, 3]
    ug = ug + rng.normal(0, 0.08, n)
    gr = gr + rng.normal(0, 0.03, n)
    ri = ri + rng.normal(0, 0.03, n)
    iz = iz + rng.normal(0, 0.04, n)
    # quasars: a few per cent of the faint point sources
    qso = (rng.random(n) < 0.08 * faint) & (mag_r > 18.5)
    nq = qso.sum()
    ug[qso] = rng.normal(0.2, 0.15, nq)
    gr[qso] = rng.normal(0.15, 0.12, nq)
    ri[qso] = rng.normal(0.12, 0.1, nq)
    iz[qso] = rng.normal(0.05, 0.1, nq)
    return np.stack([ug, gr, ri, iz], axis=1), qso


def _galaxy_colours(rng, mag_r, red):
    """(u-g, g-r, r-i, i-z) of a red (bulge) or blue (disk) population."""
    n = len(mag_r)
    z = np.clip(0.05 + 0.09 * (mag_r - 15.5), 0.03, 0.7)  # proxy redshift
    if red:
        ug = 1.75 + 0.6 * z + rng.normal(0, 0.15, n)
        gr = 0.72 + 1.6 * np.minimum(z, 0.45) + rng.normal(0, 0.06, n)
        ri = 0.42 + 1.2 * np.clip(z - 0.25, 0, None) + rng.normal(0, 0.05, n)
        iz = 0.36 + 0.5 * np.clip(z - 0.5, 0, None) + rng.normal(0, 0.06, n)
    else:
        ug = 1.0 + 0.4 * z + rng.normal(0, 0.2, n)
        gr = 0.40 + 0.5 * z + rng.normal(0, 0.1, n)
        ri = 0.30 + 0.3 * z + rng.normal(0, 0.08, n)
        iz = 0.21 + 0.2 * z + rng.normal(0, 0.08, n)
    return np.stack([ug, gr, ri, iz], axis=1)


def _mags_from_colours(mag_r, cols):
    """(n, 5) u..z magnitudes from r and (u-g, g-r, r-i, i-z)."""
    ug, gr, ri, iz = cols.T
    g = mag_r + gr
    return np.stack([g + ug, g, mag_r, mag_r - ri, mag_r - ri - iz], axis=1)


def _flux(mag):
    return 10.0 ** (-0.4 * (np.asarray(mag) - 22.5))


def draw_populations(rng, p, nx, ny, star_fraction, margin):
    """The object list (dict of arrays) before rendering."""
    from astrohvae.simulate.field import (
        EXT_R,
        FULL_SIZE,
        GAL_AMP,
        GAL_SLOPE,
        RE18,
        RE_SLOPE,
        STAR_AMP,
        STAR_SLOPE,
    )
    area = (nx + 2 * margin) * (ny + 2 * margin) * (PIXEL_SCALE / 3600.0) ** 2
    frac_full = nx * ny / (FULL_SIZE[0] * FULL_SIZE[1])
    n_star = rng.poisson(_count(STAR_SLOPE, STAR_AMP * p["star_density"], 14.0, 23.5, area))
    n_bright = rng.poisson(2.0 * frac_full)
    n_gal = rng.poisson(_count(GAL_SLOPE, GAL_AMP, 14.0, 23.5, area))
    if star_fraction is not None:
        ntot = n_star + n_bright + n_gal
        n_star_all = int(round(star_fraction * ntot))
        n_bright = min(n_bright, n_star_all)
        n_star = n_star_all - n_bright
        n_gal = ntot - n_star_all
    star_m = np.concatenate([_powerlaw_mags(rng, n_star, STAR_SLOPE, 14.0, 23.5), rng.uniform(11.5, 14.0, n_bright)])
    gal_m = _powerlaw_mags(rng, n_gal, GAL_SLOPE, 14.0, 23.5)
    ns, ng = len(star_m), len(gal_m)
    n = ns + ng
    obj = {}
    obj["type"] = np.array(["star"] * ns + ["galaxy"] * ng)
    obj["mag_r"] = np.concatenate([star_m, gal_m])
    obj["x"] = rng.uniform(-margin, nx + margin, n)
    obj["y"] = rng.uniform(-margin, ny + margin, n)
    # close pairs: move ~6 % of the objects next to another one
    npair = int(round(0.06 * n))
    if n > 1 and npair:
        movers = rng.choice(n, npair, replace=False)
        hosts = rng.integers(0, n, npair)
        sep = rng.uniform(1.0, 4.0, npair) / PIXEL_SCALE
        ang = rng.uniform(0, 2 * np.pi, npair)
        ok = movers != hosts
        obj["x"][movers[ok]] = obj["x"][hosts[ok]] + sep[ok] * np.cos(ang[ok])
        obj["y"][movers[ok]] = obj["y"][hosts[ok]] + sep[ok] * np.sin(ang[ok])
    # stars
    scol, qso = _star_colours(rng, star_m)
    # galaxies
    red_frac = np.clip(0.55 - 0.07 * (gal_m - 17.0), 0.2, 0.55)
    early = rng.random(ng) < red_frac
    bt = np.where(early, rng.uniform(0.55, 0.95, ng), np.clip(rng.exponential(0.12, ng), 0.0, 0.45))
    bt[rng.random(ng) < 0.25 * ~early] = 0.0  # pure disks
    re_med = RE18 * 10.0 ** (RE_SLOPE * (gal_m - 18.0))
    re_d = np.clip(re_med * 10.0 ** rng.normal(0, 0.2, ng), 0.08, 40.0)
    re_b = np.clip(np.where(early, 0.7, 0.35) * re_d * 10.0 ** rng.normal(0, 0.1, ng), 0.05, 30.0)
    cosi = rng.random(ng)
    q0 = 0.15
    q_d = np.sqrt(cosi**2 * (1 - q0**2) + q0**2)
    q_b = rng.uniform(0.6, 1.0, ng)
    pa = rng.uniform(0, np.pi, ng)
    bulge_cols = _galaxy_colours(rng, gal_m, red=True)
    disk_cols = _galaxy_colours(rng, gal_m, red=False)
    # component fluxes per band with total r flux fixed
    fr = _flux(gal_m)
    fb = _flux(_mags_from_colours(np.zeros(ng), bulge_cols)) * (bt * fr)[:, None]
    fd = _flux(_mags_from_colours(np.zeros(ng), disk_cols)) * ((1 - bt) * fr)[:, None]
    fb = fb / _flux(0.0)  # relative to r = 0 -> scale
    fd = fd / _flux(0.0)
    fs = _flux(_mags_from_colours(star_m, scol))
    # Galactic extinction (A_b = R_b E(B-V)), applied to every object
    ext = 10.0 ** (-0.4 * p["ebv"] * np.array([EXT_R[b] for b in BANDS]))
    fs, fb, fd = fs * ext, fb * ext, fd * ext
    obj["flux"] = np.concatenate([fs, fb + fd])  # (n, 5) nanomaggies
    obj["flux_bulge"] = np.concatenate([np.zeros((ns, 5)), fb])
    obj["flux_disk"] = np.concatenate([np.zeros((ns, 5)), fd])
    obj["subtype"] = np.array(
        list(np.where(qso, "qso", "star")) + list(np.where(early, "early", "late"))
    )
    zeros = np.zeros(ns)
    obj["bt"] = np.concatenate([zeros, bt])
    obj["re_d"] = np.concatenate([zeros, re_d])
    obj["re_b"] = np.concatenate([zeros, re_b])
    obj["q_d"] = np.concatenate([zeros + 1, q_d])
    obj["q_b"] = np.concatenate([zeros + 1, q_b])
    obj["pa"] = np.concatenate([zeros, pa])
    return obj
