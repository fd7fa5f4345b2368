"""The astrohvae output catalogue: one FITS file per field.

The layout is the contract of ``catalog-schema.md``:

* primary HDU: header only (``ASTHVVER``, ``MODELSHA``, ``BANDS``, ``REFBAND``,
  ``XYORIGIN``, ``DETNSIG``, ``DETMETH``, ``CLFMETH``, ``FLUXTYPE``,
  ``NINFILE`` + ``INFILEn``, ...);
* ``CATALOG``: binary table, one row per source, columns typed exactly as the
  schema says (`CATALOG_COLUMNS`);
* ``SEGMAP``: int32 (ny, nx), 0 = sky, k = source ``id`` k;
* ``CLASSMAP``: uint8 (ny, nx), 0 = sky, 1 = star, 2 = galaxy;
* ``MASKS``: uint8 (N, 64, 64), row i = the own-pixel mask of source ``id`` i+1.

The file is written under a temporary name and renamed into place
(`astrohvae.io.atomic.atomic_path`), so a catalogue that exists is complete.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from astrohvae import BANDS, REF_BAND, STAMP_SIZE, __version__
from astrohvae.errors import InputError, OutputError
from astrohvae.io.atomic import atomic_path

from astrohvae.conventions import CLASS_CODES

__all__ = [
    "CATALOG_COLUMNS",
    "Catalog",
    "conform_table",
    "empty_table",
    "is_complete",
    "read_catalog",
    "write_catalog",
    "CLASS_CODES",
]


Z_AE_DIM = 30

# (name, numpy dtype, per-row shape or None for a scalar or 'd' for the HVAE latent dimension)
CATALOG_COLUMNS = (
    [
        ("id", np.int32, None),
        ("x", np.float64, None),
        ("y", np.float64, None),
        ("ra", np.float64, None),
        ("dec", np.float64, None),
        ("class", "U6", None),
        ("p_galaxy", np.float32, None),
        ("z_hvae", np.float32, "d"),
        ("z_hvae_sigma", np.float32, "d"),
        ("z_ae", np.float32, (Z_AE_DIM,)),
    ]
    + [(f"flux_{b}", np.float32, None) for b in BANDS]
    + [(f"flux_err_{b}", np.float32, None) for b in BANDS]
    + [(f"mag_{b}", np.float32, None) for b in BANDS]
    + [("area", np.int32, None), ("flags", np.int32, None)]
)
"""The schema's columns in file order: ``(name, dtype, shape)``."""

_UNITS = {"x": "pix", "y": "pix", "ra": "deg", "dec": "deg", "area": "pix"}
_UNITS.update({f"flux_{b}": "nanomaggy" for b in BANDS})
_UNITS.update({f"flux_err_{b}": "nanomaggy" for b in BANDS})
_UNITS.update({f"mag_{b}": "mag" for b in BANDS})


@dataclass
class Catalog:
    """A catalogue file read back: the four HDUs and the primary header."""

    table: Table
    segmap: np.ndarray
    classmap: np.ndarray
    masks: np.ndarray
    header: fits.Header

    def __len__(self):
        return len(self.table)


def _latent_dim(table, latent_dim):
    if "z_hvae" in table.colnames:
        col = np.asarray(table["z_hvae"])
        return 1 if col.ndim == 1 else int(col.shape[1])
    return int(latent_dim)


def empty_table(latent_dim=1):
    """A zero-row table with every schema column, correctly typed."""
    cols = {}
    for name, dtype, shape in CATALOG_COLUMNS:
        shp = (latent_dim,) if shape == "d" else (shape or ())
        cols[name] = np.zeros((0,) + tuple(shp), dtype=dtype)
    return Table(cols)


