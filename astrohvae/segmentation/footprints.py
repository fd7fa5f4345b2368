"""Footprint rules: isophotal growth to the user's isophote, fragment merging."""

from __future__ import annotations

import numpy as np

from astrohvae.detection.centroids import source_stamps, windowed_centroids
from astrohvae.segmentation.seeds import (
    annulus_sums,
    segment_moments,
)

__all__ = ['grow_isophotal', 'merge_fragments', 'psf_profile']

KEEP_LEVEL = 2.0
"""A faint source's seed pixel outside its footprint stays in the footprint when the image smoothed
by a 1-px Gaussian exceeds this multiple of the isophote there (`grow_isophotal`); a pixel is worth
keeping when more than IoU / (1 + IoU) ~ 0.45 of such pixels belong to the truth.  With the
PSF-convolved exponential ellipses of faint sources, the seed pixels outside them at 1.5-2 times
the isophote are 32-42 % truth on tuning seeds 10-14 (with circles of the stretched PSF, at
0.75-1 times, 49 %, hence 1.5 then); at 2 it is the limit every released seed pixel obeys
(`_assign`)."""

EXP_MAX_SCALE = 4.0
"""Largest exponential scale length (pixels) of a faint source's model (`_psf_radii`): beyond it the
windowed variance, measured within the PSF's own width, no longer tells scales apart."""


def psf_profile(image, segm_data, cy, cx, snr, valid=None, snr_range=(30.0, 400.0), step=0.5, rmax=10.0,
                fraction=0.3, min_stars=5, max_sources=400):
    """The field's azimuthal PSF profile, from its most concentrated bright sources.

    Segments with ``snr_range[0] <= snr < snr_range[1]`` are profiled in
    circular bins of ``step`` pixels about their centres (``cy, cx``:
    windowed centroids), over their own and free valid pixels, each profile
    normalised by its mean within 1.5 px (at most ``max_sources``, those of
    highest S/N, in a crowded field).  The ``fraction`` most concentrated
    ones (ratio of the mean within 1.5 px to the mean at 1.5-3 px: the stars,
    whatever the field's star-galaxy mix) are median-combined.  No labels,
    no PSF model: the profile is measured on the field itself.

    Returns
    -------
    (radii, profile) : tuple of numpy.ndarray, or None
        Bin centres (pixels) and the monotonically non-increasing profile
        (1 near the centre); None when fewer than ``min_stars`` sources
        qualify.
    """
    lab = np.flatnonzero((snr >= snr_range[0]) & (snr < snr_range[1]))
    lab = lab[lab > 0]
    if lab.size > max_sources:
        lab = np.sort(lab[np.argsort(-snr[lab])[:max_sources]])
    n_use = int(round(fraction * lab.size))
    if n_use < min_stars:
        return None
    half = int(np.ceil(rmax))
    idx, inside, yy, xx = source_stamps(image.shape, cy[lab], cx[lab], half)
    s = segm_data.ravel()[idx]
    ok = inside & ((s == 0) | (s == lab[:, None, None]))
    if valid is not None:
        ok &= valid.ravel()[idx]
    v = image.ravel()[idx]
    rr = np.hypot(yy - cy[lab][:, None, None], xx - cx[lab][:, None, None])
    cnt, tot = annulus_sums(rr, ok, v, step, rmax)
    prof = tot / np.maximum(cnt, 1)
    prof[cnt == 0] = np.nan

    def mean_in(sel):
        m = ok & sel
        return (v * m).sum(axis=(1, 2)) / np.maximum(m.sum(axis=(1, 2)), 1)

    core = mean_in(rr < 1.5)
    conc = core / np.maximum(mean_in((rr >= 1.5) & (rr < 3.0)), 1e-6)
    good = core > 0
    if good.sum() < min_stars:
        return None
    order = np.flatnonzero(good)[np.argsort(-conc[good])][:max(min_stars, n_use)]
    with np.errstate(all="ignore"):
        prof = np.nanmedian(prof[order] / core[order, None], axis=0)
    if np.isnan(prof[0]):
        prof[0] = np.nanmax(prof)
    prof = np.fmin.accumulate(np.where(np.isnan(prof), np.inf, prof))
    return (np.arange(prof.size) + 0.5) * step, prof


def _psf_radii(image, segm_data, lab, cy, cx, psf, isophote, valid, fit_radius=3.0, half=7, size=None,
               max_scale=EXP_MAX_SCALE, shape_noise=None):
    """Isophotal radii of faint segments from their PSF-convolved profiles (see `grow_isophotal`).

    Without ``size`` each source's profile is the PSF's.  With
    ``size = (size_image, (radii, profile))`` (an image of higher S/N, e.g.
    the smoothed g+r+i sum, and its own PSF profile), each source's profile
    is an exponential disc of scale length ``h`` (0: a point source, up to
    ``max_scale`` px) convolved with the PSF (`_exp_models`): ``h`` is the
    one whose model on ``size_image`` has the source's Gaussian-windowed
    variance there (`windowed_sigma2`, window the size PSF's
    Gaussian-equivalent sigma).  A faint galaxy is wider than the PSF, a
    faint star is not, and a resolved galaxy's light falls off
    exponentially in its outskirts, where its isophote lies, not as a
    stretched PSF does.

    Returns ``(R, idx, rr, free)`` for painting: radii (0: no growth), the
    stamps' flat indices, radial distances and free-pixel masks.
    """
    radii, prof = psf
    idx, inside, yy, xx = source_stamps(image.shape, cy, cx, half)
    s = segm_data.ravel()[idx]
    ok = inside & ((s == 0) | (s == lab[:, None, None]))
    if valid is not None:
        ok &= valid.ravel()[idx]
    rr = np.hypot(yy - cy[:, None, None], xx - cx[:, None, None])
    if size is None:
        grid, table, h_of = radii, prof[None, :], np.zeros(lab.size)
    else:
        size_image, (sr, sp) = size
        # window: the Gaussian of the size PSF's half-maximum radius
        sigma_w = float(np.interp(-0.5 * sp[0], -sp, sr)) / np.sqrt(2 * np.log(2))
        scales, grid, table, size_table = _exp_models((radii, prof), (sr, sp), max_scale)
        s_mod = np.array([windowed_sigma2(np.interp(rr[0], grid, p, right=0.0), rr[0], True, sigma_w)
                          for p in size_table])
        s_src = windowed_sigma2(size_image.ravel()[idx], rr, ok, sigma_w)
        # the models' windowed variance grows with h (forced to, where the window saturates); a source
        # narrower than the PSF is a point source, one wider than the widest model that model
        h_of = np.interp(s_src, np.maximum.accumulate(s_mod), np.arange(scales.size))
    # each source's profile: interpolated between the tabulated models of the neighbouring scales
    k0 = np.minimum(np.floor(h_of).astype(np.int64), table.shape[0] - 1)
    k1 = np.minimum(k0 + 1, table.shape[0] - 1)
    f = (h_of - k0)[:, None]
    src_prof = (1 - f) * table[k0] + f * table[k1]
    t = _interp_rows(rr, grid, src_prof) * (ok & (rr < fit_radius))
    A = (t * image.ravel()[idx]).sum(axis=(1, 2)) / np.maximum((t * t).sum(axis=(1, 2)), 1e-12)
    R = np.zeros(lab.size)
    grow = A * src_prof[:, 0] > isophote
    if grow.any():
        # where each (non-increasing) scaled profile falls to the isophote, linearly interpolated
        level = isophote / A[grow]
        p = src_prof[grow]
        below = p < level[:, None]
        k = np.where(below.any(axis=1), np.argmax(below, axis=1), grid.size - 1)
        k = np.maximum(k, 1)
        rows = np.arange(k.size)
        p0, p1 = p[rows, k - 1], p[rows, k]
        frac = np.clip((p0 - level) / np.maximum(p0 - p1, 1e-12), 0.0, 1.0)
        R[grow] = grid[k - 1] + frac * (grid[k] - grid[k - 1])
    if size is not None and shape_noise is not None:
        # the footprint is the ellipse of the source's measured shape with the circle's area
        dy, dx = yy - cy[:, None, None], xx - cx[:, None, None]
        q, cos_t, sin_t = _windowed_shape(size_image.ravel()[idx], dy, dx, ok, sigma_w, shape_noise)
        u = dx * cos_t[:, None, None] + dy * sin_t[:, None, None]
        v = dy * cos_t[:, None, None] - dx * sin_t[:, None, None]
        rr = np.sqrt(u * u * q[:, None, None] + v * v / q[:, None, None])
    return np.minimum(R, half), idx, rr, ok & (s == 0)


