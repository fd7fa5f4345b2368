"""The zarr (v3) stamp store: many fields' stamps on disk, read lazily with dask.

Layout of a store folder ``stamps.zarr``::

    flux        float32 (N, 5, 64, 64)  chunks (256, 5, 64, 64), blosc-zstd
    mask        uint8   (N, 64, 64)     chunks (1024, 64, 64)
    sky_sigma   float32 (N, 5)
    meta/field  int32   (N,)  index into attrs["fields"] (field records)
    meta/id, meta/flags, meta/xc, meta/yc                       int32
    meta/x, meta/y, meta/ra, meta/dec                           float64
    meta/dx, meta/dy, meta/truth_mag_r                          float32
    meta/truth_type                                             int8 (0 star, 1 galaxy, -1 unknown)

Group attributes: ``format`` (``"astrohvae-stamps/1"``), ``bands``,
``stamp_size``, ``n`` (rows that belong to completed fields) and ``fields``
(one record per completed field: ``key, name, files, start, stop, nsigma,
truth``).

Crash safety: a field's rows are appended to every array first and the
field's record plus the new ``n`` are written to the attributes **last** (one
atomic metadata write).  On reopening for append, arrays longer than ``n``
(left by a killed run) are truncated back to ``n`` and the inputs already
recorded are skipped, so `build_store` is appendable and idempotent.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.table import Table

from astrohvae import BANDS, STAMP_SIZE
from astrohvae.errors import InputError
from astrohvae.stamps.cutouts import StampSet, cut_stamps

__all__ = ['build_store', 'open_store', 'StampStore', 'match_truth', 'STORE_FORMAT']

STORE_FORMAT = "astrohvae-stamps/1"
FLUX_CHUNK = 256
MASK_CHUNK = 1024
META_CHUNK = 65536

# name -> (dtype, fill for rows without a value)
META_DTYPES = {
    "field": ("int32", -1),
    "id": ("int32", 0),
    "x": ("float64", np.nan),
    "y": ("float64", np.nan),
    "ra": ("float64", np.nan),
    "dec": ("float64", np.nan),
    "flags": ("int32", 0),
    "xc": ("int32", 0),
    "yc": ("int32", 0),
    "dx": ("float32", np.nan),
    "dy": ("float32", np.nan),
    "truth_type": ("int8", -1),
    "truth_mag_r": ("float32", np.nan),
}
TRUTH_MATCH_RADIUS = 1.5
CUT_CHUNK = 1024
"""Sources cut and written per step (bounds memory for crowded fields)."""


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def _compressor():
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")


def _is_store(path):
    path = Path(path)
    if not (path / "zarr.json").is_file():
        return False
    try:
        import zarr

        g = zarr.open_group(str(path), mode="r")
    except Exception:
        return False
    return g.attrs.get("format") == STORE_FORMAT


def _create(path, size, nbands):
    import zarr

    g = zarr.open_group(str(path), mode="w")
    comp = _compressor()
    g.create_array(
        "flux", shape=(0, nbands, size, size), chunks=(FLUX_CHUNK, nbands, size, size),
        dtype="float32", compressors=comp, fill_value=0.0,
    )
    g.create_array(
        "mask", shape=(0, size, size), chunks=(MASK_CHUNK, size, size),
        dtype="uint8", compressors=comp, fill_value=0,
    )
    g.create_array(
        "sky_sigma", shape=(0, nbands), chunks=(META_CHUNK, nbands), dtype="float32", fill_value=0.0
    )
    m = g.create_group("meta")
    for name, (dtype, fill) in META_DTYPES.items():
        m.create_array(name, shape=(0,), chunks=(META_CHUNK,), dtype=dtype, fill_value=fill)
    g.attrs.update(
        {
            "format": STORE_FORMAT,
            "bands": "".join(BANDS) if nbands == len(BANDS) else "",
            "stamp_size": int(size),
            "n": 0,
            "fields": [],
        }
    )
    return g


def _arrays(g):
    """All per-row arrays of an open group, by name (meta ones as ``meta/NAME``)."""
    out = {"flux": g["flux"], "mask": g["mask"], "sky_sigma": g["sky_sigma"]}
    meta = g["meta"]
    for name in META_DTYPES:
        out[f"meta/{name}"] = meta[name]
    return out


def _check_layout(path, g):
    """Raise InputError unless ``g`` has consistent stamp arrays."""
    try:
        arrs = _arrays(g)
    except KeyError as exc:
        raise InputError(path, f"stamp store lacks array {exc}") from None
    size = g.attrs.get("stamp_size")
    flux, mask, sky = arrs["flux"], arrs["mask"], arrs["sky_sigma"]
    if flux.ndim != 4 or flux.shape[2:] != (size, size):
        raise InputError(path, f"flux has shape {flux.shape}, expected (N, bands, {size}, {size})")
    if mask.ndim != 3 or mask.shape[1:] != (size, size):
        raise InputError(path, f"mask has shape {mask.shape}, expected (N, {size}, {size})")
    if sky.ndim != 2 or sky.shape[1] != flux.shape[1]:
        raise InputError(path, f"sky_sigma has shape {sky.shape}, expected (N, {flux.shape[1]})")
    n = int(g.attrs.get("n", -1))
    for name, a in arrs.items():
        if a.shape[0] < n:
            raise InputError(path, f"{name} has {a.shape[0]} rows but the store records {n}")
    return arrs


def _open_group(path, mode):
    import zarr

    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such stamp store")
    if not (path / "zarr.json").is_file():
        raise InputError(path, "not a zarr stamp store (no zarr.json)")
    try:
        g = zarr.open_group(str(path), mode=mode)
    except Exception as exc:  # zarr raises several types for bad metadata
        raise InputError(path, f"not a zarr stamp store ({type(exc).__name__})") from None
    if g.attrs.get("format") != STORE_FORMAT:
        raise InputError(path, f"not an astrohvae stamp store (format is not {STORE_FORMAT})")
    return g


def _recover(g):
    """Truncate every array back to the recorded length ``n`` (after a crash)."""
    n = int(g.attrs["n"])
    for a in _arrays(g).values():
        if a.shape[0] != n:
            a.resize((n,) + a.shape[1:])
    return n


def _input_key(inp):
    """A stable identity of one input, used to skip fields already stored."""
    from astrohvae.io.field import Field

    if isinstance(inp, Field):
        return f"field:{inp.name}"
    if isinstance(inp, (list, tuple)):
        return "|".join(sorted(str(Path(p).resolve()) for p in inp))
    return str(Path(inp).resolve())


def _read(inp):
    from astrohvae.io.field import Field

    if isinstance(inp, Field):
        return inp
    from astrohvae.io.readers import read_field

    return read_field(inp)


def _find_truth_file(field):
    """The simulator's ``truth-*.fits`` beside the field's frames, or None."""
    folders = []
    for f in field.files or ():
        p = Path(f)
        folder = p if p.is_dir() else p.parent
        if folder not in folders:
            folders.append(folder)
    for folder in folders:
        cands = sorted(folder.glob("truth-*.fits"))
        if not cands:
            continue
        named = [c for c in cands if field.name and field.name in c.name]
        return (named or cands)[0]
    return None


def _read_truth(path):
    from astrohvae.simulate.io import read_truth

    return read_truth(path)[0]


def match_truth(meta, truth, radius=TRUTH_MATCH_RADIUS):
    """Nearest truth object within ``radius`` pixels of each stamp's centroid.

    Parameters
    ----------
    meta : astropy.table.Table
        Needs ``x``, ``y``.
    truth : astropy.table.Table
        Simulator truth with ``x``, ``y``, ``type`` ('star'/'galaxy') and
        ``mag_r``.

    Returns
    -------
    truth_type : numpy.ndarray
        int8: 0 star, 1 galaxy, -1 no truth object within ``radius``.
    truth_mag_r : numpy.ndarray
        float32, NaN where unmatched.
    """
    from scipy.spatial import cKDTree

    n = len(meta)
    ttype = np.full(n, -1, np.int8)
    tmag = np.full(n, np.nan, np.float32)
    if n == 0 or truth is None or len(truth) == 0:
        return ttype, tmag
    tx = np.asarray(truth["x"], float)
    ty = np.asarray(truth["y"], float)
    kinds = np.char.strip(np.char.lower(np.asarray(truth["type"]).astype(str)))
    code = np.where(kinds == "star", 0, np.where(kinds == "galaxy", 1, -1)).astype(np.int8)
    tree = cKDTree(np.column_stack([tx, ty]))
    dist, idx = tree.query(
        np.column_stack([np.asarray(meta["x"], float), np.asarray(meta["y"], float)]),
        distance_upper_bound=radius,
    )
    hit = np.isfinite(dist)
    ttype[hit] = code[idx[hit]]
    if "mag_r" in truth.colnames:
        tmag[hit] = np.asarray(truth["mag_r"], np.float32)[idx[hit]]
    return ttype, tmag


@dataclass
class _FieldResult:
    key: str
    name: str
    files: list
    field: object
    background: object
    segm: object
    sources: Table
    truth_file: str | None


def _process_input(inp, nsigma, segmenter=None):
    """Read one input, find and measure its sources (no store access).

    The sources come from `astrohvae.pipeline.field.find_sources`, the chain
    ``astrohvae run`` uses, so the store holds the stamps ``run`` would
    classify.  The stamps themselves are cut later, `CUT_CHUNK` sources at
    a time, so that memory does not grow with the number of sources in a field.
    """
    from astrohvae.pipeline.field import find_sources

    field = _read(inp)
    bkg, segm, sources = find_sources(field, segmenter=segmenter, nsigma=nsigma)
    if sources is None:  # nothing found: the field is recorded with no stamps
        sources = Table()
    truth_file = _find_truth_file(field)
    ttype = np.full(len(sources), -1, np.int8)
    tmag = np.full(len(sources), np.nan, np.float32)
    if truth_file is not None and len(sources):
        ttype, tmag = match_truth(sources, _read_truth(truth_file))
    sources["truth_type"] = ttype
    sources["truth_mag_r"] = tmag
    return _FieldResult(
        _input_key(inp), field.name, [str(f) for f in field.files], field, bkg, segm, sources,
        str(truth_file) if truth_file else None,
    )


def _write_one(array, start, values):
    """Grow ``array`` and write ``values`` at rows ``start:``."""
    array.resize((start + len(values),) + array.shape[1:])
    array[start : start + len(values)] = values


def _append_field(g, res, nsigma, size, segmenter="photutils"):
    """Cut and append one field's stamps chunk by chunk, then record it (attributes last)."""
    n0 = int(g.attrs["n"])
    fields = list(g.attrs["fields"])
    arrs = _arrays(g)
    start = n0
    src = res.sources
    for a in range(0, len(src), CUT_CHUNK):
        part = src[a : a + CUT_CHUNK]
        st = cut_stamps(res.field, res.segm, part, res.background, size=size)
        columns = {"flux": st.flux, "mask": st.mask, "sky_sigma": st.sky_sigma}
        for name, (dtype, _) in META_DTYPES.items():
            if name == "field":
                values = np.full(len(st), len(fields), np.int32)
            elif name in ("truth_type", "truth_mag_r"):
                values = np.asarray(part[name])
            else:
                values = np.asarray(st.meta[name])
            columns[f"meta/{name}"] = values.astype(dtype)
        for name, values in columns.items():
            _write_one(arrs[name], start, values)
        start += len(st)
        del st, columns
    fields.append(
        {
            "key": res.key,
            "name": res.name,
            "files": res.files,
            "start": n0,
            "stop": start,
            "nsigma": float(nsigma),
            "segmenter": segmenter,
            "truth": res.truth_file,
        }
    )
    g.attrs.update({"n": start, "fields": fields})  # the commit point
    return start - n0


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------
def build_store(inputs, out, *, append=True, nsigma=1.5, progress=True, workers=1, size=STAMP_SIZE,
                segmenter="auto", device="auto"):
    """Cut the stamps of many fields into a zarr stamp store.

    Fields are processed one at a time (or ``workers`` at a time through
    dask's threaded scheduler) and appended to the store as soon as each is
    done, their stamps cut and written `CUT_CHUNK` sources at a time, so
    memory grows neither with the number of fields nor with the number of
    sources in a field.

    Parameters
    ----------
    inputs : sequence
        Things `astrohvae.io.readers.read_field` accepts (a folder of frames,
        a frame file, a MEF, a list of frame files), or in-memory
        `~astrohvae.io.field.Field` objects (identified by name).  A single
        path is accepted too.
    out : str or os.PathLike
        The store folder (``*.zarr``).
    append : bool
        Add to an existing store, skipping inputs already recorded (and
        discarding rows a killed run left unrecorded).  With False an existing
        store is replaced.
    nsigma : float
        Detection threshold of the photutils segmenter (`astrohvae.detection.detect.detect`).
    segmenter : {'auto', 'network', 'photutils'} or object
        As for ``astrohvae run`` (`astrohvae.pipeline.loading.load_segmenter`); the
        default is ``run``'s, so the store holds the stamps ``run`` classifies.
    device : str
        Device of the network segmenter.
    progress : bool
        Show a tqdm progress bar over the inputs.
    workers : int
        Fields processed concurrently (dask threads); 1 = sequential.
    size : int
        Stamp side for a new store.

    Returns
    -------
    dict
        ``out``, ``added`` (stamps added), ``total`` (stamps in the store),
        ``fields_added``, ``fields_skipped`` (names), ``n_fields`` (fields in
        the store).

    Raises
    ------
    InputError
        ``out`` exists but is not a stamp store, or an input is unreadable
        (fields finished before it stay recorded).
    """
    from tqdm.auto import tqdm

    from astrohvae.io.atomic import check_writable_dir
    from astrohvae.pipeline.loading import load_segmenter, segmenter_name

    seg = load_segmenter(segmenter, device=device)
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    inputs = list(inputs)
    out = Path(out)
    if out.exists():
        if not _is_store(out):
            if out.is_dir() and not any(out.iterdir()):
                out.rmdir()
            else:
                raise InputError(out, "exists and is not an astrohvae stamp store")
    check_writable_dir(out)
    created = not (out.exists() and append)
    if out.exists() and append:
        g = _open_group(out, "r+")
        _check_layout(out, g)
        if int(g.attrs["stamp_size"]) != size:
            raise InputError(out, f"store has {g.attrs['stamp_size']}-pixel stamps, not {size}")
        _recover(g)
    else:
        if out.exists():
            shutil.rmtree(out)
        g = _create(out, size, len(BANDS))

    done = {f["key"] for f in g.attrs["fields"]}
    todo, skipped, seen = [], [], set()
    for inp in inputs:
        key = _input_key(inp)
        if key in done or key in seen:
            skipped.append(_display_name(inp))
        else:
            seen.add(key)
            todo.append(inp)

    added, names = 0, []
    bar = tqdm(total=len(todo), desc="fields", unit="field", disable=not progress)
    try:
        step = max(1, int(workers))
        for i in range(0, len(todo), step):
            batch = todo[i : i + step]
            if step == 1:
                results = [_process_input(batch[0], nsigma, seg)]
            else:
                import dask

                tasks = [dask.delayed(_process_input)(inp, nsigma, seg) for inp in batch]
                results = dask.compute(*tasks, scheduler="threads", num_workers=step)
            for res in results:
                added += _append_field(g, res, nsigma, size, segmenter_name(seg))
                names.append(res.name)
                bar.update(1)
                bar.set_postfix(stamps=int(g.attrs["n"]))
            del results
    except BaseException:
        # A store this call created and that holds no finished field is
        # removed, so bad input leaves nothing behind; finished fields of an
        # interrupted build stay recorded (rerun to append the rest).
        if created and not g.attrs["fields"]:
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        bar.close()
    return {
        "out": str(out),
        "added": added,
        "total": int(g.attrs["n"]),
        "fields_added": names,
        "fields_skipped": skipped,
        "n_fields": len(g.attrs["fields"]),
    }


