"""Jobs: one field, a survey, training from a store, the `segment` command.

`field` (`find_sources`, `process_field`, `run_field`), `inputs` (reading and checking
inputs), `loading` (classifier and segmenter loading), `survey` (dask.distributed),
`combine` (the survey catalogue), `train` (`astrohvae train`), `segment` (`astrohvae segment`).
"""

from astrohvae.lazy import lazy_exports

_EXPORTS = {
    'FieldProducts': 'astrohvae.pipeline.field',
    'MODEL_KINDS': 'astrohvae.pipeline.train',
    'RunResult': 'astrohvae.pipeline.field',
    'SurveyResult': 'astrohvae.pipeline.survey',
    'check_field': 'astrohvae.pipeline.inputs',
    'combine_catalogues': 'astrohvae.pipeline.combine',
    'connect': 'astrohvae.pipeline.survey',
    'cost_hint': 'astrohvae.pipeline.survey',
    'edge_distance': 'astrohvae.pipeline.combine',
    'example_field': 'astrohvae.pipeline.inputs',
    'field_name': 'astrohvae.pipeline.inputs',
    'input_paths': 'astrohvae.pipeline.inputs',
    'jobqueue_cluster': 'astrohvae.pipeline.survey',
    'MODEL_CACHE': 'astrohvae.pipeline.loading',
    'ModelCache': 'astrohvae.pipeline.loading',
    'load_classifier': 'astrohvae.pipeline.loading',
    'load_segmenter': 'astrohvae.pipeline.loading',
    'make_estimator': 'astrohvae.pipeline.train',
    'primary_flags': 'astrohvae.pipeline.combine',
    'process_field': 'astrohvae.pipeline.field',
    'read_input': 'astrohvae.pipeline.inputs',
    'run_field': 'astrohvae.pipeline.field',
    'run_survey': 'astrohvae.pipeline.survey',
    'select_training_rows': 'astrohvae.pipeline.train',
    'train_from_store': 'astrohvae.pipeline.train',
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
