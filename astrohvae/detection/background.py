"""The sky level and its noise per band (`estimate_background`)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ['mad_std', 'Background', 'estimate_background']

# ---------------------------------------------------------------------------
# Background
# ---------------------------------------------------------------------------
@dataclass
class Background:
    """Per-band sky level and noise of a field.

    Attributes
    ----------
    level : numpy.ndarray
        float32 ``(5, ny, nx)`` sky level (nanomaggies); subtract it.
    rms : numpy.ndarray
        float32 ``(5, ny, nx)`` sky noise per pixel (nanomaggies).
    sigma : numpy.ndarray
        float32 ``(5,)`` robust scalar pixel noise per band (MAD of the
        background-subtracted sky pixels).  NaN for a fully masked band.
    source_mask : numpy.ndarray or None
        bool ``(ny, nx)``: pixels masked as sources in the second pass.
    """

    level: np.ndarray
    rms: np.ndarray
    sigma: np.ndarray
    source_mask: np.ndarray | None = None

    def subtract(self, field):
        """Background-subtracted data, 0 where the field is masked (float32)."""
        out = field.data - self.level
        out[field.mask] = 0.0
        return out.astype(np.float32, copy=False)


def mad_std(values, overwrite=False):
    """1.4826 x median absolute deviation; ``overwrite``: ``values`` is scratch (no copies)."""
    if values.size == 0:
        return np.nan
    med = np.median(values, overwrite_input=overwrite)
    if overwrite:
        dev = np.subtract(values, med, out=values)
        np.abs(dev, out=dev)
        return 1.482602218505602 * np.median(dev, overwrite_input=True)
    return 1.482602218505602 * np.median(np.abs(values - med))


BACKGROUND_STEP = 2
"""The sigma-clipped box statistics of the background use every 2nd row and column
of each 64x64 box (1024 sky pixels a box; the box-level noise of the median grows
by sqrt(4) to ~0.04 sigma before the 3x3 grid filter)."""

SIGMA_CLIP_ITERS = 3
"""Sigma-clipping iterations per background box (with the sources already masked
the clip has converged by then: level/rms maps change by < 1e-2 of the rms)."""


def _background_band(image, bad, box_size, filter_size, source_mask=None):
    """(level, rms) maps of one band; falls back to scalars when the grid fails."""
    from astropy.stats import SigmaClip
    from photutils.background import Background2D, MedianBackground, StdBackgroundRMS

    ny, nx = image.shape
    mask = bad if source_mask is None else (bad | source_mask)
    good = ~mask
    if good.sum() < 10:
        mask = bad
        good = ~bad
    if good.sum() < 10:
        nan = np.full(image.shape, np.nan, np.float32)
        return np.zeros(image.shape, np.float32), nan
    box = (min(box_size, ny), min(box_size, nx))
    nboxy, nboxx = -(-ny // box[0]), -(-nx // box[1])
    fs = min(filter_size, nboxy, nboxx)
    fs = fs if fs % 2 == 1 else max(fs - 1, 1)
    # the box statistics on every BACKGROUND_STEP-th row and column: the same
    # box grid, a quarter of the pixels (sky pixels are independent)
    st = BACKGROUND_STEP if min(box) >= 16 * BACKGROUND_STEP else 1
    sub = (slice(None, None, st),) * 2
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bkg = Background2D(
                # float64: photutils then takes its box medians with bottleneck
                # (for float32 it falls back to numpy's apply_along_axis, ~5x slower)
                np.asarray(image[sub], np.float64),
                (box[0] // st, box[1] // st),
                mask=mask[sub],
                # the 3x3 median filter of the box grid is done below, vectorised
                # (photutils calls nanmedian once per box through generic_filter)
                filter_size=(1, 1),
                sigma_clip=SigmaClip(sigma=3.0, maxiters=SIGMA_CLIP_ITERS),
                bkg_estimator=MedianBackground(),
                bkg_rms_estimator=StdBackgroundRMS(),
                # a box needs >= 10% unmasked pixels (crowded fields mask most)
                exclude_percentile=90.0,
            )
        med = np.asarray(_median_filter_grid(np.asarray(bkg.background_mesh), fs), np.float32)
        mrms = np.asarray(_median_filter_grid(np.asarray(bkg.background_rms_mesh), fs), np.float32)
        if not (np.all(np.isfinite(med)) and np.all(np.isfinite(mrms))):
            raise ValueError("background grid incomplete")
        # bilinear expansion of the box grid (photutils' own resize, a cubic
        # zoom, is slower and its `interpolator` option is deprecated)
        wy, wx = _linear_weights(ny, box[0], med.shape[0]), _linear_weights(nx, box[1], med.shape[1])
        return (wy @ med @ wx.T).astype(np.float32), (wy @ mrms @ wx.T).astype(np.float32)
    except ValueError:
        # too few usable boxes (e.g. a crowded field with most pixels masked as
        # sources): box medians / MADs of whatever sky is left, then scalars
        for m in (mask, bad):
            coarse = _coarse_background(image, m, box_size)
            if coarse is not None:
                return coarse
        from astropy.stats import sigma_clipped_stats

        _, med, std = sigma_clipped_stats(image[good], sigma=3.0, maxiters=5)
        return (np.full(image.shape, med, np.float32), np.full(image.shape, std, np.float32))


def _median_filter_grid(grid, size):
    """``generic_filter(grid, nanmedian, size, mode='constant', cval=nan)`` (photutils'
    box-grid filter), vectorised: the nanmedian of the stacked shifted grids."""
    if size <= 1:
        return grid
    h = size // 2
    gy, gx = grid.shape
    padded = np.full((gy + 2 * h, gx + 2 * h), np.nan, dtype=grid.dtype)
    padded[h:h + gy, h:h + gx] = grid
    stack = np.stack([padded[i:i + gy, j:j + gx] for i in range(size) for j in range(size)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return _nanmedian(stack, axis=0)


def _nanmedian(a, axis):
    try:
        import bottleneck as bn  # optional; much faster than numpy's nanmedian
    except ImportError:
        return np.nanmedian(a, axis=axis)
    return bn.nanmedian(a, axis=axis)


def _linear_weights(n, box, ngrid):
    """(n, ngrid) matrix interpolating box-centre values linearly to pixels."""
    pos = np.clip((np.arange(n) + 0.5) / box - 0.5, 0, ngrid - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, ngrid - 1)
    frac = pos - lo
    w = np.zeros((n, ngrid), np.float32)
    w[np.arange(n), lo] += 1 - frac
    w[np.arange(n), hi] += frac
    return w


def _coarse_background(image, bad, box_size, step=1):
    """Fast first-pass (level, rms): per-box median and MAD, bilinearly expanded.

    ``step`` > 1 takes the statistics on every ``step``-th row and column of
    each box only (the first pass just has to find the sources).
    """
    ny, nx = image.shape
    by, bx = min(box_size, ny), min(box_size, nx)
    gy, gx = -(-ny // by), -(-nx // bx)
    padded = np.full((gy * by, gx * bx), np.nan, np.float32)
    padded[:ny, :nx] = np.where(bad, np.nan, image)
    s = max(1, min(int(step), by // 4 or 1, bx // 4 or 1))
    boxes = padded.reshape(gy, by, gx, bx)[:, ::s, :, ::s]
    boxes = boxes.transpose(0, 2, 1, 3).reshape(gy, gx, -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = _nanmedian(boxes, axis=2)
        mad = 1.482602218505602 * _nanmedian(np.abs(boxes - med[..., None]), axis=2)
    for grid in (med, mad):
        if np.all(np.isnan(grid)):
            return None
        grid[np.isnan(grid)] = np.nanmedian(grid)
    wy, wx = _linear_weights(ny, by, gy), _linear_weights(nx, bx, gx)
    level = wy @ med @ wx.T
    rms = wy @ mad @ wx.T
    return level.astype(np.float32), rms.astype(np.float32)


def _source_mask_from(residual, rms, bad, dilate=3, npixels=5):
    """Pixels belonging to sources: 3x3-smoothed residual above 3 sigma, dilated."""
    smooth = _box3_mean(np.where(bad, np.float32(0), residual).astype(np.float32, copy=False))
    with np.errstate(invalid="ignore"):
        hot = (smooth > rms) & ~bad  # 3 sigma of the 3x3 mean (noise rms/3)
    labels, n = ndimage.label(hot)
    if n:
        sizes = np.bincount(labels.ravel())
        keep = sizes >= npixels
        keep[0] = False
        hot = keep[labels]
    if dilate:
        hot = _dilate_disk(hot, dilate)
    return hot


def _box3_mean(a):
    """``ndimage.uniform_filter(a, 3, mode='constant')`` by shifted sums (~4x faster)."""
    p = np.zeros((a.shape[0] + 2, a.shape[1] + 2), a.dtype)
    p[1:-1, 1:-1] = a
    rows = p[:-2] + p[1:-1] + p[2:]
    out = rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]
    out *= np.float32(1.0 / 9.0)
    return out


def _dilate_disk(mask, r):
    r = int(r)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return ndimage.binary_dilation(mask, structure=(xx**2 + yy**2) <= r * r)


COARSE_STEP = 2
"""The first (source-finding) background pass samples every 2nd row and column of each box."""

SIGMA_STEP = 2
"""The scalar per-band sigma is the MAD of every 2nd row and column of the sky pixels."""


def estimate_background(field, box_size=64, filter_size=3):
    """Per-band sky level and noise with photutils `Background2D`.

    Two passes.  First a quick per-box median / MAD map of each band finds
    the sources (3x3-smoothed residual above 3 sigma in any band, at least 5
    pixels, dilated by 3 px).  Then, with those pixels masked, a
    sigma-clipped photutils `Background2D` per band (median level,
    standard-deviation rms) gives the maps.  `Field.mask` pixels are always excluded.

    Parameters
    ----------
    field : astrohvae.io.field.Field
    box_size : int
        Box side in pixels (clipped to the image size).
    filter_size : int
        Median filter over boxes (odd; reduced for tiny images).

    Returns
    -------
    Background
    """
    data = np.asarray(field.data, np.float32)
    bad = np.asarray(field.mask, bool) | ~np.isfinite(data)
    nb = data.shape[0]
    level = np.zeros_like(data)
    rms = np.zeros_like(data)
    srcmask = np.zeros(data.shape[1:], bool)
    for b in range(nb):
        coarse = _coarse_background(data[b], bad[b], box_size, step=COARSE_STEP)
        if coarse is None:
            continue
        lv, rm = coarse
        # dilation of the union = union of the dilations: dilate once below
        srcmask |= _source_mask_from(data[b] - lv, rm, bad[b], dilate=0)
    srcmask = _dilate_disk(srcmask, 3)
    sigma = np.full(nb, np.nan, np.float32)
    for b in range(nb):
        lv, rm = _background_band(data[b], bad[b], box_size, filter_size, srcmask)
        level[b], rms[b] = lv, rm
        # the scalar sigma (a fallback where the rms map is invalid) from every
        # 2nd row and column: a quarter of the median work, ~1e-3 relative change
        sub = (slice(None, None, SIGMA_STEP),) * 2
        sky = ~(bad[b][sub] | srcmask[sub])
        if sky.sum() < 10:
            sky = ~bad[b][sub]
        sigma[b] = mad_std((data[b][sub] - lv[sub])[sky], overwrite=True)  # a fresh array: scratch
    return Background(level, rms, sigma, srcmask)
