"""Training loops for the astrohvae networks (no argument parsing, no plotting).

Public functions
----------------
`fit_ae`          convolutional auto-encoder on stamps (N, 5, 64, 64)
`fit_vae`         convolutional VAE with a chosen divergence / prior
`fit_latent_vae`  MLP VAE on AE latents (N, 30)
`apply_batches`   run a function of a batch over an array / source, batched
`train_from_store` what ``astrohvae train`` does (see `astrohvae.cli`)

Inputs
------
``x`` (and ``val``) may be

* a numpy array (in memory; shuffled every epoch),
* an array with ``.chunks`` (e.g. a dask array from
  `astrohvae.store.open_store`, chunked along N): streamed chunk by chunk --
  the chunk order is shuffled every epoch and every chunk is shuffled
  inside, so a store larger than memory can be used,
* a `ChunkedSource` (chunks produced by any function, e.g. a stamp store
  slice turned into network input, with a row selection),
* a callable ``f(rng) -> iterable of float32 batches`` (full control).

Reproducibility
---------------
``seed`` seeds ``torch.manual_seed`` (weights, reparameterisation noise)
and a ``numpy.random.Generator`` (data order, augmentation).  On the CPU a
run is reproducible bit for bit, also across an interruption and a
``resume=True`` from the checkpoint.  CUDA kernels (cuDNN convolutions,
atomics in backward passes) and mixed precision are *not* bitwise
deterministic: on a GPU the same seed gives statistically equivalent, not
identical, results.

Checkpoints
-----------
With ``checkpoint=PATH`` the state after every epoch (model, optimiser,
grad scaler, epoch, RNG states, history, best weights so far, early-stopping
counter) is written atomically to PATH with ``torch.save``; ``resume=True``
continues from it (it is loaded with ``weights_only=True``: no code runs).
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import numpy as np

from astrohvae.errors import InputError, OutputError

__all__ = [
    "fit_ae",
    "fit_vae",
    "fit_latent_vae",
    "fit_model",
    "LabelledSource",
    "RandomCrops",
    "random_crops",
    "apply_batches",
    "loss_terms",
    "ChunkedSource",
    "ArraySource",
    "make_source",
    "get_divergence",
    "DIVERGENCES",
    "DEFAULT_PRIOR",
    "train_from_store",
    "make_estimator",
    "select_training_rows",
    "MODEL_KINDS",
]

DIVERGENCES = ("standard", "sc", "dkl", "aw", "pw", "quad", "mixture")
"""Names accepted by ``divergence=``; see `get_divergence`."""

DEFAULT_PRIOR = (2.0, 0.5)
"""Default two-peak prior ``0.5 N(-m, s^2) + 0.5 N(m, s^2)`` as ``(m, s)``."""

_PRIOR_FUNCS = {"sc": "kl_sc", "dkl": "kl_dkl", "aw": "aw", "pw": "pw", "quad": "kl_quad"}


# --------------------------------------------------------------------------- divergences
def get_divergence(divergence="standard", prior=None):
    """Return ``f(mu, logvar) -> per-sample tensor`` for a divergence name.

    Parameters
    ----------
    divergence : str
        ``'standard'`` (KL to N(0, I)), ``'sc'`` (two-peak KL by scaling),
        ``'dkl'`` (two-peak KL), ``'aw'`` / ``'pw'`` (the Wasserstein
        analogies), ``'quad'`` (two-peak KL by Gauss-Hermite quadrature),
        ``'mixture'`` (a general Gaussian-mixture prior by quadrature).
        The two-peak terms come from `astrohvae.models.priors`.
    prior : tuple (m, s) or dict or None
        For the two-peak divergences the prior ``0.5 N(-m, s^2) + 0.5 N(m, s^2)``
        (default `DEFAULT_PRIOR`).  For ``'mixture'`` a dict of keyword
        arguments passed to ``priors.kl_mixture_quad`` after ``mu, logvar``.
    """
    name = str(divergence).lower()
    if name not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; choose from {', '.join(DIVERGENCES)}")
    from astrohvae.models import priors

    if name == "standard":
        return priors.kl_standard

    if name == "mixture":
        if not isinstance(prior, dict):
            raise ValueError("divergence='mixture' needs prior=dict(...) for priors.kl_mixture_quad")
        fn = priors.kl_mixture_quad
        spec = dict(prior)
        return lambda mu, logvar: fn(mu, logvar, **spec)
    m, s = (DEFAULT_PRIOR if prior is None else prior)
    m, s = float(m), float(s)
    fn = getattr(priors, _PRIOR_FUNCS[name])
    if name == "aw":  # aw has no m: the bound of the (bounded) mean sets the peaks
        return lambda mu, logvar: fn(mu, logvar, s)
    return lambda mu, logvar: fn(mu, logvar, m, s)


# --------------------------------------------------------------------------- data sources
class ArraySource:
    """An in-memory array (N, ...) shuffled every epoch."""

    def __init__(self, x):
        x = np.asarray(x)
        if x.ndim < 2 or len(x) == 0:
            raise ValueError(f"expected a non-empty array (N, ...), got shape {x.shape}")
        self.x = x
        self.n = len(x)

    def peek(self):
        return np.asarray(self.x[:2], dtype=np.float32)

    def batches(self, rng, batch_size, shuffle=True):
        order = rng.permutation(self.n) if shuffle else np.arange(self.n)
        for a in range(0, self.n, batch_size):
            idx = order[a : a + batch_size]
            yield np.ascontiguousarray(self.x[idx], dtype=np.float32)


class ChunkedSource:
    """Batches streamed from chunks that are loaded one at a time.

    Parameters
    ----------
    get_chunk : callable
        ``get_chunk(start, stop) -> array`` of rows ``start:stop`` (already in
        network-input form, e.g. after `astrohvae.preprocess.network_input`).
    bounds : sequence of (start, stop)
        The chunks, e.g. from a dask array's ``chunks[0]``.
    select : callable or None
        ``select(start, stop) -> bool mask`` of the rows to keep (e.g. the
        training split of a store); ``None`` keeps all.
    prefetch : bool
        Load the next chunk in a background thread while the current one is
        used (reading and preprocessing overlap with training).

    Each epoch visits the chunks in a random order and shuffles the rows of
    each chunk; rows left over at the end of a chunk are carried into the
    next, so all batches but the last have ``batch_size`` rows.
    """

    def __init__(self, get_chunk, bounds, select=None, prefetch=True):
        self.get_chunk = get_chunk
        self.prefetch = bool(prefetch)
        self.bounds = [(int(a), int(b)) for a, b in bounds if b > a]
        self.select = select
        if select is None:
            self.n = sum(b - a for a, b in self.bounds)
        else:
            self.n = int(sum(np.count_nonzero(select(a, b)) for a, b in self.bounds))
        if self.n == 0:
            raise ValueError("the source has no rows")

    @classmethod
    def from_array(cls, x, chunk_size=None, select=None):
        """Wrap an array with ``.chunks`` (dask) or any sliceable array."""
        if chunk_size is None and getattr(x, "chunks", None) is not None:
            sizes = x.chunks[0]
        else:
            cs = int(chunk_size or 1024)
            sizes = [min(cs, len(x) - a) for a in range(0, len(x), cs)]
        edges = np.concatenate([[0], np.cumsum(sizes)])
        bounds = list(zip(edges[:-1], edges[1:]))
        return cls(lambda a, b: np.asarray(x[a:b]), bounds, select)

    def _load(self, a, b):
        arr = np.asarray(self.get_chunk(a, b), dtype=np.float32)
        rows = np.arange(a, b)
        if self.select is not None:
            keep = np.asarray(self.select(a, b), dtype=bool)
            arr, rows = arr[keep], rows[keep]
        return arr, rows

    def peek(self):
        for a, b in self.bounds:
            arr, _ = self._load(a, min(b, a + 64))
            if len(arr):
                return arr[:2]
        return self._load(*self.bounds[0])[0][:2]

    def ordered(self):
        """Yield ``(rows, array)`` for every chunk in store order, unshuffled."""
        for a, b in self.bounds:
            arr, rows = self._load(a, b)
            if len(arr):
                yield rows, arr

    def _chunks(self, order):
        order = list(order)
        if not self.prefetch or len(order) < 2:
            for k in order:
                yield self._load(*self.bounds[k])
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1) as pool:
            fut = pool.submit(self._load, *self.bounds[order[0]])
            for i in range(len(order)):
                res = fut.result()
                if i + 1 < len(order):
                    fut = pool.submit(self._load, *self.bounds[order[i + 1]])
                yield res

    def batches(self, rng, batch_size, shuffle=True):
        order = rng.permutation(len(self.bounds)) if shuffle else range(len(self.bounds))
        carry = None
        for arr, _ in self._chunks(order):
            if shuffle:
                arr = arr[rng.permutation(len(arr))]
            if carry is not None and len(carry):
                arr = np.concatenate([carry, arr])
            n_full = (len(arr) // batch_size) * batch_size
            for a in range(0, n_full, batch_size):
                yield arr[a : a + batch_size]
            carry = arr[n_full:]
        if carry is not None and len(carry):
            yield carry


class LabelledSource:
    """In-memory arrays of equal length yielded together as a tuple ``(x, *others)``, shuffled every epoch.

    For supervised losses: ``loss_fn(model, (xb, yb))``.  Augmentation, when
    asked for, applies to the first array only.
    """

    def __init__(self, x, *others):
        self.arrays = [np.asarray(x)] + [np.asarray(o) for o in others]
        self.n = len(self.arrays[0])
        if self.n == 0 or any(len(a) != self.n for a in self.arrays):
            raise ValueError("LabelledSource needs non-empty arrays of equal length")

    def peek(self):
        return np.asarray(self.arrays[0][:2], dtype=np.float32)

    def batches(self, rng, batch_size, shuffle=True):
        order = rng.permutation(self.n) if shuffle else np.arange(self.n)
        for a in range(0, self.n, batch_size):
            idx = order[a : a + batch_size]
            yield tuple(np.ascontiguousarray(arr[idx]) for arr in self.arrays)


class RandomCrops:
    """``n`` random ``crop`` x ``crop`` windows of a list of (C, ny, nx) images per epoch (no labels)."""

    def __init__(self, images, crop, n):
        self.images, self.crop, self.n = list(images), int(crop), int(n)

    def peek(self):
        return next(self.batches(np.random.default_rng(0), 2))

    def batches(self, rng, batch_size, shuffle=True):
        for a in range(0, self.n, batch_size):
            yield random_crops(self.images, min(batch_size, self.n - a), self.crop, rng)


def random_crops(images, n, size, rng):
    """``n`` random ``size`` x ``size`` windows of randomly chosen (C, ny, nx) ``images``: (n, C, size, size)."""
    out = np.empty((n, images[0].shape[0], size, size), np.float32)
    for k in range(n):
        img = images[rng.integers(len(images))]
        y = rng.integers(0, img.shape[1] - size + 1)
        x = rng.integers(0, img.shape[2] - size + 1)
        out[k] = img[:, y : y + size, x : x + size]
    return out


class _CallableSource:
    def __init__(self, fn):
        self.fn = fn
        self.n = None

    def peek(self):
        for b in self.fn(np.random.default_rng(0)):
            return np.asarray(b[:2], dtype=np.float32)
        raise ValueError("the batch source yielded nothing")

    def batches(self, rng, batch_size, shuffle=True):
        for b in self.fn(rng):
            yield np.asarray(b, dtype=np.float32)


def make_source(x):
    """Wrap ``x`` (array, chunked array, source or callable) as a batch source."""
    if x is None:
        return None
    if isinstance(x, (ArraySource, ChunkedSource, _CallableSource, LabelledSource, RandomCrops)):
        return x
    if hasattr(x, "batches") and hasattr(x, "peek"):
        return x
    try:
        import torch

        if isinstance(x, torch.Tensor):
            return ArraySource(x.detach().cpu().numpy())
    except ImportError:  # pragma: no cover
        pass
    if isinstance(x, np.ndarray):
        return ArraySource(x)
    if getattr(x, "chunks", None) is not None and hasattr(x, "shape"):
        return ChunkedSource.from_array(x)
    if callable(x):
        return _CallableSource(x)
    if hasattr(x, "__array__"):
        return ArraySource(np.asarray(x))
    raise TypeError(f"cannot train on an object of type {type(x).__name__}")


# --------------------------------------------------------------------------- helpers
def _augment(xb, rng):
    """Random dihedral transform (rot90 k times, optional flip) per sample."""
    import torch

    ops = rng.integers(0, 8, size=xb.shape[0])
    out = torch.empty_like(xb)
    for op in np.unique(ops):
        sel = torch.from_numpy(np.flatnonzero(ops == op)).to(xb.device)
        t = xb.index_select(0, sel)
        k, flip = int(op) % 4, int(op) >= 4
        if k:
            t = torch.rot90(t, k, dims=(-2, -1))
        if flip:
            t = torch.flip(t, dims=(-1,))
        out.index_copy_(0, sel, t)
    return out


def _pixel_weight_tensor(pixel_weight, shape, device):
    import torch

    if pixel_weight is None:
        return None
    w = np.asarray(pixel_weight, dtype=np.float32)
    if w.shape != tuple(shape[-2:]):
        raise ValueError(f"pixel_weight has shape {w.shape}, expected {tuple(shape[-2:])}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("pixel_weight must be finite, non-negative and not all zero")
    w = w / w.mean()
    return torch.from_numpy(w)[None, None].to(device)


def _amp_context(device):
    import contextlib

    import torch

    if device.type != "cuda":
        return contextlib.nullcontext(), False
    bf16 = torch.cuda.is_bf16_supported()
    return torch.autocast("cuda", dtype=torch.bfloat16 if bf16 else torch.float16), not bf16


def _state_to_cpu(state):
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def _rng_state(rng):
    import torch

    st = {"torch": torch.get_rng_state(), "numpy": copy.deepcopy(rng.bit_generator.state)}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(rng, st):
    import torch

    torch.set_rng_state(st["torch"])
    rng.bit_generator.state = st["numpy"]
    if "cuda" in st and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(st["cuda"])
        except (RuntimeError, IndexError):  # different number of GPUs
            pass


def _save_checkpoint(path, obj):
    import torch

    from astrohvae.io.atomic import atomic_path

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _load_checkpoint(path):
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means an unusable file
        raise InputError(path, f"not a readable astrohvae checkpoint ({type(exc).__name__})") from exc


# --------------------------------------------------------------------------- the loop
def _to_device(batch, device):
    """A numpy batch (or tuple of them, `LabelledSource`) as tensors on ``device``."""
    import torch

    def one(a):
        t = torch.from_numpy(np.ascontiguousarray(a))
        return (t.pin_memory() if device.type == "cuda" else t).to(device, non_blocking=True)

    return tuple(one(a) for a in batch) if isinstance(batch, tuple) else one(batch)


def _fit(model, loss_fn, x, *, val, epochs, batch_size, lr, weight_decay, device, seed, patience,
         progress, checkpoint, resume, on_epoch_end, augment, kind, rng, desc, min_delta=0.0, schedule=None,
         optimizer="adam"):
    """The one training loop: Adam(W), early stopping on the validation loss, checkpoints.

    ``loss_fn(model, xb) -> dict name -> per-sample tensor`` with key ``'loss'``
    (``xb`` a tensor, or a tuple of tensors for a `LabelledSource`).
    ``schedule``: None (constant ``lr``), ``'onecycle'``
    (`torch.optim.lr_scheduler.OneCycleLR` peaking at ``lr``) or ``'cosine'``
    (`~torch.optim.lr_scheduler.CosineAnnealingLR` from ``lr``), over
    ``epochs`` full passes; both need a source of known length.
    ``optimizer``: ``'adam'`` or ``'adamw'``.
    """
    import torch
    from tqdm.auto import tqdm

    source, val_source = make_source(x), make_source(val)
    model.to(device)
    if optimizer not in ("adam", "adamw"):
        raise ValueError(f"unknown optimizer {optimizer!r}; use 'adam' or 'adamw'")
    opt_cls = torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam
    opt = opt_cls(model.parameters(), lr=lr, weight_decay=weight_decay)
    amp_ctx, use_scaler = _amp_context(device)
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler) if device.type == "cuda" else None

    sched = None
    if schedule not in (None, "onecycle", "cosine"):
        raise ValueError(f"unknown schedule {schedule!r}; use None, 'onecycle' or 'cosine'")
    if schedule is not None:
        if source.n is None:
            raise ValueError(f"schedule {schedule!r} needs a source of known length")
        steps = max(1, epochs * sum(1 for a in range(0, source.n, batch_size) if min(batch_size, source.n - a) >= 2))
        if schedule == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
        else:
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)

    history = {"epoch": [], "train_loss": [], "val_loss": [], "seconds": []}
    start_epoch, best_val, best_state, best_epoch, bad, stopped = 0, math.inf, None, 0, 0, False

    if checkpoint is not None and resume and Path(checkpoint).exists():
        ck = _load_checkpoint(checkpoint)
        if ck.get("kind") != kind or ck.get("config") != model.get_config():
            raise InputError(checkpoint, f"checkpoint is for a different model ({ck.get('kind')})")
        try:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise InputError(checkpoint, f"checkpoint does not match the model: {exc}") from exc
        if scaler is not None and ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        if sched is not None and ck.get("scheduler"):
            sched.load_state_dict(ck["scheduler"])
        history = ck["history"]
        start_epoch = int(ck["epoch"])
        best_val = float(ck["best_val"])
        best_state = ck["best_state"]
        best_epoch, bad, stopped = int(ck["best_epoch"]), int(ck["bad_epochs"]), bool(ck["stopped"])
        _set_rng_state(rng, ck["rng"])

    epoch, step = start_epoch, 0
    sync_every = 1 if device.type == "cpu" else 25
    while epoch < epochs and not stopped:
        t0 = time.perf_counter()
        model.train()
        sums, n = {}, 0
        total = None if source.n is None else math.ceil(source.n / batch_size)
        bar = tqdm(source.batches(rng, batch_size, shuffle=True), total=total, disable=not progress,
                   desc=f"{desc} {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True)
        for xb in bar:
            bsz = len(xb[0]) if isinstance(xb, tuple) else xb.shape[0]
            if bsz < 2:  # BatchNorm needs two samples
                continue
            xb = _to_device(xb, device)
            if augment:
                xb = (_augment(xb[0], rng),) + xb[1:] if isinstance(xb, tuple) else _augment(xb, rng)
            with amp_ctx:
                terms = loss_fn(model, xb)
            loss = terms["loss"].float().mean()
            step += 1
            # on a GPU, reading a value back synchronises: check and report every `sync_every` steps
            if step % sync_every == 0 and not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: loss is {float(loss.detach())} at epoch {epoch + 1}; lower lr?")
            opt.zero_grad(set_to_none=True)
            if scaler is not None and scaler.is_enabled():
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            if sched is not None:
                sched.step()
            with torch.no_grad():
                for k, v in terms.items():
                    t = v.detach().float().sum()
                    sums[k] = sums[k] + t if k in sums else t
            n += bsz
            if progress and step % sync_every == 0:
                bar.set_postfix(loss=f"{float(sums['loss']) / n:.4g}")
        bar.close()
        train_terms = {k: float(v) / max(n, 1) for k, v in sums.items()}
        if not all(math.isfinite(v) for v in train_terms.values()):
            raise FloatingPointError(f"{desc}: non-finite training loss at epoch {epoch + 1}; lower lr?")
        val_terms = _mean_terms(model, loss_fn, val_source, batch_size, device) if val_source is not None else {}
        epoch += 1
        history["epoch"].append(epoch)
        history["seconds"].append(time.perf_counter() - t0)
        for k, v in train_terms.items():
            history.setdefault(f"train_{k}", []).append(v)
        for k, v in val_terms.items():
            history.setdefault(f"val_{k}", []).append(v)
        if not val_terms:
            history["val_loss"].append(float("nan"))
        score = val_terms.get("loss", train_terms.get("loss", math.inf))
        if score < best_val - (min_delta if best_state is not None else 0.0):
            best_val, best_state, best_epoch, bad = score, _state_to_cpu(model.state_dict()), epoch, 0
        else:
            bad += 1
            if val_source is not None and patience is not None and bad >= patience:
                stopped = True
        if progress:
            msg = f"{desc} epoch {epoch}/{epochs}: train {train_terms.get('loss', float('nan')):.5g}"
            if val_terms:
                msg += f"  val {val_terms['loss']:.5g}"
            tqdm.write(msg + ("  (early stop)" if stopped else ""))
        if checkpoint is not None:
            _save_checkpoint(checkpoint, {
                "kind": kind, "config": model.get_config(), "epoch": epoch,
                "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else {},
                "scheduler": sched.state_dict() if sched is not None else {},
                "history": history, "best_val": best_val, "best_state": best_state,
                "best_epoch": best_epoch, "bad_epochs": bad, "stopped": stopped,
                "rng": _rng_state(rng),
            })
        if on_epoch_end is not None:
            on_epoch_end(epoch, history)

    # with a validation set the best epoch's weights are kept; without one the
    # "best" training loss is a noisy per-epoch mean of a moving model, so the
    # weights after the last epoch are kept (as a plain loop would)
    if best_state is not None and val_source is not None:
        model.load_state_dict(best_state)
    history["best_epoch"] = best_epoch
    history["best_loss"] = best_val
    history["stopped_early"] = stopped
    model.eval()
    return model, history


def fit_model(model, loss_fn, x, *, epochs, batch_size=128, lr=1e-3, weight_decay=0.0, optimizer="adam",
              schedule=None, augment=False, val=None, patience=None, device="auto", seed=0, progress=False,
              checkpoint=None, resume=False, on_epoch_end=None, kind=None, desc="train"):
    """Train any module with the one training loop (what every ``fit_*`` calls).

    Parameters
    ----------
    model : torch.nn.Module
        With ``get_config()`` when ``checkpoint`` is used.
    loss_fn : callable
        ``loss_fn(model, batch) -> dict`` of per-sample tensors with key ``'loss'``.
    x : array, source or callable
        See the module docstring; `LabelledSource` for supervised training,
        `RandomCrops` for random windows of whole images.
    epochs, batch_size, lr, weight_decay, optimizer, schedule, augment, val, patience, device, seed,
    progress, checkpoint, resume, on_epoch_end
        See `fit_ae`; ``optimizer`` 'adam' or 'adamw', ``schedule`` None,
        'onecycle' or 'cosine'.

    Returns
    -------
    model, history
    """
    dev, rng = _prepare(device, seed)
    return _fit(model, loss_fn, x, val=val, epochs=epochs, batch_size=batch_size, lr=lr,
                weight_decay=weight_decay, device=dev, seed=seed, patience=patience, progress=progress,
                checkpoint=checkpoint, resume=resume, on_epoch_end=on_epoch_end, augment=augment,
                kind=kind or type(model).__name__, rng=rng, desc=desc, schedule=schedule, optimizer=optimizer)


def _prepare(device, seed):
    import torch

    from astrohvae.device import resolve_device

    dev = resolve_device(device)
    torch.manual_seed(seed)
    return dev, np.random.default_rng(seed)


def _infer_shape(x):
    s = make_source(x).peek()
    if s.ndim != 4:
        raise ValueError(f"expected stamps (N, C, H, W), got batches of shape {s.shape}")
    if s.shape[-1] != s.shape[-2]:
        raise ValueError(f"stamps must be square, got {s.shape[-2:]}")
    return s.shape[1], s.shape[-1]


_LOOP_DOC = """
    epochs : int
        Maximum number of epochs.
    batch_size : int
    lr : float
        Adam learning rate.
    weight_decay : float
    device : str
        ``'auto'``, ``'cpu'`` or ``'cuda'`` (mixed precision is used on CUDA only).
    seed : int
    val : array or source or None
        Validation data; enables early stopping and the choice of the best epoch.
    patience : int
        Stop after this many epochs without improvement of the validation loss;
        the best weights are restored at the end.
    min_delta : float
        An epoch counts as an improvement only if it lowers the best loss by
        more than this.
    progress : bool
        Show a tqdm bar with the running loss.
    checkpoint : path or None
        Write a resumable checkpoint there after every epoch (atomically).
    resume : bool
        Continue from ``checkpoint`` if it exists.
    on_epoch_end : callable or None
        ``f(epoch, history)`` called after every epoch (and after the checkpoint).
    schedule : None or 'onecycle'
        Learning-rate schedule: constant ``lr``, or one cycle peaking at ``lr``.
