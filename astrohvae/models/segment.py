"""Fully convolutional segmentation networks with hypercolumn taps (torch only).

Three variants after the seed paper's section 4:

* ``vae-hc``  -- a convolutional VAE (Gaussian latent map at the bottleneck),
* ``ae-hc``   -- the same network as a plain auto-encoder,
* ``ae-res-hc`` -- the auto-encoder with residual (skip) connections adding
  each down-sampling layer's output to its up-sampling partner.

Every network maps a ``(N, C, H, W)`` tile to a reconstruction of the same
shape (``H`` and ``W`` multiples of ``2 ** len(widths[1:])``).  The feature
maps of the named layers ("taps") can be read back and turned into
*hypercolumns* (Hariharan et al. 2015): per-pixel concatenations of chosen
feature maps, each upsampled to full resolution and multiplied by a weight.

Tap names, from input to output, for ``widths=(w0, w1, ..., wL)``::

    enc0 (w0, full res)  enc1 (w1, 1/2) ... encL (wL, 1/2**L)
    latent (wL, 1/2**L)  -- the code (the mean for the VAE)
    decL (wL, 1/2**L) ... dec1 (w1, 1/2)  dec0 (w0, full res)
    out  (C, full res)   -- the reconstruction

Training loops live in ``examples/train_segmenter.py`` and
`astrohvae.segmentation`; this module holds no I/O.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from astrohvae.models import register_model

__all__ = ["SegmentNet", "VARIANTS", "build_segment_net", "hypercolumns", "receptive_radius"]

VARIANTS = {
    "vae-hc": {"variational": True, "residual": False},
    "ae-hc": {"variational": False, "residual": False},
    "ae-res-hc": {"variational": False, "residual": True},
}
"""Variant name -> `SegmentNet` keyword arguments."""


def _act():
    return nn.LeakyReLU(0.1)


@register_model
class SegmentNet(nn.Module):
    """A small fully convolutional (V)AE whose layers can be tapped.

    Parameters
    ----------
    in_channels : int
        Number of image bands (5 for ugriz).
    widths : tuple of int
        Channels at full resolution, then after each stride-2 down-sampling.
        ``len(widths) - 1`` down-samplings, so tile sides must be multiples
        of ``2 ** (len(widths) - 1)``.
    variational : bool
        If True the bottleneck is a Gaussian (``mu``, ``logvar`` maps) sampled
        with the reparameterisation trick in training mode; in eval mode the
        mean is used.
    residual : bool
        If True each encoder level's output is added to the decoder output at
        the same resolution (the paper's "residual connections").
    """

    def __init__(self, in_channels=5, widths=(8, 16, 32, 32), variational=False, residual=False):
        super().__init__()
        self.in_channels = int(in_channels)
        self.widths = tuple(int(w) for w in widths)
        self.variational = bool(variational)
        self.residual = bool(residual)
        L = len(self.widths) - 1
        self.levels = L
        self.enc = nn.ModuleList()
        self.enc.append(nn.Sequential(nn.Conv2d(in_channels, self.widths[0], 3, padding=1), _act()))
        for i in range(1, L + 1):
            self.enc.append(nn.Sequential(
                nn.Conv2d(self.widths[i - 1], self.widths[i], 3, stride=2, padding=1), _act()))
        wl = self.widths[-1]
        if self.variational:
            self.mu = nn.Conv2d(wl, wl, 3, padding=1)
            self.logvar = nn.Conv2d(wl, wl, 3, padding=1)
        else:
            self.code = nn.Conv2d(wl, wl, 3, padding=1)
        # decoder: dec[L] works at the bottleneck resolution; dec[i] (i < L)
        # upsamples from level i+1 to level i.
        dec = [None] * (L + 1)
        dec[L] = nn.Sequential(nn.Conv2d(wl, wl, 3, padding=1), _act())
        for i in range(L - 1, -1, -1):
            dec[i] = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(self.widths[i + 1], self.widths[i], 3, padding=1), _act())
        self.dec = nn.ModuleList(dec)
        self.out = nn.Conv2d(self.widths[0], in_channels, 1)

    def get_config(self):
        """Constructor keyword arguments (for `astrohvae.models.weights.save_weights`)."""
        return {"in_channels": self.in_channels, "widths": list(self.widths),
                "variational": self.variational, "residual": self.residual}

    @property
    def multiple(self):
        """Tile sides must be multiples of this number."""
        return 2 ** self.levels

    def tap_names(self):
        """All tap names, input to output."""
        L = self.levels
        return ([f"enc{i}" for i in range(L + 1)] + ["latent"]
                + [f"dec{i}" for i in range(L, -1, -1)] + ["out"])

    def tap_channels(self, name):
        """Number of channels of tap ``name``."""
        if name == "out":
            return self.in_channels
        if name == "latent":
            return self.widths[-1]
        return self.widths[int(name[3:])]

    def forward(self, x, taps=None):
        """Reconstruct ``x``.

        Parameters
        ----------
        x : torch.Tensor
            ``(N, C, H, W)``.
        taps : iterable of str, optional
            Tap names whose feature maps are returned too.

        Returns
        -------
        recon : torch.Tensor
            ``(N, C, H, W)``.
        extra : dict
            ``{'mu': ..., 'logvar': ...}`` for the VAE (empty for the AE),
            plus the requested taps (native resolution).
        """
        want = set(taps or ())
        extra = {}
        skips = []
        h = x
        for i, layer in enumerate(self.enc):
            h = layer(h)
            skips.append(h)
            if f"enc{i}" in want:
                extra[f"enc{i}"] = h
        if self.variational:
            mu, logvar = self.mu(h), self.logvar(h).clamp(-12.0, 8.0)
            extra["mu"], extra["logvar"] = mu, logvar
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        else:
            z = self.code(h)
        if "latent" in want:
            extra["latent"] = z
        h = z
        for i in range(self.levels, -1, -1):
            h = self.dec[i](h)
            if self.residual:
                h = h + skips[i]
            if f"dec{i}" in want:
                extra[f"dec{i}"] = h
        recon = self.out(h)
        if "out" in want:
            extra["out"] = recon
        return recon, extra


def hypercolumns(net, x, taps, weights=None):
    """Per-pixel hypercolumns of ``x``: chosen feature maps at full resolution.

    Parameters
    ----------
    net : SegmentNet
    x : torch.Tensor
        ``(N, C, H, W)`` network input.
    taps : sequence of str
        Layers to concatenate (see `SegmentNet.tap_names`).
    weights : sequence of float, optional
        One multiplier per tap (default 1): the knob trading faint-object
        sensitivity (deep layers) against noise (shallow layers).

    Returns
    -------
    torch.Tensor
        ``(N, D, H, W)`` with ``D = sum(net.tap_channels(t) for t in taps)``.
    """
    _, extra = net(x, taps=taps)
    size = x.shape[-2:]
    weights = [1.0] * len(taps) if weights is None else list(weights)
    if len(weights) != len(taps):
        raise ValueError("need one weight per tap")
    cols = []
    for name, w in zip(taps, weights):
        f = extra[name]
        if f.shape[-2:] != size:
            f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
        cols.append(f * float(w))
    return torch.cat(cols, dim=1)


def receptive_radius(net):
    """A generous bound (pixels) on how far a pixel's output depends on its input.

    Tiles overlapping by at least this much give seam-free whole-field maps.
    """
    L = net.levels
    # encoder: 3x3 at full res, then one 3x3 stride-2 per level; bottleneck
    # and decoder 3x3 convs at each level; bilinear tap upsampling adds 1 px
    # at the coarsest scale.
    r = 1
    for i in range(1, L + 1):
        r += 2 ** (i - 1) + 2 ** i          # stride-2 conv (enc) + decoder conv at level i
    r += 2 * 2 ** L + 2 ** L                 # bottleneck convs + bilinear upsampling
    r += 1                                   # dec0 conv
    return int(r)


def build_segment_net(variant="ae-res-hc", in_channels=5, widths=(8, 16, 32, 32)):
    """A fresh `SegmentNet` for one of `VARIANTS`."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {sorted(VARIANTS)}")
    return SegmentNet(in_channels=in_channels, widths=widths, **VARIANTS[variant])

