"""Star/galaxy classifiers with a scikit-learn-style API.

Estimators
----------
`HierarchicalClassifier` (A+Vr, the product)
    A convolutional AE (30 latents) on the stamps in a source-only,
    flux-normalised representation (`astrohvae.preprocess`), trained with a
    centrally weighted squared error and random 90-degree rotations / flips;
    then a 1-D `~astrohvae.models.hvae.LatentVAE` with an *asymmetric*
    two-component Gaussian-mixture prior (a narrow peak and a broad peak,
    their weights re-estimated by EM without labels).  ``p_galaxy`` is the
    posterior probability of the galaxy peak given the encoder's Gaussian
    ``q(v|x)`` (made monotone along the latent axis).  The LatentVAE's input
    (``physical=True``, ``ae_components=0``, the shipped default) is eight
    label-free physical statistics of each source: half-light radius and
    concentration (fixed apertures), PSF-fit over aperture flux and
    SExtractor's SPREAD_MODEL against the field's own PSF (estimated from its
    compact bright sources, `astrohvae.psf`), and four aperture colours.
    The morphology statistics are calibrated per field on its stellar locus
    (the smallest-radius peak of the bright sources' half-light radii):
    r_half and concentration are divided by the locus values, SPREAD_MODEL
    and the PSF ratio are zero-pointed on the locus stars, and saturated
    sources (flat-topped cores, `astrohvae.psf.saturated`) get the
    point-source values.
    ``ae_components=None`` feeds the 30 AE latents as well (the paper's
    hierarchical input); measured on simulated fields the AE latents follow
    S/N and neighbours and spoil the 1-D split, see
    ``benchmarks/results/classification.md``.
`ManifoldClassifier` (V+M and Vr+M)
    A convolutional VAE (standard KL, or one of the paper's revised terms
    ``'sc'``, ``'dkl'``, ``'aw'``, ``'pw'``), its latent means embedded in one
    dimension by Isomap, thresholded at the assumed star fraction.
`LatentProbe`
    Supervised: logistic regression on the 30 AE latents.  It measures how
    much the latents know; it is not what the product ships.

Which peak is which, without labels (`star_side`)
------------------------------------------------
Stars are point sources.  After fitting, the training stamps are split by
the unsupervised model (peak membership, or the side of the 1-D embedding);
the group whose members (S/N >= 20) have the smaller median half-light
radius (g+r+i, 8-pixel aperture, other sources masked) is called ``star``.
No truth label enters any fit or this choice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from astrohvae.errors import InputError
from astrohvae.preprocess import DEFAULT_REPRESENTATION, network_input

__all__ = [
    "HierarchicalClassifier",
    "ManifoldClassifier",
    "AutoEncoderFeatures",
    "LatentProbe",
    "MODELS",
    "save_model",
    "load_model",
    "load_default_classifier",
    "DEFAULT_WEIGHTS",
    "star_side",
    "kl_mixture",
]

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "data" / "default"


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def _torch():
    import torch

    return torch


def _inputs(stamps, representation, crop):
    return np.ascontiguousarray(network_input(stamps, representation, crop))


def _radial_weight(size, sigma, peak):
    yy, xx = np.mgrid[:size, :size]
    r2 = (yy - size / 2 + 0.5) ** 2 + (xx - size / 2 + 0.5) ** 2
    w = 1.0 + peak * np.exp(-r2 / (2 * sigma**2))
    return (w / w.mean()).astype(np.float32)


def kl_mixture(mu, logvar, weights, means, sigmas):
    """KL(N(mu, exp(logvar)) || sum_k w_k N(m_k, s_k^2)) per sample, summed over dims.

    The one implementation is `astrohvae.models.priors.kl_mixture_quad`; this
    name is kept for the estimators' readers.
    """
    from astrohvae.models.priors import kl_mixture_quad

    return kl_mixture_quad(mu, logvar, weights, means, sigmas)


def mixture_posterior(mu, sigma, weights, means, sigmas):
    """Responsibility of every prior component for q(v) = N(mu, sigma^2) (1-D).

    ``p(k|x) ∝ w_k N(mu; m_k, s_k^2 + sigma^2)``.  Returns (N, K).
    """
    mu = np.asarray(mu, dtype=float).reshape(-1, 1)
    s2 = np.asarray(sigma, dtype=float).reshape(-1, 1) ** 2 + np.asarray(sigmas, dtype=float) ** 2
    logp = np.log(weights) - 0.5 * np.log(2 * np.pi * s2) - 0.5 * (mu - np.asarray(means)) ** 2 / s2
    logp -= logp.max(axis=1, keepdims=True)
    p = np.exp(logp)
    return p / p.sum(axis=1, keepdims=True)


def star_side(stamps, groups, min_snr=20.0, features=None):
    """Which of two groups of stamps is the stars (label-free, physical).

    Stars are point sources: the star group is the one whose members (with
    S/N >= ``min_snr``) have the smaller median half-light radius (measured
    in a fixed 8-pixel aperture, other sources masked, `astrohvae.psf.profile_features`).
    Ties (equal medians) are broken by the higher median concentration.

    Parameters
    ----------
    stamps : StampSet-like
    groups : array of int (N,), values 0 or 1
    min_snr : float
        Only sources with at least this S/N vote.

    Returns
    -------
    (star_group, stats) : the group (0 or 1) and, per group, its median
    half-light radius (pixels) and median concentration.
    """
    from astrohvae.psf import profile_features

    f = profile_features(stamps) if features is None else features
    groups = np.asarray(groups)
    ok = np.isfinite(f["r_half"]) & np.isfinite(f["concentration"]) & (f["snr"] >= min_snr)
    if (ok & (groups == 0)).sum() < 3 or (ok & (groups == 1)).sum() < 3:
        ok = np.isfinite(f["r_half"]) & np.isfinite(f["concentration"])

    def med(v, g):
        sel = ok & (groups == g)
        return float(np.median(v[sel])) if sel.any() else float("nan")

    rh = [med(f["r_half"], g) for g in (0, 1)]
    cc = [med(f["concentration"], g) for g in (0, 1)]
    stats = {"r_half": rh, "concentration": cc}
    if not np.isfinite(rh).all():
        return (0 if np.isfinite(rh[0]) else 1), stats
    if rh[0] != rh[1]:
        return int(np.argmin(rh)), stats
    return int(np.argmax(cc)), stats


from astrohvae.psf import per_stamp_chunks as _per_stamp_chunks  # noqa: E402

PHYSICAL_OPTIONS = {"locus_normalise": True, "zero_point": True, "saturated_stellar": True, "peak_centre": True}
"""Defaults of the switches of `_physical` (parameters of `HierarchicalClassifier`):

``locus_normalise``
    Divide r_half and concentration by the field's stellar values (else by
    fixed 2 px and 0.4).  The stellar locus is the smallest-radius peak of the
    bright sources' half-light radii (`astrohvae.psf.stellar_locus`).  Measured
    on the simulated test fields (seeds 500-507), A+Vr AUC r<19 / 19<r<21 /
    r>21 over two seeds: 0.986 / 0.959 / 0.692 with the fixed 2 px and 0.4,
    1.000 / 0.967 / 0.709 normalised.
``zero_point``
    Shift SPREAD_MODEL (divide the PSF/aperture ratio) so that the field's
    stellar locus sits at 0 (1).
``saturated_stellar``
    Give saturated sources (`astrohvae.psf.saturated`: flat-topped cores;
    `astrohvae.psf.band_saturated`: cores saturated in some bands only, as SDSS
    frames interpolate them) the point-source morphology.
``peak_centre``
    Measure a bright source whose stamp is not centred on it (a star whose
    segment merges with neighbours in a crowded field) about its own
    brightest pixel (`astrohvae.psf.peak_centred`).  Measured on the eight
    real SDSS fields (benchmarks/bright_stars.py, shipped weights): of the
    200 sources brighter than r = 15, 9 are labelled galaxy with it and 26
    without it; simulated test fields and the SDSS star recall of
    004510-4-0030 are unchanged.
