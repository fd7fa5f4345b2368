"""Simulated SDSS-like five-band fields with a known truth.

`simulate_field` draws one field of stars (and quasars) and galaxies with
magnitudes, colours, shapes and sizes after the observed high-latitude SDSS
sky, renders each band on its *own* pixel grid (offset by several pixels
through its own TAN WCS, like the real drift-scan frames), adds SDSS-like
noise, saturation with bleed trails and cosmic rays, and returns the frames,
the five bands resampled onto the r grid (a `~astrohvae.io.field.Field`), the
truth table and a truth segmentation map.  `write_simulation` writes the same
as SDSS-style ``frame-*.fits`` files plus a ``truth-*.fits`` file;
`read_truth` reads the latter back.

Physics (see the module constants for the exact numbers):

* **Pixels, WCS**: 0.396 arcsec pixels; the r band's WCS is an SDSS-like TAN
  projection (RA along rows); every other band has the same CD matrix and a
  reference value shifted so that its pixels are offset from r by a few
  pixels (|dx| <= 3, |dy| <= 8), drawn per field.
* **PSF**: per band a Moffat core plus a wide, low-amplitude Moffat wing
  (beta ~ 2.2, ~3x wider, 4-9 % of the light) with a small ellipticity; the
  r-band seeing is drawn per field (FWHM 0.9-1.5 arcsec) and the other bands
  scale with wavelength, u worst.  `Simulation.psf_fwhm` is the FWHM of the
  *pixel-integrated* PSF, as a fit to a star in the image measures it.
* **Noise**: sky-subtracted frames; per pixel variance (in counts)
  ``(sky + object) / gain + dark_variance`` converted to nanomaggies with the
  band's NMGY; the sky noise is drawn around the median measured on the
  eight real SDSS fields in ``shared/data`` (u 0.044, g 0.0167, r 0.028,
  i 0.048, z 0.181 nanomaggies; 8 % common and 6 % per-band scatter), gains,
  dark variances and calibrations around typical SDSS values, and the sky
  level in counts follows from them.
  `Simulation.sky_sigma` is the resulting sky-only pixel sigma (nanomaggies).
* **Stars**: differential counts ``dN/dm = 800 x 10^(0.12 (r - 20))`` per
  square degree per magnitude, scaled by a per-field Galactic density factor
  (log-normal, 0.5 e-folds; one field in ten is a crowded low-latitude one,
  4-15 times denser); colours along the SDSS stellar locus
  (anchor points approximating Covey et al. 2007, AJ 134, 2398, and Ivezic
  et al. 2008, ApJ 684, 287), with halo turn-off stars, disk G/K stars and
  M dwarfs mixed by magnitude; a few per cent quasars (point sources, blue
  u-g) at the faint end; and on a full field a few bright stars that
  saturate (SDSS saturates around r ~ 14) with bleed trails along columns.
* **Galaxies**: counts ``dN/dm = 1320 x 10^(0.43 (r - 20))`` per square
  degree per magnitude (about 1e4 per square degree to r = 22, cf. Yasuda et
  al. 2001); both count laws are tuned so that photutils detections per
  r-magnitude bin match the real fields (benchmarks/sim_vs_real.py).  Each
  galaxy is a de Vaucouleurs bulge plus an exponential disk with its own
  colours (bulges red, disks blue; colours
  redden with magnitude as a proxy for redshift), an inclination-driven disk
  axis ratio and a rounder bulge; "early" galaxies are bulge dominated.  The
  disk half-light radius shrinks with magnitude, median
  ``1.8" x 10^(-0.12 (r - 18))`` with 0.2 dex scatter (0.6" at r = 22,
  bulges 0.35-0.7 times that), so that at r ~ 22 a typical galaxy is
  smaller than the PSF and looks like a star.  About 6 % of the objects are
  moved next to another object (close pairs, 1-4 arcsec apart); objects are
  placed up to 20 pixels beyond the field so that some are cut by its edges.
* **Structure**: late-type discs of half-light radius >= 0.8 arcsec put
  10-40 % of their disc light in ~15 point-like star-forming knots drawn from
  the disc profile (as GalSim's ``RandomKnots``) and carry a two-armed
  logarithmic spiral modulation (amplitude 0-0.6, pitch 10-30 deg);
  ``structure=False`` gives the same field with smooth galaxies.
* **Extinction**: every object is dimmed by Galactic extinction
  ``A_b = R_b E(B-V)`` (Schlafly & Finkbeiner 2011 coefficients), E(B-V)
  drawn per field around 0.03 (three times more in crowded fields); the truth
  magnitudes are the observed, extincted ones.
* **Cosmic rays**: a few (8 per full frame and band) short, sharp tracks
  (not convolved with the PSF), each in one band only - the real corrected
  frames have most cosmic rays already removed.

Truth segmentation: a pixel belongs to object k when k's noiseless r-band
surface brightness there exceeds `MASK_THRESHOLD` times the r sky sigma and
is the largest of all objects' at that pixel; else it is 0 (sky).  The knots
and arms belong to their galaxy.  `truth_mask` gives the same at another
isophote.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field as dc_field
from pathlib import Path

import numpy as np

from astrohvae import BANDS, PIXEL_SCALE, REF_BAND
from astrohvae.errors import InputError

__all__ = [
    "Simulation",
    "simulate_field",
    "write_simulation",
    "write_adjacent",
    "read_truth",
    "field_ids",
    "MASK_THRESHOLD",
    "truth_mask",
]

#: Truth-mask threshold, in units of the r-band sky sigma (noiseless model).
MASK_THRESHOLD = 0.5

#: Default field size (nx, ny) of an SDSS frame.
FULL_SIZE = (2048, 1489)
MAX_PIXELS = 6000 * 6000
"""Largest field `write_simulation` makes, in pixels per band (bounds its memory; an SDSS field has 3.0 M)."""

#: Area of a full SDSS frame in square degrees.
_FULL_AREA_DEG2 = FULL_SIZE[0] * FULL_SIZE[1] * (PIXEL_SCALE / 3600.0) ** 2

# Per band instrument/sky parameters after the eight real fields of
# shared/data (NMGY: nanomaggies per count; GAIN: e-/count; DARK: dark variance
# in counts^2); the sky level in counts follows from the drawn sky noise
# (sky = gain ((sigma / NMGY)^2 - dark)) - see benchmarks/sim_vs_real.py.
_NMGY = {"u": 0.0105, "g": 0.0038, "r": 0.0050, "i": 0.0065, "z": 0.0335}
#: Median sky pixel noise of the real frames (nanomaggies, sigma-clipped std).
_SIGMA = {"u": 0.044, "g": 0.0167, "r": 0.028, "i": 0.048, "z": 0.181}
_GAIN = {"u": 1.6, "g": 3.9, "r": 4.7, "i": 5.1, "z": 4.6}
_DARK = {"u": 8.0, "g": 1.4, "r": 1.2, "i": 5.8, "z": 1.0}
#: Saturation level in counts (sky + object) per pixel.
_SATUR = 30000.0
#: Star counts dN/dm = _STAR_AMP 10^(_STAR_SLOPE (r - 20)) per deg^2 per mag
#: (times a per-field density factor); galaxies likewise.  Calibrated so
#: that photutils detections per magnitude bin match the real fields.
_STAR_AMP, _STAR_SLOPE = 800.0, 0.12
_GAL_AMP, _GAL_SLOPE = 1320.0, 0.43
#: Median disk half-light radius (arcsec) = _RE18 10^(_RE_SLOPE (r - 18)).
_RE18, _RE_SLOPE = 1.8, -0.12
#: Extinction coefficients A_b / E(B-V) (Schlafly & Finkbeiner 2011, as in SDSS DR8+).
_EXT_R = {"u": 4.239, "g": 3.303, "r": 2.285, "i": 1.698, "z": 1.263}
#: Seeing FWHM relative to r, per band (u worst).
_SEEING_RATIO = {"u": 1.12, "g": 1.05, "r": 1.0, "i": 0.95, "z": 0.94}
#: Structure of late-type discs (``structure=True``): a fraction of the disc
#: light, uniform in _KNOT_FRAC, in point-like star-forming knots drawn from
#: the disc's own exponential profile (as GalSim's ``RandomKnots``), about
#: _KNOT_N of them (Poisson, at least 5) of equal flux; and a two-armed
#: logarithmic spiral modulation of the disc, amplitude uniform in _ARM_AMP,
#: pitch angle uniform in _ARM_PITCH (degrees).  Only discs of half-light
#: radius >= _STRUCT_MIN_RE arcsec get them (smaller ones are unresolved).
_KNOT_FRAC = (0.1, 0.4)
_KNOT_N = 15
_ARM_AMP = (0.0, 0.6)
_ARM_PITCH = (10.0, 30.0)
_STRUCT_MIN_RE = 0.8

# Approximate SDSS stellar locus: g-r -> (u-g, r-i, i-z); after Covey et al.
# (2007) median colours and Ivezic et al. (2008).  Parameterised by position
# t along the polyline.
_LOCUS = np.array(
    [
        # g-r,  u-g,  r-i,   i-z
        [-0.20, 0.60, -0.15, -0.10],
        [0.00, 0.85, -0.05, -0.05],
        [0.20, 0.95, 0.04, 0.00],
        [0.30, 1.02, 0.09, 0.02],
        [0.40, 1.12, 0.13, 0.04],
        [0.50, 1.28, 0.17, 0.07],
        [0.60, 1.48, 0.21, 0.09],
        [0.80, 1.88, 0.29, 0.14],
        [1.00, 2.25, 0.40, 0.21],
        [1.20, 2.50, 0.56, 0.30],
        [1.35, 2.55, 0.85, 0.43],
        [1.45, 2.60, 1.20, 0.58],
        [1.50, 2.60, 1.60, 0.80],
    ]
)


def field_ids(seed):
    """SDSS-style ``(run, camcol, field)`` of the simulation with this seed.

    ``field = seed % 10000``, ``camcol = 1 + (seed // 10000) % 6`` and
    ``run = 100000 + seed // 60000``: a one-to-one map for
    ``0 <= seed < 54e9``, and the runs (>= 100000) never clash with real SDSS
    runs.
    """
    seed = int(seed)
    if seed < 0 or seed >= 54_000_000_000:
        raise ValueError(f"seed must be in [0, 5.4e10), not {seed}")
    return 100000 + seed // 60000, 1 + (seed // 10000) % 6, seed % 10000


@dataclass
class Simulation:
    """One simulated field and its truth.

    Attributes
    ----------
    field : astrohvae.io.field.Field
        The five bands resampled onto the r grid (bilinear, through the WCS,
        like `astrohvae.io.readers.read_field` does for real frames).
    frames : dict
        band -> ``(image float32 (ny, nx) nanomaggies, astropy.io.fits.Header)``
        on each band's own pixel grid (what `write_simulation` writes).
    truth : astropy.table.Table
        One row per simulated object (see `simulate_field`).
    truth_mask : numpy.ndarray
        int32 ``(ny, nx)`` on the r grid, 0 = sky, k = truth id k.
    sky_sigma : dict
        band -> sky pixel noise sigma in nanomaggies.
    psf_fwhm : dict
        band -> FWHM (arcsec) of the pixel-integrated PSF.
    meta : dict
        The drawn field parameters (offsets, PSF, cosmic rays, ...).
    """

    field: object
    frames: dict
    truth: object
    truth_mask: np.ndarray
    sky_sigma: dict = dc_field(default_factory=dict)
    psf_fwhm: dict = dc_field(default_factory=dict)
    meta: dict = dc_field(default_factory=dict)

    @property
    def name(self):
        """``RUN-CAMCOL-FIELD`` name of the field."""
        return self.field.name


# --------------------------------------------------------------------------- PSF
class _PSF:
    """Moffat core + wide Moffat wing, slightly elliptical; unit integral.

    Parameters are in pixels.  ``value(dx, dy)`` is the continuous surface
    density (per pixel^2).
    """

    def __init__(self, fwhm_core, beta, wing_frac, wing_scale, wing_beta, e1, e2):
        self.beta = beta
        self.alpha = fwhm_core / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
        self.wing_frac = wing_frac
        self.wbeta = wing_beta
        self.walpha = wing_scale * fwhm_core / (2.0 * math.sqrt(2.0 ** (1.0 / wing_beta) - 1.0))
        # area-preserving shear matrix from (e1, e2)
        g = np.array([[1 + e1, e2], [e2, 1 - e1]])
        g /= math.sqrt(abs(np.linalg.det(g)))
        self.ginv = np.linalg.inv(g)

    def radial(self, r2):
        """Circular profile at squared radius ``r2`` (unsheared)."""
        c = (1.0 - self.wing_frac) * (self.beta - 1.0) / (math.pi * self.alpha**2)
        w = self.wing_frac * (self.wbeta - 1.0) / (math.pi * self.walpha**2)
        return c * (1.0 + r2 / self.alpha**2) ** (-self.beta) + w * (1.0 + r2 / self.walpha**2) ** (-self.wbeta)

    def value(self, dx, dy):
        u = self.ginv[0, 0] * dx + self.ginv[0, 1] * dy
        v = self.ginv[1, 0] * dx + self.ginv[1, 1] * dy
        return self.radial(u * u + v * v)

    def pixel_fwhm(self):
        """FWHM (pixels) of the circular profile integrated over 1x1 pixels."""
        n = 24
        off = (np.arange(n) + 0.5) / n - 0.5
        uu, vv = np.meshgrid(off, off)
        xs = np.linspace(0.0, 2.0 * self.alpha + 4.0, 600)
        prof = self.radial((xs[:, None] + uu.ravel()[None, :]) ** 2 + vv.ravel()[None, :] ** 2).mean(axis=1)
        half = prof[0] / 2.0
        k = np.nonzero(prof < half)[0][0]
        x0, x1, p0, p1 = xs[k - 1], xs[k], prof[k - 1], prof[k]
        return 2.0 * (x0 + (half - p0) * (x1 - x0) / (p1 - p0))

    def radius_below(self, level):
        """Radius (pixels) beyond which the profile is below ``level``."""
        r = np.geomspace(1.0, 2000.0, 400)
        p = self.radial(r * r)
        k = np.nonzero(p < level)[0]
        return float(r[k[0]]) if k.size else 2000.0


def _make_psf(target_fwhm_px, rng_params):
    """PSF whose pixel-integrated FWHM equals ``target_fwhm_px``."""
    beta, wing_frac, wing_scale, wing_beta, e1, e2 = rng_params
    f = target_fwhm_px
    for _ in range(4):  # fixed-point on the core FWHM
        psf = _PSF(f, beta, wing_frac, wing_scale, wing_beta, e1, e2)
        f *= target_fwhm_px / psf.pixel_fwhm()
    return _PSF(f, beta, wing_frac, wing_scale, wing_beta, e1, e2)


# ------------------------------------------------------------------ rendering
def _render_point(psf, x, y, flux, half, osamp=5, inner=None):
    """Stamp (2*half+1)^2 of a point source at (x, y); returns (img, x0, y0).

    Pixel-centre sampling over the stamp, and ``osamp`` x ``osamp`` sub-pixel
    integration in the inner box where the profile is curved.
    """
    ix, iy = int(round(x)), int(round(y))
    x0, y0 = ix - half, iy - half
    n = 2 * half + 1
    gx = np.arange(n) + x0 - x
    gy = np.arange(n) + y0 - y
    img = psf.value(gx[None, :], gy[:, None])
    k = min(half, inner if inner is not None else half)
    sub = (np.arange(osamp) + 0.5) / osamp - 0.5
    m = 2 * k + 1
    fx = (gx[half - k : half + k + 1, None] + sub[None, :]).ravel()
    fy = (gy[half - k : half + k + 1, None] + sub[None, :]).ravel()
    fine = psf.value(fx[None, :], fy[:, None])
    img[half - k : half + k + 1, half - k : half + k + 1] = fine.reshape(m, osamp, m, osamp).mean(axis=(1, 3))
    return img * flux, x0, y0


def _sersic_bn(n):
    return 2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n) + 46.0 / (25515.0 * n * n)


def _sersic_grid(n, re, q, pa, dx, dy, trunc):
    """Unit-sum Sersic image sampled at offsets (dx, dy) from the centre."""
    c, s = math.cos(pa), math.sin(pa)
    xr = dx * c + dy * s
    yr = (-dx * s + dy * c) / q
    r = np.sqrt(xr * xr + yr * yr)
    img = np.exp(-_sersic_bn(n) * ((r / re) ** (1.0 / n) - 1.0))
    # smooth truncation between 0.8 and 1.0 x trunc (like SDSS model fits)
    t = np.clip((r - 0.8 * trunc) / (0.2 * trunc), 0.0, 1.0)
    img *= 1.0 - t * t * (3.0 - 2.0 * t)
    tot = img.sum()
    return img / tot if tot > 0 else img


class _Convolver:
    """FFT convolution of oversampled stamps with a cached kernel per shape."""

    def __init__(self, psf, osamp, radius_px):
        import scipy.fft as sfft

        self.sfft = sfft
        self.osamp = osamp
        kr = int(math.ceil(radius_px * osamp))
        off = (np.arange(-kr, kr + 1)) / osamp
        k = psf.value(off[None, :], off[:, None])
        self.kernel = k / k.sum()
        self.kr = kr
        self.cache = {}

    def size(self, n):
        """Padded FFT size for an ``n`` x ``n`` oversampled stamp."""
        return self.sfft.next_fast_len(n + 2 * self.kr, real=True)

    def kernel_fft(self, m):
        if m not in self.cache:
            kp = np.zeros((m, m))
            kk = self.kernel
            kp[: kk.shape[0], : kk.shape[1]] = kk
            self.cache[m] = self.sfft.rfft2(kp, workers=1)
        return self.cache[m]

    def fft(self, img, m):
        return self.sfft.rfft2(img, s=(m, m), workers=1)

    def convolve_fft(self, f, m, n, shift=(0.0, 0.0)):
        """Inverse FFT of ``f`` times the kernel, moved by ``shift`` = (dx, dy)
        oversampled pixels (a phase ramp: exact for the band-limited,
        PSF-convolved image); the central ``n`` x ``n`` part."""
        g = f * self.kernel_fft(m)
        dx, dy = shift
        if dx or dy:
            fy = self.sfft.fftfreq(m)
            fx = self.sfft.rfftfreq(m)
            g = g * np.exp(-2j * np.pi * fy * dy)[:, None] * np.exp(-2j * np.pi * fx * dx)[None, :]
        out = self.sfft.irfft2(g, s=(m, m), workers=1)
        return out[self.kr : self.kr + n, self.kr : self.kr + n]

    def __call__(self, img):
        n = img.shape[0]
        m = self.size(n)
        return self.convolve_fft(self.fft(img, m), m, n)


def _galaxy_components(g, x, y, osamp, half, rng=None):
    """Oversampled unit-sum bulge and disk images centred at (x, y); the disk
    carries its spiral arms and knots (``arm_amp``, ``knot_frac`` of ``g``;
    the knots are drawn with ``rng``)."""
    ix, iy = int(round(x)), int(round(y))
    x0, y0 = ix - half, iy - half
    n = (2 * half + 1) * osamp
    sub = (np.arange(n) + 0.5) / osamp - 0.5
    dx = (sub + x0 - x)[None, :]
    dy = (sub + y0 - y)[:, None]
    comps = []
    if g["bt"] > 0:
        comps.append(_sersic_grid(4.0, g["re_b"], g["q_b"], g["pa"], dx, dy, 8.0 * g["re_b"]))
    else:
        comps.append(None)
    if g["bt"] < 1:
        disk = _sersic_grid(1.0, g["re_d"], g["q_d"], g["pa"], dx, dy, 4.0 * g["re_d"])
        if g.get("arm_amp", 0.0) > 0:
            disk = _spiral_arms(disk, g, dx, dy)
        if g.get("knot_frac", 0.0) > 0 and rng is not None:
            disk = (1.0 - g["knot_frac"]) * disk + g["knot_frac"] * _knots(rng, g, x - x0, y - y0, osamp, n)
        comps.append(disk)
    else:
        comps.append(None)
    return comps, x0, y0


def _spiral_arms(disk, g, dx, dy):
    """The unit-sum disc image times a two-armed logarithmic spiral,
    ``1 + A t cos(2 (phi - ln(r / re) / tan(pitch)) + phase)`` in the disc
    plane, tapered to the centre by ``t = 1 - exp(-(r / re)^2)``; unit sum."""
    c, s = math.cos(g["pa"]), math.sin(g["pa"])
    xr = dx * c + dy * s
    yr = (-dx * s + dy * c) / g["q_d"]
    r = np.maximum(np.sqrt(xr * xr + yr * yr), 1e-3) / g["re_d"]
    phi = np.arctan2(yr, xr)
    taper = 1.0 - np.exp(-r * r)
    mod = 1.0 + g["arm_amp"] * taper * np.cos(2.0 * (phi - np.log(r) / math.tan(g["arm_pitch"])) + g["arm_phase"])
    out = disk * mod
    tot = out.sum()
    return out / tot if tot > 0 else disk


def _knots(rng, g, xc, yc, osamp, n):
    """Unit-sum image of point-like knots of equal flux drawn from the
    exponential disc (radius ~ Gamma(2, h), h = re / 1.678, within the
    disc's 4 re truncation, uniform azimuth in the disc plane, then inclined
    and rotated like the disc) on the oversampled stamp grid of
    `_galaxy_components`; (xc, yc): the centre in stamp pixels."""
    nk = max(5, int(rng.poisson(_KNOT_N)))
    h = g["re_d"] / 1.678
    rad = np.minimum(rng.gamma(2.0, h, nk), 4.0 * g["re_d"])
    ang = rng.uniform(0.0, 2.0 * np.pi, nk)
    xr, yr = rad * np.cos(ang), rad * np.sin(ang) * g["q_d"]
    c, s = math.cos(g["pa"]), math.sin(g["pa"])
    px, py = xc + xr * c - yr * s, yc + xr * s + yr * c
    ix = np.clip(np.rint((px + 0.5) * osamp - 0.5).astype(np.int64), 0, n - 1)
    iy = np.clip(np.rint((py + 0.5) * osamp - 0.5).astype(np.int64), 0, n - 1)
    img = np.zeros((n, n))
    np.add.at(img, (iy, ix), 1.0 / nk)
    return img


def _add_stamp(image, stamp, x0, y0):
    """Add ``stamp`` into ``image`` at lower-left (x0, y0), clipping edges."""
    ny, nx = image.shape
    sh, sw = stamp.shape
    ya, yb = max(y0, 0), min(y0 + sh, ny)
    xa, xb = max(x0, 0), min(x0 + sw, nx)
    if ya >= yb or xa >= xb:
        return None
    image[ya:yb, xa:xb] += stamp[ya - y0 : yb - y0, xa - x0 : xb - x0]
    return (slice(ya, yb), slice(xa, xb)), (slice(ya - y0, yb - y0), slice(xa - x0, xb - x0))


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


# ------------------------------------------------------------------ the field
SDSS_BAND_OFFSETS = {
    "u": ((-0.6, 5.5), (3.7, 8.9)),
    "g": ((-1.5, 5.6), (9.2, 12.6)),
    "i": ((-1.9, 2.9), (2.6, 3.7)),
    "z": ((-2.3, 4.2), (6.5, 7.8)),
}
"""Ranges ``((dx_min, dx_max), (dy_min, dy_max))`` of each band's offset from r (band pixel - r
pixel; y = rows = the scan direction) over the eight real SDSS fields (`benchmarks/band_offsets.py`):
every band lies ahead of r along the scan, g most (9-13 px), so every real field has a strip along
one edge seen in fewer than five bands.  `simulate_field` draws each offset uniformly in them."""


def _field_params(rng, nx, ny, band_offset_scale=1.0):
    """Per-field observing conditions."""
    p = {}
    fwhm_r = rng.uniform(0.9, 1.5)
    beta = rng.uniform(2.8, 4.2)
    wing_frac = rng.uniform(0.04, 0.09)
    wing_scale = rng.uniform(2.5, 3.5)
    e1, e2 = rng.normal(0, 0.025, 2)
    p["psf"] = {}
    p["sky"], p["nmgy"], p["gain"], p["dark"] = {}, {}, {}, {}
    skyfac = rng.lognormal(0, 0.08)
    for b in BANDS:
        fw = fwhm_r * _SEEING_RATIO[b] * rng.uniform(0.97, 1.03)
        p["psf"][b] = dict(
            fwhm=fw,
            beta=beta * rng.uniform(0.95, 1.05),
            wing_frac=wing_frac * rng.uniform(0.8, 1.2),
            wing_scale=wing_scale,
            wing_beta=2.2,
            e1=e1 + rng.normal(0, 0.005),
            e2=e2 + rng.normal(0, 0.005),
        )
        p["nmgy"][b] = _NMGY[b] * rng.lognormal(0, 0.12)
        p["gain"][b] = _GAIN[b] * rng.uniform(0.95, 1.05)
        p["dark"][b] = _DARK[b] * rng.uniform(0.8, 1.2)
        sigma = _SIGMA[b] * skyfac * rng.lognormal(0, 0.06)
        p["sky"][b] = p["gain"][b] * max((sigma / p["nmgy"][b]) ** 2 - p["dark"][b], 1.0)
    # band offsets (band pixel - r pixel), drawn within the ranges measured on real frames
    # (`SDSS_BAND_OFFSETS`), times ``band_offset_scale``
    p["offset"] = {b: (0.0, 0.0) if b == REF_BAND else
                   tuple(band_offset_scale * rng.uniform(*SDSS_BAND_OFFSETS[b][k]) for k in (0, 1)) for b in BANDS}
    # sky position: a random high-latitude-ish spot
    p["ra0"] = rng.uniform(0.0, 360.0)
    p["dec0"] = rng.uniform(-10.0, 60.0)
    # Galactic star density relative to a typical high-latitude field; one
    # field in ten is a low-latitude, crowded one
    p["star_density"] = rng.lognormal(0.0, 0.5) * (rng.uniform(4.0, 15.0) if rng.random() < 0.1 else 1.0)
    p["sky_resid"] = rng.normal(0, 0.05)
    # Galactic reddening E(B-V): ~0.03 at high latitude, more in crowded fields
    p["ebv"] = float(rng.lognormal(np.log(0.03), 0.5) * (3.0 if p["star_density"] > 3.0 else 1.0))
    return p


def _make_wcs(p, nx, ny):
    """r-band WCS and per-band headers' WCS (astropy WCS objects)."""
    from astropy.wcs import WCS

    s = PIXEL_SCALE / 3600.0
    rot = np.deg2rad(0.8)
    base = WCS(naxis=2)
    base.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    base.wcs.cunit = ["deg", "deg"]
    base.wcs.crpix = [nx / 2.0 + 1.0, ny / 2.0 + 1.0]
    base.wcs.crval = [p["ra0"], p["dec0"]]
    # SDSS-like: RA along rows, Dec along columns (parity flipped)
    base.wcs.cd = np.array([[s * math.sin(rot), s * math.cos(rot)], [s * math.cos(rot), -s * math.sin(rot)]])
    base.wcs.radesys = "ICRS"
    base.wcs.equinox = 2000.0
    wcss = {}
    for b in BANDS:
        dx, dy = p["offset"][b]
        w = base.deepcopy()
        cx, cy = base.wcs.crpix[0] - 1.0, base.wcs.crpix[1] - 1.0
        ra, dec = base.all_pix2world(cx - dx, cy - dy, 0)
        w.wcs.crval = [float(ra), float(dec)]
        w.wcs.set()
        wcss[b] = w
    return wcss


