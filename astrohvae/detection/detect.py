"""Threshold detection on the g+r+i image and deblending (`detect`, `deblend_segments`)."""

from __future__ import annotations

import warnings

import numpy as np
from scipy import ndimage

__all__ = ['detection_image', 'detect', 'deblend_segments']

# ---------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------
def band_indices(field, bands):
    """Indices in ``field.bands`` of those of ``bands`` it has (ValueError if none)."""
    idx = [field.bands.index(b) for b in bands if b in field.bands]
    if not idx:
        raise ValueError(f"none of the detection bands {bands} is in the field's bands {field.bands}")
    return idx


def detection_image(field, background, detection_bands=("g", "r", "i")):
    """Inverse-variance weighted mean of the background-subtracted bands.

    Parameters
    ----------
    field : Field
    background : Background
    detection_bands : sequence of str

    Returns
    -------
    image : numpy.ndarray
        float32 ``(ny, nx)``, 0 where no detection band is valid.
    noise : numpy.ndarray
        float32 ``(ny, nx)``, per-pixel noise of ``image``
        (``1/sqrt(sum w)``), inf where no band is valid.
    """
    idx = band_indices(field, detection_bands)
    num = np.zeros(field.shape, np.float32)
    wsum = np.zeros(field.shape, np.float32)
    for b in idx:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            w = np.float32(1.0) / np.asarray(background.rms[b], np.float32) ** 2
        w[~np.isfinite(w) | field.mask[b]] = 0.0
        num += w * (field.data[b] - background.level[b])
        wsum += w
    with np.errstate(divide="ignore", invalid="ignore"):
        image = np.where(wsum > 0, num / wsum, np.float32(0))
        noise = np.where(wsum > 0, np.float32(1) / np.sqrt(wsum), np.float32(np.inf))
    return image.astype(np.float32), noise.astype(np.float32)


def _empty_segm(shape):
    from photutils.segmentation import SegmentationImage

    return SegmentationImage(np.zeros(shape, np.int32))


def detect(
    field,
    background,
    nsigma=1.5,
    npixels=5,
    deblend=True,
    detection_bands=("g", "r", "i"),
    fwhm=3.0,
    kernel_size=5,
    nlevels=32,
    contrast=0.001,
):
    """Baseline source detection (photutils `detect_sources` + `deblend_sources`).

    The detection image (`detection_image`, inverse-variance weighted mean of
    the background-subtracted ``detection_bands``) is smoothed with a
    Gaussian kernel of ``fwhm`` pixels (about the SDSS PSF, 1.2") and
    thresholded at ``nsigma`` times the *unsmoothed* per-pixel noise
    (SExtractor's convention); connected groups of at least ``npixels``
    pixels are sources, then split by multi-threshold deblending.

    Parameters
    ----------
    field : Field
    background : Background
    nsigma : float
        Detection threshold in units of the detection image's noise.
    npixels : int
        Minimum connected pixels of a source.
    deblend : bool
        Run `photutils.segmentation.deblend_sources`.
    detection_bands : sequence of str
    fwhm, kernel_size : float, int
        Smoothing kernel.
    nlevels, contrast : int, float
        Deblending parameters.

    Returns
    -------
    photutils.segmentation.SegmentationImage
        Labels 1..N (consecutive).  An empty field gives an all-zero
        SegmentationImage (``n_labels == 0``), never None.
    """
    from photutils.segmentation import detect_sources, make_2dgaussian_kernel

    image, noise = detection_image(field, background, detection_bands)
    invalid = ~np.isfinite(noise)
    if fwhm and fwhm > 0:
        kernel = make_2dgaussian_kernel(fwhm, size=kernel_size).array
        conv = ndimage.convolve(image, kernel.astype(np.float32), mode="constant")
    else:
        conv = image
    threshold = np.where(invalid, np.inf, nsigma * noise).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        segm = detect_sources(conv, threshold, npixels, mask=invalid if invalid.any() else None)
        if segm is None:
            return _empty_segm(field.shape)
        if deblend and segm.n_labels:
            segm = deblend_segments(conv, segm, npixels, n_levels=nlevels, contrast=contrast)
    if not segm.is_consecutive:
        segm.relabel_consecutive()
    return segm


DEBLEND_MAX_AREA = 100_000
"""Segments larger than this (pixels; crowded fields) are first cut into pieces (`deblend_segments`)."""