def _windowed_shape(v, dy, dx, ok, sigma_w, noise_var):
    """Axis ratio and major-axis direction of sources from Gaussian-windowed second moments, noise-debiased.

    ``v``, ``dy``, ``dx``, ``ok``: ``(n, h, w)`` values, offsets from the
    centres and usable pixels; ``sigma_w``: the window's sigma;
    ``noise_var``: the variance of a sum of the image's pixels per unit
    squared weight (its pixel variance times its correlation area,
    `_noise_power`).  The windowed moments are deconvolved from the window
    (as `windowed_sigma2`, per principal axis) and give the ellipticity
    ``e = (s1 - s2) / (s1 + s2)`` of the source as seen (PSF included); its
    modulus is debiased for noise, ``|e|^2 - var(e1) - var(e2)`` (each
    component's variance propagated from ``noise_var``), clipped at 0: a
    faint source whose elongation is within its noise is drawn round.

    Returns
    -------
    (q, cos, sin) : tuple of numpy.ndarray
        Axis ratio (1: round) and the direction of the major axis.
    """
    w = np.exp(-0.5 * (dx * dx + dy * dy) / sigma_w ** 2) * ok
    wv = w * v
    F = np.maximum(wv.sum(axis=(1, 2)), 1e-12)
    mxx = (wv * dx * dx).sum(axis=(1, 2)) / F
    myy = (wv * dy * dy).sum(axis=(1, 2)) / F
    mxy = (wv * dx * dy).sum(axis=(1, 2)) / F
    tr = 0.5 * (mxx + myy)
    dd = np.sqrt(0.25 * (mxx - myy) ** 2 + mxy * mxy)
    theta = 0.5 * np.arctan2(2 * mxy, mxx - myy)
    s1, s2 = _window_deconvolved(tr + dd, sigma_w), _window_deconvolved(tr - dd, sigma_w)
    e = (s1 - s2) / (s1 + s2)
    # noise of the windowed ellipticity components (e1 = sum wv (dx^2 - dy^2) / sum wv r^2, e2 likewise)
    r2 = dx * dx + dy * dy
    T = np.maximum((wv * r2).sum(axis=(1, 2)), 1e-12)
    e1 = (wv * (dx * dx - dy * dy)).sum(axis=(1, 2)) / T
    e2 = (wv * 2 * dx * dy).sum(axis=(1, 2)) / T
    v1 = noise_var * (w * w * (dx * dx - dy * dy - e1[:, None, None] * r2) ** 2).sum(axis=(1, 2)) / T ** 2
    v2 = noise_var * (w * w * (2 * dx * dy - e2[:, None, None] * r2) ** 2).sum(axis=(1, 2)) / T ** 2
    # the windowed e1, e2 measure the same elongation as e, scaled by the window: debias e by their ratio
    ew = np.hypot(e1, e2)
    keep = np.sqrt(np.clip(1.0 - (v1 + v2) / np.maximum(ew * ew, 1e-12), 0.0, 1.0))
    e = np.clip(e * keep, 0.0, 0.9)
    q = np.sqrt((1 - e) / (1 + e))
    return q, np.cos(theta), np.sin(theta)


def _noise_power(image, free, max_lag=4, box=512):
    """Variance of a weighted sum of ``image``'s noise per unit squared weight (pixel variance x correlation area).

    The autocovariance of ``image`` over the ``free`` pixels (no source)
    of a central ``box`` summed over lags up to ``max_lag`` pixels: for a
    white-noise image its pixel variance, for a smoothed one (e.g. a
    Gaussian-filtered sum of bands) that of the white noise before the
    smoothing, as seen by weights smoother than the filter.
    """
    ny, nx = image.shape
    y0, x0 = max(0, ny // 2 - box // 2), max(0, nx // 2 - box // 2)
    im = np.asarray(image[y0:y0 + box, x0:x0 + box], np.float64)
    m = np.array(free[y0:y0 + box, x0:x0 + box], bool)  # a copy: the caller's mask is not changed
    if m.sum() < 1000:
        return None
    from astrohvae.detection.background import mad_std

    med = np.median(im[m])
    m &= np.abs(im - med) < 5 * mad_std(im[m])
    im = np.where(m, im - np.mean(im[m]), 0.0)
    h, w = im.shape
    total = 0.0
    for dy in range(-max_lag, max_lag + 1):
        for dx in range(-max_lag, max_lag + 1):
            a = im[max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)]
            b = im[max(0, -dy):h + min(0, -dy), max(0, -dx):w + min(0, -dx)]
            ma = m[max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)]
            mb = m[max(0, -dy):h + min(0, -dy), max(0, -dx):w + min(0, -dx)]
            n = (ma & mb).sum()
            total += (a * b).sum() / max(n, 1)
    return total


def _interp_rows(rr, grid, rows):
    """``np.interp(rr[j], grid, rows[j], right=0)`` for every source ``j`` (``rr``: ``(n, h, w)``)."""
    pos = np.interp(rr, grid, np.arange(grid.size, dtype=np.float64), right=np.nan)
    beyond = np.isnan(pos)
    pos = np.where(beyond, grid.size - 1, pos)
    i0 = np.minimum(np.floor(pos).astype(np.int64), grid.size - 2)
    w = pos - i0
    j = np.arange(rows.shape[0])[:, None, None]
    out = (1 - w) * rows[j, i0] + w * rows[j, i0 + 1]
    return np.where(beyond, 0.0, out)


