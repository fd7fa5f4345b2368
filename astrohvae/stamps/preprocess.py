"""What the networks see: stamp representations.

A *representation* turns a `~astrohvae.stamps.cutouts.StampSet` (fluxes in
nanomaggies, masks, per-band sky noise) into the float32 array
``(N, 5, 64, 64)`` a network is trained on.  Every model saves the name of its
representation in its configuration, so that the same transformation is
applied at inference (`network_input`).

Available representations (`REPRESENTATIONS`):

``'lupt'``
    The paper's recipe: every pixel in asinh magnitudes (luptitudes, per band
    softening of `astrohvae.SOFTENING`), then each stamp standardised on its
    own (mean 0, standard deviation 1 over all its pixels and bands), sign
    flipped so that bright is positive.  Whole stamp, neighbours included.
``'lupt_band'``
    As ``'lupt'`` but standardised per band.
``'source'``
    Only the source: pixels of other sources (mask bit 2) and invalid pixels
    (bit 4) set to 0; fluxes divided by the source's own flux (g+r+i inside
    its segment, `source_flux`) so brightness is gone; multiplied by
    `SOURCE_SCALE` so that a point source peaks near 1.
``'source_asinh'``
    ``'source'`` followed by ``asinh(x / ASINH_SOFT) * ASINH_SOFT`` which
    compresses the bright core and keeps the faint wings visible.

All are pure functions of the stamps: no state, no labels.
"""

from __future__ import annotations

import contextlib
import contextvars

import numpy as np

from astrohvae import BANDS
from astrohvae.conventions import GRI as _GRI
from astrohvae.conventions import MASK_INVALID, MASK_OTHER, MASK_OWN
from astrohvae.photometry import luptitude

__all__ = ['REPRESENTATIONS', 'DEFAULT_REPRESENTATION', 'network_input', 'source_flux', 'clean_stamps', 'clean_gri', 'band_valid', 'crop_window', 'CleanCache', 'reuse_cleaned', 'SOURCE_SCALE', 'ASINH_SOFT']

SOURCE_SCALE = 10.0
"""Multiplier applied after dividing by the source flux (a PSF of FWHM ~1.4"
puts ~7 % of its flux in the central pixel, so point sources peak near 0.7)."""

ASINH_SOFT = 0.05
"""Softening of the ``'source_asinh'`` compression, in ``'source'`` units."""



def _arrays(stamps):
    flux = np.asarray(stamps.flux, dtype=np.float32)
    if flux.ndim != 4:
        raise ValueError(f"stamps.flux must be (N, bands, ny, nx), got shape {flux.shape}")
    mask = getattr(stamps, "mask", None)
    if mask is None:
        mask = np.zeros((flux.shape[0],) + flux.shape[2:], dtype=np.uint8)
    mask = np.asarray(mask, dtype=np.uint8)
    sky = getattr(stamps, "sky_sigma", None)
    if sky is None:
        sky = np.full(flux.shape[:2], np.nan, dtype=np.float32)
    sky = np.asarray(sky, dtype=np.float32)
    return flux, mask, sky


def band_valid(flux, mask):
    """Which pixels of each band hold data: bool ``(N, B, ny, nx)``.

    A stamp has one mask plane: its bit 4 (`MASK_INVALID`) marks a pixel that
    is invalid in *some* band (off the field, masked, or in the edge strip
    that a band offset from r along the scan does not cover), and
    `astrohvae.stamps.cutouts.cut_stamps` writes 0 into the bands that have no data
    there.  A pixel is valid in band b unless its flux is not finite, or bit 4
    is set and its band-b flux is exactly 0 (a background-subtracted measured
    pixel is never exactly 0).  Pixels without bit 4 are valid in every band.
    """
    flux = np.asarray(flux)
    inv = (np.asarray(mask) & MASK_INVALID) != 0
    return np.isfinite(flux) & ~(inv[:, None] & (flux == 0))


def clean_stamps(flux, mask, window=None, per_band=False):
    """Zero the pixels of other sources and invalid pixels; NaN -> 0.

    Parameters
    ----------
    flux : ndarray (N, B, ny, nx)
    mask : ndarray uint8 (N, ny, nx)
    window : tuple of slice, optional
        ``(rows, cols)`` of the stamp to clean (e.g. `central_window`); the
        result then covers only that window, with the same values as the
        window of the whole cleaned stamp.  Statistics measured near the
        centre clean only the pixels they read.
    per_band : bool
        Zero an invalid pixel (mask bit 4) only in the bands that have no
        data there (`band_valid`), not in all five: what the per-band
        statistics of sources in a strip seen in fewer bands measure.  Not
        cached.

    Returns
    -------
    ndarray float32, same shape as ``flux`` (or its window): a new, read-only
    array (the last whole-stamp result is reused when the same ``flux`` and
    ``mask`` arrays are cleaned again; arrays changed in place in between are
    not detected).
    """
    flux = np.asarray(flux)
    mask = np.asarray(mask)
    if per_band:
        if window is not None:
            flux, mask = flux[:, :, window[0], window[1]], mask[:, window[0], window[1]]
        out = np.where(band_valid(flux, mask) & ((mask & MASK_OTHER) == 0)[:, None], flux, 0).astype(np.float32)
        out.flags.writeable = False
        return out
    if window is not None:
        rows, cols = window
        return _clean(flux[:, :, rows, cols], mask[:, rows, cols])
    return _last_result("clean", flux, mask, _clean, CLEAN_CACHE_BYTES)


