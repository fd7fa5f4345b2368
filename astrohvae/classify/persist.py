"""Saving and loading every classifier in the one weights format."""

from __future__ import annotations

from pathlib import Path

from astrohvae.classify.features import AutoEncoderFeatures
from astrohvae.classify.hierarchical import HierarchicalClassifier
from astrohvae.classify.manifold import ManifoldClassifier
from astrohvae.errors import InputError

__all__ = ['MODELS', 'save_model', 'load_model', 'load_default_classifier']

# ---------------------------------------------------------------------------
# one format for every estimator: astrohvae.weights
# ---------------------------------------------------------------------------
MODELS = {cls.__name__: cls for cls in (HierarchicalClassifier, ManifoldClassifier, AutoEncoderFeatures)}
"""The estimators a weights folder may hold (``config.json``'s ``estimator``)."""


def estimator_params(est):
    """``__init__`` parameters of ``est`` as plain JSON values (scikit-learn's ``get_params``)."""
    import inspect

    names = [p for p in inspect.signature(type(est).__init__).parameters if p != "self"]
    out = {}
    for k in names:
        v = getattr(est, k)
        out[k] = list(v) if isinstance(v, tuple) else v
    return out


def save_model(estimator, directory, **config):
    """Save a fitted estimator of `MODELS` with `astrohvae.models.weights.save_weights`.

    ``config.json`` records the estimator's class, its method name, its
    constructor parameters and its fitted values; the tensors file holds its
    networks and fitted arrays.  Extra keyword arguments (e.g. the training
    data) are recorded as they are.

    Returns
    -------
    str
        `astrohvae.models.weights.weights_hash` of the folder (what a catalogue
        records as ``MODELSHA``).
    """
    from astrohvae.models.weights import save_weights, weights_hash

    name = type(estimator).__name__
    if MODELS.get(name) is not type(estimator):
        raise ValueError(f"{name} is not one of astrohvae.classify.persist.MODELS")
    modules, arrays, values = estimator._fitted_state()
    params = estimator.get_params()
    for k in ("device", "verbose"):  # where and how loudly it ran: not part of the model
        params.pop(k, None)
    cfg = {"estimator": name, "method": str(estimator.method), "params": params, "fitted": values}
    cfg.update(config)
    save_weights(directory, modules, cfg, arrays)
    return weights_hash(directory)


def load_model(directory, device="auto", expect=None):
    """Load an estimator saved by `save_model`.

    Parameters
    ----------
    directory : path
        A weights folder (``model.safetensors`` + ``config.json``).
    device : str
    expect : class or None
        Refuse a folder that holds another estimator.

    Raises
    ------
    InputError
        Anything `astrohvae.models.weights.load_weights` refuses; an unknown
        estimator, parameters it does not take, or fitted values that do not
        fit it.
    """
    from astrohvae.device import resolve_device
    from astrohvae.models.weights import CONFIG_FILE, load_weights, weights_hash

    directory = Path(directory)
    dev = resolve_device(device)
    modules, cfg, arrays = load_weights(directory, device=dev, arrays=True)
    cpath = directory / CONFIG_FILE
    name = cfg.get("estimator")
    cls = MODELS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise InputError(cpath, f"holds no astrohvae classifier (estimator {name!r}; expected one of "
                                f"{', '.join(MODELS)}); was it written by 'astrohvae train'?")
    if expect is not None and cls is not expect:
        raise InputError(cpath, f"holds a {name}, not a {expect.__name__}")
    params = cfg.get("params")
    if not isinstance(params, dict):
        raise InputError(cpath, "no 'params' object")
    try:
        est = cls(**params)
        est.device = str(dev)
        est._set_fitted_state(modules, arrays, cfg.get("fitted") or {})
    except (TypeError, ValueError, KeyError) as exc:
        raise InputError(cpath, f"does not describe a fitted {name} ({type(exc).__name__}: {exc})") from None
    est.weights_hash = weights_hash(directory)
    est.training_ = cfg.get("training")
    return est


def load_default_classifier(device="auto"):
    """The classifier shipped in ``astrohvae/data/default/`` (A+Vr)."""
    from astrohvae.classify.base import DEFAULT_WEIGHTS
    return load_model(DEFAULT_WEIGHTS, device=device)