def _exp_models(psf, size_psf, max_scale, n_scales=17, step=0.25, extent=16.0):
    """Radial profiles of exponential discs convolved with the field's PSFs, for a grid of scale lengths.

    ``psf`` and ``size_psf``: ``(radii, profile)`` of the image whose
    isophote is sought and of the size image (`psf_profile`).  The discs
    ``exp(-r / h)``, ``h`` from 0 (the PSF itself) to ``max_scale`` pixels
    in ``n_scales`` steps, are convolved with each PSF (rebuilt in 2-D
    from its profile on a grid of ``step`` px, out to ``extent`` px) and
    azimuthally averaged; each model is scaled to the same flux as the
    PSF's profile, so that a source's fitted amplitude is comparable
    across scales.

    Returns
    -------
    (scales, radii, profiles, size_profiles)
        ``profiles`` and ``size_profiles``: ``(n_scales, radii.size)``,
        non-increasing.
    """
    from scipy.signal import fftconvolve

    scales = np.linspace(0.0, max_scale, n_scales)
    n = int(round(extent / step))
    ax = np.arange(-n, n + 1) * step
    r2d = np.hypot(ax[:, None], ax[None, :])
    grid = np.arange(0.0, extent, step)
    rbin = np.minimum(np.rint(r2d / step).astype(np.int64), grid.size)
    cnt = np.bincount(rbin.ravel(), minlength=grid.size + 1)[:grid.size]
    out = []
    for radii, prof in (psf, size_psf):
        p2d = np.interp(r2d, radii, prof, right=0.0)
        flux = p2d.sum()
        rows = []
        for h in scales:
            if h == 0:
                m = p2d
            else:
                e = np.exp(-r2d / h)
                m = fftconvolve(p2d, e / e.sum(), mode="same")
            m = m * (flux / max(m.sum(), 1e-30))
            row = np.bincount(rbin.ravel(), m.ravel(), minlength=grid.size + 1)[:grid.size] / np.maximum(cnt, 1)
            rows.append(np.minimum.accumulate(row))
        out.append(np.array(rows))
    # h = 0 is the measured profile itself (no resampling)
    out[0][0] = np.interp(grid, psf[0], psf[1], right=0.0)
    out[1][0] = np.interp(grid, size_psf[0], size_psf[1], right=0.0)
    return scales, grid, out[0], out[1]


def _star_radii(image, segm_data, lab, cy, cx, isophote, valid=None, snr=None, rmax=30, step=0.5, n_template=50,
                conc_fraction=0.9):
    """Isophotal radii of bright point-like segments from the field's own stellar profile.

    For segments ``lab`` (bright; centres ``cy, cx``: windowed centroids):
    the core amplitude (mean within 1.5 px) and the concentration (core over
    the mean at 1.5-3 px) are measured on small windows.  Segments at least
    ``conc_fraction`` times as concentrated as the 70th percentile of those
    with S/N 30-400 (``snr``), with a fully valid core, are point-like.  The
    stellar profile out to ``rmax`` px is the inverse-variance weighted mean
    (weights core^2 x pixels per bin) of the ``n_template`` brightest
    point-like segments' profiles, each divided by its core amplitude: the
    bright stars set the faint wings, where a star's own annulus at its
    isophote has S/N ~ 4 only and a shallow slope, so its crossing radius
    scatters by 1-2 px.  A point-like segment's radius is where its core
    amplitude times that profile falls to ``isophote``.

    Returns
    -------
    numpy.ndarray
        One radius per ``lab``; NaN where the segment is not point-like or
        its isophote lies beyond ``rmax``.
    """
    R = np.full(lab.size, np.nan)
    if lab.size == 0:
        return R

    def windows(sel, half):
        idx, inside, yy, xx = source_stamps(image.shape, cy[sel], cx[sel], half)
        sg = segm_data.ravel()[idx]
        ok = inside & ((sg == 0) | (sg == lab[sel][:, None, None]))
        if valid is not None:
            ok &= valid.ravel()[idx]
        rr = np.hypot(yy - cy[sel][:, None, None], xx - cx[sel][:, None, None])
        return image.ravel()[idx], ok, inside, rr

    allsel = np.arange(lab.size)
    v, ok, inside, rr = windows(allsel, 3)
    c_in = ok & (rr < 1.5)
    core = (v * c_in).sum(axis=(1, 2)) / np.maximum(c_in.sum(axis=(1, 2)), 1)
    m_in = ok & (rr >= 1.5) & (rr < 3.0)
    conc = core / np.maximum((v * m_in).sum(axis=(1, 2)) / np.maximum(m_in.sum(axis=(1, 2)), 1), 1e-6)
    full_core = ~np.any((rr < 2.0) & ~(ok & inside), axis=(1, 2))
    ref = (snr >= 30.0) & (snr < 400.0) if snr is not None else np.ones(lab.size, bool)
    if ref.sum() < 5:
        return R
    star = (conc >= conc_fraction * np.percentile(conc[ref], 70)) & full_core & (core > 0)
    if star.sum() < 5:
        return R
    tmpl = np.flatnonzero(star)
    tmpl = tmpl[np.argsort(-core[tmpl])][:n_template]
    v, ok, _, rr = windows(tmpl, int(rmax))
    cnt, tot = annulus_sums(rr, ok, v, step, rmax)
    # sum over stars of w * (tot / cnt / core) with w = core^2 * cnt  ==  core * tot
    num = (core[tmpl, None] * tot).sum(axis=0)
    den = (core[tmpl, None] ** 2 * cnt).sum(axis=0)
    prof = np.where(den > 0, num / np.maximum(den, 1e-30), np.inf)
    prof = np.fmin.accumulate(prof)
    if not np.isfinite(prof[0]):
        return R
    radii = (np.arange(prof.size) + 0.5) * step
    level = isophote / np.where(star, core, np.inf)
    reach = star & (level > prof[-1])
    R[reach] = np.interp(-level[reach], -prof, radii)
    return R


def windowed_sigma2(v, rr, ok, sigma_w):
    """Per-axis variance of round sources from Gaussian-windowed second moments.

    ``v``, ``rr``, ``ok``: values, distances from the centres and usable
    pixels, ``(n, h, w)`` (or one ``(h, w)`` window).  The windowed moment
    ``m = sum(w v r^2) / (2 sum(w v))`` with ``w = exp(-r^2 / (2 sigma_w^2))``
    of a Gaussian source of variance ``s`` is ``s sigma_w^2 / (s + sigma_w^2)``;
    that relation is inverted (``m`` clipped to ``(0, 0.95 sigma_w^2]``).
    """
    w = np.exp(-0.5 * (rr / sigma_w) ** 2) * ok * v
    m = 0.5 * (w * rr * rr).sum(axis=(-2, -1)) / np.maximum(w.sum(axis=(-2, -1)), 1e-12)
    return _window_deconvolved(m, sigma_w)


def _window_deconvolved(m, sigma_w):
    """A Gaussian source's variance from its moment ``m`` in a Gaussian window of sigma ``sigma_w``.

    ``m = s sigma_w^2 / (s + sigma_w^2)`` inverted, ``m`` clipped to ``[1e-3, 0.95 sigma_w^2]``
    (`windowed_sigma2`, `_windowed_shape`).
    """
    m = np.clip(m, 1e-3, 0.95 * sigma_w ** 2)
    return m * sigma_w ** 2 / (sigma_w ** 2 - m)