def _populations(rng, p, nx, ny, star_fraction, margin):
    """The object list (dict of arrays) before rendering."""
    area = (nx + 2 * margin) * (ny + 2 * margin) * (PIXEL_SCALE / 3600.0) ** 2
    frac_full = nx * ny / (FULL_SIZE[0] * FULL_SIZE[1])
    n_star = rng.poisson(_count(_STAR_SLOPE, _STAR_AMP * p["star_density"], 14.0, 23.5, area))
    n_bright = rng.poisson(2.0 * frac_full)
    n_gal = rng.poisson(_count(_GAL_SLOPE, _GAL_AMP, 14.0, 23.5, area))
    if star_fraction is not None:
        ntot = n_star + n_bright + n_gal
        n_star_all = int(round(star_fraction * ntot))
        n_bright = min(n_bright, n_star_all)
        n_star = n_star_all - n_bright
        n_gal = ntot - n_star_all
    star_m = np.concatenate([_powerlaw_mags(rng, n_star, _STAR_SLOPE, 14.0, 23.5), rng.uniform(11.5, 14.0, n_bright)])
    gal_m = _powerlaw_mags(rng, n_gal, _GAL_SLOPE, 14.0, 23.5)
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
    re_med = _RE18 * 10.0 ** (_RE_SLOPE * (gal_m - 18.0))
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
    ext = 10.0 ** (-0.4 * p["ebv"] * np.array([_EXT_R[b] for b in BANDS]))
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


