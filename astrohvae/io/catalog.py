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

from astrohvae.conventions import CLASS_CODES, FLAG_BITS

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

MEASURE_COLUMNS = (
    [(f"mag_err_{b}", np.float32) for b in BANDS]
    + [("nbands", np.int16), ("bands", np.int16)]
    + [(n, np.float32) for n in ("semimajor_axis", "semiminor_axis", "orientation", "ellipticity", "fwhm",
                                 "kron_radius")]
    + [(f"kron_flux_{b}", np.float32) for b in BANDS]
    + [(f"kron_flux_err_{b}", np.float32) for b in BANDS]
    + [(f"psf_flux_{b}", np.float32) for b in BANDS]
    + [(f"psf_flux_err_{b}", np.float32) for b in BANDS]
    + [("r_half", np.float32), ("snr", np.float32)]
)
"""Measurement columns written after the schema's when the table has them (`astrohvae.detection`)."""

FLUX_UNIT_NOTE = "nanomaggy (3.631e-6 Jy; AB mag 22.5)"
"""Fluxes are in nanomaggies.  No FITS unit string equals one (the standard allows only powers
of ten as factors, and astropy warns on ``nanomaggy``), so flux columns carry no ``TUNIT``;
their ``TCOMM`` and the header's ``FLUXUNIT`` say nanomaggy, and `read_catalog` restores the
astropy unit ``nanomaggy``."""

_BAND_UCD = {"u": "em.opt.U", "g": "em.opt.B", "r": "em.opt.R", "i": "em.opt.I", "z": "em.opt.I"}

# name -> (TUNIT or None, TUCD, TCOMM)
COLUMN_INFO = {
    "id": (None, "meta.id;meta.main", "source number 1..N = its label in SEGMAP"),
    "x": ("pix", "pos.cartesian.x;instr.det", "centroid column, 0-based, r-band pixel grid"),
    "y": ("pix", "pos.cartesian.y;instr.det", "centroid row, 0-based, r-band pixel grid"),
    "ra": ("deg", "pos.eq.ra;meta.main", "right ascension (ICRS) of the centroid"),
    "dec": ("deg", "pos.eq.dec;meta.main", "declination (ICRS) of the centroid"),
    "class": (None, "src.class.starGalaxy", "star or galaxy (unsupervised A+Vr)"),
    "p_galaxy": (None, "stat.probability;src.class.starGalaxy", "posterior probability of galaxy"),
    "z_hvae": (None, "stat.value", "mean of the hierarchical VAE latent(s)"),
    "z_hvae_sigma": (None, "stat.stdev", "standard deviation of the hierarchical VAE latent(s)"),
    "z_ae": (None, "stat.value", "latent vector of the low-level autoencoder"),
    "area": ("pix2", "phys.area;instr.det", "pixels in the source segment"),
    "nbands": (None, "meta.number", "number of bands with a valid pixel in the segment"),
    "bands": (None, "meta.code", "bands with data: bit u=1 g=2 r=4 i=8 z=16"),
    "flags": (None, "meta.code.qual", "bitmask, see FLAGBITn in the primary header"),
    "semimajor_axis": ("pix", "phys.size.smajAxis", "1-sigma semimajor axis (photutils, g+r+i)"),
    "semiminor_axis": ("pix", "phys.size.sminAxis", "1-sigma semiminor axis (photutils, g+r+i)"),
    "orientation": ("deg", "pos.posAng;instr.det", "major axis angle from +x, counter-clockwise"),
    "ellipticity": (None, "src.ellipticity", "1 - semiminor/semimajor (photutils)"),
    "fwhm": ("pix", "phys.size.diameter", "circularised FWHM of the moments (photutils)"),
    "kron_radius": ("pix", "phys.size.radius", "unscaled first-moment Kron radius (photutils)"),
    "r_half": ("pix", "phys.size.radius", "half-light radius, g+r+i within 8 px"),
    "snr": (None, "stat.snr", "g+r+i signal-to-noise ratio in the segment"),
}
for _b in BANDS:
    _e = _BAND_UCD[_b]
    COLUMN_INFO.update({
        f"flux_{_b}": (None, f"phot.flux;{_e}", f"{_b} flux in the segment [nanomaggy]"),
        f"flux_err_{_b}": (None, f"stat.error;phot.flux;{_e}", f"error of flux_{_b} [nanomaggy]"),
        f"mag_{_b}": ("mag", f"phot.mag;{_e}", f"{_b} asinh magnitude (luptitude) of flux_{_b}"),
        f"mag_err_{_b}": ("mag", f"stat.error;phot.mag;{_e}", f"error of mag_{_b}"),
        f"kron_flux_{_b}": (None, f"phot.flux;{_e}", f"{_b} flux in the Kron aperture [nanomaggy]"),
        f"kron_flux_err_{_b}": (None, f"stat.error;phot.flux;{_e}", f"error of kron_flux_{_b} [nanomaggy]"),
        f"psf_flux_{_b}": (None, f"phot.flux;{_e}", f"{_b} PSF-fit flux, field PSF [nanomaggy]"),
        f"psf_flux_err_{_b}": (None, f"stat.error;phot.flux;{_e}", f"error of psf_flux_{_b} [nanomaggy]"),
    })
