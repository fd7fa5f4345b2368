"""One field end to end, and many fields on dask.distributed.

``process_field`` is the pure-ish core shared by both entry points::

    Field ─▶ background ─▶ segmentation (network or photutils baseline)
          ─▶ source measurement ─▶ 64×64×5 stamps (temporary zarr store,
             read back as a dask array chunked along N)
          ─▶ classifier, one chunk (``batch_size`` stamps) at a time
          ─▶ FieldProducts(table, segmap, classmap, masks, header)

``run_field`` reads the input, calls it, writes the catalogue atomically (and
optionally a preview PNG).  Many fields on dask.distributed:
`astrohvae.pipeline.survey.run_survey`.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path

import numpy as np
from astropy.table import Table

from astrohvae import BANDS, STAMP_SIZE
from astrohvae.conventions import FLAG_MASKED
from astrohvae.errors import InputError, OutputError
from astrohvae.io.atomic import check_output
from astrohvae.io.catalog import Z_AE_DIM, conform_table, empty_table, write_catalog
from astrohvae.io.field import Field
from astrohvae.pipeline.inputs import (
    DEFAULT_NSIGMA,
    check_field,
    check_nsigma,
    field_name,
    input_paths,
    one_line,
    read_input,
)
from astrohvae.pipeline.loading import load_classifier, load_segmenter, segmenter_name

__all__ = ['FieldProducts', 'RunResult', 'process_field', 'run_field']

CUT_CHUNK = 2048
"""Sources per `cut_stamps` call (bounds the stamps held in memory at once)."""


# ----------------------------------------------------------------------------- results
@dataclass
class FieldProducts:
    """Everything that goes into one catalogue file."""

    table: Table
    segmap: np.ndarray
    classmap: np.ndarray
    masks: np.ndarray
    header: dict
    timings: dict = dc_field(default_factory=dict)
    latent_dim: int = 1
    cpu_timings: dict = dc_field(default_factory=dict)
    """Process CPU seconds per step (all threads), next to the wall-clock `timings`."""


class _Steps:
    """Wall-clock and process-CPU seconds of named pipeline steps."""

    def __init__(self, on_step=None):
        self.wall, self.cpu = {}, {}
        self._t0 = (time.perf_counter(), time.process_time())
        self._on_step = on_step

    def start(self):
        self._mark = (time.perf_counter(), time.process_time())

    def stop(self, name):
        w, c = self._mark
        self.wall[name] = time.perf_counter() - w
        self.cpu[name] = time.process_time() - c
        if self._on_step is not None:
            self._on_step(name)

    def zero(self, *names):
        for n in names:
            self.wall[n] = self.cpu[n] = 0.0
            if self._on_step is not None:
                self._on_step(n)

    def total(self):
        self.wall["total"] = time.perf_counter() - self._t0[0]
        self.cpu["total"] = time.process_time() - self._t0[1]


@dataclass
class RunResult:
    """Summary of `run_field`."""

    field: str
    catalog: Path
    preview: Path | None
    rows: int
    n_star: int
    n_galaxy: int
    seconds: float
    timings: dict

    @property
    def star_fraction(self):
        return self.n_star / self.rows if self.rows else float("nan")

    def as_dict(self):
        return {
            "field": self.field, "catalog": str(self.catalog),
            "preview": str(self.preview) if self.preview else None, "rows": self.rows,
            "n_star": self.n_star, "n_galaxy": self.n_galaxy,
            "star_fraction": self.star_fraction, "seconds": round(self.seconds, 3),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }


# ----------------------------------------------------------------------------- the core
def _relabel(segm_data, ids):
    """Segmentation relabelled so that ``ids[k]`` becomes k+1; other labels -> 0."""
    ids = np.asarray(ids, dtype=np.int64)
    top = int(max(segm_data.max(initial=0), ids.max(initial=0)))
    lut = np.zeros(top + 1, dtype=np.int32)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    return lut[segm_data]


MASK_GROW = 2


def _masked_flags(segmap, mask, n, grow=MASK_GROW):
    """Flag 4 for sources whose segment contains or borders (``grow`` pixels) masked pixels.

    The detection leaves NaN/inf/saturated pixels out of every segment, so a
    source cut by a dead region is found by the masked pixels next to it.
    """
    from scipy import ndimage

    bad = np.asarray(mask, bool).any(axis=0)
    out = np.zeros(n, np.int32)
    if not bad.any() or n == 0:
        return out
    near = ndimage.binary_dilation(bad, iterations=grow) if grow else bad
    labels = segmap[near]
    hit = np.bincount(labels[labels > 0], minlength=n + 1)[1 : n + 1] > 0
    out[hit] = FLAG_MASKED
    return out


def make_classmap(segmap, classes):
    """uint8 map: 0 sky, 1 star, 2 galaxy, from a segmap with labels 1..N and N class names."""
    from astrohvae.segmentation.classmap import classmap

    return classmap(segmap, np.arange(1, len(classes) + 1), classes)


def stamp_store(field, segm, sources, background, batch_size, workdir, stamps_mod):
    """Cut stamps chunk by chunk into a zarr store; return dask arrays + meta."""
    import dask.array as da
    import zarr

    n = len(sources)
    chunk = max(1, min(batch_size, n))
    cut = max(chunk, (CUT_CHUNK // chunk) * chunk)  # whole zarr chunks per cut
    root = zarr.open_group(str(Path(workdir) / "stamps.zarr"), mode="w")
    # every chunk is written as it is: zarr's default first compares each
    # chunk with the fill value to skip empty ones, an extra pass over the
    # stamps (~40 % of the write time) that never pays here
    kw = dict(compressors=None, fill_value=0, config={"write_empty_chunks": True})
    flux = root.create_array("flux", shape=(n, len(BANDS), STAMP_SIZE, STAMP_SIZE),
                             chunks=(chunk, len(BANDS), STAMP_SIZE, STAMP_SIZE), dtype="f4", **kw)
    mask = root.create_array("mask", shape=(n, STAMP_SIZE, STAMP_SIZE),
                             chunks=(chunk, STAMP_SIZE, STAMP_SIZE), dtype="u1", **kw)
    sky = root.create_array("sky_sigma", shape=(n, len(BANDS)), chunks=(chunk, len(BANDS)), dtype="f4", **kw)
    metas = []
    padded = stamps_mod.padded_planes(field, segm, background, STAMP_SIZE) if n > cut else None
    for a in range(0, n, cut):
        b = min(n, a + cut)
        st = stamps_mod.cut_stamps(field, segm, sources[a:b], background, size=STAMP_SIZE, padded=padded)
        if len(st) != b - a:
            raise RuntimeError(f"cut_stamps returned {len(st)} stamps for {b - a} sources")
        flux[a:b] = np.asarray(st.flux, dtype=np.float32)
        mask[a:b] = np.asarray(st.mask, dtype=np.uint8)
        sky[a:b] = np.asarray(st.sky_sigma, dtype=np.float32)
        metas.append(st.meta)
    from astropy.table import vstack

    meta = vstack(metas, metadata_conflicts="silent") if len(metas) > 1 else metas[0]
    return da.from_zarr(flux), da.from_zarr(mask), da.from_zarr(sky), meta


def _classify_field(clf, dflux, dmask, dsky, meta, stamps_mod, batch_size):
    """Classify all stamps of one field in one classifier call.

    The classifier calibrates its morphology statistics on the field's own
    stellar locus and PSF, estimated from all the sources of a field given in
    one call; handing it the field chunk by chunk would make a source's class
    depend on which chunk it fell in.  A classifier that reads lazily backed
    stamps (``reads_lazy_stamps``, as the shipped A+Vr) gets the zarr-backed
    dask array of the fluxes and reads it chunk by chunk (memory bounded by
    its chunk, whatever the field's number of sources); any other gets the
    field's stamps gathered in memory.  The networks run in batches of
    ``batch_size``.
    """
    import dask.array as da

    # chunk by chunk straight into one buffer per array (a compute() would
    # concatenate the chunks: one more copy)
    lazy = bool(getattr(clf, "reads_lazy_stamps", False))
    arrays = [dmask, dsky] if lazy else [dflux, dmask, dsky]
    bufs = [np.empty(d.shape, d.dtype) for d in arrays]
    da.store(arrays, bufs, lock=False, scheduler="synchronous")
    f, m, s = ([dflux] + bufs) if lazy else bufs
    st = stamps_mod.StampSet(flux=f, mask=m, sky_sigma=s, meta=meta)
    try:
        p, lat = predict_classes(clf, st, batch_size)
    except (RuntimeError, ValueError, KeyError, IndexError) as exc:
        raise ClassifierFailure(one_line(f"{type(exc).__name__}: {exc}", 160)) from exc
    p = np.asarray(p, dtype=np.float32).reshape(-1)
    return p, {k: np.asarray(v, dtype=np.float32) for k, v in lat.items()}, m


class ClassifierFailure(RuntimeError):
    """The classifier could not run on the stamps (weights that do not fit this code)."""


def predict_classes(clf, stamps, batch_size=256):
    """p_galaxy and latents (one network pass when the classifier offers it)."""
    both = getattr(clf, "predict_proba_transform", None)
    if callable(both):
        return both(stamps, batch_size=batch_size)
    lat = clf.transform(stamps)
    p = np.asarray(clf.predict_proba(stamps))
    if p.ndim == 2:  # (N, 2) [star, galaxy] in scikit-learn style
        p = p[:, -1]
    return p, lat


def _classes(clf, p):
    thr = float(getattr(clf, "threshold", 0.5) or 0.5)
    return np.where(p >= thr, "galaxy", "star")


PROCESS_STEPS = ("background", "segment", "measure", "stamps", "classify")
"""The steps of `process_field`, in order."""


def find_sources(field, *, segmenter=None, nsigma=DEFAULT_NSIGMA, steps=None):
    """Background, segmentation and measured sources of one field: the one field -> sources chain.

    ``astrohvae run``, ``survey``, ``stamps`` (the training store) and
    ``segment`` all find their sources here, so a model is trained on stamps
    cut exactly as those it classifies.

    Parameters
    ----------
    field : astrohvae.io.field.Field
    segmenter : object or None
        ``segment(field, background) -> SegmentationImage or None`` (see
        `load_segmenter`); None uses the photutils baseline
        `astrohvae.detection.detect.detect` at ``nsigma``.
    nsigma : float
    steps : _Steps or None
        Timings of the ``background``, ``segment`` and ``measure`` steps.

    Returns
    -------
    background : astrohvae.detection.background.Background
    segm : SegmentationImage or None
        Labels 1..N, equal to the ``id`` column of ``sources``.
    sources : astropy.table.Table or None
        `astrohvae.detection.sources.measure_sources`; None when nothing was found.
    """
    from astrohvae.detection.background import estimate_background
    from astrohvae.detection.detect import detect
    from astrohvae.detection.sources import measure_sources

    t = steps if steps is not None else _Steps()
    t.start()
    background = estimate_background(field)
    t.stop("background")
    t.start()
    segm = segmenter.segment(field, background) if segmenter is not None else None
    if segmenter is None:
        segm = detect(field, background, nsigma=nsigma)
    t.stop("segment")
    if segm is None or getattr(segm, "n_labels", 0) == 0:
        return background, None, None
    t.start()
    segm.relabel_consecutive()
    sources = measure_sources(field, segm, background)
    ids = np.asarray(sources["id"], dtype=np.int64)
    if not np.array_equal(ids, np.arange(1, len(ids) + 1)) or len(ids) != segm.n_labels:
        order = np.argsort(ids, kind="stable")
        sources = sources[order]
        new = _relabel(segm.data, np.asarray(sources["id"]))
        segm.data = new if new.any() else segm.data
        sources["id"] = np.arange(1, len(sources) + 1, dtype=np.int32)
    t.stop("measure")
    if len(sources) == 0:
        return background, None, None
    return background, segm, sources


def process_field(field, classifier, *, segmenter=None, nsigma=DEFAULT_NSIGMA, batch_size=256,
                  workdir=None, on_step=None):
    """Catalogue pieces of one field.

    Parameters
    ----------
    field : astrohvae.io.field.Field
        The aligned five-band field.
    classifier : object
        Has ``predict_proba(StampSet)``, ``transform(StampSet)`` (dict with
        ``z_ae``, ``z_hvae``, ``z_hvae_sigma``), ``weights_hash`` and ``method``.
    segmenter : object or None
        ``segment(field, background) -> SegmentationImage or None``; None
        uses the photutils baseline `astrohvae.detection.detect.detect` at ``nsigma``.
    nsigma : float
        Detection threshold of the baseline, in background sigma.
    batch_size : int
        Stamps per network batch of the classifier (and zarr / dask chunk along N).
    workdir : path, optional
        Where the temporary stamp store goes (default: the system temp dir).
    on_step : callable, optional
        Called with the name of each step (`PROCESS_STEPS`) when it ends.

    Returns
    -------
    FieldProducts
        Table (ids 1..N equal to SEGMAP labels), segmap, classmap, masks,
        header keywords and per-step timings.  A field without sources gives
        a valid zero-row result.
    """
    import astrohvae.stamps.cutouts as stamps_mod

    t = _Steps(on_step)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        background, segm, sources = find_sources(field, segmenter=segmenter, nsigma=nsigma, steps=t)
        header = {
            "FIELD": field.name or "",
            # sha256 of the weights' config.json (`astrohvae.models.weights.weights_hash`, what 'train' prints);
            # 64 characters leave no room for a comment on the card
            "MODELSHA": str(getattr(classifier, "weights_hash", "unknown")),
            "CLFMETH": (str(getattr(classifier, "method", type(classifier).__name__)), "classifier method"),
            "DETMETH": (segmenter_name(segmenter), "segmentation method"),
            "DETNSIG": (float(nsigma), "detection threshold [background sigma]"),
            "SEGISO": (float(getattr(segmenter, "isophote", None) or -1.0),
                       "footprint isophote, r sky sigma (-1: none)"),
            "FLUXTYPE": ("segment", "flux_* summed over the source segment"),
            "INFILE": [Path(f).name for f in field.files] or [field.name or "in-memory"],
        }
        from astrohvae.viz.preview import is_simulated

        if is_simulated(field):
            header["SIMULATE"] = (True, "input frames made by astrohvae.simulate")
        latent_dim = int(getattr(classifier, "latent_dim", 0) or 0) or 1
        ny, nx = field.shape
        if sources is None:
            t.zero("measure", "stamps", "classify", "photometry")
            return _empty_products(ny, nx, header, t, latent_dim)
        n = len(sources)
        t.start()
        tmp_ctx = tempfile.TemporaryDirectory(prefix="astrohvae-stamps-", dir=workdir)
        with tmp_ctx as tmp:
            dflux, dmask, dsky, meta = stamp_store(field, segm, sources, background, batch_size, tmp,
                                                    stamps_mod)
            t.stop("stamps")
            t.start()
            p, lat, stamp_mask = _classify_field(classifier, dflux, dmask, dsky, meta, stamps_mod, batch_size)
            masks = (stamp_mask & 1).astype(np.uint8)
            t.stop("classify")
            t.start()
            from astrohvae.detection.measure import measure_catalog

            extra = measure_catalog(field, segm, background,
                                    stamps_mod.StampSet(dflux, stamp_mask, np.asarray(dsky), meta))
            del stamp_mask
            t.stop("photometry")

    table = Table(sources, copy=True)
    table["id"] = np.arange(1, n + 1, dtype=np.int32)
    cls = _classes(classifier, p)
    table["class"] = cls
    table["p_galaxy"] = p.astype(np.float32)
    z_hvae = np.asarray(lat["z_hvae"], np.float32)
    z_hvae = z_hvae[:, None] if z_hvae.ndim == 1 else z_hvae
    sig = np.asarray(lat.get("z_hvae_sigma", np.full_like(z_hvae, np.nan)), np.float32)
    sig = sig[:, None] if sig.ndim == 1 else sig
    table["z_hvae"] = z_hvae
    table["z_hvae_sigma"] = sig
    # a classifier without the paper's 30-latent AE (V+M, Vr+M) leaves z_ae NaN
    z_ae = lat.get("z_ae")
    table["z_ae"] = np.asarray(z_ae, np.float32) if z_ae is not None else np.full((n, Z_AE_DIM), np.nan, np.float32)
    flags = np.asarray(table["flags"], dtype=np.int32) if "flags" in table.colnames else np.zeros(n, np.int32)
    if "flags" in meta.colnames:
        flags = flags | np.asarray(meta["flags"], dtype=np.int32)
    segmap = np.asarray(segm.data, dtype=np.int32)
    table["flags"] = flags | _masked_flags(segmap, field.mask, n)
    for name in extra.colnames:
        table[name] = extra[name]
    latent_dim = z_hvae.shape[1]
    table = conform_table(table, latent_dim=latent_dim)
    classmap = make_classmap(segmap, cls)
    t.total()
    return FieldProducts(table, segmap, classmap, masks, header, t.wall, latent_dim, t.cpu)


def _empty_products(ny, nx, header, steps, latent_dim):
    steps.total()
    return FieldProducts(empty_table(latent_dim), np.zeros((ny, nx), np.int32), np.zeros((ny, nx), np.uint8),
                         np.zeros((0, STAMP_SIZE, STAMP_SIZE), np.uint8), header, steps.wall, latent_dim,
                         steps.cpu)


# ----------------------------------------------------------------------------- one field
def regions_path(catalog):
    """The DS9 region file beside a catalogue: ``X.cat.fits`` -> ``X.cat.reg``."""
    return Path(catalog).with_suffix(".reg")


def default_output(name, directory="."):
    """``<directory>/<name>.cat.fits``."""
    return Path(directory) / f"{name}.cat.fits"


def run_field(path, out=None, *, weights=None, device="auto", batch_size=256, preview=False,
              segmenter="auto", nsigma=DEFAULT_NSIGMA, classifier=None, preview_out=None, threads=None,
              regions=False, overwrite=True, progress=False, isophote=None):
    """Read a field, make its catalogue, write it atomically (and a preview).

    Parameters
    ----------
    path : str, os.PathLike, list or Field
        Any input form of `astrohvae.io.readers.read_field`, or a `Field`.
    out : path, optional
        Catalogue file (default ``./<field>.cat.fits``).
    weights : path, optional
        Classifier weights folder (default: the shipped weights).
    device : str
        ``'auto'``, ``'cpu'``, ``'cuda'`` ...
    batch_size : int
        Stamps per classifier batch.
    preview : bool
        Also write a PNG preview (``preview_out``, default ``<out>.png``).
    segmenter : {'auto', 'network', 'photutils'} or object
        Segmentation method (see `load_segmenter`).
    classifier : object, optional
        An already loaded classifier (overrides ``weights``).
    threads : int, optional
        Threads for reading the bands (default one per CPU).
    regions : bool
        Also write a DS9 region file beside the catalogue (``<out>`` with
        ``.reg`` for ``.fits``; `astrohvae.io.ds9`).
    overwrite : bool
        Replace an existing catalogue (and preview) written by astrohvae; never
        an input or any other file (see `astrohvae.io.atomic.check_output`).
        Missing output folders are created.
    progress : bool
        A progress bar over the steps on stderr (tqdm).
    isophote : float, optional
        Footprint level of the network segmenter in r sky sigma (header
        card SEGISO); None: its default, 0.5.

    Returns
    -------
    RunResult
    """
    t0 = time.perf_counter()
    if isinstance(path, Field):
        field = path
        label = field.name or "field"
    else:
        label = path if isinstance(path, (str, os.PathLike)) else (list(path)[0] if path else "")
        field = None
    name = field.name if field is not None else field_name(label)
    out = Path(out) if out is not None else default_output(name)
    inputs = [] if field is not None else input_paths(path)
    check_output(out, inputs=inputs, kind="catalog", overwrite=overwrite)
    png = None
    if preview:
        png = Path(preview_out) if preview_out else out.with_suffix(".png")
        if os.path.abspath(png) == os.path.abspath(out):
            raise OutputError(png, "the preview and the catalogue cannot be the same file")
        check_output(png, inputs=inputs, kind="png", overwrite=overwrite)
    if regions:
        check_output(regions_path(out), inputs=inputs, kind="text", overwrite=overwrite)
    check_nsigma(nsigma)

    from tqdm.auto import tqdm

    steps = ["load"] + (["read"] if field is None else []) + list(PROCESS_STEPS) + ["write"] + \
        (["preview"] if png is not None else [])
    bar = tqdm(total=len(steps), desc=str(name), unit="step", disable=not progress, file=sys.stderr, leave=False)

    def on_step(done):
        bar.update(1)
        if done in steps and steps.index(done) + 1 < len(steps):
            bar.set_postfix_str(steps[steps.index(done) + 1])

    try:
        return _run_field(path, field, label, name, out, png, weights, device, batch_size, segmenter, nsigma,
                          classifier, threads, t0, on_step, regions, isophote)
    finally:
        bar.close()


def _run_field(path, field, label, name, out, png, weights, device, batch_size, segmenter, nsigma, classifier,
               threads, t0, on_step, regions, isophote):
    clf = classifier if classifier is not None else load_classifier(weights, device)
    seg = load_segmenter(segmenter, device, isophote=isophote)
    on_step("load")

    timings = {}
    if field is None:
        t1 = time.perf_counter()
        field = read_input(path, threads=threads)
        timings["read"] = time.perf_counter() - t1
        on_step("read")
    check_field(field, label)
    try:
        prod = process_field(field, clf, segmenter=seg, nsigma=nsigma, batch_size=batch_size, workdir=None,
                             on_step=on_step)
    except ClassifierFailure as exc:
        from astrohvae.classify.base import DEFAULT_WEIGHTS

        where = weights if weights is not None else DEFAULT_WEIGHTS
        raise InputError(where, f"weights do not fit this version of the classifier ({exc})") from None
    timings.update(prod.timings)
    t1 = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    write_catalog(out, prod.table, prod.segmap, prod.classmap, prod.masks, prod.header,
                  latent_dim=prod.latent_dim, wcs=field.wcs)
    timings["write"] = time.perf_counter() - t1
    on_step("write")
    if regions:
        from astrohvae.io.ds9 import write_regions

        t1 = time.perf_counter()
        write_regions(regions_path(out), prod.table, field.wcs)
        timings["regions"] = time.perf_counter() - t1
    if png is not None:
        from astrohvae.viz.preview import write_preview

        t1 = time.perf_counter()
        png.parent.mkdir(parents=True, exist_ok=True)
        write_preview(png, field, prod.table, title=f"{name}: {len(prod.table)} sources")
        timings["preview"] = time.perf_counter() - t1
        on_step("preview")
    cls = np.asarray(prod.table["class"])
    n_star = int(np.sum(cls == "star"))
    return RunResult(field=name, catalog=out, preview=png, rows=len(prod.table), n_star=n_star,
                     n_galaxy=len(cls) - n_star, seconds=time.perf_counter() - t0, timings=timings)