def simulate_field(seed, size=FULL_SIZE, star_fraction=None, structure=True, band_offset_scale=1.0):
    """Simulate one SDSS-like five-band field with its truth.

    Parameters
    ----------
    seed : int
        Random seed (``0 <= seed < 5.4e10``); the same seed and size give the
        same field, bit for bit.  It also names the field (`field_ids`).
    size : tuple of int, optional
        ``(nx, ny)`` in pixels; default a full SDSS frame, 2048 x 1489.
        Object densities are per unit area, so small fields hold
        proportionally fewer objects.
    star_fraction : float or None, optional
        None (default): stars and galaxies follow their own observed number
        counts times the field's Galactic star density (at the typical
        density: 86 % stars at r < 18, 45 % at r = 19-20, 17 % at
        r = 21-22, 14 % overall to r = 23.5).  A number in [0, 1]: the
        fraction of all simulated objects (to the faint limit r = 23.5) that
        are point sources; the total number of objects is unchanged and each
        class keeps its own magnitude distribution.
    structure : bool, optional
        True (default): late-type discs of half-light radius >= 0.8 arcsec
        get star-forming knots and spiral arms (`_KNOT_FRAC`, `_ARM_AMP`;
        drawn from their own random stream, so everything else is the same
        as with False: smooth bulge + disk galaxies).
    band_offset_scale : float, optional
        Multiplies every band's offset from r (default 1: offsets drawn within
        `SDSS_BAND_OFFSETS`, as real frames are offset; e.g. 2 for a stress
        test of the strips seen in fewer bands).  The rest of the field is the
        same for every scale.

    Returns
    -------
    Simulation
        With ``truth`` columns: ``id`` (1..N), ``x``, ``y`` (0-based r grid;
        objects may lie up to 20 px outside), ``ra``, ``dec``, ``type``
        ('star'/'galaxy'), ``subtype`` ('star', 'qso', 'early', 'late'),
        ``mag_u`` .. ``mag_z`` (AB total magnitudes), ``mag_r``, ``size``
        (intrinsic, PSF-free circularised half-light radius in r, arcsec; 0
        for point sources), ``bulge_frac`` (r-band B/T), ``re_disk``,
        ``re_bulge`` (arcsec, along the major axis), ``q_disk``, ``q_bulge``,
        ``pa`` (deg, in pixel coordinates), ``sersic_n`` (flux-weighted
        1..4), ``ellipticity`` (1 - q of the dominant component),
        ``snr_r`` (noiseless matched-filter S/N in r), ``mask_area``
        (truth-mask pixels), ``blended`` (another object's truth footprint
        touches its own), ``edge`` (rendering cut by the field edge),
        ``saturated``.
    """
    from astropy.io import fits
    from astropy.table import Table

    from astrohvae.io.field import Field

    nx, ny = (int(v) for v in size)
    if nx < 16 or ny < 16:
        raise ValueError(f"size must be at least 16x16, not {nx}x{ny}")
    if star_fraction is not None and not 0.0 <= star_fraction <= 1.0:
        raise ValueError(f"star_fraction must be in [0, 1], not {star_fraction}")
    run, camcol, fieldno = field_ids(seed)
    ss = np.random.SeedSequence(int(seed))
    # (spawn(5)'s first four children are spawn(4)'s: the structure stream changes nothing else)
    r_par, r_pop, r_noise, r_cr, r_struct = (np.random.default_rng(s) for s in ss.spawn(5))
    if not (np.isfinite(band_offset_scale) and 0.0 <= band_offset_scale <= 10.0):
        raise ValueError(f"band_offset_scale must be in [0, 10], not {band_offset_scale}")
    p = _field_params(r_par, nx, ny, band_offset_scale)
    margin = 20
    wcss = _make_wcs(p, nx, ny)
    obj = _populations(r_pop, p, nx, ny, star_fraction, margin)
    _structure(r_struct, obj, structure)
    n = len(obj["mag_r"])
    ids = np.arange(1, n + 1)

    sky_sigma = {b: p["nmgy"][b] * math.sqrt(p["sky"][b] / p["gain"][b] + p["dark"][b]) for b in BANDS}
    psfs, fwhm = {}, {}
    for b in BANDS:
        q = p["psf"][b]
        target = q["fwhm"] / PIXEL_SCALE
        psfs[b] = _make_psf(target, (q["beta"], q["wing_frac"], q["wing_scale"], q["wing_beta"], q["e1"], q["e2"]))
        fwhm[b] = float(target * PIXEL_SCALE)

    # positions of every object in every band's grid: a pure offset through
    # the WCS (computed exactly through both WCSs)
    ra, dec = wcss[REF_BAND].all_pix2world(obj["x"], obj["y"], 0)
    pos = {}
    for b in BANDS:
        bx, by = wcss[b].all_world2pix(ra, dec, 0)
        pos[b] = (np.asarray(bx, float), np.asarray(by, float))

    models = {b: np.zeros((ny, nx), np.float64) for b in BANDS}
    best = np.zeros((ny, nx), np.float64)
    label = np.zeros((ny, nx), np.int32)
    # all bands share one padded FFT size per stamp (the largest kernel)
    kr_px = max(min(4.0 * p["psf"][b]["fwhm"] / PIXEL_SCALE, 16.0) for b in BANDS)
    convs = {(b, o): _Convolver(psfs[b], o, kr_px) for b in BANDS for o in (1, 2, 3)}
    size_arcsec = np.zeros(n)
    snr = np.zeros(n)
    edge = np.zeros(n, bool)
    is_star = obj["type"] == "star"
    for k in range(n):
        if is_star[k]:
            fr = obj["flux"][k, 2]
            level = 0.05 * sky_sigma["r"] / max(fr, 1e-30)
            half = int(np.clip(psfs["r"].radius_below(level), 6, 400))
            inner = int(math.ceil(2.5 * fwhm["u"] / PIXEL_SCALE))
        else:
            re_px = max(obj["re_d"][k], obj["re_b"][k] * 2) / PIXEL_SCALE
            ext = 4.0 * obj["re_d"][k] / PIXEL_SCALE if obj["bt"][k] < 1 else 0.0
            if obj["bt"][k] > 0:
                ext = max(ext, 8.0 * obj["re_b"][k] / PIXEL_SCALE)
            ext = min(ext, 3.0 * re_px + 10)
            half = int(np.clip(math.ceil(ext + 2.5 * fwhm["u"] / PIXEL_SCALE), 8, 110))
        if not is_star[k]:
            re_px = max(obj["re_d"][k], obj["re_b"][k]) / PIXEL_SCALE
            osamp = 3 if re_px < 4 else (2 if re_px < 12 else 1)
            xr, yr = pos[REF_BAND][0][k], pos[REF_BAND][1][k]
            comps, _, _ = _galaxy_components(
                {kk: obj[kk][k] for kk in ("bt", "q_b", "q_d", "pa", "knot_frac", "arm_amp", "arm_pitch",
                                           "arm_phase")}
                | {"re_b": obj["re_b"][k] / PIXEL_SCALE, "re_d": obj["re_d"][k] / PIXEL_SCALE},
                xr, yr, osamp, half, rng=r_struct,
            )
            nfine = (2 * half + 1) * osamp
            conv_r = convs[(REF_BAND, osamp)]
            mfft = conv_r.size(nfine)
            ffts = [None if c is None else conv_r.fft(c, mfft) for c in comps]
            fine_r = sum(obj[key][k, 2] * c for key, c in zip(("flux_bulge", "flux_disk"), comps) if c is not None)
            size_arcsec[k] = _half_light_radius(fine_r, xr - round(xr) + half, yr - round(yr) + half, osamp) * PIXEL_SCALE
        for b in BANDS:
            bx, by = pos[b][0][k], pos[b][1][k]
            j = BANDS.index(b)
            if is_star[k]:
                st, x0, y0 = _render_point(psfs[b], bx, by, obj["flux"][k, j], half, inner=inner)
            else:
                x0, y0 = int(round(bx)) - half, int(round(by)) - half
                f = 0.0
                for key, ff in zip(("flux_bulge", "flux_disk"), ffts):
                    if ff is not None:
                        f = f + obj[key][k, j] * ff
                shift = (((bx - round(bx)) - (xr - round(xr))) * osamp, ((by - round(by)) - (yr - round(yr))) * osamp)
                conv = convs[(b, osamp)].convolve_fft(f, mfft, nfine, shift)
                mm = nfine // osamp
                st = conv.reshape(mm, osamp, mm, osamp).sum(axis=(1, 3))
            sl = _add_stamp(models[b], st, x0, y0)
            if b == REF_BAND:
                snr[k] = math.sqrt(float((st**2).sum())) / sky_sigma[b]
                if sl is None:
                    edge[k] = True
                    continue
                (imsl, stsl) = sl
                edge[k] = st[stsl].shape != st.shape
                part = st[stsl]
                # every pixel's brightest object (`truth_mask` cuts it at any isophote)
                upd = part > best[imsl]
                best[imsl][upd] = part[upd]
                label[imsl][upd] = ids[k]

    # noise, saturation, cosmic rays -> frames
    hdr_common = {
        "ORIGIN": ("astrohvae", "simulated SDSS-like frame"),
        "TELESCOP": ("2.5m", ""),
        "RUN": (run, "Run number (simulated)"),
        "CAMCOL": (camcol, "column in the imaging camera"),
        "FIELD": (fieldno, "Field number"),
        "FRAME": (fieldno, "Frame sequence number within the run"),
        "RERUN": ("sim", "rerun"),
        "SIMULATE": (True, "astrohvae.simulate"),
        "SIMSEED": (int(seed), "random seed of the simulation"),
        "BUNIT": ("nanomaggy", "1 nanomaggy = 3.631e-6 Jy"),
    }
    frames = {}
    saturated = np.zeros(n, bool)
    crs = {}
    for b in BANDS:
        nm = p["nmgy"][b]
        counts = models[b] / nm + p["sky"][b]
        sat = counts > _SATUR
        if sat.any():
            counts = _bleed(counts, _SATUR)
            sat = counts >= _SATUR
            bxp = np.clip(np.round(pos[b][0]).astype(int), 0, nx - 1)
            byp = np.clip(np.round(pos[b][1]).astype(int), 0, ny - 1)
            saturated |= sat[byp, bxp] & is_star
        var = counts / p["gain"][b] + p["dark"][b]
        noise = r_noise.standard_normal((ny, nx)) * np.sqrt(var)
        noise[sat] = 0.0
        img = (counts + noise - p["sky"][b]) * nm
        img += p["sky_resid"] * sky_sigma[b] * _smooth_gradient(r_noise, nx, ny)
        crs[b] = _cosmic_rays(r_cr, img, sky_sigma[b], nx * ny / (FULL_SIZE[0] * FULL_SIZE[1]))
        hdr = fits.Header()
        for key, val in hdr_common.items():
            hdr[key] = val
        hdr["FILTER"] = (b, "filter used")
        hdr.update(wcss[b].to_header())
        hdr["NMGY"] = (round(nm, 8), "Calibration factor [nMgy per count]")
        hdr["NMGYIVAR"] = (1.0, "Calibration factor inverse variance")
        hdr["SKY"] = (round(p["sky"][b], 3), "sky level subtracted [counts/pixel]")
        hdr["GAIN"] = (round(p["gain"][b], 4), "e-/count")
        hdr["DARKVAR"] = (round(p["dark"][b], 4), "dark variance [counts^2]")
        hdr["SATUR"] = (_SATUR, "saturation level [counts]")
        hdr["SKYSIG"] = (sky_sigma[b], "sky pixel noise sigma [nanomaggy]")
        hdr["EBV"] = (round(p["ebv"], 4), "Galactic E(B-V) applied to the objects")
        hdr["PSF_FWHM"] = (fwhm[b], "pixel-integrated PSF FWHM [arcsec]")
        hdr["BANDDX"] = (p["offset"][b][0], "x offset of this band from r [pixels]")
        hdr["BANDDY"] = (p["offset"][b][1], "y offset of this band from r [pixels]")
        frames[b] = (img.astype(np.float32), hdr)

    # the field on the r grid
    data = np.zeros((len(BANDS), ny, nx), np.float32)
    mask = np.zeros((len(BANDS), ny, nx), bool)
    for j, b in enumerate(BANDS):
        if b == REF_BAND:
            data[j] = frames[b][0]
        else:
            data[j], mask[j] = _align(frames[b][0], wcss[b], wcss[REF_BAND], (ny, nx))
    name = f"{run:06d}-{camcol}-{fieldno:04d}"
    fld = Field(
        data=data,
        mask=mask,
        wcs=wcss[REF_BAND],
        bands=BANDS,
        name=name,
        files=(),
        unit="nanomaggy",
        meta={"offsets": dict(p["offset"]), "simulated": True, "seed": int(seed)},
    )

    # truth table
    level = (best / sky_sigma[REF_BAND]).astype(np.float32)
    owner = label
    label = np.where(level > MASK_THRESHOLD, owner, 0).astype(np.int32)
    area = np.bincount(label.ravel(), minlength=n + 1)[1:]
    blended = _touching(label, n)
    mags = -2.5 * np.log10(np.maximum(obj["flux"], 1e-30)) + 22.5
    q_dom = np.where(obj["bt"] >= 0.5, obj["q_b"], obj["q_d"])
    t = Table()
    t["id"] = ids.astype(np.int32)
    t["x"] = obj["x"]
    t["y"] = obj["y"]
    t["ra"] = np.asarray(ra, float)
    t["dec"] = np.asarray(dec, float)
    t["type"] = obj["type"]
    t["subtype"] = obj["subtype"]
    t["mag_r"] = mags[:, 2].astype(np.float32)
    for j, b in enumerate(BANDS):
        t[f"mag_{b}"] = mags[:, j].astype(np.float32)
    t["size"] = size_arcsec.astype(np.float32)
    t["bulge_frac"] = obj["bt"].astype(np.float32)
    t["re_disk"] = obj["re_d"].astype(np.float32)
    t["re_bulge"] = obj["re_b"].astype(np.float32)
    t["q_disk"] = obj["q_d"].astype(np.float32)
    t["q_bulge"] = obj["q_b"].astype(np.float32)
    t["pa"] = np.rad2deg(obj["pa"]).astype(np.float32)
    t["sersic_n"] = np.where(is_star, 0.0, 1.0 + 3.0 * obj["bt"]).astype(np.float32)
    t["ellipticity"] = np.where(is_star, 0.0, 1.0 - q_dom).astype(np.float32)
    t["snr_r"] = snr.astype(np.float32)
    t["mask_area"] = area.astype(np.int32)
    t["blended"] = blended
    t["edge"] = edge
    t["saturated"] = saturated
    t["knot_frac"] = obj["knot_frac"].astype(np.float32)
    t["arm_amp"] = obj["arm_amp"].astype(np.float32)
    t.meta["MASKTHR"] = MASK_THRESHOLD
    t.meta["FIELD"] = name
    t.meta["SEED"] = int(seed)
    t.meta["EBV"] = round(p["ebv"], 4)
    meta = {"params": p, "cosmic_rays": crs, "run": run, "camcol": camcol, "field": fieldno,
            "truth_level": level, "truth_owner": owner}
    return Simulation(
        field=fld, frames=frames, truth=t, truth_mask=label, sky_sigma=sky_sigma, psf_fwhm=fwhm, meta=meta
    )


