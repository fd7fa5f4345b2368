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
  `astrohvae.stamps.store.open_store`, chunked along N): streamed chunk by chunk --
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

from astrohvae.errors import InputError

__all__ = ['fit_model', 'LabelledSource', 'RandomCrops', 'random_crops', 'apply_batches', 'ChunkedSource', 'ArraySource', 'make_source']

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
        network-input form, e.g. after `astrohvae.stamps.preprocess.network_input`).
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


def pixel_weight_tensor(pixel_weight, shape, device):
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


def amp_context(device):
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
def to_device(batch, device):
    """A numpy batch (or tuple of them, `LabelledSource`) as tensors on ``device``."""
    import torch

    def one(a):
        t = torch.from_numpy(np.ascontiguousarray(a))
        return (t.pin_memory() if device.type == "cuda" else t).to(device, non_blocking=True)

    return tuple(one(a) for a in batch) if isinstance(batch, tuple) else one(batch)


def fit_loop(model, loss_fn, x, *, val, epochs, batch_size, lr, weight_decay, device, seed, patience,
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

    from astrohvae.models.fitting import mean_terms

    source, val_source = make_source(x), make_source(val)
    model.to(device)
    if optimizer not in ("adam", "adamw"):
        raise ValueError(f"unknown optimizer {optimizer!r}; use 'adam' or 'adamw'")
    opt_cls = torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam
    opt = opt_cls(model.parameters(), lr=lr, weight_decay=weight_decay)
    amp_ctx, use_scaler = amp_context(device)
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
            xb = to_device(xb, device)
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
        val_terms = mean_terms(model, loss_fn, val_source, batch_size, device) if val_source is not None else {}
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
    dev, rng = prepare_inputs(device, seed)
    return fit_loop(model, loss_fn, x, val=val, epochs=epochs, batch_size=batch_size, lr=lr,
                weight_decay=weight_decay, device=dev, seed=seed, patience=patience, progress=progress,
                checkpoint=checkpoint, resume=resume, on_epoch_end=on_epoch_end, augment=augment,
                kind=kind or type(model).__name__, rng=rng, desc=desc, schedule=schedule, optimizer=optimizer)


def prepare_inputs(device, seed):
    import torch

    from astrohvae.device import resolve_device

    dev = resolve_device(device)
    torch.manual_seed(seed)
    return dev, np.random.default_rng(seed)


def infer_shape(x):
    s = make_source(x).peek()
    if s.ndim != 4:
        raise ValueError(f"expected stamps (N, C, H, W), got batches of shape {s.shape}")
    if s.shape[-1] != s.shape[-2]:
        raise ValueError(f"stamps must be square, got {s.shape[-2:]}")
    return s.shape[1], s.shape[-1]


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
