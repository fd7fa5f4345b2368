"""Network weights on disk: ``model.safetensors`` + ``config.json`` in a folder.

The tensors are stored with `safetensors` (a flat header + raw buffers: loading
never unpickles, hence never executes code from the file).  The modules are
rebuilt from ``config.json`` through `astrohvae.models.MODEL_REGISTRY` -- only
classes registered there can be instantiated, with the keyword arguments the
file gives.

Layout of ``config.json``::

    {
      "format": "astrohvae-weights", "format_version": 1,
      "astrohvae_version": "0.1.0", "date": "2026-11-27T00:10:00Z",
      "modules": {"model": {"class": "HierarchicalVAE",
                            "kwargs": {"ae": {"class": "ConvAE", "kwargs": {...}},
                                       "latent_vae": {"class": "LatentVAE", "kwargs": {...}}}}},
      "tensors_sha256": "...",
      ... anything the caller passed in ``config`` (representation, prior,
      divergence, training data, metrics, ...)
    }

Tensor names in the safetensors file are ``<module name>.<state_dict key>``;
fitted arrays that are not module parameters (a field PSF, colour templates,
...) are stored as ``array.<name>``.

This is the one weights format of the project: every estimator that
``astrohvae train`` makes (`astrohvae.classify.persist.MODELS`) is saved through
`save_weights` and identified by `weights_hash` -- the value ``train``
prints and a catalogue records as ``MODELSHA``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path

import numpy as np

from astrohvae import __version__
from astrohvae.errors import InputError, OutputError
from astrohvae.io.atomic import atomic_path

__all__ = ['save_weights', 'load_weights', 'weights_hash', 'build_module', 'module_spec', 'WEIGHTS_FILE', 'CONFIG_FILE', 'FORMAT', 'FORMAT_VERSION', 'ARRAY_PREFIX', 'MAX_PARAMETERS']

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "astrohvae-weights"
FORMAT_VERSION = 1
_RESERVED = ("format", "format_version", "modules", "tensors_sha256")
ARRAY_PREFIX = "array."
"""Prefix of the fitted arrays (not module parameters) in the tensors file."""
MAX_PARAMETERS = 50_000_000
"""Largest number of parameters a weights file may ask for (the shipped
classifier has ~0.26 M): a config is checked against it before anything is
allocated."""


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"config value of type {type(obj).__name__} is not JSON-serialisable")


def module_spec(module):
    """``{'class': name, 'kwargs': module.get_config()}`` for a registered module."""
    from astrohvae.models import MODEL_REGISTRY

    name = type(module).__name__
    if MODEL_REGISTRY.get(name) is not type(module):
        raise ValueError(f"{name} is not in astrohvae.models.MODEL_REGISTRY; register it first")
    if not hasattr(module, "get_config"):
        raise ValueError(f"{name} has no get_config() method")
    return {"class": name, "kwargs": module.get_config()}


def build_module(spec):
    """Instantiate a module from ``{'class': name, 'kwargs': {...}}`` (nested specs allowed).

    Raises
    ------
    KeyError
        Unknown class name.
    TypeError, ValueError
        Bad keyword arguments.
    """
    from astrohvae.models import MODEL_REGISTRY

    if not isinstance(spec, dict) or "class" not in spec:
        raise ValueError("a module spec must be a dict with 'class' and 'kwargs'")
    cls_name = spec["class"]
    if not isinstance(cls_name, str) or cls_name not in MODEL_REGISTRY:
        raise KeyError(f"unknown architecture {cls_name!r}")
    kwargs = spec.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ValueError(f"kwargs of {cls_name} must be a dict")
    built = {k: (build_module(v) if isinstance(v, dict) and "class" in v else v) for k, v in kwargs.items()}
    return MODEL_REGISTRY[cls_name](**built)


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_weights(directory, modules, config=None, arrays=None):
    """Write ``modules`` and ``config`` into ``directory`` (created if needed).

    Parameters
    ----------
    directory : path
        Folder; its parent must exist.  Other files in it are left alone.
        ``model.safetensors`` is written first and ``config.json`` last, each
        atomically; the config records the tensors' sha256, so a folder caught
        between the two writes is detected by `load_weights`.
    modules : dict of str -> torch.nn.Module
        E.g. ``{'model': hvae}``; each module's class must be registered in
        `astrohvae.models.MODEL_REGISTRY` and have ``get_config()``.
    config : dict or None
        Extra JSON-serialisable metadata (representation, prior, divergence,
        training data, metrics, ...).  Keys ``format``, ``format_version``,
        ``modules`` and ``tensors_sha256`` are reserved.
    arrays : dict of str -> array-like, optional
        Fitted numeric state that is not a module parameter (stored as
        ``array.<name>`` tensors, dtype kept; returned by
        ``load_weights(..., arrays=True)``).

    Returns
    -------
    pathlib.Path
        The folder.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    if not isinstance(modules, dict) or not modules:
        raise ValueError("modules must be a non-empty dict name -> nn.Module")
    config = dict(config or {})
    for key in _RESERVED:
        if key in config:
            raise ValueError(f"config key {key!r} is reserved")
    specs, tensors = {}, {}
    for name, module in modules.items():
        if not name or "." in name:
            raise ValueError(f"module name {name!r} must be non-empty and contain no '.'")
        specs[name] = module_spec(module)
        for key, t in module.state_dict().items():
            tensors[f"{name}.{key}"] = t.detach().to("cpu").contiguous().clone()
    import torch

    for key, arr in (arrays or {}).items():
        tensors[ARRAY_PREFIX + key] = torch.as_tensor(np.ascontiguousarray(arr)).clone()
    full = {"format": FORMAT, "format_version": FORMAT_VERSION, "astrohvae_version": __version__,
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    full.update(config)
    full["modules"] = specs
    try:
        text_probe = json.dumps(full, default=_json_default)  # fail before writing anything
    except (TypeError, ValueError) as exc:
        raise ValueError(f"config is not JSON-serialisable: {exc}") from exc
    del text_probe
    if directory.exists() and not directory.is_dir():
        raise OutputError(directory, "exists and is not a folder")
    if not directory.exists():
        if not directory.resolve().parent.is_dir():
            raise OutputError(directory, f"parent folder {directory.resolve().parent} does not exist")
        directory.mkdir()
    wpath = directory / WEIGHTS_FILE
    with atomic_path(wpath) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
        sha = _sha256(tmp)
    full["tensors_sha256"] = sha
    with atomic_path(directory / CONFIG_FILE) as tmp:
        tmp.write_text(json.dumps(full, indent=2, default=_json_default) + "\n")
    return directory


def weights_hash(directory):
    """sha256 (hex) of ``directory/config.json``: identifies a model.

    The config records the sha256 of the tensors file (checked by
    `load_weights`), so this one hash covers the tensors, the architecture,
    the estimator's parameters and its fitted values.  ``astrohvae train``
    prints it and a catalogue records it as ``MODELSHA``.
    """
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise InputError(path, "no such weights config")
    return _sha256(path)


def _read_config(cpath):
    if not cpath.is_file():
        raise InputError(cpath, "missing (not an astrohvae weights folder?)")
    try:
        cfg = json.loads(cpath.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(cpath, f"not valid JSON ({exc.__class__.__name__})") from exc
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise InputError(cpath, f"not an astrohvae weights config (format != {FORMAT!r})")
    if not isinstance(cfg.get("format_version"), int) or cfg["format_version"] > FORMAT_VERSION:
        raise InputError(cpath, f"unsupported format_version {cfg.get('format_version')!r}")
    if not isinstance(cfg.get("modules"), dict) or not cfg["modules"]:
        raise InputError(cpath, "no 'modules' description")
    return cfg


def _n_parameters(spec):
    """Parameters of the module ``spec`` describes, counted without allocating them."""
    import torch

    with torch.device("meta"):
        module = build_module(spec)
    return module, sum(int(t.numel()) for t in module.state_dict().values())


def load_weights(directory, device="cpu", arrays=False):
    """Rebuild the modules saved by `save_weights`.

    Parameters
    ----------
    directory : path
        A folder with ``model.safetensors`` and ``config.json``.
    device : str or torch.device
        ``'cpu'``, ``'cuda'`` or ``'auto'``.
    arrays : bool
        Also return the fitted arrays saved with ``save_weights(arrays=...)``.

    Returns
    -------
    modules : dict of str -> torch.nn.Module
        In evaluation mode, on ``device``.
    config : dict
        The parsed ``config.json``.
    arrays : dict of str -> numpy array
        Only with ``arrays=True``.

    Raises
    ------
    InputError
        Missing, corrupt, truncated or foreign files; unknown architecture;
        an architecture larger than `MAX_PARAMETERS` (checked before any
        allocation: the modules are first built on torch's ``meta`` device);
        missing, unexpected, mis-shaped or non-finite tensors; a config that
        does not belong to the tensors.
    """
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from astrohvae.device import resolve_device

    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(directory, "no such weights folder")
    cpath, wpath = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    cfg = _read_config(cpath)
    if not wpath.is_file():
        raise InputError(wpath, "missing")
    try:
        tensors = load_file(str(wpath), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as exc:
        raise InputError(wpath, f"not a valid safetensors file ({exc})") from exc
    sha = cfg.get("tensors_sha256")
    if sha is not None and sha != _sha256(wpath):
        raise InputError(wpath, "does not match config.json (sha256 differs; partially written or swapped?)")

    dev = resolve_device(device)
    modules, used = {}, set()
    for name, spec in cfg["modules"].items():
        try:
            meta_module, n_par = _n_parameters(spec)
        except KeyError as exc:
            raise InputError(cpath, f"module {name!r}: {exc.args[0]}") from exc
        except (TypeError, ValueError, RuntimeError) as exc:
            raise InputError(cpath, f"module {name!r}: bad architecture parameters ({exc})") from exc
        if n_par > MAX_PARAMETERS:
            raise InputError(cpath, f"module {name!r} asks for {n_par:,} parameters (limit {MAX_PARAMETERS:,})")
        expected = meta_module.state_dict()
        state = {}
        for key, ref in expected.items():
            full = f"{name}.{key}"
            if full not in tensors:
                raise InputError(wpath, f"missing tensor {full!r}")
            t = tensors[full]
            if tuple(t.shape) != tuple(ref.shape):
                raise InputError(wpath, f"tensor {full!r} has shape {tuple(t.shape)}, expected {tuple(ref.shape)}")
            if t.is_floating_point() != ref.is_floating_point():
                raise InputError(wpath, f"tensor {full!r} has dtype {t.dtype}, expected {ref.dtype}")
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise InputError(wpath, f"tensor {full!r} has non-finite values")
            state[key] = t
            used.add(full)
        module = build_module(spec)
        module.load_state_dict(state, strict=True)
        modules[name] = module.to(dev).eval()
    fitted = {}
    for full, t in tensors.items():
        if full.startswith(ARRAY_PREFIX):
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise InputError(wpath, f"array {full!r} has non-finite values")
            fitted[full[len(ARRAY_PREFIX):]] = t.numpy()
            used.add(full)
    extra = sorted(set(tensors) - used)
    if extra:
        raise InputError(wpath, f"unexpected tensors {extra[:3]}{' ...' if len(extra) > 3 else ''}")
    return (modules, cfg, fitted) if arrays else (modules, cfg)
