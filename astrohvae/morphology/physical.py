"""The eight label-free physical statistics the A+Vr classifier reads, and colours."""

from __future__ import annotations

import numpy as np

from astrohvae.conventions import GRI
from astrohvae.morphology.statistics import (
    per_stamp_chunks as _per_stamp_chunks,  # noqa: E402
)

PHYSICAL_OPTIONS = {"locus_normalise": True, "zero_point": True, "saturated_stellar": True, "peak_centre": True}
"""Defaults of the switches of `physical_features` (parameters of `HierarchicalClassifier`):

``locus_normalise``
    Divide r_half and concentration by the field's stellar values (else by
    fixed 2 px and 0.4).  The stellar locus is the smallest-radius peak of the
    bright sources' half-light radii (`astrohvae.morphology.psf.stellar_locus`).  Measured
    on the simulated test fields (seeds 500-507), A+Vr AUC r<19 / 19<r<21 /
    r>21 over two seeds: 0.986 / 0.959 / 0.692 with the fixed 2 px and 0.4,
    1.000 / 0.967 / 0.709 normalised.
``zero_point``
    Shift SPREAD_MODEL (divide the PSF/aperture ratio) so that the field's
    stellar locus sits at 0 (1).
``saturated_stellar``
    Give saturated sources (`astrohvae.morphology.psf.saturated`: flat-topped cores;
    `astrohvae.morphology.psf.band_saturated`: cores saturated in some bands only, as SDSS
    frames interpolate them) the point-source morphology.
``peak_centre``
    Measure a bright source whose stamp is not centred on it (a star whose
    segment merges with neighbours in a crowded field) about its own
    brightest pixel (`astrohvae.morphology.psf.peak_centred`).  Measured on the eight
    real SDSS fields (benchmarks/bright_stars.py, shipped weights): of the
    200 sources brighter than r = 15, 9 are labelled galaxy with it and 26
    without it; simulated test fields and the SDSS star recall of
    004510-4-0030 are unchanged.
"""


def physical_features(stamps, ref=None, colours=False, pass1=None, options=None):
    """Label-free physical statistics of each source, see `_physical_compute`."""
    return _physical_compute(stamps, ref, colours, pass1, {**PHYSICAL_OPTIONS, **(options or {})})


