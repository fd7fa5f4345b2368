"""The project's conventions, each defined once: bands, catalogue flag bits, stamp mask bits, class codes.

Every module imports these names from here (``astrohvae`` re-exports the band
and geometry constants); none defines its own copy.
"""

from __future__ import annotations

__all__ = [
    "BANDS",
    "REF_BAND",
    "PIXEL_SCALE",
    "STAMP_SIZE",
    "SOFTENING",
    "GRI",
    "SATURATION_MAG",
    "FLAG_TRUNCATED",
    "FLAG_BLENDED",
    "FLAG_MASKED",
    "FLAG_EDGE",
    "FLAG_FEW_BANDS",
    "FLAG_BITS",
    "MASK_OWN",
    "MASK_OTHER",
    "MASK_INVALID",
    "CLASS_CODES",
]

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

GRI = [BANDS.index(b) for b in ("g", "r", "i")]
"""Indices of g, r, i in `BANDS` (a list: numpy fancy-indexes the band axis with it)."""

SATURATION_MAG = 16.0
"""No band of a source fainter than this asinh magnitude is saturated.  SDSS saturates at r ~ 14
(u ~ 12, z ~ 12.5) in typical seeing; an r = 17 source is saturated in no band.  Used by
`astrohvae.morphology.psf.band_saturated` (magnitude inside 5 px) and by
`astrohvae.detection.sources.measure_sources` (segment magnitude; brighter sources keep their
flux-weighted centroid)."""

# catalogue ``flags`` bits
FLAG_TRUNCATED = 1
"""The 64x64 stamp runs off the field."""
FLAG_BLENDED = 2
"""Another source's segment lies in the stamp."""
FLAG_MASKED = 4
"""Masked, saturated or NaN pixels in or next to the source's segment."""
FLAG_EDGE = 8
"""The segment touches the field's edge."""
FLAG_FEW_BANDS = 16
"""Classified from fewer than five bands (a band has no valid pixel in the source's footprint)."""
FLAG_BITS = {
    FLAG_TRUNCATED: "stamp truncated by the field edge",
    FLAG_BLENDED: "blended: deblended or touching another segment",
    FLAG_MASKED: "masked, saturated or NaN pixels in or next to the segment",
    FLAG_EDGE: "segment touches the field edge",
    FLAG_FEW_BANDS: "fewer than five bands with data: classified from fewer bands",
}
"""Meaning of each ``flags`` bit (written to the catalogue header as ``FLAGBITn``)."""

# per-pixel bits of a stamp's ``mask``
MASK_OWN = 1
"""The pixel belongs to the stamp's own source."""
MASK_OTHER = 2
"""The pixel belongs to another source."""
MASK_INVALID = 4
"""The pixel is masked or off the field."""

CLASS_CODES = {"star": 1, "galaxy": 2}
"""CLASSMAP value of each class (0 = background)."""
