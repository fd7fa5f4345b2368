"""Quick-look PNG of a field with its star/galaxy classification.

An asinh-stretched colour composite (i, r, g as red, green, blue; Lupton et
al. 2004) of the field with every catalogue source outlined at its size:
stars as circles, galaxies as their Kron ellipses (the shapes of the DS9
region file, `astrohvae.io.ds9.source_ellipses`), a legend with the counts,
RA/Dec axes (WCSAxes) when the field has a WCS, and "simulated" in the title
when the frames were made by `astrohvae.simulate` (header card ``SIMULATE``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from astrohvae.errors import OutputError
from astrohvae.io.atomic import atomic_path
from astrohvae.io.ds9 import (  # noqa: E402 - one owner of the colours
    GALAXY_COLOUR,
    STAR_COLOUR,
)

__all__ = ['colour_image', 'is_simulated', 'write_preview']

def is_simulated(field):
    """True when ``field`` was made by `astrohvae.simulate` (in memory, or read from its frames)."""
    meta = getattr(field, "meta", None) or {}
    if meta.get("simulated"):
        return True
    headers = meta.get("headers") or {}
    values = headers.values() if isinstance(headers, dict) else headers
    return any(bool(h.get("SIMULATE", False)) for h in values if hasattr(h, "get"))


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
        Catalogue with ``x``, ``y`` (0-based) and ``class`` (and the shape
        columns of `astrohvae.detection`; without them every source gets a
        3-pixel circle).
    title : str, optional
        Figure title ("simulated" is added for a simulated field).
    marker_size : float, optional
        Draw every source as a circle of this radius (pixels) instead.

    Returns
    -------
    pathlib.Path
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.collections import EllipseCollection
    from matplotlib.lines import Line2D

    from astrohvae.io.ds9 import source_ellipses

    path = Path(path)
    rgb = colour_image(field)
    ny, nx = rgb.shape[:2]
    dpi = 100
    width_px = min(max_width_px, max(nx, 640))
    scale = width_px / nx
    sky = field.wcs is not None and getattr(field.wcs, "has_celestial", False)
    # room for the title above and, with a WCS, the RA/Dec labels around the image
    pad_l, pad_b, pad_t, pad_r = (130, 60, 40, 20) if sky else (0, 0, 40, 0)
    fig_w, fig_h = width_px + pad_l + pad_r, ny * scale + pad_b + pad_t
    fig = plt.figure(figsize=(fig_w / dpi, fig_h / dpi), dpi=dpi)
    rect = (pad_l / fig_w, pad_b / fig_h, width_px / fig_w, ny * scale / fig_h)
    ax = fig.add_axes(rect, projection=field.wcs.celestial) if sky else fig.add_axes(rect)
    ax.imshow(rgb, origin="lower", interpolation="nearest")
    ax.set_xlim(-0.5, nx - 0.5)
    ax.set_ylim(-0.5, ny - 0.5)
    if sky:
        ra, dec = ax.coords[0], ax.coords[1]
        # SDSS frames run along the scan: RA may vary along y. Each coordinate
        # is labelled on the image edge it varies along
        m = field.wcs.celestial.pixel_scale_matrix
        ra_side, dec_side = ("b", "l") if abs(m[0, 0]) >= abs(m[0, 1]) else ("l", "b")
        for c, side, name in ((ra, ra_side, "RA (ICRS)"), (dec, dec_side, "Dec (ICRS)")):
            c.set_ticks_position(side)
            c.set_ticklabel_position(side)
            c.set_axislabel_position(side)
            c.set_axislabel(name)
        ra.set_major_formatter("hh:mm:ss")
        dec.set_major_formatter("dd:mm")
        ax.coords.grid(color="white", alpha=0.25, linestyle=":")
    else:
        ax.set_axis_off()
    n = len(table)
    cls = np.asarray(table["class"]).astype(str) if n else np.array([], dtype=str)
    x = np.asarray(table["x"], float) if n else np.array([])
    y = np.asarray(table["y"], float) if n else np.array([])
    if n:
        a, b, theta, _ = source_ellipses(table)
        if marker_size:
            a = b = np.full(n, float(marker_size))
            theta = np.zeros(n)
    star = cls == "star"
    gal = cls == "galaxy"
    for sel, colour in ((star, STAR_COLOUR), (gal, GALAXY_COLOUR)):
        if sel.any():
            # sizes in data (pixel) units: the outlines scale with the image
            ax.add_collection(EllipseCollection(2 * a[sel], 2 * b[sel], theta[sel], units="xy",
                                                offsets=np.column_stack([x[sel], y[sel]]),
                                                offset_transform=ax.transData, facecolors="none",
                                                edgecolors=colour, linewidths=0.8))
    handles = [
        Line2D([], [], marker="o", ls="", mfc="none", mec=STAR_COLOUR, label=f"star ({int(star.sum())})"),
        Line2D([], [], marker="o", ls="", mfc="none", mec=GALAXY_COLOUR, markersize=9,
               label=f"galaxy ({int(gal.sum())}): Kron ellipse"),
    ]
    leg = ax.legend(handles=handles, loc="upper right", framealpha=0.6, facecolor="black",
                    edgecolor="white", fontsize=10)
    for text in leg.get_texts():
        text.set_color("white")
    label = title or field.name or ""
    if is_simulated(field):
        label = f"{label} (simulated)" if label else "simulated field"
    fig.text(0.01, 1 - 20 / fig_h, label, fontsize=12, va="center")
    fig.text(0.99, 1 - 20 / fig_h, "gri asinh composite", fontsize=9, va="center", ha="right")
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    except OSError as exc:
        raise OutputError(path, f"cannot write preview ({exc.strerror or exc})") from None
    finally:
        plt.close(fig)
    return path
