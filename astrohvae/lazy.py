"""Lazy public APIs of the subpackages (PEP 562): a name is imported from its module on first use.

Each subpackage's ``__init__`` lists its public names and the modules that define them; importing
the subpackage imports nothing else (no torch at ``import astrohvae.classify``, no import cycles).
"""

import importlib


def lazy_exports(package, exports):
    """``(__getattr__, __dir__, __all__)`` for the package ``package`` exporting ``exports`` (name -> module)."""

    def __getattr__(name):
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    names = sorted(exports)

    def __dir__():
        return names

    return __getattr__, __dir__, names
