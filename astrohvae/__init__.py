"""astrohvae: unsupervised star/galaxy catalogues from SDSS-style imaging.

The pipeline reads a five-band field, segments it, cuts 64x64x5 stamps and
classifies them with a hierarchical AE -> VAE whose prior is a two-peak
Gaussian (stars in one peak, galaxies in the other).
"""

__version__ = "0.1.0"

BANDS = ("u", "g", "r", "i", "z")
"""SDSS band order used everywhere (axis 0 of every field and stamp array)."""

REF_BAND = "r"
"""Reference band: every field is resampled onto this band's pixel grid."""

PIXEL_SCALE = 0.396
"""SDSS pixel scale in arcsec/pixel."""

STAMP_SIZE = 64
"""Side of the square stamps cut around each source, in pixels."""

SOFTENING = {"u": 1.4e-10, "g": 0.9e-10, "r": 1.2e-10, "i": 1.8e-10, "z": 7.4e-10}
"""SDSS asinh-magnitude softening parameters b per band (Lupton et al. 1999)."""
