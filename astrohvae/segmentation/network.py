"""The network segmenter: `NetworkSegmenter` (hypercolumns of a fully convolutional (V)AE, an unsupervised
object/background rule, seeds grown to isophotal footprints) and `load_default_segmenter`.

The method, step by step, is in the package docstring (`astrohvae.segmentation`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from astrohvae import BANDS
from astrohvae.conventions import GRI as _GRI
from astrohvae.errors import InputError
from astrohvae.detection.centroids import windowed_centroids
from astrohvae.segmentation.seeds import (
    anchored_em,
    band_support,
    halo_peaks,
    matched_filter_seeds,
    matched_filter_sn,
    reflect_pad,
    segment_moments,
    sky_sigma,
)
from astrohvae.segmentation.training import train_segment_net

__all__ = ['NetworkSegmenter', 'load_default_segmenter', 'network_input', 'DEFAULT_VARIANT', 'DEFAULT_TAPS', 'STRETCH', 'WEIGHTS_DIR']

STRETCH = 3.0

SEED_ISOPHOTE = 0.5
"""Level (r sky sigma per pixel) the seeds of faint sources are known to lie above: at this
isophote or below, a faint source's footprint holds at least its seed's area (unless its size is
measured, ``faint_size``: then its seed is trimmed to its footprint but for the pixels that stand
out, `KEEP_LEVEL`); above it, every seed is trimmed to its footprint (`grow_isophotal`)."""
"""asinh stretch of the network input, in units of the pixel noise."""

CORE_RADIUS = 1.0
"""Radius (pixels) of the footprint left to a faint source none of whose light reaches an
isophote above `SEED_ISOPHOTE`: the pixels whose centres lie within it of the source's centre."""

DEFAULT_VARIANT = "ae-res-hc"
"""Variant `load_default_segmenter` returns when none is asked for."""

DEFAULT_TAPS = ("out", "dec0", "dec1")
"""Default hypercolumn layers: the reconstruction and the decoder at full and half resolution."""

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "data" / "segment"
"""Shipped weights: one sub-folder per variant."""



