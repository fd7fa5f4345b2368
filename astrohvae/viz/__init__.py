"""Pictures: field previews, segmentation panels, ROC curves, training curves."""

from astrohvae.lazy import lazy_exports

_EXPORTS = {
    'colour_image': 'astrohvae.viz.preview',
    'is_simulated': 'astrohvae.viz.preview',
    'plot_roc': 'astrohvae.viz.roc',
    'write_preview': 'astrohvae.viz.preview',
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