def pass1_statistics(peak_centre=PHYSICAL_OPTIONS["peak_centre"]):
    """The field-independent per-stamp statistics of `_physical_compute` (its first pass).

    With ``peak_centre`` each reads the chunk re-centred by `astrohvae.morphology.psf.peak_centred`.
    """
    from astrohvae.morphology.psf import peak_centred, saturated
    from astrohvae.morphology.statistics import profile_features

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
    their errors (`psf_colours`, for the colour likelihood); with ``colours='flux'``
    (N, 19): then the five PSF-fit fluxes and their errors (`psf_fluxes`, for
    the flux-space stellar-locus likelihood `locus_llr`) and the error of SPREAD_MODEL
    (`SPREAD_ERR_COLUMN`, for `spread_llr`), NaN for saturated sources.  ``ref`` holds the locus values and
    the PSF used for groups (fields) too small to estimate their own.

    The stamps are read twice, chunk by chunk (`astrohvae.morphology.statistics.chunked_statistics`;
    they may be lazily backed): once for the field-independent statistics
    (``pass1``: `profile_features`, `saturated`, `aperture_colours`, given
    when the caller has made them in its own pass), once for those against
    the field's PSF (`psf_match`, `band_saturated`).  ``options``: the
    switches of `PHYSICAL_OPTIONS`.
    """
    locus_normalise, zero_point, saturated_stellar, peak_centre = (
        bool(options[k]) for k in ("locus_normalise", "zero_point", "saturated_stellar", "peak_centre"))
    from astrohvae.morphology.psf import (
        PSFModel,
        band_saturated,
        estimate_psf,
        peak_centred,
        psf_match,
        stellar_locus,
    )
    from astrohvae.morphology.statistics import chunked_statistics

    centred = peak_centred if peak_centre else (lambda c: c)
    if pass1 is None:
        pass1 = chunked_statistics(stamps, *pass1_statistics(peak_centre))
    feat, sat_all, ap_colours = pass1
    n = len(feat["r_half"])
    fields = field_names(stamps, n)
    flux_mode = isinstance(colours, str) and colours == "flux"
    out = np.zeros((n, N_PHYSICAL + (N_FLUX_COLUMNS + 1 if flux_mode else 8 if colours else 0)), dtype=np.float32)
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
            if flux_mode:
                out[sel, N_PHYSICAL:SPREAD_ERR_COLUMN] = psf_fluxes(sub_st, psf.image, noise=nk)
                # the error of SPREAD_MODEL, its white-noise value scaled by the g+r+i correlated-noise factor
                sky2 = np.asarray(sub_st.sky_sigma, dtype=np.float64)[:, GRI] ** 2
                nk2 = 1.0 if nk is None else np.asarray(nk, dtype=np.float64)[GRI] ** 2
                fac = np.sqrt((sky2 * nk2).sum(axis=1) / np.maximum(sky2.sum(axis=1), 1e-24))
                out[sel, SPREAD_ERR_COLUMN] = m["spread_err"] * fac
            else:
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
        out[sel, 3] = np.clip(spread, -0.005, 0.1) * SPREAD_FACTOR
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
                # saturated: colours unmeasurable (no colour evidence)
                if flux_mode:
                    out[k, N_PHYSICAL:] = np.nan
                else:
                    out[k, N_PHYSICAL + 4 :] = 10.0
            sat_groups.append((k, sel[locus] if locus is not None else sel[bright]))
    out[:, 4:8] = ap_colours
    for k, ref_rows in sat_groups:
        # a saturated core's aperture colours are the interpolation's, not the
        # star's: such sources get their field's typical stellar colours
        if ref_rows.size:
            with np.errstate(all="ignore"):
                out[k, 4:8] = np.nanmedian(out[ref_rows, 4:8], axis=0)
    if colours and not flux_mode:  # a colour with a band missing carries no colour evidence
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

def field_names(stamps, n):
    """The field of each of the ``n`` stamps (str array; ``'_'`` for all when the stamps carry none).

    Statistics that depend on a field's own population (its PSF and stellar locus, its galaxies'
    SEDs and SPREAD_MODEL) are computed per field name.
    """
    meta = getattr(stamps, "meta", None)
    if meta is not None and "field" in meta.colnames:
        return np.asarray(meta["field"]).astype(str)
    return np.array(["_"] * n)


N_PHYSICAL = 8
"""Number of label-free physical statistics the LatentVAE reads (see `physical_features`)."""

SPREAD_FACTOR = 20.0
"""Column 3 of the statistics is SPREAD_MODEL (clipped to [-0.005, 0.1]) times this."""

N_FLUX_COLUMNS = 10
"""With ``colours='flux'`` `physical_features` gives, after the `N_PHYSICAL` statistics, the five PSF-fit
fluxes and their errors (`psf_fluxes`) ..."""

SPREAD_ERR_COLUMN = N_PHYSICAL + N_FLUX_COLUMNS
"""... and then the error of SPREAD_MODEL (`astrohvae.morphology.psf.psf_match`'s ``spread_err`` times the
g+r+i correlated-noise factor of `noise_scale`; column 3 holds 20 x SPREAD_MODEL)."""


MIN_COLOUR_COVER = 0.5
"""A colour is measured when both its bands cover at least this share of the aperture's pixels
(other sources' pixels aside); else it is missing (NaN) and the classifier marginalises over it."""


@_per_stamp_chunks
def aperture_colours(stamps, radius=3.0):
    """u-g, g-r, r-i, i-z colours (asinh magnitudes) inside ``radius`` pixels, other sources masked.

    From valid pixels only: each colour sums both its bands over the
    aperture's pixels that both cover (`astrohvae.stamps.preprocess.band_valid`;
    a band offset from r leaves an edge strip it does not cover), and is NaN
    where they cover under `MIN_COLOUR_COVER` of it.
    """
    from astrohvae import BANDS
    from astrohvae.conventions import MASK_INVALID, MASK_OTHER
    from astrohvae.photometry import luptitude
    from astrohvae.stamps.preprocess import band_valid, central_window, clean_stamps

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


def _unit_psf(psf_image):
    """The per-band PSF (B, ny, nx), clipped at 0 and normalised to unit flux in each band."""
    p = np.clip(np.asarray(psf_image, dtype=np.float64), 0.0, None)
    return p / np.maximum(p.sum(axis=(1, 2), keepdims=True), 1e-12)


def _psf_amplitudes(img, psf, good, sky):
    """Least-squares PSF amplitudes ``(flux, error)`` (N, B) of ``img`` (N, B, h, w) over the ``good`` pixels.

    ``psf`` (B, h, w) is the unit PSF on the same window; the error is the
    white-noise one, ``sky / sqrt(sum P^2)`` over the good pixels.
    """
    pp = psf[None] * good
    norm = np.maximum((pp * psf[None]).sum(axis=(2, 3)), 1e-12)
    return (pp * img).sum(axis=(2, 3)) / norm, np.asarray(sky, dtype=np.float64) / np.sqrt(norm)


@_per_stamp_chunks
def _blank_psf_fluxes(stamps, psf_image, radius=5.0, offset=16):
    """PSF-fit fluxes on blank sky, in units of their white-noise error: (4 N, 5), NaN where not blank.

    The PSF of each band is fitted, as in `psf_colours`, at four positions
    ``offset`` pixels from the stamp centre along the diagonals, using only
    pixels of no source (mask 0); a position with under 90 % of its pixels
    usable gives NaN.
    """
    from astrohvae.morphology.statistics import radius_grid

    flux = np.asarray(stamps.flux)
    mask = np.asarray(stamps.mask)
    p = _unit_psf(psf_image)
    ny, nx = p.shape[1:]
    cy, cx = ny // 2, nx // 2
    h = int(np.ceil(radius))
    pw = p[:, cy - h:cy + h + 1, cx - h:cx + h + 1]  # the PSF's central window: all a disc of `radius` reads
    disc = radius_grid(2 * h + 1, 2 * h + 1) <= radius
    sky = np.maximum(np.asarray(stamps.sky_sigma, dtype=np.float64), 1e-12)
    out = []
    for dy, dx in ((-offset, -offset), (-offset, offset), (offset, -offset), (offset, offset)):
        win = (slice(cy + dy - h, cy + dy + h + 1), slice(cx + dx - h, cx + dx + h + 1))
        good = ((mask[(slice(None),) + win] == 0) & disc[None])[:, None]
        f, sig = _psf_amplitudes(flux[(slice(None), slice(None)) + win], pw, good, sky)
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
def psf_fluxes(stamps, psf_image, radius=5.0, noise=None):
    """``(fluxes, errors)`` as one (N, 10) array: per-band PSF-fit fluxes (nanomaggies) and their errors.

    Each band's flux is the least-squares amplitude of that band's PSF (the
    field's own, unit flux per band) over the pixels within ``radius`` of the
    source's g+r+i centroid, other sources and invalid pixels masked; its
    error is ``sigma_sky / sqrt(sum P^2)`` (sky-limited: the source's photon
    noise is left out) times ``noise`` (5,), the measured correlated-noise
    factor (`noise_scale`).  A band with no valid pixel there gets flux 0
    and an error of about 1e6 times the sky's (no evidence).
    """
    from astrohvae.conventions import GRI as _GRI
    from astrohvae.conventions import MASK_OTHER
    from astrohvae.morphology.statistics import centroids, radius_grid, recentre
    from astrohvae.stamps.preprocess import band_valid, central_window, clean_stamps

    cl = clean_stamps(stamps.flux, stamps.mask, per_band=True)
    dy, dx = centroids(cl[:, _GRI].sum(axis=1))
    p = _unit_psf(psf_image)
    # only the pixels within `radius` of the centre enter the fit: all below runs on that window
    win = central_window(*p.shape[1:], int(np.ceil(radius)))
    r = radius_grid(*p.shape[1:])[win]
    img = recentre(cl, dy, dx)[(slice(None), slice(None)) + win].astype(np.float64)
    p = p[(slice(None),) + win]
    # each band's own valid pixels (`band_valid`): a pixel another band lacks (bit 4) still counts here
    mask = np.asarray(stamps.mask)[(slice(None),) + win]
    flux = np.asarray(stamps.flux)[(slice(None), slice(None)) + win]
    good = band_valid(flux, mask) & ((mask & MASK_OTHER) == 0)[:, None] & (r <= radius)[None, None]
    f, sig = _psf_amplitudes(img, p, good, stamps.sky_sigma)
    if noise is not None:
        sig = sig * np.asarray(noise, dtype=np.float64)[None]
    return np.concatenate([f, sig], axis=1).astype(np.float32)


def psf_colours(stamps, psf_image, radius=5.0, noise=None):
    """``(colours, errors)`` as one (N, 8) array from per-band PSF-fit fluxes (SDSS psfMag colours).

    The fluxes and their errors are `psf_fluxes`'.  Unlike fixed-aperture
    colours these do not depend on the seeing of each band, which differs
    from band to band and field to field on real data: a point source's PSF
    colours are its true colours.  Colours are asinh magnitude differences
    (u-g, g-r, r-i, i-z); a band's error is ``1.0857 sigma_f / sqrt(f^2 +
    4 b^2)`` with its softening ``b``; a colour's the two bands' in
    quadrature.
    """
    from astrohvae import BANDS, SOFTENING
    from astrohvae.photometry import luptitude

    fs = psf_fluxes(stamps, psf_image, radius=radius, noise=noise).astype(np.float64)
    f, sig = fs[:, :5], fs[:, 5:]
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


LOCUS_POINTS = 80
"""Stellar SED templates: this many points evenly spaced along `astrohvae.photometry.STELLAR_LOCUS` ..."""

QUASAR_SHARE = 0.05
QUASAR_POINTS = 30
"""... and a quasar component of this weight (`astrohvae.photometry.QUASAR_COLOURS`, this many draws)."""

SED_SCATTER = 0.1
"""Intrinsic scatter of a source's fluxes about its SED template, as a fraction of each band's flux."""

GALAXY_SEDS = 400
"""At most this many galaxy SED templates (label-free resolved sources, `galaxy_seds`) are kept."""

MORPH_SNR = 20.0
"""With the locus colour likelihood the morphology log odds are weighted by ``S/N / (S/N + MORPH_SNR)``.

S/N is the g+r+i S/N within `astrohvae.stamps.preprocess.SOURCE_RADIUS` of the source's centre
(`astrohvae.morphology.statistics.profile_features`' ``aperture_snr``).  Until the fifth session it was
the segment's S/N, which moved with the footprint's isophote: 13 of the 1,169 sources of 004510-4-0030
changed class between ``--isophote`` 0.5 and 1 (66 moved by more than 0.1 in p_galaxy); 6 (7) with
this S/N and windowed centroids.  The PSF-fit S/N does as well there, but its correlated-noise factor
(`noise_scale`) also counts the confusion of a crowded field (x2.6 in i and z on 005405-6-0099 against
x1.5 on 004510-4-0030) and moved 5 % of that field's sources from star to galaxy.

The VAE reads the statistics without their noise: at S/N ~ 10 its confidence is as large as at S/N
1000 while the statistics carry far less.  The weight is 1/2 at S/N 20 and tends to 1 for bright
sources; what it takes from the VAE goes to the noise-aware SPREAD_MODEL term (`spread_llr`,
``HierarchicalClassifier(spread_term=True)``), and colour evidence, whose errors are known, counts for
more at the faint end.  Measured (benchmarks/retrain_compare.py, weights ``52f8580b``, `COLOUR_SNR` = 100):
without the SPREAD_MODEL term, MORPH_SNR 0 / 5 / 10: simulated AUC r > 21 0.870 / 0.891 / 0.900, SDSS
stars of 004510-4-0030 labelled star 138 / 137 / 137 of 157; with it, MORPH_SNR 10 / 20 / 30: AUC r > 21
0.900 / 0.907 / 0.911, simulated sources labelled star 0.407 / 0.386 / 0.371 (truth 0.27; 0.390 without
the term), SDSS stars 140 / 145 / 144 of 157, sources of 004510-4-0030 labelled star 259 / 270 / 276 of
1,168 (250 without)."""


COLOUR_SNR = 100.0
"""With the locus colour likelihood the colour log odds are weighted by ``1 / (1 + S/N / COLOUR_SNR)``.

The flux errors shrink with S/N, the systematics of the colour term do not: interstellar
reddening of the stars (the locus is unreddened), calibration, galaxy templates that in a crowded
low-latitude field are mostly blends of stars.  Bright sources are classified by their morphology;
the colour term matters at the faint end (weight 0.91 at S/N 10, 0.09 at S/N 1000).  Measured on the
eight real fields (benchmarks/bright_stars.py, MORPH_SNR 5): sources brighter than r = 15 labelled
galaxy 18 without this weighting (all 8 more in the crowded 005405-6-0099), 10 with it, 11 for the
morphology-only classifier; simulated AUC r > 21 0.893 -> 0.891, SDSS stars of 004510-4-0030
unchanged (137/157)."""


def stellar_seds():
    """``(seds (K, 5), weights (K,))`` of the stars: the stellar locus and quasars, r = 1."""
    from astrohvae.photometry import QUASAR_COLOURS, STELLAR_LOCUS, colour_seds

    loc = STELLAR_LOCUS
    t = np.linspace(0, len(loc) - 1, LOCUS_POINTS)
    pts = np.stack([np.interp(t, np.arange(len(loc)), loc[:, j]) for j in range(4)], axis=1)
    mean, spread = QUASAR_COLOURS
    qso = np.random.default_rng(1).normal(mean, spread, (QUASAR_POINTS, 4))
    seds = colour_seds(np.r_[pts[:, [1, 0, 2, 3]], qso])
    w = np.r_[np.full(LOCUS_POINTS, (1 - QUASAR_SHARE) / LOCUS_POINTS), np.full(QUASAR_POINTS, QUASAR_SHARE / QUASAR_POINTS)]
    return seds, w


def resolved_sources(phys, snr, saturated_flags):
    """Label-free galaxy templates: unsaturated sources with S/N >= `COLOUR_GALAXY_SNR` whose half-light
    radius exceeds the stellar locus by more than exp(`COLOUR_GALAXY_RHALF`) (``phys``: `physical_features`)."""
    with np.errstate(invalid="ignore"):
        return ((np.asarray(phys)[:, 0] > COLOUR_GALAXY_RHALF) & (np.asarray(snr) >= COLOUR_GALAXY_SNR)
                & ~np.asarray(saturated_flags, bool))


def galaxy_seds(fluxes, galaxies, fields=None, seed=0):
    """SED templates (K, 5), r = 1, of label-free galaxies: rows ``galaxies`` of ``fluxes`` (N, 10, `psf_fluxes`).

    Those with positive g, r and i fluxes are kept, at most `GALAXY_SEDS`
    (a seeded random subset), and with ``fields`` (N,) at most an equal share
    of them from each field: a crowded low-latitude field, whose "resolved"
    sources are mostly blends of reddened stars, then cannot make most of the
    templates.  None with fewer than `MIN_TEMPLATE`.
    """
    fx = np.asarray(fluxes, dtype=np.float64)[:, :5]
    with np.errstate(invalid="ignore"):
        keep = np.asarray(galaxies, bool) & np.isfinite(fx).all(axis=1) & (fx[:, 1:4] > 0).all(axis=1)
    rows = np.flatnonzero(keep)
    if len(rows) < MIN_TEMPLATE:
        return None
    rng = np.random.default_rng(seed)
    if fields is not None:
        fields = np.asarray(fields).astype(str)[rows]
        names = np.unique(fields)
        cap = max(1, GALAXY_SEDS // len(names))
        rows = np.concatenate([r if len(r) <= cap else rng.choice(r, cap, replace=False)
                               for r in (rows[fields == f] for f in names)])
    if len(rows) > GALAXY_SEDS:
        rows = rng.choice(rows, GALAXY_SEDS, replace=False)
    f = fx[np.sort(rows)]
    return f / f[:, 2:3]


def sed_loglik(fluxes, seds, weights, scatter=SED_SCATTER):
    """log p(fluxes | class): a mixture of SED templates, each at a free amplitude, with Gaussian errors.

    For template ``s`` the fluxes are ``A s`` plus the measurement errors
    (`psf_fluxes`, the last five columns) and an intrinsic scatter of
    ``scatter`` times each band's flux; the amplitude ``A >= 0`` is
    marginalised analytically under a flat prior of unit density (the same
    for every class, so it cancels in a ratio).  Unlike a likelihood of asinh colours this holds
    at any S/N: a band measured at S/N ~ 1 (the u band of a faint M dwarf)
    simply weighs little, where its colour would be pulled towards the
    softening.  NaN where a flux is NaN (saturated sources).
    """
    from scipy.special import log_ndtr

    fx = np.asarray(fluxes, dtype=np.float64)
    f, sig = fx[:, :5], fx[:, 5:]
    ok = np.isfinite(fx).all(axis=1)
    f, sig = np.where(ok[:, None], f, 0.0), np.where(ok[:, None], sig, 1.0)
    s = np.asarray(seds, dtype=np.float64)[None]
    v = sig[:, None, :] ** 2
    amp = np.clip((f[:, None] * s / v).sum(-1) / (s * s / v).sum(-1), 0.0, None)
    v = v + (scatter * amp[..., None] * s) ** 2
    a, b, c = (s * s / v).sum(-1), (f[:, None] * s / v).sum(-1), (f[:, None] ** 2 / v).sum(-1)
    ll = (-0.5 * (c - b * b / a) - 0.5 * np.log(a) - 0.5 * np.log(v).sum(-1) + log_ndtr(b / np.sqrt(a))
          - 2.0 * np.log(2 * np.pi))
    out = np.logaddexp.reduce(ll + np.log(np.asarray(weights, dtype=np.float64))[None], axis=1)
    return np.where(ok, out, np.nan)


def locus_llr(fluxes, galaxy_templates):
    """``log p(fluxes | galaxy) - log p(fluxes | star)``: galaxy SED templates against the stellar locus.

    Stars: `stellar_seds` (the physical stellar locus, so faint halo stars and
    M dwarfs are covered whatever the bright stars of the training fields
    were); galaxies: ``galaxy_templates`` (`galaxy_seds`), equal weights;
    both through `sed_loglik`.  0 where the fluxes are unmeasured (NaN).
    """
    st, w = stellar_seds()
    g = np.asarray(galaxy_templates, dtype=np.float64)
    out = sed_loglik(fluxes, g, np.full(len(g), 1.0 / len(g))) - sed_loglik(fluxes, st, w)
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


SPREAD_ERR_SCALE = 1.2
"""`spread_llr` multiplies the SPREAD_MODEL error of `SPREAD_ERR_COLUMN` by this.

Measured with point sources of the field's own PSF injected into the real frame 004510-4-0030 and
run through the chain of ``astrohvae run`` (240 of them, r = 21-23.5): SPREAD_MODEL / error has a
robust standard deviation of 1.15-1.21 (1.00 for the simulated test stars at S/N < 30): the real
sky is noisier at the PSF's scale than its pixel noise and correlated-noise factor say."""

SPREAD_FLOOR = 1e-3
"""Systematic scatter of a point source's SPREAD_MODEL about 0 (PSF mismatch), added to its error in
quadrature: the robust scatter of bright (S/N > 100) locus stars is 0.0008 on 004510-4-0030, 0.0004 on
the simulated test fields."""

SPREAD_FIT_SNR = (5.0, 50.0)
"""`spread_galaxies` fits the field's sources in this S/N range (where `spread_llr` matters) ..."""

MIN_SPREAD_FIT = 50
"""... when there are at least this many, else it uses `SPREAD_GALAXY`."""

SPREAD_GALAXY = (0.009, 0.0025)
"""Mean and intrinsic width of the galaxies' SPREAD_MODEL when a call holds too few sources to fit them:
the fit of `spread_galaxies` on 004510-4-0030 (0.0091, 0.0025; the simulated test fields: 0.007-0.011)."""

SPREAD_GALAXY_MIN_WIDTH = 2e-3
"""Least intrinsic width of the galaxy component of `spread_galaxies` (a single Gaussian fitted to a skewed
population can collapse onto its mean: on the simulated test fields it does, on 004510-4-0030 it gives
0.0025)."""

SPREAD_CLIP = 9.0
"""`spread_llr` is clipped to +-SPREAD_CLIP (the range of the VAE's morphology log odds)."""


def _spread_variance(err):
    """Variance of a point source's SPREAD_MODEL: its scaled error and the floor in quadrature."""
    e = np.asarray(err, dtype=np.float64) * SPREAD_ERR_SCALE
    return e**2 + SPREAD_FLOOR**2


def spread_galaxies(spread, err, snr, n_iter=200):
    """``(mean, width)`` of the galaxies' SPREAD_MODEL in a field, fitted without labels, or None.

    The field's sources with S/N in `SPREAD_FIT_SNR` are a mixture of point sources, whose
    SPREAD_MODEL is 0 within their own error (`_spread_variance`: physics, nothing fitted), and
    galaxies, a Gaussian of free mean and intrinsic width (at least `SPREAD_GALAXY_MIN_WIDTH`)
    seen through each source's error; the mixture is fitted by EM (a one-dimensional extreme
    deconvolution with one fixed component).  None with fewer than `MIN_SPREAD_FIT` sources.
    """
    from scipy.stats import norm

    s, e, sn = (np.asarray(v, dtype=np.float64) for v in (spread, err, snr))
    with np.errstate(invalid="ignore"):
        use = (sn >= SPREAD_FIT_SNR[0]) & (sn < SPREAD_FIT_SNR[1]) & np.isfinite(s) & np.isfinite(e)
    if use.sum() < MIN_SPREAD_FIT:
        return None
    s, vs = s[use], _spread_variance(e[use])
    share, mu, width = 0.5, SPREAD_GALAXY[0], SPREAD_GALAXY[1]
    for _ in range(n_iter):
        vg = vs + width**2
        lg = norm.logpdf(s, mu, np.sqrt(vg)) + np.log(1.0 - share)
        ls = norm.logpdf(s, 0.0, np.sqrt(vs)) + np.log(share)
        r = np.exp(lg - np.logaddexp(lg, ls))
        share = float(np.clip(1.0 - r.mean(), 1e-3, 1 - 1e-3))
        w = r / vg
        mu_new = float((w * s).sum() / max(w.sum(), 1e-300))
        width_new = float(np.sqrt(max((r * ((s - mu_new) ** 2 - vs)).sum() / max(r.sum(), 1e-300),
                                      SPREAD_GALAXY_MIN_WIDTH**2)))
        done = abs(mu_new - mu) < 1e-7 and abs(width_new - width) < 1e-7
        mu, width = mu_new, width_new
        if done:
            break
    return mu, width


def spread_llr(spread, err, galaxy=SPREAD_GALAXY):
    """``log p(SPREAD_MODEL | galaxy) - log p(SPREAD_MODEL | point source)``, noise-aware.

    A point source's SPREAD_MODEL is 0 with the variance `_spread_variance` (its own measured error,
    `SPREAD_ERR_COLUMN`, and a floor); a galaxy's is ``galaxy`` = (mean, intrinsic width) seen through
    the same error (`spread_galaxies`).  At low S/N the error is large and the ratio tends to 0:
    the extendedness is measured in units of its own error, as SExtractor's SPREADERR_MODEL or
    SDSS's psfMag - modelMag with its error.  Clipped to +-`SPREAD_CLIP`; 0 where unmeasured.
    """
    s = np.asarray(spread, dtype=np.float64)
    vs = _spread_variance(err)
    vg = vs + float(galaxy[1]) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (-0.5 * (s - float(galaxy[0])) ** 2 / vg - 0.5 * np.log(vg)) - (-0.5 * s**2 / vs - 0.5 * np.log(vs))
    return np.clip(np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0), -SPREAD_CLIP, SPREAD_CLIP)


def physical_statistics(stamps, ref=None, colours=True):
    """The label-free physical statistics (N, `N_PHYSICAL` + 8) of the default A+Vr (see `physical_features`).

    Columns: the `N_PHYSICAL` statistics the LatentVAE reads (NaN where a
    statistic has no valid pixels: a colour whose two bands do not both
    cover the aperture, a morphology without a g, r or i pixel), then (with
    ``colours``) the four PSF-fit colours and their errors (`psf_colours`).
    """
    return physical_features(stamps, ref, colours)[0]


def physical_reference(stamps):
    """The reference stellar locus and PSF of ``stamps`` (what `physical_statistics` falls back on)."""
    return physical_features(stamps)[1]


def _physical_ref(stamps, feat):
    """Reference locus and PSF for stamps whose own field is too small to measure them.

    With several fields (``meta['field']``), each field with enough bright
    locus stars gets its own estimate and the reference is the field of median
    stellar half-light radius (typical seeing); pooling fields of different
    seeing would make the smallest-radius peak (`stellar_locus`) the
    best-seeing field's.  Otherwise all stamps are pooled.
    """
    from astrohvae.morphology.psf import estimate_psf, saturated, stellar_locus
    from astrohvae.morphology.statistics import profile_features

    feat = profile_features(stamps) if feat is None else feat
    n = len(feat["r_half"])
    fields = field_names(stamps, n)
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