def _split_huge(det, segm_data, label, slc, n_pixels, max_area, n_levels, first_label):
    """Cut one huge segment into pieces by watershed from its brightest cores.

    The threshold rises over ``n_levels`` exponentially spaced levels (as
    photutils' deblender's) until no connected superlevel component of the
    segment exceeds ``max_area``; its components of at least ``n_pixels``
    pixels seed a watershed of ``-det`` over the whole segment.  Writes the
    pieces (labels from ``first_label``) into ``segm_data``; returns how many.
    """
    from scipy import ndimage
    from skimage.segmentation import watershed

    seg = segm_data[slc]
    own = seg == label
    d = det[slc]
    vals = d[own]
    lo, hi = float(vals.min()), float(vals.max())
    if not hi > lo:
        return 0
    if lo > 0:
        levels = np.exp(np.linspace(np.log(lo), np.log(hi), n_levels + 2)[1:-1])
    else:
        levels = np.linspace(lo, hi, n_levels + 2)[1:-1]
    st = np.ones((3, 3), bool)
    markers = None
    for t in levels:
        lab, n = ndimage.label(own & (d > t), structure=st)
        if n == 0:
            break
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        markers = lab
        if sizes.max() <= max_area:
            break
    if markers is None:
        return 0
    sizes = np.bincount(markers.ravel())
    keep = sizes >= n_pixels
    keep[0] = False
    if keep.sum() < 2:
        return 0
    lut = np.zeros(len(sizes), np.int64)
    lut[keep] = np.arange(1, keep.sum() + 1)
    pieces = watershed(-d, lut[markers], mask=own, connectivity=2)
    seg[own] = pieces[own] + (first_label - 1)
    return int(keep.sum())


def _local_peaks(det, data):
    """Pixels of a segment not below any 8-neighbour of the same segment."""
    peak = data > 0
    ny, nx = data.shape
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == 0 and dx == 0:
                continue
            ys, yd = slice(max(dy, 0), ny + min(dy, 0)), slice(max(-dy, 0), ny + min(-dy, 0))
            xs, xd = slice(max(dx, 0), nx + min(dx, 0)), slice(max(-dx, 0), nx + min(-dx, 0))
            # neighbour (y+dy, x+dx) of pixel (y, x): pixel in [yd, xd], neighbour in [ys, xs]
            lower = (data[ys, xs] == data[yd, xd]) & (det[ys, xs] > det[yd, xd])
            peak[yd, xd] &= ~lower
    return peak