def grow_isophotal(segm_data, image, isophote, valid=None, bin_px=1.0, centroid_image=None, psf_snr=None,
                   psf=None, moments=None, centres=None, trim=False, keep_radius=12.0, smooth_radius=None,
                   faint_size=False):
    """Grow each segment to the ``isophote`` level of its azimuthally averaged profile.

    The footprint of a source is the region where its *noiseless* surface
    brightness exceeds ``isophote`` (in sky sigma per pixel, as SExtractor's
    analysis threshold).  A single pixel's value there is mostly noise
    (S/N ~ 0.5), so the level is found on the source's profile instead.

    *Profile crossing* (every segment, or those at ``psf_snr`` and above):
    the flux-weighted second moments of the segment's own pixels give an
    ellipse; ``image`` (noise units) is averaged in 1-pixel bins of the
    (circularised) elliptical radius over the pixels that are free or its
    own (other segments excluded), and the radius ``R`` where that profile
    first drops below ``isophote`` is found by linear interpolation.

    *PSF-scaled profile* (segments whose S/N, the sum of their own pixels
    over the square root of their area, is below ``psf_snr``): a faint
    source's annulus at its isophote has S/N ~ 1, so the first crossing is
    mostly noise (its radius scatters by ~40 %), and its own pixels' ellipse
    is noise too.  Such a source is nearly unresolved: it is centred by a
    Gaussian-windowed centroid on ``centroid_image`` (`windowed_centroids`),
    its amplitude is fitted with the field's PSF profile (``psf``, measured
    by `psf_profile` when not given) over its pixels within 3 px (the
    matched filter: all of its flux, not one annulus), and ``R`` is where
    that scaled profile falls to ``isophote``; the footprint is the circle
    of radius ``R``.  With ``faint_size``, the profile is the PSF
    convolved with an exponential disc whose scale length gives the
    source's Gaussian-windowed variance on ``centroid_image`` (a faint
    galaxy is wider than the PSF and its outskirts, where a low isophote
    lies, fall off exponentially; a faint star's scale is 0;
    `_psf_radii`), the footprint is the ellipse of the source's windowed
    shape on ``centroid_image`` with the area of the circle of radius
    ``R`` (its ellipticity debiased for noise: round when within it,
    `_windowed_shape`), and it is no longer floored at the seed's area (a
    seed found on a smoothed image is wider than a star's isophote and
    narrower than a galaxy's).  When the field has too few bright compact
    sources to measure the PSF, every segment uses the profile crossing.

    *Large sources* (``R`` >= ``smooth_radius``, not point-like): the outer
    isophote of a big galaxy is not the ellipse of its inner moments (a
    bulge and a disc of different shapes), but its annuli hold enough
    pixels to follow it: the footprint is the part of the region where the
    image, smoothed by a Gaussian of sigma 0.15 ``R`` over the free and own
    pixels only, exceeds ``isophote`` that lies within 2 ``R`` and is
    connected to the segment.

    Free pixels inside the ellipse (circle) of radius ``R`` join the
    segment; where two overlap, the pixel goes to the segment in whose
    ellipse it lies deeper (smaller r / R).  With ``trim``, the own pixels
    of a bright segment with ``R`` <= ``keep_radius``, or of a point-like
    one at any radius (its circle is the field's stellar profile), that lie
    outside its footprint and are faint (``image`` smoothed by a Gaussian
    of 1 px at most twice ``isophote``) are released: the network's
    footprints are blurred and reach beyond a star's or a small galaxy's
    isophote, while a bright pixel outside the ellipse belongs to an
    undeblended companion, a diffraction spike or a bleed trail.  Larger
    resolved sources keep all their pixels (a big galaxy's irregular
    outskirts) at
    ``isophote`` <= `SEED_ISOPHOTE`; above it every seed reaches past the
    isophote, so every segment releases its faint pixels outside its
    footprint, and a faint source whose PSF-scaled peak stays below the
    isophote keeps only its core (`CORE_RADIUS`).  A faint source whose
    size is measured (``faint_size``), or any faint source above
    `SEED_ISOPHOTE`, releases its seed pixels outside its circle unless
    they stand out (smoothed above `KEEP_LEVEL` times ``isophote``): its
    seed was found on a smoothed image and reaches past its isophote, and
    the circle of its fitted profile is the better estimate of where its
    noiseless light meets the isophote.  Without ``trim``
    segments never lose pixels.  A segment is never emptied;
    labels are unchanged.

    Parameters
    ----------
    segm_data : numpy.ndarray
        int labels, 0 = background.
    image : numpy.ndarray
        float ``(ny, nx)`` in sky-noise units (background subtracted).
    isophote : float
        Footprint level in units of the per-pixel sky sigma.
    valid : numpy.ndarray of bool, optional
        Pixels that may be used and grown into (default all).
    bin_px : float
        Profile bin width in pixels (profile crossing).
    centroid_image : numpy.ndarray, optional
        Image for the windowed centroids (e.g. the smoothed g+r+i sum);
        default ``image``.
    psf_snr : float or None
        Segments below this S/N use the PSF-scaled profile; None: none do
        (every segment uses the profile crossing).
    psf : tuple, optional
        ``(radii, profile)`` as returned by `psf_profile`; measured on
        ``image`` when None.
    moments : tuple, optional
        ``segment_moments(segm_data, image)`` if already computed.
    centres : tuple, optional
        ``(cy, cx)`` windowed centroids indexed by label, if already
        computed (`windowed_centroids` on ``centroid_image``).
    trim : bool
        Release a bright segment's own pixels outside its footprint.
    keep_radius : float
        With ``trim``, resolved segments whose footprint radius (pixels)
        exceeds it keep all their pixels (point-like ones do not).
    smooth_radius : float or None
        Radius (pixels) from which a source's footprint follows its smoothed
        isophote instead of an ellipse; None: never.
    faint_size : bool
        Give a faint source its size and shape, measured on
        ``centroid_image`` (given): a PSF-convolved exponential profile and
        an elliptical footprint.

    Returns
    -------
    numpy.ndarray
        int32 labels.
    """


    seg_in = np.asarray(segm_data)
    out = seg_in.astype(np.int32, copy=True)
    n = int(seg_in.max(initial=0))
    if n == 0:
        return out
    ny, nx = out.shape
    W, cy, cx, cxx, cxy, cyy, npx, flux = segment_moments(seg_in, image) if moments is None else moments
    faint = np.zeros(n + 1, bool)
    star_R = np.full(n + 1, np.nan)
    if psf_snr is not None:
        snr = flux / np.sqrt(np.maximum(npx, 1))
        snr[0] = -np.inf
        cand = np.flatnonzero(W > 0)
        cand = cand[cand > 0]
        if centres is None:
            cimg = image if centroid_image is None else centroid_image
            wy, wx = cy.copy(), cx.copy()
            wy[cand], wx[cand] = windowed_centroids(cimg, cy[cand], cx[cand])
        else:
            wy, wx = centres
        if psf is None:
            psf = psf_profile(image, seg_in, wy, wx, snr, valid=valid)
        if psf is not None:
            faint = (snr < psf_snr) & (W > 0)
            faint[0] = False
        lab = cand[snr[cand] >= psf_snr]
        star_R[lab] = _star_radii(image, seg_in, lab, wy[lab], wx[lab], isophote, valid=valid, snr=snr[lab])
    # candidate pixels of every segment: (flat index, depth r / R, label), and seed pixels released
    cand_px = _bright_candidates(seg_in, image, isophote, valid, bin_px, star_R, faint, (W, cy, cx, cxx, cxy, cyy),
                                 trim, keep_radius, smooth_radius)
    if faint.any():
        cand_px = [a + b for a, b in zip(cand_px, _faint_candidates(
            seg_in, image, isophote, valid, np.flatnonzero(faint), wy, wx, snr, npx, psf, centroid_image, trim,
            faint_size))]
    return _assign(out, seg_in, image, isophote, n, *cand_px)


