"""The fragment test on light drawn by GalSim (not by `astrohvae.simulate`): a knotty disc stays whole.

GalSim's ``RandomKnots`` are point-like, a few per cent of the disc's light each and, here, bluer than
the disc, as star-forming regions are; photutils' contrast criterion alone cuts such a disc into pieces.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

galsim = pytest.importorskip("galsim")
torch = pytest.importorskip("torch")
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

from astrohvae.detection.background import estimate_background  # noqa: E402
from astrohvae.io.field import Field  # noqa: E402
from astrohvae.segmentation.network import load_default_segmenter, network_input  # noqa: E402

PIXEL = 0.396
SKY_SIGMA = np.array([0.044, 0.0167, 0.028, 0.048, 0.181])   # nanomaggies, SDSS-like, u..z


def _scene(star=False, seed=5, n=200):
    """Five-band field (nanomaggies) of an r = 16.5 exponential disc (half-light radius 4") with 30
    GalSim knots holding 30 % of its light, bluer than the disc; optionally an r = 18 red star on its
    outskirts. Kolmogorov PSF of 1.2". Returns the Field and the star's pixel position."""
    rng = np.random.default_rng(seed)
    disc_colour = np.array([0.25, 0.6, 1.0, 1.3, 1.5])    # flux per band relative to r
    knot_colour = np.array([0.6, 0.95, 1.0, 1.05, 1.1])   # bluer than the disc
    f_r = 10 ** (-0.4 * (16.5 - 22.5))
    psf = galsim.Kolmogorov(fwhm=1.2)
    c = (n / 2 + 1, n / 2 + 1)
    star_pos = (n / 2 + 9.0, n / 2 + 14.0)   # (y, x), about 2 half-light radii out
    data = np.zeros((5, n, n), np.float32)
    for b in range(5):
        disc = galsim.Exponential(half_light_radius=4.0, flux=0.7 * f_r * disc_colour[b])
        knots = galsim.RandomKnots(30, half_light_radius=4.0, flux=0.3 * f_r * knot_colour[b],
                                   rng=galsim.BaseDeviate(seed + 1))   # (0 would seed from the clock)
        gal = galsim.Convolve([galsim.Add([disc, knots]).shear(q=0.8, beta=0.3 * galsim.radians), psf])
        img = galsim.ImageF(n, n, scale=PIXEL)   # GalSim's pixel (1, 1) is array element [0, 0]
        gal.drawImage(image=img, center=galsim.PositionD(*c), add_to_image=True)
        if star:
            s = galsim.Convolve([galsim.DeltaFunction(flux=10 ** (-0.4 * (18.0 - 22.5)) * disc_colour[b] * 1.4), psf])
            s.drawImage(image=img, center=galsim.PositionD(star_pos[1] + 1, star_pos[0] + 1), add_to_image=True)
        data[b] = img.array + rng.normal(0.0, SKY_SIGMA[b], (n, n))
    return Field(data=data, mask=np.zeros(data.shape, bool)), star_pos


def _labels_on_disc(segm, half=22, n=200):
    box = np.asarray(segm.data)[n // 2 - half:n // 2 + half, n // 2 - half:n // 2 + half]
    return set(np.unique(box[box > 0]).tolist())


SEEDS = range(8)


def _disc_counts(star):
    """Segments on the disc per seed: shipped, photutils' contrast alone; and whether the star stays apart."""
    seg = load_default_segmenter(device="cpu")
    plain = load_default_segmenter(device="cpu", fragment_excess=None)
    shipped, contrast, apart = [], [], []
    for seed in SEEDS:
        field, (sy, sx) = _scene(star=star, seed=seed)
        img = network_input(field, estimate_background(field))
        s, p = seg.segment(img), plain.segment(img)
        shipped.append(len(_labels_on_disc(s)))
        contrast.append(len(_labels_on_disc(p)))
        centre, at_star = int(s.data[100, 100]), int(s.data[int(round(sy)), int(round(sx))])
        apart.append(centre > 0 and at_star not in (0, centre))
    return np.array(shipped), np.array(contrast), np.array(apart)


def test_knotty_galsim_discs_stay_nearly_whole():
    """Eight knotty discs: one segment each at best; measured mean 1.9 (before issue 14's ninth round
    4.1; photutils' contrast alone 8.8)."""
    shipped, contrast, _ = _disc_counts(star=False)
    assert shipped.min() >= 1 and shipped.mean() <= 2.5
    assert contrast.mean() >= 2 * shipped.mean()


def test_red_star_on_knotty_galsim_discs_stays_apart():
    """The same discs with an r = 18 red star on their outskirts: the star is its own source on all
    eight; measured mean 3.0 segments on the disc, star included (before: 8.5, nothing was tested)."""
    shipped, contrast, apart = _disc_counts(star=True)
    assert apart.all()
    assert shipped.mean() <= 3.5 and contrast.mean() >= 2 * shipped.mean()
