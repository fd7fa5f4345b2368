"""The per-pixel background/star/galaxy map of a segmentation."""

from __future__ import annotations

import numpy as np

from astrohvae.conventions import CLASS_CODES

__all__ = ['classmap']

# ----------------------------------------------------------------------------
# class map
# ----------------------------------------------------------------------------
_CLASS_CODE = {**CLASS_CODES, **{v: v for v in CLASS_CODES.values()}, 0: 0, "": 0, "background": 0}


def classmap(segm, labels, classes=None):
    """The background/star/galaxy map (the seed's Fig. 8) from a segmentation.

    Parameters
    ----------
    segm : SegmentationImage or numpy.ndarray
        0 background, k = source k.
    labels : dict, or array of ids, or Table with ``id`` and ``class``
        ``{id: 'star'|'galaxy'|1|2}``; or the ids with ``classes`` given.
    classes : sequence, optional
        Class of each id in ``labels`` ('star'/'galaxy' or 1/2).

    Returns
    -------
    numpy.ndarray
        uint8, the segmentation's shape: 0 background (and sources without a
        class), 1 star, 2 galaxy.
    """
    data = np.asarray(getattr(segm, "data", segm))
    if classes is None:
        if isinstance(labels, dict):
            ids, classes = list(labels.keys()), list(labels.values())
        elif hasattr(labels, "colnames"):
            ids, classes = list(labels["id"]), list(labels["class"])
        else:
            raise TypeError("give a dict id->class, a Table with id/class, or ids and classes")
    else:
        ids = list(np.asarray(labels).ravel())
        classes = list(np.asarray(classes).ravel())
    if len(ids) != len(classes):
        raise ValueError("labels and classes differ in length")
    top = int(max(data.max(initial=0), max((int(i) for i in ids), default=0)))
    lut = np.zeros(top + 1, np.uint8)
    for i, c in zip(ids, classes):
        if isinstance(c, (bytes, np.bytes_)):
            c = c.decode()
        key = c.strip().lower() if isinstance(c, str) else int(c)
        if key not in _CLASS_CODE:
            raise ValueError(f"unknown class {c!r} (use 'star'/'galaxy' or 1/2)")
        if int(i) > 0:
            lut[int(i)] = _CLASS_CODE[key]
    return lut[np.clip(data, 0, top)]
