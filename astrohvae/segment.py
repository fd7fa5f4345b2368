"""Pixel-wise segmentation of whole fields learned without labels.

After the seed paper's sections 4 and 5.2-5.3: a small fully convolutional
(V)AE (`astrohvae.models.segment`) is trained to reconstruct five-band image
tiles; the *hypercolumns* of chosen layers (per-pixel concatenation of their
feature maps, upsampled to full resolution) are then split into "object" and
"background" by an unsupervised rule, with no labels anywhere:

1. the network input is the field in noise units,
   ``asinh(((data - level) / rms) / STRETCH) * STRETCH`` per band, 0 under
   the mask (`network_input`), so one rule fits every field;
2. the hypercolumns are standardised, projected on their first principal
   components and modelled by a two-component Gaussian mixture (full
   covariances).  The component whose pixels have the *dimmest mean
   reconstruction* is "background", the other "object" (`fit_rule`).  The
   mixture is fitted once at training time and shipped with the weights
   (``rule='shipped'``, the default) or refitted on each field
   (``rule='refit'``);
3. pixels whose posterior probability of "object" exceeds ``threshold``
   (0.5: the Bayes rule) form the detection mask; its connected components
   of at least ``n_pixels`` pixels are the network's sources;
4. sources the network missed are added from a PSF-matched-filter
   detection of the g+r+i image at ``seed_nsigma`` (4) times that image's
   own measured noise (`matched_filter_seeds`);
5. all are deblended with photutils' `deblend_sources` on the
   noise-weighted g+r+i image smoothed by a Gaussian of ``deblend_fwhm``
   pixels; then every group of segments (connected through matched-filter
   S/N > ``fragment_group``, 3) around an extended source is tested against
   that source's smooth elliptical model (`merge_fragments`): a segment is
   kept only if it stands out above the model by ``fragment_excess`` (5)
   sigma *and* holds ``fragment_flux`` (5 %) of the group's light above
   it or has colours of its own (five-band chi^2 >= ``fragment_colour``,
   30); the knots, arms and halo bumps of a large galaxy rejoin it, a star
   on it or a galaxy in contact stays apart;
6. segments seen in fewer than two bands are dropped: the second-highest
   of the five per-band matched-filter S/Ns at the segment's windowed
   centroid must reach ``band_nsigma`` (2) (`band_support`); this removes
   single-band cosmic rays and noise peaks and keeps very red (i + z) and
   blue (u + g) objects;
7. segments that stand out only on a bright star's halo are dropped
   (`halo_peaks`): around every segment whose matched-filter S/N peaks at
   ``halo_peak`` (2000) or more, the halo is its azimuthal median profile
   over the pixels of no segment, and a fainter segment there is kept only
   if its peak above the halo reaches the floor of the ordinary detections
   (their 2nd-percentile peak).  Real SDSS wings lift the sky by ~5 sigma
   at 40 px from an r = 13.7 star: without this step a ring of ~30 faint
   "galaxies" surrounds each bright star (004510-4-0030: 57 segments
   dropped, none of them an SDSS-catalogued star; the simulator's wings are
   weaker: 1-6 dropped on seeds 10-12, IoU unchanged, purity +0.000-0.004);
8. each segment is grown to its analysis isophote, ``isophote`` (0.5) r sky
   sigma per pixel (`grow_isophotal`): the network's footprints stop near
   1.5-2 sigma per pixel and miss the faint wings, which single noisy
   pixels cannot decide.  Segments with S/N >= ``psf_snr`` (12) grow in
   the ellipse of their second moments, to the radius where their
   azimuthally averaged profile falls to the level or, for point-like ones,
   where the field's stellar profile (measured on its bright stars out to
   30 px) scaled to their core amplitude does; fainter ones, nearly
   unresolved and whose annulus at the isophote has S/N ~ 1, get a circle
   about their windowed centroid (`windowed_centroids`) out to where the
   field's PSF profile (`psf_profile`), scaled to their matched-filter
   amplitude, falls to the level (at least their own area).  Sources whose
   isophote lies 30 px (``smooth_radius``) or more out follow the isophote
   of their image smoothed by 0.15 times that radius instead of an ellipse
   (a big galaxy's round bulge and flat disc give an outer isophote of
   another shape than its inner moments).  With ``trim``, a bright source
   of radius 12 px or less gives up the faint pixels of its network seed
   that lie outside its footprint (the network's footprints are blurred
   1-2 px past the isophote; bright pixels there are an undeblended
   companion's; bigger sources keep theirs: spikes, bleed trails).
   The result is a `photutils.segmentation.SegmentationImage` (0
   background, k = source k).

Whole fields run in overlapping tiles through `dask.array.map_overlap`
(``tile`` pixels per block plus ``overlap`` pixels on each side, at least the
network's receptive radius, so there are no seams); the tiles of a field are
run through the network in batches of ``batch_size``.

Measured (``benchmarks/results/segment/README.md``): with this rule only the
AE with residual connections (``ae-res-hc``, the default) gives clean seeds;
the plain AE and the VAE give blurred hypercolumns whose mixture "object"
component swallows halos and noise (purity 0.2-0.5), as the seed paper
describes qualitatively.  Steps 4-8 (parameters chosen on simulated
seeds 10-12, none of the benchmark's; step 7's set beforehand and checked
on those seeds and one real field) raise ae-res-hc's pixel IoU with the
simulator's 0.5-sigma truth mask from 0.70-0.72 to 0.80-0.82 on those
seeds (0.83 and 0.88 on seeds 14 and 13, added for the trim and smoothing
rules), and its purity from 0.95 to 0.97-0.98.

Public API
----------
`NetworkSegmenter` (fit / object_probability / segment / save / load),
`load_default_segmenter`, `classmap`, `network_input`, `train_segment_net`,
`grow_isophotal`, `matched_filter_seeds`, `matched_filter_sn`, `band_support`,
`halo_peaks`, `psf_profile`, `windowed_centroids`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from astrohvae import BANDS
from astrohvae.conventions import CLASS_CODES
from astrohvae.conventions import GRI as _GRI
from astrohvae.errors import InputError

__all__ = [
    "NetworkSegmenter",
    "load_default_segmenter",
    "classmap",
    "network_input",
    "train_segment_net",
    "grow_isophotal",
    "matched_filter_seeds",
    "matched_filter_sn",
    "band_support",
    "halo_peaks",
    "merge_fragments",
    "psf_profile",
    "windowed_centroids",
    "DEFAULT_VARIANT",
    "DEFAULT_TAPS",
    "STRETCH",
    "WEIGHTS_DIR",
]

STRETCH = 3.0

SEED_ISOPHOTE = 0.5
"""Level (r sky sigma per pixel) the seeds of faint sources are known to lie above: at this
isophote or below, a faint source's footprint holds at least its seed's area (unless its size is
measured, ``faint_size``); above it, every seed is trimmed to its footprint (`grow_isophotal`)."""
"""asinh stretch of the network input, in units of the pixel noise."""

CORE_RADIUS = 1.0
"""Radius (pixels) of the footprint left to a faint source none of whose light reaches an
isophote above `SEED_ISOPHOTE`: the pixels whose centres lie within it of the source's centre."""

DEFAULT_VARIANT = "ae-res-hc"
"""Variant `load_default_segmenter` returns when none is asked for."""

DEFAULT_TAPS = ("out", "dec0", "dec1")
"""Default hypercolumn layers: the reconstruction and the decoder at full and half resolution."""

WEIGHTS_DIR = Path(__file__).resolve().parent / "data" / "segment"
"""Shipped weights: one sub-folder per variant."""



# ----------------------------------------------------------------------------
# background and input
# ----------------------------------------------------------------------------
def _background(field, background):
    if background is not None:
        return background
    from astrohvae.stamps import estimate_background

    return estimate_background(field)


def network_input(field, background=None, stretch=STRETCH):
    """The field as the segmentation networks see it.

    Parameters
    ----------
    field : astrohvae.io.field.Field
    background : object with ``level`` and ``rms``, optional
        Broadcastable to ``field.data``; estimated when None.
    stretch : float
        asinh stretch in noise units (linear below, logarithmic above).

    Returns
    -------
    numpy.ndarray
        float32 ``(5, ny, nx)``: ``asinh(((data - level) / rms) / stretch) *
        stretch``, 0 where ``field.mask``.
    """
    bkg = _background(field, background)
    rms = np.asarray(bkg.rms, np.float32)
    # rms * stretch in one scratch array (inf where rms <= 0), then in place
    den = np.where(rms > 0, rms, np.float32(np.inf)).astype(np.float32, copy=False)
    den = np.multiply(den, np.float32(stretch), dtype=np.float32)
    x = np.subtract(np.asarray(field.data, np.float32), np.asarray(bkg.level, np.float32), dtype=np.float32)
    np.divide(x, den, out=x)
    del den
    np.arcsinh(x, out=x)
    x *= np.float32(stretch)
    x[field.mask] = 0.0
    x[~np.isfinite(x)] = 0.0
    return x