def conform_table(table, latent_dim=1):
    """Return a copy of ``table`` with the schema's columns, order and dtypes.

    Schema columns come first in schema order, cast to their exact types
    (``z_hvae`` of shape (N,) is promoted to (N, 1)); other columns follow
    unchanged.  Raises ``ValueError`` when a schema column is missing or has
    the wrong shape.
    """
    table = Table(table, copy=False)
    n = len(table)
    d = _latent_dim(table, latent_dim)
    out = Table()
    for name, dtype, shape in CATALOG_COLUMNS:
        if name not in table.colnames:
            if n == 0:
                shp = (d,) if shape == "d" else (shape or ())
                out[name] = np.zeros((0,) + tuple(shp), dtype=dtype)
                continue
            raise ValueError(f"catalogue column {name!r} is missing")
        col = table[name]
        if hasattr(col, "filled"):
            fill = "" if np.dtype(col.dtype).kind in "US" else (np.nan if np.dtype(col.dtype).kind == "f" else 0)
            col = col.filled(fill)
        val = np.asarray(col)
        if shape == "d":
            if val.ndim == 1:
                val = val[:, None]
            want = (n, d)
        elif shape is None:
            want = (n,)
        else:
            want = (n,) + shape
        if val.shape != want:
            raise ValueError(f"catalogue column {name!r} has shape {val.shape}, expected {want}")
        if name == "class":
            val = np.char.decode(val) if val.dtype.kind == "S" else val
            bad = ~np.isin(val, list(CLASS_CODES))
            if n and bad.any():
                raise ValueError(f"column 'class' holds {sorted(set(val[bad]))}, expected star/galaxy")
        out[name] = val.astype(dtype)
    for name in table.colnames:
        if name not in out.colnames:
            out[name] = table[name]
    return out


def _primary_header(header, n, latent_dim):
    hdr = fits.Header()
    hdr["ASTHVVER"] = (__version__, "astrohvae version")
    hdr["MODELSHA"] = "unknown"  # sha256 of the weights config.json: 64 characters, no room for a comment
    hdr["BANDS"] = ("".join(BANDS), "band order of the flux/mag columns")
    hdr["REFBAND"] = (REF_BAND, "band whose pixel grid x, y, SEGMAP refer to")
    hdr["XYORIGIN"] = (0, "x, y are 0-based pixel coordinates")
    hdr["FLUXTYPE"] = ("segment", "flux_* summed over the source segment")
    hdr["NSOURCES"] = (int(n), "rows in CATALOG")
    hdr["ZHVAEDIM"] = (int(latent_dim), "dimension of z_hvae")
    hdr["STAMPSZ"] = (STAMP_SIZE, "side of the MASKS stamps in pixels")
    if header is not None:
        items = header.cards if isinstance(header, fits.Header) else header.items()
        for item in items:
            if isinstance(item, fits.Card):
                key, value, comment = item.keyword, item.value, item.comment
            else:
                key, value = item
                comment = None
                if isinstance(value, tuple):
                    value, comment = value
            if key in ("NSOURCES", "ZHVAEDIM"):
                continue
            if isinstance(value, (list, tuple)):
                hdr["N" + key[:7]] = len(value)
                for i, v in enumerate(value, 1):
                    hdr[f"{key[:8 - len(str(i))]}{i}"] = str(v)
                continue
            if isinstance(value, np.generic):
                value = value.item()
            if value is None:
                value = ""
            hdr[key] = (value, comment) if comment else value
    return hdr


def write_catalog(path, table, segmap, classmap, masks, header=None, *, latent_dim=1):
    """Write a catalogue FITS file atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Final file name; the file appears only once it is complete.
    table : astropy.table.Table
        One row per source with the schema columns (extra columns are kept).
        Rows must be ordered by ``id`` = 1..N.
    segmap : array_like
        int32 (ny, nx) segmentation map, label k = source ``id`` k.
    classmap : array_like
        uint8 (ny, nx) class map, 0 sky, 1 star, 2 galaxy.
    masks : array_like
        uint8 (N, 64, 64) own-pixel masks, row i = source ``id`` i+1.
    header : dict or astropy.io.fits.Header, optional
        Extra primary-header keywords.  Values may be ``(value, comment)``
        tuples; a list value ``v`` under key ``K`` becomes ``NK`` + ``K1``,
        ``K2``, ... (e.g. ``INFILE`` -> ``NINFILE``, ``INFILE1`` ...).
    latent_dim : int
        Dimension of ``z_hvae`` used when the table has no rows.

    Returns
    -------
    pathlib.Path
        The written file.
    """
    path = Path(path)
    d = _latent_dim(Table(table, copy=False), latent_dim)
    tab = conform_table(table, latent_dim=d)
    n = len(tab)
    if n and not np.array_equal(np.asarray(tab["id"]), np.arange(1, n + 1)):
        raise ValueError("catalogue ids must be 1..N in row order")
    segmap = np.asarray(segmap, dtype=np.int32)
    classmap = np.asarray(classmap, dtype=np.uint8)
    if segmap.ndim != 2 or classmap.shape != segmap.shape:
        raise ValueError(f"SEGMAP {segmap.shape} and CLASSMAP {classmap.shape} must be the same 2-d shape")
    masks = np.asarray(masks, dtype=np.uint8).reshape(-1, STAMP_SIZE, STAMP_SIZE)
    if masks.shape[0] != n:
        raise ValueError(f"MASKS has {masks.shape[0]} rows for {n} sources")

    primary = fits.PrimaryHDU(header=_primary_header(header, n, d))
    cat = fits.BinTableHDU(tab, name="CATALOG")
    for i, name in enumerate(tab.colnames, 1):
        if name in _UNITS:
            cat.header[f"TUNIT{i}"] = _UNITS[name]
    seg = fits.ImageHDU(segmap, name="SEGMAP")
    cls = fits.ImageHDU(classmap, name="CLASSMAP")
    msk = fits.ImageHDU(masks if n else None, name="MASKS")
    if not n:
        msk.header["NAXIS"] = 0
    for key, comment in (("XYORIGIN", "0-based pixel coordinates"),):
        seg.header[key] = (0, comment)
    hdul = fits.HDUList([primary, cat, seg, cls, msk])
    try:
        with atomic_path(path) as tmp:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                hdul.writeto(tmp, overwrite=True, output_verify="fix")
    except OSError as exc:
        raise OutputError(path, f"cannot write catalogue ({exc.strerror or exc})") from None
    return path


