"""Background, baseline detection and source measurement.

`background` (the sky and its noise), `detect` (threshold detection and deblending),
`sources` (the catalogue's basic columns), `centroids` (windowed centroids), `measure` (photutils
shapes, Kron and PSF photometry).
"""

from astrohvae.lazy import lazy_exports

_EXPORTS = {
    'Background': 'astrohvae.detection.background',
    'KRON_PARAMS': 'astrohvae.detection.measure',
    'PHOTUTILS_SHAPE_COLUMNS': 'astrohvae.detection.measure',
    'deblend_segments': 'astrohvae.detection.detect',
    'detect': 'astrohvae.detection.detect',
    'detection_image': 'astrohvae.detection.detect',
    'estimate_background': 'astrohvae.detection.background',
    'mad_std': 'astrohvae.detection.background',
    'measure_catalog': 'astrohvae.detection.measure',
    'measure_sources': 'astrohvae.detection.sources',
    'photutils_measurements': 'astrohvae.detection.measure',
    'psf_photometry': 'astrohvae.detection.measure',
    'stamp_measurements': 'astrohvae.detection.measure',
    'windowed_centroids': 'astrohvae.detection.centroids',
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