"""


def _physical(stamps, ref=None, colours=False, pass1=None, options=None):
    """Label-free physical statistics of each source, see `_physical_compute`."""
    return _physical_compute(stamps, ref, colours, pass1, {**PHYSICAL_OPTIONS, **(options or {})})


def _pass1_statistics(peak_centre=PHYSICAL_OPTIONS["peak_centre"]):
    """The field-independent per-stamp statistics of `_physical_compute` (its first pass).

    With ``peak_centre`` each reads the chunk re-centred by `astrohvae.psf.peak_centred`.
    """
    from astrohvae.psf import peak_centred, profile_features, saturated

    fns = (profile_features, saturated, aperture_colours)
    return tuple((lambda c, f=f: f(peak_centred(c))) for f in fns) if peak_centre else fns


def _physical_compute(stamps, ref, colours, pass1, options):
    """Label-free physical statistics of each source.

    Morphology against the stellar locus / PSF of each field (log r_half /
    r_star, log concentration / stellar concentration, PSF-fit over aperture
    flux, 20 x SPREAD_MODEL) and the four aperture colours (the stellar colour
    locus is narrow, galaxies scatter off it).

    Returns (features (N, 8), ref dict): the `N_PHYSICAL` = 8 statistics the
    LatentVAE reads; with ``colours`` (N, 16): then the PSF-fit colours and
    their errors (`psf_colours`, for the colour likelihood).  ``ref`` holds the locus values and
    the PSF used for groups (fields) too small to estimate their own.

    The stamps are read twice, chunk by chunk (`astrohvae.psf.chunked_statistics`;
    they may be lazily backed): once for the field-independent statistics
    (``pass1``: `profile_features`, `saturated`, `aperture_colours`, given
    when the caller has made them in its own pass), once for those against
    the field's PSF (`psf_match`, `band_saturated`).  ``options``: the
    switches of `PHYSICAL_OPTIONS`.
    """
    locus_normalise, zero_point, saturated_stellar, peak_centre = (
        bool(options[k]) for k in ("locus_normalise", "zero_point", "saturated_stellar", "peak_centre"))
    from astrohvae.psf import (PSFModel, stellar_locus, band_saturated, chunked_statistics, estimate_psf,
                               peak_centred, psf_match)

    centred = peak_centred if peak_centre else (lambda c: c)
    if pass1 is None:
        pass1 = chunked_statistics(stamps, *_pass1_statistics(peak_centre))
    feat, sat_all, ap_colours = pass1
    n = len(feat["r_half"])
    fields = np.asarray(stamps.meta["field"]).astype(str) if (
        hasattr(stamps, "meta") and stamps.meta is not None and "field" in stamps.meta.colnames
    ) else np.array(["_"] * n)
    out = np.zeros((n, N_PHYSICAL + (8 if colours else 0)), dtype=np.float32)
    glob = None
    scales = []
    sat_groups = []
    for name in np.unique(fields):
        sel = np.flatnonzero(fields == name)
        sub = {k: v[sel] for k, v in feat.items()}
        sat = sat_all[sel]
        sub_st = stamps[sel] if len(sel) != n else stamps  # no copy for a one-field call
        bright = np.isfinite(sub["r_half"]) & (sub["snr"] >= 50) & ~sat
        locus = None
        try:
            if bright.sum() < MIN_BRIGHT:
                raise ValueError("too few bright sources")
            r_star, _ = stellar_locus(sub["r_half"], np.where(sat, 0.0, sub["snr"]), 50.0)
            locus = np.abs(np.log(np.clip(sub["r_half"], 1e-3, None) / r_star)) < 0.08
            locus &= bright
            if locus.sum() < MIN_LOCUS:
                raise ValueError("too few stars")
            c_star = float(np.median(sub["concentration"][locus]))
            psf = estimate_psf(sub_st, features=sub, saturated_flags=sat)
        except ValueError:
            locus = None
            if ref is None:
                if glob is None:
                    glob = _physical_ref(stamps, feat)
                r_star, c_star, psf = glob["r_star"], glob["c_star"], PSFModel(glob["psf"], glob["r_star"], 0)
            else:
                r_star, c_star, psf = ref["r_star"], ref["c_star"], PSFModel(ref["psf"], ref["r_star"], 0)
        m, band_sat = chunked_statistics(sub_st, lambda c: psf_match(centred(c), psf),
                                         lambda c: band_saturated(centred(c), psf.image))
        ratio, spread = m["psf_ratio"], m["spread_model"]
        if saturated_stellar:
            sat = sat | band_sat
        if colours:
            nk = noise_scale(sub_st, psf.image)
            if nk is not None:
                scales.append(np.asarray(nk, dtype=float))
            else:
                nk = (ref if ref is not None else {}).get("noise_scale")
                if nk is None:
                    nk = noise_scale(stamps, psf.image)
            out[sel, N_PHYSICAL:] = psf_colours(sub_st, psf.image, noise=nk)
        if zero_point and locus is not None:
            # the field's point sources define zero SPREAD_MODEL and unit
            # PSF/aperture ratio (residual PSF-model and centring systematics)
            ls = locus & np.isfinite(spread) & np.isfinite(ratio)
            spread = spread - float(np.median(spread[ls]))
            ratio = ratio / float(np.median(ratio[ls]))
        # sources sharper than the PSF (cosmic rays, hot pixels) are put at
        # the stellar value: they cannot be resolved galaxies
        if not locus_normalise:
            r_star, c_star = 2.0, 0.4
        out[sel, 0] = np.clip(np.log(np.clip(sub["r_half"], 0.2, 30) / r_star), -0.3, 1.5)
        out[sel, 1] = np.clip(np.log(np.clip(sub["concentration"], 0.01, 1.0) / c_star), -1.5, 0.3)
        out[sel, 2] = np.clip(ratio, 0.0, 1.1)
        out[sel, 3] = np.clip(spread, -0.005, 0.1) * 20.0
        if saturated_stellar and sat.any():
            # saturated sources (flat-topped cores, bleed trails: `psf.saturated`)
            # get the point-source morphology: their profile is the detector's,
            # not the sky's, and resolved galaxies do not reach the full well
            # at SDSS depth
            k = sel[sat]
            out[k, 0] = np.clip(np.log(r_star / (r_star if locus_normalise else 2.0)), -0.3, 1.5)
            out[k, 1] = np.clip(np.log(c_star / (c_star if locus_normalise else 0.4)), -1.5, 0.3)
            out[k, 2] = 1.0
            out[k, 3] = 0.0
            if colours:
                out[k, N_PHYSICAL + 4 :] = 10.0  # saturated: colours unmeasurable (no colour evidence)
            sat_groups.append((k, sel[locus] if locus is not None else sel[bright]))
    out[:, 4:8] = ap_colours
    for k, ref_rows in sat_groups:
        # a saturated core's aperture colours are the interpolation's, not the
        # star's: such sources get their field's typical stellar colours
        if ref_rows.size:
            with np.errstate(all="ignore"):
                out[k, 4:8] = np.nanmedian(out[ref_rows, 4:8], axis=0)
    if colours:  # a colour with a band missing carries no colour evidence
        ce = out[:, N_PHYSICAL:]
        ce[:, :4] = np.nan_to_num(ce[:, :4])
        ce[:, 4:][~np.isfinite(out[:, 4:8])] = 10.0
    # a statistic without valid pixels stays NaN: the classifier marginalises over it (`marginal_draws`)
    out[:, :N_PHYSICAL] = np.where(np.isinf(out[:, :N_PHYSICAL]), np.nan, out[:, :N_PHYSICAL])
    new_ref = ref if ref is not None else _physical_ref(stamps, feat)
    if ref is None and scales:  # the fields' median correlated-noise factor, for cutouts too few to measure it
        new_ref["noise_scale"] = [float(v) for v in np.median(scales, axis=0)]
    return out, new_ref


MIN_BRIGHT = 20
"""A field (``meta['field']``) gets its own PSF with at least this many S/N >= 50 sources ..."""

MIN_LOCUS = 8
"""... of which at least this many on the stellar locus (else the PSF stored at fit time).

