"""The classifiers users call (scikit-learn conventions).

`hierarchical` (A+Vr, the shipped classifier), `manifold` (V+M, Vr+M), `features`
(the AE alone, a latent probe), `mixture` (two-peak posteriors, which peak is stars),
`persist` (`save_model`, `load_model`, `MODELS`), `base` (the estimator base class).
"""

from astrohvae.lazy import lazy_exports

_EXPORTS = {
    'AutoEncoderFeatures': 'astrohvae.classify.features',
    'DEFAULT_WEIGHTS': 'astrohvae.classify.base',
    'HierarchicalClassifier': 'astrohvae.classify.hierarchical',
    'LatentProbe': 'astrohvae.classify.features',
    'MODELS': 'astrohvae.classify.persist',
    'ManifoldClassifier': 'astrohvae.classify.manifold',
    'kl_mixture': 'astrohvae.classify.mixture',
    'load_default_classifier': 'astrohvae.classify.persist',
    'load_model': 'astrohvae.classify.persist',
    'save_model': 'astrohvae.classify.persist',
    'star_side': 'astrohvae.classify.mixture',
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