# ----------------------------------------------------------------------------
# background and input
# ----------------------------------------------------------------------------
def _background(field, background):
    if background is not None:
        return background
    from astrohvae.detection.background import estimate_background

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
# the estimator
# ----------------------------------------------------------------------------
def _resolve_device(device):
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


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
    deblend_floor : float or None
        Lowest deblending level, in units of the deblending image's noise
        (measured on the sky side of its histogram, `sky_sigma`: the MAD
        of a crowded field measures its stars, 4x the noise in
        005405-6-0099): the exponential
        levels run from it to each segment's peak (`deblend_segments`
        ``floor``), so that the fainter neighbours inside a bright star's
        segment are split; None: photutils' levels (linear from the
        segment's minimum when that is not positive, as in almost every
        network segment).
    deblend_recursive : bool
        Deblend every child again as a segment of its own, until none
        splits (`deblend_segments` ``recursive``): in a crowded field the
        network's segments merge hundreds of stars and one set of levels
        from the floor to the brightest of them is too coarse for the
        faint ones.  False: photutils' single pass.
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
        Segments below this S/N are grown with the field's PSF convolved
        with an exponential disc of their size, scaled to their amplitude,
        in the ellipse of their shape; the others on their own profile
        (`grow_isophotal`); None: all on their own profile.  30: at S/N
        12-30 the annulus at a 0.5-sigma isophote has S/N 2-4 and its first
        crossing scatters more than the fitted profile (IoU +0.0001 to
        +0.0024 on tuning seeds 10-14 against 20, with the exponential
        model; 12 -> 20 gained up to +0.0028 with the stretched PSF).
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
        join the group's kept segments (`merge_fragments`); a segment
        where the source's model lies below 1 matched-filter sigma is
        beyond the source and not tested (``extent``).
        ``fragment_excess=None``: photutils' contrast criterion alone.
    fragment_knots : int
        When a group's extended source holds this many excesses (each under
        10 % of its smooth model's light) that the tests above would keep, they
        are tested against their common colour as well: those that share it
        are the source's knots (star-forming regions) and join it, one of
        another colour (a foreground star) stays; 0: no knot test.
    """

    def __init__(self, variant=DEFAULT_VARIANT, taps=DEFAULT_TAPS, tap_weights=None,
                 widths=(8, 16, 32, 32), n_components=2, n_background=2, rule_kind="free", n_pca=8, threshold=0.5, n_pixels=5,
                 deblend=True, deblend_fwhm=2.0, rule="shipped", tile=512, overlap=48,
                 batch_size=8, device="auto", random_state=0, isophote=0.5, seed_nsigma=4.0,
                 seed_sigma=1.5, psf_snr=30.0, band_nsigma=2.0, halo_peak=2000.0, trim=True, smooth_radius=30.0,
                 fragment_excess=5.0, fragment_flux=0.05, fragment_colour=30.0, fragment_group=3.0,
                 fragment_knots=3, deblend_floor=3.0, deblend_recursive=True):
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
        self.fragment_knots = int(fragment_knots or 0)
        self.deblend_floor = None if deblend_floor is None else float(deblend_floor)
        self.deblend_recursive = bool(deblend_recursive)

    # -- parameters -------------------------------------------------------
    def get_params(self):
        """Constructor parameters as a dict (scikit-learn convention)."""
        keys = ("variant", "taps", "tap_weights", "widths", "n_components", "n_background", "rule_kind", "n_pca", "threshold",
                "n_pixels", "deblend", "deblend_fwhm", "rule", "tile", "overlap", "batch_size",
                "device", "random_state", "isophote", "seed_nsigma", "seed_sigma", "psf_snr", "band_nsigma",
                "halo_peak", "trim", "smooth_radius", "fragment_excess", "fragment_flux",
                "fragment_colour", "fragment_group", "fragment_knots", "deblend_floor", "deblend_recursive")
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
        from astrohvae.models.engine import random_crops

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
            X0, _ = self._sample_hypercolumns([reflect_pad(im) for im in images], n_samples, rng)
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
            weights, means, covs, is_obj = anchored_em(Y, bg, self.n_components - nb, rng)
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

        from astrohvae.segmentation.footprints import (
            grow_isophotal,
            keep_labels,
            merge_fragments,
        )

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
            from astrohvae.detection.detect import deblend_segments

            floor = None if self.deblend_floor is None else self.deblend_floor * sky_sigma(det)
            segm = deblend_segments(det, segm, self.n_pixels, n_levels=32, contrast=0.001, floor=floor,
                                    recursive=self.deblend_recursive)
            if self.fragment_excess is not None:
                from scipy import ndimage

                # parents: the connected regions of segments and matched-filter S/N > group_nsigma, so that
                # the separate seeds of a galaxy's knots and arms are tested as its deblended children are
                parents = ndimage.label((segm.data > 0) | (sm_sn > self.fragment_group), structure=np.ones((3, 3)))[0]
                lin5 = (lambda v: np.sinh(v * np.float32(1.0 / STRETCH)) * np.float32(STRETCH)) if five else None
                segm = SegmentationImage(merge_fragments(
                    parents, segm.data, det, sm_sn, bands=img if five and self.fragment_colour is not None else None,
                    min_excess=self.fragment_excess, min_flux=self.fragment_flux,
                    colour_chi2=self.fragment_colour or np.inf, sigma=self.seed_sigma, linearise=lin5,
                    knot_min=self.fragment_knots))
        valid = np.any(img != 0, axis=0)
        stats = None
        if segm is not None and (grow or (self.band_nsigma is not None and five) or self.halo_peak is not None):
            # r moments and windowed centroids of every segment, shared by the band test and the growth
            data = np.asarray(segm.data)
            mom = segment_moments(data, r)
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
                segm, stats = keep_labels(segm, stats, keep)
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
        ``(moments, (cy, cx), labels)``: `segment_moments` of r, the
        windowed centroids and the labels with positive r flux (the others
        are dropped), all indexed by label.  Labels are renumbered 1..N in
        their old order; returns the segmentation (None if nothing is
        left) and ``stats`` re-indexed to the new labels.
        """
        from astrohvae.segmentation.footprints import keep_labels
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
        return keep_labels(segm, stats, keep)

    # -- persistence ------------------------------------------------------
    _RULE_ARRAYS = ("mean_", "scale_", "components_", "pca_mean_", "mix_weights_", "mix_means_",
                    "mix_covariances_", "component_brightness_")

    def save(self, directory):
        """Write the network and the rule with `astrohvae.models.weights.save_weights`.

        ``model.safetensors`` holds the network (``net.*``); ``config.json``
        the estimator's parameters and the fitted pixel rule (small arrays,
        as JSON lists: float64 values round-trip exactly).
        """
        from astrohvae.models.weights import save_weights

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
        from astrohvae.models.segment import (  # importing it registers SegmentNet
            VARIANTS,
            SegmentNet,
        )
        from astrohvae.models.weights import CONFIG_FILE, load_weights

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