A hand-picked set of cutouts (the 20 dl4astro stamps) is no field: its few
stars (4) do not make a locus, and with a lower threshold a clump of
similar-sized galaxies was taken for one."""

N_PHYSICAL = 8
"""Number of label-free physical statistics the LatentVAE reads (see `_physical`)."""


MIN_COLOUR_COVER = 0.5
"""A colour is measured when both its bands cover at least this share of the aperture's pixels
(other sources' pixels aside); else it is missing (NaN) and the classifier marginalises over it."""


@_per_stamp_chunks
def aperture_colours(stamps, radius=3.0):
    """u-g, g-r, r-i, i-z colours (asinh magnitudes) inside ``radius`` pixels, other sources masked.

    From valid pixels only: each colour sums both its bands over the
    aperture's pixels that both cover (`astrohvae.preprocess.band_valid`;
    a band offset from r leaves an edge strip it does not cover), and is NaN
    where they cover under `MIN_COLOUR_COVER` of it.
    """
    from astrohvae import BANDS
    from astrohvae.conventions import MASK_INVALID, MASK_OTHER
    from astrohvae.photometry import luptitude
    from astrohvae.preprocess import band_valid, central_window, clean_stamps

    ny, nx = np.shape(stamps.flux)[-2:]
    win = central_window(ny, nx, int(np.ceil(radius)))  # the aperture lies in it
    cl = clean_stamps(stamps.flux, stamps.mask, window=win)
    yy, xx = np.mgrid[: cl.shape[2], : cl.shape[3]]
    ap = np.hypot(yy - (ny // 2 - win[0].start), xx - (nx // 2 - win[1].start)) <= radius
    f = (cl * ap).sum(axis=(2, 3))
    lm = np.stack([luptitude(f[:, k], b) for k, b in enumerate(BANDS)], axis=1)
    col = np.clip(-np.diff(lm, axis=1), -3.0, 3.0)
    mw = np.asarray(stamps.mask)[(slice(None),) + win]
    hit = np.flatnonzero(((mw & MASK_INVALID) != 0).any(axis=(1, 2)))
    if hit.size:  # pixels some band lacks: each colour from the pixels both its bands cover
        fw = np.asarray(stamps.flux)[hit][(slice(None), slice(None)) + win]
        valid = band_valid(fw, mw[hit]) & ap[None, None]
        cw = clean_stamps(fw, mw[hit], per_band=True)
        need = (((mw[hit] & MASK_OTHER) == 0) & ap[None]).sum(axis=(1, 2))
        for k in range(len(BANDS) - 1):
            both = valid[:, k] & valid[:, k + 1]
            fa, fb = ((cw[:, j] * both).sum(axis=(1, 2)) for j in (k, k + 1))
            c = np.clip(luptitude(fa, BANDS[k]) - luptitude(fb, BANDS[k + 1]), -3.0, 3.0)
            col[hit, k] = np.where(both.sum(axis=(1, 2)) >= MIN_COLOUR_COVER * np.maximum(need, 1), c, np.nan)
    return col.astype(np.float32)


@_per_stamp_chunks
def _blank_psf_fluxes(stamps, psf_image, radius=5.0, offset=16):
    """PSF-fit fluxes on blank sky, in units of their white-noise error: (4 N, 5), NaN where not blank.

    The PSF of each band is fitted, as in `psf_colours`, at four positions
    ``offset`` pixels from the stamp centre along the diagonals, using only
    pixels of no source (mask 0); a position with under 90 % of its pixels
    usable gives NaN.
    """
    from astrohvae.psf import radius_grid

    flux = np.asarray(stamps.flux, dtype=np.float64)
    mask = np.asarray(stamps.mask)
    p = np.clip(np.asarray(psf_image, dtype=np.float64), 0.0, None)
    p = p / np.maximum(p.sum(axis=(1, 2), keepdims=True), 1e-12)
    ny, nx = p.shape[1:]
    out = []
    for dy, dx in ((-offset, -offset), (-offset, offset), (offset, -offset), (offset, offset)):
        ps = np.roll(p, (dy, dx), axis=(1, 2))
        disc = radius_grid(ny, nx, ny // 2 + dy, nx // 2 + dx) <= radius
        good = ((mask == 0) & disc[None])[:, None]
        pp = ps[None] * good
        norm = np.maximum((pp * ps[None]).sum(axis=(2, 3)), 1e-12)
        f = (pp * flux).sum(axis=(2, 3)) / norm
        sig = np.maximum(np.asarray(stamps.sky_sigma, dtype=np.float64), 1e-12) / np.sqrt(norm)
        full = good.sum(axis=(2, 3)) >= 0.9 * disc.sum()
        out.append(np.where(full, f / sig, np.nan))
    return np.concatenate(out).astype(np.float32)


def noise_scale(stamps, psf_image, min_samples=50):
    """Per-band ratio of the measured to the white-noise error of a PSF-fit flux (>= 1), or None.

    Measured on blank sky (`_blank_psf_fluxes`, robust standard deviation).
    Resampling the bands onto the r-band grid (real SDSS frames, the
    simulated ones) correlates the pixel noise, so the per-pixel
    ``sky_sigma`` underestimates the noise of a flux summed over a PSF: by
    x1.4-1.9 in u, g, i, z and ~x1.05 in r on the SDSS fields and the
    simulations here.  None with fewer than ``min_samples`` blank positions.
    """
    z = _blank_psf_fluxes(stamps, psf_image)
    n = np.isfinite(z).sum(axis=0)
    if n.min() < min_samples:
        return None
    mad = 1.4826 * np.nanmedian(np.abs(z - np.nanmedian(z, axis=0)), axis=0)
    return np.clip(mad, 1.0, 5.0)


@_per_stamp_chunks
def psf_colours(stamps, psf_image, radius=5.0, noise=None):
    """``(colours, errors)`` as one (N, 8) array from per-band PSF-fit fluxes (SDSS psfMag colours).

    Each band's flux is the least-squares amplitude of that band's PSF (the
    field's own, unit flux per band) over the pixels within ``radius`` of the
    source's g+r+i centroid, other sources masked; its error is
    ``sigma_sky / sqrt(sum P^2)``.  Unlike fixed-aperture colours these do
    not depend on the seeing of each band, which differs from band to band
    and field to field on real data: a point source's PSF colours are its
    true colours.  Colours are asinh magnitude differences (u-g, g-r, r-i,
    i-z); a band's error is ``1.0857 sigma_f / sqrt(f^2 + 4 b^2)`` with its
    softening ``b`` (sky-limited: the source's photon noise is left out) and
    ``sigma_f`` multiplied by ``noise`` (5,), the measured correlated-noise
    factor (`noise_scale`); a colour's the two bands' in quadrature.
    """
    from astrohvae import BANDS, SOFTENING
    from astrohvae.photometry import luptitude
    from astrohvae.preprocess import clean_stamps
    from astrohvae.conventions import GRI as _GRI
    from astrohvae.psf import centroids, radius_grid, recentre

    cl = clean_stamps(stamps.flux, stamps.mask)
    dy, dx = centroids(cl[:, _GRI].sum(axis=1))
    img = recentre(cl, dy, dx).astype(np.float64)
    p = np.clip(np.asarray(psf_image, dtype=np.float64), 0.0, None)
    p = p / np.maximum(p.sum(axis=(1, 2), keepdims=True), 1e-12)
    good = (((np.asarray(stamps.mask) & 6) == 0) & (radius_grid(*p.shape[1:]) <= radius)[None])[:, None]
    pp = p[None] * good
    norm = np.maximum((pp * p[None]).sum(axis=(2, 3)), 1e-12)
    f = (pp * img).sum(axis=(2, 3)) / norm
    sig = np.asarray(stamps.sky_sigma, dtype=np.float64) / np.sqrt(norm)
    if noise is not None:
        sig = sig * np.asarray(noise, dtype=np.float64)[None]
    lm = np.stack([luptitude(f[:, k], b) for k, b in enumerate(BANDS)], axis=1)
    b = np.array([SOFTENING[x] for x in BANDS]) * 1e9  # nanomaggies
    dm = 1.0857 * sig / np.sqrt(f**2 + 4 * b**2)
    col = np.clip(-np.diff(lm, axis=1), -3.0, 3.0)
    dcol = np.sqrt(dm[:, :-1] ** 2 + dm[:, 1:] ** 2)
    return np.concatenate([col, dcol], axis=1).astype(np.float32)


COLOUR_STAR_SNR = 50.0
"""Colour templates: stars are the unsaturated S/N >= 50 sources on the stellar locus of half-light radii ..."""

COLOUR_GALAXY_SNR = 30.0
COLOUR_GALAXY_RHALF = 0.3
"""... galaxies the unsaturated S/N >= 30 sources whose half-light radius exceeds the locus by
more than exp(0.3) = 1.35 (clearly resolved at that S/N)."""

COLOUR_CLIP = 3.0
"""The colour log-likelihood ratio is clipped to +-COLOUR_CLIP: colour can tip an
ambiguous (faint) source, never overrule a clear morphology (|logit| up to 9)."""

MIN_TEMPLATE = 20
"""At least this many template sources per class, else no colour term."""


def _gmm_loglik(gmm, col, dcol):
    """log p(col) under a Gaussian mixture convolved with each source's colour errors."""
    w, means, covs = gmm
    out = []
    eye = np.eye(col.shape[1])
    for k in range(len(w)):
        s = covs[k][None] + eye[None] * (dcol.astype(np.float64) ** 2)[:, :, None]
        d = col.astype(np.float64) - means[k]
        m = np.einsum("ni,nij,nj->n", d, np.linalg.inv(s), d)
        out.append(np.log(w[k]) - 0.5 * m - 0.5 * np.linalg.slogdet(s)[1] - 0.5 * col.shape[1] * np.log(2 * np.pi))
    return np.logaddexp.reduce(np.array(out), axis=0)


def colour_templates(colours, stars, galaxies, seed=0, n_star=3, n_galaxy=4):
    """Gaussian-mixture colour densities of label-free star and galaxy template sources.

    Returns ``{'star': (w, means, covs), 'galaxy': (...)}`` or None with too few templates.
    """
    from sklearn.mixture import GaussianMixture

    if stars.sum() < MIN_TEMPLATE or galaxies.sum() < MIN_TEMPLATE:
        return None
    out = {}
    for name, sel, k in (("star", stars, n_star), ("galaxy", galaxies, n_galaxy)):
        g = GaussianMixture(min(k, int(sel.sum()) // 5), random_state=seed, reg_covar=1e-3)
        g.fit(np.asarray(colours, dtype=np.float64)[sel])
        out[name] = (g.weights_, g.means_, g.covariances_)
    return out


def colour_llr(templates, colours, errors):
    """``log p(colours | galaxy) - log p(colours | star)``, each template density convolved with the errors."""
    return _gmm_loglik(templates["galaxy"], colours, errors) - _gmm_loglik(templates["star"], colours, errors)


def physical_statistics(stamps, ref=None, colours=True):
    """The label-free physical statistics (N, `N_PHYSICAL` + 8) of the default A+Vr (see `_physical`).

    Columns: the `N_PHYSICAL` statistics the LatentVAE reads (NaN where a
    statistic has no valid pixels: a colour whose two bands do not both
    cover the aperture, a morphology without a g, r or i pixel), then (with
    ``colours``) the four PSF-fit colours and their errors (`psf_colours`).
    """
    return _physical(stamps, ref, colours)[0]


def physical_reference(stamps):
    """The reference stellar locus and PSF of ``stamps`` (what `physical_statistics` falls back on)."""
    return _physical(stamps)[1]


def _physical_ref(stamps, feat):
    """Reference locus and PSF for stamps whose own field is too small to measure them.

    With several fields (``meta['field']``), each field with enough bright
    locus stars gets its own estimate and the reference is the field of median
    stellar half-light radius (typical seeing); pooling fields of different
    seeing would make the smallest-radius peak (`stellar_locus`) the
    best-seeing field's.  Otherwise all stamps are pooled.
    """
    from astrohvae.psf import stellar_locus, estimate_psf, profile_features, saturated

    feat = profile_features(stamps) if feat is None else feat
    n = len(feat["r_half"])
    fields = np.asarray(stamps.meta["field"]).astype(str) if (
        getattr(stamps, "meta", None) is not None and "field" in stamps.meta.colnames
    ) else np.array(["_"] * n)
    snr = np.where(saturated(stamps), 0.0, feat["snr"])
    per = []
    for name in np.unique(fields):
        sel = np.flatnonzero(fields == name)
        rh, sn = feat["r_half"][sel], snr[sel]
        if (np.isfinite(rh) & (sn >= 50)).sum() < MIN_BRIGHT:
            continue
        try:
            r_star, _ = stellar_locus(rh, sn, 50.0)
        except ValueError:
            continue
        locus = (np.abs(np.log(np.clip(rh, 1e-3, None) / r_star)) < 0.08) & (sn >= 50)
        if locus.sum() >= MIN_LOCUS:
            per.append((r_star, float(np.median(feat["concentration"][sel][locus])), sel))
    if per:
        per.sort(key=lambda t: t[0])
        r_star, c_star, sel = per[(len(per) - 1) // 2]
        psf = estimate_psf(stamps[sel] if len(sel) != n else stamps, features={k: v[sel] for k, v in feat.items()})
        return {"r_star": float(r_star), "c_star": c_star, "psf": psf.image}
    r_star, _ = stellar_locus(feat["r_half"], snr, 50.0)
    locus = (np.abs(np.log(np.clip(feat["r_half"], 1e-3, None) / r_star)) < 0.08) & (snr >= 50)
    c_star = float(np.median(feat["concentration"][locus])) if locus.sum() else float(
        np.nanquantile(feat["concentration"], 0.9)
    )
    psf = estimate_psf(stamps, features=feat)
    return {"r_star": float(r_star), "c_star": c_star, "psf": psf.image}


# ---------------------------------------------------------------------------
# missing statistics: marginalised over their density given the observed ones
# ---------------------------------------------------------------------------
STAT_RANGES = np.array([(-0.3, 1.5), (-1.5, 0.3), (0.0, 1.1), (-0.1, 2.0)] + [(-3.0, 3.0)] * 4)
"""The ranges `_physical` clips the `N_PHYSICAL` statistics to (draws are clipped alike)."""

MARGINAL_DRAWS = 64
"""Draws of a source's missing statistics over which its class probability is averaged."""

MIN_DENSITY_ROWS = 50
"""Weights without a fitted statistics density (made before it existed) fit one on the call's
own complete sources when it holds at least this many (a field), label-free."""


def statistics_density(x, seed=0, n_components=8, max_rows=20000):
    """Gaussian-mixture density of the complete rows of ``x`` (what the LatentVAE reads).

    Label-free: the joint distribution of the statistics of all sources, stars
    and galaxies together.  Returns ``(weights, means, covariances)`` or None
    with fewer than 20 complete rows.
    """
    from sklearn.mixture import GaussianMixture

    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x).all(axis=1)]
    if len(x) < 20:
        return None
    rng = np.random.default_rng(seed)
    if len(x) > max_rows:
        x = x[rng.choice(len(x), max_rows, replace=False)]
    g = GaussianMixture(max(1, min(n_components, len(x) // 50)), covariance_type="full", reg_covar=1e-4,
                        random_state=seed).fit(x)
    return g.weights_, g.means_, g.covariances_


def marginal_draws(density, x, n_draws=MARGINAL_DRAWS, seed=0):
    """Draws ``(n, n_draws, D)`` of each row of ``x``, its missing (NaN) entries from the density given the rest.

    The density is a Gaussian mixture, so the conditional of the missing
    entries given the observed ones is again one, in closed form: each
    component's conditional Gaussian, weighted by how well the component
    explains the observed entries.  Averaging a classifier's output over the
    draws marginalises it over what was not measured.
    """
    w, mu, cov = (np.asarray(a, dtype=np.float64) for a in density)
    x = np.asarray(x, dtype=np.float64)
    out = np.repeat(x[:, None, :], n_draws, axis=1)
    miss = ~np.isfinite(x)
    rng = np.random.default_rng(seed)
    for pat in np.unique(miss, axis=0):
        if not pat.any():
            continue
        rows = np.flatnonzero((miss == pat).all(axis=1))
        o, m = ~pat, pat
        logr, cmean, chol = [], [], []
        for k in range(len(w)):
            smm = cov[k][np.ix_(m, m)]
            if o.any():
                soo, smo = cov[k][np.ix_(o, o)], cov[k][np.ix_(m, o)]
                sinv = np.linalg.inv(soo)
                d = x[np.ix_(rows, o)] - mu[k][o]
                logr.append(np.log(w[k]) - 0.5 * np.einsum("ni,ij,nj->n", d, sinv, d) - 0.5 * np.linalg.slogdet(soo)[1])
                cmean.append(mu[k][m] + d @ (smo @ sinv).T)
                smm = smm - smo @ sinv @ smo.T
            else:
                logr.append(np.full(len(rows), np.log(w[k])))
                cmean.append(np.broadcast_to(mu[k][m], (len(rows), int(m.sum()))))
            chol.append(np.linalg.cholesky(0.5 * (smm + smm.T) + 1e-9 * np.eye(int(m.sum()))))
        logr = np.array(logr).T
        resp = np.exp(logr - logr.max(axis=1, keepdims=True))
        resp /= resp.sum(axis=1, keepdims=True)
        comp = (np.cumsum(resp, axis=1)[:, None, :] < rng.random((len(rows), n_draws, 1))).sum(axis=2)
        comp = np.minimum(comp, len(w) - 1)
        z = rng.standard_normal((len(rows), n_draws, int(m.sum())))
        vals = np.empty_like(z)
        for k in range(len(w)):
            sel = comp == k
            if sel.any():
                ri = np.nonzero(sel)[0]
                vals[sel] = cmean[k][ri] + z[sel] @ chol[k].T
        block = out[rows]
        block[:, :, m] = vals
        out[rows] = block
    return out


# ---------------------------------------------------------------------------
# training: every network goes through the one engine, `astrohvae.train`
# ---------------------------------------------------------------------------
def _checkpoint(directory, name):
    """``directory/name.pt`` (the folder created), or None without a checkpoint folder.

    Every fit resumes from its checkpoint when the file exists (`astrohvae.train.fit_model`):
    a fit that was interrupted continues, one that finished is not repeated.
    """
    if directory is None:
        return None
    from pathlib import Path

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"{name}.pt"


def _train_ae(x, latent_dim, channels, epochs, batch_size, lr, seed, weight, augment, device, verbose=False,
              checkpoint=None):
    """A ConvAE on network input ``x`` (one-cycle schedule, centrally weighted MSE)."""
    from astrohvae.train import fit_ae

    net, hist = fit_ae(x, latent_dim=latent_dim, channels=channels, epochs=epochs, batch_size=batch_size, lr=lr,
                       device=device, seed=seed, patience=None, pixel_weight=weight, augment=augment,
                       progress=verbose, schedule="onecycle", checkpoint=checkpoint, resume=checkpoint is not None)
    return net, hist


def _train_conv_vae(x, latent_dim, kl, channels, epochs, batch_size, lr, seed, weight, augment, device,
                    prior_m=1.0, prior_s=0.5, beta=1.0, verbose=False, checkpoint=None):
    """A ConvVAE with divergence ``kl`` (``'standard'`` or a revised two-peak term)."""
    from astrohvae.train import fit_vae

    # the engine's loss is sum(squared error) + beta' D; these estimators were
    # defined with half the squared error (a Gaussian likelihood of unit
    # variance): beta' = 2 beta is the same objective
    net, hist = fit_vae(x, latent_dim=latent_dim, divergence=kl, prior=(prior_m, prior_s), beta=2.0 * beta,
                        bounded_mu=2.0 if kl == "aw" else None, channels=channels, epochs=epochs,
                        batch_size=batch_size, lr=lr, device=device, seed=seed, patience=None, pixel_weight=weight,
                        augment=augment, progress=verbose, checkpoint=checkpoint, resume=checkpoint is not None)
    return net, hist


def _train_latent_vae(z, latent_dim, prior, epochs, batch_size, lr, seed, device, beta=1.0, divergence=None,
                      verbose=False, checkpoint=None):
    """The 1-D LatentVAE with the Gaussian-mixture prior ``(weights, means, sigmas)``.

    ``divergence=None``: the exact KL to the mixture (quadrature); a revised
    term (``'sc'``, ``'dkl'``, ``'aw'``, ``'pw'``) needs the symmetric prior
    ``0.5 N(-m, s^2) + 0.5 N(m, s^2)``.
    """
    from astrohvae.train import fit_latent_vae

    w, m, s = prior
    if divergence is None:
        div, spec = "mixture", {"weights": list(w), "means": list(m), "sigmas": list(s)}
    else:
        if not (w[0] == w[1] and m[0] == -m[1] and s[0] == s[1]):
            raise ValueError(f"divergence {divergence!r} needs the symmetric two-peak prior")
        div, spec = divergence, (m[1], s[1])
    net, hist = fit_latent_vae(z.astype(np.float32), latent_dim=latent_dim, divergence=div, prior=spec,
                               beta=2.0 * beta, epochs=epochs, batch_size=batch_size, lr=lr, device=device,
                               seed=seed, patience=None, progress=verbose, checkpoint=checkpoint,
                               resume=checkpoint is not None)
    return net, hist


def _batched(fn, x, batch_size, device):
    torch = _torch()
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size])).to(device)
            r = fn(xb)
            outs.append([t.detach().cpu().numpy() for t in (r if isinstance(r, tuple) else (r,))])
    if not outs:
        return None
    return tuple(np.concatenate([o[k] for o in outs]) for k in range(len(outs[0])))


def _check_stamps(stamps):
    flux = getattr(stamps, "flux", None)
    if flux is None or np.ndim(flux) != 4 or np.shape(flux)[1] != 5:
        raise ValueError("stamps must have flux of shape (N, 5, ny, nx)")


# ---------------------------------------------------------------------------
# A+Vr
# ---------------------------------------------------------------------------
class _Estimator:
    """What every estimator of `MODELS` shares: its parameters and its weights folder."""

    def get_params(self):
        """Constructor parameters (scikit-learn convention)."""
        return _get_params(self)

    def save(self, directory, **config):
        """Write the fitted estimator into ``directory`` (see `save_model`); returns its hash."""
        return save_model(self, directory, **config)


class HierarchicalClassifier(_Estimator):
    """A+Vr: AE (30 latents) -> 1-D VAE with an asymmetric two-peak prior.

    Parameters
    ----------
    representation : str
        Stamp representation (`astrohvae.preprocess.REPRESENTATIONS`).
    crop : int or None
        Side of the central crop the networks see (None = whole stamp).
    physical : bool or {'morph', 'colour'}
        Feed the label-free physical statistics (`_physical`: four morphology
        statistics against the field's PSF and four aperture colours) to the
        LatentVAE; ``'morph'`` / ``'colour'`` feed only one of the two sets.
    star_weight : float
        Prior weight of the star peak (the star fraction assumed a priori).
    star_mean, star_sigma, galaxy_mean, galaxy_sigma : float
        The prior's peaks: a narrow star peak and a broad galaxy peak.
    symmetric_prior : bool
        Use the paper's symmetric prior ½N(-m,s²)+½N(m,s²) with m=1, s=0.5
        instead (the paper's exact recipe).
    ae_latent, channels, ae_epochs, vae_epochs, batch_size, lr : training knobs
    center_weight : float
        Peak of the Gaussian central up-weighting of the reconstruction loss
        (0 = plain MSE).
    augment : bool
        Random 90-degree rotations and flips during AE training.
    ae_components : int or None
        How much of the AE latent the LatentVAE sees: None = all 30 latents,
        k > 0 = their first k principal components, 0 = none (then the
        LatentVAE sees only the physical statistics; the AE is still trained
        and its latents returned by `transform`).  Default 0: measured on
        simulated fields, the AE latents follow S/N and neighbours and pull the
        1-D split away from morphology (benchmarks/results/classification.md).
    fit_weight : bool
        Re-estimate the two peaks' weights by EM on the training latents
        (label-free) after training; the peaks' positions stay those of the
        prior.
    colour_prior : bool
        Opt-in (default False).  Multiply the peak posterior's odds by a
        colour likelihood ratio (`colour_llr`, clipped to +-`COLOUR_CLIP` in
        log odds): Gaussian-mixture densities of the PSF-fit colours
        (`psf_colours`) of label-free template sources chosen by morphology at
        high S/N (stars: on the stellar locus of half-light radii, S/N >= 50;
        galaxies: r_half > 1.35 x the locus, S/N >= 30), each density
        convolved with the source's own colour errors (with the field's
        measured correlated-noise factor, `noise_scale`) so that noisy faint
        colours weigh little.  Measured (benchmarks/results/classification.md):
        on the simulated test fields AUC r>21 0.70 -> 0.82 and 19<r<21 0.97 ->
        0.98, but on the real field 004510-4-0030 it labels fewer of the 157
        matched SDSS-catalogued stars star (124 against 128 trained on the same
        stamps without it; 121 before the noise calibration): the lost ones are
        faint (r ~ 21.7-23.5, S/N 8-30) with ambiguous morphology, and the
        bright template stars do not represent the colours of faint (halo,
        M-dwarf) stars.  Hence not the default.
    prior : (m, s)
        Peaks of the symmetric prior ½N(-m,s²)+½N(m,s²) when ``symmetric_prior``.
    divergence : None or {'sc', 'dkl', 'aw', 'pw', 'quad'}
        The LatentVAE's prior term: None = the exact KL to the prior mixture
        (quadrature, `astrohvae.models.priors.kl_mixture_quad`); a revised
        term of the paper needs ``symmetric_prior=True``.
    beta : float
        Weight of the prior term.
    locus_normalise, zero_point, saturated_stellar, peak_centre : bool
        Switches of the physical statistics (`PHYSICAL_OPTIONS`).
    prior_tries : int
        The prior says the stars form the narrow peak.  If, after training,
        `star_side` finds the compact sources in the broad peak instead, the
        LatentVAE is retrained from another initialisation, up to this many
        times in all (label-free model selection; when no try puts them
        there, the first fit is kept).
        Default 5: with a single try about half of the seeds put the compact
        sources in the broad peak, which then swallows the faint galaxies
        (simulated test fields: 78 % of all sources labelled star against 40 %
        when the stars sit in the narrow peak; the shipped weights of
        2026-11-26 had this fault: 65 % of 004510-4-0030 labelled star).
    device : str
    random_state : int
    verbose : bool
    """

    method = "A+Vr"

    reads_lazy_stamps = True
    """`transform` reads the stamps chunk by chunk (`astrohvae.psf.chunked_statistics`):
    they may be zarr/dask-backed, and a pipeline need not load a field's stamps at once."""

    def __init__(self, representation=DEFAULT_REPRESENTATION, crop=32, physical=True, star_weight=0.35,
                 star_mean=-1.5, star_sigma=0.35, galaxy_mean=1.0, galaxy_sigma=1.0, symmetric_prior=False,
                 ae_latent=30, channels=(16, 32, 64, 64), ae_epochs=4, vae_epochs=40, batch_size=128,
                 lr=2e-3, center_weight=4.0, augment=True, ae_components=0, fit_weight=True, prior_tries=5,
                 colour_prior=False, prior=(1.0, 0.5), divergence=None, beta=1.0, locus_normalise=True,
                 zero_point=True, saturated_stellar=True, peak_centre=True, device="cpu", random_state=0,
                 verbose=False):
        self.colour_prior = colour_prior
        self.locus_normalise = locus_normalise
        self.zero_point = zero_point
        self.saturated_stellar = saturated_stellar
        self.peak_centre = peak_centre
        self.prior = tuple(prior)
        self.divergence = divergence
        self.beta = beta
        self.fit_weight = fit_weight
        self.prior_tries = prior_tries
        self.representation = representation
        self.crop = crop
        self.physical = physical
        self.ae_components = ae_components
        self.star_weight = star_weight
        self.star_mean = star_mean
        self.star_sigma = star_sigma
        self.galaxy_mean = galaxy_mean
        self.galaxy_sigma = galaxy_sigma
        self.symmetric_prior = symmetric_prior
        self.ae_latent = ae_latent
        self.channels = tuple(channels)
        self.ae_epochs = ae_epochs
        self.vae_epochs = vae_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.center_weight = center_weight
        self.augment = augment
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # prior -----------------------------------------------------------------
    def _prior(self):
        if self.symmetric_prior:
            m, s = (float(v) for v in self.prior)
            return [0.5, 0.5], [-m, m], [s, s]
        return ([self.star_weight, 1 - self.star_weight], [self.star_mean, self.galaxy_mean],
                [self.star_sigma, self.galaxy_sigma])

    def _dev(self):
        from astrohvae.device import resolve_device

        return resolve_device(self.device)

    def _log(self, msg):
        if self.verbose:
            print(msg, flush=True)

    # fit -------------------------------------------------------------------
    def fit(self, stamps, y=None, checkpoint_dir=None):
        """Fit on unlabelled stamps (``y`` is ignored; it is never used).

        ``checkpoint_dir``: write a resumable checkpoint of every network there after each
        epoch (``ae.pt``, ``latent-K.pt`` per try); a fit started again with the same folder
        continues where it stopped (`astrohvae.train.fit_model`).
        """
        _check_stamps(stamps)
        dev = self._dev()
        seed = 0 if self.random_state is None else int(self.random_state)
        x = _inputs(stamps, self.representation, self.crop)
        w = _radial_weight(x.shape[-1], 4.0, self.center_weight)
        self.ae_, self.ae_history_ = _train_ae(x, self.ae_latent, self.channels, self.ae_epochs, self.batch_size,
                                               self.lr, seed, w, self.augment, dev, verbose=self.verbose,
                                               checkpoint=_checkpoint(checkpoint_dir, "ae"))
        z = _batched(self.ae_.encode, x, 512, dev)[0]
        del x
        self.ae_mean_ = z.mean(axis=0)
        if self.ae_components:
            _, _, vt = np.linalg.svd((z - self.ae_mean_) / (z.std(axis=0) + 1e-6), full_matrices=False)
            self.ae_scale_ = z.std(axis=0) + 1e-6
            self.ae_pcs_ = vt[: self.ae_components].astype(np.float32)
        else:
            self.ae_pcs_ = None
        feats = [self._ae_feats(z)]
        if self.physical:
            phys, self.ref_ = _physical(stamps, colours=bool(self.colour_prior), options=self._physical_options())
            feats.append(phys[:, self._phys_cols()])
        else:
            self.ref_ = None
        zin = np.concatenate(feats, axis=1).astype(np.float32)
        # the LatentVAE learns from sources with every statistic measured; the
        # others are classified by marginalising over what they lack
        complete = np.isfinite(zin).all(axis=1)
        self.stat_density_ = statistics_density(zin[complete], seed=seed)
        zin = zin[complete]
        feat = None
        for attempt in range(max(1, int(self.prior_tries))):
            self._fit_latent(zin, seed + 7919 * attempt, dev, _checkpoint(checkpoint_dir, f"latent-{attempt}"))
            mu, sig = self._encode_latent(zin)
            post = mixture_posterior(mu[:, 0], sig[:, 0], self.weights_, *self._prior()[1:])
            groups = post.argmax(axis=1)  # 0 = narrow (star) peak of the prior, 1 = broad
            if feat is None:
                from astrohvae.psf import profile_features

                feat = {k: v[complete] for k, v in profile_features(stamps).items()}
            self.star_peak_, self.label_stats_ = star_side(stamps, groups, features=feat)
            self.n_tries_ = attempt + 1
            if attempt == 0:
                first = (self.vae_, self.weights_, self.star_peak_, self.label_stats_, groups)
            if self.symmetric_prior or (self.star_peak_ == 0 and 0 < groups.mean() < 1):
                break  # the compact sources sit in the narrow peak, as the prior says
        else:
            if self.n_tries_ > 1:  # no try did: keep the first fit (as with prior_tries=1)
                self.vae_, self.weights_, self.star_peak_, self.label_stats_, groups = first
        self.train_peak_fraction_ = float((groups == self.star_peak_).mean())
        self.colour_templates_ = None
        if self.colour_prior and self.physical:
            from astrohvae.psf import saturated

            sat = saturated(stamps)[complete]
            phys = phys[complete]
            ce = phys[:, N_PHYSICAL:]
            stars = (np.abs(phys[:, 0]) < 0.08) & (feat["snr"] >= COLOUR_STAR_SNR) & ~sat
            gals = (phys[:, 0] > COLOUR_GALAXY_RHALF) & (feat["snr"] >= COLOUR_GALAXY_SNR) & ~sat
            self.colour_templates_ = colour_templates(ce[:, :4], stars, gals, seed=seed)
            self.n_colour_templates_ = (int(stars.sum()), int(gals.sum()))
        return self

    def _fit_latent(self, zin, seed, dev, checkpoint=None):
        self.vae_, self.vae_history_ = _train_latent_vae(zin, 1, self._prior(), self.vae_epochs, 256, 3e-3, seed,
                                                         dev, beta=self.beta, divergence=self.divergence,
                                                         checkpoint=checkpoint)
        mu, sig = self._encode_latent(zin)
        w, m, s = self._prior()
        if self.fit_weight:  # EM on the peak weights only (label-free), the peaks stay fixed
            for _ in range(100):
                w0 = float(np.clip(mixture_posterior(mu[:, 0], sig[:, 0], w, m, s)[:, 0].mean(), 0.01, 0.99))
                if abs(w0 - w[0]) < 1e-5:
                    break
                w = [w0, 1.0 - w0]
        self.weights_ = [float(v) for v in w]

    def _posterior(self, mu, sigma):
        """Peak responsibilities, made monotone along the latent axis.

        A latent beyond the star peak's centre, on the side away from the
        galaxy peak (a source more point-like than the typical star), is
        scored as at the star peak's centre; likewise beyond the galaxy peak.
        """
        _, m, s = self._prior()
        lo, hi = min(m), max(m)
        return mixture_posterior(np.clip(mu, lo, hi), sigma, self.weights_, m, s)

    def _physical_options(self):
        return {k: getattr(self, k) for k in PHYSICAL_OPTIONS}

    def _phys_cols(self):
        if self.physical == "morph":
            return slice(0, 4)
        if self.physical == "colour":
            return slice(4, 8)
        return slice(0, N_PHYSICAL)

    def _ae_feats(self, z):
        if self.ae_components == 0:
            return np.zeros((len(z), 0), np.float32)
        if self.ae_pcs_ is None:
            return z
        return ((z - self.ae_mean_) / self.ae_scale_) @ self.ae_pcs_.T

    def _encode_latent(self, zin, batch_size=4096):
        dev = next(self.vae_.parameters()).device
        mu, logvar = _batched(self.vae_.encode, zin.astype(np.float32), batch_size, dev)
        return mu, np.exp(0.5 * logvar)

    # inference -------------------------------------------------------------
    def transform(self, stamps, batch_size=256):
        """Latents: dict ``z_ae`` (N, 30), ``z_hvae`` (N, 1), ``z_hvae_sigma`` (N, 1).

        The physical statistics use the PSF of each field in ``stamps``
        (``meta['field']``) when the call holds at least 30 of its sources
        with S/N >= 50, else the PSF stored at fit time: give a whole field's
        stamps in one call for a field-specific PSF; ``batch_size`` only sets
        the network batches.
        """
        _check_stamps(stamps)
        n = len(stamps.flux)
        if n == 0:
            return {"z_ae": np.zeros((0, self.ae_latent), np.float32), "z_hvae": np.zeros((0, 1), np.float32),
                    "z_hvae_sigma": np.zeros((0, 1), np.float32)}
        from astrohvae.psf import chunked_statistics

        dev = next(self.ae_.parameters()).device
        bs = max(1, batch_size)

        def encode(chunk):
            # the whole chunk's input at once (its g+r+i image is then reused by
            # profile_features below); the network runs in batches of bs
            return _batched(self.ae_.encode, _inputs(chunk, self.representation, self.crop), bs, dev)[0]

        # one pass over the (possibly zarr/dask-backed) stamps for the AE
        # latents and the field-independent statistics of each chunk
        res = chunked_statistics(stamps, encode,
                                 *(_pass1_statistics(getattr(self, "peak_centre", True)) if self.physical else ()))
        z = res[0].astype(np.float32)
        feats = [self._ae_feats(z)]
        phys = None
        if self.physical:
            phys = _physical(stamps, self.ref_, colours=getattr(self, "colour_templates_", None) is not None,
                             options=self._physical_options(),
                             pass1=res[1:])[0]
            feats.append(phys[:, self._phys_cols()])
        zin = np.concatenate(feats, axis=1)
        miss = ~np.isfinite(zin).all(axis=1)
        mu, sig = self._encode_latent(np.nan_to_num(zin))
        p_marg = self._marginalise(zin, miss, mu, sig) if miss.any() else None
        out = {"z_ae": z, "z_hvae": mu.astype(np.float32), "z_hvae_sigma": sig.astype(np.float32)}
        if p_marg is not None:
            out["p_galaxy_marginal"] = p_marg
        if getattr(self, "colour_templates_", None) is not None and phys is not None:
            ce = phys[:, N_PHYSICAL:]
            out["colour_llr"] = colour_llr(self.colour_templates_, ce[:, :4], ce[:, 4:]).astype(np.float32)
        return out

    def _marginalise(self, zin, miss, mu, sig):
        """``p_galaxy`` of the sources with missing statistics (NaN elsewhere), averaged over draws of them.

        The draws come from the density of the statistics given the observed
        ones (`marginal_draws`): the fitted ``stat_density_``, or for weights
        made before it existed one fitted on the call's own complete sources
        (at least `MIN_DENSITY_ROWS`; else those sources are classified as
        before, from zeros).  ``mu`` and ``sig`` of those sources are set in
        place to the mean and spread of the latent over the draws.
        """
        density = getattr(self, "stat_density_", None)
        if density is None and (~miss).sum() >= MIN_DENSITY_ROWS:
            density = statistics_density(zin[~miss], seed=0 if self.random_state is None else int(self.random_state))
        if density is None:
            return None
        rows = np.flatnonzero(miss)
        draws = marginal_draws(density, zin[rows], seed=0 if self.random_state is None else int(self.random_state))
        pc = self._phys_cols() if self.physical else slice(0, 0)
        lo, hi = STAT_RANGES[pc, 0], STAT_RANGES[pc, 1]
        nphys = len(lo)
        if nphys:
            draws[..., -nphys:] = np.clip(draws[..., -nphys:], lo, hi)
        n, k, d = draws.shape
        mu_d, sig_d = self._encode_latent(draws.reshape(n * k, d).astype(np.float32))
        p = self._posterior(mu_d[:, 0], sig_d[:, 0])[:, 1 - self.star_peak_].reshape(n, k).mean(axis=1)
        mu_d, sig_d = mu_d[:, 0].reshape(n, k), sig_d[:, 0].reshape(n, k)
        mu[rows, 0] = mu_d.mean(axis=1)
        sig[rows, 0] = np.sqrt((sig_d**2).mean(axis=1) + mu_d.var(axis=1))
        out = np.full(len(zin), np.nan, np.float32)
        out[rows] = p
        return out

    def _p_galaxy(self, t):
        """``p_galaxy`` from `transform`'s output: the peak posterior (over the draws of missing
        statistics, `_marginalise`), times the colour likelihood ratio."""
        p = self._posterior(t["z_hvae"][:, 0], t["z_hvae_sigma"][:, 0])[:, 1 - self.star_peak_]
        if "p_galaxy_marginal" in t:
            pm = t["p_galaxy_marginal"]
            p = np.where(np.isfinite(pm), pm, p)
        if "colour_llr" in t:
            p = np.clip(p, 1e-4, 1 - 1e-4)
            logit = np.log(p / (1 - p)) + np.clip(t["colour_llr"], -COLOUR_CLIP, COLOUR_CLIP)
            p = 1.0 / (1.0 + np.exp(-logit))
        return p

    def predict_proba(self, stamps, batch_size=256):
        """``p_galaxy`` (N,): posterior probability of the galaxy peak."""
        return self._p_galaxy(self.transform(stamps, batch_size)).astype(np.float32)

    def predict_proba_transform(self, stamps, batch_size=256):
        """``(p_galaxy, transform(stamps))`` in one pass (what a pipeline wants)."""
        t = self.transform(stamps, batch_size)
        return self._p_galaxy(t).astype(np.float32), t

    def predict(self, stamps, batch_size=256):
        """``'star'`` / ``'galaxy'`` per stamp."""
        return np.where(self.predict_proba(stamps, batch_size) >= 0.5, "galaxy", "star")

    # persistence (one format: `save_model` / `load_model`) ------------------
    def _fitted_state(self):
        """``(modules, arrays, values)``: everything `fit` learnt, for `save_model`."""
        arrays = {}
        values = {"star_peak": int(self.star_peak_), "weights": [float(v) for v in self.weights_],
                  "label_stats": self.label_stats_, "ref": None}
        if self.ref_ is not None:
            arrays["psf"] = np.asarray(self.ref_["psf"], dtype=np.float32)
            values["ref"] = {"r_star": float(self.ref_["r_star"]), "c_star": float(self.ref_["c_star"])}
            if self.ref_.get("noise_scale") is not None:
                values["ref"]["noise_scale"] = [float(v) for v in self.ref_["noise_scale"]]
        ct = getattr(self, "colour_templates_", None)
        if ct is not None:
            for cls_name, parts in ct.items():
                for part, arr in zip(("weights", "means", "covs"), parts):
                    arrays[f"colour_{cls_name}_{part}"] = np.asarray(arr, dtype=np.float64)
        if self.ae_pcs_ is not None:
            for k in ("ae_mean_", "ae_scale_", "ae_pcs_"):
                arrays[k.strip("_")] = np.asarray(getattr(self, k), dtype=np.float32)
        density = getattr(self, "stat_density_", None)
        if density is not None:
            for part, arr in zip(("weights", "means", "covs"), density):
                arrays[f"stat_density_{part}"] = np.asarray(arr, dtype=np.float64)
        return {"ae": self.ae_, "latent_vae": self.vae_}, arrays, values

    def _set_fitted_state(self, modules, arrays, values):
        self.ae_, self.vae_ = modules["ae"], modules["latent_vae"]
        self.star_peak_ = int(values["star_peak"])
        self.weights_ = [float(v) for v in values["weights"]]
        self.label_stats_ = values.get("label_stats")
        self.ref_ = None
        if self.physical:
            if values.get("ref") is None or "psf" not in arrays:
                raise ValueError("physical statistics need the fitted stellar-locus reference and PSF")
            self.ref_ = dict(values["ref"])
            self.ref_["psf"] = arrays["psf"]
        self.colour_templates_ = None
        if self.colour_prior and "colour_star_weights" in arrays:
            self.colour_templates_ = {c: tuple(arrays[f"colour_{c}_{part}"] for part in ("weights", "means", "covs"))
                                      for c in ("star", "galaxy")}
        self.ae_pcs_ = None
        if "ae_pcs" in arrays:
            self.ae_mean_, self.ae_scale_, self.ae_pcs_ = arrays["ae_mean"], arrays["ae_scale"], arrays["ae_pcs"]
        # weights made before the statistics density: None (`_marginalise` then uses the call's sources)
        self.stat_density_ = None
        if "stat_density_weights" in arrays:
            self.stat_density_ = tuple(np.asarray(arrays[f"stat_density_{part}"], dtype=np.float64)
                                       for part in ("weights", "means", "covs"))

    @classmethod
    def load(cls, directory, device="auto"):
        """Load a classifier written by `save` (see `load_model`)."""
        return load_model(directory, device=device, expect=cls)


# ---------------------------------------------------------------------------
# V+M / Vr+M
# ---------------------------------------------------------------------------
class ManifoldClassifier(_Estimator):
    """V+M / Vr+M: conv VAE latents -> 1-D Isomap -> threshold at the star fraction.

    Parameters
    ----------
    kl : {'standard', 'sc', 'dkl', 'aw', 'pw'}
        KL term of the VAE (``'standard'`` = V+M, the others = Vr+M).
    latent_dim : int
    star_fraction : float
        Prior star fraction: the threshold puts this share of the training
        stamps on the star side.
    n_neighbors : int
        Isomap neighbours; Isomap is fitted on at most ``max_manifold``
        training stamps.
    representation, crop, channels, epochs, batch_size, lr, center_weight,
    augment, device, random_state : as for `HierarchicalClassifier`
    prior : (m, s)
        The two-peak prior of the revised terms.
    beta : float
        Weight of the divergence.
        (defaults: the paper's whole-stamp ``'lupt'`` recipe).
    """

    def __init__(self, kl="standard", latent_dim=4, star_fraction=0.35, n_neighbors=12, max_manifold=1500,
                 representation="lupt", crop=None, channels=(16, 32, 64, 64), epochs=6, batch_size=128,
                 lr=2e-3, center_weight=0.0, augment=False, prior=(1.0, 0.5), beta=1.0, device="cpu",
                 random_state=0, verbose=False):
        self.kl = kl
        self.prior = tuple(prior)
        self.beta = beta
        self.latent_dim = latent_dim
        self.star_fraction = star_fraction
        self.n_neighbors = n_neighbors
        self.max_manifold = max_manifold
        self.representation = representation
        self.crop = crop
        self.channels = tuple(channels)
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.center_weight = center_weight
        self.augment = augment
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    @property
    def method(self):
        return "V+M" if self.kl == "standard" else f"Vr+M ({self.kl.upper()})"

    def _latent(self, stamps, batch_size=256):
        dev = next(self.vae_.parameters()).device
        out = []
        for i in range(0, len(stamps.flux), batch_size):
            x = _inputs(stamps[i : i + batch_size], self.representation, self.crop)
            out.append(_batched(lambda t: self.vae_.encode(t)[0], x, batch_size, dev)[0])
        return np.concatenate(out)

    def fit(self, stamps, y=None, checkpoint_dir=None):
        """Fit on unlabelled stamps (``y`` ignored); ``checkpoint_dir`` as in `HierarchicalClassifier.fit`."""

        from astrohvae.device import resolve_device

        _check_stamps(stamps)
        seed = 0 if self.random_state is None else int(self.random_state)
        x = _inputs(stamps, self.representation, self.crop)
        w = _radial_weight(x.shape[-1], 4.0, self.center_weight)
        self.vae_, self.history_ = _train_conv_vae(x, self.latent_dim, self.kl, self.channels, self.epochs,
                                                   self.batch_size, self.lr, seed, w, self.augment,
                                                   resolve_device(self.device), prior_m=self.prior[0],
                                                   prior_s=self.prior[1], beta=self.beta, verbose=self.verbose,
                                                   checkpoint=_checkpoint(checkpoint_dir, "vae"))
        del x
        z = self._latent(stamps)
        z = np.nan_to_num(z)
        rng = np.random.default_rng(seed)
        idx = rng.permutation(len(z))[: self.max_manifold]
        self.scale_ = z[idx].std(axis=0) + 1e-6
        self.center_ = z[idx].mean(axis=0)
        self.manifold_z_ = ((z[idx] - self.center_) / self.scale_).astype(np.float32)
        self.iso_ = self._isomap().fit(self.manifold_z_)
        e = self.iso_.embedding_[:, 0]
        self.manifold_embedding_ = e.astype(np.float32)
        # orientation: which end is stars (more concentrated members), then the threshold
        thr0 = np.median(e)
        side, _ = star_side(stamps[idx], (e > thr0).astype(int))
        self.sign_ = 1.0 if side == 0 else -1.0  # stars at low sign*e
        es = self.sign_ * e
        self.threshold_ = float(np.quantile(es, self.star_fraction))
        self.width_ = float(es.std() * 0.1 + 1e-9)
        return self

    def _isomap(self):
        from sklearn.manifold import Isomap

        # the dense eigensolver is deterministic: `load_model` refits the
        # embedding on the saved training latents and gets the same one
        return Isomap(n_neighbors=min(self.n_neighbors, self.max_manifold - 1), n_components=1,
                      eigen_solver="dense")

    def _fitted_state(self):
        arrays = {"scale": self.scale_, "center": self.center_, "manifold_z": self.manifold_z_,
                  "manifold_embedding": self.manifold_embedding_}
        values = {"sign": float(self.sign_), "threshold": float(self.threshold_), "width": float(self.width_)}
        return {"vae": self.vae_}, arrays, values

    def _set_fitted_state(self, modules, arrays, values):
        self.vae_ = modules["vae"]
        self.scale_, self.center_ = arrays["scale"], arrays["center"]
        self.manifold_z_, self.manifold_embedding_ = arrays["manifold_z"], arrays["manifold_embedding"]
        self.iso_ = self._isomap().fit(self.manifold_z_)
        if float(np.dot(self.iso_.embedding_[:, 0], self.manifold_embedding_)) < 0:  # eigenvector sign
            self.iso_.embedding_ *= -1
            self.iso_.kernel_pca_.eigenvectors_ *= -1
        self.sign_, self.threshold_, self.width_ = values["sign"], values["threshold"], values["width"]

    def transform(self, stamps, batch_size=256):
        """dict ``z_vae`` (N, latent_dim), ``embedding`` (N,) (galaxy-positive) and ``z_hvae``.

        ``z_hvae`` (N, 1) is the embedding again, under the name of the
        catalogue's classifier-latent column.
        """
        z = np.nan_to_num(self._latent(stamps, batch_size))
        e = self.sign_ * self.iso_.transform((z - self.center_) / self.scale_)[:, 0]
        return {"z_vae": z, "embedding": e, "z_hvae": e[:, None].astype(np.float32)}

    def predict_proba(self, stamps, batch_size=256):
        e = self.transform(stamps, batch_size)["embedding"]
        return (1.0 / (1.0 + np.exp(-np.clip((e - self.threshold_) / self.width_, -50, 50)))).astype(np.float32)

    def predict(self, stamps, batch_size=256):
        return np.where(self.predict_proba(stamps, batch_size) >= 0.5, "galaxy", "star")


# ---------------------------------------------------------------------------
# the plain AE: a feature extractor, not a classifier
# ---------------------------------------------------------------------------
class AutoEncoderFeatures(_Estimator):
    """The paper's convolutional AE alone: 30 latents per stamp, no classes.

    ``transform(stamps)`` gives ``{'z_ae': (N, latent_dim)}``; it has no
    ``predict_proba``, so ``astrohvae run`` refuses it.  Parameters as for
    `HierarchicalClassifier` (defaults: the paper's whole-stamp ``'lupt'``
    recipe).
    """

    method = "AE (features)"

    def __init__(self, latent_dim=30, representation="lupt", crop=None, channels=(16, 32, 64, 64), epochs=6,
                 batch_size=128, lr=2e-3, center_weight=0.0, augment=False, device="cpu", random_state=0,
                 verbose=False):
        self.latent_dim = latent_dim
        self.representation = representation
        self.crop = crop
        self.channels = tuple(channels)
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.center_weight = center_weight
        self.augment = augment
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def fit(self, stamps, y=None, checkpoint_dir=None):
        """Fit on unlabelled stamps (``y`` ignored); ``checkpoint_dir`` as in `HierarchicalClassifier.fit`."""
        from astrohvae.device import resolve_device

        _check_stamps(stamps)
        x = _inputs(stamps, self.representation, self.crop)
        w = _radial_weight(x.shape[-1], 4.0, self.center_weight)
        self.ae_, self.history_ = _train_ae(x, self.latent_dim, self.channels, self.epochs, self.batch_size, self.lr,
                                            0 if self.random_state is None else int(self.random_state), w,
                                            self.augment, resolve_device(self.device), verbose=self.verbose,
                                            checkpoint=_checkpoint(checkpoint_dir, "ae"))
        return self

    def transform(self, stamps, batch_size=256):
        """dict ``z_ae`` (N, latent_dim)."""
        dev = next(self.ae_.parameters()).device
        out = [np.zeros((0, self.latent_dim), np.float32)]
        for i in range(0, len(stamps.flux), batch_size):
            x = _inputs(stamps[i : i + batch_size], self.representation, self.crop)
            out.append(_batched(self.ae_.encode, x, batch_size, dev)[0])
        return {"z_ae": np.concatenate(out)}

    def _fitted_state(self):
        return {"ae": self.ae_}, {}, {}

    def _set_fitted_state(self, modules, arrays, values):
        self.ae_ = modules["ae"]


# ---------------------------------------------------------------------------
# supervised probe
# ---------------------------------------------------------------------------
class LatentProbe:
    """Supervised probe: logistic regression (5-fold CV over C) on the 30 AE latents.

    ``fit(stamps, y)`` trains the AE without labels, then the regression with
    them (``y`` from ``stamps.meta['truth_type']`` when not given; unknown
    labels are dropped).  Not label-free: a measure of what the latents know.
    """

    method = "probe (supervised)"

    def __init__(self, representation="lupt", crop=None, ae_epochs=6, channels=(16, 32, 64, 64),
                 center_weight=0.0, augment=False, device="cpu", random_state=0, verbose=False):
        self.representation = representation
        self.crop = crop
        self.ae_epochs = ae_epochs
        self.channels = tuple(channels)
        self.center_weight = center_weight
        self.augment = augment
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def _z(self, stamps, batch_size=256):
        dev = next(self.ae_.parameters()).device
        out = []
        for i in range(0, len(stamps.flux), batch_size):
            x = _inputs(stamps[i : i + batch_size], self.representation, self.crop)
            out.append(_batched(self.ae_.encode, x, batch_size, dev)[0])
        return np.concatenate(out)

    def fit(self, stamps, y=None):
        from sklearn.linear_model import LogisticRegressionCV
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        from astrohvae.device import resolve_device

        if y is None:
            y = np.asarray(stamps.meta["truth_type"]).astype(int)
        y = np.asarray(y)
        seed = 0 if self.random_state is None else int(self.random_state)
        x = _inputs(stamps, self.representation, self.crop)
        w = _radial_weight(x.shape[-1], 4.0, self.center_weight)
        self.ae_, _ = _train_ae(x, 30, self.channels, self.ae_epochs, 128, 2e-3, seed, w, self.augment,
                                resolve_device(self.device))
        del x
        z = self._z(stamps)
        ok = (y == 0) | (y == 1)
        import warnings

        self.lr_ = make_pipeline(StandardScaler(), LogisticRegressionCV(cv=5, max_iter=2000))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.lr_.fit(z[ok], y[ok])
        return self

    def transform(self, stamps, batch_size=256):
        return {"z_ae": self._z(stamps, batch_size)}

    def predict_proba(self, stamps, batch_size=256):
        return self.lr_.predict_proba(self._z(stamps, batch_size))[:, 1].astype(np.float32)

    def predict(self, stamps, batch_size=256):
        return np.where(self.predict_proba(stamps, batch_size) >= 0.5, "galaxy", "star")


# ---------------------------------------------------------------------------
# one format for every estimator: astrohvae.weights
# ---------------------------------------------------------------------------
MODELS = {cls.__name__: cls for cls in (HierarchicalClassifier, ManifoldClassifier, AutoEncoderFeatures)}
"""The estimators a weights folder may hold (``config.json``'s ``estimator``)."""


def _get_params(est):
    """``__init__`` parameters of ``est`` as plain JSON values (scikit-learn's ``get_params``)."""
    import inspect

    names = [p for p in inspect.signature(type(est).__init__).parameters if p != "self"]
    out = {}
    for k in names:
        v = getattr(est, k)
        out[k] = list(v) if isinstance(v, tuple) else v
    return out


def save_model(estimator, directory, **config):
    """Save a fitted estimator of `MODELS` with `astrohvae.weights.save_weights`.

    ``config.json`` records the estimator's class, its method name, its
    constructor parameters and its fitted values; the tensors file holds its
    networks and fitted arrays.  Extra keyword arguments (e.g. the training
    data) are recorded as they are.

    Returns
    -------
    str
        `astrohvae.weights.weights_hash` of the folder (what a catalogue
        records as ``MODELSHA``).
    """
    from astrohvae.weights import save_weights, weights_hash

    name = type(estimator).__name__
    if MODELS.get(name) is not type(estimator):
        raise ValueError(f"{name} is not one of astrohvae.classify.MODELS")
    modules, arrays, values = estimator._fitted_state()
    params = estimator.get_params()
    for k in ("device", "verbose"):  # where and how loudly it ran: not part of the model
        params.pop(k, None)
    cfg = {"estimator": name, "method": str(estimator.method), "params": params, "fitted": values}
    cfg.update(config)
    save_weights(directory, modules, cfg, arrays)
    return weights_hash(directory)


def load_model(directory, device="auto", expect=None):
    """Load an estimator saved by `save_model`.

    Parameters
    ----------
    directory : path
        A weights folder (``model.safetensors`` + ``config.json``).
    device : str
    expect : class or None
        Refuse a folder that holds another estimator.

    Raises
    ------
    InputError
        Anything `astrohvae.weights.load_weights` refuses; an unknown
        estimator, parameters it does not take, or fitted values that do not
        fit it.
    """
    from astrohvae.device import resolve_device
    from astrohvae.weights import CONFIG_FILE, load_weights, weights_hash

    directory = Path(directory)
    dev = resolve_device(device)
    modules, cfg, arrays = load_weights(directory, device=dev, arrays=True)
    cpath = directory / CONFIG_FILE
    name = cfg.get("estimator")
    cls = MODELS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise InputError(cpath, f"holds no astrohvae classifier (estimator {name!r}; expected one of "
                                f"{', '.join(MODELS)}); was it written by 'astrohvae train'?")
    if expect is not None and cls is not expect:
        raise InputError(cpath, f"holds a {name}, not a {expect.__name__}")
    params = cfg.get("params")
    if not isinstance(params, dict):
        raise InputError(cpath, "no 'params' object")
    try:
        est = cls(**params)
        est.device = str(dev)
        est._set_fitted_state(modules, arrays, cfg.get("fitted") or {})
    except (TypeError, ValueError, KeyError) as exc:
        raise InputError(cpath, f"does not describe a fitted {name} ({type(exc).__name__}: {exc})") from None
    est.weights_hash = weights_hash(directory)
    est.training_ = cfg.get("training")
    return est


def load_default_classifier(device="auto"):
    """The classifier shipped in ``astrohvae/data/default/`` (A+Vr)."""
    return load_model(DEFAULT_WEIGHTS, device=device)
