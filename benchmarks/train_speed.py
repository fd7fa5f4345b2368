"""Training and inference speed of the astrohvae networks on this machine.

Prints (and with ``--json PATH`` writes):

* the machine's fp32 peak: the best of ``torch.mm`` (MKL) on 512^2, 1024^2
  and 2048^2 matrices, the thread count times the single-thread mm rate, and
  a 1x1 convolution through oneDNN (a GEMM with the convolutions' kernels,
  much faster than MKL's mm on AMD CPUs);
* FLOPs per stamp (``torch.utils.flop_counter.FlopCounterMode``: 2 per
  multiply-add) of the AE encoder, the classification path (AE encoder +
  latent VAE encoder = `HierarchicalVAE.encode`), the AE forward pass and a
  training step (forward + backward);
* inference stamps/s at batch 256, eval mode, ``torch.inference_mode``, for the
  encoder and the classification path, eager and with the variants that may
  help (channels_last, TorchScript freeze which folds BatchNorm, and
  optionally ``torch.compile``), with the achieved FLOP/s as a fraction of the
  matmul peak;
* training stamps/s of ``ae`` (Adam, batch 128) and ``hvae`` (the AE epoch,
  the encoding pass and the latent-VAE epoch together).

Timings are the best of ``--reps`` repeats, so that other processes on a
shared machine distort them as little as possible; run it at a quiet moment.

Usage::

    python benchmarks/train_speed.py [--threads 2] [--reps 7] [--compile] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time


def best_time(fn, reps, warmup=2):
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_peak(torch, reps, sizes=(512, 1024, 2048)):
    """Best fp32 ``torch.mm`` rate over square sizes, best of many repeats each.

    On a shared machine a long product (2048^2: ~0.2 s on 2 cores) is almost
    always pre-empted, so smaller products timed many times are included and
    the highest rate is the peak.  Returns ``(flop/s, {size: flop/s})``.
    """
    rates = {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        t = best_time(lambda: torch.mm(a, b), max(reps, 30 if n <= 1024 else reps))
        rates[n] = 2.0 * n**3 / t
    return max(rates.values()), rates


def conv1x1_peak(torch, reps):
    """Best fp32 rate of a 1x1 convolution (GEMM through oneDNN), channels_last."""
    best = 0.0
    for c, size, n in ((256, 32, 8), (512, 16, 8), (1024, 16, 4)):
        x = torch.randn(n, c, size, size).contiguous(memory_format=torch.channels_last)
        w = torch.randn(c, c, 1, 1).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            t = best_time(lambda: torch.nn.functional.conv2d(x, w), max(reps, 20))
        best = max(best, 2.0 * n * c * c * size * size / t)
    return best


def flops(torch, fn, *args, backward=False):
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        out = fn(*args)
        if backward:
            out.backward()
    return fc.get_total_flops()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256, help="inference batch size")
    ap.add_argument("--train-batch", type=int, default=128)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch

    from astrohvae.models import ConvAE, HierarchicalVAE, LatentVAE

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    res = {"threads": torch.get_num_threads(), "torch": torch.__version__, "python": sys.version.split()[0],
           "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
           "load_average_start": os.getloadavg(), "batch": args.batch, "reps": args.reps}

    peak_measured, per_size = matmul_peak(torch, args.reps) if dev.type == "cpu" else (float("nan"), {})
    # On a loaded machine a multi-threaded product is pre-empted far more often than a
    # single-threaded one; the single-thread peak times the thread count bounds the
    # true peak from below, so the larger of the two is the reference.
    torch.set_num_threads(1)
    peak_1, _ = matmul_peak(torch, args.reps, sizes=(512,)) if dev.type == "cpu" else (float("nan"), {})
    torch.set_num_threads(args.threads)
    # torch.mm goes through MKL, convolutions through oneDNN; on this AMD CPU oneDNN's
    # AVX-512 kernels run a 1x1 convolution (a plain GEMM) much faster than MKL's mm,
    # so that is the better measure of the attainable fp32 peak.
    peak_conv = conv1x1_peak(torch, args.reps) if dev.type == "cpu" else float("nan")
    res["conv1x1_peak_gflops"] = peak_conv / 1e9
    peak = max(peak_measured, args.threads * peak_1, peak_conv)
    res["matmul_peak_gflops"] = peak / 1e9
    res["matmul_peak_measured_gflops"] = peak_measured / 1e9
    res["matmul_peak_1thread_gflops"] = peak_1 / 1e9
    res["matmul_gflops_by_size"] = {str(k): v / 1e9 for k, v in per_size.items()}

    ae = ConvAE().to(dev).eval()
    lat = LatentVAE(in_dim=30, latent_dim=1).to(dev).eval()
    hv = HierarchicalVAE(ae, lat).eval()
    x1 = torch.randn(1, 5, 64, 64, device=dev)
    with torch.no_grad():
        f_enc = flops(torch, ae.encode, x1)
        f_cls = flops(torch, lambda x: hv.encode(x)[1], x1)
        f_ae = flops(torch, lambda x: ae(x)[1], x1)
    ae_t = copy.deepcopy(ae).train()
    xb = torch.randn(4, 5, 64, 64, device=dev)
    f_train = flops(torch, lambda x: ((ae_t(x)[1] - x) ** 2).mean(), xb, backward=True) / 4
    res["mflop_per_stamp"] = {"encoder": f_enc / 1e6, "classify_path": f_cls / 1e6,
                              "ae_forward": f_ae / 1e6, "ae_train_step": f_train / 1e6}

    x = torch.randn(args.batch, 5, 64, 64, device=dev)

    ae_nchw = copy.deepcopy(ae).to(memory_format=torch.contiguous_format)
    with torch.no_grad():
        enc_jit = torch.jit.freeze(torch.jit.trace(copy.deepcopy(ae.encoder).eval(), x[:8]))

    def train_step_fn(model, loss_of, batch):
        model.train()
        opt = torch.optim.Adam(model.parameters(), 1e-3)

        def step():
            opt.zero_grad(set_to_none=True)
            loss_of(model, batch).backward()
            opt.step()

        return step

    def lat_loss(m, b):
        mu, logvar, rec, tgt = m(b)
        return (((rec - tgt) ** 2).sum(1) + 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(1)).mean()

    xt = torch.randn(args.train_batch, 5, 64, 64, device=dev)
    zt = torch.randn(256, 30, device=dev)
    ae_loss = lambda m, b: ((m(b)[1] - b) ** 2).mean()  # noqa: E731
    # name -> (callable, stamps per call, inference?, FLOP per stamp)
    tasks = {
        "encoder eager": (lambda: ae.encode(x), args.batch, True, f_enc),
        "classify path eager (AE enc + latent enc)": (lambda: hv.encode(x), args.batch, True, f_cls),
        "ae forward eager (enc + dec)": (lambda: ae(x), args.batch, True, f_ae),
        "encoder, NCHW weights": (lambda: ae_nchw.encode(x), args.batch, True, f_enc),
        "encoder jit.freeze (BN folded)": (lambda: enc_jit(x), args.batch, True, f_enc),
        "train ae step": (train_step_fn(copy.deepcopy(ae), ae_loss, xt), args.train_batch, False, f_train),
        "train latent vae step": (train_step_fn(copy.deepcopy(lat), lat_loss, zt), 256, False, float("nan")),
    }
    if args.compile:
        try:
            enc_c = torch.compile(copy.deepcopy(ae.encoder))
            with torch.inference_mode():
                enc_c(x)
            tasks["encoder torch.compile"] = (lambda: enc_c(x), args.batch, True, f_enc)
        except Exception as exc:  # noqa: BLE001 - report, do not fail the benchmark
            print(f"torch.compile failed: {type(exc).__name__}: {exc}"[:200])
    # interleave the variants round by round so that load changes hit them alike; keep the best
    best = {k: float("inf") for k in tasks}
    for r in range(args.reps + 2):
        for k, (fn, n, inference, _) in tasks.items():
            if inference:
                with torch.inference_mode():
                    t0 = time.perf_counter()
                    fn()
                    dt = time.perf_counter() - t0
            else:
                t0 = time.perf_counter()
                fn()
                dt = time.perf_counter() - t0
            if r >= 2:  # two warm-up rounds
                best[k] = min(best[k], dt)
    inf, rates = {}, {}
    for k, (_, n, inference, flop) in tasks.items():
        rates[k] = n / best[k]
        if inference:
            inf[k] = {"stamps_per_s": rates[k], "gflops": rates[k] * flop / 1e9,
                      "fraction_of_peak": rates[k] * flop / peak}
    res["inference"] = inf
    r_ae, r_lat = rates["train ae step"], rates["train latent vae step"]
    r_encode = inf["encoder eager"]["stamps_per_s"]

    # one hvae epoch per stamp: an AE epoch, the encoding pass, a latent-VAE epoch
    # (weighted as 20 AE epochs and 100 latent epochs, the settings this benchmark has always reported)
    r_hvae_epoch = 1.0 / (1.0 / r_ae + 1.0 / r_lat)
    r_hvae_default = 1.0 / (20 / r_ae + 1 / r_encode + 100 / r_lat) * 20
    res["training"] = {
        "ae stamps/s": r_ae,
        "ae achieved GFLOP/s": r_ae * f_train / 1e9,
        "ae fraction_of_peak": r_ae * f_train / peak,
        "latent_vae stamps/s": r_lat,
        "hvae stamps/s (1 AE epoch + 1 latent epoch)": r_hvae_epoch,
        "hvae stamps/s (defaults: 20 AE + 100 latent epochs, per AE epoch)": r_hvae_default,
    }
    res["load_average_end"] = os.getloadavg()

    print(f"torch {res['torch']}, threads {res['threads']}, cpus {res['cpus']}, "
          f"load average at start {res['load_average_start'][0]:.2f}, end {res['load_average_end'][0]:.2f}")
    print(f"fp32 peak (reference): {res['matmul_peak_gflops']:.1f} GFLOP/s = max(measured with "
          f"{res['threads']} threads {res['matmul_peak_measured_gflops']:.1f} [by size: "
          + ", ".join(f"{k}^2 {v:.1f}" for k, v in res["matmul_gflops_by_size"].items())
          + f"], {res['threads']} x 1-thread {res['matmul_peak_1thread_gflops']:.1f}, "
          f"oneDNN 1x1 conv {res['conv1x1_peak_gflops']:.1f})")
    print("MFLOP per stamp: " + ", ".join(f"{k} {v:.2f}" for k, v in res["mflop_per_stamp"].items()))
    print(f"inference, batch {args.batch}, eval, inference_mode:")
    for k, v in inf.items():
        if "error" in v:
            print(f"  {k:42s} {v['error']}")
        else:
            print(f"  {k:42s} {v['stamps_per_s']:9.0f} stamps/s  {v['gflops']:6.1f} GFLOP/s  "
                  f"{100 * v['fraction_of_peak']:5.1f}% of peak")
    print("training:")
    for k, v in res["training"].items():
        print(f"  {k:66s} {v:9.1f}" if "fraction" not in k else f"  {k:66s} {100 * v:8.1f}%")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2, default=float)
    return res


if __name__ == "__main__":
    main()