def _display_name(inp):
    from astrohvae.io.field import Field

    if isinstance(inp, Field):
        return inp.name
    if isinstance(inp, (list, tuple)):
        return ",".join(Path(p).name for p in inp)
    return Path(inp).name


class StampStore:
    """A stamp store opened for reading (see `open_store`).

    Attributes
    ----------
    path : pathlib.Path
    flux, mask, sky_sigma : dask.array.Array
        The recorded rows, chunked along N like the zarr arrays.
    meta : astropy.table.Table
        ``field`` (name), ``id, x, y, ra, dec, flags, xc, yc, dx, dy,
        truth_type, truth_mag_r``; loaded on first use.
    fields : list of str
        Names of the fields in the store, in order.
    records : list of dict
        The per-field records (``name, files, start, stop, ...``).
    """

    def __init__(self, path):
        import dask.array as da

        self.path = Path(path)
        g = _open_group(self.path, "r")
        arrs = _check_layout(self.path, g)
        self._group = g
        self._arrays = arrs
        self._n = int(g.attrs["n"])
        self.records = list(g.attrs["fields"])
        self.bands = tuple(g.attrs.get("bands") or BANDS)
        self.stamp_size = int(g.attrs["stamp_size"])
        n = self._n
        self.flux = da.from_zarr(arrs["flux"])[:n]
        self.mask = da.from_zarr(arrs["mask"])[:n]
        self.sky_sigma = da.from_zarr(arrs["sky_sigma"])[:n]
        self._meta = None

    @property
    def fields(self):
        return [r["name"] for r in self.records]

    def __len__(self):
        return self._n

    def __repr__(self):
        return f"StampStore({str(self.path)!r}, n={self._n}, fields={len(self.records)})"

    def _meta_rows(self, sel):
        names = np.array([r["name"] for r in self.records] or [""])
        cols = {}
        for name in META_DTYPES:
            a = self._arrays[f"meta/{name}"]
            v = a[sel] if isinstance(sel, slice) else a.get_orthogonal_selection((sel,))
            if name == "field":
                cols["field"] = names[v] if len(v) else np.zeros(0, names.dtype)
            else:
                cols[name] = v
        return Table(cols)

    @property
    def meta(self):
        if self._meta is None:
            self._meta = self._meta_rows(slice(0, self._n))
        return self._meta

    def _normalise(self, index):
        n = self._n
        if isinstance(index, (int, np.integer)):
            i = int(index) + (n if index < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"stamp index {index} out of range for {n} stamps")
            return slice(i, i + 1)
        if isinstance(index, slice):
            start, stop, step = index.indices(n)
            if step == 1:
                return slice(start, max(start, stop))
            return np.arange(start, stop, step)
        index = np.asarray(index)
        if index.dtype == bool:
            if index.shape != (n,):
                raise IndexError(f"boolean index of shape {index.shape} for {n} stamps")
            return np.flatnonzero(index)
        index = index.astype(np.int64).ravel()
        index[index < 0] += n
        if index.size and (index.min() < 0 or index.max() >= n):
            raise IndexError(f"stamp index out of range for {n} stamps")
        return index

    def __getitem__(self, index):
        """Read stamps into memory: slice, int, index array or boolean mask -> StampSet."""
        sel = self._normalise(index)
        a = self._arrays
        if not isinstance(sel, slice) and sel.size == 0:
            sel = slice(0, 0)
        if isinstance(sel, slice):
            flux, mask, sky = a["flux"][sel], a["mask"][sel], a["sky_sigma"][sel]
        else:
            # zarr orthogonal selection wants sorted unique indices; restore order after
            uniq, inv = np.unique(sel, return_inverse=True)
            flux = a["flux"].get_orthogonal_selection((uniq,))[inv]
            mask = a["mask"].get_orthogonal_selection((uniq,))[inv]
            sky = a["sky_sigma"].get_orthogonal_selection((uniq,))[inv]
            meta = self._meta_rows(uniq)[inv]
            return StampSet(flux, mask, sky, meta)
        return StampSet(flux, mask, sky, self._meta_rows(sel))

    def to_stampset(self):
        """All stamps in memory."""
        return self[:]


def open_store(path):
    """Open a stamp store made by `build_store` for reading.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    StampStore

    Raises
    ------
    InputError
        ``path`` is missing, not a stamp store, or its arrays disagree.
    """
    return StampStore(path)
