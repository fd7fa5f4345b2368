"""Seeds of the network segmentation: sky mode, matched filter, halo peaks (centroids: `astrohvae.detection.centroids`)."""

from __future__ import annotations

import numpy as np

from astrohvae.detection.centroids import source_stamps

__all__ = ['matched_filter_seeds', 'matched_filter_sn', 'sky_sigma', 'band_support', 'halo_peaks']

def sky_mode(img, lo=-3.0, hi=3.0, bins=241):
    """Per-band mode of the sky in a network input (peak of the smoothed histogram)."""
    modes = np.zeros(img.shape[0], np.float32)
    for b in range(img.shape[0]):
        v = _nonzero_sample(img[b], 500_000)
        if v.size == 0:
            continue
        h, e, k = _histogram_peak(v, lo, hi, bins, 3)
        modes[b] = 0.5 * (e[k] + e[k + 1])
    return modes


def _nonzero_sample(x, max_n):
    """The non-zero pixels of ``x`` (a fresh array), every k-th of them when there are more than ``max_n``."""
    v = x[x != 0]
    if v.size > max_n:
        v = v[:: v.size // max_n]
    return v


def _histogram_peak(v, lo, hi, bins, smooth):
    """Histogram of ``v`` over ``[lo, hi]`` smoothed by a Gaussian of ``smooth`` bins: ``(h, edges, peak bin)``."""
    from scipy.ndimage import gaussian_filter1d

    h, e = np.histogram(v, bins=bins, range=(lo, hi))
    h = gaussian_filter1d(h.astype(np.float64), smooth)
    return h, e, int(np.argmax(h))


def reflect_pad(img):
    """The field reflected about its per-band sky mode: noise kept, objects turned into holes."""
    c = sky_mode(img)[:, None, None]
    out = 2 * c - img
    out[img == 0] = 0.0
    return out


def anchored_em(Y, bg, n_obj, rng, n_iter=200, tol=1e-5, reg=1e-4):
    """EM for a Gaussian mixture whose background components (``bg``) are fixed.

    Only the object components' means and covariances, and all mixing
    weights, are updated.  Returns ``(weights, means, covariances, is_object)``.
    """
    from scipy.special import logsumexp

    nb, d = bg.n_components, Y.shape[1]
    # initialise the object components on the pixels the background explains worst
    ll_bg = bg.score_samples(Y)
    order = np.argsort(ll_bg)
    tail = Y[order[: max(50 * d, len(Y) // 50)]]
    # split the tail by its distance from the background mean (n_obj quantile groups)
    dist = np.linalg.norm(tail - bg.means_.mean(axis=0), axis=1)
    groups = np.array_split(np.argsort(dist), n_obj)
    means = list(bg.means_) + [tail[g].mean(axis=0) for g in groups]
    covs = list(bg.covariances_) + [np.cov(tail[g].T) + reg * np.eye(d) for g in groups]
    weights = np.r_[bg.weights_ * 0.95, np.full(n_obj, 0.05 / n_obj)]
    prev = -np.inf
    for _ in range(n_iter):
        logp = []
        for k in range(nb + n_obj):
            sign, logdet = np.linalg.slogdet(covs[k])
            diff = Y - means[k]
            sol = np.linalg.solve(covs[k], diff.T).T
            logp.append(np.log(weights[k]) - 0.5 * (logdet + np.sum(diff * sol, axis=1) + d * np.log(2 * np.pi)))
        logp = np.stack(logp, axis=1)
        tot = logsumexp(logp, axis=1)
        ll = float(tot.mean())
        resp = np.exp(logp - tot[:, None])
        nk = resp.sum(axis=0) + 1e-10
        weights = nk / nk.sum()
        for k in range(nb, nb + n_obj):
            rk = resp[:, k]
            means[k] = rk @ Y / nk[k]
            diff = Y - means[k]
            covs[k] = (diff * rk[:, None]).T @ diff / nk[k] + reg * np.eye(d)
        if abs(ll - prev) < tol:
            break
        prev = ll
    is_obj = np.r_[np.zeros(nb, bool), np.ones(n_obj, bool)]
    return weights, np.array(means), np.array(covs), is_obj



# ----------------------------------------------------------------------------
# footprints: extra matched-filter seeds and isophotal growth (no labels)
# ----------------------------------------------------------------------------
def _robust_sigma(x, max_n=400_000):
    """1.4826 x the median absolute deviation of the non-zero pixels of ``x`` (subsampled)."""
    from astrohvae.detection.background import mad_std

    v = _nonzero_sample(x, max_n)  # a fresh array: scratch for mad_std
    if v.size == 0:
        return 1.0
    s = float(mad_std(v, overwrite=True))
    return s if s > 0 else 1.0


def sky_sigma(x, max_n=400_000, bins=200):
    """Noise of an image whose sources only add light: the spread of its non-zero pixels on the sky side of their mode.

    1.4826 x the median deviation of the pixels below the mode of their
    histogram (for Gaussian noise the half-normal's median is 0.6745 sigma),
    on a subsample of at most ``max_n`` pixels.  The mode is found twice:
    over the 0.5-60th percentiles, then over +-3 sigma of the first
    estimate with bins of sigma / 20 (the histogram smoothed by 4 bins).
    On a sparse field this is the noise of the sky (6-9 % below the MAD of
    all pixels, `_robust_sigma`, which the sources widen); in a crowded
    one, where stars cover most pixels and the MAD measures their light,
    the sky side of the histogram still holds only noise and the
    unresolved stars' fluctuations (005405-6-0099, the g+r+i deblending
    image: MAD 4.75, this 1.18; 0.81 and 0.77 on 004510-4-0030).  Returns
    1.0 when nothing usable is left.
    """
    v = _nonzero_sample(x, max_n)
    v = v[np.isfinite(v)].astype(np.float64, copy=False)
    if v.size < 10:
        return 1.0
    lo, hi = np.percentile(v, [0.5, 60.0])
    mode, s = None, 0.0
    for _ in range(2):
        if not hi > lo:
            break
        h, e, k = _histogram_peak(v, lo, hi, bins, 4)
        mode = 0.5 * (e[k] + e[k + 1])
        j = np.arange(max(k - 8, 0), min(k + 9, h.size))
        if j.size >= 5 and np.all(h[j] > 0):
            # the vertex of a parabola through the log histogram near its peak
            c2, c1, _ = np.polyfit(j - k, np.log(h[j]), 2)
            if c2 < 0:
                mode += float(np.clip(-c1 / (2 * c2), -4, 4)) * (e[1] - e[0])
        below = mode - v[v < mode]
        if below.size == 0:
            break
        s = 1.482602218505602 * float(np.median(below))
        lo, hi = mode - 3.0 * s, mode + 3.0 * s
        bins = 120
    return s if s > 0 else 1.0


def matched_filter_sn(det, sigma_px):
    """``det`` smoothed by a Gaussian of ``sigma_px`` pixels, in units of its own robust noise (MAD over the field)."""
    from scipy import ndimage

    sm = ndimage.gaussian_filter(det, sigma_px)
    sm /= np.float32(_robust_sigma(sm))
    return sm


def matched_filter_seeds(det, segm_data, nsigma, sigma_px, n_pixels, sm_sn=None):
    """Sources the network missed: a PSF-matched-filter detection.

    ``det`` (a detection image, e.g. the g+r+i sum in noise units; its
    scale does not matter) is smoothed by a Gaussian of ``sigma_px`` pixels (about
    the PSF's sigma, the matched filter of a point source); its connected
    regions above ``nsigma`` times the smoothed image's own robust noise
    (MAD over the field, measured, not assumed) with at least ``n_pixels``
    pixels, and touching no existing segment, are added as new segments.
    ``sm_sn``: that smoothed image in noise units (`matched_filter_sn`), if
    already made.

    Returns the updated label array (new labels after the existing ones).
    """
    from scipy import ndimage

    sm_sn = matched_filter_sn(det, sigma_px) if sm_sn is None else sm_sn
    lab, n = ndimage.label(sm_sn > nsigma)
    if n == 0:
        return segm_data
    area = np.bincount(lab.ravel(), minlength=n + 1)
    touched = np.zeros(n + 1, bool)
    touched[np.unique(lab[segm_data > 0])] = True
    keep = (area >= n_pixels) & ~touched
    keep[0] = False
    if not keep.any():
        return segm_data
    lut = np.zeros(n + 1, np.int32)
    lut[keep] = int(segm_data.max(initial=0)) + 1 + np.arange(int(keep.sum()), dtype=np.int32)
    new = lut[lab]
    return np.where(segm_data > 0, segm_data, new).astype(np.int32)


def annulus_sums(rr, ok, v, step, rmax):
    """Pixel counts and sums of ``v`` in ``step``-px annuli out to ``rmax``, per window.

    ``rr``, ``ok`` and ``v`` are ``(n_windows, h, w)``: radius, usable pixel,
    value.  Returns ``(count, total)``, each ``(n_windows, round(rmax / step))``.
    """
    n = rr.shape[0]
    nb = int(round(rmax / step))
    k = (rr / step).astype(np.int64)
    use = ok & (k < nb)
    key = (np.broadcast_to(np.arange(n)[:, None, None], k.shape) * nb + k)[use]
    cnt = np.bincount(key, minlength=n * nb).reshape(n, nb)
    tot = np.bincount(key, v[use], minlength=n * nb).reshape(n, nb)
    return cnt, tot


def halo_peaks(segm_data, sm_sn, centres, min_peak=2000.0, floor_percentile=2.0, bin_px=4, reach=120.0):
    """Segments that stand out only on a bright star's halo (the labels to drop).

    A bright star's wings raise the sky around it by a few sigma of the
    matched-filtered image out to ~100 px (the 64-px background boxes do not
    follow them), so noise peaks there pass a fixed threshold and the network
    sees sources in them too: a ring of faint "galaxies" around every bright
    star of a real field.  For each segment whose peak in ``sm_sn`` reaches
    ``min_peak``, the halo is its azimuthal median profile over the pixels of
    no segment (every 2nd row and column), in ``bin_px`` annuli around its
    centre out to ``reach * (peak / 20000) ** (1/3)`` pixels (30-200; the
    radius at which a power-law wing falls to a given level scales so).  A
    fainter segment whose centre lies where some halo exceeds 0.5 is kept
    only if its peak *above the halo* reaches the detection floor of the
    segments outside halos (their ``floor_percentile`` percentile peak): it
    must be as significant above the halo as the faintest ordinary
    detections are above the sky.

    Parameters
    ----------
    segm_data : numpy.ndarray
        int labels, 0 = background.
    sm_sn : numpy.ndarray
        float ``(ny, nx)``: the matched-filtered detection image in noise units
        (`matched_filter_sn`).
    centres : tuple of numpy.ndarray
        ``(cy, cx)`` of every segment, indexed by label (index 0 unused).

    Returns
    -------
    numpy.ndarray
        The labels to drop (possibly empty).
    """
    n = int(segm_data.max(initial=0))
    none = np.zeros(0, np.int64)
    if n == 0:
        return none
    yy, xx = np.nonzero(segm_data)
    lab = segm_data[yy, xx]
    peak = np.full(n + 1, -np.inf)
    np.maximum.at(peak, lab, sm_sn[yy, xx].astype(np.float64))
    peak[0] = -np.inf
    bright = np.flatnonzero(peak >= min_peak)
    if bright.size == 0:
        return none
    cy, cx = (np.asarray(c, float) for c in centres)
    ny, nx = segm_data.shape
    halo = np.zeros(n + 1)
    for b in bright:
        R = float(np.clip(reach * (peak[b] / 20000.0) ** (1.0 / 3.0), 30.0, 200.0))
        y0, y1 = max(0, int(cy[b] - R)), min(ny, int(cy[b] + R) + 1)
        x0, x1 = max(0, int(cx[b] - R)), min(nx, int(cx[b] + R) + 1)
        sub = (slice(y0, y1, 2), slice(x0, x1, 2))
        gy, gx = np.mgrid[sub]
        rho = np.hypot(gy - cy[b], gx - cx[b])
        free = (segm_data[sub] == 0) & (rho < R)
        nb = int(R / bin_px) + 1
        k = (rho[free] / bin_px).astype(np.int64)
        v = sm_sn[sub][free]
        order = np.lexsort((v, k))
        k, v = k[order], v[order]
        lo = np.searchsorted(k, np.arange(nb))
        cnt = np.bincount(k, minlength=nb)[:nb]
        okb = cnt >= 8
        if not okb.any():
            continue
        mid = lo + cnt // 2
        prof = np.full(nb, np.nan)
        prof[okb] = 0.5 * (v[np.minimum(mid[okb], v.size - 1)] + v[np.maximum(mid[okb] - 1 + cnt[okb] % 2, 0)])
        # no free pixels inside the star's own footprint: the first measured level holds there
        first = int(np.argmax(okb))
        prof[:first] = prof[first]
        prof = np.clip(np.nan_to_num(prof, nan=0.0), 0.0, None)
        d = np.hypot(cy - cy[b], cx - cx[b])
        near = np.flatnonzero(d < R)
        near = near[(near != b) & (near > 0)]
        if near.size:
            halo[near] = np.maximum(halo[near], prof[np.minimum((d[near] / bin_px).astype(np.int64), nb - 1)])
    faint = np.isfinite(peak) & (peak < min_peak)
    in_halo = faint & (halo > 0.5)
    rest = faint & ~in_halo
    if not in_halo.any() or rest.sum() < 20:
        return none
    floor = float(np.percentile(peak[rest], floor_percentile))
    return np.flatnonzero(in_halo & (peak - halo < floor))


def segment_moments(segm_data, image):
    """Flux-weighted centre and second moments of every segment's own pixels, all at once.

    Weights are ``image`` clipped at 0.  Returns ``(W, cy, cx, cxx, cxy, cyy,
    area, flux)``, arrays indexed by label (index 0 unused): the weight sum,
    centre, second moments (0.25 px^2, a pixel's own variance, added to the
    diagonal, as in `grow_isophotal`), pixel count and unclipped flux.
    """
    n = int(segm_data.max(initial=0))
    yy, xx = np.nonzero(segm_data)
    lab = segm_data[yy, xx]
    v = image[yy, xx].astype(np.float64)
    w = np.clip(v, 0, None)
    W = np.bincount(lab, w, n + 1)
    Wd = np.where(W > 0, W, 1.0)
    cy = np.bincount(lab, w * yy, n + 1) / Wd
    cx = np.bincount(lab, w * xx, n + 1) / Wd
    dy, dx = yy - cy[lab], xx - cx[lab]
    cxx = np.bincount(lab, w * dx * dx, n + 1) / Wd + 0.25
    cxy = np.bincount(lab, w * dx * dy, n + 1) / Wd
    cyy = np.bincount(lab, w * dy * dy, n + 1) / Wd + 0.25
    return W, cy, cx, cxx, cxy, cyy, np.bincount(lab, minlength=n + 1), np.bincount(lab, v, n + 1)


def band_support(bands, cy, cx, sigma=1.5, half=4, valid=None, segm_data=None, n_sky=2000, random_state=0,
                 linearise=None):
    """Matched-filter S/N of sources in each of several bands.

    Each band is weighted by a Gaussian of ``sigma`` pixels (about the
    PSF's) centred on every source; the noise of that sum is measured, not
    assumed, as the robust spread of the same sum at up to ``n_sky`` random
    valid positions of the field, off every segment of ``segm_data`` when
    given (the resampled bands' pixel noise is correlated; in a crowded
    field most random positions would land on sources).

    Parameters
    ----------
    bands : numpy.ndarray
        ``(n_bands, ny, nx)``, background subtracted.
    cy, cx : numpy.ndarray
        Source centres (pixels).
    sigma : float
        Gaussian weight sigma (pixels).
    half : int
        Half side of the weighted window (pixels).
    valid : numpy.ndarray of bool, optional
        Pixels where the noise may be sampled.
    segm_data : numpy.ndarray, optional
        Labels; the noise is sampled where they are 0.
    n_sky, random_state : int
        Noise samples and their random seed (fixed: reproducible).
    linearise : callable, optional
        Applied to the gathered pixel values of ``bands`` (e.g. undoing the
        network input's asinh stretch on the windows only).

    Returns
    -------
    numpy.ndarray
        ``(n_sources, n_bands)`` S/N.
    """
    from astrohvae.detection.background import mad_std

    nb, ny, nx = bands.shape
    rng = np.random.default_rng(random_state)
    sy = rng.uniform(half, ny - 1 - half, 5 * n_sky)
    sx = rng.uniform(half, nx - 1 - half, 5 * n_sky)
    iy, ix = np.rint(sy).astype(int), np.rint(sx).astype(int)
    keep = np.ones(sy.size, bool)
    if valid is not None:
        keep &= valid[iy, ix]
    if segm_data is not None:
        keep &= segm_data[iy, ix] == 0
    sy, sx = sy[keep][:n_sky], sx[keep][:n_sky]
    y = np.r_[np.asarray(cy, np.float64), sy]
    x = np.r_[np.asarray(cx, np.float64), sx]
    idx, inside, yy, xx = source_stamps((ny, nx), y, x, half)
    w = np.exp(((yy - y[:, None, None]) ** 2 + (xx - x[:, None, None]) ** 2) * (-0.5 / sigma ** 2)) * inside
    n = len(cy)
    out = np.empty((n, nb))
    for b in range(nb):
        vb = bands[b].ravel()[idx]
        if linearise is not None:
            vb = linearise(vb)
        f = (w * vb).sum(axis=(1, 2))
        noise = float(mad_std(f[n:].copy(), overwrite=True)) if f.size > n else 1.0
        out[:, b] = f[:n] / (noise if noise > 0 else 1.0)
    return out
