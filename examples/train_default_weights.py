"""Train the classifier shipped in ``astrohvae/data/default/`` (A+Vr, label-free).

Stamps come from the real, unlabelled SDSS fields in ``../shared/data/sdss/fields``
(all except 004510-4-0030, kept for the star-recall check) together with a few
simulated fields (`astrohvae.simulate`, seeds 9000+, never used for testing).
No label is read: the simulated truth is not even matched.

    .venv/bin/python examples/train_default_weights.py            # ~5 min on 2 cores
    .venv/bin/python examples/train_default_weights.py --out /tmp/w --sim-seeds 9000 9001

Per field at most ``--per-field`` stamps are kept (all bright ones -- the
stellar locus and PSF are measured from them -- plus a random draw).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "sdss" / "fields"
HELD_OUT = "004510-4-0030"


def subsample(stamps, n, rng):
    """All stamps with S/N >= 50 plus a random draw, at most ``n`` in all."""
    from astrohvae.psf import profile_features

    if len(stamps) <= n:
        return stamps
    snr = profile_features(stamps)["snr"]
    bright = np.flatnonzero(snr >= 50)[: n // 2]
    rest = np.setdiff1d(np.arange(len(stamps)), bright)
    pick = np.sort(np.r_[bright, rng.choice(rest, n - len(bright), replace=False)])
    return stamps[pick]


def field_stamps(folder=None, sim_seed=None, sim_size=1024, cache=None):
    """Stamps of one real field folder or one simulated field (cached as .npz)."""
    from astropy.table import Table

    from astrohvae.stamps import StampSet, process_field

    key = f"sim{sim_seed}-{sim_size}" if folder is None else Path(folder).name
    if cache is not None:
        f = Path(cache) / f"{key}.npz"
        if f.exists():
            z = np.load(f)
            return StampSet(z["flux"], z["mask"], z["sky_sigma"], Table({"field": z["field"]}))
    if folder is None:
        from astrohvae.simulate import simulate_field

        field = simulate_field(sim_seed, size=(sim_size, sim_size)).field
    else:
        from astrohvae.io.readers import read_field

        field = read_field(folder)
    _, _, _, st = process_field(field)
    st = StampSet(st.flux, st.mask, st.sky_sigma, Table({"field": np.array([key] * len(st))}))
    if cache is not None:
        Path(cache).mkdir(parents=True, exist_ok=True)
        np.savez(Path(cache) / f"{key}.npz", flux=st.flux, mask=st.mask, sky_sigma=st.sky_sigma,
                 field=np.asarray(st.meta["field"]).astype(str))
    return st


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "astrohvae" / "data" / "default"))
    ap.add_argument("--fields", nargs="*", default=None, help="real field folders (default: shared data)")
    ap.add_argument("--sim-seeds", nargs="*", type=int, default=[9000, 9001, 9002, 9003])
    ap.add_argument("--per-field", type=int, default=500)
    ap.add_argument("--cache", default=str(ROOT / "scratch" / "classify" / "cache"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--colour-prior", action="store_true",
                    help="train the opt-in colour likelihood too (not the shipped default)")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    from astrohvae.classify import HierarchicalClassifier
    from astrohvae.stamps import concatenate

    rng = np.random.default_rng(args.seed)
    folders = args.fields
    if folders is None:
        folders = sorted(str(p) for p in DATA.iterdir() if p.is_dir() and p.name != HELD_OUT) if DATA.is_dir() else []
    sets = []
    t0 = time.time()
    for f in folders:
        st = field_stamps(folder=f, cache=args.cache)
        sets.append(subsample(st, args.per_field, rng))
        print(f"{Path(f).name}: {len(st)} stamps, kept {len(sets[-1])} ({time.time() - t0:.0f} s)", flush=True)
    for s in args.sim_seeds:
        st = field_stamps(sim_seed=s, cache=args.cache)
        sets.append(subsample(st, args.per_field, rng))
        print(f"simulated seed {s}: {len(st)} stamps, kept {len(sets[-1])} ({time.time() - t0:.0f} s)", flush=True)
    train = concatenate(sets)
    print(f"training on {len(train)} stamps", flush=True)
    clf = HierarchicalClassifier(random_state=args.seed, colour_prior=args.colour_prior, verbose=True).fit(train)
    print(f"star peak {clf.star_peak_}, peak weights {clf.weights_}, label stats {clf.label_stats_}")
    print(f"colour templates (stars, galaxies): {getattr(clf, 'n_colour_templates_', None)}")
    clf.save(args.out)
    print(f"wrote {args.out} in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
