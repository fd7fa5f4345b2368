"""Label-free morphology: the field's PSF and per-stamp statistics.

`statistics` (profiles, chunked statistics), `psf` (PSF estimate, PSF match, saturation),
`physical` (the classifier's eight physical statistics and colours).
"""

from astrohvae.lazy import lazy_exports

_EXPORTS = {
    'PSFModel': 'astrohvae.morphology.psf',
    'PSF_HALF': 'astrohvae.morphology.psf',
    'band_saturated': 'astrohvae.morphology.psf',
    'chunked_statistics': 'astrohvae.morphology.statistics',
    'estimate_psf': 'astrohvae.morphology.psf',
    'interpolated_core': 'astrohvae.morphology.psf',
    'loaded': 'astrohvae.morphology.statistics',
    'peak_centred': 'astrohvae.morphology.psf',
    'profile_features': 'astrohvae.morphology.statistics',
    'psf_match': 'astrohvae.morphology.psf',
    'radius_grid': 'astrohvae.morphology.statistics',
    'recentre': 'astrohvae.morphology.statistics',
    'saturated': 'astrohvae.morphology.psf',
    'stellar_locus': 'astrohvae.morphology.psf',
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
