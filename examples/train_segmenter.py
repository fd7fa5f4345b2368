"""Train the shipped segmenters (astrohvae/data/segment/<variant>/) without labels.

Each variant (vae-hc, ae-hc, ae-res-hc) is a small fully convolutional (V)AE
trained to reconstruct random 64x64 crops of five-band fields in noise units
(`astrohvae.segmentation.network.network_input`): simulated fields (`astrohvae.simulate`)
and real, unlabelled SDSS fields from ../shared/data.  Then a Gaussian mixture
is fitted on the hypercolumns of random pixels and shipped with the weights.
No truth table or label is read.  The footprint rule applied after the
network (matched-filter seeds at 4 sigma, isophotal growth to 0.5 r sky sigma;
`astrohvae.segmentation.network.NetworkSegmenter`) has no trained parameters: its constants
were chosen on simulated seeds 10-12 and are written into each config.json.
Weights are written with `astrohvae.models.weights.save_weights` (network tensors in
model.safetensors, the fitted pixel rule in config.json).

Usage (a few minutes per variant on 2 CPU cores)::

    OMP_NUM_THREADS=1 python examples/train_segmenter.py \
        [--sims 2] [--real 001035-6-0017 003184-2-0169 007264-3-0111] \
        [--steps 1500] [--variants vae-hc ae-hc ae-res-hc] [--out astrohvae/data/segment]

The real field 004510-4-0030 (the one with a star list) is kept out of
training by default so that it can serve for evaluation.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from astrohvae.segmentation.network import NetworkSegmenter, WEIGHTS_DIR, network_input  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "sdss" / "fields"
REAL_DEFAULT = ["001035-6-0017", "003184-2-0169", "007264-3-0111"]


def _inputs(args):
    from astrohvae.detection.background import estimate_background

    images = []
    cache = Path(args.cache) if args.cache else None
    if cache:
        cache.mkdir(parents=True, exist_ok=True)

    def cached(name, make):
        if cache and (cache / f"{name}.npy").is_file():
            return np.load(cache / f"{name}.npy").astype(np.float32)
        x = make()
        if cache:
            np.save(cache / f"{name}.npy", x.astype(np.float16))
        return x

    for seed in range(1000, 1000 + args.sims):
        def make(seed=seed):
            from astrohvae.simulate.field import simulate_field

            sim = simulate_field(seed)
            return network_input(sim.field, estimate_background(sim.field))
        images.append(cached(f"sim-{seed}", make))
        print(f"simulated field seed {seed}", flush=True)
    for name in args.real:
        if not (DATA / name).is_dir():
            print(f"skip {name}: {DATA / name} not found", flush=True)
            continue

        def make(name=name):
            from astrohvae.io.readers import read_field

            field = read_field(DATA / name)
            return network_input(field, estimate_background(field))
        images.append(cached(name, make))
        print(f"real field {name}", flush=True)
    if not images:
        raise SystemExit("no training fields")
    return images


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sims", type=int, default=2, help="number of simulated fields (seeds 1000...)")
    ap.add_argument("--real", nargs="*", default=REAL_DEFAULT, help="real SDSS field names")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--variants", nargs="*", default=["vae-hc", "ae-hc", "ae-res-hc"])
    ap.add_argument("--out", default=str(WEIGHTS_DIR))
    ap.add_argument("--cache", default=None, help="folder caching the network inputs (.npy)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    images = _inputs(args)
    for variant in args.variants:
        t0 = time.time()
        seg = NetworkSegmenter(variant=variant, random_state=args.seed)
        seg.fit(images, steps=args.steps, log_every=max(1, args.steps // 5))
        path = seg.save(Path(args.out) / variant)
        print(f"{variant}: {time.time() - t0:.0f} s, final loss {np.mean(seg.history_[-50:]):.4f}, "
              f"component brightness {np.round(seg.component_brightness_, 3).tolist()}, "
              f"object components {seg.object_components_.tolist()} -> {path}", flush=True)


if __name__ == "__main__":
    main()
