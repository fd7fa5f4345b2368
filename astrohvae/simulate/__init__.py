"""SDSS-like simulated fields with truth.

`field` (`simulate_field`, `truth_mask`), `render` (PSF, Sersic and structure rendering),
`population` (magnitudes and colours), `io` (`write_simulation`, `read_truth`).
"""

from astrohvae.lazy import lazy_exports

_EXPORTS = {
    'MASK_THRESHOLD': 'astrohvae.simulate.field',
    'Simulation': 'astrohvae.simulate.field',
    'field_ids': 'astrohvae.simulate.field',
    'read_truth': 'astrohvae.simulate.io',
    'simulate_field': 'astrohvae.simulate.field',
    'truth_mask': 'astrohvae.simulate.field',
    'write_adjacent': 'astrohvae.simulate.io',
    'write_simulation': 'astrohvae.simulate.io',
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
