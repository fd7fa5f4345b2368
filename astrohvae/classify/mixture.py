"""Two-peak posteriors and which peak holds the stars (label-free)."""

from __future__ import annotations

import numpy as np

__all__ = ['star_side', 'kl_mixture']

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
    in a fixed 8-pixel aperture, other sources masked, `astrohvae.morphology.statistics.profile_features`).
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
    from astrohvae.morphology.statistics import profile_features

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


# ---------------------------------------------------------------------------
# missing statistics: marginalised over their density given the observed ones
# ---------------------------------------------------------------------------
STAT_RANGES = np.array([(-0.3, 1.5), (-1.5, 0.3), (0.0, 1.1), (-0.1, 2.0)] + [(-3.0, 3.0)] * 4)
"""The ranges `physical_features` clips the `N_PHYSICAL` statistics to (draws are clipped alike)."""

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
