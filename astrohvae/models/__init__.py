"""Torch modules of astrohvae (no file I/O here; see `astrohvae.models`).

`MODEL_REGISTRY` maps the class names written in ``config.json`` to the
classes `astrohvae.models.weights.load_weights` may rebuild -- nothing else is ever
instantiated from a weights file.
"""

from astrohvae.models.ae import ConvAE, ConvDecoder, ConvEncoder, ConvVAE
from astrohvae.models.hvae import HierarchicalVAE, LatentVAE

__all__ = ["ConvAE", "ConvVAE", "ConvEncoder", "ConvDecoder", "LatentVAE", "HierarchicalVAE",
           "MODEL_REGISTRY", "register_model"]

MODEL_REGISTRY = {
    "ConvAE": ConvAE,
    "ConvVAE": ConvVAE,
    "LatentVAE": LatentVAE,
    "HierarchicalVAE": HierarchicalVAE,
}


def register_model(cls):
    """Add a module class to `MODEL_REGISTRY` (usable as a decorator).

    The class needs a ``get_config()`` method returning its constructor
    keyword arguments as JSON-serialisable values.
    """
    MODEL_REGISTRY[cls.__name__] = cls
    return cls
