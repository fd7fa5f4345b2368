"""64x64x5 stamps: cutouts, the zarr stamp store, and what the networks see.

`cutouts` (`StampSet`, `cut_stamps`), `store` (`build_store`, `open_store`),
`preprocess` (`network_input`, the stamp representations).
"""

from astrohvae.lazy import lazy_exports

_EXPORTS = {
    'ASINH_SOFT': 'astrohvae.stamps.preprocess',
    'CleanCache': 'astrohvae.stamps.preprocess',
    'DEFAULT_REPRESENTATION': 'astrohvae.stamps.preprocess',
    'REPRESENTATIONS': 'astrohvae.stamps.preprocess',
    'SOURCE_SCALE': 'astrohvae.stamps.preprocess',
    'STORE_FORMAT': 'astrohvae.stamps.store',
    'StampSet': 'astrohvae.stamps.cutouts',
    'StampStore': 'astrohvae.stamps.store',
    'band_valid': 'astrohvae.stamps.preprocess',
    'build_store': 'astrohvae.stamps.store',
    'clean_gri': 'astrohvae.stamps.preprocess',
    'clean_stamps': 'astrohvae.stamps.preprocess',
    'concatenate': 'astrohvae.stamps.cutouts',
    'crop_window': 'astrohvae.stamps.preprocess',
    'cut_stamps': 'astrohvae.stamps.cutouts',
    'match_truth': 'astrohvae.stamps.store',
    'network_input': 'astrohvae.stamps.preprocess',
    'open_store': 'astrohvae.stamps.store',
    'padded_planes': 'astrohvae.stamps.cutouts',
    'reuse_cleaned': 'astrohvae.stamps.preprocess',
    'source_flux': 'astrohvae.stamps.preprocess',
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
