"""Rendering: PSF, Sersic profiles, spiral arms and knots."""

from __future__ import annotations

import math

import numpy as np

#: Structure of late-type discs (``structure=True``): a fraction of the disc
#: light, uniform in KNOT_FRAC, in point-like star-forming knots drawn from
#: the disc's own exponential profile (as GalSim's ``RandomKnots``), about
#: _KNOT_N of them (Poisson, at least 5) of equal flux; and a two-armed
#: logarithmic spiral modulation of the disc, amplitude uniform in ARM_AMP,
#: pitch angle uniform in ARM_PITCH (degrees).  Only discs of half-light
#: radius >= STRUCT_MIN_RE arcsec get them (smaller ones are unresolved).
KNOT_FRAC = (0.1, 0.4)
_KNOT_N = 15
ARM_AMP = (0.0, 0.6)
ARM_PITCH = (10.0, 30.0)
STRUCT_MIN_RE = 0.8


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


def make_psf(target_fwhm_px, rng_params):
    """PSF whose pixel-integrated FWHM equals ``target_fwhm_px``."""
    beta, wing_frac, wing_scale, wing_beta, e1, e2 = rng_params
    f = target_fwhm_px
    for _ in range(4):  # fixed-point on the core FWHM
        psf = _PSF(f, beta, wing_frac, wing_scale, wing_beta, e1, e2)
        f *= target_fwhm_px / psf.pixel_fwhm()
    return _PSF(f, beta, wing_frac, wing_scale, wing_beta, e1, e2)


# ------------------------------------------------------------------ rendering
def render_point(psf, x, y, flux, half, osamp=5, inner=None):
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


class Convolver:
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


def galaxy_components(g, x, y, osamp, half, rng=None):
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
    `galaxy_components`; (xc, yc): the centre in stamp pixels."""
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


def add_stamp(image, stamp, x0, y0):
    """Add ``stamp`` into ``image`` at lower-left (x0, y0), clipping edges."""
    ny, nx = image.shape
    sh, sw = stamp.shape
    ya, yb = max(y0, 0), min(y0 + sh, ny)
    xa, xb = max(x0, 0), min(x0 + sw, nx)
    if ya >= yb or xa >= xb:
        return None
    image[ya:yb, xa:xb] += stamp[ya - y0 : yb - y0, xa - x0 : xb - x0]
    return (slice(ya, yb), slice(xa, xb)), (slice(ya - y0, yb - y0), slice(xa - x0, xb - x0))


def half_light_radius(fine, xc, yc, osamp):
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
