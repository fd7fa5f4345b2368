"""Losses and the fits built on the engine: `fit_ae`, `fit_vae`, `fit_latent_vae`."""

from __future__ import annotations

__all__ = ['fit_ae', 'fit_vae', 'fit_latent_vae', 'loss_terms', 'get_divergence', 'DIVERGENCES', 'DEFAULT_PRIOR']

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


def mean_terms(model, loss_fn, source, batch_size, device):
    import torch

    from astrohvae.models.engine import amp_context, to_device

    amp_ctx, _ = amp_context(device)
    model.eval()
    sums, n = {}, 0
    with torch.inference_mode(), amp_ctx:
        for xb in source.batches(None, batch_size, shuffle=False):
            n += len(xb[0]) if isinstance(xb, tuple) else xb.shape[0]
            xb = to_device(xb, device)
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
    from astrohvae.models.engine import apply_batches, make_source, pixel_weight_tensor

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
        w = pixel_weight_tensor(pixel_weight, (s, s), dev)
        if isinstance(model, ConvVAE):
            fn = _vae_loss(get_divergence(divergence, prior), beta, w)
        elif isinstance(model, ConvAE):
            fn = _ae_loss(w)
        else:
            raise TypeError(f"no loss defined for {type(model).__name__}")
    return mean_terms(model, fn, src, batch_size, dev)


def fit_ae(x, *, latent_dim=30, channels=(16, 32, 64, 64), epochs=20, batch_size=128, lr=1e-3,
           weight_decay=0.0, device="auto", seed=0, val=None, patience=5, pixel_weight=None,
           augment=False, progress=True, checkpoint=None, resume=False, on_epoch_end=None, model=None,
           min_delta=0.0, schedule=None):
    from astrohvae.models.engine import (
        fit_loop,
        infer_shape,
        pixel_weight_tensor,
        prepare_inputs,
    )
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

    dev, rng = prepare_inputs(device, seed)
    c, s = infer_shape(x)
    if model is None:
        model = ConvAE(latent_dim=latent_dim, in_channels=c, size=s, channels=channels)
    w = pixel_weight_tensor(pixel_weight, (s, s), dev)

    loss_fn = _ae_loss(w)
    return fit_loop(model, loss_fn, x, val=val, epochs=epochs, batch_size=batch_size, lr=lr,
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
    from astrohvae.models.engine import (
        fit_loop,
        infer_shape,
        pixel_weight_tensor,
        prepare_inputs,
    )
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
    dev, rng = prepare_inputs(device, seed)
    c, s = infer_shape(x)
    if model is None:
        model = ConvVAE(latent_dim=latent_dim, bounded_mu=_default_bound(divergence, prior, bounded_mu),
                        in_channels=c, size=s, channels=channels)
    w = pixel_weight_tensor(pixel_weight, (s, s), dev)

    loss_fn = _vae_loss(div, beta, w)
    return fit_loop(model, loss_fn, x, val=val, epochs=epochs, batch_size=batch_size, lr=lr,
                weight_decay=weight_decay, device=dev, seed=seed, patience=patience, progress=progress,
                checkpoint=checkpoint, resume=resume, on_epoch_end=on_epoch_end, augment=augment,
                kind="vae", rng=rng, desc=f"vae[{divergence}]", min_delta=min_delta, schedule=schedule)


def fit_latent_vae(z, *, latent_dim=1, divergence="sc", prior=None, beta=1.0, bounded_mu=None,
                   hidden=(64, 32), epochs=100, batch_size=256, lr=1e-3, weight_decay=0.0,
                   device="auto", seed=0, val=None, patience=10, progress=True, checkpoint=None,
                   resume=False, on_epoch_end=None, model=None, min_delta=0.0, schedule=None):
    from astrohvae.models.engine import fit_loop, make_source, prepare_inputs
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
    dev, rng = prepare_inputs(device, seed)
    sample = make_source(z).peek()
    if sample.ndim != 2:
        raise ValueError(f"expected latents (N, D), got batches of shape {sample.shape}")
    if model is None:
        model = LatentVAE(in_dim=sample.shape[1], latent_dim=latent_dim, hidden=hidden,
                          bounded_mu=_default_bound(divergence, prior, bounded_mu))

    loss_fn = _latent_loss(div, beta)
    return fit_loop(model, loss_fn, z, val=val, epochs=epochs, batch_size=batch_size, lr=lr,
                weight_decay=weight_decay, device=dev, seed=seed, patience=patience, progress=progress,
                checkpoint=checkpoint, resume=resume, on_epoch_end=on_epoch_end, augment=False,
                kind="latent_vae", rng=rng, desc=f"latent-vae[{divergence}]", min_delta=min_delta, schedule=schedule)
