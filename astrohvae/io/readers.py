"""Read a five-band field (SDSS frames, a multi-extension FITS or a cube).

`read_field` is the one entry point.  It accepts

(a) one multi-extension FITS file whose image HDUs carry ``FILTER`` = u, g, r,
    i, z (any order, one WCS per HDU; bands whose WCS differ from the r band's
    are resampled onto the r grid);
(b) one FITS file holding a 3-D cube ``(5, ny, nx)`` with a ``BANDS`` keyword
    (e.g. ``'ugriz'``) — all bands on the same grid;
(c) the five SDSS ``frame-{band}-RUN-CAMCOL-FIELD.fits[.bz2|.gz]`` files of a
    field, given as any one of them, a glob pattern, a folder or a list of
    paths (files with other names are accepted in a list when their ``FILTER``
    keyword says which band they are).

and returns a `~astrohvae.io.field.Field` on the r-band pixel grid, in
nanomaggies, with a mask of unusable pixels.  Every problem with the input is
raised as `~astrohvae.errors.InputError` naming the file and the problem.
"""

from __future__ import annotations

import bz2
import glob as _glob
import gzip
import io
import os
import re
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from astrohvae import BANDS, REF_BAND
from astrohvae.errors import InputError
from astrohvae.io.align import exact_band_position, align_band, find_alignment_stars
from astrohvae.io.field import Field

__all__ = ["read_field", "parse_frame_name", "FRAME_RE"]

#: SDSS corrected-frame file names: frame-{band}-{run:06d}-{camcol}-{field:04d}.fits[.bz2|.gz]
FRAME_RE = re.compile(
    r"^frame-(?P<band>[ugriz])-(?P<run>\d+)-(?P<camcol>\d+)-(?P<field>\d+)\.fits?(?P<comp>\.bz2|\.gz|\.fz)?$"
)

_COMP_PREFERENCE = ("", ".gz", ".fz", ".bz2")  # uncompressed first: fastest to read
_NMGY_UNITS = {"nanomaggy", "nanomaggies", "nmgy", "nmaggy", "nanomaggys", "nmgys"}
_COUNT_UNITS = {"count", "counts", "dn", "adu", "data number"}
_FITS_ERRORS = (OSError, EOFError, ValueError, TypeError, IndexError, KeyError, zlib.error)


def parse_frame_name(path):
    """``(band, 'RUN-CAMCOL-FIELD', compression)`` of an SDSS frame file name, or None."""
    m = FRAME_RE.match(Path(path).name)
    if m is None:
        return None
    return m["band"], f"{m['run']}-{m['camcol']}-{m['field']}", m["comp"] or ""


