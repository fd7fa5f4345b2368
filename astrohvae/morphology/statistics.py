"""Per-stamp profile statistics, computed chunk by chunk on lazily backed stamps."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from astrohvae import BANDS
from astrohvae.conventions import MASK_INVALID, MASK_OTHER, MASK_OWN
from astrohvae.stamps.preprocess import (
    SOURCE_RADIUS,
    central_window,
    clean_gri,
    clean_stamps,
    reuse_cleaned,
    source_flux,
)

__all__ = ['radius_grid', 'chunked_statistics', 'loaded', 'profile_features', 'recentre']

def radius_grid(ny, nx, cy=None, cx=None):
    cy = ny // 2 if cy is None else cy
    cx = nx // 2 if cx is None else cx
    yy, xx = np.mgrid[:ny, :nx]
    return np.hypot(yy - cy, xx - cx)


def centroids(img, radius=3.0):
    """First-moment centroid offsets (dy, dx) of ``img`` (N, ny, nx) within ``radius`` of the centre."""
    n, ny, nx = img.shape
    win = central_window(ny, nx, int(np.ceil(radius)))  # every weight outside it is 0
    cy, cx = ny // 2 - win[0].start, nx // 2 - win[1].start
    sub = np.asarray(img)[(slice(None),) + win]
    wy, wx = sub.shape[1:]
    yy, xx = np.mgrid[:wy, :wx]
    w = (radius_grid(wy, wx, cy, cx) <= radius)[None] * np.clip(sub, 0, None)
    tot = w.sum(axis=(1, 2))
    tot = np.where(tot > 0, tot, 1.0)
    dy = (w * (yy - cy)).sum(axis=(1, 2)) / tot
    dx = (w * (xx - cx)).sum(axis=(1, 2)) / tot
    return np.clip(dy, -1.0, 1.0), np.clip(dx, -1.0, 1.0)


def recentre(x, dy, dx):
    """Shift images ``x`` (N, B, ny, nx) by (-dy, -dx) pixels with a Fourier shift."""
    from scipy import fft

    n, b, ny, nx = x.shape
    ky = np.fft.fftfreq(ny)[None, :]
    kx = np.fft.rfftfreq(nx)[None, :]
    ft = fft.rfft2(x, axes=(2, 3))  # complex64 for float32 images: float32 results either way
    # the phase ramp is separable: exp(2 pi i (ky dy + kx dx)) = exp(2 pi i ky dy) exp(2 pi i kx dx)
    py = np.exp(2j * np.pi * ky * np.asarray(dy, float)[:, None]).astype(ft.dtype)
    px = np.exp(2j * np.pi * kx * np.asarray(dx, float)[:, None]).astype(ft.dtype)
    ft *= py[:, None, :, None]
    ft *= px[:, None, None, :]
    out = fft.irfft2(ft, s=(ny, nx), axes=(2, 3), overwrite_x=True)
    return out.astype(np.float32, copy=False)


CHUNK = 2048
"""Stamps processed at once by the per-stamp statistics (bounds their temporaries)."""


def load_chunk(x, dtype):
    if isinstance(x, np.ndarray):
        return x
    compute = getattr(x, "compute", None)
    if compute is not None:  # a dask array: read in this thread (a worker's one core)
        x = compute(scheduler="synchronous")
    return np.asarray(x, dtype=dtype)


def loaded(stamps):
    """``stamps`` with numpy arrays: lazily backed ones (dask, zarr) are read, once.

    StampSet-likes whose ``flux``, ``mask`` and ``sky_sigma`` are numpy arrays
    are returned as they are.
    """
    parts = {"flux": np.float32, "mask": np.uint8, "sky_sigma": np.float32}
    if all(isinstance(getattr(stamps, k), np.ndarray) for k in parts):
        return stamps
    arrays = {k: load_chunk(getattr(stamps, k), t) for k, t in parts.items()}
    meta = getattr(stamps, "meta", None)
    if hasattr(stamps, "__getitem__") and meta is not None:
        return type(stamps)(arrays["flux"], arrays["mask"], arrays["sky_sigma"], meta)
    return SimpleNamespace(**arrays, meta=meta)


def _concat(parts):
    if isinstance(parts[0], dict):
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return np.concatenate(parts)


def chunked_statistics(stamps, *fns):
    """Run several per-stamp statistics over ``stamps``, reading each chunk once.

    The stamps are taken `CHUNK` at a time (read from their store when lazily
    backed, `loaded`); every ``fn(chunk)`` (an array, or a dict of arrays,
    along the stamp axis) runs on the same chunk, so the chunk is read and
    cleaned once for all of them (`astrohvae.stamps.preprocess.clean_gri` and
    `clean_stamps` reuse their last result).

    Returns
    -------
    list
        One concatenated result per ``fn``.
    """
    n = len(stamps.flux)
    if n <= CHUNK or not hasattr(stamps, "__getitem__"):
        # a store (`astrohvae.stamps.store.StampStore`) is read through its own slicing
        sub = loaded(stamps if isinstance(stamps.flux, np.ndarray) or not hasattr(stamps, "__getitem__")
                     else stamps[0:n])
        with reuse_cleaned():
            return [fn(sub) for fn in fns]
    parts = [[] for _ in fns]
    for i in range(0, n, CHUNK):
        sub = loaded(stamps[i : i + CHUNK])
        with reuse_cleaned():
            for k, fn in enumerate(fns):
                parts[k].append(fn(sub))
    return [_concat(p) for p in parts]


def per_stamp_chunks(fn):
    """Run a per-stamp statistic ``fn(stamps, ...)`` on slices of `CHUNK` stamps.

    The statistics below treat every stamp on its own, so slicing changes
    nothing but the size of their float64 temporaries (a crowded field's
    10,000 stamps would otherwise need several GB).  Outputs (arrays, or dicts
    of arrays, along the stamp axis) are concatenated.  Lazily backed stamps
    are read chunk by chunk (`chunked_statistics`).
    """
    import functools

    @functools.wraps(fn)
    def wrapper(stamps, *args, **kwargs):
        return chunked_statistics(stamps, lambda sub: fn(sub, *args, **kwargs))[0]

    return wrapper


@per_stamp_chunks
def profile_features(stamps, band_sum=("g", "r", "i"), r_total=8.0):
    """Half-light radius and concentration of every stamp.

    Parameters
    ----------
    stamps : StampSet-like (``flux``, ``mask``, ``sky_sigma``)
    band_sum : tuple of str
        Bands summed to form the image measured.

    Returns
    -------
    dict of ndarray (N,)
        ``r_half`` (pixels; radius enclosing half of the flux within
        ``r_total`` pixels, other sources masked -- a fixed aperture, so that
        the segment's size, which shrinks with S/N, does not bias it), ``concentration`` (flux within
        1.5 px over flux within 5 px), ``flux`` (g+r+i own flux, nmgy),
        ``snr`` (that flux over its noise), ``aperture_snr`` (the g+r+i flux
        of the valid pixels within `SOURCE_RADIUS` of the centre over its
        white noise: unlike ``snr`` it does not depend on how far the
        footprint was grown).
    """
    from astrohvae.morphology.psf import morphology_bands, shell_profile
    flux = np.asarray(stamps.flux, dtype=np.float32)
    mask = np.asarray(stamps.mask, dtype=np.uint8)
    idx = [BANDS.index(b) for b in band_sum]
    # every radius below is <= r_total: measure on the central window only
    # (same pixels in the same order as on the whole stamp, so same values)
    cy, cx = flux.shape[2] // 2, flux.shape[3] // 2
    win = central_window(*flux.shape[2:], int(np.ceil(max(r_total, 5.0))))
    wy, wx = win[0].stop - win[0].start, win[1].stop - win[1].start
    r = radius_grid(wy, wx, cy - win[0].start, cx - win[1].start)
    mwin = mask[(slice(None),) + win]
    fwin = flux[:, idx][(slice(None), slice(None)) + win]
    # valid pixels only: the bands that cover the aperture (`morphology_bands`)
    use, good, missing = morphology_bands(fwin, mwin, r <= r_total)
    if not ((mwin & MASK_INVALID) != 0).any():  # every band valid everywhere: the cached cleaning
        img = clean_stamps(flux[:, idx], mask, window=win).sum(axis=1).astype(np.float64)
    else:
        img = (clean_stamps(fwin, mwin, per_band=True) * use[:, :, None, None]).sum(axis=1).astype(np.float64)
    n, ny, nx = img.shape
    own = (mask & MASK_OWN) != 0
    sel = (r <= r_total)[None] & good
    order = np.argsort(r.ravel(), kind="stable")
    rs = r.ravel()[order]
    vals = (img * sel).reshape(n, -1)[:, order]
    cum = np.cumsum(vals, axis=1)
    # enclosed flux at each distinct radius (last pixel of each radius shell)
    ur, first = np.unique(rs, return_index=True)
    last = np.r_[first[1:] - 1, rs.size - 1]
    keep = ur <= r_total
    ur, cu = ur[keep], cum[:, last[keep]]
    tot = cu[:, -1]
    half = 0.5 * np.where(tot > 0, tot, np.nan)
    above = cu >= half[:, None]
    k = np.where(above.any(axis=1), np.argmax(above, axis=1), len(ur) - 1)
    kp = np.maximum(k - 1, 0)
    rows = np.arange(n)
    c0, c1 = cu[rows, kp], cu[rows, k]
    frac = np.where(c1 > c0, (half - c0) / np.where(c1 > c0, c1 - c0, 1.0), 0.0)
    r_half = np.where(k > 0, ur[kp] + np.clip(frac, 0, 1) * (ur[k] - ur[kp]), ur[k])
    r_half = np.where(np.isfinite(half), r_half, np.nan)
    f_in = (img * (r <= 1.5)[None]).sum(axis=(1, 2))
    f_out = (img * (r <= 5.0)[None]).sum(axis=(1, 2))
    if missing.any():
        # apertures with pixels no used band covers (edge strips, the field's
        # edge): each radius shell's flux from its valid pixels' brightness
        m = np.flatnonzero(missing)
        full = (r <= r_total)[None] & ((mwin[m] & MASK_OTHER) == 0)
        ur2, cu2 = shell_profile(img[m], sel[m], full, r)
        tot2 = cu2[:, -1]
        half2 = 0.5 * np.where(tot2 > 0, tot2, np.nan)
        above2 = cu2 >= half2[:, None]
        k2 = np.where(above2.any(axis=1), np.argmax(above2, axis=1), len(ur2) - 1)
        kp2 = np.maximum(k2 - 1, 0)
        rows2 = np.arange(len(m))
        c0, c1 = cu2[rows2, kp2], cu2[rows2, k2]
        frac2 = np.where(c1 > c0, (half2 - c0) / np.where(c1 > c0, c1 - c0, 1.0), 0.0)
        rh2 = np.where(k2 > 0, ur2[kp2] + np.clip(frac2, 0, 1) * (ur2[k2] - ur2[kp2]), ur2[k2])
        r_half[m] = np.where(np.isfinite(half2), rh2, np.nan)
        f_in[m] = cu2[:, np.searchsorted(ur2, 1.5, side="right") - 1]
        f_out[m] = cu2[:, np.searchsorted(ur2, 5.0, side="right") - 1]
        r_half[m[~sel[m].any(axis=(1, 2))]] = np.nan  # no valid pixel at all: not measured
    conc = np.where(f_out > 0, f_in / np.where(f_out > 0, f_out, 1.0), np.nan)
    sky = np.asarray(stamps.sky_sigma, dtype=np.float64)
    gri = clean_gri(flux, mask)
    part = np.flatnonzero(((mask & MASK_INVALID) != 0).any(axis=(1, 2)))
    if part.size:  # a pixel some band lacks still holds the others' light (`clean_stamps` per band)
        gri = np.array(gri)
        gri[part] = clean_stamps(flux[part][:, idx], mask[part], per_band=True).sum(axis=1)
    fsrc = source_flux(None, mask, sky, gri=gri)
    noise = np.sqrt((sky[:, idx] ** 2).sum(axis=1) * np.maximum(own.sum(axis=(1, 2)), 1))
    snr = fsrc / np.maximum(noise, 1e-12)
    # the same light in a fixed circle: an S/N that the footprint's extent (the user's isophote) does not move
    circ = (r <= SOURCE_RADIUS)[None] & good
    n_ap = np.maximum(circ.sum(axis=(1, 2)), 1)
    f_ap = (img * circ).sum(axis=(1, 2))
    aperture_snr = f_ap / np.maximum(np.sqrt((sky[:, idx] ** 2).sum(axis=1) * n_ap), 1e-12)
    return {"r_half": r_half, "concentration": conc, "flux": fsrc, "snr": snr, "aperture_snr": aperture_snr}