def _structure(rng, obj, on=True):
    """Draw the knots and spiral arms of the late-type discs into ``obj``
    (``knot_frac``, ``arm_amp``, ``arm_pitch`` in radians, ``arm_phase``;
    zero amplitude for stars, early types, small discs, or ``on=False``)."""
    n = len(obj["mag_r"])
    late = (obj["subtype"] == "late") & (obj["bt"] < 1) & (obj["re_d"] >= _STRUCT_MIN_RE) & bool(on)
    obj["knot_frac"] = np.where(late, rng.uniform(*_KNOT_FRAC, n), 0.0)
    obj["arm_amp"] = np.where(late, rng.uniform(*_ARM_AMP, n), 0.0)
    obj["arm_pitch"] = np.deg2rad(rng.uniform(*_ARM_PITCH, n))
    obj["arm_phase"] = rng.uniform(0.0, 2.0 * np.pi, n)


def truth_mask(sim, isophote=MASK_THRESHOLD):
    """The truth segmentation of ``sim`` at another isophote.

    Parameters
    ----------
    sim : Simulation
        A simulation returned by `simulate_field` (in memory: the
        noiseless levels are not written by `write_simulation`).
    isophote : float
        Level in units of the r-band sky sigma; above the rendering cut-off
        of the stars' stamps (0.05).

    Returns
    -------
    numpy.ndarray
        int32 ``(ny, nx)``: k where truth object k's noiseless r surface
        brightness exceeds ``isophote`` r sky sigma and is the largest of
        all objects' there, else 0; ``sim.truth_mask`` at `MASK_THRESHOLD`.
    """
    level, owner = sim.meta["truth_level"], sim.meta["truth_owner"]
    return np.where(level > float(isophote), owner, 0).astype(np.int32)


