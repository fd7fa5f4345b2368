"""64x64x5 cutouts (`StampSet`, `cut_stamps`, `concatenate`).

Stamp centring: the source's integer pixel ``(floor(x + 0.5), floor(y + 0.5))`` lands on
index ``size // 2``; the sub-pixel offset is recorded in ``meta``.  Stamp pixels outside
the field are 0 in every band, carry mask bit 4 (`astrohvae.conventions.MASK_INVALID`), and
the stamp gets flag bit 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.table import Table, vstack

from astrohvae import BANDS, STAMP_SIZE
from astrohvae.conventions import (  # noqa: E402  (re-exported: the names stamps' users know)
    FLAG_TRUNCATED,
    MASK_INVALID,
    MASK_OTHER,
    MASK_OWN,
)
from astrohvae.detection.detect import segm_array

__all__ = ['StampSet', 'concatenate', 'cut_stamps', 'padded_planes']

META_COLUMNS = ("field", "id", "x", "y", "ra", "dec", "flags", "xc", "yc", "dx", "dy")
"""Columns of `StampSet.meta` as made by `cut_stamps` (stores add truth columns)."""


# ---------------------------------------------------------------------------
# StampSet
# ---------------------------------------------------------------------------
@dataclass
class StampSet:
    """Cutouts of N sources, five bands each.

    Attributes
    ----------
    flux : numpy.ndarray
        float32 ``(N, 5, size, size)``, background-subtracted flux in
        nanomaggies; 0 where the field is masked or outside the field.
    mask : numpy.ndarray
        uint8 ``(N, size, size)``; bit 1 = own segment, 2 = another source's
        segment, 4 = invalid / off-field.
    sky_sigma : numpy.ndarray
        float32 ``(N, 5)``: per-band sky noise per pixel (nanomaggies) at the
        source position.
    meta : astropy.table.Table
        One row per stamp: ``field, id, x, y, ra, dec, flags, xc, yc, dx, dy``
        (and ``truth_type`` 0 star / 1 galaxy / -1 unknown, ``truth_mag_r``
        when read from a store).
    """

    flux: np.ndarray
    mask: np.ndarray
    sky_sigma: np.ndarray
    meta: Table

    def __post_init__(self):
        n = len(self.flux)
        if not (len(self.mask) == len(self.sky_sigma) == len(self.meta) == n):
            raise ValueError(
                f"StampSet parts disagree in length: flux {n}, mask {len(self.mask)}, "
                f"sky_sigma {len(self.sky_sigma)}, meta {len(self.meta)}"
            )

    def __len__(self):
        return len(self.flux)

    def __getitem__(self, index):
        """Select stamps: a slice, an index array or a boolean mask.

        An integer gives a StampSet of length 1 (dimensions are kept).
        """
        if isinstance(index, (int, np.integer)):
            i = int(index)
            if i < 0:
                i += len(self)
            if not 0 <= i < len(self):
                raise IndexError(f"stamp index {index} out of range for {len(self)} stamps")
            index = slice(i, i + 1)
        elif not isinstance(index, slice):
            index = np.asarray(index)
            if index.dtype == bool:
                index = np.flatnonzero(index)
        return StampSet(self.flux[index], self.mask[index], self.sky_sigma[index], self.meta[index])

    @property
    def size(self):
        """Side of the stamps in pixels."""
        return self.flux.shape[-1]

    @classmethod
    def empty(cls, size=STAMP_SIZE, nbands=len(BANDS)):
        """A zero-length StampSet with the standard meta columns."""
        return cls(
            np.zeros((0, nbands, size, size), np.float32),
            np.zeros((0, size, size), np.uint8),
            np.zeros((0, nbands), np.float32),
            _empty_meta(),
        )

    @classmethod
    def concatenate(cls, sets):
        """Join StampSets end to end (meta columns must agree)."""
        return concatenate(sets)


def concatenate(sets):
    """Join a sequence of `StampSet` end to end.

    Parameters
    ----------
    sets : sequence of StampSet

    Returns
    -------
    StampSet
    """
    sets = list(sets)
    if not sets:
        return StampSet.empty()
    if len(sets) == 1:
        return sets[0]
    meta = vstack([s.meta for s in sets], join_type="exact", metadata_conflicts="silent")
    return StampSet(
        np.concatenate([s.flux for s in sets]),
        np.concatenate([s.mask for s in sets]),
        np.concatenate([s.sky_sigma for s in sets]),
        meta,
    )


def _empty_meta():
    return Table(
        {
            "field": np.zeros(0, dtype="U32"),
            "id": np.zeros(0, np.int32),
            "x": np.zeros(0),
            "y": np.zeros(0),
            "ra": np.zeros(0),
            "dec": np.zeros(0),
            "flags": np.zeros(0, np.int32),
            "xc": np.zeros(0, np.int32),
            "yc": np.zeros(0, np.int32),
            "dx": np.zeros(0, np.float32),
            "dy": np.zeros(0, np.float32),
        }
    )


# ---------------------------------------------------------------------------
# Cutouts
# ---------------------------------------------------------------------------
CUT_VECTOR_MIN = 64
"""From this many sources on (or given ``padded``), `cut_stamps` copies the windows
from a padded copy of the field (`padded_planes`) instead of clipping each
window to the field."""


def padded_planes(field, segm, background, size=STAMP_SIZE):
    """The field prepared for `cut_stamps`: background-subtracted bands (masked
    pixels 0), segmentation and invalid-pixel map, each padded by ``size``.

    Cutting a field's stamps in several calls, pass the result to every call
    (``padded=``) so that the field is prepared once.

    Returns
    -------
    tuple ``(sub, seg, bad, size)``
    """
    data, level = field.data, background.level
    fmask = np.asarray(field.mask, bool)
    pad = size
    nb = data.shape[0]
    sub = np.zeros((nb,) + tuple(s + 2 * pad for s in data.shape[1:]), dtype=np.float32)
    inner = (slice(pad, -pad), slice(pad, -pad))
    for b in range(nb):
        d = data[b] - level[b]  # as a per-source slice computes it (cast on assignment)
        d[fmask[b]] = 0.0
        sub[(b,) + inner] = d
    pseg = np.pad(segm_array(segm, field.shape), pad)
    pbad = np.pad(fmask.any(axis=0), pad, constant_values=True)
    return sub, pseg, pbad, size


def _cut_windows(padded, y0, x0, flux, sseg, sbad):
    """Fill ``flux``, ``sseg``, ``sbad`` with the windows at (y0, x0): one plain
    slice copy each from `padded_planes` (the same values as clipping every
    window to the field source by source)."""
    sub, pseg, pbad, size = padded
    for i, (y, x) in enumerate(zip((y0 + size).tolist(), (x0 + size).tolist())):
        flux[i] = sub[:, y:y + size, x:x + size]
        sseg[i] = pseg[y:y + size, x:x + size]
        sbad[i] = pbad[y:y + size, x:x + size]


def cut_stamps(field, segm, sources, background, size=STAMP_SIZE, padded=None):
    """One ``size x size x 5`` background-subtracted cutout per source.

    Parameters
    ----------
    field : Field
    segm : SegmentationImage or numpy.ndarray or None
        Labels on the field's grid; used for the stamp masks.
    sources : astropy.table.Table
        Needs ``id``, ``x``, ``y``; ``ra``, ``dec``, ``flags`` are used when
        present (as made by `measure_sources`).
    background : Background
    size : int
        Stamp side; the source's integer pixel lands on index ``size // 2``.
    padded : tuple, optional
        `padded_planes` of the same field, segmentation, background and size
        (made here when needed and not given).

    Returns
    -------
    StampSet
        In the order of ``sources``.  Pixels outside the field are 0 with
        mask bit 4 and the stamp gets flag bit 1 (the single edge policy).
    """
    n = len(sources)
    if n == 0:
        return StampSet.empty(size, len(field.bands))
    ny, nx = field.shape
    seg = segm_array(segm, field.shape)
    ids = np.asarray(sources["id"], np.int32)
    x = np.asarray(sources["x"], np.float64)
    y = np.asarray(sources["y"], np.float64)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("source positions must be finite")
    xc = np.floor(x + 0.5).astype(np.int64)
    yc = np.floor(y + 0.5).astype(np.int64)
    c = size // 2
    x0, y0 = xc - c, yc - c

    if np.any((xc < -c) | (yc < -c) | (xc >= nx + c) | (yc >= ny + c)):
        raise ValueError("a source centre lies further than size/2 outside the field")
    nbands = field.data.shape[0]
    data, level, fmask = field.data, background.level, np.asarray(field.mask, bool)
    flux = np.zeros((n, nbands, size, size), np.float32)
    sseg = np.zeros((n, size, size), seg.dtype)
    sbad = np.ones((n, size, size), bool)  # off-field stays invalid
    if n >= CUT_VECTOR_MIN or padded is not None:
        if padded is None or padded[3] != size:
            padded = padded_planes(field, seg, background, size)
        _cut_windows(padded, y0, x0, flux, sseg, sbad)
    else:
        # one slice per source (no copy of the whole field); clip windows to the field
        fy0, fx0 = np.maximum(y0, 0), np.maximum(x0, 0)
        fy1, fx1 = np.minimum(y0 + size, ny), np.minimum(x0 + size, nx)
        for i in range(n):
            ys, xs = slice(fy0[i], fy1[i]), slice(fx0[i], fx1[i])
            ss = (slice(fy0[i] - y0[i], fy1[i] - y0[i]), slice(fx0[i] - x0[i], fx1[i] - x0[i]))
            bad = fmask[:, ys, xs]
            sub = data[:, ys, xs] - level[:, ys, xs]
            sub[bad] = 0.0
            flux[i][(slice(None),) + ss] = sub
            sseg[i][ss] = seg[ys, xs]
            sbad[i][ss] = bad.any(axis=0)
    own = sseg == ids[:, None, None]
    mask = own.astype(np.uint8) * MASK_OWN
    mask |= ((sseg != 0) & ~own).astype(np.uint8) * MASK_OTHER
    mask |= sbad.astype(np.uint8) * MASK_INVALID

    truncated = (x0 < 0) | (y0 < 0) | (x0 + size > nx) | (y0 + size > ny)
    flags = np.asarray(sources["flags"], np.int32).copy() if "flags" in sources.colnames else np.zeros(n, np.int32)
    flags[truncated] |= FLAG_TRUNCATED

    yi, xi = np.clip(yc, 0, ny - 1), np.clip(xc, 0, nx - 1)
    sky = np.asarray(background.rms, np.float32)[:, yi, xi].T.copy()  # (N, 5)
    fallback = np.broadcast_to(np.asarray(background.sigma, np.float32), sky.shape)
    bad_sky = ~np.isfinite(sky) | (sky <= 0)
    sky[bad_sky] = fallback[bad_sky]

    if "ra" in sources.colnames and "dec" in sources.colnames:
        ra, dec = np.asarray(sources["ra"], float), np.asarray(sources["dec"], float)
    else:
        ra, dec = field.pixel_to_world(x, y)
    meta = Table(
        {
            "field": np.full(n, str(field.name), dtype=f"U{max(1, len(str(field.name)))}"),
            "id": ids,
            "x": x,
            "y": y,
            "ra": ra,
            "dec": dec,
            "flags": flags,
            "xc": xc.astype(np.int32),
            "yc": yc.astype(np.int32),
            "dx": (x - xc).astype(np.float32),
            "dy": (y - yc).astype(np.float32),
        }
    )
    return StampSet(flux, mask, sky, meta)