"""


def _image_recon(xh, xb, w, reduce):
    se = (xh.float() - xb.float()) ** 2
    if w is not None:
        se = se * w
    se = se.flatten(1)
    return se.mean(1) if reduce == "mean" else se.sum(1)


def _ae_loss(w):
    def loss_fn(m, xb):
        _, xh = m(xb)
        r = _image_recon(xh, xb, w, "mean")
        return {"loss": r, "recon": r}

    return loss_fn


def _vae_loss(div, beta, w):
    def loss_fn(m, xb):
        mu, logvar, xh = m(xb)
        r = _image_recon(xh, xb, w, "sum")
        d = div(mu.float(), logvar.float())
        return {"loss": r + beta * d, "recon": r, "div": d}

    return loss_fn


def _latent_loss(div, beta):
    def loss_fn(m, zb):
        mu, logvar, recon, target = m(zb)
        r = ((recon.float() - target.float()) ** 2).sum(1)
        d = div(mu.float(), logvar.float())
        return {"loss": r + beta * d, "recon": r, "div": d}

    return loss_fn


def _mean_terms(model, loss_fn, source, batch_size, device):
    import torch

    amp_ctx, _ = _amp_context(device)
    model.eval()
    sums, n = {}, 0
    with torch.inference_mode(), amp_ctx:
        for xb in source.batches(None, batch_size, shuffle=False):
            n += len(xb[0]) if isinstance(xb, tuple) else xb.shape[0]
            xb = _to_device(xb, device)
            for k, v in loss_fn(model, xb).items():
                sums[k] = sums.get(k, 0.0) + float(v.float().sum())
    return {k: v / max(n, 1) for k, v in sums.items()}


def loss_terms(model, x, *, divergence="standard", prior=None, beta=1.0, pixel_weight=None,
               batch_size=256, device="auto"):
    """Mean loss terms of a trained model on data ``x`` (evaluation mode).

    The same losses as the ``fit_*`` functions: for a `ConvAE` the pixel MSE
    (``loss``, ``recon``); for a `ConvVAE` and a `LatentVAE` ``loss``,
    ``recon``, ``div``; for a `HierarchicalVAE` the AE terms prefixed ``ae_``
    and the latent VAE's prefixed ``latent_`` (its input: the AE latents of ``x``).

    Returns
    -------
    dict of str -> float
    """
    from astrohvae.device import resolve_device
    from astrohvae.models import ConvAE, ConvVAE, HierarchicalVAE, LatentVAE

    dev = resolve_device(device)
    src = make_source(x)
    model = model.to(dev).eval()
    if isinstance(model, HierarchicalVAE):
        out = {f"ae_{k}": v for k, v in loss_terms(model.ae, src, pixel_weight=pixel_weight,
                                                       batch_size=batch_size, device=dev).items()}
        z = apply_batches(model.ae.encode, src, batch_size=batch_size, device=dev)
        out.update({f"latent_{k}": v for k, v in loss_terms(model.latent_vae, z, divergence=divergence,
                                                              prior=prior, beta=beta, batch_size=batch_size,
                                                              device=dev).items()})
        return out
    if isinstance(model, LatentVAE):
        fn = _latent_loss(get_divergence(divergence, prior), beta)
    else:
        s = model.size
        w = _pixel_weight_tensor(pixel_weight, (s, s), dev)
        if isinstance(model, ConvVAE):
            fn = _vae_loss(get_divergence(divergence, prior), beta, w)
        elif isinstance(model, ConvAE):
            fn = _ae_loss(w)
        else:
            raise TypeError(f"no loss defined for {type(model).__name__}")
    return _mean_terms(model, fn, src, batch_size, dev)


def fit_ae(x, *, latent_dim=30, channels=(16, 32, 64, 64), epochs=20, batch_size=128, lr=1e-3,
           weight_decay=0.0, device="auto", seed=0, val=None, patience=5, pixel_weight=None,
           augment=False, progress=True, checkpoint=None, resume=False, on_epoch_end=None, model=None,
           min_delta=0.0, schedule=None):
    """Train a `~astrohvae.models.ConvAE` on stamps.

    Parameters
    ----------
    x : array (N, C, S, S) or chunked array or source or callable
        Network input (see the module docstring).
    latent_dim : int
        Bottleneck size (30 in the paper).
    channels : sequence of int
        Encoder channels.
    pixel_weight : array (S, S) or None
        Weight of every pixel in the squared error (normalised to mean 1),
        e.g. to emphasise the centre of the stamp.
    augment : bool
        Random 90-degree rotations and flips of every training stamp.
    model : ConvAE or None
        Start from this model instead of a new one (fine-tuning).
    """ + _LOOP_DOC + """
    Returns
    -------
    model : ConvAE
        In evaluation mode, on ``device``, with the best weights.
    history : dict
        Lists ``epoch``, ``train_loss``, ``val_loss``, ``train_recon``, ...,
        ``seconds`` and scalars ``best_epoch``, ``best_loss``, ``stopped_early``.
        The loss is the (weighted) mean squared error per pixel.
    """
    from astrohvae.models import ConvAE

    dev, rng = _prepare(device, seed)
    c, s = _infer_shape(x)
    if model is None:
        model = ConvAE(latent_dim=latent_dim, in_channels=c, size=s, channels=channels)
    w = _pixel_weight_tensor(pixel_weight, (s, s), dev)

    loss_fn = _ae_loss(w)
    return _fit(model, loss_fn, x, val=val, epochs=epochs, batch_size=batch_size, lr=lr,
                weight_decay=weight_decay, device=dev, seed=seed, patience=patience, progress=progress,
                checkpoint=checkpoint, resume=resume, on_epoch_end=on_epoch_end, augment=augment,
                kind="ae", rng=rng, desc="ae", min_delta=min_delta, schedule=schedule)


def _default_bound(divergence, prior, bounded_mu):
    if bounded_mu is not None or str(divergence).lower() != "aw":
        return bounded_mu
    m, _ = DEFAULT_PRIOR if prior is None or isinstance(prior, dict) else prior
    return float(m)


def fit_vae(x, *, latent_dim=2, divergence="standard", prior=None, beta=1.0, bounded_mu=None,
            channels=(16, 32, 64, 64), epochs=20, batch_size=128, lr=1e-3, weight_decay=0.0,
            device="auto", seed=0, val=None, patience=5, pixel_weight=None, augment=False,
            progress=True, checkpoint=None, resume=False, on_epoch_end=None, model=None,
           min_delta=0.0, schedule=None):
    """Train a `~astrohvae.models.ConvVAE` on stamps.

    The loss per stamp is ``sum of (weighted) squared errors + beta * D``, the
    paper's Eq. (6), with ``D`` the divergence of `get_divergence`.

    Parameters
    ----------
    latent_dim : int
    divergence : str
        One of `DIVERGENCES` (``'standard'`` gives the V+M baseline; the
        others the revised Vr).
    prior : (m, s) or dict or None
        Two-peak prior (default `DEFAULT_PRIOR`) or mixture spec.
    beta : float
        Weight of the divergence.
    bounded_mu : float or None
        Bound of the posterior mean, ``mu = b tanh(raw / b)``.  For
        ``divergence='aw'`` it defaults to the prior's ``m``: AW pushes
        ``|mu|`` to the bound, so the bound places the two peaks at ``+-m``.
    pixel_weight, augment, model
        As in `fit_ae`.
    """ + _LOOP_DOC + """
    Returns
    -------
    model : ConvVAE
    history : dict
        As for `fit_ae`, with ``*_recon`` and ``*_div`` terms.
    """
    from astrohvae.models import ConvVAE

    div = get_divergence(divergence, prior)
    dev, rng = _prepare(device, seed)
    c, s = _infer_shape(x)
    if model is None:
        model = ConvVAE(latent_dim=latent_dim, bounded_mu=_default_bound(divergence, prior, bounded_mu),
                        in_channels=c, size=s, channels=channels)
    w = _pixel_weight_tensor(pixel_weight, (s, s), dev)

    loss_fn = _vae_loss(div, beta, w)
    return _fit(model, loss_fn, x, val=val, epochs=epochs, batch_size=batch_size, lr=lr,
                weight_decay=weight_decay, device=dev, seed=seed, patience=patience, progress=progress,
                checkpoint=checkpoint, resume=resume, on_epoch_end=on_epoch_end, augment=augment,
                kind="vae", rng=rng, desc=f"vae[{divergence}]", min_delta=min_delta, schedule=schedule)


def fit_latent_vae(z, *, latent_dim=1, divergence="sc", prior=None, beta=1.0, bounded_mu=None,
                   hidden=(64, 32), epochs=100, batch_size=256, lr=1e-3, weight_decay=0.0,
                   device="auto", seed=0, val=None, patience=10, progress=True, checkpoint=None,
                   resume=False, on_epoch_end=None, model=None, min_delta=0.0, schedule=None):
    """Train a `~astrohvae.models.LatentVAE` on AE latents ``z`` (N, in_dim).

    The loss per sample is the squared error of the reconstruction of the
    batch-normalised latent plus ``beta`` times the divergence.

    Parameters
    ----------
    z : array (N, in_dim) or source
    latent_dim : int
        1 or 2.
    divergence, prior, beta, bounded_mu
        As in `fit_vae` (default divergence ``'sc'``).
    hidden : sequence of int
        MLP widths.
    """ + _LOOP_DOC + """
    Returns
    -------
    model : LatentVAE
    history : dict
    """
    from astrohvae.models import LatentVAE

    div = get_divergence(divergence, prior)
    dev, rng = _prepare(device, seed)
    sample = make_source(z).peek()
    if sample.ndim != 2:
        raise ValueError(f"expected latents (N, D), got batches of shape {sample.shape}")
    if model is None:
        model = LatentVAE(in_dim=sample.shape[1], latent_dim=latent_dim, hidden=hidden,
                          bounded_mu=_default_bound(divergence, prior, bounded_mu))

    loss_fn = _latent_loss(div, beta)
    return _fit(model, loss_fn, z, val=val, epochs=epochs, batch_size=batch_size, lr=lr,
                weight_decay=weight_decay, device=dev, seed=seed, patience=patience, progress=progress,
                checkpoint=checkpoint, resume=resume, on_epoch_end=on_epoch_end, augment=False,
                kind="latent_vae", rng=rng, desc=f"latent-vae[{divergence}]", min_delta=min_delta, schedule=schedule)


def apply_batches(fn, x, *, batch_size=256, device="auto"):
    """Apply ``fn(batch_tensor)`` to ``x`` in order, batch by batch, under inference mode.

    Parameters
    ----------
    fn : callable
        E.g. ``model.encode``; may return a tensor or a tuple of tensors.
    x : array or chunked array or `ChunkedSource`
        Unshuffled; results are in the order of ``x`` (for a `ChunkedSource`
        with ``select``, in the order of the selected rows).
    batch_size : int
    device : str or torch.device

    Returns
    -------
    numpy array, or tuple of numpy arrays when ``fn`` returns a tuple.
    """
    import torch

    from astrohvae.device import resolve_device

    dev = resolve_device(device)
    src = make_source(x)
    if isinstance(src, _CallableSource):
        raise TypeError("apply_batches needs an array or a ChunkedSource, not a callable")
    outs, single = [], True
    with torch.inference_mode():
        for xb in src.batches(None, batch_size, shuffle=False):
            xb = torch.from_numpy(np.ascontiguousarray(xb, dtype=np.float32)).to(dev)
            out = fn(xb)
            single = isinstance(out, torch.Tensor)
            outs.append((out,) if single else tuple(out))
            outs[-1] = tuple(o.float().cpu().numpy() for o in outs[-1])
    if not outs:
        raise ValueError("no data")
    res = tuple(np.concatenate(parts) for parts in zip(*outs))
    return res[0] if single else res


MODEL_KINDS = ("avr", "hvae", "vae", "vae-revised", "ae")
"""Model names of ``astrohvae train --model`` (`make_estimator`):