def _bright_candidates(seg_in, image, isophote, valid, bin_px, star_R, faint, moments, trim, keep_radius,
                       smooth_radius):
    """Pixels each segment at or above the PSF S/N (or every one) grows into, by its profile crossing.

    Returns lists ``(flat index, depth r / R, label, released seed pixels)`` (see `grow_isophotal`).
    """
    from scipy import ndimage

    from astrohvae.segmentation.network import SEED_ISOPHOTE

    W, cy, cx, cxx, cxy, cyy = moments
    ny, nx = seg_in.shape
    c_idx, c_depth, c_lab, c_cut = [], [], [], []
    bright = np.flatnonzero((W > 0) & ~faint)
    slices = ndimage.find_objects(seg_in)
    for lab in bright[bright > 0]:
        sl = slices[lab - 1]
        if sl is None:
            continue
        y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        pad = max(6, y1 - y0, x1 - x0)
        if np.isfinite(star_R[lab]):
            pad = max(pad, int(np.ceil(star_R[lab] * 1.5)) + 1)
        Y0, Y1, X0, X1 = max(0, y0 - pad), min(ny, y1 + pad), max(0, x0 - pad), min(nx, x1 + pad)
        seg = seg_in[Y0:Y1, X0:X1]
        own = seg == lab
        img = image[Y0:Y1, X0:X1]
        cov = np.array([[cxx[lab], cxy[lab]], [cxy[lab], cyy[lab]]])
        ci = np.linalg.inv(cov)
        scale = np.sqrt(np.sqrt(np.linalg.det(cov)))
        dy = (np.arange(Y0, Y1, dtype=np.float32) - np.float32(cy[lab]))[:, None]
        dx = (np.arange(X0, X1, dtype=np.float32) - np.float32(cx[lab]))[None, :]
        q = np.float32(ci[0, 0]) * dx * dx + np.float32(2 * ci[0, 1]) * dx * dy + np.float32(ci[1, 1]) * dy * dy
        re = np.sqrt(np.maximum(q, 0)) * np.float32(scale)
        avail = (seg == 0) | own
        if valid is not None:
            avail &= valid[Y0:Y1, X0:X1]
        if np.isfinite(star_R[lab]):
            R = star_R[lab]
        else:
            bins = (re[avail] / bin_px).astype(np.int64)
            nb = int(bins.max(initial=0)) + 1
            cnt = np.bincount(bins, minlength=nb)
            prof = np.bincount(bins, img[avail], minlength=nb) / np.maximum(cnt, 1)
            prof = prof - _confusion_level(img, avail & ~own, (Y0, Y1, X0, X1), (ny, nx), isophote)
            below = np.flatnonzero((prof < isophote) & (cnt > 0))
            if below.size == 0 or below[0] == 0:
                continue
            k = below[0]
            R = bin_px * (k - 0.5 + (prof[k - 1] - isophote) / max(prof[k - 1] - prof[k], 1e-6))
        if not R > 0:
            continue
        ratio = (re / R).astype(np.float32)
        inside = ratio < 1
        point = np.isfinite(star_R[lab])
        if smooth_radius is not None and not point and R >= smooth_radius:
            inside = _smoothed_footprint(img, avail, own, isophote, 0.15 * R, ratio < 2)
        take = inside & (seg == 0) & avail
        if trim and (not R > keep_radius or isophote > SEED_ISOPHOTE or point):
            # (above the seeds' own level every seed reaches past the isophote, and a point source's circle
            # is the field's stellar profile at any radius; only faint pixels go)
            ty, tx = np.nonzero(own & ~inside)
            c_cut.append((ty + Y0) * nx + (tx + X0))
        ty, tx = np.nonzero(take)
        c_idx.append((ty + Y0) * nx + (tx + X0))
        c_depth.append(ratio[take])
        c_lab.append(np.full(ty.size, lab, np.int32))
    return c_idx, c_depth, c_lab, c_cut


def _faint_candidates(seg_in, image, isophote, valid, lab, wy, wx, snr, npx, psf, centroid_image, trim,
                      faint_size):
    """Pixels the faint segments ``lab`` grow into: a circle where their PSF-scaled profile meets the isophote.

    Returns lists ``(flat index, depth r / R, label, released seed pixels)`` (see `grow_isophotal`).
    """
    from astrohvae.segmentation.network import CORE_RADIUS, SEED_ISOPHOTE

    c_idx, c_depth, c_lab, c_cut = [], [], [], []
    size = None
    if faint_size and centroid_image is not None:
        size_psf = psf_profile(centroid_image, seg_in, wy, wx, snr, valid=valid)
        size = None if size_psf is None else (centroid_image, size_psf)
    noise = None if size is None else _noise_power(centroid_image, (seg_in == 0) if valid is None else
                                                   (seg_in == 0) & valid)
    R, idx, rr, free = _psf_radii(image, seg_in, lab, wy[lab], wx[lab], psf, isophote, valid, size=size,
                                  shape_noise=noise)
    if isophote <= SEED_ISOPHOTE and size is None:
        # the isophote encloses at least the seed's own area (the seed lies above it)
        R = np.maximum(R, np.sqrt(npx[lab] / np.pi))
    elif trim:
        # a faint source whose fitted peak stays below a high isophote has no footprint there;
        # it keeps its core (the pixels within `CORE_RADIUS` of its centre), not its whole seed
        R = np.maximum(R, CORE_RADIUS)
    R = np.minimum(R, (idx.shape[1] - 1) / 2)
    depth = rr / np.maximum(R, 1e-9)[:, None, None]
    take = free & (depth < 1) & (R > 0)[:, None, None]
    if trim and (isophote > SEED_ISOPHOTE or size is not None):
        # the circle is the source's isophote (above the seeds' level, or with its size measured): the
        # seed, found on a smoothed image, gives up its pixels outside it except those that stand out
        mine = (seg_in.ravel()[idx] == lab[:, None, None]) & (depth >= 1) & (R > 0)[:, None, None]
        cut = idx[mine]
        c_cut.append(cut[smoothed_at(image, cut, 1.0) <= KEEP_LEVEL * isophote])
    c_idx.append(idx[take])
    c_depth.append(depth[take].astype(np.float32))
    c_lab.append(np.broadcast_to(lab[:, None, None], take.shape)[take].astype(np.int32))
    return c_idx, c_depth, c_lab, c_cut


def _assign(out, seg_in, image, isophote, n, c_idx, c_depth, c_lab, c_cut):
    """Give each candidate pixel to the segment it lies deepest in; release faint seed pixels (never all)."""
    if c_idx and sum(a.size for a in c_idx):
        idx = np.concatenate(c_idx)
        depth = np.concatenate(c_depth)
        labs = np.concatenate(c_lab)
        order = np.lexsort((depth, idx))
        idx, labs = idx[order], labs[order]
        first = np.r_[True, idx[1:] != idx[:-1]]
        out.ravel()[idx[first]] = labs[first]
    if c_cut and sum(a.size for a in c_cut):
        cut = np.concatenate(c_cut)
        # only faint seed pixels are released: a bright one outside the footprint is an undeblended
        # companion or a spike, not a blurred edge
        cut = cut[smoothed_at(image, cut, 1.0) <= 2 * isophote]
        out.ravel()[cut] = 0
        # a segment is never emptied: one left without pixels keeps its own
        gone = np.bincount(out.ravel(), minlength=n + 1) == 0
        gone[0] = False
        if gone.any():
            back = gone[seg_in] & (out == 0)
            out[back] = seg_in[back]
    return out


