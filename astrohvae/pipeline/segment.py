"""The `astrohvae segment` command: a segmentation map FITS (and panels) of one field."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from astrohvae import BANDS
from astrohvae.segmentation.classmap import classmap
from astrohvae.segmentation.network import (
    WEIGHTS_DIR,
    NetworkSegmenter,
    load_default_segmenter,
    network_input,
)
from astrohvae.viz.panels import plot_panels, zoom_window


# ----------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------
def write_segmap(path, segm, class_map=None, header=None, wcs=None):
    """Write ``SEGMAP`` (int32) and optionally ``CLASSMAP`` (uint8) to a FITS file atomically.

    Parameters
    ----------
    path : path
    segm : SegmentationImage, numpy.ndarray or None
        None writes an all-zero map of ``class_map``'s shape (or fails).
    class_map : numpy.ndarray, optional
    header : dict, optional
        Extra primary-header cards ``{key: value or (value, comment)}``.
    wcs : astropy.wcs.WCS, optional
        Written into both image HDUs.
    """
    from astropy.io import fits

    from astrohvae import __version__
    from astrohvae.io.atomic import atomic_path

    if segm is None:
        if class_map is None:
            raise ValueError("need a segmentation or a class map")
        data = np.zeros(np.shape(class_map), np.int32)
    else:
        data = np.asarray(getattr(segm, "data", segm)).astype(np.int32)
    prim = fits.PrimaryHDU()
    prim.header["ASTHVVER"] = (__version__, "astrohvae version")
    prim.header["BANDS"] = "".join(BANDS)
    prim.header["REFBAND"] = "r"
    prim.header["XYORIGIN"] = (0, "pixel coordinates are 0-based")
    for k, v in (header or {}).items():
        prim.header[k] = v
    whdr = wcs.to_header() if wcs is not None else fits.Header()
    hdus = [prim, fits.ImageHDU(data, header=whdr.copy(), name="SEGMAP")]
    hdus[1].header["NSOURCES"] = (int(data.max(initial=0)), "labels 1..N, 0 = background")
    if class_map is not None:
        cm = np.asarray(class_map).astype(np.uint8)
        if cm.shape != data.shape:
            raise ValueError("class map and segmentation differ in shape")
        hdus.append(fits.ImageHDU(cm, header=whdr.copy(), name="CLASSMAP"))
        hdus[-1].header["CLASSES"] = ("0 background, 1 star, 2 galaxy", "")
    with atomic_path(path) as tmp:
        fits.HDUList(hdus).writeto(tmp, overwrite=True)
    return Path(path)


def segment_file(field_path, out, variant=None, weights=None, classify=False, plots=False, device="auto",
                 all_variants_in_plots=True, isophote=None):
    """Segment the field in ``field_path`` and write ``out`` (SEGMAP [+ CLASSMAP]).

    Parameters
    ----------
    field_path : path or list of paths
        Anything `astrohvae.io.readers.read_field` reads.
    out : path
        Output FITS file.
    variant : str, optional
        Shipped variant (default `DEFAULT_VARIANT`); ignored with ``weights``.
    weights : path, optional
        A folder written by `NetworkSegmenter.save`.
    classify : bool
        Classify each segment with the default classifier and write CLASSMAP.
    plots : bool
        Also write ``<out stem>-segment.png`` (whole field) and
        ``<out stem>-segment-zoom.png`` (256x256 around the largest source):
        the field in colour, the mask of each shipped variant and of the
        photutils 1.5 sigma baseline, the reconstructions, and the class map.
    device : str
    all_variants_in_plots : bool
        Plot every shipped variant (not only the one written).
    isophote : float, optional
        Footprint isophote in r sky sigma (`NetworkSegmenter` ``isophote``,
        header card SEGISO); None: the segmenter's own (0.5).

    Returns
    -------
    dict
        ``{'out', 'n_sources', 'seconds', 'plots': [...]}``.
    """
    import time

    from astrohvae.detection.background import estimate_background
    from astrohvae.io.readers import read_field

    t0 = time.perf_counter()
    field = read_field(field_path)
    bkg = estimate_background(field)
    over = {} if isophote is None else {"isophote": float(isophote)}
    if weights is not None:
        seg = NetworkSegmenter.load(weights, device=device, **over)
        wdir = Path(weights)
    else:
        seg = load_default_segmenter(variant, device=device, **over)
        wdir = WEIGHTS_DIR / seg.variant
    img = network_input(field, bkg)
    t1 = time.perf_counter()
    segm, (p, recon) = seg.segment(img, return_maps=True)
    t_seg = time.perf_counter() - t1
    cmap = None
    header = {"SEGVAR": (seg.variant, "segmenter variant"), "SEGRULE": (seg.rule, "pixel rule"),
              "SEGTHR": (seg.threshold, "posterior threshold of object"),
              "SEGISO": (-1.0 if seg.isophote is None else seg.isophote,
                         "footprint isophote, r sky sigma (-1: none)"),
              "SEGMFSIG": (-1.0 if seg.seed_nsigma is None else seg.seed_nsigma,
                           "matched-filter seed level, sigma (-1: none)"),
              "SEGPSNR": (-1.0 if seg.psf_snr is None else seg.psf_snr,
                          "S/N below which PSF-scaled growth (-1: none)"),
              "SEGBANDS": (-1.0 if seg.band_nsigma is None else seg.band_nsigma,
                           "2nd-best band S/N to keep a segment (-1: off)"),
              "SEGHALO": (-1.0 if getattr(seg, "halo_peak", None) is None else seg.halo_peak,
                          "halo test: bright-star peak S/N (-1: off)"),
              "SEGTRIM": (bool(getattr(seg, "trim", False)), "seeds trimmed to their footprints"),
              "SEGSMR": (-1.0 if getattr(seg, "smooth_radius", None) is None else seg.smooth_radius,
                         "smoothed isophote from radius, px (-1: off)"),
              "SEGFRAG": (-1.0 if getattr(seg, "fragment_excess", None) is None else seg.fragment_excess,
                          "fragment test: excess over model (-1: off)")}
    try:
        from astrohvae.models.weights import weights_hash

        header["SEGSHA"] = (weights_hash(wdir)[:16], "sha256 of segmenter weights (start)")
    except Exception:  # noqa: BLE001 - the hash is informative only
        pass
    if classify:
        from astrohvae.classify.persist import load_default_classifier
        from astrohvae.detection.sources import measure_sources
        from astrohvae.stamps.cutouts import cut_stamps

        if segm is None:
            cmap = np.zeros(field.shape, np.uint8)
        else:
            sources = measure_sources(field, segm, bkg)
            stamps = cut_stamps(field, segm, sources, bkg)
            clf = load_default_classifier(device=device)
            classes = clf.predict(stamps)
            cmap = classmap(segm, np.asarray(sources["id"]), classes)
        header["CLASSIFY"] = ("default", "classifier used for CLASSMAP")
    write_segmap(out, segm, class_map=cmap, header=header, wcs=field.wcs)
    written = []
    if plots:
        from astrohvae.detection.detect import detect

        results = {}
        names = [seg.variant]
        if all_variants_in_plots and weights is None:
            names = [v for v in ("vae-hc", "ae-hc", "ae-res-hc") if (WEIGHTS_DIR / v).is_dir()]
        for v in names:
            if v == seg.variant:
                results[v] = (segm, recon)
            else:
                s2, (_, r2) = load_default_segmenter(v, device=device, **over).segment(img, return_maps=True)
                results[v] = (s2, r2)
        results["photutils 1.5σ"] = (detect(field, bkg, nsigma=1.5), None)
        stem = Path(out)
        stem = stem.with_name(stem.name[:-5] if stem.name.endswith(".fits") else stem.name)
        title = f"{field.name}: segmentation ({seg.variant} written)"
        written.append(plot_panels(img, results, f"{stem}-segment.png", class_map=cmap, title=title))
        written.append(plot_panels(img, results, f"{stem}-segment-zoom.png", class_map=cmap,
                                   zoom=zoom_window(segm, field.shape), title=title + ", zoom"))
    return {"out": Path(out), "n_sources": 0 if segm is None else int(segm.n_labels),
            "seconds": time.perf_counter() - t0, "segment_seconds": t_seg, "plots": written}
