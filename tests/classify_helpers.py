"""Toy labelled stamps for the classify/evaluate tests: Moffat-PSF stars and PSF-convolved
exponential / de Vaucouleurs galaxies with noise and neighbours (truth in meta)."""
import numpy as np

from astropy.table import Table

def toy_stamps(n=400, seed=0, star_fraction=0.35, fwhm=3.5, size=64, mag_range=(16, 22.5), neighbours=0.3):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(float)
    sky = np.array([0.15, 0.04, 0.05, 0.07, 0.2], 'f4')  # nmgy / pixel
    colours = np.array([1.5, 0.5, 0.0, -0.3, -0.5])      # mag offsets relative to r
    beta = 3.0
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    def moffat(dx, dy):
        r2 = (xx - size // 2 - dx) ** 2 + (yy - size // 2 - dy) ** 2
        p = (1 + r2 / alpha ** 2) ** -beta
        return p / p.sum()
    psf = moffat(0, 0)
    fpsf = np.fft.rfft2(np.fft.ifftshift(psf))
    flux = np.zeros((n, 5, size, size), 'f4'); mask = np.zeros((n, size, size), 'u1')
    typ = (rng.random(n) > star_fraction).astype(int)
    mag = rng.uniform(*mag_range, n)
    rh = np.zeros(n)
    for k in range(n):
        dx, dy = rng.uniform(-0.5, 0.5, 2)
        if typ[k] == 0:
            prof = moffat(dx, dy)
        else:
            r_e = np.exp(rng.uniform(np.log(1.0), np.log(6.0)))  # px
            rh[k] = r_e
            q = rng.uniform(0.3, 1.0); th = rng.uniform(0, np.pi)
            x = xx - size // 2 - dx; y = yy - size // 2 - dy
            xr = x * np.cos(th) + y * np.sin(th); yr = (-x * np.sin(th) + y * np.cos(th)) / q
            r = np.hypot(xr, yr)
            if rng.random() < 0.6:
                g = np.exp(-1.678 * r / r_e)
            else:
                g = np.exp(-7.669 * ((r / r_e) ** 0.25))
            g = np.fft.irfft2(np.fft.rfft2(g) * fpsf, s=(size, size))
            prof = np.clip(g, 0, None); prof /= prof.sum()
        ftot = 10 ** (-0.4 * (mag[k] + colours - 22.5))
        img = ftot[:, None, None] * prof[None] + rng.normal(0, 1, (5, size, size)) * sky[:, None, None]
        own = prof > prof.max() * 0.02
        if rng.random() < neighbours:
            cx, cy = rng.uniform(5, 59, 2)
            if np.hypot(cx - 32, cy - 32) > 12:
                nb = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 2.5 ** 2)); nb /= nb.sum()
                img += 10 ** (-0.4 * (rng.uniform(16, 21) + colours - 22.5))[:, None, None] * nb[None]
                mask[k][(nb > nb.max() * 0.02)] |= 2
        mask[k][own] |= 1
        flux[k] = img
    meta = Table({'truth_type': typ, 'truth_mag_r': mag, 'field': np.array(['toy'] * n)})
    from astrohvae.stamps import StampSet
    return StampSet(flux, mask, np.tile(sky, (n, 1)).astype("f4"), meta)
