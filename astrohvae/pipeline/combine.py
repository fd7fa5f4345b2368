"""The survey catalogue: every field's catalogue, with a primary flag on overlaps."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from astropy.table import Table

from astrohvae import __version__
from astrohvae.errors import InputError, OutputError
from astrohvae.io.atomic import atomic_path
from astrohvae.pipeline.inputs import one_line

__all__ = ['combine_catalogues', 'edge_distance', 'primary_flags']

# ----------------------------------------------------------------------------- one survey catalogue
COMBINED_STEM = "survey-catalogue"
"""`combine_catalogues` writes ``OUT/survey-catalogue.parquet`` and ``OUT/survey-catalogue.fits``."""
MATCH_RADIUS = 1.0
"""Arcseconds within which two fields' detections are one source (2.5 SDSS pixels)."""


def edge_distance(x, y, shape):
    """Pixels from ``(x, y)`` (0-based) to the nearest edge of a field of ``shape`` (ny, nx)."""
    ny, nx = shape
    x, y = np.asarray(x, float), np.asarray(y, float)
    return np.minimum(np.minimum(x + 0.5, nx - 0.5 - x), np.minimum(y + 0.5, ny - 0.5 - y))


def primary_flags(ra, dec, field, edge, radius=MATCH_RADIUS):
    """True for the detection of each source that counts once in a survey.

    Detections of two fields within ``radius`` arcsec of each other are the
    same source, seen in the strip the fields share; the one farther from its
    own field's edge (``edge``) is primary (ties: the smaller field name).
    Detections without a position (NaN) are primary.

    Parameters
    ----------
    ra, dec : array_like
        Degrees.
    field : array_like of str
        The field of each detection.
    edge : array_like
        Distance of each detection from its field's edge (`edge_distance`).
    radius : float
        Match radius in arcsec.

    Returns
    -------
    numpy.ndarray of bool
    """
    from astropy import units as u
    from astropy.coordinates import SkyCoord, search_around_sky

    ra, dec = np.asarray(ra, float), np.asarray(dec, float)
    field, edge = np.asarray(field).astype(str), np.asarray(edge, float)
    primary = np.ones(len(ra), bool)
    ok = np.flatnonzero(np.isfinite(ra) & np.isfinite(dec))
    if len(ok) < 2 or len(np.unique(field[ok])) < 2:
        return primary
    c = SkyCoord(ra[ok] * u.deg, dec[ok] * u.deg)
    i, j, _, _ = search_around_sky(c, c, radius * u.arcsec)
    i, j = ok[i], ok[j]
    other = field[i] != field[j]
    i, j = i[other], j[other]
    # j beats i: farther from its edge, or as far and the smaller field name
    beaten = (edge[j] > edge[i]) | ((edge[j] == edge[i]) & (field[j] < field[i]))
    primary[i[beaten]] = False
    return primary


def _field_table(path):
    """A per-field catalogue's rows with ``field`` and ``edge_dist`` columns."""
    from astropy.io import fits

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fits.open(path, memmap=False) as hdul:
            tab = Table.read(hdul["CATALOG"], unit_parse_strict="silent")
            shape = (int(hdul["SEGMAP"].header["NAXIS2"]), int(hdul["SEGMAP"].header["NAXIS1"]))
    if "class" in tab.colnames and tab["class"].dtype.kind == "S":
        tab["class"] = tab["class"].astype(str)
    name = Path(path).name[: -len(".cat.fits")]
    tab.add_column(np.full(len(tab), name), name="field", index=0)
    tab["edge_dist"] = edge_distance(tab["x"], tab["y"], shape).astype(np.float32)
    return tab


def combine_catalogues(out_dir, catalogues=None, radius=MATCH_RADIUS):
    """One survey catalogue from the per-field catalogues of a survey folder.

    Every row of every complete ``OUT/*.cat.fits`` (or of ``catalogues``)
    with a ``field`` column, ``edge_dist`` (pixels from its field's edge) and
    ``primary`` (`primary_flags`: a source seen by two overlapping fields is
    primary once).  Written atomically to ``OUT/survey-catalogue.parquet``
    (pyarrow) and ``OUT/survey-catalogue.fits``.

    Returns
    -------
    dict
        ``parquet``, ``fits`` (paths), ``fields``, ``rows``, ``primary``.
    """
    from astropy.table import vstack

    from astrohvae.io.catalog import is_complete

    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise InputError(out_dir, "not a survey output folder")
    if catalogues is None:
        catalogues = [p for p in sorted(out_dir.glob("*.cat.fits")) if not p.name.startswith(".")]
    catalogues = [Path(p) for p in catalogues if is_complete(p)]
    if not catalogues:
        raise InputError(out_dir, "holds no complete <field>.cat.fits catalogue to combine")
    tables = [_field_table(p) for p in catalogues]
    try:
        tab = vstack(tables, join_type="exact", metadata_conflicts="silent")
    except Exception as exc:  # noqa: BLE001 - catalogues of different shapes (latent dims, versions)
        raise InputError(out_dir, one_line(f"catalogues do not stack ({type(exc).__name__}: {exc})", 200))
    tab["primary"] = primary_flags(tab["ra"], tab["dec"], tab["field"], tab["edge_dist"], radius)
    tab.meta = {"NFIELDS": len(catalogues), "MATCHRAD": radius, "ASTHVVER": __version__}
    paths = {"parquet": out_dir / f"{COMBINED_STEM}.parquet", "fits": out_dir / f"{COMBINED_STEM}.fits"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # 'nanomaggy' is not a FITS unit: kept as a string
            with atomic_path(paths["parquet"]) as tmp:
                tab.write(tmp, format="parquet", overwrite=True)
            with atomic_path(paths["fits"]) as tmp:
                tab.write(tmp, format="fits", overwrite=True)
    except OSError as exc:
        raise OutputError(out_dir, f"cannot write the survey catalogue ({exc.strerror or exc})") from None
    return {"parquet": str(paths["parquet"]), "fits": str(paths["fits"]), "fields": len(catalogues),
            "rows": len(tab), "primary": int(tab["primary"].sum())}