def _half_light_radius(fine, xc, yc, osamp):
    """Circular half-light radius (pixels) of an oversampled stamp whose
    centre is at (xc, yc) in stamp pixel coordinates."""
    n = fine.shape[0]
    sub = (np.arange(n) + 0.5) / osamp - 0.5
    dx = (sub - xc)[None, :]
    dy = (sub - yc)[:, None]
    r = np.sqrt(dx * dx + dy * dy).ravel()
    step = 0.02
    h = np.bincount((r / step).astype(np.int64), weights=fine.ravel())
    c = np.cumsum(h)
    if c[-1] <= 0:
        return 0.0
    k = int(np.searchsorted(c, 0.5 * c[-1]))
    lo = c[k - 1] if k > 0 else 0.0
    frac = (0.5 * c[-1] - lo) / max(c[k] - lo, 1e-300)
    return float((k + frac) * step)


def _touching(label, n):
    """Objects whose truth footprint touches another object's."""
    out = np.zeros(n + 1, bool)
    for a, b in ((label[:, 1:], label[:, :-1]), (label[1:, :], label[:-1, :])):
        d = (a != b) & (a > 0) & (b > 0)
        out[a[d]] = True
        out[b[d]] = True
    return out[1:]


def _bleed(counts, satur):
    """Cap pixels at ``satur`` and spread the excess charge along columns."""
    counts = counts.copy()
    cols = np.nonzero((counts > satur).any(axis=0))[0]
    ny = counts.shape[0]
    for c in cols:
        col = counts[:, c]
        over = np.nonzero(col > satur)[0]
        # contiguous runs
        runs = np.split(over, np.nonzero(np.diff(over) > 1)[0] + 1)
        for rr in runs:
            excess = float((col[rr] - satur).sum())
            col[rr] = satur
            lo, hi = rr[0] - 1, rr[-1] + 1
            while excess > 0 and (lo >= 0 or hi < ny):
                for idx in (lo, hi):
                    if 0 <= idx < ny and excess > 0:
                        room = satur - col[idx]
                        if room > 0:
                            add = min(room, excess / 2.0 if (lo >= 0 and hi < ny) else excess)
                            col[idx] += add
                            excess -= add
                lo -= 1
                hi += 1
        counts[:, c] = col
    return counts


