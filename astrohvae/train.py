"""Training loops for the astrohvae networks (no argument parsing, no plotting).

Public functions
----------------
`fit_ae`          convolutional auto-encoder on stamps (N, 5, 64, 64)
`fit_vae`         convolutional VAE with a chosen divergence / prior
`fit_latent_vae`  MLP VAE on AE latents (N, 30)
`fit_hvae`        `fit_ae`, then `fit_latent_vae` on the AE's latents
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

from astrohvae.errors import InputError

__all__ = [
    "fit_ae",
    "fit_vae",
    "fit_latent_vae",
    "fit_hvae",
    "apply_batches",
    "loss_terms",
    "ChunkedSource",
    "ArraySource",
    "make_source",
    "get_divergence",
    "DIVERGENCES",
    "DEFAULT_PRIOR",
    "train_from_store",
    "split_by_field",
    "MODEL_KINDS",
]

DIVERGENCES = ("standard", "sc", "dkl", "aw", "pw", "quad", "mixture")
"""Names accepted by ``divergence=``; see `get_divergence`."""

DEFAULT_PRIOR = (2.0, 0.5)
"""Default two-peak prior ``0.5 N(-m, s^2) + 0.5 N(m, s^2)`` as ``(m, s)``."""

_PRIOR_FUNCS = {"sc": "kl_sc", "dkl": "kl_dkl", "aw": "aw", "pw": "pw", "quad": "kl_quad"}


# --------------------------------------------------------------------------- divergences
def _kl_standard_local(mu, logvar):
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)


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
    if name == "standard":
        try:
            from astrohvae.models.priors import kl_standard
        except ImportError:
            kl_standard = _kl_standard_local
        return lambda mu, logvar: kl_standard(mu, logvar)
    from astrohvae.models import priors  # the [priors] module

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
    if isinstance(x, (ArraySource, ChunkedSource, _CallableSource)):
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
def _fit(model, loss_fn, x, *, val, epochs, batch_size, lr, weight_decay, device, seed, patience,
         progress, checkpoint, resume, on_epoch_end, augment, kind, rng, desc, min_delta=0.0):
    """Generic loop: Adam, early stopping on the validation loss, checkpoints.

    ``loss_fn(model, xb) -> dict name -> per-sample tensor`` with key ``'loss'``.
    """
    import torch
    from tqdm.auto import tqdm

    source, val_source = make_source(x), make_source(val)
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    amp_ctx, use_scaler = _amp_context(device)
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler) if device.type == "cuda" else None

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
            if xb.shape[0] < 2:  # BatchNorm needs two samples
                continue
            xb = torch.from_numpy(np.ascontiguousarray(xb))
            xb = (xb.pin_memory() if device.type == "cuda" else xb).to(device, non_blocking=True)
            if augment:
                xb = _augment(xb, rng)
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
            bsz = xb.shape[0]
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
                "history": history, "best_val": best_val, "best_state": best_state,
                "best_epoch": best_epoch, "bad_epochs": bad, "stopped": stopped,
                "rng": _rng_state(rng),
            })
        if on_epoch_end is not None:
            on_epoch_end(epoch, history)

    if best_state is not None:
        model.load_state_dict(best_state)
    history["best_epoch"] = best_epoch
    history["best_loss"] = best_val
    history["stopped_early"] = stopped
    model.eval()
    return model, history


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
            xb = torch.from_numpy(np.ascontiguousarray(xb, dtype=np.float32)).to(device, non_blocking=True)
            for k, v in loss_fn(model, xb).items():
                sums[k] = sums.get(k, 0.0) + float(v.float().sum())
            n += xb.shape[0]
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
           min_delta=0.0):
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
                kind="ae", rng=rng, desc="ae", min_delta=min_delta)


def _default_bound(divergence, prior, bounded_mu):
    if bounded_mu is not None or str(divergence).lower() != "aw":
        return bounded_mu
    m, _ = DEFAULT_PRIOR if prior is None or isinstance(prior, dict) else prior
    return float(m)


def fit_vae(x, *, latent_dim=2, divergence="standard", prior=None, beta=1.0, bounded_mu=None,
            channels=(16, 32, 64, 64), epochs=20, batch_size=128, lr=1e-3, weight_decay=0.0,
            device="auto", seed=0, val=None, patience=5, pixel_weight=None, augment=False,
            progress=True, checkpoint=None, resume=False, on_epoch_end=None, model=None,
           min_delta=0.0):
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
                kind="vae", rng=rng, desc=f"vae[{divergence}]", min_delta=min_delta)


def fit_latent_vae(z, *, latent_dim=1, divergence="sc", prior=None, beta=1.0, bounded_mu=None,
                   hidden=(64, 32), epochs=100, batch_size=256, lr=1e-3, weight_decay=0.0,
                   device="auto", seed=0, val=None, patience=10, progress=True, checkpoint=None,
                   resume=False, on_epoch_end=None, model=None, min_delta=0.0):
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
                kind="latent_vae", rng=rng, desc=f"latent-vae[{divergence}]", min_delta=min_delta)


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


def fit_hvae(x, *, ae_latent_dim=30, latent_dim=1, divergence="sc", prior=None, beta=1.0,
             bounded_mu=None, channels=(16, 32, 64, 64), hidden=(64, 32), epochs=20, latent_epochs=100,
             batch_size=128, latent_batch_size=256, lr=1e-3, latent_lr=1e-3, weight_decay=0.0,
             device="auto", seed=0, val=None, patience=5, latent_patience=10, pixel_weight=None,
             augment=False, progress=True, checkpoint=None, resume=False, ae=None):
    """Train the hierarchical model (A+Vr): `fit_ae`, then `fit_latent_vae` on its latents.

    Parameters
    ----------
    x : stamps (array / chunked / source)
    ae_latent_dim : int
        The AE's latent size (30).
    latent_dim : int
        The high-level VAE's latent size (1 or 2).
    divergence, prior, beta, bounded_mu, hidden
        Passed to `fit_latent_vae`.
    epochs, batch_size, lr, patience, pixel_weight, augment, channels
        Passed to `fit_ae`.
    latent_epochs, latent_batch_size, latent_lr, latent_patience
        Passed to `fit_latent_vae`.
    checkpoint : path or None
        Base name; the two stages write ``<stem>-ae<suffix>`` and
        ``<stem>-latent<suffix>`` (e.g. ``ck.pt`` -> ``ck-ae.pt``, ``ck-latent.pt``).
    ae : ConvAE or None
        A trained AE: skip the first stage.

    Returns
    -------
    model : HierarchicalVAE
        In evaluation mode.
    history : dict
        ``{'ae': history of fit_ae or None, 'latent': history of fit_latent_vae}``.
    """
    from astrohvae.models import HierarchicalVAE

    ck_ae = ck_lat = None
    if checkpoint is not None:
        p = Path(checkpoint)
        ck_ae = p.with_name(f"{p.stem}-ae{p.suffix or '.pt'}")
        ck_lat = p.with_name(f"{p.stem}-latent{p.suffix or '.pt'}")
    h_ae = None
    if ae is None:
        ae, h_ae = fit_ae(x, latent_dim=ae_latent_dim, channels=channels, epochs=epochs,
                          batch_size=batch_size, lr=lr, weight_decay=weight_decay, device=device, seed=seed,
                          val=val, patience=patience, pixel_weight=pixel_weight, augment=augment,
                          progress=progress, checkpoint=ck_ae, resume=resume)
    ae.eval()
    z = apply_batches(ae.encode, x, batch_size=256, device=device)
    zval = apply_batches(ae.encode, val, batch_size=256, device=device) if val is not None else None
    lat, h_lat = fit_latent_vae(z, latent_dim=latent_dim, divergence=divergence, prior=prior, beta=beta,
                                bounded_mu=bounded_mu, hidden=hidden, epochs=latent_epochs,
                                batch_size=latent_batch_size, lr=latent_lr, weight_decay=weight_decay,
                                device=device, seed=seed + 1, val=zval, patience=latent_patience,
                                progress=progress, checkpoint=ck_lat, resume=resume)
    model = HierarchicalVAE(ae, lat).eval()
    return model, {"ae": h_ae, "latent": h_lat}


MODEL_KINDS = ("ae", "vae", "vae-revised", "hvae")
"""Model names accepted by `train_from_store` / ``astrohvae train --model``."""


def split_by_field(fields, seed=0, fractions=(5, 1, 1)):
    """Assign every row to ``'train'``, ``'val'`` or ``'test'`` by its field.

    Whole fields go to one split (neighbouring sources, which share stamps,
    never straddle splits).  The fields are shuffled with ``seed`` and dealt
    to validation, then test, greedily filling each up to its share of the
    stamps (``fractions``, 5:1:1) -- fields differ a lot in source counts --
    and every split gets at least one field.  With fewer than 3 fields the rows themselves are split at random
    (a `UserWarning` says so).

    Parameters
    ----------
    fields : array of str or int, one per row
    seed : int
    fractions : (train, val, test)

    Returns
    -------
    numpy array of str (``'train'``, ``'val'``, ``'test'``), one per row.
    """
    import warnings

    fields = np.asarray(fields)
    rng = np.random.default_rng(seed)
    frac = np.asarray(fractions, float) / float(np.sum(fractions))
    out = np.empty(len(fields), dtype="<U5")
    uniq, counts = np.unique(fields, return_counts=True)
    if len(uniq) >= 3:
        # deal the shuffled fields to val, then test, until each holds its share of the
        # *stamps* (fields differ a lot in source counts); at least one field each
        order = [uniq[i] for i in rng.permutation(len(uniq))]
        size = dict(zip(uniq, counts))
        target = frac * len(fields)
        assign = {}
        for name, share in (("val", target[1]), ("test", target[2])):
            got = 0
            for f in order:  # greedy fill in random order without overshooting the share
                if f not in assign and got + size[f] <= share:
                    assign[f] = name
                    got += size[f]
            if got == 0:  # every free field is larger than the share: take the smallest
                free = [f for f in order if f not in assign]
                f = min(free, key=lambda g: size[g])
                assign[f] = name
        if len(assign) == len(uniq):  # keep at least one field for training
            biggest = max(uniq, key=lambda g: size[g])
            assign.pop(biggest)
        for i, f in enumerate(fields):
            out[i] = assign.get(f, "train")
        return out
    warnings.warn(f"only {len(uniq)} field(s): splitting train/val/test by stamp, not by field "
                  "(neighbouring sources may appear in two splits)", UserWarning, stacklevel=2)
    perm = rng.permutation(len(fields))
    n_val = int(round(frac[1] * len(fields)))
    n_test = int(round(frac[2] * len(fields)))
    out[:] = "train"
    out[perm[:n_val]] = "val"
    out[perm[n_val : n_val + n_test]] = "test"
    return out


def _store_sources(store, representation, rows_mask, split, in_memory_bytes):
    """One source per split: in memory when small, else streamed from the store."""
    from astrohvae.preprocess import network_input

    n = len(store)
    bytes_per_row = int(np.prod(store.flux.shape[1:])) * 4
    chunks = store.flux.chunks[0]
    edges = np.concatenate([[0], np.cumsum(chunks)])
    bounds = [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]

    def get_chunk(a, b):
        return network_input(store[a:b], representation)

    selected = rows_mask.sum()
    if selected * bytes_per_row <= in_memory_bytes:
        parts = {k: [] for k in ("train", "val", "test")}
        rows = {k: [] for k in ("train", "val", "test")}
        for a, b in bounds:
            keep = rows_mask[a:b]
            if not keep.any():
                continue
            arr = get_chunk(a, b)
            for k in parts:
                sel = keep & (split[a:b] == k)
                if sel.any():
                    parts[k].append(arr[sel])
                    rows[k].append(np.arange(a, b)[sel])
        out = {}
        for k in parts:
            out[k] = (ArraySource(np.concatenate(parts[k])), np.concatenate(rows[k])) if parts[k] else (None, None)
        return out
    out = {}
    for k in ("train", "val", "test"):
        mask = rows_mask & (split == k)
        if mask.any():
            out[k] = (ChunkedSource(get_chunk, bounds, select=lambda a, b, m=mask: m[a:b]), np.flatnonzero(mask))
        else:
            out[k] = (None, None)
    return out


def _train_kind(model, train_src, val_src, ckdir, *, epochs, batch_size, lr, device, seed, patience, progress,
                resume, augment, latent_dim, divergence, prior, beta, latent_epochs):
    common = dict(epochs=epochs, batch_size=batch_size, lr=lr, device=device, seed=seed, val=val_src,
                  patience=patience, progress=progress, resume=resume, augment=augment)
    if model == "ae":
        net, hist = fit_ae(train_src, latent_dim=latent_dim or 30, checkpoint=ckdir / "ae.pt", **common)
        return net, {"ae": hist}
    if model in ("vae", "vae-revised"):
        net, hist = fit_vae(train_src, latent_dim=latent_dim or 2, divergence=divergence, prior=prior, beta=beta,
                            checkpoint=ckdir / "vae.pt", **common)
        return net, {"vae": hist}
    return fit_hvae(train_src, latent_dim=latent_dim or 1, divergence=divergence, prior=prior, beta=beta,
                    latent_epochs=latent_epochs, checkpoint=ckdir / "hvae.pt", **common)


class _training_lock:
    """``<out>.checkpoints/LOCK`` holding our PID: two runs must not share checkpoints."""

    def __init__(self, ckdir):
        self.path = Path(ckdir) / "LOCK"

    def __enter__(self):
        import os

        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    pid = int(self.path.read_text().strip() or 0)
                    os.kill(pid, 0)
                except (ValueError, ProcessLookupError, FileNotFoundError):
                    self.path.unlink(missing_ok=True)  # stale lock of a dead run
                    continue
                except PermissionError:  # alive, another user's process
                    pass
                raise InputError(self.path.parent, f"another training run (pid {pid}) is using these checkpoints")
            with os.fdopen(fd, "w") as fh:
                fh.write(str(os.getpid()))
            return self
        raise InputError(self.path.parent, "cannot take the checkpoint lock")

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)
        return False


def _check_run_settings(ckdir, settings, resume):
    """With ``resume``, refuse checkpoints made with other settings; without, clear them."""
    import json

    path = Path(ckdir) / "run.json"
    settings = json.loads(json.dumps(settings))
    if resume and path.exists() and any(Path(ckdir).glob("*.pt")):
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(path, "unreadable run settings of the checkpoints") from exc
        diff = sorted(k for k in settings if old.get(k) != settings[k])
        if diff:
            raise InputError(ckdir, f"cannot resume: the checkpoints were made with other settings ({', '.join(diff)})")
    elif not resume:
        for f in Path(ckdir).glob("*.pt"):
            f.unlink()
    path.write_text(json.dumps(settings, indent=2))


def train_from_store(store, out, *, model="hvae", divergence=None, prior=None, beta=1.0, epochs=20,
                     latent_epochs=100, batch_size=128, lr=1e-3, latent_dim=None, device="auto", seed=0,
                     patience=5, resume=False, plots=False, representation=None, max_stamps=None,
                     augment=False, progress=True, in_memory_bytes=2 * 1024**3, overwrite=True):
    """Train a model on a stamp store and write it to ``out`` (what ``astrohvae train`` does).

    Parameters
    ----------
    store : path or StampStore
        A store made by `astrohvae.store.build_store`.
    out : path
        Output folder, written atomically: ``model.safetensors``,
        ``config.json`` (architecture, representation, divergence, prior,
        training data, metrics), ``metrics.json``, ``history.json`` and, with
        ``plots=True``, PNG figures.  Checkpoints go to ``<out>.checkpoints/``
        while training and are removed on success.
    model : {'ae', 'vae', 'vae-revised', 'hvae'}
        ``vae`` is the standard-prior VAE (V), ``vae-revised`` the VAE with a
        revised two-peak term (Vr, default ``divergence='sc'``), ``hvae`` the
        hierarchical A+Vr model (default ``divergence='sc'``).
    divergence : str or None
        See `get_divergence`.
    prior : (m, s) or None
        Two-peak prior (default `DEFAULT_PRIOR`).
    beta : float
    epochs, latent_epochs, batch_size, lr, patience, augment, seed
        Training settings (``latent_epochs``: the hvae's second stage).
    latent_dim : int or None
        ``ae``: the AE's latent size (30); ``vae``: 2; ``hvae``: the high-level latent (1).
    device : str
    resume : bool
        Continue from the checkpoints of an interrupted run with the same ``out``.
    plots : bool
    representation : str or None
        A key of `astrohvae.preprocess.REPRESENTATIONS` (default
        ``preprocess.DEFAULT_REPRESENTATION``).
    max_stamps : int or None
        Use a random subset (seeded) of at most this many stamps.
    in_memory_bytes : int
        Load the network input into memory when it is smaller than this,
        else stream it from the store chunk by chunk every epoch.
    overwrite : bool
        Replace an existing ``out`` that is a weights folder written by
        astrohvae; any other existing non-empty folder, or the store itself,
        is refused before training (`astrohvae.io.atomic.check_output`).

    Returns
    -------
    dict
        ``metrics`` (train/val/test losses), ``n`` (rows per split), ``out`` (path),
        ``weights_sha256``.
    """
    import json
    import shutil
    import warnings

    import torch

    from astrohvae import __version__
    from astrohvae.device import resolve_device
    from astrohvae.io.atomic import atomic_path, check_output
    from astrohvae.preprocess import DEFAULT_REPRESENTATION, REPRESENTATIONS
    from astrohvae.store import open_store
    from astrohvae.weights import save_weights, weights_hash

    if model not in MODEL_KINDS:
        raise ValueError(f"unknown model {model!r}; choose from {', '.join(MODEL_KINDS)}")
    representation = representation or DEFAULT_REPRESENTATION
    if representation not in REPRESENTATIONS:
        raise ValueError(f"unknown representation {representation!r}; choose from {sorted(REPRESENTATIONS)}")
    if model == "vae":
        divergence = divergence or "standard"
    elif model in ("vae-revised", "hvae"):
        divergence = divergence or "sc"
    if model == "vae-revised" and divergence == "standard":
        raise ValueError("vae-revised needs a revised divergence (sc, dkl, aw, pw, quad)")
    prior = tuple(float(v) for v in (prior or DEFAULT_PRIOR))
    get_divergence(divergence or "standard", prior)  # fail early on a bad name
    out = Path(out)
    store_path = getattr(store, "path", store)
    check_output(out, inputs=[store_path] if isinstance(store_path, (str, Path)) else [], kind="weights",
                 overwrite=overwrite, directory=True)
    dev = resolve_device(device)

    st = store if hasattr(store, "flux") and hasattr(store, "meta") else open_store(store)
    n_all = len(st)
    if n_all < 3:
        raise InputError(getattr(st, "path", store), f"only {n_all} stamps; need at least 3 to train")
    meta = st.meta
    fields = np.asarray(meta["field"]).astype(str)
    rng = np.random.default_rng(seed)
    rows_mask = np.ones(n_all, bool)
    if max_stamps is not None and max_stamps < n_all:
        rows_mask[:] = False
        rows_mask[rng.choice(n_all, size=int(max_stamps), replace=False)] = True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        split = split_by_field(fields, seed=seed)
    notes = [str(w.message) for w in caught]
    for msg in notes:
        warnings.warn(msg, UserWarning, stacklevel=2)
    srcs = _store_sources(st, representation, rows_mask, split, in_memory_bytes)
    train_src, _ = srcs["train"]
    val_src, _ = srcs["val"]
    test_src, _ = srcs["test"]
    if train_src is None:
        raise InputError(getattr(st, "path", store), "no stamps in the training split")

    ckdir = out.with_name(out.name + ".checkpoints")
    ckdir.mkdir(exist_ok=True)
    run_settings = {"store": str(getattr(st, "path", "")), "n_stamps_store": n_all, "model": model,
                    "divergence": divergence, "prior": list(prior), "beta": beta, "latent_dim": latent_dim,
                    "representation": representation, "max_stamps": max_stamps, "seed": seed,
                    "batch_size": batch_size, "lr": lr}
    with _training_lock(ckdir):
        _check_run_settings(ckdir, run_settings, resume)
        net, histories = _train_kind(model, train_src, val_src, ckdir, epochs=epochs, batch_size=batch_size,
                                     lr=lr, device=dev, seed=seed, patience=patience, progress=progress,
                                     resume=resume, augment=augment, latent_dim=latent_dim,
                                     divergence=divergence, prior=prior, beta=beta, latent_epochs=latent_epochs)
    net.eval()

    metrics = {}
    for name, (src, _) in (("train", srcs["train"]), ("val", srcs["val"]), ("test", srcs["test"])):
        if src is None:
            continue
        terms = loss_terms(net, src, divergence=divergence or "standard", prior=prior, beta=beta,
                           batch_size=256, device=dev)
        metrics.update({f"{name}_{k}": v for k, v in terms.items()})
    counts = {k: int(np.count_nonzero(rows_mask & (split == k))) for k in ("train", "val", "test")}
    split_fields = {k: sorted(set(fields[rows_mask & (split == k)].tolist())) for k in ("train", "val", "test")}
    config = {
        "model": model,
        "representation": representation,
        "divergence": divergence,
        "prior": None if model == "ae" or divergence == "standard" else list(prior),
        "beta": beta,
        "training": {
            "store": str(getattr(st, "path", "")), "n_stamps_store": n_all, "n": counts,
            "fields": split_fields, "split": "by field 5:1:1" if not notes else "by stamp 5:1:1 (< 3 fields)",
            "max_stamps": max_stamps, "seed": seed, "epochs": epochs, "latent_epochs": latent_epochs,
            "batch_size": batch_size, "lr": lr, "patience": patience, "augment": augment,
            "device": str(dev), "torch_version": torch.__version__,
        },
        "metrics": metrics,
        "astrohvae_version": __version__,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, directory=True, kind="weights") as tmp:
        save_weights(tmp, {"model": net}, config)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (tmp / "history.json").write_text(json.dumps(histories, indent=2, default=float) + "\n")
        if plots:
            _plots(tmp, net, histories, model, srcs, meta, dev)
    sha = weights_hash(out)
    shutil.rmtree(ckdir, ignore_errors=True)
    return {"out": out, "metrics": metrics, "n": counts, "weights_sha256": sha}


def _plots(folder, net, histories, kind, srcs, meta, device):
    """Loss curves; for hvae the latent histogram and a scatter coloured by truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [(k, h) for k, h in histories.items() if h]
    fig, axes = plt.subplots(1, len(stages), figsize=(5 * len(stages), 3.6), squeeze=False)
    for ax, (name, h) in zip(axes[0], stages):
        ax.plot(h["epoch"], h["train_loss"], "o-", label="train")
        if np.isfinite(h["val_loss"]).any():
            ax.plot(h["epoch"], h["val_loss"], "s-", label="validation")
        if h.get("best_epoch"):
            ax.axvline(h["best_epoch"], color="grey", ls=":", label="best")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.set_title(name)
        ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "loss.png", dpi=110)
    plt.close(fig)
    if kind != "hvae":
        return

    mus, sig, rows = [], [], []
    for name in ("train", "val", "test"):
        src, r = srcs[name]
        if src is None:
            continue
        _, mu, logvar = apply_batches(net.encode, src, batch_size=256, device=device)
        mus.append(mu)
        sig.append(np.exp(0.5 * logvar))
        rows.append(r)
    mu, sig, rows = np.concatenate(mus), np.concatenate(sig), np.concatenate(rows)
    truth = np.asarray(meta["truth_type"])[rows] if "truth_type" in meta.colnames else np.full(len(rows), -1)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    bins = np.linspace(np.percentile(mu[:, 0], 0.5), np.percentile(mu[:, 0], 99.5), 60)
    ax.hist(mu[:, 0], bins=bins, color="0.6", label="all")
    if (truth >= 0).any():
        ax.hist(mu[truth == 0, 0], bins=bins, histtype="step", color="tab:blue", lw=1.5, label="true stars")
        ax.hist(mu[truth == 1, 0], bins=bins, histtype="step", color="tab:red", lw=1.5, label="true galaxies")
    ax.set_xlabel("z_hvae[0] (posterior mean)")
    ax.set_ylabel("stamps")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "latent_hist.png", dpi=110)
    plt.close(fig)

    if mu.shape[1] >= 2:
        yv, ylabel = mu[:, 1], "z_hvae[1]"
    elif "truth_mag_r" in meta.colnames and np.isfinite(np.asarray(meta["truth_mag_r"])[rows]).any():
        yv, ylabel = np.asarray(meta["truth_mag_r"])[rows], "true r magnitude"
    else:
        yv, ylabel = np.log10(sig[:, 0]), "log10 sigma of z_hvae[0]"
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    colours = {-1: ("0.5", "no truth"), 0: ("tab:blue", "star"), 1: ("tab:red", "galaxy")}
    # the most frequent class first, so that the rarer one (often the stars) stays visible on top
    for code, (c, label) in sorted(colours.items(), key=lambda kv: -np.count_nonzero(truth == kv[0])):
        sel = truth == code
        if sel.any():
            ax.scatter(mu[sel, 0], yv[sel], s=4, c=c, alpha=0.5, label=label, lw=0)
    ax.set_xlabel("z_hvae[0]")
    ax.set_ylabel(ylabel)
    ax.legend(markerscale=3)
    fig.tight_layout()
    fig.savefig(folder / "latent_scatter.png", dpi=110)
    plt.close(fig)
