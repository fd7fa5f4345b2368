"""The hierarchical model of the paper (its Fig. 4): an AE feeding a small VAE.

`LatentVAE` is an MLP VAE that reconstructs the (normalised) 30-dimensional
latent vector of a `ConvAE` -- "a VAE with the loss defined by an AE": the
AE is a low-level feature extractor, the 1- or 2-dimensional VAE on top of
it, trained with a two-peak prior, is the high-level classifier.
`HierarchicalVAE` chains a trained AE and a LatentVAE for inference.
"""

from __future__ import annotations

import torch
from torch import nn

from astrohvae.models.ae import reparameterize

__all__ = ["LatentVAE", "HierarchicalVAE"]


def _mlp(sizes, act_last=True):
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if act_last or i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class LatentVAE(nn.Module):
    """MLP VAE on AE latents, with BatchNorm on its input.

    Parameters
    ----------
    in_dim : int
        Dimension of the AE latent (30).
    latent_dim : int
        Dimension of this VAE's latent, 1 or 2 (the classifier axis).
    hidden : sequence of int
        Hidden layer widths of the encoder (the decoder mirrors them).
        Two layers of 64 and 32 units are ample for a 30 -> 1/2 -> 30 map
        and cost ~10 kFLOP per sample, nothing next to the conv AE.
    bounded_mu : float or None
        If given, ``mu = bounded_mu * tanh(raw / bounded_mu)`` (for the AW loss;
        identity near 0, the same as `astrohvae.models.priors.bound_mu`).

    Notes
    -----
    The input passes through ``BatchNorm1d(in_dim, affine=False)``; the
    normalised latent is both the encoder's input and the reconstruction
    target.  The paper notes that this makes the classification insensitive
    to how the images (hence the AE latents) were normalised.  In training
    mode the batch statistics are used (and the running statistics updated);
    in evaluation mode the running statistics.

    ``forward`` samples with the reparameterisation trick in training mode
    and uses the mean in evaluation mode.
    """

    def __init__(self, in_dim=30, latent_dim=1, hidden=(64, 32), bounded_mu=None):
        super().__init__()
        self.in_dim = int(in_dim)
        self.latent_dim = int(latent_dim)
        self.hidden = tuple(int(h) for h in hidden)
        self.bounded_mu = None if bounded_mu is None else float(bounded_mu)
        self.norm = nn.BatchNorm1d(self.in_dim, affine=False)
        self.encoder = _mlp([self.in_dim, *self.hidden])
        self.head = nn.Linear(self.hidden[-1], 2 * self.latent_dim)
        self.decoder = _mlp([self.latent_dim, *self.hidden[::-1], self.in_dim], act_last=False)

    def get_config(self):
        """Constructor arguments as a JSON-serialisable dict."""
        return {"in_dim": self.in_dim, "latent_dim": self.latent_dim,
                "hidden": list(self.hidden), "bounded_mu": self.bounded_mu}

    def _encode_normed(self, zn):
        h = self.head(self.encoder(zn))
        mu, logvar = h[:, : self.latent_dim], h[:, self.latent_dim :]
        if self.bounded_mu is not None:
            mu = self.bounded_mu * torch.tanh(mu / self.bounded_mu)
        return mu, torch.clamp(logvar, -12.0, 8.0)

    def encode(self, z):
        """AE latents (N, in_dim) -> ``(mu, logvar)``, each (N, latent_dim)."""
        return self._encode_normed(self.norm(z))

    def decode(self, v):
        """Latent sample -> reconstruction of the *normalised* AE latent."""
        return self.decoder(v)

    def forward(self, z):
        """Return ``(mu, logvar, recon, target)``; target = normalised input."""
        zn = self.norm(z)
        mu, logvar = self._encode_normed(zn)
        v = reparameterize(mu, logvar) if self.training else mu
        return mu, logvar, self.decoder(v), zn


class HierarchicalVAE(nn.Module):
    """A `ConvAE` followed by a `LatentVAE` (the paper's A+Vr model).

    Parameters
    ----------
    ae : ConvAE
        The low-level feature extractor.
    latent_vae : LatentVAE
        The high-level VAE; ``latent_vae.in_dim`` must equal ``ae.latent_dim``.
    """

    def __init__(self, ae, latent_vae):
        super().__init__()
        if latent_vae.in_dim != ae.latent_dim:
            raise ValueError(f"latent_vae.in_dim={latent_vae.in_dim} != ae.latent_dim={ae.latent_dim}")
        self.ae = ae
        self.latent_vae = latent_vae

    def get_config(self):
        """Nested constructor description (used by `astrohvae.models`)."""
        return {"ae": {"class": type(self.ae).__name__, "kwargs": self.ae.get_config()},
                "latent_vae": {"class": type(self.latent_vae).__name__, "kwargs": self.latent_vae.get_config()}}

    def encode(self, x):
        """Stamps -> ``(z_ae, mu, logvar)`` without running the image decoder."""
        z = self.ae.encode(x)
        mu, logvar = self.latent_vae.encode(z)
        return z, mu, logvar

    def forward(self, x):
        """Return ``(z_ae, mu, logvar, recon)``; recon is the normalised-latent reconstruction."""
        z = self.ae.encode(x)
        mu, logvar, recon, _ = self.latent_vae(z)
        return z, mu, logvar, recon
