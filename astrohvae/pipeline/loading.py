"""Loading classifiers and segmenters (cached per process)."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

from astrohvae.errors import InputError
from astrohvae.pipeline.inputs import one_line

__all__ = ['ModelCache', 'MODEL_CACHE', 'load_classifier', 'load_segmenter']


# ----------------------------------------------------------------------------- model loading
class ModelCache:
    """The models this process has loaded, keyed by what they were loaded from; thread-safe.

    A survey worker runs many fields: with one cache per process (`MODEL_CACHE`, used by
    `load_classifier` and `load_segmenter`) it loads its weights once.  A weights folder that is
    rewritten gets another key (its files' sizes and times are part of it), so it is loaded afresh.
    """

    def __init__(self):
        self._models = {}
        self._lock = threading.RLock()

    def get(self, key, load):
        """The model of ``key``, made by ``load()`` the first time."""
        with self._lock:
            if key not in self._models:
                self._models[key] = load()
            return self._models[key]

    def clear(self):
        """Forget every loaded model."""
        with self._lock:
            self._models.clear()

    def __len__(self):
        return len(self._models)


MODEL_CACHE = ModelCache()


def load_classifier(weights=None, device="auto"):
    """The classifier for ``weights`` (None: the shipped default), cached per process.

    The cache key is the weights folder and device, so a survey worker loads
    the model once however many fields it processes.
    """
    return MODEL_CACHE.get(("clf", _weights_key(weights), device), lambda: _classifier(weights, device))


def _weights_key(weights):
    """Folder + size/mtime of its files: a rewritten weights folder is loaded afresh."""
    if weights is None:
        return None
    p = Path(weights).resolve()
    stats = []
    if p.is_dir():
        for f in sorted(p.iterdir()):
            with contextlib.suppress(OSError):
                st = f.stat()
                stats.append((f.name, st.st_size, st.st_mtime_ns))
    return (str(p), tuple(stats))


def _classifier(weights, device):
    if weights is None:
        from astrohvae.classify.persist import load_default_classifier

        return load_default_classifier(device=device)
    wpath = Path(weights)
    if not wpath.exists():
        raise InputError(wpath, "weights folder not found")
    return _load_classifier_from(wpath, device)


def _load_classifier_from(path, device):
    """Load the estimator of a weights folder (`astrohvae.classify.persist.load_model`) and check it classifies.

    Loading reads ``config.json`` (JSON) and ``model.safetensors`` (tensors
    only), so nothing in the folder is ever executed.  A folder that holds a
    feature extractor (``astrohvae train --model ae``) is refused in one line.
    """
    from astrohvae.classify.persist import load_model

    est = load_model(path, device=device)
    if not callable(getattr(est, "predict_proba", None)):
        raise InputError(path, f"holds a {est.method} model, a feature extractor without classes; "
                               "train a classifier for 'run' (astrohvae train STORE --out W, or --model "
                               "hvae/vae/vae-revised)")
    return est


def load_segmenter(segmenter="auto", device="auto", isophote=None):
    """Resolve ``segmenter`` to an object with ``segment(field, background)``, or None.

    ``'auto'``: the shipped network segmenter when its weights exist, else the
    photutils baseline (None).  ``'network'``: the network, an error when
    unavailable.  ``'photutils'``: None (the baseline `astrohvae.detection.detect.detect`).
    Any other object is returned as is.  ``isophote``: the network's
    footprint level in r sky sigma (None: its default, 0.5).
    """
    if segmenter is None or segmenter == "photutils":
        return None
    if not isinstance(segmenter, str):
        return segmenter
    if segmenter not in ("auto", "network"):
        raise ValueError(f"unknown segmenter {segmenter!r}; use 'auto', 'network' or 'photutils'")
    seg = MODEL_CACHE.get(("seg", device, isophote),
                          lambda: _load_default_segmenter(device, required=segmenter == "network", isophote=isophote))
    if seg is None and segmenter == "network":
        raise InputError("astrohvae/data", "no network segmenter weights are installed")
    return seg


def _load_default_segmenter(device, required, isophote=None):
    """The shipped network segmenter; None when it is not installed (unless ``required``)."""
    from astrohvae.segmentation.network import WEIGHTS_DIR, load_default_segmenter

    try:
        return load_default_segmenter(device=device, **({} if isophote is None else {"isophote": float(isophote)}))
    except InputError as exc:
        if required or Path(exc.path).exists():  # installed but unreadable: say so
            raise
        return None
    except Exception as exc:  # noqa: BLE001 - broken shipped weights: one line, not a traceback
        raise InputError(WEIGHTS_DIR, one_line(f"cannot load the segmenter ({type(exc).__name__}: {exc})", 200))


def segmenter_name(seg):
    if seg is None:
        return "photutils"
    return str(getattr(seg, "method", None) or getattr(seg, "variant", None) or "network")