def deblend_segments(det, segm, n_pixels, n_levels=32, contrast=0.001, max_area=DEBLEND_MAX_AREA,
                     backend="astrohvae", floor=None, recursive=False):
    """photutils `deblend_sources`, only where it can change something, and bounded in crowded fields.

    * Only segments of at least ``2 * n_pixels`` pixels with more than one
      local maximum of ``det`` (3x3, inside the segment) are passed to
      photutils: a segment with a single local maximum has one connected
      component at every threshold, so the deblender leaves it whole.  The
      result is the same as deblending every segment.
    * A segment larger than ``max_area`` pixels (a crowded field's merged
      blob, where photutils' one-marker-at-a-time contrast loop re-runs a
      watershed of the whole blob hundreds of times, minutes per field) is
      first cut by `_split_huge` into pieces, which are then deblended as
      above with the contrast relative to their piece.  Pieces of a cut
      segment touch each other, so they carry the blended flag (2).
    * ``backend``: ``'astrohvae'`` (`_deblend_sources`, photutils' algorithm
      with vectorised levels, the same output) or ``'photutils'``
      (`photutils.segmentation.deblend_sources` itself).
    * ``floor`` (``det`` units; None: photutils' levels): the exponential
      levels run from ``max(segment minimum, floor)`` to the segment's peak.
      photutils spaces them from the segment's minimum, and falls back to
      linear levels when that minimum is not positive; a segment that is not
      a threshold detection (the network's, grown below the noise) holds a
      pixel at or below zero, and its linear levels, ``peak / 33`` apart,
      leave every neighbour fainter than that inside a bright star's
      segment.  The deblending image's noise times a few is a floor as
      photutils' detection threshold is (`astrohvae.segmentation.network`).
      Astrohvae backend only.
    * ``recursive``: every child is deblended again as a segment of its own
      (its levels and contrast from its own pixels), until none splits
      (`_deblend_children`).  photutils' levels span the whole segment, 32
      of them from the floor to its brightest peak: in a crowded field's
      blob that holds a bright star they lie ~22 % apart, and the contrast
      is a fraction of the whole blob's flux, so most of its faint stars
      never split off (005405-6-0099: a 99,540-px network segment holds
      147 of the 156 photutils sources of a 150 x 170 px patch and gives
      70 children in all; recursively, every one of the 156 sources has a
      segment of its own).
      The top-level and recursive passes keep exponential levels however
      many markers they find (photutils falls back to linear levels above
      200, which in a blob of hundreds of stars keeps none of them) and
      drop the markers below the contrast at once (`_deblend_one`
      ``batch_contrast``).  Astrohvae backend only.

    Returns a `SegmentationImage` with consecutive labels.
    """
    from photutils.segmentation import SegmentationImage, deblend_sources

    if backend not in ("astrohvae", "photutils"):
        raise ValueError(f"unknown deblending backend {backend!r}; use 'astrohvae' or 'photutils'")
    if backend == "photutils" and (floor is not None or recursive):
        raise ValueError("floor and recursive need the 'astrohvae' backend")
    data = np.asarray(segm.data)
    areas = np.asarray(segm.areas)
    labels = np.asarray(segm.labels)
    huge = labels[areas > max_area] if max_area else labels[:0]
    if huge.size:
        data = data.copy()
        slices = segm.slices
        idx = segm.get_indices(huge)
        top = int(segm.max_label)
        for lab, i in zip(huge, idx):
            n = _split_huge(det, data, int(lab), slices[i], n_pixels, max_area, n_levels, top + 1)
            top += n
        segm = SegmentationImage(data)
        areas = np.asarray(segm.areas)
        labels = np.asarray(segm.labels)
    cand = labels[areas >= 2 * n_pixels]
    if cand.size == 0:
        return segm
    peak = _local_peaks(det, data)
    npeak = np.bincount(data[peak], minlength=int(data.max()) + 1)
    cand = cand[npeak[cand] > 1]
    if cand.size == 0:
        return segm
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if backend == "photutils":
            return deblend_sources(det, segm, n_pixels, labels=cand, n_levels=n_levels, contrast=contrast,
                                   progress_bar=False, n_processes=1)
        return _deblend_sources(det, segm, n_pixels, cand, n_levels=n_levels, contrast=contrast,
                                top2=_second_peak(det, data, peak), floor=floor, recursive=recursive)


def _second_peak(det, data, peak):
    """Per label of ``data``: the second-highest value of ``det`` at the ``peak`` pixels
    (-inf with fewer than two peaks, +inf where the segment holds a NaN)."""
    nlab = int(data.max()) + 1
    out = np.full(nlab, -np.inf)
    lp, vp = data[peak], det[peak].astype(np.float64)
    if lp.size:
        order = np.lexsort((-vp, lp))
        lp, vp = lp[order], vp[order]
        _, first, count = np.unique(lp, return_index=True, return_counts=True)
        two = count >= 2
        out[lp[first[two]]] = vp[first[two] + 1]
    nan = np.bincount(data[np.isnan(det)].ravel(), minlength=nlab) > 0
    out[nan] = np.inf
    return out


# ---------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------
def segm_array(segm, shape):
    """The label array of ``segm`` (a SegmentationImage, an array, or None: no sources), checked against ``shape``."""
    if segm is None:
        return np.zeros(shape, np.int32)
    # (an ndarray has a ``data`` attribute too: its buffer)
    data = np.asarray(segm) if isinstance(segm, np.ndarray) else np.asarray(getattr(segm, "data", segm))
    if data.shape != tuple(shape):
        raise ValueError(f"segmentation shape {data.shape} differs from the field's {tuple(shape)}")
    return data


def blended_labels(seg, segm):
    """Boolean array over labels 0..max: deblended or touching another segment."""
    nmax = int(seg.max()) if seg.size else 0
    out = np.zeros(nmax + 1, bool)
    for a, b in (
        (seg[:, :-1], seg[:, 1:]),
        (seg[:-1, :], seg[1:, :]),
        (seg[:-1, :-1], seg[1:, 1:]),
        (seg[:-1, 1:], seg[1:, :-1]),
    ):
        touch = (a != b) & (a > 0) & (b > 0)
        out[a[touch]] = True
        out[b[touch]] = True
    deb = getattr(segm, "deblended_labels", None)
    if deb is not None and len(deb):
        deb = np.asarray(deb)
        out[deb[deb <= nmax]] = True
    out[0] = False
    return out