``avr``          the shipped A+Vr classifier (`astrohvae.classify.HierarchicalClassifier`, defaults)
``hvae``         the paper's hierarchical recipe: AE (30 latents) on luptitude stamps -> 1-D VAE with
                 the symmetric two-peak prior, reading the AE latents (``--divergence`` picks its term)
``vae``          V+M: convolutional VAE, standard KL, Isomap (`~astrohvae.classify.ManifoldClassifier`)
``vae-revised``  Vr+M: the same with a revised two-peak term (``--divergence sc|dkl|aw|pw``)
``ae``           the AE alone (`~astrohvae.classify.AutoEncoderFeatures`): features, no classes
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
        ``avr`` only: the opt-in colour likelihood (see `HierarchicalClassifier`).
    device, seed, verbose

    Returns
    -------
    estimator with ``fit(stamps)``
    """
    from astrohvae.classify import AutoEncoderFeatures, HierarchicalClassifier, ManifoldClassifier

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
    from astrohvae.psf import chunked_statistics, profile_features

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
        A store made by `astrohvae.store.build_store` (``astrohvae stamps``).
    out : path
        Weights folder, written under a temporary name and renamed: the one
        format of `astrohvae.classify.save_model` (``model.safetensors``,
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
        ``out``, ``weights_sha256`` (`astrohvae.weights.weights_hash`, the
        catalogue's ``MODELSHA``), ``n`` (stamps used), ``fields``, ``method``,
        ``seconds``.
    """
    import json

    from astrohvae.classify import save_model
    from astrohvae.io.atomic import atomic_path, check_output
    from astrohvae.store import open_store

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
    if checkpoint_dir is not None:
        est.fit(stamps, checkpoint_dir=checkpoint_dir)
    else:
        est.fit(stamps)
    histories = {k.rstrip("_"): v for k, v in vars(est).items() if k.endswith("history_") and v}
    training = {"store": str(getattr(st, "path", "")), "n_stamps_store": len(st), "n": int(len(rows)),
                "fields": fields, "per_field": per_field, "max_stamps": max_stamps, "model": model,
                "seconds": round(time.perf_counter() - t0, 1)}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, directory=True, kind="weights") as tmp:
        sha = save_model(est, tmp, training=training)
        (tmp / "history.json").write_text(json.dumps(histories, indent=2, default=float) + "\n")
        if plots:
            _plots(tmp, est, histories, stamps)
    return {"out": out, "weights_sha256": sha, "n": int(len(rows)), "fields": fields, "method": est.method,
            "seconds": training["seconds"]}


