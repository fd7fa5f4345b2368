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
    "ChunkedSource",
    "ArraySource",
    "make_source",
    "get_divergence",
    "DIVERGENCES",
    "DEFAULT_PRIOR",
    "train_from_store",
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

    Each epoch visits the chunks in a random order and shuffles the rows of
    each chunk; rows left over at the end of a chunk are carried into the
    next, so all batches but the last have ``batch_size`` rows.
    """

    def __init__(self, get_chunk, bounds, select=None):
        self.get_chunk = get_chunk
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

    def batches(self, rng, batch_size, shuffle=True):
        order = rng.permutation(len(self.bounds)) if shuffle else range(len(self.bounds))
        carry = None
        for k in order:
            arr, _ = self._load(*self.bounds[k])
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

    def run_eval(src):
        model.eval()
        sums, n = {}, 0
        with torch.inference_mode(), amp_ctx:
            for xb in src.batches(None, batch_size, shuffle=False):
                xb = torch.from_numpy(np.ascontiguousarray(xb)).to(device, non_blocking=True)
                terms = loss_fn(model, xb)
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + float(v.float().sum())
                n += xb.shape[0]
        return {k: v / max(n, 1) for k, v in sums.items()}

    epoch = start_epoch
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
            xb = torch.from_numpy(np.ascontiguousarray(xb)).to(device, non_blocking=True)
            if augment:
                xb = _augment(xb, rng)
            with amp_ctx:
                terms = loss_fn(model, xb)
            loss = terms["loss"].float().mean()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: loss is {float(loss)} at epoch {epoch + 1}; lower lr?")
            opt.zero_grad(set_to_none=True)
            if scaler is not None and scaler.is_enabled():
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            bsz = xb.shape[0]
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach().float().sum())
            n += bsz
            if progress:
                bar.set_postfix(loss=f"{sums['loss'] / n:.4g}")
        bar.close()
        train_terms = {k: v / max(n, 1) for k, v in sums.items()}
        val_terms = run_eval(val_source) if val_source is not None else {}
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

    def loss_fn(m, xb):
        _, xh = m(xb)
        r = _image_recon(xh, xb, w, "mean")
        return {"loss": r, "recon": r}

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

    def loss_fn(m, xb):
        mu, logvar, xh = m(xb)
        r = _image_recon(xh, xb, w, "sum")
        d = div(mu.float(), logvar.float())
        return {"loss": r + beta * d, "recon": r, "div": d}

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

    def loss_fn(m, zb):
        mu, logvar, recon, target = m(zb)
        r = ((recon.float() - target.float()) ** 2).sum(1)
        d = div(mu.float(), logvar.float())
        return {"loss": r + beta * d, "recon": r, "div": d}

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


def train_from_store(*args, **kwargs):  # filled in below (kept at the end of the module)
    return _train_from_store(*args, **kwargs)


def _train_from_store(*args, **kwargs):
    raise NotImplementedError("train_from_store is not implemented yet")

