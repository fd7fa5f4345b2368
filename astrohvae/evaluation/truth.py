"""A catalogue against a truth list (`evaluate_truth`)."""

from __future__ import annotations

import numpy as np

from astrohvae.evaluation.metrics import binary_metrics

__all__ = ['MATCH_RADIUS', 'evaluate_truth', 'format_truth_table', 'match_catalog', 'read_truth_list', 'truth_labels']

# ----------------------------------------------------------------------------- any truth list
MATCH_RADIUS = 1.0
"""Default match radius (arcsec) of `evaluate_truth`: a truth object is matched to the nearest
catalogue source within it (0.06" is the typical SDSS-vs-astrohvae offset; 1" = 2.5 px)."""

TRUTH_MAG_EDGES = (16.0, 18.0, 20.0, 21.0, 22.0)
"""r-magnitude bin edges of the `evaluate_truth` table (plus an open bin at each end)."""

_RA = ("ra", "raj2000", "ra_icrs", "alpha_j2000", "ra_deg")
_DEC = ("dec", "dej2000", "decj2000", "de_icrs", "delta_j2000", "dec_deg")
_X = ("x", "x_r", "x_image")
_Y = ("y", "y_r", "y_image")
_CLASS = ("class", "type", "truth_type", "objc_type", "label", "star_galaxy", "is_star")
_MAG = ("mag_r", "r", "psfmag_r", "modelmag_r", "cmodelmag_r", "rmag", "mag")
_FLUX = ("psfflux", "modelflux")


def _col(table, names):
    low = {c.lower(): c for c in table.colnames}
    for n in names:
        if n in low:
            return low[n]
    return None


def truth_labels(values):
    """0 star / 1 galaxy / -1 unknown from a class column.

    Accepted: strings (``star``, ``galaxy``/``gal``, any case; ``qso`` and
    others unknown), SDSS ``TYPE`` codes (6 star, 3 galaxy, others unknown),
    ``+1`` star / ``-1`` galaxy (dl4astro), ``0`` star / ``1`` galaxy
    (astrohvae's ``truth_type``), booleans (``is_star``-like: True = star).
    Integer columns are read by their set of values: {3, 6} SDSS, {-1, 1}
    the ±1 convention, {0, 1} truth_type.

    Raises
    ------
    ValueError
        When the values fit no convention.
    """
    v = np.asarray(values)
    if v.dtype.kind in "SU" or v.dtype == object:
        s = np.char.strip(np.char.lower(v.astype(str)))
        return np.where(s == "star", 0, np.where(np.isin(s, ("galaxy", "gal")), 1, -1)).astype(np.int8)
    if v.dtype.kind == "b":
        return np.where(v, 0, 1).astype(np.int8)
    iv = np.asarray(np.round(v.astype(float)), dtype=np.int64)
    vals = set(np.unique(iv).tolist())
    if vals & {3, 6} and vals <= {0, 1, 2, 3, 4, 5, 6, 7, 8}:
        return np.where(iv == 6, 0, np.where(iv == 3, 1, -1)).astype(np.int8)
    if vals <= {-1, 1}:
        return np.where(iv == 1, 0, 1).astype(np.int8)
    if vals <= {-1, 0, 1}:
        return np.where(iv == 0, 0, np.where(iv == 1, 1, -1)).astype(np.int8)
    raise ValueError(f"class values {sorted(vals)[:6]} fit no convention (star/galaxy, SDSS 3/6, ±1, 0/1)")


