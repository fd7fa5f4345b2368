"""Measuring classifiers: metrics, baselines, test data and truth lists.

`metrics` (AUC tables), `baselines` (classical and supervised ceilings), `data`
(test stamps, SDSS star recall), `truth` (a catalogue against a truth list).
"""

from astrohvae.lazy import lazy_exports

_EXPORTS = {
    'ClassicalClassifier': 'astrohvae.evaluation.baselines',
    'FAINT_BINS': 'astrohvae.evaluation.metrics',
    'MAG_BINS': 'astrohvae.evaluation.metrics',
    'MATCH_RADIUS': 'astrohvae.evaluation.truth',
    'SupervisedCNNCeiling': 'astrohvae.evaluation.baselines',
    'SupervisedStatsCeiling': 'astrohvae.evaluation.baselines',
    'binary_metrics': 'astrohvae.evaluation.metrics',
    'evaluate': 'astrohvae.evaluation.metrics',
    'evaluate_truth': 'astrohvae.evaluation.truth',
    'format_table': 'astrohvae.evaluation.metrics',
    'format_truth_table': 'astrohvae.evaluation.truth',
    'labels_from_meta': 'astrohvae.evaluation.metrics',
    'match_catalog': 'astrohvae.evaluation.truth',
    'read_truth_list': 'astrohvae.evaluation.truth',
    'summarise': 'astrohvae.evaluation.metrics',
    'truth_labels': 'astrohvae.evaluation.truth',
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
