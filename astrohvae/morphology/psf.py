"""Label-free morphology: profiles, the field's PSF and PSF-match statistics.

Stars are point sources: their image is the point-spread function (PSF).
Everything here is measured from the stamps themselves, without any label:

* `profile_features` -- half-light radius and concentration of each source
  (g+r+i summed, other sources masked), the quantities of the classical
  SExtractor / SDSS separators;
* `estimate_psf` -- the PSF of a set of stamps (normally one field, or a few
  fields of similar seeing), the median of the flux-normalised, recentred
  stamps of the most compact bright sources (the narrow stellar locus in
  half-light radius);
* `psf_match` -- for every stamp the ratio of its PSF-fitted flux to its
  aperture flux (``~1`` for stars, ``< 1`` for extended sources, the analogue
  of SDSS's ``psfMag - modelMag``) and the normalised residual of the fit.

The stamps may be lazily backed (dask or zarr arrays, as the pipeline's
stamp store gives them): the per-stamp statistics read them `CHUNK` stamps
at a time (`chunked_statistics`, `loaded`), so a field's stamps never need
to be in memory at once.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np

from astrohvae import BANDS
from astrohvae.conventions import GRI as _GRI
from astrohvae.conventions import MASK_INVALID, MASK_OTHER, MASK_OWN, SATURATION_MAG
from astrohvae.morphology.statistics import per_stamp_chunks
from astrohvae.stamps.preprocess import (
    band_valid,
    central_window,
    clean_gri,
    clean_stamps,
    source_flux,
)

__all__ = ['stellar_locus', 'PSF_HALF', 'estimate_psf', 'psf_match', 'PSFModel', 'saturated', 'band_saturated', 'interpolated_core', 'peak_centred']

def morphology_bands(flux, mask, aperture):
    """Which of the summed bands measure each source's morphology, from valid pixels only.

    Sources in an edge strip seen in fewer bands (SDSS bands are offset from
    r along the scan), or with pixels masked in some bands, have pixels of
    their aperture that some bands do not cover.  The bands that cover every
    pixel of the aperture that any of them covers (other sources' pixels
    aside) are summed; when none does, the band that covers most.

    Parameters
    ----------
    flux : ndarray (N, B, wy, wx)
        The summed bands of the stamps (a window of them).
    mask : ndarray uint8 (N, wy, wx)
    aperture : ndarray bool (wy, wx)

    Returns
    -------
    use : ndarray bool (N, B)
        The bands summed for each source.
    good : ndarray bool (N, wy, wx)
        Pixels of no other source that every used band covers.
    missing : ndarray bool (N,)
        Sources whose aperture has pixels none of the used bands covers
        (invalid in every band, or in the band used): their measurement is
        corrected for them (`profile_features`, `psf_match`).
    """
    mask = np.asarray(mask)
    other = (mask & MASK_OTHER) != 0
    if not ((mask & MASK_INVALID) != 0).any():  # every band covers every pixel
        good = ~other
        return np.ones(flux.shape[:2], bool), good, np.zeros(len(flux), bool)
    valid = band_valid(flux, mask)
    need = (~other & valid.any(axis=1))[:, None] & aperture[None, None]
    use = (valid | ~need).all(axis=(2, 3))
    none = ~use.any(axis=1)
    if none.any():
        best = (valid[none] & aperture[None, None]).sum(axis=(2, 3)).argmax(axis=1)
        use[np.flatnonzero(none), best] = True
    good = ~other & (valid | ~use[:, :, None, None]).all(axis=1)
    missing = (~good & ~other & aperture[None]).any(axis=(1, 2))
    return use, good, missing


def shell_profile(img, ok, full, r):
    """Enclosed flux at each distinct radius, the shells' missing pixels filled with their neighbours' brightness.

    ``img`` (n, wy, wx), ``ok`` (n, wy, wx) the valid pixels, ``full``
    (n, wy, wx) the pixels that should count (the aperture, other sources
    aside).  Each shell's flux is its mean surface brightness over its valid
    pixels times its pixels that count; a shell with no valid pixel takes the
    brightness interpolated between its neighbours in radius.  Returns
    ``(radii, enclosed (n, n_radii))``.
    """
    order = np.argsort(r.ravel(), kind="stable")
    rs = r.ravel()[order]
    ur, first = np.unique(rs, return_index=True)
    n = len(img)
    v = (img * ok).reshape(n, -1)[:, order]
    cnt_ok = np.add.reduceat(ok.reshape(n, -1)[:, order].astype(np.float64), first, axis=1)
    cnt = np.add.reduceat(full.reshape(n, -1)[:, order].astype(np.float64), first, axis=1)
    sb = np.add.reduceat(v, first, axis=1) / np.where(cnt_ok > 0, cnt_ok, 1.0)
    for i in range(n):
        has = cnt_ok[i] > 0
        if has.any() and not has.all():
            sb[i, ~has] = np.interp(ur[~has], ur[has], sb[i, has])
    return ur, np.cumsum(sb * cnt, axis=1)


class PSFModel:
    """A PSF image per band, normalised to unit g+r+i flux; see `estimate_psf`."""

    def __init__(self, image, r_half, n_used):
        self.image = np.asarray(image, dtype=np.float32)
        self.r_half = float(r_half)
        self.n_used = int(n_used)

    def __repr__(self):
        return f"PSFModel(r_half={self.r_half:.3f} px, n_used={self.n_used})"


def stellar_locus(r_half, snr, min_snr, min_members=5, min_share=0.2):
    """Half-light radius of the stellar locus and the window's half-width (log units).

    Point sources pile up in a narrow peak of the bright sources' half-light
    radii.  Galaxies may outnumber them and form a broader, *higher* peak at
    larger radii (good seeing, deep fields), so the locus is the
    smallest-radius local maximum of a narrow kernel density estimate that
    holds at least ``min_members`` sources and ``min_share`` of the highest
    peak's sources (not the global mode); sharper isolated spikes (cosmic
    rays, hot pixels) do not make such a peak.
    """
    ok = np.isfinite(r_half) & (snr >= min_snr) & (r_half > 0.3)
    rr = np.log(r_half[ok])
    if rr.size < 5:
        ok = np.isfinite(r_half) & (r_half > 0.3)
        rr = np.log(r_half[ok])
    if rr.size == 0:
        raise ValueError("no measurable source to estimate the PSF from")
    grid = np.linspace(rr.min(), np.quantile(rr, 0.9), 200)
    bw = max(0.03, 0.5 * rr.std() * rr.size ** (-0.2) / 2)
    kb = 0.04  # the locus's own width at S/N >= 50 (log units)
    dens = np.exp(-0.5 * ((grid[:, None] - rr[None]) / kb) ** 2).sum(axis=1)
    peaks = np.flatnonzero((dens >= np.r_[-1.0, dens[:-1]]) & (dens >= np.r_[dens[1:], -1.0]))
    members = np.array([(np.abs(rr - grid[k]) <= 2 * kb).sum() for k in peaks])
    good = peaks[(members >= min(min_members, members.max())) & (members >= min_share * members.max())]
    mode = grid[good[0]] if good.size else grid[np.argmax(dens)]
    return float(np.exp(mode)), float(bw)


@per_stamp_chunks
def saturated(stamps, n_flat=4, half=8, rel=0.005, min_peak_snr=50.0, interpolated=True):
    """Saturated sources (flat-topped or interpolated cores), without labels.

    A saturated detector pixel is clipped at the full-well level, so the core
    of a saturated source is a plateau of (nearly) equal values, and bleed
    trails extend it along columns.  A source is called saturated when, in
    any band, at least ``n_flat`` pixels of the central ``2 half`` x ``2 half``
    box lie within a fraction ``rel`` of the box's maximum, and that maximum
    is at least ``min_peak_snr`` times the sky noise (an unresolved noise peak
    is never flat).  Measured on simulated fields: every star brighter than
    r = 14 and most of 14 < r < 14.5 are caught, no galaxy is.

    SDSS frames are not flat-topped there: the saturated pixels and bleed
    trails are interpolated along rows, and such cores hold runs of collinear,
    noiseless pixels (`interpolated_core`); with ``interpolated`` those are
    saturated too.

    Returns
    -------
    ndarray bool (N,)
    """
    flux = np.asarray(stamps.flux)
    n, b, ny, nx = flux.shape
    core = flux[:, :, ny // 2 - half : ny // 2 + half, nx // 2 - half : nx // 2 + half]
    box = np.nan_to_num(np.asarray(core, dtype=np.float32)).reshape(n, b, -1)
    mx = box.max(axis=2)
    nflat = (box >= (mx * (1.0 - rel))[:, :, None]).sum(axis=2)
    sky = np.asarray(stamps.sky_sigma, dtype=np.float32)
    bright = mx >= min_peak_snr * np.where(np.isfinite(sky), sky, np.inf)
    flat = ((nflat >= n_flat) & bright).any(axis=1)
    if interpolated:
        flat |= interpolated_core(stamps)
    return flat


INTERP_LEVEL = 200.0
"""`interpolated_core`: pixels at least this many sky sigma above the sky ..."""

INTERP_REL = 0.02
"""... whose second difference along the row is at most this fraction of their value ..."""

INTERP_RUN = 3
"""... in this many consecutive positions of one row (5 collinear pixels)."""


@per_stamp_chunks
def interpolated_core(stamps, half=10, rows=4, level=INTERP_LEVEL, rel=INTERP_REL, run=INTERP_RUN):
    """Cores that SDSS interpolated over (saturated stars in SDSS frames), without labels.

    The SDSS photometric pipeline replaces saturated pixels and bleed trails
    by a linear interpolation along the row: the interpolated pixels carry no
    noise and lie on a straight line (up to the per-column flat-field
    calibration, ~1 %).  A real, noisy bright profile never has ``run + 2``
    collinear pixels in a row at ``level`` sky sigma (Poisson noise there is
    several sky sigma).  A source is flagged when, in any band, some row of
    the central ``2 rows + 1`` x ``2 half`` box has ``run`` consecutive pixels at or above
    ``level`` x sky sigma with ``|f[x-1] - 2 f[x] + f[x+1]| <= rel f[x]``;
    only the ``rows`` rows either side of the centre are searched (the
    saturated core; a bright galaxy's outer rows can be nearly straight).
    Measured on the eight real fields: it fires for 11 of the 67 sources
    brighter than r = 14 and for none of the 17,920 fainter ones
    (benchmarks/bright_stars.py).

    Returns
    -------
    ndarray bool (N,)
    """
    flux = np.asarray(stamps.flux)
    ny, nx = flux.shape[-2:]
    c = np.nan_to_num(np.asarray(flux[:, :, ny // 2 - rows : ny // 2 + rows + 1, nx // 2 - half : nx // 2 + half],
                                 dtype=np.float64))
    sky = np.asarray(stamps.sky_sigma, dtype=np.float64)[:, :, None, None]
    mid = c[..., 1:-1]
    d2 = np.abs(c[..., :-2] - 2.0 * mid + c[..., 2:])
    ok = (mid >= level * np.where(np.isfinite(sky), sky, np.inf)) & (d2 <= rel * mid)
    m = ok.shape[-1] - run + 1
    hit = ok[..., :m].copy()
    for k in range(1, run):
        hit &= ok[..., k : k + m]
    return hit.any(axis=(1, 2, 3))


PEAK_MIN_SNR = 300.0
"""`peak_centred`: only sources whose own segment has at least this g+r+i S/N (r <~ 17) are moved ..."""

PEAK_MIN_OFFSET = 3
"""... only when their brightest own pixel lies at least this many pixels (along x or y) from the centre ..."""

PEAK_CONTRAST = 0.3
"""... and the centre pixel holds at most this fraction of that pixel's g+r+i value (a hollow,
interpolated saturated core has its brightest pixels on its rim, next to a bright centre)."""


def peak_centred(stamps, min_snr=PEAK_MIN_SNR, min_offset=PEAK_MIN_OFFSET, contrast=PEAK_CONTRAST, search=12):
    """``stamps`` with every bright source's stamp centred on its own brightest pixel.

    A stamp is centred on its segment's centroid.  When a bright star's
    segment merges with neighbours (crowded fields), that centroid can lie
    several pixels off the star, and every statistic measured about the
    stamp centre then describes the blend's outskirts.  For sources with an
    own-segment g+r+i S/N of at least ``min_snr`` whose brightest own-segment
    g+r+i pixel within ``search`` pixels of the centre lies ``min_offset`` or
    more pixels away (along x or y), while the centre pixel holds at most
    ``contrast`` times its value, flux and mask are shifted so that it sits
    at the centre (pixels shifted in from outside are invalid, mask bit 4).
    Saturated cores (`interpolated_core`, `saturated`'s flat tops, hollow
    interpolated cores that the contrast test keeps) are left alone: their
    brightest pixel is the interpolation's, not the star's centre.

    Returns
    -------
    StampSet-like
        ``stamps`` itself when no stamp moves, else a copy (numpy arrays).
    """
    from astrohvae.morphology.statistics import loaded
    st = loaded(stamps)
    flux = st.flux
    mask = np.asarray(st.mask)
    n, _, ny, nx = flux.shape
    if n == 0:
        return stamps
    cy, cx = ny // 2, nx // 2
    box = (slice(None), slice(cy - search, cy + search + 1), slice(cx - search, cx + search + 1))
    gri = clean_gri(flux, mask)
    own = (mask & MASK_OWN) != 0
    sky = np.asarray(st.sky_sigma, dtype=np.float64)
    noise = np.sqrt((sky[:, _GRI] ** 2).sum(axis=1) * np.maximum(own.sum(axis=(1, 2)), 1))
    snr = (gri * own).sum(axis=(1, 2), dtype=np.float64) / np.maximum(noise, 1e-12)
    sub = np.where(own[box], gri[box], -np.inf).reshape(n, -1)
    k = sub.argmax(axis=1)
    w = 2 * search + 1
    dy, dx = k // w - search, k % w - search
    peak = sub.max(axis=1)
    move = (snr >= min_snr) & (np.maximum(np.abs(dy), np.abs(dx)) >= min_offset) & np.isfinite(peak)
    move &= gri[:, cy, cx] <= contrast * np.where(np.isfinite(peak), peak, 0.0)
    if not move.any():
        return stamps
    idx = np.flatnonzero(move)
    move[idx[saturated(SimpleNamespace(flux=flux[idx], mask=mask[idx], sky_sigma=st.sky_sigma[idx]))]] = False
    if not move.any():
        return stamps
    flux, mask = np.array(flux, copy=True), np.array(mask, copy=True)
    for i in np.flatnonzero(move):
        f = np.zeros_like(flux[i])
        m = np.full_like(mask[i], 4)
        a, b = int(dy[i]), int(dx[i])
        ys, yd = (slice(a, ny), slice(0, ny - a)) if a >= 0 else (slice(0, ny + a), slice(-a, ny))
        xs, xd = (slice(b, nx), slice(0, nx - b)) if b >= 0 else (slice(0, nx + b), slice(-b, nx))
        f[:, yd, xd] = flux[i][:, ys, xs]
        m[yd, xd] = mask[i][ys, xs]
        flux[i], mask[i] = f, m
    meta = getattr(st, "meta", None)
    return SimpleNamespace(flux=flux, mask=mask, sky_sigma=st.sky_sigma, meta=meta)


@per_stamp_chunks
def band_saturated(stamps, psf_image, hi=0.85, lo=0.6, min_snr=50.0, max_mag=SATURATION_MAG, pedestal=(3.5, 6.0),
                   inner=3.0):
    """Point sources saturated in some bands but not in others.

    SDSS frames interpolate over saturated cores: not flat-topped (so
    `saturated` misses them) but hollow, and a bright star then looks
    extended in g, r, i while u or z, less sensitive, still shows the PSF.
    A source is flagged when, among its bands measured at S/N >= ``min_snr``
    (inside 5 px), one has the PSF's concentration (flux within 1.5 px over
    flux within 5 px, at least ``hi`` times the field PSF's in that band) and
    another, brighter than ``max_mag`` there (`SATURATION_MAG`), a core deficit
    (at most ``lo`` times).  A galaxy is extended in every band; on the real
    fields, galaxies reach at most 0.67.

    In a crowded field the neighbours inside 5 px and the unresolved
    starlight lower a star's concentration in every band.  With ``pedestal``
    (inner, outer radius), the test is also made on a local version: each
    band minus the median of its valid pixels in that annulus (the star's
    wings, its neighbours' light and the background; the PSF's own annulus
    median is removed likewise), concentration = flux within 1.5 px over flux
    within ``inner`` px.  A source passing either version is flagged.  On
    the crowded real field 005405-6-0099 this finds 3 more of its 117
    sources brighter than r = 15 (benchmarks/bright_stars.py).

    Parameters
    ----------
    stamps : StampSet-like
    psf_image : ndarray (B, ny, nx)
        The field's PSF per band (`estimate_psf`).

    Returns
    -------
    ndarray bool (N,)
    """
    from astrohvae.morphology.statistics import radius_grid
    from astrohvae.photometry import luptitude

    flux = np.asarray(stamps.flux, dtype=np.float32)
    mask = np.asarray(stamps.mask, dtype=np.uint8)
    ny, nx = flux.shape[-2:]
    half = int(np.ceil(max(5.0, pedestal[1] if pedestal else 5.0)))
    win = central_window(ny, nx, half)
    r = radius_grid(win[0].stop - win[0].start, win[1].stop - win[1].start,
                    ny // 2 - win[0].start, nx // 2 - win[1].start)
    core, ap = (r <= 1.5), (r <= 5.0)
    c = clean_stamps(flux, mask, window=win).astype(np.float64)
    f_in, f_ap = (c * core).sum(axis=(2, 3)), (c * ap).sum(axis=(2, 3))
    p = np.asarray(psf_image, np.float64)[(slice(None),) + win]
    c_psf = (p * core).sum(axis=(1, 2)) / np.maximum((p * ap).sum(axis=(1, 2)), 1e-12)
    sky = np.asarray(stamps.sky_sigma, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = f_in / f_ap / c_psf[None]
        snr = f_ap / (sky * np.sqrt(ap.sum()))
        mag = np.stack([luptitude(f_ap[:, k], b) for k, b in enumerate(BANDS)], axis=1)
    ok = np.isfinite(rel) & (snr >= min_snr)
    bright = ok & (mag < max_mag)
    flag = ((rel >= hi) & ok).any(axis=1) & ((rel <= lo) & bright).any(axis=1)
    if pedestal:
        ann = (r >= pedestal[0]) & (r <= pedestal[1])
        valid = ((mask[(slice(None),) + win] & 4) == 0)[:, None] & ann[None, None] & np.isfinite(c)
        n = c.shape[0]
        with warnings.catch_warnings():  # a band with no valid annulus pixel: no pedestal
            warnings.simplefilter("ignore", RuntimeWarning)
            ped = np.nanmedian(np.where(valid, c, np.nan).reshape(n, c.shape[1], -1), axis=2) if n else c[:, :, 0, 0]
        ped = np.where(np.isfinite(ped), ped, 0.0)
        g = c - ped[:, :, None, None]
        pp = p - np.median(p[:, ann], axis=1)[:, None, None]
        mid = r <= inner
        cp = (pp * core).sum(axis=(1, 2)) / np.maximum((pp * mid).sum(axis=(1, 2)), 1e-12)
        with np.errstate(invalid="ignore", divide="ignore"):
            rl = (g * core).sum(axis=(2, 3)) / (g * mid).sum(axis=(2, 3)) / cp[None]
        okl = np.isfinite(rl) & (snr >= min_snr)
        flag |= ((rl >= hi) & okl).any(axis=1) & ((rl <= lo) & okl & (mag < max_mag)).any(axis=1)
    return flag


PSF_HALF = 12
"""The PSF is kept within this many pixels of the stamp centre."""


def _psf_candidates(flux, mask, sky):
    """Recentred, flux-normalised central windows (N, B, 25, 25) of the PSF stars (float64)."""
    from astrohvae.morphology.statistics import centroids, recentre
    flux = np.asarray(flux, dtype=np.float32)
    mask = np.asarray(mask, dtype=np.uint8)
    clean = clean_stamps(flux, mask)
    dy, dx = centroids(clean[:, _GRI].sum(axis=1))
    clean = recentre(clean, dy, dx)
    f = source_flux(clean, mask, sky)
    # the median runs over the central window only
    win = (slice(None), slice(None)) + central_window(*clean.shape[-2:], PSF_HALF)
    return clean[win] / f[:, None, None, None]


def _stack(candidates, shape):
    """The PSF image ``shape`` (B, ny, nx): median of the candidates, unit g+r+i flux within `PSF_HALF`."""
    from astrohvae.morphology.statistics import radius_grid
    ny, nx = shape[-2:]
    win = (slice(None),) + central_window(ny, nx, PSF_HALF)
    img = np.zeros(shape, candidates.dtype)
    img[win] = np.median(candidates, axis=0)
    r = radius_grid(ny, nx)
    img = np.where(r[None] <= PSF_HALF, img, 0.0)
    img /= img[_GRI].sum()
    return img


PSF_ITERATIONS = 2
"""Rounds of `estimate_psf`'s sigma-clipping of the stellar locus in SPREAD_MODEL."""