def smoothed_at(image, flat, sigma, truncate=4.0):
    """``scipy.ndimage.gaussian_filter(image, sigma)`` (float32, 'reflect' edges) at the flat indices ``flat``.

    Few pixels (a normal field's seed edges) are smoothed one by one; many
    (a crowded field's) through the whole-image filter, which is then cheaper.
    """
    if np.size(flat) > np.size(image) // 100:
        from scipy import ndimage

        return ndimage.gaussian_filter(np.asarray(image, np.float32), sigma, truncate=truncate).ravel()[flat]
    rad = int(truncate * float(sigma) + 0.5)
    x = np.arange(-rad, rad + 1)
    k = np.exp(-0.5 * (x / float(sigma)) ** 2)
    k /= k.sum()
    ny, nx = image.shape
    iy, ix = np.divmod(np.asarray(flat, np.int64), nx)
    img = np.asarray(image, np.float32)
    out = np.zeros(iy.size, np.float64)
    # 'reflect' (d c b a | a b c d | d c b a) is numpy's 'symmetric'
    ry = _reflect_index(iy[:, None] + x[None, :], ny)
    rx = _reflect_index(ix[:, None] + x[None, :], nx)
    for j in range(x.size):
        out += k[j] * (img[ry[:, j][:, None], rx] @ k)
    return out.astype(np.float32)


def _reflect_index(i, n):
    """Indices reflected into ``[0, n)`` as scipy.ndimage's 'reflect' mode does (edge pixel repeated)."""
    period = 2 * n
    i = np.mod(i, period)
    return np.where(i >= n, period - 1 - i, i)


CONFUSION_LEVEL = 0.5
"""A segment's profile is measured above its window's border level when that level exceeds this
share of the isophote (`_confusion_level`)."""


def _confusion_level(img, free, box, shape, isophote, ring=6):
    """Mean of ``img`` over the free pixels of the window's border ring (``ring`` px wide), or 0.

    In a crowded field the light of undetected faint stars lifts the sky around
    a segment above a low isophote, and its averaged profile then never falls
    to it: the crossing (and the footprint) runs to the edge of the window.
    The border ring of the window (its sides inside the field) measures that
    level; it is subtracted from the profile when above `CONFUSION_LEVEL`
    times ``isophote`` (on an uncrowded sky it is ~0 and nothing changes).
    """
    Y0, Y1, X0, X1 = box
    ny, nx = shape
    edge = np.zeros(free.shape, bool)
    if Y0 > 0:
        edge[:ring] = True
    if Y1 < ny:
        edge[-ring:] = True
    if X0 > 0:
        edge[:, :ring] = True
    if X1 < nx:
        edge[:, -ring:] = True
    sel = edge & free
    if sel.sum() < 50:
        return 0.0
    level = float(np.mean(img[sel]))  # a mean, as the profile's annuli are
    return level if level > CONFUSION_LEVEL * isophote else 0.0