def read_truth_list(path):
    """A truth list as a Table with ``ra, dec`` (deg) or ``x, y``, ``label`` and ``mag_r``.

    Parameters
    ----------
    path : path
        FITS (the ``TRUTH`` HDU if there is one, else the first table HDU)
        or CSV/ASCII with a header line; or a simulator output folder.  Its
        position columns are found by name (``ra``/``dec``, ``raj2000`` ...,
        else ``x``/``y`` or ``x_r``/``y_r``, 0-based on the r grid), its class
        column by name (``class``, ``type``, ``truth_type``, ``objc_type``,
        ``label`` ..., see `truth_labels`); a list without a class column is a
        star list.  ``mag_r`` from ``mag_r``/``r``/``psfMag_r`` ..., or
        22.5 - 2.5 log10 of the r entry of ``PSFFLUX``/``MODELFLUX`` (nmgy);
        NaN when absent.

    Returns
    -------
    astropy.table.Table
        ``ra, dec`` (NaN if absent), ``x, y`` (NaN if absent), ``label``
        (0 star, 1 galaxy, -1 unknown), ``mag_r``; ``meta['star_only']``.
    """
    from pathlib import Path

    from astropy.io import fits
    from astropy.table import Table

    from astrohvae.errors import InputError

    p = Path(path)
    if p.is_dir():
        from astrohvae.simulate.io import read_truth

        raw = read_truth(p)[0]
    elif not p.is_file():
        raise InputError(p, "no such file")
    else:
        try:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if p.suffix.lower() in (".fits", ".fit", ".fts") or p.name.lower().endswith((".fits.gz", ".fits.bz2")):
                    with fits.open(p) as hdul:
                        names = [h.name for h in hdul]
                        hdu = hdul["TRUTH"] if "TRUTH" in names else next(
                            (h for h in hdul if isinstance(h, (fits.BinTableHDU, fits.TableHDU))), None)
                        if hdu is None:
                            raise InputError(p, "no table HDU")
                        raw = Table.read(hdu)
                else:
                    raw = Table.read(p, format="ascii")
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - any unreadable list is bad input
            raise InputError(p, f"cannot read truth list ({type(exc).__name__}: {exc})".splitlines()[0]) from None
    n = len(raw)
    out = Table()
    ra, dec, x, y = _col(raw, _RA), _col(raw, _DEC), _col(raw, _X), _col(raw, _Y)
    if not ((ra and dec) or (x and y)):
        raise InputError(p, f"no sky (ra/dec) or pixel (x/y) position columns among {raw.colnames[:12]}")
    nan = np.full(n, np.nan)
    out["ra"] = np.asarray(raw[ra], float) if ra and dec else nan
    out["dec"] = np.asarray(raw[dec], float) if ra and dec else nan
    out["x"] = np.asarray(raw[x], float) if x and y else nan
    out["y"] = np.asarray(raw[y], float) if x and y else nan
    cls = _col(raw, _CLASS)
    if cls is None:
        out["label"] = np.zeros(n, np.int8)
    else:
        try:
            out["label"] = truth_labels(np.ma.filled(raw[cls], -99) if hasattr(raw[cls], "mask") else raw[cls])
        except ValueError as exc:
            raise InputError(p, f"column {cls}: {exc}") from None
    mag = _col(raw, _MAG)
    if mag is not None:
        out["mag_r"] = np.asarray(raw[mag], float)
    elif _col(raw, _FLUX) is not None and np.asarray(raw[_col(raw, _FLUX)]).ndim == 2:
        f = np.asarray(raw[_col(raw, _FLUX)], float)[:, 2]
        with np.errstate(invalid="ignore", divide="ignore"):
            out["mag_r"] = np.where(f > 0, 22.5 - 2.5 * np.log10(np.where(f > 0, f, 1)), np.nan)
    else:
        out["mag_r"] = nan
    known = out["label"] >= 0
    out.meta["star_only"] = bool(known.any() and (out["label"][known] == 0).all())
    out.meta["class_column"] = cls or ""
    return out


def match_catalog(cat_table, truth, radius=MATCH_RADIUS):
    """Index of the nearest catalogue source within ``radius`` arcsec of each truth object (-1: none).

    On the sky (ra/dec) when both sides have finite positions, else in pixels
    (x/y, ``radius`` / `astrohvae.PIXEL_SCALE` pixels).

    Returns
    -------
    idx : ndarray int (len(truth),), dist : ndarray float (arcsec)
    """
    from astrohvae import PIXEL_SCALE

    nt, nc = len(truth), len(cat_table)
    idx = np.full(nt, -1)
    dist = np.full(nt, np.inf)
    if nt == 0 or nc == 0:
        return idx, dist
    tra, tdec = np.asarray(truth["ra"], float), np.asarray(truth["dec"], float)
    cra, cdec = np.asarray(cat_table["ra"], float), np.asarray(cat_table["dec"], float)
    if np.isfinite(tra).any() and np.isfinite(cra).all():
        from astropy import units as u
        from astropy.coordinates import SkyCoord

        ok = np.isfinite(tra) & np.isfinite(tdec)
        c = SkyCoord(cra * u.deg, cdec * u.deg)
        j, sep, _ = SkyCoord(tra[ok] * u.deg, tdec[ok] * u.deg).match_to_catalog_sky(c)
        d = np.full(nt, np.inf)
        jj = np.full(nt, -1)
        d[ok], jj[ok] = sep.arcsec, j
    else:
        from scipy.spatial import cKDTree

        tx, ty = np.asarray(truth["x"], float), np.asarray(truth["y"], float)
        if not np.isfinite(tx).any():
            raise ValueError("truth has sky positions but the catalogue has no ra/dec (no WCS)")
        ok = np.isfinite(tx) & np.isfinite(ty)
        tree = cKDTree(np.column_stack([np.asarray(cat_table["x"], float), np.asarray(cat_table["y"], float)]))
        dd, j = tree.query(np.column_stack([tx[ok], ty[ok]]))
        d = np.full(nt, np.inf)
        jj = np.full(nt, -1)
        d[ok], jj[ok] = dd * PIXEL_SCALE, j
    hit = d <= radius
    idx[hit], dist[hit] = jj[hit], d[hit]
    return idx, dist