# photutils' multi-threshold + watershed deblender (photutils 3.0
# `deblend_sources`, mode='exponential', connectivity 8, one process),
# re-implemented with the per-level work vectorised: the same thresholds,
# markers, watershed and contrast loop, so the same segmentation (checked
# against photutils on real and simulated fields in the tests), without
# photutils' per-label Python loops (~58,000 `detect_sources` calls on a
# crowded field).
_FOOT8 = np.ones((3, 3), dtype=int)


def _levels_detect(data, threshold, n_pixels, inv_mask):
    """photutils ``_detect_sources(..., relabel=False, return_segmimg=False)``."""
    from scipy import ndimage

    img = data > threshold
    img &= inv_mask
    if not img.any():
        return None
    lab, n = ndimage.label(img, structure=_FOOT8)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    small = sizes < n_pixels
    small[0] = False
    nsmall = int(small.sum())
    if nsmall:
        lab[small[lab]] = 0
    if n - nsmall <= 1:
        return None
    return lab


def _marker_segment(lower, upper):
    """photutils ``make_marker_segment``: parents with >= 2 children are replaced by them."""
    from scipy import ndimage

    if lower is None:
        return upper
    both = (lower > 0) & (upper > 0)
    lo, up = lower[both].astype(np.int64), upper[both].astype(np.int64)
    if lo.size == 0:
        return lower
    pairs = np.unique(lo * (int(up.max()) + 1) + up)
    parents = pairs // (int(up.max()) + 1)
    nchild = np.bincount(parents, minlength=int(lower.max()) + 1)
    split = nchild >= 2
    if not split.any():
        return lower
    markers = lower > 0
    sel = split[lower]
    markers[sel] = upper[sel] > 0
    return ndimage.label(markers, structure=_FOOT8)[0]


def _deblend_one(data, segment_data, label, n_pixels, n_levels, contrast, mode="exponential", top2=np.inf,
                 floor=None, max_markers=200, batch_contrast=False):
    """photutils ``_SingleSourceDeblender.deblend_source`` (None: left whole).

    ``max_markers``: with more markers than this at exponential levels,
    photutils starts again with linear levels (its guard against slow
    watersheds); None keeps the exponential markers (`_deblend_children`:
    a crowded blob holds hundreds of stars, and linear levels from the
    floor to its brightest star, peak/33 apart, would keep none of them).

    ``batch_contrast``: the markers below ``contrast`` are removed all at
    once, not the faintest one per watershed as photutils does (hundreds of
    watersheds of a crowded blob); for `_deblend_children`, which deblends
    each kept child again, the pixels of the removed markers included.

    ``floor``: the levels start at ``max(minimum, floor)`` instead of the
    segment's minimum (see `deblend_segments`).

    ``top2``: the second-highest local maximum of ``data`` in the segment.
    Every connected piece above a level holds a local maximum above it, so no
    level at or above ``top2`` can split the segment: those levels (which
    photutils computes and skips) are not computed.
    """
    from scipy import ndimage
    from skimage.segmentation import watershed

    smask = segment_data == label
    vals = data[smask]
    smin, smax, ssum = np.nanmin(vals), np.nanmax(vals), np.nansum(vals)
    if smin == smax:
        return None
    if floor is not None:
        smin = max(smin, floor)
        if not smin < smax:
            return None

    def thresholds(mode):
        lin = np.linspace(smin, smax, n_levels + 2)
        if mode == "exponential" and smin <= 0:
            mode = "linear"
        if mode == "linear":
            return lin[1:-1], mode
        norm = (lin - smin) / (smax - smin)
        return (smin * (smax / smin) ** norm)[1:-1], mode

    def markers_for(mode):
        th, mode = thresholds(mode)
        th = th[th < top2]
        if th.size == 0:
            return None, mode
        lower = _levels_detect(data, th[0], n_pixels, smask)
        for t in th[1:]:
            upper = _levels_detect(data, t, n_pixels, smask)
            if upper is None:
                continue
            lower = _marker_segment(lower, upper)
        return lower, mode

    markers, mode = markers_for(mode)
    if markers is None:
        return None
    if max_markers is not None and mode != "linear" and np.unique(markers[markers > 0]).size > max_markers:
        markers, mode = markers_for("linear")
        if markers is None:
            return None
    while True:
        markers = watershed(-data, markers, mask=smask, connectivity=_FOOT8)
        labels = np.unique(markers[markers > 0])
        if labels.size == 1:
            break
        frac = ndimage.sum_labels(data, markers, index=labels) / ssum
        if not np.any(frac < contrast):
            break
        if batch_contrast:
            low = labels[(frac < contrast) & (frac < frac.max())]
            markers[np.isin(markers, low)] = 0
        else:
            markers[markers == labels[np.argmin(frac)]] = 0
    if not np.array_equal(smask, markers.astype(bool)):
        raise ValueError(f"deblending failed for source {label!r}")
    labels = np.unique(markers[markers > 0])
    if labels.size == 1:
        return None
    if not (labels[0] == 1 and labels[-1] == labels.size):
        lut = np.zeros(int(labels[-1]) + 1, dtype=markers.dtype)
        lut[labels] = np.arange(1, labels.size + 1, dtype=markers.dtype)
        markers = lut[markers]
    return markers


