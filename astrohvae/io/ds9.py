"""DS9 region files of a catalogue (astropy-regions).

One region per source, in world coordinates (ICRS) when the field has a WCS
(image coordinates otherwise): stars as circles, galaxies as their ellipses,
in two colours (those of the preview).  The ellipse is the source's Kron
aperture from the photutils shape columns (`astrohvae.detection`):
semi-axes ``2.5 kron_radius`` times ``semimajor_axis`` / ``semiminor_axis``
(at least 3 times them), rotated by ``orientation``.  A star's circle has the
radius ``3 sqrt(semimajor_axis semiminor_axis)`` (at least 3 px).  Each
region's ``text`` is the source ``id``; DS9 and CARTA load the file as it is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from astrohvae.errors import OutputError
from astrohvae.io.atomic import atomic_path

__all__ = ["STAR_COLOUR", "GALAXY_COLOUR", "catalog_regions", "write_regions"]

STAR_COLOUR = "#00e5ff"
GALAXY_COLOUR = "#ff9f1c"
KRON_SCALE = 2.5
"""photutils' Kron aperture scale (`astrohvae.detection.measure.KRON_PARAMS`)."""


def source_ellipses(table):
    """Semi-axes (pixels) and angle (degrees from +x, counter-clockwise) to draw each source with.

    Galaxies: the Kron aperture; stars: a circle (a = b); see the module text.
    """
    n = len(table)

    def col(name, default):
        return np.asarray(table[name], float) if name in table.colnames else np.full(n, default)

    a, b = col("semimajor_axis", np.nan), col("semiminor_axis", np.nan)
    kr, theta = col("kron_radius", np.nan), col("orientation", 0.0)
    scale = np.where(np.isfinite(kr), np.maximum(KRON_SCALE * kr, 3.0), 3.0)
    ga = np.where(np.isfinite(a), scale * a, 3.0)
    gb = np.where(np.isfinite(b), scale * b, 3.0)
    r_star = np.where(np.isfinite(a * b), np.maximum(3.0 * np.sqrt(np.abs(a * b)), 3.0), 3.0)
    star = np.asarray(table["class"]).astype(str) == "star"
    return (np.where(star, r_star, np.maximum(ga, 1.0)), np.where(star, r_star, np.maximum(gb, 1.0)),
            np.where(star | ~np.isfinite(theta), 0.0, theta), star)


def _sky_geometry(wcs, x, y):
    """Per source: sky centre, arcsec per pixel and the angle of north from +x (degrees), vectorised.

    The same conversion `regions`' own ``to_sky`` makes source by source (local pixel
    scale and north angle from a 1" step north), for the whole table at once.
    """
    from astropy import units as u

    c = wcs.pixel_to_world(x, y)
    north = c.spherical_offsets_by(0 * u.deg, 1 * u.arcsec)
    xn, yn = wcs.world_to_pixel(north)
    step = np.hypot(xn - x, yn - y)
    return c, 1.0 / step, np.degrees(np.arctan2(yn - y, xn - x))


def catalog_regions(table, wcs=None):
    """`regions.Regions` of the sources of ``table`` (sky regions when ``wcs`` is celestial)."""
    from astropy import units as u
    from regions import (CirclePixelRegion, CircleSkyRegion, EllipsePixelRegion, EllipseSkyRegion, PixCoord,
                         RegionMeta, RegionVisual, Regions)

    sky = wcs is not None and getattr(wcs, "has_celestial", False)
    a, b, theta, star = source_ellipses(table)
    x, y = np.asarray(table["x"], float), np.asarray(table["y"], float)
    ids = np.asarray(table["id"]).astype(int)
    if sky and len(x):
        centres, scale, north = _sky_geometry(wcs, x, y)
        a_s, b_s = a * scale, b * scale
        theta_s = np.mod(theta - (north - 90.0), 360.0)
    out = []
    for k in range(len(x)):
        vis = RegionVisual(color=STAR_COLOUR if star[k] else GALAXY_COLOUR)
        meta = RegionMeta(text=str(ids[k]))
        if sky:
            if star[k]:
                reg = CircleSkyRegion(centres[k], a_s[k] * u.arcsec, meta=meta, visual=vis)
            else:
                reg = EllipseSkyRegion(centres[k], 2 * a_s[k] * u.arcsec, 2 * b_s[k] * u.arcsec,
                                       angle=theta_s[k] * u.deg, meta=meta, visual=vis)
        elif star[k]:
            reg = CirclePixelRegion(PixCoord(x[k], y[k]), radius=a[k], meta=meta, visual=vis)
        else:
            reg = EllipsePixelRegion(PixCoord(x[k], y[k]), width=2 * a[k], height=2 * b[k],
                                     angle=theta[k] * u.deg, meta=meta, visual=vis)
        out.append(reg)
    return Regions(out)


def write_regions(path, table, wcs=None):
    """Write the DS9 region file of ``table`` atomically; returns the path."""
    path = Path(path)
    regs = catalog_regions(table, wcs)
    text = regs.serialize(format="ds9", precision=8) if len(regs) else "# Region file format: DS9 astropy/regions\n"
    try:
        with atomic_path(path) as tmp:
            Path(tmp).write_text(text)  # atomic_path gave the temporary the usual permissions
    except OSError as exc:
        raise OutputError(path, f"cannot write region file ({exc.strerror or exc})") from None
    return path
