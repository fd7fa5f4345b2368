"""Writing simulated fields as SDSS frames with their truth, and reading the truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from astrohvae import BANDS
from astrohvae.errors import InputError
from astrohvae.simulate.field import (
    FULL_SIZE,
    MASK_THRESHOLD,
    MAX_PIXELS,
    field_ids,
    simulate_field,
)

__all__ = ['write_simulation', 'write_adjacent', 'read_truth']

# ------------------------------------------------------------------------ I/O
def _names(seed):
    run, camcol, fieldno = field_ids(seed)
    frames = {b: f"frame-{b}-{run:06d}-{camcol}-{fieldno:04d}.fits" for b in BANDS}
    return frames, f"truth-{run:06d}-{camcol}-{fieldno:04d}.fits"


def _is_truth(path):
    """True when ``path`` is a truth file written by `write_simulation`."""
    from astropy.io import fits

    try:
        with fits.open(path) as hdul:
            return "SIMSEED" in hdul[0].header and "TRUTH" in hdul
    except Exception:  # noqa: BLE001 - anything unreadable is not ours
        return False


def write_simulation(out, seed, size=FULL_SIZE, star_fraction=None, overwrite=False, band_offset_scale=1.0):
    """Simulate a field and write it as SDSS-style frames plus a truth file.

    Writes into folder ``out`` (created if needed) the five files
    ``frame-{b}-{run:06d}-{camcol}-{field:04d}.fits`` (uncompressed; HDU 0
    holds the band's image on its own pixel grid, in nanomaggies, with its
    own TAN WCS and SDSS-like keywords) and
    ``truth-{run:06d}-{camcol}-{field:04d}.fits`` (HDU ``TRUTH``: the truth
    table; HDU ``MASK``: the int32 truth segmentation on the r grid).
    ``(run, camcol, field)`` come from the seed (`field_ids`).  Each file is
    written atomically.  ``out`` must be new or empty (hidden files aside):
    one folder holds one field, as `astrohvae.io.readers.read_field` expects;
    a non-empty folder, or an ``out`` that is a file, raises
    `~astrohvae.errors.InputError` and nothing is written.  With
    ``overwrite``, a folder holding only a previous simulation of the same
    seed (its six files) is rewritten.  Fields of more than `MAX_PIXELS`
    pixels are refused.

    Returns
    -------
    list of pathlib.Path
        The five frame files (u, g, r, i, z) then the truth file.
    """
    from astropy.io import fits

    from astrohvae.io.atomic import atomic_path

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    frame_names, truth_name = _names(seed)
    targets = [out / frame_names[b] for b in BANDS] + [out / truth_name]
    if size[0] * size[1] > MAX_PIXELS:
        raise InputError(out, f"a {size[0]}x{size[1]} field exceeds the {MAX_PIXELS:,}-pixel limit")
    if out.is_dir():
        present = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
        if present and overwrite and set(present) <= {t.name for t in targets} and _is_truth(out / truth_name):
            present = []
        if present:
            what = "a simulation of this seed" if any((out / n).exists() for n in (truth_name, frame_names["r"])) else "other files"
            raise InputError(
                out, f"is not empty (holds {present[0]}, {what}); write each field into a new or empty folder"
            )
    sim = simulate_field(seed, size=size, star_fraction=star_fraction, band_offset_scale=band_offset_scale)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for b, path in zip(BANDS, targets):
        img, hdr = sim.frames[b]
        with atomic_path(path) as tmp:
            fits.PrimaryHDU(img, header=hdr).writeto(tmp, overwrite=True)
        paths.append(path)
    truth_hdu = fits.table_to_hdu(sim.truth)
    truth_hdu.name = "TRUTH"
    mask_hdu = fits.ImageHDU(sim.truth_mask.astype(np.int32), name="MASK")
    mask_hdu.header["MASKTHR"] = (MASK_THRESHOLD, "threshold in r sky sigma (noiseless model)")
    primary = fits.PrimaryHDU()
    primary.header["SIMSEED"] = int(seed)
    primary.header["FIELDNM"] = sim.name
    for b in BANDS:
        primary.header[f"SKYSIG_{b.upper()}"] = sim.sky_sigma[b]
        primary.header[f"PSFFWHM{b.upper()}"] = sim.psf_fwhm[b]
    with atomic_path(targets[-1]) as tmp:
        fits.HDUList([primary, truth_hdu, mask_hdu]).writeto(tmp, overwrite=True)
    paths.append(targets[-1])
    return paths


def write_adjacent(out, seed, n=2, size=(256, 256), overlap=128, star_fraction=None, band_offset_scale=1.0):
    """Simulate ``n`` fields of one scan that share ``overlap`` rows with their neighbours.

    Like consecutive SDSS fields of a run (which share 128 rows of the same
    drift scan), one field ``size[0]`` wide and ``n * ny - (n - 1) * overlap``
    rows tall is simulated with ``seed`` and cut into ``n`` fields of
    ``size``; field k starts at row ``k * (ny - overlap)``, so the pixels of
    a shared strip are identical in both fields and its sources are the same.
    Each band keeps its own WCS (the reference pixel moves with the cut).
    Field k is written like `write_simulation` into ``out/RUN-CAMCOL-FIELD``
    with ``FIELD`` = the seed's field number + k; the truth of each holds the
    objects within 20 px of it, ``y`` on its own grid.

    Returns
    -------
    list of pathlib.Path
        The ``n`` field folders, in scan order.
    """
    from astropy.io import fits

    from astrohvae.io.atomic import atomic_path

    nx, ny = int(size[0]), int(size[1])
    n, overlap = int(n), int(overlap)
    if n < 1 or not 0 <= overlap < ny:
        raise ValueError(f"need n >= 1 and 0 <= overlap < {ny} rows, got n={n}, overlap={overlap}")
    run, camcol, first = field_ids(seed)
    if first + n > 10000:
        raise ValueError(f"field numbers {first}..{first + n - 1} do not fit 4 digits; use another seed")
    step = ny - overlap
    out = Path(out)
    names = [f"{run:06d}-{camcol}-{first + k:04d}" for k in range(n)]
    for name in names:
        d = out / name
        if d.exists() and (not d.is_dir() or any(not q.name.startswith(".") for q in d.iterdir())):
            raise InputError(d, "exists and is not an empty folder; write adjacent fields into a new folder")
    sim = simulate_field(seed, size=(nx, ny + (n - 1) * step), star_fraction=star_fraction,
                         band_offset_scale=band_offset_scale)
    folders = []
    for k, name in enumerate(names):
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        y0 = k * step
        for b in BANDS:
            img, hdr = sim.frames[b]
            hdr = hdr.copy()
            hdr["CRPIX2"] = hdr["CRPIX2"] - y0
            with atomic_path(d / f"frame-{b}-{name}.fits") as tmp:
                fits.PrimaryHDU(np.ascontiguousarray(img[y0:y0 + ny]), header=hdr).writeto(tmp, overwrite=True)
        truth = sim.truth[(sim.truth["y"] >= y0 - 20) & (sim.truth["y"] < y0 + ny + 20)]
        truth["y"] = truth["y"] - y0
        truth_hdu = fits.table_to_hdu(truth)
        truth_hdu.name = "TRUTH"
        mask_hdu = fits.ImageHDU(sim.truth_mask[y0:y0 + ny].astype(np.int32), name="MASK")
        mask_hdu.header["MASKTHR"] = (MASK_THRESHOLD, "threshold in r sky sigma (noiseless model)")
        primary = fits.PrimaryHDU()
        primary.header["SIMSEED"] = int(seed)
        primary.header["FIELDNM"] = name
        primary.header["SCANROW0"] = (y0, "first row of this field in the simulated scan")
        with atomic_path(d / f"truth-{name}.fits") as tmp:
            fits.HDUList([primary, truth_hdu, mask_hdu]).writeto(tmp, overwrite=True)
        folders.append(d)
    return folders


def read_truth(path_or_folder):
    """Read a truth file written by `write_simulation`.

    Parameters
    ----------
    path_or_folder : str or os.PathLike
        The ``truth-*.fits`` file, or a folder holding exactly one.

    Returns
    -------
    truth : astropy.table.Table
    mask : numpy.ndarray
        int32 ``(ny, nx)``.
    """
    from astropy.io import fits
    from astropy.table import Table

    p = Path(path_or_folder)
    if p.is_dir():
        found = sorted(p.glob("truth-*.fits"))
        if len(found) != 1:
            raise InputError(p, f"holds {len(found)} truth-*.fits files, expected exactly one")
        p = found[0]
    if not p.exists():
        raise InputError(p, "no such file")
    try:
        with fits.open(p) as hdul:
            t = Table.read(hdul["TRUTH"])
            mask = np.asarray(hdul["MASK"].data, dtype=np.int32)
    except (OSError, KeyError) as exc:
        raise InputError(p, f"not a truth file ({exc.__class__.__name__}: {exc})") from None
    for c in ("type", "subtype"):
        if c in t.colnames and t[c].dtype.kind == "S":
            t[c] = t[c].astype(str)
    return t, mask
