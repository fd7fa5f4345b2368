"""astrohvae: unsupervised star/galaxy catalogues from SDSS-style imaging.

The pipeline reads a five-band field, segments it, cuts 64x64x5 stamps and
classifies them with a hierarchical AE -> VAE whose prior is a two-peak
Gaussian (stars in one peak, galaxies in the other).
"""

__version__ = "0.1.0"

from astrohvae.conventions import BANDS, PIXEL_SCALE, REF_BAND, SOFTENING, STAMP_SIZE  # noqa: F401
