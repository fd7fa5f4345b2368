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
from dataclasses import dataclass
from dataclasses import field as dc_field

import numpy as np

from astrohvae import BANDS, PIXEL_SCALE, REF_BAND
from astrohvae.simulate.render import (
    ARM_AMP,
    ARM_PITCH,
    KNOT_FRAC,
    STRUCT_MIN_RE,
    Convolver,
    add_stamp,
    galaxy_components,
    half_light_radius,
    make_psf,
    render_point,
)

__all__ = ['Simulation', 'simulate_field', 'field_ids', 'MASK_THRESHOLD', 'truth_mask']

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
#: Star counts dN/dm = STAR_AMP 10^(STAR_SLOPE (r - 20)) per deg^2 per mag
#: (times a per-field density factor); galaxies likewise.  Calibrated so
#: that photutils detections per magnitude bin match the real fields.
STAR_AMP, STAR_SLOPE = 800.0, 0.12
GAL_AMP, GAL_SLOPE = 1320.0, 0.43
#: Median disk half-light radius (arcsec) = RE18 10^(RE_SLOPE (r - 18)).
RE18, RE_SLOPE = 1.8, -0.12
#: Extinction coefficients A_b / E(B-V) (Schlafly & Finkbeiner 2011, as in SDSS DR8+).
EXT_R = {"u": 4.239, "g": 3.303, "r": 2.285, "i": 1.698, "z": 1.263}
#: Seeing FWHM relative to r, per band (u worst).
_SEEING_RATIO = {"u": 1.12, "g": 1.05, "r": 1.0, "i": 0.95, "z": 0.94}


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
        get star-forming knots and spiral arms (`KNOT_FRAC`, `ARM_AMP`;
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

    from astrohvae.io.field import Field
    from astrohvae.simulate.population import draw_populations

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
    obj = draw_populations(r_pop, p, nx, ny, star_fraction, margin)
    _structure(r_struct, obj, structure)

    sky_sigma = {b: p["nmgy"][b] * math.sqrt(p["sky"][b] / p["gain"][b] + p["dark"][b]) for b in BANDS}
    psfs, fwhm = {}, {}
    for b in BANDS:
        q = p["psf"][b]
        target = q["fwhm"] / PIXEL_SCALE
        psfs[b] = make_psf(target, (q["beta"], q["wing_frac"], q["wing_scale"], q["wing_beta"], q["e1"], q["e2"]))
        fwhm[b] = float(target * PIXEL_SCALE)

    # positions of every object in every band's grid: a pure offset through
    # the WCS (computed exactly through both WCSs)
    ra, dec = wcss[REF_BAND].all_pix2world(obj["x"], obj["y"], 0)
    pos = {}
    for b in BANDS:
        bx, by = wcss[b].all_world2pix(ra, dec, 0)
        pos[b] = (np.asarray(bx, float), np.asarray(by, float))

    is_star = obj["type"] == "star"
    models, best, label, size_arcsec, snr, edge = _render(obj, p, pos, psfs, fwhm, sky_sigma, nx, ny, r_struct)
    frames, saturated, crs = _frames(models, p, pos, is_star, wcss, sky_sigma, fwhm, r_noise, r_cr, seed,
                                     (run, camcol, fieldno), nx, ny)
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

    t, label, level, owner = _truth_table(obj, best, label, sky_sigma, ra, dec, size_arcsec, snr, edge, saturated,
                                          name, seed, p)
    meta = {"params": p, "cosmic_rays": crs, "run": run, "camcol": camcol, "field": fieldno,
            "truth_level": level, "truth_owner": owner}
    return Simulation(
        field=fld, frames=frames, truth=t, truth_mask=label, sky_sigma=sky_sigma, psf_fwhm=fwhm, meta=meta
    )


def _render(obj, p, pos, psfs, fwhm, sky_sigma, nx, ny, r_struct):
    """Noiseless images of every object in every band (``models``), each pixel's brightest object in r
    (``best`` level and ``label``), and per object its half-light radius, S/N and edge flag."""
    n = len(obj["mag_r"])
    ids = np.arange(1, n + 1)
    models = {b: np.zeros((ny, nx), np.float64) for b in BANDS}
    best = np.zeros((ny, nx), np.float64)
    label = np.zeros((ny, nx), np.int32)
    # all bands share one padded FFT size per stamp (the largest kernel)
    kr_px = max(min(4.0 * p["psf"][b]["fwhm"] / PIXEL_SCALE, 16.0) for b in BANDS)
    convs = {(b, o): Convolver(psfs[b], o, kr_px) for b in BANDS for o in (1, 2, 3)}
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
            comps, _, _ = galaxy_components(
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
            size_arcsec[k] = half_light_radius(fine_r, xr - round(xr) + half, yr - round(yr) + half, osamp) * PIXEL_SCALE
        for b in BANDS:
            bx, by = pos[b][0][k], pos[b][1][k]
            j = BANDS.index(b)
            if is_star[k]:
                st, x0, y0 = render_point(psfs[b], bx, by, obj["flux"][k, j], half, inner=inner)
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
            sl = add_stamp(models[b], st, x0, y0)
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

    return models, best, label, size_arcsec, snr, edge


def _frames(models, p, pos, is_star, wcss, sky_sigma, fwhm, r_noise, r_cr, seed, ids_, nx, ny):
    """SDSS-like frames (counts with sky, noise, saturation and bleed trails, cosmic rays, in nanomaggies)
    with their headers; which stars saturate; the cosmic rays of each band."""
    from astropy.io import fits

    run, camcol, fieldno = ids_
    n = len(is_star)
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
            counts = bleed_trails(counts, _SATUR)
            sat = counts >= _SATUR
            bxp = np.clip(np.round(pos[b][0]).astype(int), 0, nx - 1)
            byp = np.clip(np.round(pos[b][1]).astype(int), 0, ny - 1)
            saturated |= sat[byp, bxp] & is_star
        var = counts / p["gain"][b] + p["dark"][b]
        noise = r_noise.standard_normal((ny, nx)) * np.sqrt(var)
        noise[sat] = 0.0
        img = (counts + noise - p["sky"][b]) * nm
        img += p["sky_resid"] * sky_sigma[b] * _smooth_gradient(r_noise, nx, ny)
        crs[b] = add_cosmic_rays(r_cr, img, sky_sigma[b], nx * ny / (FULL_SIZE[0] * FULL_SIZE[1]))
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

    return frames, saturated, crs


def _truth_table(obj, best, label, sky_sigma, ra, dec, size_arcsec, snr, edge, saturated, name, seed, p):
    """The truth table, the truth mask at `MASK_THRESHOLD`, the brightest-object level and owner maps."""
    from astropy.table import Table

    n = len(obj["mag_r"])
    ids = np.arange(1, n + 1)
    is_star = obj["type"] == "star"
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
    return t, label, level, owner


def _structure(rng, obj, on=True):
    """Draw the knots and spiral arms of the late-type discs into ``obj``
    (``knot_frac``, ``arm_amp``, ``arm_pitch`` in radians, ``arm_phase``;
    zero amplitude for stars, early types, small discs, or ``on=False``)."""
    n = len(obj["mag_r"])
    late = (obj["subtype"] == "late") & (obj["bt"] < 1) & (obj["re_d"] >= STRUCT_MIN_RE) & bool(on)
    obj["knot_frac"] = np.where(late, rng.uniform(*KNOT_FRAC, n), 0.0)
    obj["arm_amp"] = np.where(late, rng.uniform(*ARM_AMP, n), 0.0)
    obj["arm_pitch"] = np.deg2rad(rng.uniform(*ARM_PITCH, n))
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


def _touching(label, n):
    """Objects whose truth footprint touches another object's."""
    out = np.zeros(n + 1, bool)
    for a, b in ((label[:, 1:], label[:, :-1]), (label[1:, :], label[:-1, :])):
        d = (a != b) & (a > 0) & (b > 0)
        out[a[d]] = True
        out[b[d]] = True
    return out[1:]


def bleed_trails(counts, satur):
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


def add_cosmic_rays(rng, img, sigma, frac_full):
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