def _smooth_gradient(rng, nx, ny):
    """A smooth unit-amplitude plane over the field (sky-subtraction residual)."""
    a, b = rng.normal(0, 1, 2)
    yy, xx = np.mgrid[0:ny, 0:nx]
    return (a * (xx / nx - 0.5) + b * (yy / ny - 0.5)).astype(np.float32)


def _cosmic_rays(rng, img, sigma, frac_full):
    """Add sharp cosmic-ray tracks in place; return their (x, y, length)."""
    ny, nx = img.shape
    ncr = rng.poisson(8.0 * frac_full)
    out = []
    for _ in range(ncr):
        x, y = rng.uniform(0, nx), rng.uniform(0, ny)
        length = rng.exponential(3.0)
        ang = rng.uniform(0, np.pi)
        amp = sigma * rng.uniform(8, 80)
        m = max(int(math.ceil(length * 2)), 1)
        ts = np.linspace(0, length, m)
        xs = np.clip(np.round(x + ts * math.cos(ang)).astype(int), 0, nx - 1)
        ys = np.clip(np.round(y + ts * math.sin(ang)).astype(int), 0, ny - 1)
        img[ys, xs] += amp * rng.uniform(0.6, 1.0, m)
        out.append((float(x), float(y), float(length)))
    return out