def estimate_psf(stamps, min_snr=50.0, max_stars=300, features=None, iterations=None, saturated_flags=None):
    """PSF of ``stamps`` from its most compact bright sources, without labels.

    The bright sources (S/N >= ``min_snr``) are placed by half-light radius;
    point sources pile up in a narrow peak (the stellar locus) at the small
    end, galaxies spread over larger radii.  The bright sources (S/N >=
    ``min_snr``, lowered only when fewer than 8) within a narrow window
    (+-0.06 in log radius) around the locus, saturated ones excluded (`saturated`: their
    clipped cores would broaden the PSF), are recentred, divided by their
    flux and median-stacked.  Then, ``iterations`` times, SPREAD_MODEL of the
    candidates against the current PSF is measured and the outliers (more
    than 3 robust sigma from the candidates' median: compact galaxies,
    blends) are dropped before stacking again.

    Parameters
    ----------
    stamps : StampSet-like
    min_snr : float
    max_stars : int
    features : dict, optional
        Precomputed `profile_features(stamps)`.
    iterations : int, optional
        Default `PSF_ITERATIONS`.
    saturated_flags : ndarray of bool, optional
        Precomputed `saturated(stamps)`.

    Returns
    -------
    PSFModel
    """
    from astrohvae.morphology.statistics import load_chunk, profile_features
    feat = profile_features(stamps) if features is None else features
    sat = saturated(stamps) if saturated_flags is None else np.asarray(saturated_flags, bool)
    rh = feat["r_half"]
    snr = np.where(sat, 0.0, feat["snr"])
    r_star, bw = stellar_locus(rh, snr, min_snr)
    win = np.isfinite(rh) & (np.abs(np.log(np.where(rh > 0, rh, 1e-3)) - np.log(r_star)) < 0.06) & ~sat
    # bright locus members only: at low S/N compact galaxies scatter into the
    # window and would outnumber the stars
    for floor in (min_snr, 0.5 * min_snr, 0.0):
        sel = win & (snr >= floor)
        if sel.sum() >= 8:
            break
    idx = np.flatnonzero(sel)
    if idx.size > 8:
        # stars with pixels some band lacks (edge strips, masks) would stack zeros into that band
        w = (slice(None),) + central_window(*np.shape(stamps.mask)[-2:], PSF_HALF)
        full = ~((load_chunk(stamps.mask[idx], np.uint8)[w] & MASK_INVALID) != 0).any(axis=(1, 2))
        if full.sum() >= 8:
            idx = idx[full]
    if idx.size == 0:
        idx = np.argsort(np.abs(np.where(sat, np.inf, rh) - r_star))[:5]
    idx = idx[np.argsort(-snr[idx])][:max_stars]
    # the candidates are read, cleaned and recentred once; each round stacks a subset
    sub = SimpleNamespace(flux=load_chunk(stamps.flux[idx], np.float32), mask=load_chunk(stamps.mask[idx], np.uint8),
                          sky_sigma=load_chunk(stamps.sky_sigma[idx], np.float32))
    shape = (sub.flux.shape[1],) + tuple(sub.flux.shape[-2:])
    cand = _psf_candidates(sub.flux, sub.mask, sub.sky_sigma)
    img = _stack(cand, shape)
    n_iter = PSF_ITERATIONS if iterations is None else int(iterations)
    for _ in range(n_iter):
        if idx.size < 8:
            break
        sp = psf_match(sub, PSFModel(img, r_star, idx.size))["spread_model"]
        med = np.median(sp)
        mad = 1.4826 * np.median(np.abs(sp - med))
        keep = np.abs(sp - med) <= max(3.0 * mad, 1e-3)
        if keep.all() or keep.sum() < 5:
            break
        idx, cand = idx[keep], cand[keep]
        sub = SimpleNamespace(flux=sub.flux[keep], mask=sub.mask[keep], sky_sigma=sub.sky_sigma[keep])
        img = _stack(cand, shape)
    return PSFModel(img, r_star, idx.size)


