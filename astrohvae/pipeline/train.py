"""`astrohvae train`: fit a classifier on a stamp store (`train_from_store`)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from astrohvae.errors import InputError, OutputError
from astrohvae.viz.training import training_plots

__all__ = ['train_from_store', 'make_estimator', 'select_training_rows', 'MODEL_KINDS']

MODEL_KINDS = ("avr", "hvae", "vae", "vae-revised", "ae")
"""Model names of ``astrohvae train --model`` (`make_estimator`):

``avr``          the shipped A+Vr classifier (`astrohvae.classify.hierarchical.HierarchicalClassifier`, defaults)
``hvae``         the paper's hierarchical recipe: AE (30 latents) on luptitude stamps -> 1-D VAE with
                 the symmetric two-peak prior, reading the AE latents (``--divergence`` picks its term)
``vae``          V+M: convolutional VAE, standard KL, Isomap (`~astrohvae.classify.manifold.ManifoldClassifier`)
``vae-revised``  Vr+M: the same with a revised two-peak term (``--divergence sc|dkl|aw|pw``)
``ae``           the AE alone (`~astrohvae.classify.features.AutoEncoderFeatures`): features, no classes
"""

REVISED_DIVERGENCES = ("sc", "dkl", "aw", "pw", "quad")


def make_estimator(model="avr", *, divergence=None, prior=None, beta=1.0, epochs=None, latent_epochs=None,
                   batch_size=None, lr=None, latent_dim=None, representation=None, augment=None, colour_prior=False,
                   device="auto", seed=0, verbose=False):
    """The unfitted estimator ``astrohvae train --model MODEL`` fits.

    Options left at None keep the estimator's own default, so that
    ``make_estimator('avr')`` is exactly the shipped classifier's recipe.

    Parameters
    ----------
    model : str
        One of `MODEL_KINDS`.
    divergence : str or None
        ``vae-revised`` / ``hvae``: one of `REVISED_DIVERGENCES` (default
        ``'sc'`` for ``vae-revised``; for ``hvae`` None = the exact KL to the
        two-peak prior by quadrature).  Refused for ``avr``, ``vae`` and ``ae``.
    prior : (m, s) or None
        Two-peak prior ``0.5 N(-m, s^2) + 0.5 N(m, s^2)`` of ``hvae`` /
        ``vae-revised`` (defaults: the estimators' own, m = 1, s = 0.5).
    beta : float
        Weight of the divergence (``vae``, ``vae-revised``, ``hvae``).
    epochs, latent_epochs, batch_size, lr, latent_dim, representation, augment
        Training settings of the networks (``epochs``: the image network;
        ``latent_epochs``: the hierarchical models' latent VAE).
    colour_prior : bool
        ``avr`` only: the former colour-template likelihood (``colour_prior=True``) instead of
        the default stellar-locus one (``'locus'``; see `HierarchicalClassifier`).
    device, seed, verbose

    Returns
    -------
    estimator with ``fit(stamps)``
    """
    from astrohvae.classify.features import AutoEncoderFeatures
    from astrohvae.classify.hierarchical import HierarchicalClassifier
    from astrohvae.classify.manifold import ManifoldClassifier

    if model not in MODEL_KINDS:
        raise ValueError(f"unknown model {model!r}; choose from {', '.join(MODEL_KINDS)}")
    if divergence is not None and model in ("avr", "vae", "ae"):
        raise ValueError(f"--divergence does not apply to model {model!r} (only to vae-revised and hvae)")
    if colour_prior and model != "avr":
        raise ValueError("--colour-prior applies to the avr model only")
    if divergence is not None and divergence not in REVISED_DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; choose from {', '.join(REVISED_DIVERGENCES)}")
    common = {"device": device, "random_state": seed, "verbose": verbose}
    opt = {k: v for k, v in {"batch_size": batch_size, "lr": lr, "representation": representation,
                              "augment": augment}.items() if v is not None}
    if model in ("avr", "hvae"):
        kw = dict(common, **opt)
        if epochs is not None:
            kw["ae_epochs"] = epochs
        if latent_epochs is not None:
            kw["vae_epochs"] = latent_epochs
        if latent_dim is not None:
            kw["ae_latent"] = latent_dim
        if colour_prior:
            kw["colour_prior"] = True
        if model == "hvae":
            kw = dict({"representation": "lupt", "crop": None, "physical": False, "ae_components": None,
                       "symmetric_prior": True, "center_weight": 0.0, "divergence": divergence,
                       "beta": beta}, **kw)
            if prior is not None:
                kw["prior"] = [float(v) for v in prior]
        elif prior is not None:
            raise ValueError("--prior applies to the symmetric two-peak models (hvae, vae-revised)")
        return HierarchicalClassifier(**kw)
    kw = dict(common, **opt)
    if epochs is not None:
        kw["epochs"] = epochs
    if model == "ae":
        if latent_dim is not None:
            kw["latent_dim"] = latent_dim
        return AutoEncoderFeatures(**kw)
    kl = "standard" if model == "vae" else (divergence or "sc")
    kw.update(kl=kl, beta=beta)
    if latent_dim is not None:
        kw["latent_dim"] = latent_dim
    if prior is not None:
        kw["prior"] = [float(v) for v in prior]
    return ManifoldClassifier(**kw)


def select_training_rows(store, per_field=500, max_stamps=None, seed=0, min_snr=50.0):
    """Rows of a stamp store to train on: per field, its bright sources and a random draw.

    The classifiers measure the stellar locus and the PSF on bright sources,
    so every field keeps all its sources with S/N >= ``min_snr`` (up to half
    of ``per_field``) and fills the rest at random.

    Parameters
    ----------
    store : StampStore or StampSet
    per_field : int or None
        At most this many rows per field (None: all).
    max_stamps : int or None
        Then at most this many rows in all (a seeded random subset).
    seed : int

    Returns
    -------
    numpy array of int
        Sorted row indices.
    """
    from astrohvae.morphology.statistics import chunked_statistics, profile_features

    rng = np.random.default_rng(seed)
    fields = np.asarray(store.meta["field"]).astype(str)
    rows = []
    snr = None
    for name in np.unique(fields):
        idx = np.flatnonzero(fields == name)
        if per_field is not None and len(idx) > per_field:
            if snr is None:  # one pass over the store, only when some field must be cut
                snr = chunked_statistics(store, lambda st: profile_features(st)["snr"])[0]
            bright = idx[snr[idx] >= min_snr][: per_field // 2]
            rest = np.setdiff1d(idx, bright)
            idx = np.r_[bright, rng.choice(rest, per_field - len(bright), replace=False)]
        rows.append(idx)
    rows = np.sort(np.concatenate(rows)) if rows else np.zeros(0, np.int64)
    if max_stamps is not None and len(rows) > max_stamps:
        rows = np.sort(rng.choice(rows, size=int(max_stamps), replace=False))
    return rows


def train_from_store(store, out, *, model="avr", divergence=None, prior=None, beta=1.0, epochs=None,
                     latent_epochs=None, batch_size=None, lr=None, latent_dim=None, representation=None,
                     augment=None, colour_prior=False, device="auto", seed=0, per_field=500, max_stamps=None,
                     plots=False, progress=True, overwrite=True, checkpoint_dir=None):
    """Fit the estimator of ``model`` on a stamp store and save it to ``out`` (``astrohvae train``).

    Parameters
    ----------
    store : path or StampStore
        A store made by `astrohvae.stamps.store.build_store` (``astrohvae stamps``).
    out : path
        Weights folder, written under a temporary name and renamed: the one
        format of `astrohvae.classify.persist.save_model` (``model.safetensors``,
        ``config.json``), ``history.json`` and, with ``plots=True``, PNG
        figures.  ``astrohvae run --weights OUT`` takes it.
    model, divergence, prior, beta, epochs, latent_epochs, batch_size, lr, latent_dim, representation,
    augment, colour_prior, device, seed
        See `make_estimator`.
    per_field, max_stamps
        See `select_training_rows` (the shipped classifier: 500 per field).
    plots : bool
    progress : bool
    overwrite : bool
        Replace an existing ``out`` that is a weights folder written by
        astrohvae; any other existing non-empty folder, or the store itself,
        is refused before training (`astrohvae.io.atomic.check_output`).
    checkpoint_dir : path, optional
        Write resumable checkpoints of every network there after each epoch
        (``ae.pt``, ``latent-K.pt`` or ``vae.pt``); the same command run again
        continues an interrupted training where it stopped, and repeats no
        network that had finished.  The folder holds only those files; it must
        not be the store or ``out``.

    Returns
    -------
    dict
        ``out``, ``weights_sha256`` (`astrohvae.models.weights.weights_hash`, the
        catalogue's ``MODELSHA``), ``n`` (stamps used), ``fields``, ``method``,
        ``seconds``.
    """
    import json

    from astrohvae.classify.persist import save_model
    from astrohvae.io.atomic import atomic_path, check_output
    from astrohvae.stamps.store import open_store

    t0 = time.perf_counter()
    est = make_estimator(model, divergence=divergence, prior=prior, beta=beta, epochs=epochs,
                         latent_epochs=latent_epochs, batch_size=batch_size, lr=lr, latent_dim=latent_dim,
                         representation=representation, augment=augment, colour_prior=colour_prior,
                         device=device, seed=seed, verbose=progress)
    out = Path(out)
    store_path = getattr(store, "path", store)
    check_output(out, inputs=[store_path] if isinstance(store_path, (str, Path)) else [], kind="weights",
                 overwrite=overwrite, directory=True)
    if checkpoint_dir is not None:
        checkpoint_dir = Path(checkpoint_dir)
        for other in (out, store_path):
            if isinstance(other, (str, Path)) and checkpoint_dir.resolve() == Path(other).resolve():
                raise InputError(checkpoint_dir, "the checkpoint folder must not be the store or --out")
        if checkpoint_dir.exists() and not checkpoint_dir.is_dir():
            raise OutputError(checkpoint_dir, "exists and is not a folder")
    st = store if hasattr(store, "flux") and hasattr(store, "meta") else open_store(store)
    rows = select_training_rows(st, per_field=per_field, max_stamps=max_stamps, seed=seed)
    if len(rows) < 3:
        raise InputError(getattr(st, "path", store), f"only {len(rows)} stamps; need at least 3 to train")
    stamps = st[rows]
    fields = sorted(set(np.asarray(stamps.meta["field"]).astype(str).tolist()))
    est.fit(stamps, checkpoint_dir=checkpoint_dir)
    histories = {k.rstrip("_"): v for k, v in vars(est).items() if k.endswith("history_") and v}
    training = {"store": str(getattr(st, "path", "")), "n_stamps_store": len(st), "n": int(len(rows)),
                "fields": fields, "per_field": per_field, "max_stamps": max_stamps, "model": model,
                "seconds": round(time.perf_counter() - t0, 1)}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, directory=True, kind="weights") as tmp:
        sha = save_model(est, tmp, training=training)
        (tmp / "history.json").write_text(json.dumps(histories, indent=2, default=float) + "\n")
        if plots:
            training_plots(tmp, est, histories, stamps)
    return {"out": out, "weights_sha256": sha, "n": int(len(rows)), "fields": fields, "method": est.method,
            "seconds": training["seconds"]}