def _smoothed_footprint(img, avail, own, isophote, sigma, reach):
    """Pixels of ``reach`` where ``img`` smoothed over ``avail`` exceeds ``isophote``, connected to ``own``.

    The smoothing is a normalised convolution (Gaussian of ``sigma`` pixels
    over the available pixels only, so other segments' flux does not leak
    in) over the box of ``reach`` and ``own`` plus 3 ``sigma``, computed on
    2x2-pixel blocks when ``sigma`` is 4 px or more (it is 4.5 px or more
    with the default ``smooth_radius``; the blocks do not change such a
    smoothing); all arrays are one window around the segment.
    """
    from scipy import ndimage

    yy, xx = np.nonzero(reach | own)
    m = int(np.ceil(3 * sigma))
    y0, y1 = max(0, yy.min() - m), min(img.shape[0], yy.max() + 1 + m)
    x0, x1 = max(0, xx.min() - m), min(img.shape[1], xx.max() + 1 + m)
    h, w = y1 - y0, x1 - x0
    f = 2 if sigma >= 4 else 1
    H, W = -(-h // f) * f, -(-w // f) * f
    ok = np.zeros((H, W), np.float32)
    ok[:h, :w] = avail[y0:y1, x0:x1]
    val = np.zeros((H, W), np.float32)
    val[:h, :w] = np.where(avail[y0:y1, x0:x1], img[y0:y1, x0:x1], 0)
    num = ndimage.gaussian_filter(val.reshape(H // f, f, W // f, f).sum(axis=(1, 3)), sigma / f, truncate=3.0)
    den = ndimage.gaussian_filter(ok.reshape(H // f, f, W // f, f).sum(axis=(1, 3)), sigma / f, truncate=3.0)
    hi = num > np.float32(isophote) * np.maximum(den, 1e-3)
    above = np.zeros(img.shape, bool)
    above[y0:y1, x0:x1] = np.repeat(np.repeat(hi, f, axis=0), f, axis=1)[:h, :w]
    above &= avail & reach
    comp, _ = ndimage.label(above | own)
    ids = np.unique(comp[own])
    return above & np.isin(comp, ids[ids > 0])


CENTRE_SIGMA = 3.0
"""Gaussian sigma (px) of the smoothing that finds a group's centre in `merge_fragments`."""


def merge_fragments(parent_data, child_data, det, sm_sn, bands=None, min_excess=5.0, min_flux=0.05,
                    colour_chi2=30.0, contrast=5.0, sigma=1.5, point_hwhm=4.0, min_peak=20.0, bin_px=1.0,
                    linearise=None, extent=1.0, knot_min=3, knot_flux=0.1):
    """Merge back the deblended children (or grouped segments) that are not sources of their own.

    photutils' (and SExtractor's) deblending keeps every child holding a
    fraction ``contrast`` of its parent's flux; on a large galaxy that
    fraction is reached by noise bumps of the halo, by arms and by
    star-forming knots, so the galaxy is shredded.  Here each deblended
    parent gets a smooth model: the median of the matched-filter S/N image
    ``sm_sn`` (and of ``det``, and of each band) in 1-px elliptical annuli
    (the ellipse of the parent's positive ``det`` moments about the peak of
    its light smoothed by a Gaussian of `CENTRE_SIGMA` px: the brightest
    pixel of a knotty disc is a knot) over the parent's and the free pixels
    of its bounding box, forced to fall outwards.  A child other than the
    one holding the model's centre is kept only if

    * its peak excess over the model reaches ``min_excess`` (matched-filter
      sigma), and
    * its light above the model (``det`` summed over the child) is at least
      ``min_flux`` of the primary child's light (a galaxy in contact, a
      bright star, a star among others in a crowded blob), or
      its excess has a colour of its own: at the peak, the per-band
      matched-filter excesses (``bands``) differ from a multiple of the
      model's colours there by chi^2 >= ``colour_chi2`` (a foreground star
      on a disc; a knot or an arm has the disc's colours), or its excess
      is strong (``min_peak`` sigma) and ``contrast`` times the model there
      (a star of the galaxy's colours on its outskirts).

    When ``knot_min`` or more children of a parent pass these tests while
    holding less than ``knot_flux`` of the model's light each, and more
    than the field's own source density would put on the parent by chance
    (Poisson probability < 1 %), they are tested once more, against their
    common colour (the median of their normalised five-band excesses, the
    same chi^2): star-forming knots are bluer than their disc, and so pass
    the colour test, but share one colour; those that share it join the
    source, a foreground star of another colour among them stays.

    A parent whose model falls to half its peak within ``point_hwhm`` px
    is point-like (a star, or crowded stars): when it has two or more
    other children it is tested again without the star's child (a galaxy
    beside a brighter star), else left alone.  One whose model peaks below
    ``min_peak`` (matched-filter sigma) is too faint for its model to tell a
    fragment from a neighbour (a crowded field's confusion), and one whose
    model holds less than half its light is a blend of sources (crowded
    stars), not one source with fragments: their
    children are left as they are, and so is a child whose peak lies where
    the model is below ``extent`` (matched-filter sigma): it lies beyond
    the source, on whatever else joins the parent there (in a crowded
    field, hundreds of stars around a bright one, whose model falls to
    their level tens of pixels out: 005405-6-0099).
    The pixels of the rejected children go to the kept children
    of the same parent by a watershed of ``-det`` through the parent.  A
    parent may also hold pixels of no child (a region of low matched-filter
    S/N joining separate segments, see `NetworkSegmenter`): those stay free.

    Parameters
    ----------
    parent_data, child_data : numpy.ndarray
        int label arrays of the parents (before deblending, or any regions
        that contain whole children) and of the children.
    det : numpy.ndarray
        The deblending image (g+r+i in noise units, smoothed).
    sm_sn : numpy.ndarray
        Matched-filter S/N image (`matched_filter_sn`), unit noise.
    bands : numpy.ndarray, optional
        ``(nb, ny, nx)`` per-band images in noise units (0 where masked)
        for the colour test; None: no colour test.
    min_excess, min_flux, colour_chi2, contrast : float
        The thresholds above.
    sigma : float
        Gaussian sigma (pixels) of the per-band matched filter.
    point_hwhm : float
        Model half width (pixels) below which a parent is point-like.
    min_peak : float
        Model peak (matched-filter sigma) below which a parent is left alone.
    bin_px : float
        Width of the elliptical annuli (pixels along the major axis).
    linearise : callable, optional
        Applied to each band's cut-out of ``bands`` first (e.g. undoing the
        network input's asinh stretch).
    extent : float or None
        Model level (matched-filter sigma) below which a child is beyond
        the source and kept as it is; None: every child is tested.
    knot_min : int
        Smallest population of knots tested against its common colour;
        0: no knot test.
    knot_flux : float
        Largest light above the model, as a fraction of the model's light,
        of a knot.

    Returns
    -------
    numpy.ndarray
        The label array with the rejected children merged (labels
        renumbered 1..N in their old order).
    """
    from scipy import ndimage
    from skimage.segmentation import watershed

    out = np.array(child_data, np.int32, copy=True)
    par = np.asarray(parent_data)
    both = (out > 0) & (par > 0)
    n_child = int(out.max(initial=0))
    parent_of = np.zeros(n_child + 1, np.int64)
    parent_of[out[both]] = par[both]
    nkids = np.bincount(parent_of[1:], minlength=int(par.max(initial=0)) + 1)
    split = np.flatnonzero(nkids >= 2)
    split = split[split > 0]
    if split.size == 0:
        return out
    slices = ndimage.find_objects(par)
    drop = np.zeros(n_child + 1, bool)
    band_noise = 1.0 / (2.0 * np.sqrt(np.pi) * sigma)   # matched-filter noise of a unit-noise band
    # the field's source density by peak S/N: how many excesses chance puts on a parent (knot test only)
    density = None
    if knot_min and bands is not None:
        peak_of = np.r_[-np.inf, np.asarray(ndimage.maximum(sm_sn, out, np.arange(1, n_child + 1)), np.float64)]
        density = (np.sort(peak_of[1:]), float(out.size), peak_of)
    for p in split:
        sl = slices[p - 1]
        args = (p, sl, par, out, det, sm_sn, bands, min_excess, min_flux, colour_chi2, contrast, sigma, point_hwhm,
                min_peak, bin_px, linearise, band_noise, extent, knot_min, knot_flux, density)
        found = _fragments_of(*args)
        if isinstance(found, (int, np.integer)):
            # the model is a star's: the rest of the parent (a galaxy beside it) is tested without it
            found = _fragments_of(*args, exclude=int(found))
            found = None if isinstance(found, (int, np.integer)) else found
        if found is None or found[2].size == 0:
            continue
        own, kids, weak = found
        drop[weak] = True
        markers = np.where(drop[kids], 0, kids)
        filled = watershed(-np.where(own, det[sl], 0), markers, mask=own, connectivity=2)
        lab_px = own & (kids > 0)   # unlabelled pixels of a grouping parent stay free
        out[sl][lab_px] = filled[lab_px]
    if not drop.any():
        return out
    keep = ~drop
    lut = (np.cumsum(keep) - 1).astype(np.int32)
    lut[0] = 0
    return lut[out]


def _fragments_of(p, sl, par, out, det, sm_sn, bands, min_excess, min_flux, colour_chi2, contrast, sigma,
                  point_hwhm, min_peak, bin_px, linearise, band_noise, extent=1.0, knot_min=3, knot_flux=0.1,
                  density=None, exclude=None, min_model=0.5):
    """The children of parent ``p`` (box ``sl``) that are not sources of their own (`merge_fragments`).

    Returns ``(own, kids, rejected labels)``; None when the parent keeps all its children; the label
    of its primary child when that is point-like and the parent has at least two other children (to
    test the parent again without it: ``exclude``).
    """
    from scipy import ndimage

    own = par[sl] == p
    if exclude is not None:
        own &= out[sl] != exclude
        if not own.any():
            return None
    kids = np.where(own, out[sl], 0)
    s = sm_sn[sl]
    # the model's centre: the peak of the parent's light smoothed over a few PSFs (the brightest pixel
    # of a knotty disc is a knot)
    dsm = np.where(own, ndimage.gaussian_filter(np.where(own, np.clip(det[sl], 0, None), 0).astype(np.float32),
                                               CENTRE_SIGMA), -np.inf)
    py, px = np.unravel_index(int(np.argmax(dsm)), own.shape)
    primary = kids[py, px]
    yy, xx = np.nonzero(own)
    w = np.clip(det[sl][yy, xx], 0, None).astype(np.float64)
    W = max(w.sum(), 1e-12)
    dy, dx = yy - py, xx - px
    cxx = (w * dx * dx).sum() / W + 0.25
    cyy = (w * dy * dy).sum() / W + 0.25
    cxy = (w * dx * dy).sum() / W
    det_c = cxx * cyy - cxy * cxy
    if not det_c > 0:
        return None
    # elliptical radius in major-axis pixels: r^2 = lambda_max x^T C^-1 x; the annuli take the
    # parent's and the free pixels of its box (a companion at the parent's edge must not fill its
    # outer annuli alone)
    lam = 0.5 * (cxx + cyy) + np.sqrt(0.25 * (cxx - cyy) ** 2 + cxy * cxy)

    def radius(ay, ax):
        ey, ex = ay - py, ax - px
        return np.sqrt(np.maximum(lam * (cyy * ex * ex - 2 * cxy * ex * ey + cxx * ey * ey) / det_c, 0.0))

    ay, ax = np.nonzero((par[sl] == 0) | own)
    ka = (radius(ay, ax) / bin_px).astype(np.int64)
    k = (radius(yy, xx) / bin_px).astype(np.int64)
    uk, cnt = np.unique(ka, return_counts=True)
    first = np.r_[0, np.cumsum(cnt)[:-1]]   # bin starts in the radius-sorted order
    nbin = int(max(ka.max(), k.max())) + 1

    def profile(img):
        """Median of ``img`` in the annuli (empty ones interpolated), forced to fall outwards."""
        vals = img[ay, ax].astype(np.float64)
        o2 = np.lexsort((vals, ka))
        vs = vals[o2]
        med = 0.5 * (vs[first + (cnt - 1) // 2] + vs[first + cnt // 2])
        return np.minimum.accumulate(np.interp(np.arange(nbin), uk, med))

    prof = profile(s)
    if prof[0] < min_peak:
        return None  # a faint parent keeps its children
    if np.argmax(prof < 0.5 * prof[0]) * bin_px < point_hwhm:
        # a point-like primary (a star, crowded stars)
        if exclude is None and np.unique(kids[(kids > 0) & (kids != primary)]).size >= 2:
            return primary
        return None
    pdet = profile(det[sl])
    light = np.clip(det[sl][yy, xx], 0, None)
    model_light = np.clip(pdet[k], 0, None).sum()
    if model_light < min_model * light.sum():
        return None  # most of the light is not in a smooth source: a blend of sources (crowded stars)
    lab = kids[yy, xx]
    excess = s[yy, xx] - prof[k]
    nl = int(lab.max()) + 1
    o = np.lexsort((excess, lab))
    last = np.r_[np.flatnonzero(np.diff(lab[o])), lab.size - 1]
    pe = np.full(nl, -np.inf)
    pe[lab[o][last]] = excess[o][last]
    peak_at = np.zeros(nl, np.int64)
    peak_at[lab[o][last]] = o[last]
    # light above the model, relative to the primary's own light (a star among many in a crowded
    # blob holds little of the blob but much of its brightest star)
    above = np.bincount(lab, np.clip(det[sl][yy, xx] - pdet[k], 0, None), nl)
    flux = above / max(light[lab == primary].sum(), 1e-12)
    # ... and relative to the model's light (a knotty disc is cut into many children: its primary holds
    # a small part of it)
    flux_model = above / max(model_light, 1e-12)
    cand = np.unique(lab)
    cand = cand[(cand > 0) & (cand != primary)]
    if extent is not None:   # children beyond the source's body stay as they are
        cand = cand[prof[k[peak_at[cand]]] >= extent]
    weak = cand[pe[cand] < min_excess]
    # a strong excess many times the parent's own light there (a star on its outskirts) is a source
    strong = (pe >= min_peak) & (pe >= contrast * np.maximum(prof[k[peak_at]], 0.0))
    test = cand[(pe[cand] >= min_excess) & (flux[cand] < min_flux) & ~strong[cand]]
    # knot candidates: every excess below ``knot_flux`` of the model's light, however it would be kept
    small = cand[(pe[cand] >= min_excess) & (flux_model[cand] < knot_flux)] if knot_min else cand[:0]
    if bands is None:
        return own, kids, np.r_[weak, test]
    if test.size == 0 and small.size < (knot_min or np.inf):
        return own, kids, weak
    look = np.union1d(test, small)
    j = peak_at[look]
    e_all, m_all, ok_all = [], [], []
    for b in range(bands.shape[0]):
        bi = bands[b][sl] if linearise is None else linearise(bands[b][sl])
        sb = ndimage.gaussian_filter(bi.astype(np.float32), sigma)
        pb = profile(sb)
        e_all.append(sb[yy[j], xx[j]] - pb[k[j]])
        m_all.append(pb[k[j]])
        ok_all.append(bi[yy[j], xx[j]] != 0)
    e, m, ok = np.array(e_all), np.array(m_all), np.array(ok_all)
    chi2 = _colour_chi2(e, m, ok, band_noise)
    merged = look[np.isin(look, test) & (chi2 < colour_chi2)]
    # a population of excesses that would be kept (knots, HII regions: bluer than the disc, point-like,
    # each a few per cent of the light) shares one colour; a foreground star among them has its own
    pop = np.isin(look, small) & ~np.isin(look, merged)
    if knot_min and pop.sum() >= knot_min and _more_than_chance(int(pop.sum()), pe[look[pop]].min(), own.sum(), density,
                                                                np.unique(kids[kids > 0])):
        ref = np.median(e[:, pop] / np.maximum(np.abs(e[:, pop]).sum(0), 1e-12), axis=1)
        ref = np.broadcast_to(ref[:, None], e.shape)
        merged = np.union1d(merged, look[pop & (_colour_chi2(e, ref, ok, band_noise) < colour_chi2)])
    return own, kids, np.r_[weak, merged]


def _more_than_chance(n, peak, area, density, own_labels=(), p_chance=0.01):
    """Whether ``n`` excesses of at least ``peak`` (matched-filter sigma) on ``area`` pixels are more
    than the rest of the field's sources would put there by chance (Poisson probability below
    ``p_chance``).  ``density``: the sorted peak S/Ns of the field's segments, the field's pixels and
    the peak of each label; the parent's own children (``own_labels``) are left out of the count.
    True without a density."""
    if density is None:
        return True
    from scipy.stats import poisson

    peaks, field_area, peak_of = density
    n_other = (peaks.size - np.searchsorted(peaks, peak)) - int((peak_of[np.asarray(own_labels, int)] >= peak).sum())
    expected = area * max(n_other, 0) / max(field_area - area, 1.0)
    return bool(poisson.sf(n - 1, expected) < p_chance)


def _colour_chi2(e, m, ok, band_noise, floor=0.1):
    """chi^2 of per-band excesses ``e`` (nb, n) against the best multiple of colours ``m`` (nb, n),
    over the bands where ``ok``, with the matched-filter noise and a ``floor`` fraction of ``e``."""
    a = (e * m * ok).sum(0) / np.maximum((m * m * ok).sum(0), 1e-12)
    var = band_noise ** 2 + (floor * e) ** 2
    return (((e - a * m) ** 2 / var) * ok).sum(0)


def keep_labels(segm, stats, keep):
    """Keep the labels where ``keep`` (bool, indexed by label) is True, renumbered 1..N in their old order.

    ``stats`` (``(moments, (cy, cx), labels)``, indexed by label, see
    `NetworkSegmenter._drop_single_band`) is re-indexed to the new labels.
    Returns ``(segm, stats)``, ``(None, None)`` when nothing is left.
    """
    from photutils.segmentation import SegmentationImage

    keep = np.asarray(keep, bool).copy()
    if keep[1:].all():
        return segm, stats
    if not keep[1:].any():
        return None, None
    keep[0] = True
    lut = np.cumsum(keep).astype(np.int32) - 1
    lut[~keep] = 0
    old = np.flatnonzero(keep)
    mom, (wy, wx), _ = stats
    mom = tuple(m[old] for m in mom)
    lab = np.flatnonzero(mom[0] > 0)
    return SegmentationImage(lut[np.asarray(segm.data)]), (mom, (wy[old], wx[old]), lab[lab > 0])