def read_catalog(path):
    """Read a catalogue written by `write_catalog`.

    Returns
    -------
    Catalog
        ``table`` (astropy Table, ``class`` as str), ``segmap`` int32,
        ``classmap`` uint8, ``masks`` uint8 (N, 64, 64), ``header`` (primary).

    Raises
    ------
    InputError
        When the file is missing, not FITS, or lacks a catalogue HDU.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "catalogue file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(path, memmap=False) as hdul:
                names = [h.name for h in hdul]
                for need in ("CATALOG", "SEGMAP", "CLASSMAP", "MASKS"):
                    if need not in names:
                        raise InputError(path, f"not an astrohvae catalogue (no {need} HDU)")
                header = hdul[0].header.copy()
                table = Table.read(hdul["CATALOG"], unit_parse_strict="silent")
                segmap = np.asarray(hdul["SEGMAP"].data, dtype=np.int32)
                classmap = np.asarray(hdul["CLASSMAP"].data, dtype=np.uint8)
                mdata = hdul["MASKS"].data
                masks = (np.zeros((0, STAMP_SIZE, STAMP_SIZE), np.uint8) if mdata is None
                         else np.asarray(mdata, dtype=np.uint8))
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable file is bad input
        raise InputError(path, f"cannot read catalogue ({type(exc).__name__}: {exc})".splitlines()[0])
    if "class" in table.colnames and table["class"].dtype.kind == "S":
        table["class"] = np.char.decode(np.asarray(table["class"])).astype("U6")
    d = int(header.get("ZHVAEDIM", 1))
    for name in ("z_hvae", "z_hvae_sigma"):
        if name in table.colnames and np.asarray(table[name]).ndim == 1:
            table[name] = np.asarray(table[name]).reshape(-1, d)
    if len(table) == 0 and "z_ae" in table.colnames and np.asarray(table["z_ae"]).ndim == 1:
        table["z_ae"] = np.zeros((0, Z_AE_DIM), np.float32)
    return Catalog(table=table, segmap=segmap, classmap=classmap, masks=masks, header=header)


def is_complete(path):
    """True when ``path`` is a readable catalogue whose parts agree.

    Used by the survey to skip fields that are already done.  Cheap: reads
    headers only.
    """
    path = Path(path)
    if not path.is_file():
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(path, memmap=True, lazy_load_hdus=False) as hdul:
                names = [h.name for h in hdul]
                if not all(k in names for k in ("CATALOG", "SEGMAP", "CLASSMAP", "MASKS")):
                    return False
                n = int(hdul[0].header.get("NSOURCES", -1))
                nrows = int(hdul["CATALOG"].header.get("NAXIS2", -2))
                mh = hdul["MASKS"].header
                nm = int(mh.get("NAXIS3", 0)) if mh.get("NAXIS", 0) == 3 else 0
                return n == nrows == nm
    except Exception:  # noqa: BLE001
        return False
