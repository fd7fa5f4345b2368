"""A+Vr: the hierarchical AE -> 1-D VAE classifier (the shipped one)."""

from __future__ import annotations

import numpy as np

from astrohvae.classify.base import Estimator
from astrohvae.classify.mixture import (
    MIN_DENSITY_ROWS,
    STAT_RANGES,
    marginal_draws,
    mixture_posterior,
    star_side,
    statistics_density,
)
from astrohvae.morphology.physical import (
    COLOUR_CLIP,
    COLOUR_SNR,
    COLOUR_STAR_SNR,
    MORPH_SNR,
    N_FLUX_COLUMNS,
    N_PHYSICAL,
    PHYSICAL_OPTIONS,
    SPREAD_ERR_COLUMN,
    SPREAD_FACTOR,
    SPREAD_GALAXY,
    colour_llr,
    colour_templates,
    field_names,
    galaxy_seds,
    locus_llr,
    resolved_sources,
    pass1_statistics,
    physical_features,
    spread_galaxies,
    spread_llr,
)
from astrohvae.stamps.preprocess import DEFAULT_REPRESENTATION

__all__ = ['HierarchicalClassifier']

class HierarchicalClassifier(Estimator):
    """A+Vr: AE (30 latents) -> 1-D VAE with an asymmetric two-peak prior.

    Parameters
    ----------
    representation : str
        Stamp representation (`astrohvae.stamps.preprocess.REPRESENTATIONS`).
    crop : int or None
        Side of the central crop the networks see (None = whole stamp).
    physical : bool or {'morph', 'colour'}
        Feed the label-free physical statistics (`physical_features`: four morphology
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
    colour_prior : {'locus', True, False}
        ``'locus'`` (default): multiply the peak posterior's odds by the
        flux-space colour likelihood ratio `locus_llr` (clipped to
        +-`COLOUR_CLIP` in log odds) of the source's five PSF-fit fluxes and
        their errors (`psf_fluxes`): stars are the physical stellar locus
        (`astrohvae.photometry.STELLAR_LOCUS`, hot halo stars to late M
        dwarfs, and quasars), galaxies the SEDs of label-free resolved sources
        (r_half > 1.35 x the locus, S/N >= 30) of the source's own field when
        the call holds at least 20 of them, else of the training stamps; each
        template at a free amplitude with the source's own flux errors; and
        weigh the morphology log odds by ``S/N / (S/N + morph_snr)`` (the
        statistics the VAE reads carry no knowledge of their noise) and the
        clipped colour log odds by ``1 / (1 + S/N / colour_snr)``, S/N the
        source's g+r+i S/N within `SOURCE_RADIUS` of its centre
        (`profile_features`' ``aperture_snr``: it does not move with the
        footprint's isophote).
        Measured on the simulated test fields and the real 004510-4-0030
        (benchmarks/retrain_compare.py, README "Classification").
        ``True``: the former opt-in colour likelihood.  Multiply the peak posterior's odds by a
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
        M-dwarf) stars.  ``False``: morphology only (weights saved before the
        ``'locus'`` option say so and keep their answers).
    morph_snr : float
        With ``colour_prior='locus'``, the morphology log odds are weighted
        by ``S/N / (S/N + morph_snr)`` (`MORPH_SNR`; 0 = unweighted; S/N =
        ``aperture_snr``).
    colour_snr : float or None
        With ``colour_prior='locus'``, the colour log odds are weighted by
        ``1 / (1 + S/N / colour_snr)`` (`COLOUR_SNR`; None = unweighted):
        bright sources are classified by their morphology.
    spread_term : bool
        With ``colour_prior='locus'``, add to the log odds ``(1 - w)`` times the
        noise-aware SPREAD_MODEL log likelihood ratio `spread_llr` (the
        extendedness in units of its own measured error, galaxies fitted per
        field by `spread_galaxies`), ``w = S/N / (S/N + morph_snr)`` the VAE's
        weight: what the S/N weighting takes from the VAE (whose eight
        statistics carry no knowledge of their noise, and whose half-light
        radius in an 8 px aperture is mostly sky noise at S/N ~ 15) the
        noise-aware statistic gives.  Measured (benchmarks/retrain_compare.py,
        benchmarks/injected_stars.py, README "The faint end, noise-aware").
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
    """`transform` reads the stamps chunk by chunk (`astrohvae.morphology.statistics.chunked_statistics`):
    they may be zarr/dask-backed, and a pipeline need not load a field's stamps at once."""

    def __init__(self, representation=DEFAULT_REPRESENTATION, crop=32, physical=True, star_weight=0.35,
                 star_mean=-1.5, star_sigma=0.35, galaxy_mean=1.0, galaxy_sigma=1.0, symmetric_prior=False,
                 ae_latent=30, channels=(16, 32, 64, 64), ae_epochs=4, vae_epochs=40, batch_size=128,
                 lr=2e-3, center_weight=4.0, augment=True, ae_components=0, fit_weight=True, prior_tries=5,
                 colour_prior="locus", morph_snr=MORPH_SNR, colour_snr=COLOUR_SNR, spread_term=True, prior=(1.0, 0.5),
                 divergence=None, beta=1.0, locus_normalise=True, zero_point=True, saturated_stellar=True,
                 peak_centre=True, device="cpu", random_state=0, verbose=False):
        self.colour_prior = colour_prior
        self.morph_snr = morph_snr
        self.colour_snr = colour_snr
        self.spread_term = spread_term
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
        continues where it stopped (`astrohvae.models.engine.fit_model`).
        """
        from astrohvae.classify.base import (
            batched_apply,
            check_stamps,
            checkpoint_path,
            radial_weight,
            stamp_inputs,
            train_ae,
        )
        check_stamps(stamps)
        dev = self._dev()
        seed = 0 if self.random_state is None else int(self.random_state)
        x = stamp_inputs(stamps, self.representation, self.crop)
        w = radial_weight(x.shape[-1], 4.0, self.center_weight)
        self.ae_, self.ae_history_ = train_ae(x, self.ae_latent, self.channels, self.ae_epochs, self.batch_size,
                                               self.lr, seed, w, self.augment, dev, verbose=self.verbose,
                                               checkpoint=checkpoint_path(checkpoint_dir, "ae"))
        z = batched_apply(self.ae_.encode, x, 512, dev)[0]
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
            phys, self.ref_ = physical_features(stamps, colours=self._colour_mode(), options=self._physical_options())
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
            self._fit_latent(zin, seed + 7919 * attempt, dev, checkpoint_path(checkpoint_dir, f"latent-{attempt}"))
            mu, sig = self._encode_latent(zin)
            post = mixture_posterior(mu[:, 0], sig[:, 0], self.weights_, *self._prior()[1:])
            groups = post.argmax(axis=1)  # 0 = narrow (star) peak of the prior, 1 = broad
            if feat is None:
                from astrohvae.morphology.statistics import profile_features

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
        self.galaxy_seds_ = None
        if self.colour_prior and self.physical:
            from astrohvae.morphology.psf import saturated

            sat = saturated(stamps)[complete]
            phys = phys[complete]
            ce = phys[:, N_PHYSICAL:]
            stars = (np.abs(phys[:, 0]) < 0.08) & (feat["snr"] >= COLOUR_STAR_SNR) & ~sat
            gals = resolved_sources(phys, feat["snr"], sat)
            if self._colour_mode() == "flux":
                meta = stamps.meta
                fields = np.asarray(meta["field"])[complete] if "field" in meta.colnames else None
                self.galaxy_seds_ = galaxy_seds(ce, gals, fields, seed=seed)
                self.n_colour_templates_ = (0, 0 if self.galaxy_seds_ is None else len(self.galaxy_seds_))
            else:
                self.colour_templates_ = colour_templates(ce[:, :4], stars, gals, seed=seed)
                self.n_colour_templates_ = (int(stars.sum()), int(gals.sum()))
        return self

    def _fit_latent(self, zin, seed, dev, checkpoint=None):
        from astrohvae.classify.base import train_latent_vae
        self.vae_, self.vae_history_ = train_latent_vae(zin, 1, self._prior(), self.vae_epochs, 256, 3e-3, seed,
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

    def _colour_mode(self):
        """``colours`` of `physical_features` this classifier needs: 'flux', True or False."""
        if not self.colour_prior:
            return False
        return "flux" if self.colour_prior == "locus" else True

    def _has_colour_term(self):
        return (getattr(self, "colour_templates_", None) is not None
                or getattr(self, "galaxy_seds_", None) is not None)

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
        from astrohvae.classify.base import batched_apply
        dev = next(self.vae_.parameters()).device
        mu, logvar = batched_apply(self.vae_.encode, zin.astype(np.float32), batch_size, dev)
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
        from astrohvae.classify.base import batched_apply, check_stamps, stamp_inputs
        check_stamps(stamps)
        n = len(stamps.flux)
        if n == 0:
            return {"z_ae": np.zeros((0, self.ae_latent), np.float32), "z_hvae": np.zeros((0, 1), np.float32),
                    "z_hvae_sigma": np.zeros((0, 1), np.float32)}
        from astrohvae.morphology.statistics import chunked_statistics

        dev = next(self.ae_.parameters()).device
        bs = max(1, batch_size)

        def encode(chunk):
            # the whole chunk's input at once (its g+r+i image is then reused by
            # profile_features below); the network runs in batches of bs
            return batched_apply(self.ae_.encode, stamp_inputs(chunk, self.representation, self.crop), bs, dev)[0]

        # one pass over the (possibly zarr/dask-backed) stamps for the AE
        # latents and the field-independent statistics of each chunk
        res = chunked_statistics(stamps, encode,
                                 *(pass1_statistics(getattr(self, "peak_centre", True)) if self.physical else ()))
        z = res[0].astype(np.float32)
        feats = [self._ae_feats(z)]
        phys = None
        if self.physical:
            phys = physical_features(stamps, self.ref_, colours=self._colour_mode() if self._has_colour_term() else False,
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
        if getattr(self, "galaxy_seds_", None) is not None and phys is not None:
            # the segment's S/N (total flux) picks the field's galaxy populations; a source's own weights
            # use its S/N in a fixed circle, which where its footprint was grown to (the user's isophote)
            # does not change
            seg_snr = np.clip(np.nan_to_num(np.asarray(res[1]["snr"], dtype=np.float64)), 0.0, None)
            snr = np.clip(np.nan_to_num(np.asarray(res[1]["aperture_snr"], dtype=np.float64)), 0.0, None)
            out["colour_llr"] = self._locus_llr(stamps, phys, seg_snr, res[2])
            out["morph_weight"] = (snr / np.maximum(snr + float(self.morph_snr), 1e-12)).astype(np.float32)
            if getattr(self, "spread_term", False) and phys.shape[1] > SPREAD_ERR_COLUMN:
                out["spread_llr"] = self._spread_llr(stamps, phys, seg_snr).astype(np.float32)
            cs = getattr(self, "colour_snr", None)
            if cs:  # clipped first: a bright source's weight scales the clipped evidence
                llr = np.clip(out["colour_llr"], -COLOUR_CLIP, COLOUR_CLIP) / (1.0 + snr / float(cs))
                out["colour_llr"] = llr.astype(np.float32)
        elif getattr(self, "colour_templates_", None) is not None and phys is not None:
            ce = phys[:, N_PHYSICAL:]
            out["colour_llr"] = colour_llr(self.colour_templates_, ce[:, :4], ce[:, 4:]).astype(np.float32)
        return out

    def _locus_llr(self, stamps, phys, snr, sat):
        """`locus_llr` of every source, against its own field's galaxy templates where the call holds at
        least `MIN_TEMPLATE` of them (resolved sources, `resolved_sources`: they share the field's
        extinction and calibration), else against those of the training stamps (``galaxy_seds_``)."""
        n = len(phys)
        fields = field_names(stamps, n)
        fx = phys[:, N_PHYSICAL:N_PHYSICAL + N_FLUX_COLUMNS]
        resolved = resolved_sources(phys, snr, sat)
        out = np.zeros(n, np.float32)
        for name in np.unique(fields):
            sel = fields == name
            own = galaxy_seds(fx[sel], resolved[sel], seed=0 if self.random_state is None else int(self.random_state))
            out[sel] = locus_llr(fx[sel], self.galaxy_seds_ if own is None else own)
        return out

    def _spread_llr(self, stamps, phys, snr):
        """`spread_llr` of every source, against its own field's galaxies (`spread_galaxies`) where the
        call holds enough of its faint sources, else against `SPREAD_GALAXY`."""
        n = len(phys)
        fields = field_names(stamps, n)
        spread = phys[:, 3].astype(np.float64) / SPREAD_FACTOR
        err = phys[:, SPREAD_ERR_COLUMN].astype(np.float64)
        out = np.zeros(n)
        for name in np.unique(fields):
            sel = fields == name
            gal = spread_galaxies(spread[sel], err[sel], snr[sel])
            out[sel] = spread_llr(spread[sel], err[sel], SPREAD_GALAXY if gal is None else gal)
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
            w = t.get("morph_weight", 1.0)
            logit = np.log(p / (1 - p)) * w + np.clip(t["colour_llr"], -COLOUR_CLIP, COLOUR_CLIP)
            if "spread_llr" in t:  # what the S/N weight takes from the VAE, the noise-aware SPREAD_MODEL gives
                logit = logit + (1.0 - w) * t["spread_llr"]
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
        if getattr(self, "galaxy_seds_", None) is not None:
            arrays["colour_galaxy_seds"] = np.asarray(self.galaxy_seds_, dtype=np.float64)
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
        self.galaxy_seds_ = None
        if self.colour_prior == "locus" and "colour_galaxy_seds" in arrays:
            self.galaxy_seds_ = np.asarray(arrays["colour_galaxy_seds"], dtype=np.float64)
        elif self.colour_prior and "colour_star_weights" in arrays:
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
        from astrohvae.classify.persist import load_model
        return load_model(directory, device=device, expect=cls)
