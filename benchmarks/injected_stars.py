"""Point sources injected into a real SDSS frame: how many of them the classifier labels star.

A known answer on real sky: ``--n`` point sources are added to the frame 004510-4-0030, each the
field's own PSF (`astrohvae.morphology.psf.estimate_psf` of the field's stamps, per band, shifted to a
random sub-pixel position with `astrohvae.morphology.statistics.recentre`) times the five PSF fluxes of
one of the SDSS-catalogued stars of the field with 21 < r < 23.5 (its stars_in_frame list), at random
positions at least 4 px from any source and 30 px from each other.  The frame then goes through the
chain of ``astrohvae run`` (`astrohvae.pipeline.field.find_sources`, `astrohvae.stamps.cutouts.cut_stamps`),
each injected source is matched to the nearest catalogue source within 2 px, and every classifier
(retrain_compare.py's entries) labels the stamps.  Printed: per r bin (the injected r flux) how many
are labelled star, and how many of all the frame's sources are.  The sky noise, the neighbours, the
background and the band alignment are the real frame's; only the sources' own photon noise is left out
(sky-limited at r > 21).

    .venv/bin/python benchmarks/injected_stars.py --weights shipped shipped@spread_term=false,morph_snr=10
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIELD = ROOT.parent / "shared" / "data" / "sdss" / "fields" / "004510-4-0030"
BINS = ((21.0, 21.5), (21.5, 22.0), (22.0, 22.5), (22.5, 23.5))


def inject(field, psf, seds, n, rng, occupied, margin=40, min_sep=30.0, clear=4):
    """A copy of ``field`` with ``n`` point sources of ``psf`` (5, ny, nx) and fluxes drawn from ``seds``.

    Returns ``(field, positions (n, 2) y/x, fluxes (n, 5))``.
    """
    from astrohvae.morphology.statistics import recentre

    p = np.clip(np.asarray(psf, dtype=np.float64), 0, None)
    p = p / p.sum(axis=(1, 2), keepdims=True)
    ny, nx = field.shape
    h = p.shape[-1] // 2
    pos = []
    while len(pos) < n:
        y, x = rng.uniform(margin, ny - margin), rng.uniform(margin, nx - margin)
        iy, ix = int(round(y)), int(round(x))
        if occupied[iy - clear:iy + clear + 1, ix - clear:ix + clear + 1].any():
            continue
        if any(np.hypot(y - a, x - b) < min_sep for a, b in pos):
            continue
        pos.append((y, x))
    pos = np.array(pos)
    flux = seds[rng.integers(0, len(seds), n)]
    data = field.data.copy()
    for (y, x), f in zip(pos, flux):
        iy, ix = int(np.floor(y)), int(np.floor(x))
        shifted = recentre(p[None].astype(np.float32), np.array([-(y - iy)]), np.array([-(x - ix)]))[0]
        win = (slice(iy - h, iy + h), slice(ix - h, ix + h))
        for b in range(len(f)):
            data[b][win] += (f[b] * shifted[b] * ~field.mask[b][win]).astype(np.float32)
    return dataclasses.replace(field, data=data), pos, flux


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", nargs="+", default=["shipped"], help="retrain_compare.py's weights entries")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="one injection run per seed")
    ap.add_argument("--n", type=int, default=120, help="point sources injected per run")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from astropy.table import Table

    from astrohvae.io.readers import read_field
    from astrohvae.morphology.psf import estimate_psf
    from astrohvae.pipeline.field import find_sources
    from astrohvae.pipeline.loading import load_segmenter
    from astrohvae.stamps.cutouts import cut_stamps
    from retrain_compare import load_variant

    t0 = time.time()
    warnings.simplefilter("ignore")
    seg = load_segmenter("auto", device="cpu")
    field = read_field(FIELD)
    bkg, segm, src = find_sources(field, segmenter=seg)
    psf = estimate_psf(cut_stamps(field, segm, src, bkg)).image
    occupied = np.asarray(segm.data) > 0
    stars = Table.read(FIELD / f"stars_in_frame_{FIELD.name}.fits")
    pf = np.asarray(stars["PSFFLUX"], float)
    r = 22.5 - 2.5 * np.log10(np.clip(pf[:, 2], 1e-3, None))
    seds = pf[(r > 21.0) & (r < 23.5) & (pf[:, 1:4] > 0).all(axis=1)]
    clfs = {w: load_variant(w) for w in args.weights}
    counts = {w: {"bins": [[0, 0] for _ in BINS], "all": [0, 0]} for w in args.weights}
    detected = injected = 0
    for seed in args.seeds:
        f2, pos, flux = inject(field, psf, seds, args.n, np.random.default_rng(seed), occupied)
        bkg2, segm2, src2 = find_sources(f2, segmenter=seg)
        st = cut_stamps(f2, segm2, src2, bkg2)
        d = np.hypot(pos[:, 0][:, None] - np.asarray(st.meta["y"])[None], pos[:, 1][:, None] - np.asarray(st.meta["x"])[None])
        j = d.argmin(axis=1)
        ok = d[np.arange(len(j)), j] <= 2.0
        detected += int(ok.sum())
        injected += len(pos)
        rin = 22.5 - 2.5 * np.log10(flux[:, 2])
        for w, clf in clfs.items():
            p = clf.predict_proba(st)
            for k, (lo, hi) in enumerate(BINS):
                sel = ok & (rin >= lo) & (rin < hi)
                counts[w]["bins"][k][0] += int((p[j[sel]] < 0.5).sum())
                counts[w]["bins"][k][1] += int(sel.sum())
            counts[w]["all"][0] += int((p < 0.5).sum())
            counts[w]["all"][1] += len(p)
        print(f"[{time.time() - t0:5.0f} s] seed {seed}: {int(ok.sum())}/{len(pos)} injected sources detected", flush=True)
    names = [f"r {lo:g}-{hi:g}" for lo, hi in BINS]
    print(f"\n{injected} point sources injected into {FIELD.name} ({len(args.seeds)} runs), {detected} detected; "
          "labelled star per injected r, and of all the frame's sources:\n")
    print("| weights | " + " | ".join(names) + " | r > 21.5 | all sources labelled star |")
    print("|" + "---|" * (len(names) + 3))
    for w, c in counts.items():
        faint = [sum(c["bins"][k][i] for k in range(1, len(BINS))) for i in (0, 1)]
        print(f"| {w} | " + " | ".join(f"{a}/{b}" for a, b in c["bins"]) + f" | {faint[0]}/{faint[1]} | "
              f"{c['all'][0]}/{c['all'][1]} |")
    if args.json:
        Path(args.json).write_text(json.dumps(counts, indent=1))


if __name__ == "__main__":
    main()