class CleanCache:
    """The last `clean_stamps` / `clean_gri` result of each kind, keyed by the identity of the input arrays.

    Only active inside `reuse_cleaned` (`astrohvae.morphology.statistics.chunked_statistics`
    opens one around each chunk, so the statistics of one pass clean a chunk
    once); outside it every call computes afresh, and nothing outlives the pass.
    """

    def __init__(self):
        self.last = {}

    def get(self, kind, flux, mask, make, max_bytes=None):
        """``make(flux, mask)``, or the last result of ``kind`` for the same arrays."""
        key = (id(flux), id(mask), flux.shape, mask.shape)
        hit = self.last.get(kind)
        if hit is not None and hit[0] == key and hit[1] is flux and hit[2] is mask:
            return hit[3]
        out = make(flux, mask)
        self.last[kind] = (key, flux, mask, out) if max_bytes is None or out.nbytes <= max_bytes else None
        return out


_ACTIVE_CACHE = contextvars.ContextVar("astrohvae_clean_cache", default=None)


@contextlib.contextmanager
def reuse_cleaned():
    """Within this block, `clean_stamps` and `clean_gri` reuse their last result for the same arrays."""
    token = _ACTIVE_CACHE.set(CleanCache())
    try:
        yield
    finally:
        _ACTIVE_CACHE.reset(token)


def _last_result(kind, flux, mask, make, max_bytes=None):
    cache = _ACTIVE_CACHE.get()
    return make(flux, mask) if cache is None else cache.get(kind, flux, mask, make, max_bytes)


def _clean(flux, mask):
    out = np.array(flux, dtype=np.float32, copy=True)
    zero = ~np.isfinite(out)
    zero |= ((mask & (MASK_OTHER | MASK_INVALID)) != 0)[:, None]
    np.copyto(out, np.float32(0.0), where=zero)
    out.flags.writeable = False
    return out


def clean_gri(flux, mask):
    """g+r+i image of the cleaned stamps (`clean_stamps`), float32 ``(N, ny, nx)``.

    The whole-stamp image the centroids, the recentring and `source_flux`
    need, made without a cleaned copy of all five bands.  The last result is
    reused for the same ``flux`` and ``mask`` arrays (read-only).
    """
    return _last_result("gri", np.asarray(flux), np.asarray(mask), _gri)


def _gri(flux, mask):
    g, r, i = (np.asarray(flux[:, b], dtype=np.float32) for b in _GRI)
    out = g + r
    out += i
    odd = np.flatnonzero(~np.isfinite(out).all(axis=(1, 2)))  # a finite sum has finite terms
    if odd.size:
        parts = [np.where(np.isfinite(x[odd]), x[odd], np.float32(0.0)) for x in (g, r, i)]
        out[odd] = parts[0] + parts[1] + parts[2]
    out[(mask & (MASK_OTHER | MASK_INVALID)) != 0] = 0.0
    out.flags.writeable = False
    return out


CLEAN_CACHE_BYTES = 1 << 28
"""`clean_stamps` results up to 256 MB (about 3200 stamps: one `astrohvae.morphology.statistics.CHUNK`) are remembered."""


