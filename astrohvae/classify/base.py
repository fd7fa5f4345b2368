"""Star/galaxy classifiers with a scikit-learn-style API.

Estimators
----------
`HierarchicalClassifier` (A+Vr, the product)
    A convolutional AE (30 latents) on the stamps in a source-only,
    flux-normalised representation (`astrohvae.stamps`), trained with a
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
    compact bright sources, `astrohvae.morphology`), and four aperture colours.
    The morphology statistics are calibrated per field on its stellar locus
    (the smallest-radius peak of the bright sources' half-light radii):
    r_half and concentration are divided by the locus values, SPREAD_MODEL
    and the PSF ratio are zero-pointed on the locus stars, and saturated
    sources (flat-topped cores, `astrohvae.morphology.psf.saturated`) get the
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

from astrohvae.stamps.preprocess import network_input

__all__ = ['DEFAULT_WEIGHTS']

DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1] / "data" / "default"


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def _torch():
    import torch

    return torch


def stamp_inputs(stamps, representation, crop):
    return np.ascontiguousarray(network_input(stamps, representation, crop))


def radial_weight(size, sigma, peak):
    yy, xx = np.mgrid[:size, :size]
    r2 = (yy - size / 2 + 0.5) ** 2 + (xx - size / 2 + 0.5) ** 2
    w = 1.0 + peak * np.exp(-r2 / (2 * sigma**2))
    return (w / w.mean()).astype(np.float32)


# ---------------------------------------------------------------------------
# training: every network goes through the one engine, `astrohvae.models`
# ---------------------------------------------------------------------------
def checkpoint_path(directory, name):
    """``directory/name.pt`` (the folder created), or None without a checkpoint folder.

    Every fit resumes from its checkpoint when the file exists (`astrohvae.models.engine.fit_model`):
    a fit that was interrupted continues, one that finished is not repeated.
    """
    if directory is None:
        return None
    from pathlib import Path

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"{name}.pt"


def train_ae(x, latent_dim, channels, epochs, batch_size, lr, seed, weight, augment, device, verbose=False,
              checkpoint=None):
    """A ConvAE on network input ``x`` (one-cycle schedule, centrally weighted MSE)."""
    from astrohvae.models.fitting import fit_ae

    net, hist = fit_ae(x, latent_dim=latent_dim, channels=channels, epochs=epochs, batch_size=batch_size, lr=lr,
                       device=device, seed=seed, patience=None, pixel_weight=weight, augment=augment,
                       progress=verbose, schedule="onecycle", checkpoint=checkpoint, resume=checkpoint is not None)
    return net, hist


def train_conv_vae(x, latent_dim, kl, channels, epochs, batch_size, lr, seed, weight, augment, device,
                    prior_m=1.0, prior_s=0.5, beta=1.0, verbose=False, checkpoint=None):
    """A ConvVAE with divergence ``kl`` (``'standard'`` or a revised two-peak term)."""
    from astrohvae.models.fitting import fit_vae

    # the engine's loss is sum(squared error) + beta' D; these estimators were
    # defined with half the squared error (a Gaussian likelihood of unit
    # variance): beta' = 2 beta is the same objective
    net, hist = fit_vae(x, latent_dim=latent_dim, divergence=kl, prior=(prior_m, prior_s), beta=2.0 * beta,
                        bounded_mu=2.0 if kl == "aw" else None, channels=channels, epochs=epochs,
                        batch_size=batch_size, lr=lr, device=device, seed=seed, patience=None, pixel_weight=weight,
                        augment=augment, progress=verbose, checkpoint=checkpoint, resume=checkpoint is not None)
    return net, hist


def train_latent_vae(z, latent_dim, prior, epochs, batch_size, lr, seed, device, beta=1.0, divergence=None,
                      verbose=False, checkpoint=None):
    """The 1-D LatentVAE with the Gaussian-mixture prior ``(weights, means, sigmas)``.

    ``divergence=None``: the exact KL to the mixture (quadrature); a revised
    term (``'sc'``, ``'dkl'``, ``'aw'``, ``'pw'``) needs the symmetric prior
    ``0.5 N(-m, s^2) + 0.5 N(m, s^2)``.
    """
    from astrohvae.models.fitting import fit_latent_vae

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


def batched_apply(fn, x, batch_size, device):
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


def check_stamps(stamps):
    flux = getattr(stamps, "flux", None)
    if flux is None or np.ndim(flux) != 4 or np.shape(flux)[1] != 5:
        raise ValueError("stamps must have flux of shape (N, 5, ny, nx)")


# ---------------------------------------------------------------------------
# A+Vr
# ---------------------------------------------------------------------------
class Estimator:
    """What every estimator of `MODELS` shares: its parameters and its weights folder."""

    def get_params(self):
        """Constructor parameters (scikit-learn convention)."""
        from astrohvae.classify.persist import estimator_params
        return estimator_params(self)

    def save(self, directory, **config):
        """Write the fitted estimator into ``directory`` (see `save_model`); returns its hash."""
        from astrohvae.classify.persist import save_model
        return save_model(self, directory, **config)
