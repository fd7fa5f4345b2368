"""`ConvVAE` lives in `astrohvae.models.ae` (it shares the AE's trunk); re-exported here."""

from astrohvae.models.ae import ConvVAE, reparameterize

__all__ = ["ConvVAE", "reparameterize"]