def evaluate_truth(catalog, truth, radius=MATCH_RADIUS, edges=TRUTH_MAG_EDGES):
    """The catalogue's classes against any truth list, by r-magnitude bin.

    Parameters
    ----------
    catalog : path
        An astrohvae catalogue.
    truth : path
        Any list `read_truth_list` reads.
    radius : float
        Match radius in arcsec (`MATCH_RADIUS`).
    edges : sequence of float
        r-magnitude bin edges.  The magnitude is the list's own (``mag_r``),
        else that of the matched catalogue source.

    Returns
    -------
    result : dict
        ``table`` (astropy Table, one row per bin then ``all``), ``star_only``
        (bool), ``y`` / ``p_galaxy`` (matched objects, for a ROC plot),
        ``n_truth``, ``n_matched``, ``radius``.

    Star lists (no galaxy in the list) give, per bin: ``n_star`` listed,
    ``matched``, ``labelled_star`` and ``star_recall`` = labelled_star /
    matched.  Two-class lists give the counts of both classes, star and
    galaxy completeness (recall) and purity among the matched objects, and
    the AUC of ``p_galaxy`` where both classes are present.
    """
    from astropy.table import Table

    from astrohvae.io.catalog import read_catalog

    cat = read_catalog(catalog).table
    tl = read_truth_list(truth)
    idx, _ = match_catalog(cat, tl, radius)
    hit = idx >= 0
    label = np.asarray(tl["label"], int)
    cls = np.asarray(cat["class"]).astype(str)
    pg = np.asarray(cat["p_galaxy"], float)
    pred = np.full(len(tl), -1)
    p = np.full(len(tl), np.nan)
    pred[hit] = (cls[idx[hit]] == "galaxy").astype(int)
    p[hit] = pg[idx[hit]]
    mag = np.asarray(tl["mag_r"], float).copy()
    if "mag_r" in cat.colnames:
        cmag = np.asarray(np.ma.filled(cat["mag_r"], np.nan), float)
        fill = ~np.isfinite(mag) & hit
        mag[fill] = cmag[idx[fill]]
    lo = (-np.inf,) + tuple(edges)
    hi = tuple(edges) + (np.inf,)
    bins = [(a, b, _bin_name(a, b)) for a, b in zip(lo, hi)] + [(-np.inf, np.inf, "all")]
    rows = []
    for a, b, name in bins:
        sel = ((mag >= a) & (mag < b)) if name != "all" else np.ones(len(tl), bool)
        rows.append(_truth_row(name, sel, label, hit, pred, p, tl.meta["star_only"]))
    table = Table(rows=[list(r.values()) for r in rows], names=list(rows[0]))
    ok = hit & (label >= 0)
    return {"table": table, "star_only": tl.meta["star_only"], "y": label[ok], "p_galaxy": p[ok],
            "n_truth": int(len(tl)), "n_matched": int(hit.sum()), "radius": float(radius)}


def _bin_name(a, b):
    if not np.isfinite(a):
        return f"r<{b:g}"
    if not np.isfinite(b):
        return f"r>{a:g}"
    return f"{a:g}<r<{b:g}"


def _truth_row(name, sel, label, hit, pred, p, star_only):
    def ratio(k, n):
        return float(k / n) if n else float("nan")

    s, g = sel & (label == 0), sel & (label == 1)
    sm, gm = s & hit, g & hit
    if star_only:
        ok = int((sm & (pred == 0)).sum())
        return {"bin": name, "n_star": int(s.sum()), "matched": int(sm.sum()), "labelled_star": ok,
                "star_recall": ratio(ok, int(sm.sum()))}
    ss, gg = int((sm & (pred == 0)).sum()), int((gm & (pred == 1)).sum())
    called_star = int(((sm | gm) & (pred == 0)).sum())
    called_gal = int(((sm | gm) & (pred == 1)).sum())
    auc = binary_metrics(label[sm | gm], p[sm | gm])["auc"] if (sm.any() and gm.any()) else float("nan")
    return {"bin": name, "n_star": int(s.sum()), "n_galaxy": int(g.sum()), "matched_star": int(sm.sum()),
            "matched_galaxy": int(gm.sum()), "star_completeness": ratio(ss, int(sm.sum())),
            "star_purity": ratio(ss, called_star), "galaxy_completeness": ratio(gg, int(gm.sum())),
            "galaxy_purity": ratio(gg, called_gal), "auc": float(auc)}


def format_truth_table(table):
    """Markdown of an `evaluate_truth` table: counts as integers, ratios to 3 decimals, '-' for NaN."""
    lines = ["| " + " | ".join(table.colnames) + " |", "|" + "---|" * len(table.colnames)]
    for row in table:
        cells = []
        for c in table.colnames:
            v = row[c]
            if isinstance(v, (float, np.floating)):
                cells.append("-" if not np.isfinite(v) else f"{v:.3f}")
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