del _b, _e
_UNITS = {k: v[0] for k, v in COLUMN_INFO.items() if v[0]}
NANOMAGGY_COLUMNS = tuple(k for k in COLUMN_INFO if "flux" in k)


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
    for name, dtype in MEASURE_COLUMNS:
        cols[name] = np.zeros(0, dtype=dtype)
    return Table(cols)


def conform_table(table, latent_dim=1):
    """Return a copy of ``table`` with the schema's columns, order and dtypes.

    Schema columns come first in schema order, cast to their exact types
    (``z_hvae`` of shape (N,) is promoted to (N, 1)); then the
    `MEASURE_COLUMNS` the table has (all of them for a zero-row table); other
    columns follow unchanged.  Raises ``ValueError`` when a schema column is missing or has
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
    for name, dtype in MEASURE_COLUMNS:
        if name in table.colnames:
            out[name] = np.asarray(table[name]).astype(dtype)
        elif n == 0:
            out[name] = np.zeros(0, dtype=dtype)
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
    _describe(hdr)
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


def _describe(hdr):
    """The conventions a reader needs: date, frame, flux unit, luptitude softening, flag bits."""
    from datetime import datetime, timezone

    from astrohvae import SOFTENING

    hdr["DATE"] = (datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"), "UTC date the file was written")
    hdr["RADESYS"] = ("ICRS", "frame of ra, dec")
    hdr["EQUINOX"] = (2000.0, "equinox of ra, dec")
    hdr["FLUXUNIT"] = ("nanomaggy", "flux_* unit: 3.631e-6 Jy, AB mag 22.5")
    hdr["MAGTYPE"] = ("asinh", "mag_* are SDSS luptitudes, softening SOFTB_b")
    for b in BANDS:
        hdr[f"SOFTB_{b.upper()}"] = (float(SOFTENING[b]), f"luptitude softening b of {b} (f/f0)")
    for bit, text in FLAG_BITS.items():
        hdr[f"FLAGBIT{bit.bit_length() - 1}"] = (text[:47], f"flags bit value {bit}")


def _image_hdu(data, name, wcs):
    """An image HDU with the field's celestial WCS (pixel grid of the reference band)."""
    hdu = fits.ImageHDU(data, name=name)
    if wcs is not None and getattr(wcs, "has_celestial", False):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hdu.header.update(wcs.celestial.to_header(relax=False))
    return hdu


def write_catalog(path, table, segmap, classmap, masks, header=None, *, latent_dim=1, wcs=None):
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
    wcs : astropy.wcs.WCS, optional
        The field's WCS (reference-band grid), written on SEGMAP and CLASSMAP.

    Every column gets its description (``TCOMMn``) and UCD (``TUCDn``) and,
    where FITS has one, its unit (``TUNITn``; fluxes are nanomaggies,
    `FLUX_UNIT_NOTE`); every HDU its ``CHECKSUM`` and ``DATASUM``.

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
    for col in tab.itercols():
        col.unit = None
    cat = fits.BinTableHDU(tab, name="CATALOG")
    for i, name in enumerate(tab.colnames, 1):
        unit, ucd, comment = COLUMN_INFO.get(name, (None, None, None))
        if unit:
            cat.header.set(f"TUNIT{i}", unit, after=f"TFORM{i}")
        if comment:
            cat.header[f"TCOMM{i}"] = comment
        if ucd:
            cat.header[f"TUCD{i}"] = ucd
    cat.header["RADESYS"] = ("ICRS", "frame of ra, dec")
    cat.header["EQUINOX"] = 2000.0
    seg = _image_hdu(segmap, "SEGMAP", wcs)
    cls = _image_hdu(classmap, "CLASSMAP", wcs)
    msk = fits.ImageHDU(masks if n else None, name="MASKS")
    if not n:
        msk.header["NAXIS"] = 0
    msk.header["COMMENT"] = ("Row i: source id i+1 in its 64x64 stamp, whose pixel (32, 32) (0-based) is "
                             "the r-grid pixel (floor(x + 0.5), floor(y + 0.5)); no single WCS applies.")
    for key, comment in (("XYORIGIN", "0-based pixel coordinates"),):
        seg.header[key] = (0, comment)
    hdul = fits.HDUList([primary, cat, seg, cls, msk])
    try:
        with atomic_path(path) as tmp:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                hdul.writeto(tmp, overwrite=True, output_verify="fix", checksum=True)
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
                _restore_flux_units(table)
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


def _restore_flux_units(table):
    """Flux columns (no TUNIT, see `FLUX_UNIT_NOTE`) get astropy's ``nanomaggy`` back."""
    from astropy import units as u

    for name in NANOMAGGY_COLUMNS:
        if name in table.colnames and table[name].unit is None:
            table[name].unit = u.nanomaggy


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