# ----------------------------------------------------------------------------
# training (no labels)
# ----------------------------------------------------------------------------
def train_segment_net(net, images, steps=600, batch_size=16, crop=64, lr=2e-3, beta=1e-3,
                      seed=0, device="cpu", log_every=0):
    """Train a `SegmentNet` to reconstruct random crops of ``images`` (the one engine, `astrohvae.train`).

    Parameters
    ----------
    net : astrohvae.models.segment.SegmentNet
        Trained in place.
    images : list of numpy.ndarray
        ``(5, ny, nx)`` network inputs (`network_input`), no labels.
    steps, batch_size, crop, lr : training schedule (Adam, cosine decay over ``steps`` batches).
    beta : float
        Weight of the KL term per latent element for the VAE (ignored for AEs).
    seed : int
    device : str
    log_every : int
        Show the engine's progress bar when non-zero.

    Returns
    -------
    list of float
        The loss per step.
    """
    import torch

    from astrohvae.models.priors import kl_standard
    from astrohvae.train import RandomCrops, fit_model

    history = []

    def loss_fn(m, xb):
        recon, extra = m(xb)
        loss = torch.mean((recon - xb) ** 2, dim=(1, 2, 3))
        if m.variational:
            mu, logvar = extra["mu"], extra["logvar"]
            kl = kl_standard(mu.flatten(1), logvar.flatten(1)) / mu[0].numel()  # mean per latent element
            loss = loss + beta * kl
        if m.training:
            history.append(float(loss.detach().mean()))
        return {"loss": loss}

    fit_model(net, loss_fn, RandomCrops(images, crop, steps * batch_size), epochs=1, batch_size=batch_size, lr=lr,
              schedule="cosine", device=device, seed=seed, progress=bool(log_every), kind="segment")
    net.eval()
    return history


