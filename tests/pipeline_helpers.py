"""Shared helpers of tests/test_pipeline.py and tests/test_survey.py (owner: pipeline)."""

from __future__ import annotations

import numpy as np
from astropy.io import fits

from astrohvae import BANDS

SKY_SIGMA = 0.01  # nanomaggy per pixel, about SDSS r


def gaussian_source(shape, x, y, flux, fwhm=3.0):
    """A normalised circular Gaussian of total ``flux`` at (x, y), 0-based."""
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    s = fwhm / 2.3548
    return (flux / (2 * np.pi * s * s) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * s * s))).astype(np.float32)


def noise_cube(shape=(160, 160), seed=0, sigma=SKY_SIGMA):
    rng = np.random.default_rng(seed)
    return rng.normal(0, sigma, (len(BANDS),) + tuple(shape)).astype(np.float32)


def toy_cube(shape=(160, 160), seed=0, n=12):
    """Noise plus ``n`` point sources and a few extended ones, all five bands."""
    rng = np.random.default_rng(seed)
    cube = noise_cube(shape, seed)
    ny, nx = shape
    for k in range(n):
        x, y = rng.uniform(12, nx - 12), rng.uniform(12, ny - 12)
        flux = rng.uniform(2, 20)
        fwhm = 3.0 if k % 3 else 7.0
        src = gaussian_source(shape, x, y, flux, fwhm)
        for b in range(len(BANDS)):
            cube[b] += src * (0.5 + 0.2 * b)
    return cube


def write_mef(path, cube, shapes=None, drop=(), extra=None):
    """Write a multi-extension FITS, one image HDU per band with FILTER = band (no WCS)."""
    hdus = [fits.PrimaryHDU()]
    for i, b in enumerate(BANDS):
        if b in drop:
            continue
        img = cube[i]
        if shapes and b in shapes:
            h, w = shapes[b]
            img = img[:h, :w]
        hdu = fits.ImageHDU(np.ascontiguousarray(img, dtype=np.float32), name=b.upper())
        hdu.header["FILTER"] = b
        hdu.header["BUNIT"] = "nanomaggy"
        for k, v in (extra or {}).items():
            hdu.header[k] = v
        hdus.append(hdu)
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return path


def fit_tiny_classifier(out_dir, seed=7, size=(256, 256)):
    """A real HierarchicalClassifier, trained for seconds on one small simulated field, saved to ``out_dir``.

    Good enough to exercise the product path end to end (not to be accurate).
    """
    from astrohvae import stamps as S
    from astrohvae.classify import HierarchicalClassifier
    from astrohvae.simulate import simulate_field

    sims = [simulate_field(seed + k, size=size).field for k in range(2)]
    sets = []
    for f in sims:
        bg = S.estimate_background(f)
        segm = S.detect(f, bg)
        src = S.measure_sources(f, segm, bg)
        sets.append(S.cut_stamps(f, segm, src, bg))
    stamps = S.concatenate(sets)
    clf = HierarchicalClassifier(ae_epochs=1, vae_epochs=3, channels=(4, 8, 8, 8), batch_size=64,
                                 augment=False, random_state=0)
    clf.fit(stamps)
    clf.save(out_dir)
    return out_dir


def one_line_error(stderr, must_contain):
    """Assert stderr is exactly one 'astrohvae: error: ...' line naming ``must_contain``."""
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one stderr line, got {lines!r}"
    assert lines[0].startswith("astrohvae: error: "), lines[0]
    assert str(must_contain) in lines[0], f"{must_contain!s} not named in {lines[0]!r}"
    return lines[0]
