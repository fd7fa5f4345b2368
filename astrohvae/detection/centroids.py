"""Source centres on the field: Gaussian-windowed centroids (SExtractor's XWIN), all sources at once."""

from __future__ import annotations

import numpy as np

__all__ = ['source_stamps', 'windowed_centroids']


def source_stamps(shape, cy, cx, half):
    """Square windows of side ``2 half + 1`` centred on the rounded ``(cy, cx)``.

    Returns ``(flat index, inside, y, x)``, each ``(n, m, m)``; ``flat index``
    is clipped to the field where ``inside`` is False.
    """
    ny, nx = shape
    off = np.arange(-half, half + 1)
    yy = np.rint(cy).astype(np.int64)[:, None, None] + off[None, :, None]
    xx = np.rint(cx).astype(np.int64)[:, None, None] + off[None, None, :]
    inside = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
    return np.clip(yy, 0, ny - 1) * nx + np.clip(xx, 0, nx - 1), inside, yy, xx


def windowed_centroids(image, cy, cx, sigma=1.5, half=6, n_iter=8, max_shift=3.0, segm_data=None, labels=None,
                       valid=None):
    """Gaussian-windowed centroids (SExtractor's XWIN/YWIN), all sources at once.

    Iterates ``c <- c + 2 sum(w I (p - c)) / sum(w I)`` with
    ``w = exp(-|p - c|^2 / (2 sigma^2))`` over a window of ``2 half + 1``
    pixels around the start, which converges to the centre of a
    Gaussian-like source.  A source whose centroid would move more than
    ``max_shift`` pixels from its start, or whose windowed flux is not
    positive, keeps its start.

    Parameters
    ----------
    image : numpy.ndarray
        ``(ny, nx)``, background subtracted (e.g. smoothed; noise units).
    cy, cx : numpy.ndarray
        Starting centres (pixels).
    sigma : float
        Window sigma (pixels), about the PSF's.
    segm_data, labels : numpy.ndarray, optional
        Label image of the field and each source's own label: the pixels of
        every other segment are left out of its window (a neighbour's light
        cannot pull the centroid).
    valid : numpy.ndarray, optional
        bool ``(ny, nx)``: a source with an invalid pixel (saturated, masked)
        in its window keeps its start (a window over a hole is pulled off
        the source's centre).

    Returns
    -------
    cy, cx : numpy.ndarray
    """
    cy0, cx0 = np.asarray(cy, np.float64), np.asarray(cx, np.float64)
    if cy0.size == 0:
        return cy0.copy(), cx0.copy()
    idx, inside, yy, xx = source_stamps(image.shape, cy0, cx0, half)
    v = np.where(inside, image.ravel()[idx], 0.0)
    if segm_data is not None:
        lab = np.asarray(segm_data).ravel()[idx]
        v = np.where((lab == 0) | (lab == np.asarray(labels)[:, None, None]), v, 0.0)
    hole = np.zeros(cy0.size, bool)
    if valid is not None:
        hole = (inside & ~np.asarray(valid).ravel()[idx]).any(axis=(1, 2))
    y, x = cy0.copy(), cx0.copy()
    for _ in range(n_iter):
        dy = yy - y[:, None, None]
        dx = xx - x[:, None, None]
        w = np.exp((dy * dy + dx * dx) * (-0.5 / sigma ** 2)) * v
        W = w.sum(axis=(1, 2))
        ok = W > 0
        Ws = np.where(ok, W, 1.0)
        y = np.where(ok, y + 2.0 * (w * dy).sum(axis=(1, 2)) / Ws, y)
        x = np.where(ok, x + 2.0 * (w * dx).sum(axis=(1, 2)) / Ws, x)
        far = (np.hypot(y - cy0, x - cx0) > max_shift) | hole
        y[far], x[far] = cy0[far], cx0[far]
    return y, x