def _plots(folder, est, histories, stamps):
    """Loss curves of every network; for a classifier the histogram of its latent by class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [(k, h) for k, h in histories.items() if h]
    if stages:
        fig, axes = plt.subplots(1, len(stages), figsize=(5 * len(stages), 3.6), squeeze=False)
        for ax, (name, h) in zip(axes[0], stages):
            ax.plot(h["epoch"], h["train_loss"], "o-", label="train")
            ax.set_xlabel("epoch")
            ax.set_ylabel("loss")
            ax.set_title(name.replace("_", " "))
            ax.legend()
        fig.tight_layout()
        fig.savefig(folder / "loss.png", dpi=110)
        plt.close(fig)
    if not callable(getattr(est, "predict_proba", None)):
        return
    p, t = est.predict_proba(stamps), est.transform(stamps)
    z = t.get("z_hvae", t.get("embedding"))
    z = np.asarray(z).reshape(len(p), -1)[:, 0]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    bins = np.linspace(np.percentile(z, 0.5), np.percentile(z, 99.5), 60)
    ax.hist(z[p < 0.5], bins=bins, color="tab:blue", alpha=0.7, label=f"star ({np.count_nonzero(p < 0.5)})")
    ax.hist(z[p >= 0.5], bins=bins, color="tab:red", alpha=0.7, label=f"galaxy ({np.count_nonzero(p >= 0.5)})")
    ax.set_xlabel("classifier latent (training stamps)")
    ax.set_ylabel("stamps")
    ax.set_title(est.method)
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "latent_hist.png", dpi=110)
    plt.close(fig)
