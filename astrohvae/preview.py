"""Quick-look PNG of a field with its star/galaxy classification.

An asinh-stretched colour composite (i, r, g as red, green, blue; Lupton et
al. 2004) of the field with a marker on every catalogue source: circles for
stars, squares for galaxies, plus a legend with the counts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from astrohvae.errors import OutputError
from astrohvae.io.atomic import atomic_path

__all__ = ["colour_image", "write_preview"]

STAR_COLOUR = "#00e5ff"
GALAXY_COLOUR = "#ff9f1c"


def colour_image(field, *, q=8.0, stretch=None):
    """(ny, nx, 3) uint8 gri composite of ``field`` with an asinh stretch.

    ``stretch`` (nanomaggies) defaults to 8 × the robust sky noise of the r band;
    black is the (subtracted) sky level.
    """
    from astropy.visualization import make_lupton_rgb

    idx = {b: i for i, b in enumerate(field.bands)}
    planes = []
    for b in ("i", "r", "g"):
        img = np.where(field.mask[idx[b]], 0.0, field.data[idx[b]]).astype(np.float32)
        planes.append(img)
    r = planes[1][~field.mask[idx["r"]]]
    sigma = 0.0
    if r.size:
        sample = r[:: max(1, r.size // 200_000)]
        sigma = float(1.4826 * np.median(np.abs(sample - np.median(sample))))
    if stretch is None:
        stretch = 8.0 * sigma or 0.05
    # black at the sky level (frames are sky-subtracted): faint sources stay visible
    return make_lupton_rgb(planes[0], planes[1], planes[2], minimum=0.0, stretch=stretch, Q=q)


def write_preview(path, field, table, *, title=None, max_width_px=2048, marker_size=None):
    """Write the preview PNG atomically.

    Parameters
    ----------
    path : path
        PNG file to write.
    field : astrohvae.io.field.Field
        The field (aligned bands).
    table : astropy.table.Table
        Catalogue with ``x``, ``y`` (0-based) and ``class``.
    title : str, optional
        Figure title.

    Returns
    -------
    pathlib.Path
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    path = Path(path)
    rgb = colour_image(field)
    ny, nx = rgb.shape[:2]
    dpi = 100
    width_px = min(max_width_px, max(nx, 640))
    scale = width_px / nx
    fig = plt.figure(figsize=(width_px / dpi, (ny * scale + 40) / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, ny * scale / (ny * scale + 40)))
    ax.imshow(rgb, origin="lower", interpolation="nearest")
    ax.set_xlim(-0.5, nx - 0.5)
    ax.set_ylim(-0.5, ny - 0.5)
    ax.set_axis_off()
    cls = np.asarray(table["class"]).astype(str) if len(table) else np.array([], dtype=str)
    x = np.asarray(table["x"], float) if len(table) else np.array([])
    y = np.asarray(table["y"], float) if len(table) else np.array([])
    ms = marker_size or max(30.0, 120.0 * scale)
    star = cls == "star"
    gal = cls == "galaxy"
    ax.scatter(x[star], y[star], s=ms, facecolors="none", edgecolors=STAR_COLOUR, marker="o", linewidths=0.9)
    ax.scatter(x[gal], y[gal], s=ms, facecolors="none", edgecolors=GALAXY_COLOUR, marker="s", linewidths=0.9)
    handles = [
        Line2D([], [], marker="o", ls="", mfc="none", mec=STAR_COLOUR, label=f"star ({int(star.sum())})"),
        Line2D([], [], marker="s", ls="", mfc="none", mec=GALAXY_COLOUR, label=f"galaxy ({int(gal.sum())})"),
    ]
    leg = ax.legend(handles=handles, loc="upper right", framealpha=0.6, facecolor="black",
                    edgecolor="white", fontsize=10)
    for text in leg.get_texts():
        text.set_color("white")
    fig.text(0.01, 1 - 20 / (ny * scale + 40), title or field.name or "", fontsize=12, va="center")
    fig.text(0.99, 1 - 20 / (ny * scale + 40), "gri asinh composite", fontsize=9, va="center", ha="right")
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    except OSError as exc:
        raise OutputError(path, f"cannot write preview ({exc.strerror or exc})") from None
    finally:
        plt.close(fig)
    return path
