"""Faint end (issue 13 item 5): does an AE of the stamp minus its fitted PSF add what the 8 statistics miss?

On the labelled stamps of the simulated test fields (seeds 500-507, 1024 px, the chain of
``astrohvae run``; `astrohvae.evaluation.data.simulated_stamps`):

* each stamp (other sources masked, recentred on its g+r+i centroid) minus its per-band PSF-fit
  amplitude times the field's PSF (`astrohvae.morphology.psf.estimate_psf` per field), in sky-noise units,
  asinh-compressed, central 32 x 32: a point source leaves noise at every S/N, a galaxy its
  departure from the PSF;
* a ConvAE (8 latents, label-free, random rotations / flips) trained on those residual images;
* AUC per r bin of: gradient boosting with truth labels (5-fold cross-validated) on the 8 physical
  statistics + log S/N, with and without the AE latents, and on the latents + log S/N alone; the
  label-free 1-D LatentVAE of the shipped A+Vr on the 8 statistics alone and with the first k
  principal components of the AE latents beside them (fitted on these stamps, no labels).

    .venv/bin/python benchmarks/faint_residual_ae.py [EPOCHS] [CACHE]
"""
import os, sys, time, warnings
os.environ.setdefault("OMP_NUM_THREADS", "2")
import numpy as np, torch
torch.set_num_threads(2)
from astrohvae.evaluation.data import simulated_stamps
from astrohvae.evaluation.metrics import labels_from_meta, binary_metrics
from astrohvae.classify.hierarchical import HierarchicalClassifier
from astrohvae.classify.mixture import mixture_posterior, star_side
from astrohvae.classify.persist import load_default_classifier
from astrohvae.morphology.physical import physical_features
from astrohvae.morphology.psf import estimate_psf
from astrohvae.morphology.statistics import radius_grid, centroids, recentre
from astrohvae.stamps.preprocess import clean_stamps
from astrohvae.conventions import GRI
from astrohvae.models.fitting import fit_ae
t0 = time.time()
log = lambda m: print(f"[{time.time()-t0:5.0f}s] {m}", flush=True)
st = simulated_stamps(list(range(500, 508)), 1024, cache=sys.argv[2] if len(sys.argv) > 2 else "scratch/classify/run-chain-cache")
st = st[np.asarray(st.meta["truth_type"]) >= 0]
y, mag = labels_from_meta(st.meta)
fields = np.asarray(st.meta["field"]).astype(str)
log(f"{len(y)} stamps")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    ref = load_default_classifier("cpu").ref_
    phys, _ = physical_features(st, ref)
# residual chi images against each field's PSF
S = 16
chi = np.zeros((len(y), 5, 2 * S, 2 * S), np.float32)
for f in np.unique(fields):
    sel = np.flatnonzero(fields == f)
    sub = st[sel]
    psf = estimate_psf(sub).image.astype(np.float64)
    cl = clean_stamps(sub.flux, sub.mask).astype(np.float64)
    dy, dx = centroids(cl[:, GRI].sum(1))
    cl = recentre(cl, dy, dx)
    r = radius_grid(64, 64)
    w = (r <= 5)[None, None]
    p = psf / psf.sum(axis=(1, 2), keepdims=True)
    a = (cl * p[None] * w).sum((2, 3)) / (p[None] ** 2 * w).sum((2, 3))
    res = (cl - a[:, :, None, None] * p[None]) / sub.sky_sigma[:, :, None, None]
    chi[sel] = np.arcsinh(res[:, :, 32 - S:32 + S, 32 - S:32 + S] / 3.0)
log("chi images made")
net, _ = fit_ae(chi, latent_dim=8, channels=(16, 32, 32, 32), epochs=int(sys.argv[1]) if len(sys.argv) > 1 else 4,
                batch_size=128, lr=2e-3, device="cpu", seed=0, patience=None, augment=True, progress=False,
                schedule="onecycle")
with torch.no_grad():
    net = net.cpu().eval()
    z = np.concatenate([net.encode(torch.from_numpy(chi[i:i+512])).numpy() for i in range(0, len(chi), 512)])
log(f"AE latents {z.shape}")
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import cross_val_predict
snr = np.log10(np.clip(np.asarray(__import__("astrohvae.psf", fromlist=["x"]).profile_features(st)["snr"]), 1, None))
bins = [(0, 19, "r<19"), (19, 21, "19<r<21"), (21, 99, "r>21")]
def report(name, p):
    out = [f"{name:38s}"]
    for lo, hi, b in bins:
        s = (mag >= lo) & (mag < hi)
        out.append(f"{b} {binary_metrics(y[s], p[s])['auc']:.3f}")
    print(" | ".join(out), flush=True)
for name, X in (("GB stats+S/N (supervised, 5-fold)", np.c_[phys[:, :8], snr]),
                ("GB stats+S/N+chi-AE (supervised)", np.c_[phys[:, :8], snr, z]),
                ("GB chi-AE+S/N only (supervised)", np.c_[z, snr])):
    p = cross_val_predict(HistGradientBoostingClassifier(random_state=0), X, y, cv=5, method="predict_proba")[:, 1]
    report(name, p)
# unsupervised: LatentVAE on stats vs stats + k PCs of chi-AE latents (fitted on these stamps, label-free)
zs = (z - z.mean(0)) / (z.std(0) + 1e-6)
_, _, vt = np.linalg.svd(zs, full_matrices=False)
for k in (0, 2, 8):
    X = np.c_[phys[:, :8], zs @ vt[:k].T].astype(np.float32) if k else phys[:, :8].astype(np.float32)
    clf = HierarchicalClassifier(random_state=0)
    clf._fit_latent(X, 0, "cpu")
    mu, sig = clf._encode_latent(X)
    post = mixture_posterior(mu[:, 0], sig[:, 0], clf.weights_, *clf._prior()[1:])
    groups = post.argmax(1)
    side, _ = star_side(st, groups)
    clf.star_peak_ = side
    p = clf._posterior(mu[:, 0], sig[:, 0])[:, 1 - side]
    report(f"LatentVAE stats + {k} chi-AE PCs (unsup.)", p)