def _deblend_children(data, markers, n_pixels, n_levels, contrast, floor):
    """Each child of ``markers`` (labels 1..n) deblended again as a segment of its own, until none splits.

    A child of at least ``2 * n_pixels`` pixels with more than one local
    maximum of ``data`` is passed to `_deblend_one` on its own bounding box
    (levels from ``max(its minimum, floor)`` to its peak, contrast relative
    to its own flux, exponential levels kept whatever the number of
    markers, the markers below the contrast removed at once), and its
    children in turn.  The first piece of a split
    child keeps the child's label, the others get new labels after the
    existing ones.  Returns the new label array (``markers`` is not changed).
    """
    from scipy import ndimage

    out = np.array(markers, copy=True)
    top = int(out.max(initial=0))
    for c, sl in enumerate(ndimage.find_objects(markers), start=1):
        if sl is None:
            continue
        own = markers[sl] == c
        if own.sum() < 2 * n_pixels:
            continue
        sub = own.astype(np.int32)
        if np.count_nonzero(_local_peaks(data[sl], sub)) < 2:
            continue
        deb = _deblend_one(data[sl], sub, 1, n_pixels, n_levels, contrast, floor=floor, max_markers=None,
                           batch_contrast=True)
        if deb is None:
            continue
        deb = _deblend_children(data[sl], deb, n_pixels, n_levels, contrast, floor)
        new = np.where(deb == 1, c, deb - 1 + top)
        out[sl][own] = new[own]
        top += int(deb.max()) - 1
    return out


def _deblend_sources(data, segm, n_pixels, labels, n_levels=32, contrast=0.001, top2=None, floor=None,
                     recursive=False):
    """photutils ``deblend_sources(data, segm, n_pixels, labels=labels, n_levels, contrast)``
    (exponential levels, connectivity 8, relabelled), one process.  ``top2``:
    per label, the second-highest local maximum; ``floor``: see `_deblend_one`;
    ``recursive``: the children deblended again (`_deblend_children`)."""
    from photutils.segmentation import SegmentationImage

    labels = np.atleast_1d(labels)
    idx = segm.get_indices(labels)
    keep = np.asarray(segm.areas)[idx] >= n_pixels * 2
    labels, idx = labels[keep], idx[keep]
    out = segm.data.copy()
    max_label = int(segm.max_label)
    label_map = {}
    slices = segm.slices
    for lab, i in zip(labels, idx):
        sl = slices[i]
        t2 = np.inf if top2 is None else top2[lab]
        with np.errstate(invalid="ignore"):
            deb = _deblend_one(data[sl], segm.data[sl], lab, n_pixels, n_levels, contrast, top2=t2, floor=floor,
                               max_markers=None if recursive else 200, batch_contrast=recursive)
        if deb is None:
            continue
        if recursive:
            with np.errstate(invalid="ignore"):
                deb = _deblend_children(data[sl], deb, n_pixels, n_levels, contrast, floor)
        pos = deb > 0
        new = deb[pos]
        out[sl][pos] = new + max_label
        new_labels = np.unique(new) + max_label
        label_map[lab] = new_labels
        max_label += len(new_labels)
    present = np.unique(out[out > 0])
    if present.size and not (present[0] == 1 and present[-1] == present.size):
        lut = np.zeros(int(present[-1]) + 1, dtype=out.dtype)
        lut[present] = np.arange(1, present.size + 1, dtype=out.dtype)
        out = lut[out]
        label_map = {k: lut[v] for k, v in label_map.items()}
    res = SegmentationImage(out)
    res._deblend_label_map = label_map
    return res