def _stem(path):
    name = Path(path).name
    for suffix in (".bz2", ".gz", ".fz"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    for suffix in (".fits", ".fit", ".fts"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name


def _has_glob(text):
    return any(ch in text for ch in "*?[")


# --------------------------------------------------------------------------- reading HDUs
def _open_checked(path, source=None):
    """Open a FITS file fully into memory; every failure becomes an InputError.

    ``source`` is what `_source` returned for ``path`` (decompressed in
    advance, possibly in another thread); parsing happens here, in the
    calling thread, because `warnings.catch_warnings` is not thread-safe.

    Returns a list of ``(header, data)`` for all HDUs (data None for empty
    HDUs and tables, which are not needed).
    """
    from astropy.io import fits

    path = Path(path)
    if source is None:
        source = _source(path)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with fits.open(source, memmap=False, lazy_load_hdus=False) as hdul:
                hdus = []
                for hdu in hdul:
                    data = None
                    if isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
                        if hdu.header.get("NAXIS", 0) > 0 or isinstance(hdu, fits.CompImageHDU):
                            raw = hdu.data
                            if raw is not None:
                                data = np.array(raw, dtype=np.float32)
                    hdus.append((hdu.header.copy(), data))
    except InputError:
        raise
    except _FITS_ERRORS as exc:
        msg = str(exc).split("\n")[0].strip()
        if isinstance(exc, EOFError) or "end-of-stream" in msg:
            problem = "truncated compressed file"
        elif "SIMPLE" in msg or "Empty or corrupt" in msg:
            problem = "not a FITS file (or a corrupt/truncated one)"
        elif "buffer is too small" in msg or "cannot reshape array of size" in msg:
            problem = "truncated FITS file (data shorter than the header says)"
        else:
            problem = f"cannot read FITS file ({type(exc).__name__}: {msg})"
        raise InputError(path, problem) from None
    except Exception as exc:  # astropy VerifyError and friends
        msg = str(exc).split("\n")[0].strip()
        raise InputError(path, f"cannot read FITS file ({type(exc).__name__}: {msg})") from None
    for w in caught:
        text = str(w.message)
        if "truncated" in text.lower():
            raise InputError(path, "truncated FITS file")
    if not hdus:
        raise InputError(path, "not a FITS file (no HDU)")
    return hdus


def _source(path):
    """What to hand to ``fits.open``: the path, or the decompressed bytes.

    Compressed files are decompressed once into memory: astropy reading a
    ``.bz2`` file directly seeks back and forth in the compressed stream,
    which restarts the decompression and makes reading ~3x slower.
    """
    name = path.name.lower()
    opener = bz2.open if name.endswith(".bz2") else gzip.open if name.endswith(".gz") else None
    if opener is None:
        return path
    try:
        with opener(path, "rb") as fh:
            return io.BytesIO(fh.read())
    except EOFError:
        raise InputError(path, "truncated compressed file") from None
    except (PermissionError, FileNotFoundError, IsADirectoryError) as exc:
        raise InputError(path, f"cannot read file ({exc.strerror})") from None
    except (OSError, zlib.error) as exc:
        kind = "bzip2" if opener is bz2.open else "gzip"
        raise InputError(path, f"not a valid {kind} file ({exc})") from None


def _band_of(header):
    value = header.get("FILTER")
    if value is None:
        return None
    value = str(value).strip().lower()
    return value if value in BANDS else None


def _parse_bands_keyword(value, path):
    text = str(value).strip().lower()
    parts = [p for p in re.split(r"[\s,;/|]+", text) if p]
    letters = list(parts[0]) if len(parts) == 1 else parts
    unknown = [b for b in letters if b not in BANDS]
    if unknown:
        raise InputError(path, f"BANDS={value!r} names unknown band(s) {', '.join(unknown)} (expected u,g,r,i,z)")
    dup = sorted({b for b in letters if letters.count(b) > 1})
    if dup:
        raise InputError(path, f"BANDS={value!r} names band(s) {', '.join(dup)} twice")
    return letters


def _to_nanomaggy(data, header, path, band):
    """Scale ``data`` to nanomaggies according to BUNIT / NMGY; return (data, note)."""
    bunit = header.get("BUNIT")
    unit = str(bunit).strip().lower() if bunit is not None else ""
    if unit in _NMGY_UNITS:
        return data, "BUNIT"
    if unit in ("maggy", "maggies"):
        return data * np.float32(1e9), "maggy*1e9"
    if unit in _COUNT_UNITS:
        nmgy = header.get("NMGY")
        if nmgy is None:
            raise InputError(path, f"band {band} is in {bunit!r} without an NMGY calibration keyword")
        return data * np.float32(float(nmgy)), f"{bunit}*NMGY"
    if unit == "":
        return data, "assumed (no BUNIT)"
    raise InputError(path, f"band {band} has unit BUNIT={bunit!r}; expected nanomaggy (or counts with NMGY)")


def _celestial_wcs(header):
    from astropy.wcs import WCS, FITSFixedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        warnings.simplefilter("ignore", UserWarning)
        try:
            wcs = WCS(header)
        except Exception:
            return None
    if not wcs.has_celestial:
        return None
    cel = wcs.celestial
    # A header with CTYPEs but no real solution (default CDELT 1, CRVAL 0) is
    # not a usable WCS for alignment.
    hdr_keys = set(header.keys())
    if not ({"CD1_1", "CDELT1", "PC1_1", "CD2_2", "CDELT2"} & hdr_keys):
        return None
    return cel


# --------------------------------------------------------------------------- assembling a Field
def _assemble(planes, *, name, files, require_wcs, order, source, refine=True, threads=None):
    """Build the Field from ``planes``: band -> (data, header, path).

    ``require_wcs``: alignment through the WCS is compulsory (SDSS frames).
    Otherwise (MEF) bands are aligned only when they all have a WCS and the
    mappings differ from the identity; without any WCS all shapes must agree.
    """
    missing = [b for b in BANDS if b not in planes]
    if missing:
        raise InputError(source, f"missing band(s) {', '.join(missing)} for field {name}")

    masks, datas, notes = {}, {}, {}
    for b in BANDS:
        data, header, path = planes[b]
        if data is None or data.ndim != 2:
            raise InputError(path, f"band {b} is not a 2-D image")
        bad = ~np.isfinite(data)
        if bad.all():
            raise InputError(path, f"band {b} has no finite pixel (all NaN/inf)")
        data, notes[b] = _to_nanomaggy(data, header, path, b)
        datas[b] = data
        masks[b] = bad

    wcss = {b: _celestial_wcs(planes[b][1]) for b in BANDS}
    ref_data = datas[REF_BAND]
    ref_shape = ref_data.shape
    ref_wcs = wcss[REF_BAND]
    shapes_equal = all(datas[b].shape == ref_shape for b in BANDS)
    have = [b for b in BANDS if wcss[b] is not None]

    if require_wcs or (have and len(have) < len(BANDS)):
        lacking = [b for b in BANDS if wcss[b] is None]
        if lacking:
            b = lacking[0]
            raise InputError(planes[b][2], f"band {b} has no celestial WCS, needed to align the bands onto r")
    if not have and not shapes_equal:
        shapes = ", ".join(f"{b}:{datas[b].shape}" for b in BANDS)
        raise InputError(source, f"bands have different shapes ({shapes}) and no WCS to align them")

    out = np.zeros((len(BANDS),) + ref_shape, np.float32)
    out_mask = np.zeros((len(BANDS),) + ref_shape, bool)
    infos = {}
    todo = []
    for i, b in enumerate(BANDS):
        need = False
        if have and b != REF_BAND:
            need = datas[b].shape != ref_shape or not _is_identity(ref_wcs, wcss[b], ref_shape)
        if need:
            todo.append((i, b))
        else:
            out[i] = np.where(masks[b], 0.0, datas[b])
            out_mask[i] = masks[b]
            infos[b] = {"offset": (0.0, 0.0), "wcs_offset": (0.0, 0.0), "refine": (0.0, 0.0),
                        "nstars": 0, "residual": float("nan"), "noise_factor": 1.0}

    stars = None
    ref_filled = out[BANDS.index(REF_BAND)]
    if todo and refine:
        stars = find_alignment_stars(ref_filled, out_mask[BANDS.index(REF_BAND)])

    def work(item):
        i, b = item
        try:
            # astropy WCS objects are not guaranteed thread-safe: one copy per task
            d, m, info = align_band(datas[b], masks[b], wcss[b].deepcopy(), ref_wcs.deepcopy(),
                                    ref_shape, order=order,
                                    ref_image=ref_filled if refine else None, stars=stars)
        except ValueError as exc:
            raise InputError(planes[b][2], f"cannot align band {b} onto r: {exc}") from None
        if m.all():
            raise InputError(planes[b][2], f"band {b} does not overlap the r-band footprint")
        return i, b, d, m, info

    for i, b, d, m, info in _map_threads(work, todo, threads):
        out[i], out_mask[i], infos[b] = d, m, info

    meta = {
        "offsets": {b: infos[b]["offset"] for b in BANDS},
        "wcs_offsets": {b: infos[b]["wcs_offset"] for b in BANDS},
        "refinement": {b: {k: infos[b][k] for k in ("refine", "nstars", "residual")} for b in BANDS},
        "noise_factor": {b: infos[b]["noise_factor"] for b in BANDS},
        "aligned": [b for _, b in todo],
        "interpolation_order": order,
        "unit_source": notes,
        "headers": {b: planes[b][1] for b in BANDS},
    }
    return Field(
        data=out, mask=out_mask, wcs=ref_wcs, bands=tuple(BANDS), name=name,
        files=tuple(files), unit="nanomaggy", meta=meta,
    )


def _is_identity(ref_wcs, band_wcs, shape, tol=1e-3):
    ny, nx = shape
    x = np.array([0, nx - 1, 0, nx - 1, (nx - 1) / 2], float)
    y = np.array([0, 0, ny - 1, ny - 1, (ny - 1) / 2], float)
    bx, by = exact_band_position(ref_wcs, band_wcs, x, y)
    return bool(np.all(np.abs(bx - x) < tol) and np.all(np.abs(by - y) < tol))


def _map_threads(fn, items, threads=None):
    """``[fn(it) for it in items]`` on up to ``threads`` threads (default: one per CPU)."""
    items = list(items)
    if len(items) <= 1:
        return [fn(it) for it in items]
    workers = min(len(items), int(threads or os.cpu_count() or 1))
    if workers <= 1:
        return [fn(it) for it in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


# --------------------------------------------------------------------------- the three layouts
def _read_single_file(path, opts):
    """One FITS file: a cube with BANDS or a MEF with FILTER per HDU."""
    hdus = _open_checked(path)
    images = [(h, d) for h, d in hdus if d is not None]
    if not images:
        raise InputError(path, "FITS file holds no image data")
    cubes = [(h, d) for h, d in images if d.ndim == 3]
    if cubes:
        header, data = cubes[0]
        if "BANDS" not in header:
            raise InputError(path, "3-D image without a BANDS keyword (e.g. BANDS = 'ugriz')")
        names = _parse_bands_keyword(header["BANDS"], path)
        if data.shape[0] != len(names):
            raise InputError(
                path, f"cube has {data.shape[0]} planes but BANDS={header['BANDS']!r} names {len(names)}"
            )
        missing = [b for b in BANDS if b not in names]
        if missing:
            raise InputError(path, f"missing band(s) {', '.join(missing)} in cube (BANDS={header['BANDS']!r})")
        planes = {b: (data[names.index(b)], header, path) for b in BANDS}
        return _assemble(planes, name=_stem(path), files=[str(path)], require_wcs=False,
                         source=path, **opts)

    planes = {}
    for header, data in images:
        if data.ndim != 2:
            continue
        b = _band_of(header)
        if b is None:
            continue
        if b in planes:
            raise InputError(path, f"band {b} appears in more than one HDU")
        planes[b] = (data, header, path)
    if not planes:
        raise InputError(path, "no image HDU with FILTER = u/g/r/i/z and no 3-D cube with BANDS")
    if len(planes) == 1:
        (b,) = planes
        parsed = parse_frame_name(path)
        hint = " (its sibling frames were not found)" if parsed else ""
        raise InputError(path, f"holds only band {b}{hint}; give all five bands")
    shapes = {planes[b][0].shape for b in planes}
    if len(shapes) > 1 and not all(_celestial_wcs(planes[b][1]) is not None for b in planes):
        desc = ", ".join(f"{b}:{planes[b][0].shape}" for b in BANDS if b in planes)
        raise InputError(path, f"bands have mismatched shapes ({desc}) and no WCS to align them")
    return _assemble(planes, name=_stem(path), files=[str(path)], require_wcs=False,
                     source=path, **opts)


def _pick_by_compression(candidates, prefer=""):
    order = (prefer,) + tuple(c for c in _COMP_PREFERENCE if c != prefer)
    return min(candidates, key=lambda p: order.index(parse_frame_name(p)[2]))


def _frames_in_folder(folder, field_id=None, prefer=""):
    """Band -> path of the SDSS frames in ``folder`` (one field)."""
    found = {}
    for p in sorted(Path(folder).iterdir()):
        parsed = parse_frame_name(p)
        if parsed is None or not p.is_file():
            continue
        band, fid, _ = parsed
        if field_id is not None and fid != field_id:
            continue
        found.setdefault(fid, {}).setdefault(band, []).append(p)
    if not found:
        return None, {}
    if len(found) > 1:
        ids = sorted(found)
        raise InputError(folder, f"frames of {len(ids)} different fields ({', '.join(ids)}); give one field")
    (fid, per_band), = found.items()
    return fid, {b: _pick_by_compression(ps, prefer) for b, ps in per_band.items()}


def _read_band_files(paths, opts, source):
    """Single-band files (SDSS frames or files with a FILTER keyword)."""
    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.exists():
            raise InputError(p, "no such file")
        if p.is_dir():
            raise InputError(p, "is a folder; give files, one folder, or a glob pattern")
    ids = {}
    for p in paths:
        parsed = parse_frame_name(p)
        if parsed:
            ids.setdefault(parsed[1], p)
    if len(ids) > 1:
        (a, pa), (b, pb) = list(ids.items())[:2]
        raise InputError(pb, f"frames of different fields mixed: {a} ({pa.name}) and {b}")

    # decompression (the slow part) in threads, FITS parsing here
    sources = _map_threads(_source, paths, opts.get("threads"))
    loaded = [(p, _open_checked(p, src)) for p, src in zip(paths, sources)]
    planes = {}
    hdr_ids = {}
    for p, hdus in loaded:
        images = [(h, d) for h, d in hdus if d is not None and d.ndim == 2]
        if not images:
            raise InputError(p, "holds no 2-D image")
        header, data = images[0]
        parsed = parse_frame_name(p)
        band = parsed[0] if parsed else _band_of(header)
        if band is None:
            raise InputError(p, "cannot tell the band: no FILTER keyword and not named frame-{band}-RUN-CAMCOL-FIELD.fits")
        hb = _band_of(header)
        if parsed and hb is not None and hb != band:
            raise InputError(p, f"file name says band {band} but FILTER = {hb!r}")
        if band in planes:
            raise InputError(p, f"band {band} given twice ({planes[band][2].name} and {p.name})")
        planes[band] = (data, header, p)
        if all(k in header for k in ("RUN", "CAMCOL", "FRAME")):
            hdr_ids[band] = (int(header["RUN"]), int(header["CAMCOL"]), int(header["FRAME"]))
    # RUN and CAMCOL must agree; FRAME differs between the bands of one SDSS
    # field (each filter row of the drift-scan camera numbers its own frames).
    runcam = {b: v[:2] for b, v in hdr_ids.items()}
    if len(set(runcam.values())) > 1:
        first = runcam.get(REF_BAND, next(iter(runcam.values())))
        desc = ", ".join(f"{b}:{r:06d}-{c}" for b, (r, c) in runcam.items())
        bad_band = next(b for b in runcam if runcam[b] != first)
        raise InputError(planes[bad_band][2], f"frames of different fields mixed (RUN-CAMCOL {desc})")

    if ids:
        name = next(iter(ids))
    elif REF_BAND in hdr_ids:
        r, c, f = hdr_ids[REF_BAND]
        name = f"{r:06d}-{c}-{f:04d}"
    else:
        ref = planes.get(REF_BAND, next(iter(planes.values())))[2]
        name = _stem(ref)
    files = [str(planes[b][2]) for b in BANDS if b in planes]
    return _assemble(planes, name=name, files=files, require_wcs=True, source=source, **opts)


def read_field(path_or_paths, *, order=1, refine=True, threads=None):
    """Read a five-band field onto the r-band pixel grid.

    Parameters
    ----------
    path_or_paths : str, os.PathLike, sequence of them, or Field
        One of (a `Field` is returned unchanged)

        * a multi-extension FITS file with one image HDU per band, each with
          ``FILTER`` = u/g/r/i/z (any order);
        * a FITS file with a 3-D cube ``(5, ny, nx)`` and a ``BANDS``
          keyword naming the planes (e.g. ``'ugriz'``);
        * SDSS ``frame-{band}-RUN-CAMCOL-FIELD.fits[.bz2|.gz]`` files: any one
          of the five (the others are looked for beside it), a folder holding
          the five frames of one field, a glob pattern, or a list of the five
          paths.
    order : {1, 0, 3}, optional
        Interpolation order used to resample bands onto the r grid; the
        default bilinear interpolation conserves flux, does not ring and keeps
        the mask compact (see `astrohvae.io.align.resample`).
    refine : bool, optional
        After aligning through the WCS, measure the median residual shift of
        bright isolated stars between each band and r and remove it (the
        SDSS frame WCSs disagree by up to ~1 px between bands in some
        fields).  Needs at least 5 usable stars; otherwise the WCS alone is
        used.  See `astrohvae.io.align.align_band`.
    threads : int, optional
        Threads for decompressing and aligning the bands (default: one per
        CPU; a single-threaded survey worker passes 1).

    Returns
    -------
    field : `~astrohvae.io.field.Field`
        ``data`` float32 ``(5, ny, nx)`` in nanomaggies (0 under the mask),
        ``mask`` bool (NaN/inf input pixels, pixels whose interpolation
        touched one, and pixels outside a band's footprint), ``wcs`` the r
        band's celestial WCS (None when the input has none), ``name``
        ``'RUN-CAMCOL-FIELD'`` for SDSS frames else the file stem, ``files``
        the inputs.  ``meta['offsets'][band]`` is the ``(dx, dy)`` of the band's
        pixel grid relative to r before alignment (band pixel minus r pixel
        of the same sky position, WCS plus star refinement),
        ``meta['wcs_offsets']`` the WCS part alone (median over the field),
        ``meta['refinement'][band]`` the star-based correction (``refine``
        (dx, dy), ``nstars``, ``residual`` median star residual in px),
        ``meta['noise_factor'][band]`` the pixel-noise rms after / before
        resampling (bilinear interpolation lowers and correlates the
        noise: 0.5..1, 1 for bands not resampled),
        ``meta['aligned']`` the bands that were resampled,
        ``meta['headers']`` the per-band headers.

    Raises
    ------
    astrohvae.errors.InputError
        Missing paths or bands, non-FITS or truncated files, mismatched
        shapes, all-NaN bands, missing WCS where alignment needs one, files
        of different fields mixed.
    """
    if isinstance(path_or_paths, Field):
        return path_or_paths
    opts = {"order": order, "refine": refine, "threads": threads}
    if isinstance(path_or_paths, (str, os.PathLike)):
        text = os.fspath(path_or_paths)
        p = Path(text)
        if not p.exists() and _has_glob(text):
            matches = sorted(_glob.glob(text))
            if not matches:
                raise InputError(text, "no file matches this pattern")
            matches = [m for m in matches if not Path(m).is_dir()]
            if len(matches) == 1:
                return read_field(matches[0], order=order, refine=refine)
            return _read_band_files(matches, opts, source=text)
        if not p.exists():
            raise InputError(p, "no such file or folder")
        if p.is_dir():
            fid, frames = _frames_in_folder(p)
            if fid is None:
                fits_files = [q for q in sorted(p.iterdir()) if q.is_file() and re.search(
                    r"\.(fits?|fts)(\.bz2|\.gz|\.fz)?$", q.name, re.I)]
                if len(fits_files) == 1:
                    return _read_single_file(fits_files[0], opts)
                raise InputError(p, "no SDSS frame-{band}-RUN-CAMCOL-FIELD.fits files in this folder")
            missing = [b for b in BANDS if b not in frames]
            if missing:
                raise InputError(p, f"missing band(s) {', '.join(missing)} for field {fid} in this folder")
            return _read_band_files([frames[b] for b in BANDS], opts, source=p)
        parsed = parse_frame_name(p)
        if parsed is not None:
            band, fid, comp = parsed
            _, frames = _frames_in_folder(p.parent, field_id=fid, prefer=comp)
            frames[band] = p
            missing = [b for b in BANDS if b not in frames]
            if missing:
                raise InputError(p.parent, f"missing band(s) {', '.join(missing)} for field {fid} beside {p.name}")
            return _read_band_files([frames[b] for b in BANDS], opts, source=p)
        return _read_single_file(p, opts)

    try:
        paths = [Path(os.fspath(q)) for q in path_or_paths]
    except TypeError:
        raise InputError(repr(path_or_paths), "expected a path, a glob pattern or a list of paths") from None
    if not paths:
        raise InputError("[]", "empty list of files")
    if len(paths) == 1:
        return read_field(paths[0], order=order, refine=refine)
    return _read_band_files(paths, opts, source=paths[0].parent)