@per_stamp_chunks
def psf_match(stamps, psf, radius=5.0):
    """PSF-fit flux over aperture flux, and the fit's normalised residual.

    For every stamp (recentred on its g+r+i centroid) the PSF amplitude is
    fitted by least squares over the pixels within ``radius`` of the centre
    (other sources masked), summing g, r and i.  ``psf_ratio`` is
    ``F_psf / F_aperture`` with the aperture flux inside the same radius
    corrected by the PSF's own enclosed fraction: ``~1`` for point sources,
    smaller for extended ones.  ``chi`` is the root-mean-square residual in
    units of the sky noise, divided by the square root of the S/N.

    Returns
    -------
    dict of ndarray (N,) : ``psf_ratio``, ``chi``, ``spread_model`` (SExtractor's
    SPREAD_MODEL: ``(G.I)/(P.I) - (G.P)/(P.P)`` with ``G`` the PSF convolved
    with an exponential disc of scale FWHM/16; ~0 for stars, > 0 extended),
    ``spread_err`` (its error from the white sky noise of the summed bands,
    SExtractor's SPREADERR_MODEL: ``sigma sqrt((P.I)^2 G.G + (G.I)^2 P.P -
    2 (G.I)(P.I)(G.P)) / (P.I)^2``; inf where ``P.I <= 0``)
    """
    from astrohvae.morphology.statistics import radius_grid
    flux = np.asarray(stamps.flux, dtype=np.float32)
    mask = np.asarray(stamps.mask, dtype=np.uint8)
    sky = np.asarray(stamps.sky_sigma, dtype=np.float64)
    ny, nx = flux.shape[-2:]
    win = central_window(ny, nx, int(np.ceil(2 * radius)))
    mwin = mask[(slice(None),) + win]
    r = radius_grid(win[0].stop - win[0].start, win[1].stop - win[1].start, ny // 2 - win[0].start,
                    nx // 2 - win[1].start)
    bands = np.asarray(psf.image)[_GRI]
    out = _psf_match_rows(clean_gri(flux, mask), (mwin & 6) == 0, None, bands.sum(axis=0).astype(np.float64), psf,
                          sky, win, r,
                          radius)
    hit = np.flatnonzero(((mwin & MASK_INVALID) != 0).any(axis=(1, 2)))
    if hit.size:
        # valid pixels only: the bands that cover the fit's window (`morphology_bands`),
        # the PSF of those bands, and the aperture correction for the pixels none covers
        fk = flux[hit][:, _GRI]
        use, good, _ = morphology_bands(fk[(slice(None), slice(None)) + win], mwin[hit], r <= 2 * radius)
        img = (clean_stamps(fk, mask[hit], per_band=True) * use[:, :, None, None]).sum(axis=1)
        miss = ~good & ((mwin[hit] & MASK_OTHER) == 0)
        for combo in np.unique(use, axis=0):
            rows = np.flatnonzero((use == combo).all(axis=1))
            res = _psf_match_rows(img[rows], good[rows], miss[rows], bands[combo].sum(axis=0).astype(np.float64), psf,
                                  sky[hit[rows]],
                                  win, r, radius)
            for key, v in res.items():
                out[key][hit[rows]] = v
    return out


def _psf_match_rows(img, good_win, miss_win, p, psf, sky, win, r, radius):
    """`psf_match` of the summed-band images ``img`` (n, ny, nx) against the summed-band PSF ``p``.

    ``good_win``: the valid pixels of no other source in the window ``win``;
    ``miss_win``: those no used band covers (None: none), left out of the
    aperture correction's enclosed PSF fraction.
    """
    from astrohvae.morphology.statistics import centroids, recentre
    sky = np.asarray(sky, dtype=np.float64)
    dy, dx = centroids(img)
    img = recentre(np.asarray(img, dtype=np.float32)[:, None], dy, dx)[:, 0]
    fwhm = 2.0 * psf.r_half if psf.r_half > 0 else 3.5
    g = _extended_model(p, fwhm / 16.0)
    # every weight below is 0 beyond 2 x radius: the sums run over the central
    # window only (the recentring and the model above need the whole stamp)
    img = img[(slice(None),) + win].astype(np.float64)
    p, g = p[win], g[win]
    ap = (r <= radius)
    good = good_win & ap[None]
    pp = p[None] * good
    a = (pp * img).sum(axis=(1, 2)) / np.maximum((pp * p[None]).sum(axis=(1, 2)), 1e-12)
    enc = (p * ap).sum()
    if miss_win is not None:  # the PSF's fraction on the aperture's pixels that have data
        enc = enc - (p[None] * (miss_win & ap[None])).sum(axis=(1, 2))
    f_ap = (img * good).sum(axis=(1, 2)) / np.maximum(enc, 1e-6)
    ratio = a / np.where(np.abs(f_ap) > 1e-12, f_ap, 1e-12)
    sig = np.sqrt((sky[:, _GRI] ** 2).sum(axis=1))
    resid = ((img - a[:, None, None] * p[None]) * good)
    rms = np.sqrt((resid**2).sum(axis=(1, 2)) / np.maximum(good.sum(axis=(1, 2)), 1)) / np.maximum(sig, 1e-12)
    snr = np.abs(f_ap) * enc / np.maximum(sig * np.sqrt(ap.sum()), 1e-12)
    chi = rms / np.sqrt(np.maximum(snr, 1.0))
    # SExtractor's SPREAD_MODEL (Desai et al. 2012): linear discriminant
    # between the PSF and the PSF convolved with a small exponential disc
    big = (r <= 2 * radius)[None] & good_win
    gi = (g[None] * img * big).sum(axis=(1, 2))
    pi = (p[None] * img * big).sum(axis=(1, 2))
    gp = (g[None] * p[None] * big).sum(axis=(1, 2))
    pp2 = (p[None] ** 2 * big).sum(axis=(1, 2))
    pi_safe = np.where(np.abs(pi) > 1e-12, pi, 1e-12)
    spread = np.clip(gi / pi_safe - gp / np.maximum(pp2, 1e-12), -0.1, 0.2)
    # its error from white pixel noise (SExtractor's SPREADERR_MODEL): for a point source of PSF-fit
    # S/N s it is sqrt(G.G/P.P - (G.P/P.P)^2) / s, a property of the PSF (Desai et al. 2012, eq. 3)
    gg = (g[None] ** 2 * big).sum(axis=(1, 2))
    var = np.maximum(pi**2 * gg + gi**2 * pp2 - 2.0 * gi * pi * gp, 0.0)
    err = sig * np.sqrt(var) / pi_safe**2
    err = np.where(pi > 0, err, np.inf)
    return {"psf_ratio": ratio, "chi": chi, "spread_model": spread, "spread_err": err}


def _extended_model(p, h):
    """``p`` convolved with an exponential disc of scale length ``h`` pixels (Fourier)."""
    ny, nx = p.shape
    ky = np.fft.fftfreq(ny)[:, None]
    kx = np.fft.rfftfreq(nx)[None, :]
    k2 = ky**2 + kx**2
    ft = (1.0 + (2 * np.pi) ** 2 * h**2 * k2) ** -1.5
    return np.fft.irfft2(np.fft.rfft2(p) * ft, s=(ny, nx))