def central_window(ny, nx, h):
    """Slices of the pixels within ``h`` of the stamp centre ``(ny // 2, nx // 2)`` (clipped to the stamp).

    Per-stamp statistics that only use pixels within ``h`` of the centre run on
    this window instead of the whole stamp; the centre lies at
    ``(ny // 2 - win[0].start, nx // 2 - win[1].start)`` inside it.
    """
    return (slice(max(ny // 2 - h, 0), ny // 2 + h + 1), slice(max(nx // 2 - h, 0), nx // 2 + h + 1))


SOURCE_RADIUS = 4.0
"""Radius (pixels) of the circle about the stamp centre that stands for a source where its footprint
does not: `source_flux`'s fallback and the footprint-independent S/N of
`astrohvae.morphology.statistics.profile_features` (``aperture_snr``)."""


def source_flux(flux, mask, sky_sigma=None, radius=SOURCE_RADIUS, gri=None):
    """The source's own flux in g+r+i (nanomaggies), used to remove brightness.

    Sum over the pixels of the source's own segment (mask bit 1).  Where the
    segment is empty or its flux is not positive, the flux inside a circle of
    ``radius`` pixels around the centre is used instead; the result is floored
    at the noise of that sum (so faint sources are never blown up by noise).

    Parameters
    ----------
    flux : ndarray (N, 5, ny, nx) or None
        Cleaned (see `clean_stamps`); not read when ``gri`` is given.
    mask : ndarray uint8 (N, ny, nx)
    sky_sigma : ndarray (N, 5), optional
    radius : float
        Radius of the fallback circle, pixels.
    gri : ndarray (N, ny, nx), optional
        The g+r+i image of the cleaned stamps (`clean_gri`), if already made.

    Returns
    -------
    ndarray float64 (N,), strictly positive.
    """
    if gri is None:
        gri = np.asarray(flux)[:, _GRI].sum(axis=1, dtype=np.float64)  # (N, ny, nx)
    n, ny, nx = gri.shape
    own = (mask & MASK_OWN) != 0
    yy, xx = np.mgrid[:ny, :nx]
    circ = (yy - ny // 2) ** 2 + (xx - nx // 2) ** 2 <= radius**2
    h = int(np.ceil(radius))
    win = central_window(ny, nx, h)
    f_ap = (gri[(slice(None),) + win] * circ[win]).sum(axis=(1, 2), dtype=np.float64)  # the circle lies in the window
    f_seg = np.where(own, gri, 0).sum(axis=(1, 2), dtype=np.float64)
    f = np.where(own.any(axis=(1, 2)) & (f_seg > 0), f_seg, f_ap)
    if sky_sigma is not None and np.all(np.isfinite(sky_sigma)):
        noise = np.sqrt((np.asarray(sky_sigma, dtype=np.float64)[:, _GRI] ** 2).sum(axis=1) * circ.sum())
    else:
        noise = np.zeros(n)
    floor = np.maximum(3.0 * noise, 1e-6)
    return np.maximum(f, floor)


def crop_window(ny, nx, crop):
    """Slices of the central ``crop`` x ``crop`` pixels (all of the stamp when ``crop`` is None or larger)."""
    if crop is None or crop >= min(ny, nx):
        return slice(None), slice(None)
    cy, cx, h = ny // 2, nx // 2, crop // 2
    return slice(cy - h, cy + h), slice(cx - h, cx + h)


def _lupt(stamps, per_band=False, crop=None):
    flux, mask, _ = _arrays(stamps)
    flux = np.nan_to_num(flux)
    bands = BANDS[: flux.shape[1]]
    x = -luptitude(flux, bands[0]) if len(bands) == 1 else -np.stack(
        [luptitude(flux[:, k], b) for k, b in enumerate(bands)], axis=1
    )
    axes = (2, 3) if per_band else (1, 2, 3)
    mu = x.mean(axis=axes, keepdims=True)
    sd = x.std(axis=axes, keepdims=True)
    rows, cols = crop_window(*x.shape[2:], crop)
    return ((x[..., rows, cols] - mu) / np.maximum(sd, 1e-6)).astype(np.float32)


def _rep_lupt(stamps, crop=None):
    return _lupt(stamps, per_band=False, crop=crop)


def _rep_lupt_band(stamps, crop=None):
    return _lupt(stamps, per_band=True, crop=crop)


def _rep_source(stamps, crop=None):
    flux, mask, sky = _arrays(stamps)
    # the source flux is the whole stamp's; only the crop is cleaned and scaled
    f = source_flux(None, mask, sky, gri=clean_gri(flux, mask))
    x = np.array(clean_stamps(flux, mask, window=crop_window(*flux.shape[2:], crop)), dtype=np.float32)
    x *= (SOURCE_SCALE / f).astype(np.float32)[:, None, None, None]
    return x


def _rep_source_asinh(stamps, crop=None):
    x = _rep_source(stamps, crop)
    x *= np.float32(1.0 / ASINH_SOFT)
    np.arcsinh(x, out=x)
    x *= np.float32(ASINH_SOFT)
    return x


REPRESENTATIONS = {
    "lupt": _rep_lupt,
    "lupt_band": _rep_lupt_band,
    "source": _rep_source,
    "source_asinh": _rep_source_asinh,
}
"""Name -> function(stamps, crop=None) -> float32 (N, 5, 64, 64), or its central crop."""

DEFAULT_REPRESENTATION = "source_asinh"
"""Representation of the shipped classifier (see `astrohvae.classify`)."""


def network_input(stamps, representation=DEFAULT_REPRESENTATION, crop=None):
    """Network input for ``stamps`` in the named representation.

    Parameters
    ----------
    stamps : StampSet or object with ``flux`` (N,5,ny,nx) nanomaggies,
        ``mask`` uint8 (N,ny,nx) and ``sky_sigma`` (N,5).
    representation : str
        A key of `REPRESENTATIONS`.
    crop : int, optional
        Return only the central ``crop`` x ``crop`` pixels (`crop_window`),
        with the values they have in the whole stamp's representation
        (normalisations still use the whole stamp).

    Returns
    -------
    ndarray float32 (N, 5, ny, nx), or (N, 5, crop, crop)
    """
    try:
        fn = REPRESENTATIONS[representation]
    except KeyError:
        raise ValueError(
            f"unknown representation {representation!r}; choose from {sorted(REPRESENTATIONS)}"
        ) from None
    shape = np.asarray(stamps.flux).shape
    if len(shape) and shape[0] == 0:
        rows, cols = crop_window(*shape[2:], crop)
        return np.zeros(shape, np.float32)[..., rows, cols].copy()
    return fn(stamps, crop)