def _align(image, band_wcs, ref_wcs, shape):
    """Bilinear resampling of one band onto the r grid through the WCS."""
    from astrohvae.io.align import align_band

    data, m, _ = align_band(image, None, band_wcs, ref_wcs, shape, order=1)
    return data, m
    from scipy import ndimage

    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx].astype(float)
    ra, dec = ref_wcs.all_pix2world([nx / 2], [ny / 2], 0)
    bx, by = band_wcs.all_world2pix(ra, dec, 0)
    dx, dy = float(bx[0] - nx / 2), float(by[0] - ny / 2)
    coords = np.stack([yy + dy, xx + dx])
    data = ndimage.map_coordinates(image, coords, order=1, mode="nearest").astype(np.float32)
    m = (coords[1] < 0) | (coords[1] > image.shape[1] - 1) | (coords[0] < 0) | (coords[0] > image.shape[0] - 1)
    data[m] = 0.0
    return data, m


# ------------------------------------------------------------------------ I/O
def _names(seed):
    run, camcol, fieldno = field_ids(seed)
    frames = {b: f"frame-{b}-{run:06d}-{camcol}-{fieldno:04d}.fits" for b in BANDS}
    return frames, f"truth-{run:06d}-{camcol}-{fieldno:04d}.fits"


def _is_truth(path):
    """True when ``path`` is a truth file written by `write_simulation`."""
    from astropy.io import fits

    try:
        with fits.open(path) as hdul:
            return "SIMSEED" in hdul[0].header and "TRUTH" in hdul
    except Exception:  # noqa: BLE001 - anything unreadable is not ours
        return False


