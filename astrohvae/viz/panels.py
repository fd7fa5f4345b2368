"""Segmentation panels (image, segments, classes) for `astrohvae segment --plots`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from astrohvae import BANDS


# ----------------------------------------------------------------------------
# figures (the seed's Fig. 5, 7 and 8)
# ----------------------------------------------------------------------------
def _colour(img, lo=-1.0, hi=12.0):
    """RGB (i, r, g) of a network input, asinh noise units mapped to [0, 1]."""
    rgb = np.stack([img[BANDS.index(b)] for b in ("i", "r", "g")], axis=-1)
    return np.clip((rgb - lo) / (hi - lo), 0, 1)


def _label_colours(segm):
    data = np.asarray(getattr(segm, "data", segm))
    rng = np.random.default_rng(1)
    lut = rng.uniform(0.25, 1.0, (int(data.max(initial=0)) + 1, 3))
    lut[0] = 0.0
    return lut[data]


_CLASS_RGB = np.array([[0.5, 0.5, 0.5], [0.85, 0.1, 0.1], [1.0, 0.6, 0.0]])
"""Fig. 8 colours: grey background, red stars, orange galaxies."""


def plot_panels(img, results, out, class_map=None, zoom=None, title=""):
    """Write a PNG of the field in colour, each variant's output and mask, and the class map.

    Parameters
    ----------
    img : numpy.ndarray
        Network input ``(5, ny, nx)`` (`network_input`).
    results : dict
        ``{name: (segm or None, recon or None)}`` per variant (or the
        photutils baseline, with ``recon`` None).
    out : path
        PNG file (written atomically).
    class_map : numpy.ndarray, optional
        uint8 map (0 background, 1 star, 2 galaxy).
    zoom : tuple of slices, optional
        ``(slice_y, slice_x)`` to show a cut-out instead of the whole field.
    title : str
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from astrohvae.io.atomic import atomic_path

    sl = (slice(None), slice(None)) if zoom is None else tuple(zoom)
    names = list(results)
    has_recon = any(r[1] is not None for r in results.values())
    ncol = 1 + len(names) + (class_map is not None)
    nrow = 2 if has_recon else 1
    ny, nx = img[:, sl[0], sl[1]].shape[1:]
    w = 3.2 * ncol
    h = 3.2 * nrow * ny / nx + 0.6
    fig, axes = plt.subplots(nrow, ncol, figsize=(w, h), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    axes[0, 0].imshow(_colour(img[:, sl[0], sl[1]]), origin="lower", interpolation="nearest")
    axes[0, 0].set_title("field (i,r,g)", fontsize=8)
    for j, name in enumerate(names, start=1):
        segm, recon = results[name]
        data = np.zeros(img.shape[1:], np.int32) if segm is None else np.asarray(getattr(segm, "data", segm))
        n = 0 if segm is None else int(getattr(segm, "n_labels", len(np.unique(data)) - 1))
        axes[0, j].imshow(_label_colours(data[sl]), origin="lower", interpolation="nearest")
        axes[0, j].set_title(f"{name}: {n} segments", fontsize=8)
        if has_recon and recon is not None:
            axes[1, j].imshow(_colour(recon[:, sl[0], sl[1]]), origin="lower", interpolation="nearest")
            axes[1, j].set_title(f"{name}: reconstruction", fontsize=8)
    if class_map is not None:
        axes[0, -1].imshow(_CLASS_RGB[np.asarray(class_map)[sl]], origin="lower", interpolation="nearest")
        axes[0, -1].set_title("class map: grey bkg, red star, orange galaxy", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(out)


def zoom_window(segm, shape, size=256):
    """A window around the largest segment (for the zoomed figure)."""
    ny, nx = shape
    size = min(size, ny, nx)
    if segm is None or segm.n_labels == 0:
        y0, x0 = (ny - size) // 2, (nx - size) // 2
    else:
        k = int(np.argmax(segm.areas))
        sl = segm.slices[k]
        cy, cx = (sl[0].start + sl[0].stop) // 2, (sl[1].start + sl[1].stop) // 2
        y0 = int(np.clip(cy - size // 2, 0, ny - size))
        x0 = int(np.clip(cx - size // 2, 0, nx - size))
    return slice(y0, y0 + size), slice(x0, x0 + size)
