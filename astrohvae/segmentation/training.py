"""Fitting the segmentation networks through the one training engine."""

from __future__ import annotations

__all__ = ['train_segment_net']

# ----------------------------------------------------------------------------
# training (no labels)
# ----------------------------------------------------------------------------
def train_segment_net(net, images, steps=600, batch_size=16, crop=64, lr=2e-3, beta=1e-3,
                      seed=0, device="cpu", log_every=0):
    """Train a `SegmentNet` to reconstruct random crops of ``images`` (the one engine, `astrohvae.models`).

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

    from astrohvae.models.engine import RandomCrops, fit_model
    from astrohvae.models.priors import kl_standard

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
