"""Test data: labelled simulated stamps, the dl4astro stamps, SDSS star recall."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from astrohvae.evaluation.metrics import summarise


def stamps_from_images(images, field="cutouts", size=None, nsigma=1.5):
    """A `~astrohvae.stamps.cutouts.StampSet` from bare five-band cutouts in nanomaggies.

    For labelled cutouts that come without masks or noise (e.g. the
    Kim & Brunner SDSS test stamps): each image is padded (with zeros, marked
    invalid, mask bit 4) or cropped about its centre to ``size`` (default
    `astrohvae.STAMP_SIZE`); the sky noise per band is the MAD-estimated
    standard deviation of the pixels; the source's own segment is the
    connected region above ``nsigma`` (g+r+i, smoothed) that touches the
    centre, other such regions are marked as other sources (bit 2).

    Parameters
    ----------
    images : ndarray (N, 5, h, w), nanomaggies
    field : str
        Value of ``meta['field']``.

    Returns
    -------
    StampSet
    """
    from astropy.table import Table
    from scipy import ndimage

    from astrohvae import STAMP_SIZE
    from astrohvae.stamps.cutouts import StampSet

    size = STAMP_SIZE if size is None else int(size)
    img = np.nan_to_num(np.asarray(images, dtype=np.float32))
    n, nb, h, w = img.shape
    flux = np.zeros((n, nb, size, size), np.float32)
    mask = np.full((n, size, size), 4, np.uint8)
    # place centre on centre
    cy, cx = h // 2, w // 2
    y0, x0 = size // 2 - cy, size // 2 - cx
    sy0, sx0 = max(0, -y0), max(0, -x0)
    dy0, dx0 = max(0, y0), max(0, x0)
    hh = min(h - sy0, size - dy0)
    ww = min(w - sx0, size - dx0)
    flux[:, :, dy0 : dy0 + hh, dx0 : dx0 + ww] = img[:, :, sy0 : sy0 + hh, sx0 : sx0 + ww]
    mask[:, dy0 : dy0 + hh, dx0 : dx0 + ww] = 0
    valid = mask == 0
    sky = np.zeros((n, nb), np.float32)
    for k in range(n):
        v = flux[k][:, valid[k]]
        sky[k] = 1.4826 * np.median(np.abs(v - np.median(v, axis=1, keepdims=True)), axis=1)
        det = ndimage.gaussian_filter(flux[k, 1:4].sum(axis=0), 1.0)
        sdet = ndimage.gaussian_filter(np.where(valid[k], flux[k, 1:4].sum(axis=0), 0), 1.0)
        noise = 1.4826 * np.median(np.abs(sdet[valid[k]] - np.median(sdet[valid[k]])))
        lab, _ = ndimage.label((det > nsigma * noise) & valid[k])
        c = size // 2
        own = lab[c - 1 : c + 2, c - 1 : c + 2]
        own_lab = np.bincount(own[own > 0].ravel()).argmax() if (own > 0).any() else 0
        if own_lab:
            mask[k][lab == own_lab] |= 1
        mask[k][(lab > 0) & (lab != own_lab)] |= 2
    meta = Table({"field": np.array([field] * n), "id": np.arange(1, n + 1, dtype=np.int32)})
    return StampSet(flux, mask, sky, meta)


def load_stamps(path, field=None):
    """A labelled `StampSet` from a zarr stamp store (`astrohvae.stamps`).

    Raises `InputError` when the store cannot be opened.
    """
    from astrohvae.errors import InputError
    from astrohvae.stamps.store import open_store

    try:
        store = open_store(path)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(path, f"not a stamp store ({exc.__class__.__name__})") from None
    return store.to_stampset()


def simulated_stamps(seeds, size, cache=None, segmenter="auto", log=None):
    """Labelled stamps of simulated fields, cut by the chain of ``astrohvae run``.

    Each field (`astrohvae.simulate.field.simulate_field`, ``size`` x ``size``)
    goes through `astrohvae.pipeline.field.find_sources` with ``segmenter`` and
    `astrohvae.stamps.cutouts.cut_stamps`; the truth is matched by position
    (`astrohvae.stamps.store.match_truth`) into ``meta['truth_type']`` /
    ``meta['truth_mag_r']`` and is used only for scoring.

    Parameters
    ----------
    seeds : sequence of int
    size : int
    cache : path or None
        Folder of ``sim-<seed>-<size>-<segmenter>.npz`` files (read when present, else written).
    segmenter : str
        As for `astrohvae.pipeline.loading.load_segmenter`.
    log : callable or None

    Returns
    -------
    astrohvae.stamps.cutouts.StampSet
    """
    from astropy.table import Table

    from astrohvae.pipeline.field import find_sources
    from astrohvae.pipeline.loading import load_segmenter
    from astrohvae.simulate.field import simulate_field
    from astrohvae.stamps.cutouts import StampSet, concatenate, cut_stamps
    from astrohvae.stamps.store import match_truth

    seg = None
    sets = []
    for s in seeds:
        f = None if cache is None else Path(cache) / f"sim-{s}-{size}-{segmenter}.npz"
        if f is not None and f.exists():
            z = np.load(f)
        else:
            if seg is None:
                seg = load_segmenter(segmenter, device="cpu")
            sim = simulate_field(s, size=(size, size))
            bkg, segm, src = find_sources(sim.field, segmenter=seg)
            st = cut_stamps(sim.field, segm, src, bkg)
            tt, tm = match_truth(st.meta, sim.truth)
            z = {"flux": st.flux, "mask": st.mask, "sky_sigma": st.sky_sigma, "truth_type": np.asarray(tt),
                 "truth_mag_r": np.asarray(tm)}
            if f is not None:
                f.parent.mkdir(parents=True, exist_ok=True)
                np.savez(f, **z)
        meta = Table({"field": np.array([f"sim{s}"] * len(z["flux"])),
                      "truth_type": np.asarray(z["truth_type"]).astype(int),
                      "truth_mag_r": np.asarray(z["truth_mag_r"], float)})
        sets.append(StampSet(np.asarray(z["flux"]), np.asarray(z["mask"]), np.asarray(z["sky_sigma"]), meta))
        if log is not None:
            log(f"simulated seed {s}: {len(meta)} stamps, {(meta['truth_type'] == 0).sum()} stars, "
                f"{(meta['truth_type'] == 1).sum()} galaxies")
    return concatenate(sets)


def evaluate_catalog(catalog, truth, radius=2.0):
    """Metrics of a catalogue's ``p_galaxy`` against a simulator truth table.

    Sources are matched to the nearest truth object within ``radius`` pixels;
    unmatched sources are left out.  Returns `summarise` rows (one method,
    one seed).
    """
    from astrohvae.io.catalog import read_catalog
    from astrohvae.simulate.io import read_truth
    from astrohvae.stamps.store import match_truth

    cat = read_catalog(catalog)
    t, _ = read_truth(truth)
    tt, tm = match_truth(cat.table, t, radius=radius)
    name = str(cat.header.get("CLASSIFR", cat.header.get("METHOD", "catalogue")))
    runs = {name: [np.asarray(cat.table["p_galaxy"], dtype=float)]}
    return summarise(np.asarray(tt).astype(int), tm, runs), runs, np.asarray(tt).astype(int)


def write_rows_csv(rows, path):
    """Write `summarise` rows as CSV (atomically)."""
    from astropy.table import Table

    from astrohvae.io.atomic import atomic_path

    t = Table(rows=[[r[k] for k in rows[0]] for r in rows], names=list(rows[0])) if rows else Table()
    with atomic_path(path) as tmp:
        t.write(tmp, format="ascii.csv", overwrite=True)
    return path


def load_dl4astro(folder):
    """The 20 labelled Kim & Brunner SDSS stamps as a StampSet and labels.

    The stamps (48x48, bands ugriz aligned to r) hold asinh magnitudes; they
    are converted back to nanomaggies with `astrohvae.photometry.luptitude_to_flux`
    (same softening), then centred in 64x64 stamps, the 16-pixel border
    zero-padded and marked invalid (mask bit 4); sky noise and segments are
    measured on the stamps (`stamps_from_images`).  Labels: +1 star -> 0,
    -1 galaxy -> 1.

    Returns
    -------
    (StampSet, y)
    """
    from pathlib import Path

    from astrohvae import BANDS
    from astrohvae.errors import InputError
    from astrohvae.photometry import luptitude_to_flux

    folder = Path(folder)
    try:
        img = np.load(folder / "sdss_test_images.npy")
        lab = np.load(folder / "sdss_test_labels.npy")
    except (OSError, ValueError) as exc:
        raise InputError(folder, f"cannot read the dl4astro stamps ({exc.__class__.__name__})") from None
    flux = np.stack([luptitude_to_flux(img[:, k], b) for k, b in enumerate(BANDS)], axis=1).astype(np.float32)
    st = stamps_from_images(flux, field="dl4astro")
    y = np.where(np.asarray(lab).ravel() > 0, 0, 1)
    return st, y


def star_recall(clf, field_folder, stars_path, radius=3.0, batch_size=256, segmenter="auto"):
    """Share of catalogued stars that ``clf`` labels star on a real field.

    The field goes through the chain of ``astrohvae run``
    (`astrohvae.pipeline.field.process_field` with the default segmenter); each
    catalogued star (``x_r``, ``y_r``) is matched to the nearest catalogue
    source within ``radius`` pixels (`astrohvae.stamps.store.match_truth`).

    Returns
    -------
    dict : ``n_catalogued``, ``n_matched``, ``n_star`` (matched and labelled
    star), ``share`` (n_star / n_matched), ``n_sources`` (detections),
    ``star_fraction_all`` (share of all detections labelled star).
    """
    from astropy.table import Table

    from astrohvae.io.readers import read_field
    from astrohvae.pipeline.field import process_field
    from astrohvae.pipeline.loading import load_segmenter
    from astrohvae.stamps.store import match_truth

    field = read_field(field_folder)
    cat = process_field(field, clf, segmenter=load_segmenter(segmenter), batch_size=batch_size).table
    stars = Table.read(stars_path)
    points = Table({"x": np.asarray(stars["x_r"], float), "y": np.asarray(stars["y_r"], float)})
    code, _ = match_truth(points, Table({"x": cat["x"], "y": cat["y"], "type": cat["class"]}), radius=radius)
    hit = code >= 0
    n_star = int(np.count_nonzero(code == 0))
    labels = np.asarray(cat["class"])
    return {"n_catalogued": int(len(points)), "n_matched": int(hit.sum()), "n_star": n_star,
            "share": n_star / max(int(hit.sum()), 1), "n_sources": int(len(cat)),
            "star_fraction_all": float((labels == "star").mean()) if len(labels) else float("nan")}