def write_simulation(out, seed, size=FULL_SIZE, star_fraction=None, overwrite=False, band_offset_scale=1.0):
    """Simulate a field and write it as SDSS-style frames plus a truth file.

    Writes into folder ``out`` (created if needed) the five files
    ``frame-{b}-{run:06d}-{camcol}-{field:04d}.fits`` (uncompressed; HDU 0
    holds the band's image on its own pixel grid, in nanomaggies, with its
    own TAN WCS and SDSS-like keywords) and
    ``truth-{run:06d}-{camcol}-{field:04d}.fits`` (HDU ``TRUTH``: the truth
    table; HDU ``MASK``: the int32 truth segmentation on the r grid).
    ``(run, camcol, field)`` come from the seed (`field_ids`).  Each file is
    written atomically.  ``out`` must be new or empty (hidden files aside):
    one folder holds one field, as `astrohvae.io.readers.read_field` expects;
    a non-empty folder, or an ``out`` that is a file, raises
    `~astrohvae.errors.InputError` and nothing is written.  With
    ``overwrite``, a folder holding only a previous simulation of the same
    seed (its six files) is rewritten.  Fields of more than `MAX_PIXELS`
    pixels are refused.

    Returns
    -------
    list of pathlib.Path
        The five frame files (u, g, r, i, z) then the truth file.
    """
    from astropy.io import fits

    from astrohvae.io.atomic import atomic_path

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    frame_names, truth_name = _names(seed)
    targets = [out / frame_names[b] for b in BANDS] + [out / truth_name]
    if size[0] * size[1] > MAX_PIXELS:
        raise InputError(out, f"a {size[0]}x{size[1]} field exceeds the {MAX_PIXELS:,}-pixel limit")
    if out.is_dir():
        present = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
        if present and overwrite and set(present) <= {t.name for t in targets} and _is_truth(out / truth_name):
            present = []
        if present:
            what = "a simulation of this seed" if any((out / n).exists() for n in (truth_name, frame_names["r"])) else "other files"
            raise InputError(
                out, f"is not empty (holds {present[0]}, {what}); write each field into a new or empty folder"
            )
    sim = simulate_field(seed, size=size, star_fraction=star_fraction, band_offset_scale=band_offset_scale)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for b, path in zip(BANDS, targets):
        img, hdr = sim.frames[b]
        with atomic_path(path) as tmp:
            fits.PrimaryHDU(img, header=hdr).writeto(tmp, overwrite=True)
        paths.append(path)
    truth_hdu = fits.table_to_hdu(sim.truth)
    truth_hdu.name = "TRUTH"
    mask_hdu = fits.ImageHDU(sim.truth_mask.astype(np.int32), name="MASK")
    mask_hdu.header["MASKTHR"] = (MASK_THRESHOLD, "threshold in r sky sigma (noiseless model)")
    primary = fits.PrimaryHDU()
    primary.header["SIMSEED"] = int(seed)
    primary.header["FIELDNM"] = sim.name
    for b in BANDS:
        primary.header[f"SKYSIG_{b.upper()}"] = sim.sky_sigma[b]
        primary.header[f"PSFFWHM{b.upper()}"] = sim.psf_fwhm[b]
    with atomic_path(targets[-1]) as tmp:
        fits.HDUList([primary, truth_hdu, mask_hdu]).writeto(tmp, overwrite=True)
    paths.append(targets[-1])
    return paths


def write_adjacent(out, seed, n=2, size=(256, 256), overlap=128, star_fraction=None, band_offset_scale=1.0):
    """Simulate ``n`` fields of one scan that share ``overlap`` rows with their neighbours.

    Like consecutive SDSS fields of a run (which share 128 rows of the same
    drift scan), one field ``size[0]`` wide and ``n * ny - (n - 1) * overlap``
    rows tall is simulated with ``seed`` and cut into ``n`` fields of
    ``size``; field k starts at row ``k * (ny - overlap)``, so the pixels of
    a shared strip are identical in both fields and its sources are the same.
    Each band keeps its own WCS (the reference pixel moves with the cut).
    Field k is written like `write_simulation` into ``out/RUN-CAMCOL-FIELD``
    with ``FIELD`` = the seed's field number + k; the truth of each holds the
    objects within 20 px of it, ``y`` on its own grid.

    Returns
    -------
    list of pathlib.Path
        The ``n`` field folders, in scan order.
    """
    from astropy.io import fits

    from astrohvae.io.atomic import atomic_path

    nx, ny = int(size[0]), int(size[1])
    n, overlap = int(n), int(overlap)
    if n < 1 or not 0 <= overlap < ny:
        raise ValueError(f"need n >= 1 and 0 <= overlap < {ny} rows, got n={n}, overlap={overlap}")
    run, camcol, first = field_ids(seed)
    if first + n > 10000:
        raise ValueError(f"field numbers {first}..{first + n - 1} do not fit 4 digits; use another seed")
    step = ny - overlap
    out = Path(out)
    names = [f"{run:06d}-{camcol}-{first + k:04d}" for k in range(n)]
    for name in names:
        d = out / name
        if d.exists() and (not d.is_dir() or any(not q.name.startswith(".") for q in d.iterdir())):
            raise InputError(d, "exists and is not an empty folder; write adjacent fields into a new folder")
    sim = simulate_field(seed, size=(nx, ny + (n - 1) * step), star_fraction=star_fraction,
                         band_offset_scale=band_offset_scale)
    folders = []
    for k, name in enumerate(names):
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        y0 = k * step
        for b in BANDS:
            img, hdr = sim.frames[b]
            hdr = hdr.copy()
            hdr["CRPIX2"] = hdr["CRPIX2"] - y0
            with atomic_path(d / f"frame-{b}-{name}.fits") as tmp:
                fits.PrimaryHDU(np.ascontiguousarray(img[y0:y0 + ny]), header=hdr).writeto(tmp, overwrite=True)
        truth = sim.truth[(sim.truth["y"] >= y0 - 20) & (sim.truth["y"] < y0 + ny + 20)]
        truth["y"] = truth["y"] - y0
        truth_hdu = fits.table_to_hdu(truth)
        truth_hdu.name = "TRUTH"
        mask_hdu = fits.ImageHDU(sim.truth_mask[y0:y0 + ny].astype(np.int32), name="MASK")
        mask_hdu.header["MASKTHR"] = (MASK_THRESHOLD, "threshold in r sky sigma (noiseless model)")
        primary = fits.PrimaryHDU()
        primary.header["SIMSEED"] = int(seed)
        primary.header["FIELDNM"] = name
        primary.header["SCANROW0"] = (y0, "first row of this field in the simulated scan")
        with atomic_path(d / f"truth-{name}.fits") as tmp:
            fits.HDUList([primary, truth_hdu, mask_hdu]).writeto(tmp, overwrite=True)
        folders.append(d)
    return folders


def read_truth(path_or_folder):
    """Read a truth file written by `write_simulation`.

    Parameters
    ----------
    path_or_folder : str or os.PathLike
        The ``truth-*.fits`` file, or a folder holding exactly one.

    Returns
    -------
    truth : astropy.table.Table
    mask : numpy.ndarray
        int32 ``(ny, nx)``.
    """
    from astropy.io import fits
    from astropy.table import Table

    p = Path(path_or_folder)
    if p.is_dir():
        found = sorted(p.glob("truth-*.fits"))
        if len(found) != 1:
            raise InputError(p, f"holds {len(found)} truth-*.fits files, expected exactly one")
        p = found[0]
    if not p.exists():
        raise InputError(p, "no such file")
    try:
        with fits.open(p) as hdul:
            t = Table.read(hdul["TRUTH"])
            mask = np.asarray(hdul["MASK"].data, dtype=np.int32)
    except (OSError, KeyError) as exc:
        raise InputError(p, f"not a truth file ({exc.__class__.__name__}: {exc})") from None
    for c in ("type", "subtype"):
        if c in t.colnames and t[c].dtype.kind == "S":
            t[c] = t[c].astype(str)
    return t, mask
