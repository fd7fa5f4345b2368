"""Error table of the closed-form divergence terms against the quadrature reference.

Usage::

    .venv/bin/python benchmarks/divergences.py [--out benchmarks/results/divergences.txt]

Grid: mu in [-5, 5] (41), sigma in [0.05, 3] (15, log-spaced), m in [0.5, 3] (6),
s in [0.2, 2] (7, log-spaced) -- 25 830 points, float64, one latent dimension.
The reference is `kl_quad` (itself checked against scipy.integrate.quad in
tests/test_priors.py to ~1e-10).  "rel" is |err| / KL; KL approaches 0 only
where m << s, so also shown is the max relative error where KL >= 0.1.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from astrohvae.models import priors as P


def grid():
    g = np.meshgrid(np.linspace(-5, 5, 41), np.geomspace(0.05, 3, 15),
                    np.linspace(0.5, 3, 6), np.geomspace(0.2, 2, 7), indexing="ij")
    return [torch.tensor(a.ravel(), dtype=torch.float64) for a in g]


def printed_dkl(mu, sigma, m, s):
    """App. A.2's last line exactly as printed (gamma off by sqrt(2 pi))."""
    z = mu / (math.sqrt(2) * sigma)
    return (math.log(2) + torch.log(s / sigma) + ((mu - m) ** 2 + sigma ** 2 - s ** 2) / (2 * s ** 2)
            + 2 * m * (-sigma * torch.exp(-z * z)
                       + math.sqrt(math.pi / 2) * mu * (1 - torch.tanh(1.19 * z))) / s ** 2)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="also write the table to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    M, S, MM, SS = grid()
    mu, lv, m, s = M[:, None], torch.log(S ** 2)[:, None], MM[:, None], SS[:, None]
    t0 = time.perf_counter()
    ref = P.kl_quad(mu, lv, m, s)
    t_ref = time.perf_counter() - t0
    rows = []

    def add(name, val, note=""):
        err = val - ref
        i = int(err.abs().argmax())
        big = ref >= 0.1
        rows.append((name, err.abs().max().item(), (err.abs() / ref.clamp(min=1e-300)).max().item(),
                     (err.abs()[big] / ref[big]).max().item(), err.min().item(), err.max().item(),
                     f"mu={M[i]:.2f} sig={S[i]:.3f} m={MM[i]:.2f} s={SS[i]:.2f}", note))

    for v in ("convex", "nearest", "min"):
        add(f"kl_sc[{v}]", P.kl_sc(mu, lv, m, s, variant=v), "upper bound")
    add("kl_dkl[tanh]", P.kl_dkl(mu, lv, m, s), "paper (corrected)")
    add("kl_dkl[erfc]", P.kl_dkl(mu, lv, m, s, erfc="exact"))
    add("kl_dkl[tanh,remainder]", P.kl_dkl(mu, lv, m, s, remainder=True))
    add("kl_dkl[erfc,remainder]", P.kl_dkl(mu, lv, m, s, erfc="exact", remainder=True))
    add("kl_dkl as printed", printed_dkl(M, S, MM, SS), "gamma x sqrt(2pi)")
    t0 = time.perf_counter()
    mix = P.kl_mixture_quad(mu, lv, torch.tensor([0.5, 0.5], dtype=torch.float64),
                            torch.stack([-MM, MM], -1)[:, None, :], torch.stack([SS, SS], -1)[:, None, :])
    t_mix = time.perf_counter() - t0
    add("kl_mixture_quad", mix, "quadrature")

    lines = [f"grid: {len(M)} points; KL range [{ref.min():.3g}, {ref.max():.3g}]; "
             f"kl_quad {1e6 * t_ref / len(M):.1f} us/sample, kl_mixture_quad {1e6 * t_mix / len(M):.1f} us/sample",
             f"{'term':24s} {'max|err|':>9s} {'max rel':>9s} {'rel KL>=.1':>10s} "
             f"{'min err':>9s} {'max err':>9s}  worst at"]
    for name, a, r, rb, lo, hi, where, note in rows:
        lines.append(f"{name:24s} {a:9.3g} {r:9.3g} {rb:10.3g} {lo:9.3g} {hi:9.3g}  {where}  {note}")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