# ----------------------------------------------------------------------------
# the estimator
# ----------------------------------------------------------------------------
def _resolve_device(device):
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def sky_mode(img, lo=-3.0, hi=3.0, bins=241):
    """Per-band mode of the sky in a network input (peak of the smoothed histogram)."""
    from scipy.ndimage import gaussian_filter1d

    modes = np.zeros(img.shape[0], np.float32)
    for b in range(img.shape[0]):
        v = img[b][img[b] != 0]
        if v.size == 0:
            continue
        if v.size > 500_000:
            v = v[:: v.size // 500_000]
        h, e = np.histogram(v, bins=bins, range=(lo, hi))
        h = gaussian_filter1d(h.astype(float), 3)
        modes[b] = 0.5 * (e[np.argmax(h)] + e[np.argmax(h) + 1])
    return modes


def _reflect(img):
    """The field reflected about its per-band sky mode: noise kept, objects turned into holes."""
    c = sky_mode(img)[:, None, None]
    out = 2 * c - img
    out[img == 0] = 0.0
    return out


def _anchored_em(Y, bg, n_obj, rng, n_iter=200, tol=1e-5, reg=1e-4):
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
    from astrohvae.stamps import mad_std

    v = x[x != 0]  # a fresh array: scratch for mad_std
    if v.size == 0:
        return 1.0
    if v.size > max_n:
        v = v[:: v.size // max_n]
    s = float(mad_std(v, overwrite=True))
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


def _annulus_sums(rr, ok, v, step, rmax):
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


def _segment_moments(segm_data, image):
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


def _stamps(shape, cy, cx, half):
    """Square windows of side ``2 half + 1`` centred on the rounded ``(cy, cx)``.

    Returns ``(flat index, inside, y, x)``, each ``(n, m, m)``; ``flat index``
    is clipped to the field where ``inside`` is False.
    """
    ny, nx = shape
    off = np.arange(-half, half + 1)
    yy = np.rint(cy).astype(np.int64)[:, None, None] + off[None, :, None]
    xx = np.rint(cx).astype(np.int64)[:, None, None] + off[None, None, :]
    inside = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
    return np.clip(yy, 0, ny - 1) * nx + np.clip(xx, 0, nx - 1), inside, yy, xx


def windowed_centroids(image, cy, cx, sigma=1.5, half=6, n_iter=8, max_shift=3.0):
    """Gaussian-windowed centroids (SExtractor's XWIN/YWIN), all sources at once.

    Iterates ``c <- c + 2 sum(w I (p - c)) / sum(w I)`` with
    ``w = exp(-|p - c|^2 / (2 sigma^2))`` over a window of ``2 half + 1``
    pixels around the start, which converges to the centre of a
    Gaussian-like source.  A source whose centroid would move more than
    ``max_shift`` pixels from its start, or whose windowed flux is not
    positive, keeps its start.

    Parameters
    ----------
    image : numpy.ndarray
        ``(ny, nx)``, background subtracted (e.g. smoothed; noise units).
    cy, cx : numpy.ndarray
        Starting centres (pixels).
    sigma : float
        Window sigma (pixels), about the PSF's.

    Returns
    -------
    cy, cx : numpy.ndarray
    """
    cy0, cx0 = np.asarray(cy, np.float64), np.asarray(cx, np.float64)
    if cy0.size == 0:
        return cy0.copy(), cx0.copy()
    idx, inside, yy, xx = _stamps(image.shape, cy0, cx0, half)
    v = np.where(inside, image.ravel()[idx], 0.0)
    y, x = cy0.copy(), cx0.copy()
    for _ in range(n_iter):
        dy = yy - y[:, None, None]
        dx = xx - x[:, None, None]
        w = np.exp((dy * dy + dx * dx) * (-0.5 / sigma ** 2)) * v
        W = w.sum(axis=(1, 2))
        ok = W > 0
        Ws = np.where(ok, W, 1.0)
        y = np.where(ok, y + 2.0 * (w * dy).sum(axis=(1, 2)) / Ws, y)
        x = np.where(ok, x + 2.0 * (w * dx).sum(axis=(1, 2)) / Ws, x)
        far = np.hypot(y - cy0, x - cx0) > max_shift
        y[far], x[far] = cy0[far], cx0[far]
    return y, x


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
    from astrohvae.stamps import mad_std

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
    idx, inside, yy, xx = _stamps((ny, nx), y, x, half)
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
    idx, inside, yy, xx = _stamps(image.shape, cy[lab], cx[lab], half)
    s = segm_data.ravel()[idx]
    ok = inside & ((s == 0) | (s == lab[:, None, None]))
    if valid is not None:
        ok &= valid.ravel()[idx]
    v = image.ravel()[idx]
    rr = np.hypot(yy - cy[lab][:, None, None], xx - cx[lab][:, None, None])
    cnt, tot = _annulus_sums(rr, ok, v, step, rmax)
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


def _windowed_sigma2(v, rr, ok, sigma_w):
    """Per-axis variance of round sources from Gaussian-windowed second moments.

    ``v``, ``rr``, ``ok``: values, distances from the centres and usable
    pixels, ``(n, h, w)`` (or one ``(h, w)`` window).  The windowed moment
    ``m = sum(w v r^2) / (2 sum(w v))`` with ``w = exp(-r^2 / (2 sigma_w^2))``
    of a Gaussian source of variance ``s`` is ``s sigma_w^2 / (s + sigma_w^2)``;
    that relation is inverted (``m`` clipped to ``(0, 0.95 sigma_w^2]``).
    """
    w = np.exp(-0.5 * (rr / sigma_w) ** 2) * ok * v
    m = 0.5 * (w * rr * rr).sum(axis=(-2, -1)) / np.maximum(w.sum(axis=(-2, -1)), 1e-12)
    m = np.clip(m, 1e-3, 0.95 * sigma_w ** 2)
    return m * sigma_w ** 2 / (sigma_w ** 2 - m)


def _psf_radii(image, segm_data, lab, cy, cx, psf, isophote, valid, fit_radius=3.0, half=7, size=None,
               max_stretch=2.0):
    """Isophotal radii of faint segments from their PSF-scaled profiles (see `grow_isophotal`).

    With ``size = (size_image, (radii, profile))`` (an image of higher S/N,
    e.g. the smoothed g+r+i sum, and its own PSF profile), each source's
    profile is the PSF's stretched by ``sqrt(s / s_psf)`` (1 to
    ``max_stretch``), where ``s`` and ``s_psf`` are the source's and the
    PSF's windowed variances on ``size_image`` (`_windowed_sigma2`, window
    the PSF's Gaussian-equivalent sigma): a faint galaxy is wider than
    the PSF, a faint star is not.

    Returns ``(R, idx, rr, free)`` for painting: radii (0: no growth), the
    stamps' flat indices, radial distances and free-pixel masks.
    """
    radii, prof = psf
    idx, inside, yy, xx = _stamps(image.shape, cy, cx, half)
    s = segm_data.ravel()[idx]
    ok = inside & ((s == 0) | (s == lab[:, None, None]))
    if valid is not None:
        ok &= valid.ravel()[idx]
    rr = np.hypot(yy - cy[:, None, None], xx - cx[:, None, None])
    stretch = np.ones(lab.size)
    if size is not None:
        size_image, (sr, sp) = size
        # window: the Gaussian of the size PSF's half-maximum radius
        sigma_w = float(np.interp(-0.5 * sp[0], -sp, sr)) / np.sqrt(2 * np.log(2))
        p_psf = np.where(rr[0] <= sr[-1], np.interp(rr[0], sr, sp), 0.0)
        s_psf = _windowed_sigma2(p_psf, rr[0], True, sigma_w)
        s_src = _windowed_sigma2(size_image.ravel()[idx], rr, ok, sigma_w)
        stretch = np.sqrt(np.clip(s_src / s_psf, 1.0, max_stretch ** 2))
    t = np.interp(rr / stretch[:, None, None], radii, prof) * (ok & (rr < fit_radius))
    A = (t * image.ravel()[idx]).sum(axis=(1, 2)) / np.maximum((t * t).sum(axis=(1, 2)), 1e-12)
    R = np.zeros(lab.size)
    grow = A * prof[0] > isophote
    R[grow] = np.interp(-isophote / A[grow], -prof, radii) * stretch[grow]
    return np.minimum(R, half), idx, rr, ok & (s == 0)


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
        idx, inside, yy, xx = _stamps(image.shape, cy[sel], cx[sel], half)
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
    cnt, tot = _annulus_sums(rr, ok, v, step, rmax)
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
    of radius ``R``.  With ``faint_size``, the profile is first stretched
    by the source's size: its Gaussian-windowed variance on
    ``centroid_image`` over that of the PSF measured there (a faint galaxy
    is wider than the PSF; `_psf_radii`), and the footprint is no longer
    floored at the seed's area (a seed found on a smoothed image is wider
    than a star's isophote and narrower than a galaxy's).  When the field has too few bright compact sources to
    measure the PSF, every segment uses the profile crossing.

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
    of a bright segment with ``R`` <= ``keep_radius`` that lie outside its
    footprint and are faint (``image`` smoothed by a Gaussian of 1 px at
    most twice ``isophote``) are released: the network's footprints are
    blurred and reach beyond a star's or a small galaxy's isophote, while a
    bright pixel outside the ellipse belongs to an undeblended companion.
    Larger sources keep all their pixels (a bright star's diffraction
    spikes and bleed trail, a big galaxy's irregular outskirts) at
    ``isophote`` <= `SEED_ISOPHOTE`; above it every seed reaches past the
    isophote, so every segment releases its faint pixels outside its
    footprint, and a faint source whose PSF-scaled peak stays below the
    isophote keeps only its core (`CORE_RADIUS`).  Without ``trim``
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
        ``_segment_moments(segm_data, image)`` if already computed.
    centres : tuple, optional
        ``(cy, cx)`` windowed centroids indexed by label, if already
        computed (`windowed_centroids` on ``centroid_image``).
    trim : bool
        Release a bright segment's own pixels outside its footprint.
    keep_radius : float
        With ``trim``, segments whose footprint radius (pixels) exceeds it
        keep all their pixels.
    smooth_radius : float or None
        Radius (pixels) from which a source's footprint follows its smoothed
        isophote instead of an ellipse; None: never.
    faint_size : bool
        Stretch a faint source's PSF profile by its size on
        ``centroid_image`` (given) before placing its isophote.

    Returns
    -------
    numpy.ndarray
        int32 labels.
    """
    from scipy import ndimage

    seg_in = np.asarray(segm_data)
    out = seg_in.astype(np.int32, copy=True)
    n = int(seg_in.max(initial=0))
    if n == 0:
        return out
    ny, nx = out.shape
    W, cy, cx, cxx, cxy, cyy, npx, flux = _segment_moments(seg_in, image) if moments is None else moments
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
    # candidate pixels of every segment: (flat index, depth r / R, label)
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
        if trim and (not R > keep_radius or isophote > SEED_ISOPHOTE):
            # (above the seeds' own level every seed reaches past the isophote; only faint pixels go)
            ty, tx = np.nonzero(own & ~inside)
            c_cut.append((ty + Y0) * nx + (tx + X0))
        ty, tx = np.nonzero(take)
        c_idx.append((ty + Y0) * nx + (tx + X0))
        c_depth.append(ratio[take])
        c_lab.append(np.full(ty.size, lab, np.int32))
    if faint.any():
        lab = np.flatnonzero(faint)
        size = None
        if faint_size and centroid_image is not None:
            size_psf = psf_profile(centroid_image, seg_in, wy, wx, snr, valid=valid)
            size = None if size_psf is None else (centroid_image, size_psf)
        R, idx, rr, free = _psf_radii(image, seg_in, lab, wy[lab], wx[lab], psf, isophote, valid, size=size)
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
        if trim and isophote > SEED_ISOPHOTE:
            # above the seeds' own level, a faint seed gives up its pixels outside its circle
            mine = (seg_in.ravel()[idx] == lab[:, None, None]) & (depth >= 1) & (R > 0)[:, None, None]
            c_cut.append(idx[mine])
        c_idx.append(idx[take])
        c_depth.append(depth[take].astype(np.float32))
        c_lab.append(np.broadcast_to(lab[:, None, None], take.shape)[take].astype(np.int32))
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
        cut = cut[_smoothed_at(image, cut, 1.0) <= 2 * isophote]
        out.ravel()[cut] = 0
        # a segment is never emptied: one left without pixels keeps its own
        gone = np.bincount(out.ravel(), minlength=n + 1) == 0
        gone[0] = False
        if gone.any():
            back = gone[seg_in] & (out == 0)
            out[back] = seg_in[back]
    return out


def _smoothed_at(image, flat, sigma, truncate=4.0):
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


def merge_fragments(parent_data, child_data, det, sm_sn, bands=None, min_excess=5.0, min_flux=0.05,
                    colour_chi2=30.0, contrast=5.0, sigma=1.5, point_hwhm=4.0, min_peak=20.0, bin_px=1.0,
                    linearise=None):
    """Merge back the deblended children (or grouped segments) that are not sources of their own.

    photutils' (and SExtractor's) deblending keeps every child holding a
    fraction ``contrast`` of its parent's flux; on a large galaxy that
    fraction is reached by noise bumps of the halo, by arms and by
    star-forming knots, so the galaxy is shredded.  Here each deblended
    parent gets a smooth model: the median of the matched-filter S/N image
    ``sm_sn`` (and of ``det``, and of each band) in 1-px elliptical annuli
    (the ellipse of the parent's positive ``det`` moments about its
    brightest pixel) over the parent's and the free pixels of its bounding
    box, forced to fall outwards.  A child other than the one holding the
    parent's peak is kept only if

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

    A parent whose model falls to half its peak within ``point_hwhm`` px
    is point-like (a star, or crowded stars), one whose model peaks below
    ``min_peak`` (matched-filter sigma) too faint for its model to tell a
    fragment from a neighbour (a crowded field's confusion): their
    children are left as they are.  The pixels of the rejected children go to the kept children
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
    for p in split:
        sl = slices[p - 1]
        own = par[sl] == p
        kids = np.where(own, out[sl], 0)
        d = np.where(own, det[sl], -np.inf)
        s = sm_sn[sl]
        py, px = np.unravel_index(int(np.argmax(d)), d.shape)
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
            continue
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
        if prof[0] < min_peak or np.argmax(prof < 0.5 * prof[0]) * bin_px < point_hwhm:
            continue   # a faint or point-like parent (a star, crowded stars) keeps its children
        lab = kids[yy, xx]
        excess = s[yy, xx] - prof[k]
        nl = int(lab.max()) + 1
        o = np.lexsort((excess, lab))
        last = np.r_[np.flatnonzero(np.diff(lab[o])), lab.size - 1]
        pe = np.full(nl, -np.inf)
        pe[lab[o][last]] = excess[o][last]
        peak_at = np.zeros(nl, np.int64)
        peak_at[lab[o][last]] = o[last]
        pdet = profile(det[sl])
        # light above the model, relative to the primary's own light (a star among many in a crowded
        # blob holds little of the blob but much of its brightest star)
        flux = np.bincount(lab, np.clip(det[sl][yy, xx] - pdet[k], 0, None), nl)
        flux /= max(np.clip(det[sl][yy, xx], 0, None)[lab == primary].sum(), 1e-12)
        cand = np.unique(lab)
        cand = cand[(cand > 0) & (cand != primary)]
        weak = cand[pe[cand] < min_excess]
        # a strong excess many times the parent's own light there (a star on its outskirts) is a source
        strong = (pe >= min_peak) & (pe >= contrast * np.maximum(prof[k[peak_at]], 0.0))
        test = cand[(pe[cand] >= min_excess) & (flux[cand] < min_flux) & ~strong[cand]]
        if test.size and bands is not None:
            j = peak_at[test]
            chi2 = np.zeros(test.size)
            e_all, m_all, ok_all = [], [], []
            for b in range(bands.shape[0]):
                bi = bands[b][sl] if linearise is None else linearise(bands[b][sl])
                sb = ndimage.gaussian_filter(bi.astype(np.float32), sigma)
                pb = profile(sb)
                e_all.append(sb[yy[j], xx[j]] - pb[k[j]])
                m_all.append(pb[k[j]])
                ok_all.append(bi[yy[j], xx[j]] != 0)
            e, m, ok = np.array(e_all), np.array(m_all), np.array(ok_all)
            a = (e * m * ok).sum(0) / np.maximum((m * m * ok).sum(0), 1e-12)
            var = band_noise ** 2 + (0.1 * e) ** 2
            chi2 = (((e - a * m) ** 2 / var) * ok).sum(0)
            test = test[chi2 < colour_chi2]
        weak = np.r_[weak, test]
        if weak.size == 0:
            continue
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


def _keep_labels(segm, stats, keep):
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


class NetworkSegmenter:
    """Unsupervised pixel-wise segmenter: (V)AE hypercolumns + Gaussian mixture.

    Parameters
    ----------
    variant : {'ae-res-hc', 'ae-hc', 'vae-hc'}
        Network variant (`astrohvae.models.segment.VARIANTS`).
    taps : sequence of str
        Hypercolumn layers (`SegmentNet.tap_names`).
    tap_weights : sequence of float, optional
        One multiplier per tap, applied after standardisation (default 1).
    widths : tuple of int
        Network channels per resolution level.
    n_components : int
        Gaussian-mixture components; the dimmest is background.
    n_pca : int
        Principal components of the standardised hypercolumns fed to the
        mixture.
    threshold : float
        Posterior probability of "object" above which a pixel is object.
    n_pixels : int
        Minimum connected pixels of a source.
    deblend : bool
        Run photutils `deblend_sources`.
    deblend_fwhm : float
        FWHM (pixels) of the Gaussian smoothing of the deblending image.
    rule : {'shipped', 'refit'}
        Use the mixture fitted at training time, or refit it on each field.
    tile, overlap : int
        Block side and overlap (pixels) of the whole-field tiling; multiples
        of the network's down-sampling factor.
    batch_size : int
        Tiles per network call.
    device : str
        'auto', 'cpu', 'cuda', ...
    random_state : int
    isophote : float or None
        Footprint level in r sky sigma per pixel: each segment is grown to
        where its azimuthally averaged r profile falls below it
        (`grow_isophotal`).  None keeps the network's footprints.
    seed_nsigma : float or None
        Also add the sources of a PSF-matched-filter detection of the g+r+i
        image above ``seed_nsigma`` times its measured noise that no network
        segment touches (`matched_filter_seeds`).  None: network seeds only.
    seed_sigma : float
        Gaussian sigma (pixels) of that matched filter (about the PSF's),
        also the window of the centroids and of the band test.
    psf_snr : float or None
        Segments below this S/N are grown with the field's PSF profile
        scaled to their amplitude, the others on their own profile
        (`grow_isophotal`); None: all on their own profile.
    band_nsigma : float or None
        Drop segments whose second-highest per-band (u, g, r, i, z)
        matched-filter S/N is below it (`band_support`); None keeps all.
        Five-band inputs only.
    halo_peak : float or None
        Segments whose matched-filter S/N peaks at this or more are bright
        stars whose halos are measured: fainter segments that stand out only
        on a halo are dropped (`halo_peaks`); None keeps all.
    trim : bool
        Release the pixels of a bright segment's seed that lie outside its
        grown footprint (the network's footprints are blurred); sources
        larger than 12 px keep theirs (a bright star's spikes); False:
        segments only grow (`grow_isophotal`).
    smooth_radius : float or None
        Footprints of sources (not point-like) whose isophote lies at this
        radius (pixels) or more follow their smoothed isophote instead of
        an ellipse (`grow_isophotal`); None: ellipses only.
    fragment_excess, fragment_flux, fragment_colour, fragment_group : float or None
        Segments are grouped by the connected regions where a segment lies
        or the matched-filter S/N exceeds ``fragment_group``; in a group
        around an extended source, a segment is kept only if its peak
        excess over the source's smooth model reaches ``fragment_excess``
        matched-filter sigma and it holds ``fragment_flux`` of the group's
        light above that model or differs from its colours by chi^2
        ``fragment_colour`` (five bands; None: no colour test); the others
        join the group's kept segments (`merge_fragments`).
        ``fragment_excess=None``: photutils' contrast criterion alone.
    """

    def __init__(self, variant=DEFAULT_VARIANT, taps=DEFAULT_TAPS, tap_weights=None,
                 widths=(8, 16, 32, 32), n_components=2, n_background=2, rule_kind="free", n_pca=8, threshold=0.5, n_pixels=5,
                 deblend=True, deblend_fwhm=2.0, rule="shipped", tile=512, overlap=48,
                 batch_size=8, device="auto", random_state=0, isophote=0.5, seed_nsigma=4.0,
                 seed_sigma=1.5, psf_snr=12.0, band_nsigma=2.0, halo_peak=2000.0, trim=True, smooth_radius=30.0,
                 fragment_excess=5.0, fragment_flux=0.05, fragment_colour=30.0, fragment_group=3.0):
        self.variant = variant
        self.taps = tuple(taps)
        self.tap_weights = None if tap_weights is None else tuple(float(w) for w in tap_weights)
        self.widths = tuple(widths)
        self.n_components = int(n_components)
        self.n_background = int(n_background)
        self.rule_kind = rule_kind
        self.n_pca = int(n_pca)
        self.threshold = float(threshold)
        self.n_pixels = int(n_pixels)
        self.deblend = bool(deblend)
        self.deblend_fwhm = float(deblend_fwhm)
        self.rule = rule
        self.tile = int(tile)
        self.overlap = int(overlap)
        self.batch_size = int(batch_size)
        self.device = device
        self.random_state = random_state
        self.isophote = None if isophote is None else float(isophote)
        self.seed_nsigma = None if seed_nsigma is None else float(seed_nsigma)
        self.seed_sigma = float(seed_sigma)
        self.psf_snr = None if psf_snr is None else float(psf_snr)
        self.band_nsigma = None if band_nsigma is None else float(band_nsigma)
        self.halo_peak = None if halo_peak is None else float(halo_peak)
        self.trim = bool(trim)
        self.smooth_radius = None if smooth_radius is None else float(smooth_radius)
        self.fragment_excess = None if fragment_excess is None else float(fragment_excess)
        self.fragment_flux = float(fragment_flux)
        self.fragment_group = float(fragment_group)
        self.fragment_colour = None if fragment_colour is None else float(fragment_colour)

    # -- parameters -------------------------------------------------------
    def get_params(self):
        """Constructor parameters as a dict (scikit-learn convention)."""
        keys = ("variant", "taps", "tap_weights", "widths", "n_components", "n_background", "rule_kind", "n_pca", "threshold",
                "n_pixels", "deblend", "deblend_fwhm", "rule", "tile", "overlap", "batch_size",
                "device", "random_state", "isophote", "seed_nsigma", "seed_sigma", "psf_snr", "band_nsigma",
                "halo_peak", "trim", "smooth_radius", "fragment_excess", "fragment_flux",
                "fragment_colour", "fragment_group")
        return {k: getattr(self, k) for k in keys}

    def set_params(self, **params):
        """Set constructor parameters; returns self."""
        for k, v in params.items():
            if k not in self.get_params():
                raise ValueError(f"unknown parameter {k!r}")
            setattr(self, k, tuple(v) if k in ("taps", "widths") else v)
        return self

    def _check_fitted(self):
        if not hasattr(self, "net_") or not hasattr(self, "mix_weights_"):
            raise RuntimeError("NetworkSegmenter is not fitted: call fit() or load()")

    # -- fitting ----------------------------------------------------------
    def fit(self, fields, backgrounds=None, steps=600, batch_size=16, crop=64, lr=2e-3, beta=1e-3,
            n_samples=200_000, log_every=0):
        """Train the network on the fields' tiles, then fit the pixel rule. No labels.

        Parameters
        ----------
        fields : list of Field or list of numpy.ndarray
            Fields, or ready network inputs ``(5, ny, nx)`` (`network_input`).
        backgrounds : list, optional
            One background per field (estimated when None).
        steps, batch_size, crop, lr, beta, log_every :
            Passed to `train_segment_net`.
        n_samples : int
            Pixels sampled for the mixture.

        Returns
        -------
        self
        """
        from astrohvae.models.segment import build_segment_net

        images = self._inputs(fields, backgrounds)
        import torch

        torch.manual_seed(self.random_state)
        self.net_ = build_segment_net(self.variant, in_channels=images[0].shape[0],
                                      widths=self.widths)
        self.history_ = train_segment_net(self.net_, images, steps=steps, batch_size=batch_size,
                                          crop=crop, lr=lr, beta=beta, seed=self.random_state,
                                          device=_resolve_device(self.device),
                                          log_every=log_every)
        self.net_.cpu().eval()
        return self.fit_rule(images, n_samples=n_samples)

    def _inputs(self, fields, backgrounds):
        if backgrounds is None:
            backgrounds = [None] * len(fields)
        out = []
        for f, b in zip(fields, backgrounds):
            out.append(np.asarray(f, np.float32) if isinstance(f, np.ndarray) else network_input(f, b))
        return out

    def _sample_hypercolumns(self, images, n_samples, rng, crop=256, border=32, per_crop=4000):
        """Hypercolumns (n, D) and mean reconstruction (n,) of random interior pixels."""
        from astrohvae.train import random_crops

        m = self.net_.multiple
        n_crops = max(1, int(np.ceil(n_samples / per_crop / len(images))))
        feats, recon = [], []
        for img in images:
            c = min(crop, img.shape[1] // m * m, img.shape[2] // m * m)
            b = border if c > 4 * border else 0
            crops = random_crops([img], n_crops, c, rng)
            for k in range(0, n_crops, self.batch_size):
                hc, rec = self._forward(crops[k:k + self.batch_size], want_hc=True)
                if b:
                    hc, rec = hc[:, :, b:-b, b:-b], rec[:, :, b:-b, b:-b]
                x_in = crops[k:k + self.batch_size][:, :, b:c - b, b:c - b]
                for j in range(hc.shape[0]):
                    flat = hc[j].reshape(hc.shape[1], -1)
                    valid = np.flatnonzero(np.any(x_in[j] != 0, axis=0).ravel())
                    if valid.size == 0:
                        continue
                    idx = rng.choice(valid, min(per_crop, valid.size), replace=False)
                    feats.append(flat[:, idx].T)
                    recon.append(rec[j].reshape(rec.shape[1], -1)[:, idx].mean(axis=0))
        return np.concatenate(feats).astype(np.float64), np.concatenate(recon).astype(np.float64)

    def fit_rule(self, fields, backgrounds=None, n_samples=200_000):
        """Fit the per-pixel rule on hypercolumns (no labels).

        ``rule_kind='free'`` (default): a plain Gaussian mixture of
        ``n_components`` (2) full-covariance Gaussians on the standardised,
        PCA-projected hypercolumns of random field pixels; the component with
        the dimmest mean reconstruction is background, the others are object.

        ``rule_kind='inverted'`` (experimental): the background part of the
        mixture is pinned by the fields reflected about their sky mode
        (`sky_mode`): sky noise is symmetric, objects are positive, so the
        reflected fields hold the data's own noise (including the pixel
        correlation left by resampling the bands onto r) and no positive
        object.  ``n_background`` Gaussians are fitted to their hypercolumns
        (features standardised by them), then ``n_components - n_background``
        object Gaussians and all weights by EM on the real pixels with the
        background held fixed.  Measured worse than 'free' on simulations
        (the faint-source sky is not symmetric), kept for comparison.

        In both cases the components are ranked by the mean reconstruction
        (in noise units) of the pixels they claim, ``component_brightness_``;
        "object" components must be brighter than every background one.

        Parameters
        ----------
        fields : list of Field or numpy.ndarray
            As in `fit`; the network must already be trained (``net_``).
        n_samples : int
            Field pixels drawn at random (uniformly) from all fields.

        Returns
        -------
        self
        """
        from sklearn.decomposition import PCA
        from sklearn.mixture import GaussianMixture

        images = self._inputs(fields, backgrounds)
        rng = np.random.default_rng(self.random_state)
        X, r = self._sample_hypercolumns(images, n_samples, rng)
        w = self._tap_weight_vector()
        if self.rule_kind not in ("inverted", "free"):
            raise ValueError(f"rule_kind must be 'free' or 'inverted', not {self.rule_kind!r}")
        if self.rule_kind == "inverted":
            X0, _ = self._sample_hypercolumns([_reflect(im) for im in images], n_samples, rng)
            self.mean_, self.scale_ = X0.mean(axis=0), X0.std(axis=0) + 1e-6
        else:
            self.mean_, self.scale_ = X.mean(axis=0), X.std(axis=0) + 1e-6
        Z = (X - self.mean_) / self.scale_ * w
        n_pca = min(self.n_pca, Z.shape[1])
        pca = PCA(n_pca, random_state=self.random_state).fit(Z)
        self.components_, self.pca_mean_ = pca.components_, pca.mean_
        Y = pca.transform(Z)
        if self.rule_kind == "inverted":
            Y0 = pca.transform((X0 - self.mean_) / self.scale_ * w)
            nb = min(self.n_background, self.n_components - 1)
            bg = GaussianMixture(nb, covariance_type="full", random_state=self.random_state,
                                 reg_covar=1e-4).fit(Y0)
            weights, means, covs, is_obj = _anchored_em(Y, bg, self.n_components - nb, rng)
        else:
            g = GaussianMixture(self.n_components, covariance_type="full", random_state=self.random_state,
                                n_init=2, max_iter=300).fit(Y)
            weights, means, covs = g.weights_, g.means_, g.covariances_
            is_obj = None
        self._set_mixture(weights, means, covs)
        comp = np.argmax(self._log_joint_np(Y), axis=1)
        bright = np.array([r[comp == k].mean() if np.any(comp == k) else np.nan
                           for k in range(len(weights))])
        self.component_brightness_ = bright
        if is_obj is None:
            is_obj = np.arange(len(weights)) != int(np.nanargmin(bright))
        self.object_components_ = np.asarray(is_obj, bool)
        self.n_features_ = X.shape[1]
        return self

    def _set_mixture(self, weights, means, covs):
        self.mix_weights_ = np.asarray(weights, np.float64)
        self.mix_means_ = np.asarray(means, np.float64)
        self.mix_covariances_ = np.asarray(covs, np.float64)
        self.mix_prec_chol_ = np.stack([np.linalg.cholesky(np.linalg.inv(c)) for c in self.mix_covariances_])

    def _log_joint_np(self, Y):
        out = []
        for k in range(len(self.mix_weights_)):
            pc = self.mix_prec_chol_[k]
            q = (Y - self.mix_means_[k]) @ pc
            out.append(np.log(self.mix_weights_[k]) + np.sum(np.log(np.diag(pc)))
                       - 0.5 * np.sum(q * q, axis=1))
        return np.stack(out, axis=1)

    def _tap_weight_vector(self):
        w = []
        weights = self.tap_weights or (1.0,) * len(self.taps)
        for t, wt in zip(self.taps, weights):
            w += [wt] * self.net_.tap_channels(t)
        return np.asarray(w, np.float64)

    # -- per-pixel maps ---------------------------------------------------
    def _forward(self, x, want_hc=False):
        """x: (B, 5, h, w) float32 numpy -> p_object (B, h, w), recon (B, 5, h, w)[, hc]."""
        import torch

        from astrohvae.models.segment import hypercolumns

        dev = next(self.net_.parameters()).device
        with torch.no_grad():
            xt = torch.from_numpy(np.ascontiguousarray(x)).to(dev)
            if dev.type == "cpu":
                # channels-last convolutions are ~2x faster on CPU for these few channels
                if getattr(self, "_channels_last_net", None) is not self.net_:
                    self.net_.to(memory_format=torch.channels_last)
                    self._channels_last_net = self.net_
                xt = xt.contiguous(memory_format=torch.channels_last)
            if not want_hc:
                # the rule's affine part applied to each tap at its native
                # resolution; only its K*d outputs are upsampled (bilinear
                # interpolation commutes with a per-pixel linear map)
                recon, extra = self.net_(xt, taps=self.taps)
                p = self._posterior_taps(extra, xt.shape[-2:])
                return p.cpu().numpy(), recon.cpu().numpy()
            taps = list(self.taps)
            if "out" not in taps:
                taps = taps + ["out"]
            hc_all = hypercolumns(self.net_, xt, taps)
            nrec = self.net_.in_channels
            recon = hc_all[:, -nrec:] if "out" not in self.taps else None
            hc = hc_all[:, :-nrec] if "out" not in self.taps else hc_all
            if recon is None:
                i0 = sum(self.net_.tap_channels(t) for t in self.taps[:self.taps.index("out")])
                recon = hc[:, i0:i0 + nrec]
            if want_hc:
                return hc.cpu().numpy(), recon.cpu().numpy()
            p = self._posterior_torch(hc)
        return p.cpu().numpy(), recon.cpu().numpy()

    def _rule_linear(self):
        """The rule folded into one affine map per component: q_k = A_k x + c_k (numpy, float64).

        Standardisation, tap weights, PCA and each component's precision
        Cholesky factor are all affine, so the whole per-pixel rule is one
        1x1 convolution with ``K * d`` outputs followed by squared norms.
        """
        s = self._tap_weight_vector() / self.scale_                     # (D,)
        A_pca = self.components_ * s[None, :]                            # (d, D)
        b_pca = -(A_pca @ self.mean_) - self.components_ @ self.pca_mean_  # (d,)
        A, c, const = [], [], []
        for k in range(len(self.mix_weights_)):
            P = self.mix_prec_chol_[k]                                  # (d, d): q = (y - m) @ P
            A.append(P.T @ A_pca)                                       # (d, D)
            c.append(P.T @ (b_pca - self.mix_means_[k]))
            const.append(np.log(self.mix_weights_[k]) + np.sum(np.log(np.diag(P))))
        return np.concatenate(A), np.concatenate(c), np.asarray(const)

    def _rule_tensors(self, dev, dt):
        import torch

        cache = getattr(self, "_rule_cache", None)
        if cache is None or cache[0] != (str(dev), id(self.mix_means_)):
            A, c, const = self._rule_linear()
            cache = ((str(dev), id(self.mix_means_)),
                     torch.as_tensor(A, dtype=dt, device=dev)[:, :, None, None],
                     torch.as_tensor(c, dtype=dt, device=dev),
                     torch.as_tensor(const, dtype=dt, device=dev),
                     torch.as_tensor(self.object_components_, device=dev))
            self._rule_cache = cache
        return cache[1:]

    def _posterior_taps(self, extra, size):
        """p_object from the taps at native resolution (same maps as `_posterior_torch`
        on the upsampled hypercolumns, up to float rounding)."""
        import torch
        from torch.nn import functional as F

        f0 = extra[self.taps[0]]
        A, c, const, is_obj = self._rule_tensors(f0.device, f0.dtype)
        q = None
        i0 = 0
        for t in self.taps:
            f = extra[t]
            n = f.shape[1]
            qt = F.conv2d(f, A[:, i0:i0 + n])
            i0 += n
            if qt.shape[-2:] != size:
                qt = F.interpolate(qt, size=size, mode="bilinear", align_corners=False)
            q = qt if q is None else q.add_(qt)
        q.add_(c[None, :, None, None])
        B, _, H, W = q.shape
        K = const.shape[0]
        q2 = q.mul_(q).reshape(B, K, -1, H, W).sum(dim=2)
        logp = const[None, :, None, None] - 0.5 * q2
        if K == 2 and int(is_obj.sum()) == 1:
            # two components: the softmax is a sigmoid of the log-ratio
            o = int(torch.nonzero(is_obj)[0])
            return torch.sigmoid(logp[:, o] - logp[:, 1 - o])
        post = torch.softmax(logp, dim=1)
        return post[:, is_obj].sum(dim=1)

    def _posterior_torch(self, hc):
        import torch
        from torch.nn import functional as F

        B, D, H, W = hc.shape
        A, c, const, is_obj = self._rule_tensors(hc.device, hc.dtype)
        K = const.shape[0]
        q = F.conv2d(hc, A, c)                                            # (B, K*d, H, W)
        q2 = (q * q).reshape(B, K, -1, H, W).sum(dim=2)
        logp = const[None, :, None, None] - 0.5 * q2
        post = torch.softmax(logp, dim=1)
        return post[:, is_obj].sum(dim=1)

    def _tiled(self, img, want_hc=False, want_recon=True):
        """Run the network over a whole image in overlapping tiles.

        The image is padded (reflect) to a multiple of the network's
        down-sampling factor and cut into a grid of about ``tile``-pixel
        blocks; `dask.array.map_overlap` hands each block to the network with
        an ``overlap``-pixel halo from its neighbours (mirrored at the field
        edge) and trims the halo again.  ``overlap`` is at least the
        network's receptive radius, so there are no seams.  The blocks run one
        after another (synchronous scheduler): the network call dominates and
        uses the torch threads itself.
        """
        import dask.array as da

        m = self.net_.multiple
        T = max(m, int(np.ceil(self.tile / m) * m))
        d = int(np.ceil(self.overlap / m) * m)
        C, ny, nx = img.shape
        # padded to a multiple of m and to at least the halo (map_overlap needs blocks >= depth)
        py, px = max(ny + (-ny) % m, d) - ny, max(nx + (-nx) % m, d) - nx
        xp = np.pad(img, ((0, 0), (0, py), (0, px)), mode="reflect") if (py or px) else img
        xp = np.ascontiguousarray(xp, dtype=np.float32)
        H, W = ny + py, nx + px
        n_out = (sum(self.net_.tap_channels(t) for t in self.taps) + C) if want_hc else (1 + C * want_recon)

        def sizes(n):
            # about T-pixel blocks of equal size, each a multiple of m
            k = -(-n // T)
            side = int(np.ceil(n / k / m) * m)
            return tuple(min(side, n - a) for a in range(0, n, side))

        def run(block):
            a, rec = self._forward(block[None], want_hc=want_hc)
            if not want_hc:
                a = a[:, None]
                if not want_recon:
                    return a[0].astype(np.float32, copy=False)
            return np.concatenate([a[0], rec[0]], axis=0).astype(np.float32, copy=False)

        arr = da.from_array(xp, chunks=((C,), sizes(H), sizes(W)))
        out = da.map_overlap(run, arr, depth={0: 0, 1: d, 2: d}, boundary="reflect",
                             trim=True, dtype=np.float32, chunks=((n_out,), arr.chunks[1], arr.chunks[2]))
        return out.compute(scheduler="synchronous")[:, :ny, :nx]

    def object_probability(self, field, background=None, reconstruction=True):
        """Per-pixel posterior probability of "object", and the reconstruction.

        Parameters
        ----------
        field : Field or numpy.ndarray
            A field, or its network input ``(5, ny, nx)``.
        background : optional
            As in `network_input`.
        reconstruction : bool
            Also return the network's reconstruction (None otherwise).

        Returns
        -------
        p : numpy.ndarray
            float32 ``(ny, nx)`` in [0, 1]; 0 where every band is masked.
        recon : numpy.ndarray or None
            float32 ``(5, ny, nx)`` reconstruction (network-input units);
            None when ``reconstruction`` is False.
        """
        self._check_fitted()
        img = np.asarray(field, np.float32) if isinstance(field, np.ndarray) else network_input(field, background)
        if img.ndim != 3 or img.shape[0] != self.net_.in_channels:
            raise ValueError(f"expected ({self.net_.in_channels}, ny, nx) input, got {img.shape}")
        est = self
        if self.rule == "refit":
            # refit the mixture on this field only, on a copy (network shared, self unchanged)
            import copy

            est = copy.copy(self).fit_rule([img], n_samples=100_000)
        elif self.rule != "shipped":
            raise ValueError(f"rule must be 'shipped' or 'refit', not {self.rule!r}")
        out = est._tiled(img, want_recon=reconstruction)
        p = out[0]
        p[np.all(img == 0, axis=0)] = 0.0
        return p, (out[1:] if reconstruction else None)

    def segment(self, field, background=None, return_maps=False):
        """Segment a field.

        Parameters
        ----------
        field : Field or numpy.ndarray
            A field, or its network input ``(5, ny, nx)``.
        background : optional
            Background with ``level`` and ``rms`` (estimated when None).
        return_maps : bool
            Also return ``(p_object, recon)``.

        Returns
        -------
        photutils.segmentation.SegmentationImage or None
            0 = background, k = source k (deblended, relabelled 1..N); None
            when no source is found.
        """
        from photutils.segmentation import SegmentationImage, detect_sources
        from scipy.ndimage import gaussian_filter

        img = np.asarray(field, np.float32) if isinstance(field, np.ndarray) else network_input(field, background)
        p, recon = self.object_probability(img, reconstruction=return_maps)
        segm = detect_sources(p, self.threshold, n_pixels=self.n_pixels)
        five = img.shape[0] == len(BANDS)
        grow = self.isophote is not None
        lin = r = None
        if (segm is not None and self.deblend) or self.seed_nsigma is not None or grow or self.band_nsigma is not None:
            # linear noise units of g, r, i (deblending, matched-filter seeds, growth)
            lin = img[_GRI] if five else img.copy()   # a float32 copy: scratch
            lin *= np.float32(1.0 / STRETCH)
            np.sinh(lin, out=lin)
            lin *= np.float32(STRETCH)
            r = lin[_GRI.index(BANDS.index("r"))].copy() if five else lin[0].copy()
            lin = lin.sum(axis=0)
        sm_sn = None
        if self.seed_nsigma is not None or self.halo_peak is not None or self.fragment_excess is not None:
            sm_sn = matched_filter_sn(lin, self.seed_sigma)
        if self.seed_nsigma is not None:
            # (the threshold is relative to the smoothed image's measured noise: no scaling needed)
            data = np.zeros(p.shape, np.int32) if segm is None else np.asarray(segm.data, np.int32)
            data = matched_filter_seeds(lin, data, self.seed_nsigma, self.seed_sigma, self.n_pixels, sm_sn=sm_sn)
            segm = SegmentationImage(data) if data.any() else None
        det = None
        if segm is not None and (self.deblend or grow or self.band_nsigma is not None):
            det = gaussian_filter(lin, self.deblend_fwhm / 2.3548)
        if segm is not None and self.deblend:
            from astrohvae.stamps import deblend_segments

            segm = deblend_segments(det, segm, self.n_pixels, n_levels=32, contrast=0.001)
            if self.fragment_excess is not None:
                from scipy import ndimage

                # parents: the connected regions of segments and matched-filter S/N > group_nsigma, so that
                # the separate seeds of a galaxy's knots and arms are tested as its deblended children are
                parents = ndimage.label((segm.data > 0) | (sm_sn > self.fragment_group), structure=np.ones((3, 3)))[0]
                lin5 = (lambda v: np.sinh(v * np.float32(1.0 / STRETCH)) * np.float32(STRETCH)) if five else None
                segm = SegmentationImage(merge_fragments(
                    parents, segm.data, det, sm_sn, bands=img if five and self.fragment_colour is not None else None,
                    min_excess=self.fragment_excess, min_flux=self.fragment_flux,
                    colour_chi2=self.fragment_colour or np.inf, sigma=self.seed_sigma, linearise=lin5))
        valid = np.any(img != 0, axis=0)
        stats = None
        if segm is not None and (grow or (self.band_nsigma is not None and five) or self.halo_peak is not None):
            # r moments and windowed centroids of every segment, shared by the band test and the growth
            data = np.asarray(segm.data)
            mom = _segment_moments(data, r)
            lab = np.flatnonzero(mom[0] > 0)
            lab = lab[lab > 0]
            wy, wx = mom[1].copy(), mom[2].copy()
            wy[lab], wx[lab] = windowed_centroids(det, mom[1][lab], mom[2][lab], sigma=self.seed_sigma)
            stats = (mom, (wy, wx), lab)
        if segm is not None and self.band_nsigma is not None and five:
            segm, stats = self._drop_single_band(segm, img, stats, valid)
        if segm is not None and self.halo_peak is not None:
            drop = halo_peaks(np.asarray(segm.data), sm_sn, stats[1], min_peak=self.halo_peak)
            if drop.size:
                keep = np.ones(int(segm.max_label) + 1, bool)
                keep[drop] = False
                segm, stats = _keep_labels(segm, stats, keep)
        if segm is not None and grow:
            segm = SegmentationImage(grow_isophotal(segm.data, r, self.isophote, valid=valid, centroid_image=det,
                                                    psf_snr=self.psf_snr, moments=stats[0], centres=stats[1],
                                                    trim=self.trim, smooth_radius=self.smooth_radius,
                                                    faint_size=True))
        if return_maps:
            return segm, (p, recon)
        return segm

    def _drop_single_band(self, segm, img, stats, valid):
        """Remove segments seen in fewer than two bands (`band_support` below ``band_nsigma``).

        A real source is seen in at least two of u, g, r, i, z at a few
        sigma (a very red star or a high-redshift quasar in i and z only, a
        blue one in u and g); a cosmic ray, a bad column or a noise peak of
        one band is not.  The test is the second-highest of the per-band
        matched-filter S/Ns at the segment's windowed centroid on ``img``
        (the five-band network input; its asinh stretch is undone on the
        windows), counting only the bands not masked there; a segment with
        fewer than two such bands is kept.  ``stats`` is
        ``(moments, (cy, cx), labels)``: `_segment_moments` of r, the
        windowed centroids and the labels with positive r flux (the others
        are dropped), all indexed by label.  Labels are renumbered 1..N in
        their old order; returns the segmentation (None if nothing is
        left) and ``stats`` re-indexed to the new labels.
        """
        data = np.asarray(segm.data)
        n = int(data.max(initial=0))
        mom, (wy, wx), lab = stats
        snr = band_support(img, wy[lab], wx[lab], sigma=self.seed_sigma, valid=valid, segm_data=data,
                           linearise=lambda v: np.sinh(v * np.float32(1.0 / STRETCH)) * np.float32(STRETCH))
        # bands masked at the centre (0 in the network input) do not count
        iy = np.clip(np.rint(wy[lab]).astype(np.int64), 0, data.shape[0] - 1)
        ix = np.clip(np.rint(wx[lab]).astype(np.int64), 0, data.shape[1] - 1)
        masked = (img[:, iy, ix] == 0).T
        snr[masked] = -np.inf
        second = np.sort(snr, axis=1)[:, -2]
        keep = np.zeros(n + 1, bool)
        keep[lab[(second >= self.band_nsigma) | ((~masked).sum(axis=1) < 2)]] = True
        return _keep_labels(segm, stats, keep)

    # -- persistence ------------------------------------------------------
    _RULE_ARRAYS = ("mean_", "scale_", "components_", "pca_mean_", "mix_weights_", "mix_means_",
                    "mix_covariances_", "component_brightness_")

    def save(self, directory):
        """Write the network and the rule with `astrohvae.weights.save_weights`.

        ``model.safetensors`` holds the network (``net.*``); ``config.json``
        the estimator's parameters and the fitted pixel rule (small arrays,
        as JSON lists: float64 values round-trip exactly).
        """
        from astrohvae.weights import save_weights

        self._check_fitted()
        params = self.get_params()
        params["taps"], params["widths"] = list(self.taps), list(self.widths)
        rule = {k.rstrip("_"): np.asarray(getattr(self, k), np.float64).tolist() for k in self._RULE_ARRAYS}
        rule["object_components"] = [bool(v) for v in self.object_components_]
        config = {"kind": "astrohvae.segment.NetworkSegmenter", "params": params,
                  "input": {"transform": "asinh(((data-level)/rms)/stretch)*stretch", "stretch": STRETCH},
                  "n_features": int(self.n_features_), "rule": rule}
        return save_weights(directory, {"net": self.net_}, config)

    @classmethod
    def load(cls, directory, device="auto", **overrides):
        """Read a segmenter written by `save` (never executes code from the files).

        Parameters
        ----------
        directory : path
        device : str
        **overrides : constructor parameters to change (e.g. ``threshold``,
            ``tile``, ``isophote``); ``variant``/``widths``/``taps`` and the
            rule's shape come from the file.
        """
        from astrohvae.models.segment import VARIANTS, SegmentNet  # importing it registers SegmentNet
        from astrohvae.weights import CONFIG_FILE, load_weights

        directory = Path(directory)
        modules, config = load_weights(directory, device=_resolve_device(device))
        cfg_path = directory / CONFIG_FILE
        if config.get("kind") != "astrohvae.segment.NetworkSegmenter" or "net" not in modules:
            raise InputError(cfg_path, "not a NetworkSegmenter configuration")
        params = dict(config["params"])
        fixed = {"variant", "widths", "taps", "tap_weights", "n_pca", "n_components", "n_background", "rule_kind"}
        for k, v in overrides.items():
            if k in fixed:
                raise ValueError(f"{k} is fixed by the weights")
            params[k] = v
        params["device"] = device
        self = cls(**params)
        try:
            rule = config["rule"]
            arrays = {k: np.asarray(rule[k.rstrip("_")], np.float64) for k in cls._RULE_ARRAYS}
            is_obj = np.asarray(rule["object_components"], bool)
            n_features = int(config["n_features"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(cfg_path, f"missing or bad pixel rule ({exc.__class__.__name__}: {exc})") from exc
        net = modules["net"]
        spec = VARIANTS.get(self.variant)
        if (not isinstance(net, SegmentNet) or spec is None or tuple(net.widths) != self.widths
                or any(getattr(net, k) != v for k, v in spec.items())):
            raise InputError(cfg_path, f"the network does not match variant {self.variant!r}")
        self.net_ = net
        for k, v in arrays.items():
            setattr(self, k, v)
        self._set_mixture(arrays["mix_weights_"], arrays["mix_means_"], arrays["mix_covariances_"])
        self.object_components_ = is_obj
        self.n_features_ = n_features
        return self


def load_default_segmenter(variant=None, device="auto", **overrides):
    """The shipped segmenter (``astrohvae/data/segment/<variant>``).

    Parameters
    ----------
    variant : {'ae-res-hc', 'ae-hc', 'vae-hc'}, optional
        Default `DEFAULT_VARIANT`.
    device : str
    **overrides : see `NetworkSegmenter.load`.
    """
    variant = variant or DEFAULT_VARIANT
    path = WEIGHTS_DIR / variant
    if not path.is_dir():
        raise InputError(path, f"no shipped weights for segmenter variant {variant!r}")
    return NetworkSegmenter.load(path, device=device, **overrides)


# ----------------------------------------------------------------------------
# class map
# ----------------------------------------------------------------------------
_CLASS_CODE = {**CLASS_CODES, **{v: v for v in CLASS_CODES.values()}, 0: 0, "": 0, "background": 0}


def classmap(segm, labels, classes=None):
    """The background/star/galaxy map (the seed's Fig. 8) from a segmentation.

    Parameters
    ----------
    segm : SegmentationImage or numpy.ndarray
        0 background, k = source k.
    labels : dict, or array of ids, or Table with ``id`` and ``class``
        ``{id: 'star'|'galaxy'|1|2}``; or the ids with ``classes`` given.
    classes : sequence, optional
        Class of each id in ``labels`` ('star'/'galaxy' or 1/2).

    Returns
    -------
    numpy.ndarray
        uint8, the segmentation's shape: 0 background (and sources without a
        class), 1 star, 2 galaxy.
    """
    data = np.asarray(getattr(segm, "data", segm))
    if classes is None:
        if isinstance(labels, dict):
            ids, classes = list(labels.keys()), list(labels.values())
        elif hasattr(labels, "colnames"):
            ids, classes = list(labels["id"]), list(labels["class"])
        else:
            raise TypeError("give a dict id->class, a Table with id/class, or ids and classes")
    else:
        ids = list(np.asarray(labels).ravel())
        classes = list(np.asarray(classes).ravel())
    if len(ids) != len(classes):
        raise ValueError("labels and classes differ in length")
    top = int(max(data.max(initial=0), max((int(i) for i in ids), default=0)))
    lut = np.zeros(top + 1, np.uint8)
    for i, c in zip(ids, classes):
        if isinstance(c, (bytes, np.bytes_)):
            c = c.decode()
        key = c.strip().lower() if isinstance(c, str) else int(c)
        if key not in _CLASS_CODE:
            raise ValueError(f"unknown class {c!r} (use 'star'/'galaxy' or 1/2)")
        if int(i) > 0:
            lut[int(i)] = _CLASS_CODE[key]
    return lut[np.clip(data, 0, top)]


# ----------------------------------------------------------------------------
# figures (the seed's Fig. 5, 7 and 8)
# ----------------------------------------------------------------------------
def _colour(img, lo=-1.0, hi=12.0):
    """RGB (i, r, g) of a network input, asinh noise units mapped to [0, 1]."""
    rgb = np.stack([img[BANDS.index(b)] for b in ("i", "r", "g")], axis=-1)
    return np.clip((rgb - lo) / (hi - lo), 0, 1)


def _label_colours(segm):
    data = np.asarray(getattr(segm, "data", segm))
    rng = np.random.default_rng(1)
    lut = rng.uniform(0.25, 1.0, (int(data.max(initial=0)) + 1, 3))
    lut[0] = 0.0
    return lut[data]


_CLASS_RGB = np.array([[0.5, 0.5, 0.5], [0.85, 0.1, 0.1], [1.0, 0.6, 0.0]])
"""Fig. 8 colours: grey background, red stars, orange galaxies."""


def plot_panels(img, results, out, class_map=None, zoom=None, title=""):
    """Write a PNG of the field in colour, each variant's output and mask, and the class map.

    Parameters
    ----------
    img : numpy.ndarray
        Network input ``(5, ny, nx)`` (`network_input`).
    results : dict
        ``{name: (segm or None, recon or None)}`` per variant (or the
        photutils baseline, with ``recon`` None).
    out : path
        PNG file (written atomically).
    class_map : numpy.ndarray, optional
        uint8 map (0 background, 1 star, 2 galaxy).
    zoom : tuple of slices, optional
        ``(slice_y, slice_x)`` to show a cut-out instead of the whole field.
    title : str
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from astrohvae.io.atomic import atomic_path

    sl = (slice(None), slice(None)) if zoom is None else tuple(zoom)
    names = list(results)
    has_recon = any(r[1] is not None for r in results.values())
    ncol = 1 + len(names) + (class_map is not None)
    nrow = 2 if has_recon else 1
    ny, nx = img[:, sl[0], sl[1]].shape[1:]
    w = 3.2 * ncol
    h = 3.2 * nrow * ny / nx + 0.6
    fig, axes = plt.subplots(nrow, ncol, figsize=(w, h), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    axes[0, 0].imshow(_colour(img[:, sl[0], sl[1]]), origin="lower", interpolation="nearest")
    axes[0, 0].set_title("field (i,r,g)", fontsize=8)
    for j, name in enumerate(names, start=1):
        segm, recon = results[name]
        data = np.zeros(img.shape[1:], np.int32) if segm is None else np.asarray(getattr(segm, "data", segm))
        n = 0 if segm is None else int(getattr(segm, "n_labels", len(np.unique(data)) - 1))
        axes[0, j].imshow(_label_colours(data[sl]), origin="lower", interpolation="nearest")
        axes[0, j].set_title(f"{name}: {n} segments", fontsize=8)
        if has_recon and recon is not None:
            axes[1, j].imshow(_colour(recon[:, sl[0], sl[1]]), origin="lower", interpolation="nearest")
            axes[1, j].set_title(f"{name}: reconstruction", fontsize=8)
    if class_map is not None:
        axes[0, -1].imshow(_CLASS_RGB[np.asarray(class_map)[sl]], origin="lower", interpolation="nearest")
        axes[0, -1].set_title("class map: grey bkg, red star, orange galaxy", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(out)


# ----------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------
def write_segmap(path, segm, class_map=None, header=None, wcs=None):
    """Write ``SEGMAP`` (int32) and optionally ``CLASSMAP`` (uint8) to a FITS file atomically.

    Parameters
    ----------
    path : path
    segm : SegmentationImage, numpy.ndarray or None
        None writes an all-zero map of ``class_map``'s shape (or fails).
    class_map : numpy.ndarray, optional
    header : dict, optional
        Extra primary-header cards ``{key: value or (value, comment)}``.
    wcs : astropy.wcs.WCS, optional
        Written into both image HDUs.
    """
    from astropy.io import fits

    from astrohvae import __version__
    from astrohvae.io.atomic import atomic_path

    if segm is None:
        if class_map is None:
            raise ValueError("need a segmentation or a class map")
        data = np.zeros(np.shape(class_map), np.int32)
    else:
        data = np.asarray(getattr(segm, "data", segm)).astype(np.int32)
    prim = fits.PrimaryHDU()
    prim.header["ASTHVVER"] = (__version__, "astrohvae version")
    prim.header["BANDS"] = "".join(BANDS)
    prim.header["REFBAND"] = "r"
    prim.header["XYORIGIN"] = (0, "pixel coordinates are 0-based")
    for k, v in (header or {}).items():
        prim.header[k] = v
    whdr = wcs.to_header() if wcs is not None else fits.Header()
    hdus = [prim, fits.ImageHDU(data, header=whdr.copy(), name="SEGMAP")]
    hdus[1].header["NSOURCES"] = (int(data.max(initial=0)), "labels 1..N, 0 = background")
    if class_map is not None:
        cm = np.asarray(class_map).astype(np.uint8)
        if cm.shape != data.shape:
            raise ValueError("class map and segmentation differ in shape")
        hdus.append(fits.ImageHDU(cm, header=whdr.copy(), name="CLASSMAP"))
        hdus[-1].header["CLASSES"] = ("0 background, 1 star, 2 galaxy", "")
    with atomic_path(path) as tmp:
        fits.HDUList(hdus).writeto(tmp, overwrite=True)
    return Path(path)


def _zoom_window(segm, shape, size=256):
    """A window around the largest segment (for the zoomed figure)."""
    ny, nx = shape
    size = min(size, ny, nx)
    if segm is None or segm.n_labels == 0:
        y0, x0 = (ny - size) // 2, (nx - size) // 2
    else:
        k = int(np.argmax(segm.areas))
        sl = segm.slices[k]
        cy, cx = (sl[0].start + sl[0].stop) // 2, (sl[1].start + sl[1].stop) // 2
        y0 = int(np.clip(cy - size // 2, 0, ny - size))
        x0 = int(np.clip(cx - size // 2, 0, nx - size))
    return slice(y0, y0 + size), slice(x0, x0 + size)


def segment_file(field_path, out, variant=None, weights=None, classify=False, plots=False, device="auto",
                 all_variants_in_plots=True, isophote=None):
    """Segment the field in ``field_path`` and write ``out`` (SEGMAP [+ CLASSMAP]).

    Parameters
    ----------
    field_path : path or list of paths
        Anything `astrohvae.io.readers.read_field` reads.
    out : path
        Output FITS file.
    variant : str, optional
        Shipped variant (default `DEFAULT_VARIANT`); ignored with ``weights``.
    weights : path, optional
        A folder written by `NetworkSegmenter.save`.
    classify : bool
        Classify each segment with the default classifier and write CLASSMAP.
    plots : bool
        Also write ``<out stem>-segment.png`` (whole field) and
        ``<out stem>-segment-zoom.png`` (256x256 around the largest source):
        the field in colour, the mask of each shipped variant and of the
        photutils 1.5 sigma baseline, the reconstructions, and the class map.
    device : str
    all_variants_in_plots : bool
        Plot every shipped variant (not only the one written).
    isophote : float, optional
        Footprint isophote in r sky sigma (`NetworkSegmenter` ``isophote``,
        header card SEGISO); None: the segmenter's own (0.5).

    Returns
    -------
    dict
        ``{'out', 'n_sources', 'seconds', 'plots': [...]}``.
    """
    import time

    from astrohvae.io.readers import read_field
    from astrohvae.stamps import estimate_background

    t0 = time.perf_counter()
    field = read_field(field_path)
    bkg = estimate_background(field)
    over = {} if isophote is None else {"isophote": float(isophote)}
    if weights is not None:
        seg = NetworkSegmenter.load(weights, device=device, **over)
        wdir = Path(weights)
    else:
        seg = load_default_segmenter(variant, device=device, **over)
        wdir = WEIGHTS_DIR / seg.variant
    img = network_input(field, bkg)
    t1 = time.perf_counter()
    segm, (p, recon) = seg.segment(img, return_maps=True)
    t_seg = time.perf_counter() - t1
    cmap = None
    header = {"SEGVAR": (seg.variant, "segmenter variant"), "SEGRULE": (seg.rule, "pixel rule"),
              "SEGTHR": (seg.threshold, "posterior threshold of object"),
              "SEGISO": (-1.0 if seg.isophote is None else seg.isophote,
                         "footprint isophote, r sky sigma (-1: none)"),
              "SEGMFSIG": (-1.0 if seg.seed_nsigma is None else seg.seed_nsigma,
                           "matched-filter seed level, sigma (-1: none)"),
              "SEGPSNR": (-1.0 if seg.psf_snr is None else seg.psf_snr,
                          "S/N below which PSF-scaled growth (-1: none)"),
              "SEGBANDS": (-1.0 if seg.band_nsigma is None else seg.band_nsigma,
                           "2nd-best band S/N to keep a segment (-1: off)"),
              "SEGHALO": (-1.0 if getattr(seg, "halo_peak", None) is None else seg.halo_peak,
                          "halo test: bright-star peak S/N (-1: off)"),
              "SEGTRIM": (bool(getattr(seg, "trim", False)), "seeds trimmed to their footprints"),
              "SEGSMR": (-1.0 if getattr(seg, "smooth_radius", None) is None else seg.smooth_radius,
                         "smoothed isophote from radius, px (-1: off)"),
              "SEGFRAG": (-1.0 if getattr(seg, "fragment_excess", None) is None else seg.fragment_excess,
                          "fragment test: excess over model (-1: off)")}
    try:
        from astrohvae.weights import weights_hash

        header["SEGSHA"] = (weights_hash(wdir)[:16], "sha256 of segmenter weights (start)")
    except Exception:  # noqa: BLE001 - the hash is informative only
        pass
    if classify:
        from astrohvae.classify import load_default_classifier
        from astrohvae.stamps import cut_stamps, measure_sources

        if segm is None:
            cmap = np.zeros(field.shape, np.uint8)
        else:
            sources = measure_sources(field, segm, bkg)
            stamps = cut_stamps(field, segm, sources, bkg)
            clf = load_default_classifier(device=device)
            classes = clf.predict(stamps)
            cmap = classmap(segm, np.asarray(sources["id"]), classes)
        header["CLASSIFY"] = ("default", "classifier used for CLASSMAP")
    write_segmap(out, segm, class_map=cmap, header=header, wcs=field.wcs)
    written = []
    if plots:
        from astrohvae.stamps import detect

        results = {}
        names = [seg.variant]
        if all_variants_in_plots and weights is None:
            names = [v for v in ("vae-hc", "ae-hc", "ae-res-hc") if (WEIGHTS_DIR / v).is_dir()]
        for v in names:
            if v == seg.variant:
                results[v] = (segm, recon)
            else:
                s2, (_, r2) = load_default_segmenter(v, device=device, **over).segment(img, return_maps=True)
                results[v] = (s2, r2)
        results["photutils 1.5σ"] = (detect(field, bkg, nsigma=1.5), None)
        stem = Path(out)
        stem = stem.with_name(stem.name[:-5] if stem.name.endswith(".fits") else stem.name)
        title = f"{field.name}: segmentation ({seg.variant} written)"
        written.append(plot_panels(img, results, f"{stem}-segment.png", class_map=cmap, title=title))
        written.append(plot_panels(img, results, f"{stem}-segment-zoom.png", class_map=cmap,
                                   zoom=_zoom_window(segm, field.shape), title=title + ", zoom"))
    return {"out": Path(out), "n_sources": 0 if segm is None else int(segm.n_labels),
            "seconds": time.perf_counter() - t0, "segment_seconds": t_seg, "plots": written}
