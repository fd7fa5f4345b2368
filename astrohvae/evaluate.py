"""Metrics, the classical baseline, ROC curves and the evaluation table.

Convention: the positive class is *galaxy*; every score is a ``p_galaxy``-like
number (higher = more galaxy-like).  Truth labels are 0 = star, 1 = galaxy,
-1 = unknown (ignored).

* `ClassicalClassifier` -- the half-light-radius separator SExtractor and SDSS
  users rely on, label-free: the stellar locus is found as the narrow peak of
  the bright sources' half-light radii, a source is a galaxy when its
  half-light radius exceeds the locus by a margin.
* `binary_metrics` -- AUC, accuracy, star and galaxy purity / completeness.
* `summarise` -- mean +- std over training seeds, overall and per r-magnitude
  bin.
* `plot_roc` -- the paper's Fig. 6.
* `evaluate` -- all of it for a set of fitted methods on labelled stamps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = [
    "MAG_BINS",
    "FAINT_BINS",
    "SupervisedStatsCeiling",
    "SupervisedCNNCeiling",
    "ClassicalClassifier",
    "binary_metrics",
    "summarise",
    "format_table",
    "plot_roc",
    "evaluate",
    "labels_from_meta",
    "MATCH_RADIUS",
    "evaluate_truth",
    "format_truth_table",
    "match_catalog",
    "read_truth_list",
    "truth_labels",
]

MAG_BINS = ((-np.inf, 19.0, "r<19"), (19.0, 21.0, "19<r<21"), (21.0, np.inf, "r>21"))
"""The r-magnitude bins of the table (lower, upper, name)."""

FAINT_BINS = ((21.0, 22.0, "21<r<22"), (22.0, 23.0, "22<r<23"), (23.0, np.inf, "r>23"))
"""Sub-bins of the faint end (r > 21), reported next to `MAG_BINS`."""

ALL_BINS = MAG_BINS + FAINT_BINS


def labels_from_meta(meta):
    """``(y, mag_r)`` from a stamp ``meta`` table with ``truth_type`` (0/1/-1) and a magnitude.

    ``mag_r`` is ``truth_mag_r`` when present, else ``mag_r``, else NaN.
    """
    if "truth_type" not in meta.colnames:
        raise ValueError("stamps have no truth_type column")
    y = np.asarray(meta["truth_type"]).astype(int)
    for col in ("truth_mag_r", "mag_r"):
        if col in meta.colnames:
            return y, np.asarray(meta[col], dtype=float)
    return y, np.full(len(y), np.nan)


class ClassicalClassifier:
    """Half-light-radius star/galaxy separator (label-free threshold).

    ``predict_proba`` returns a monotone ``p_galaxy`` built from the ratio of
    each source's half-light radius to the stellar locus' (estimated on the
    stamps given to `fit`, see `astrohvae.psf.estimate_psf`): a logistic of
    ``(r_half / r_star - 1 - margin) / width``.

    Parameters
    ----------
    margin : float
        Relative excess over the stellar half-light radius at which a source
        becomes a galaxy (the threshold).
    width : float
        Softness of the probability.
    """

    method = "classical r_half"

    def __init__(self, margin=0.15, width=0.05, random_state=None):
        self.margin = margin
        self.width = width
        self.random_state = random_state

    def fit(self, stamps, y=None):
        from astrohvae.psf import stellar_locus, profile_features

        feat = profile_features(stamps)
        self.r_star_, _ = stellar_locus(feat["r_half"], feat["snr"], 50.0)
        return self

    def score_samples(self, stamps):
        from astrohvae.psf import profile_features

        rh = profile_features(stamps)["r_half"]
        return np.nan_to_num(rh / self.r_star_ - 1.0, nan=0.0)

    def predict_proba(self, stamps):
        s = self.score_samples(stamps)
        return 1.0 / (1.0 + np.exp(-np.clip((s - self.margin) / self.width, -50, 50)))

    def predict(self, stamps):
        return np.where(self.predict_proba(stamps) >= 0.5, "galaxy", "star")


def binary_metrics(y, p_galaxy, threshold=0.5):
    """AUC, accuracy, purity and completeness of both classes.

    Parameters
    ----------
    y : array of int (0 star, 1 galaxy; other values ignored)
    p_galaxy : array of float
    threshold : float
        ``p_galaxy >= threshold`` -> galaxy.

    Returns
    -------
    dict : ``auc`` (NaN when one class is absent), ``accuracy``,
    ``star_purity``, ``star_completeness``, ``galaxy_purity``,
    ``galaxy_completeness``, ``n``, ``n_star``, ``n_galaxy``.
    """
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y)
    p = np.asarray(p_galaxy, dtype=float)
    ok = ((y == 0) | (y == 1)) & np.isfinite(p)
    y, p = y[ok], p[ok]
    pred = (p >= threshold).astype(int)
    out = {"n": int(y.size), "n_star": int((y == 0).sum()), "n_galaxy": int((y == 1).sum())}
    out["auc"] = float(roc_auc_score(y, p)) if 0 < y.sum() < y.size else float("nan")
    out["accuracy"] = float((pred == y).mean()) if y.size else float("nan")

    def ratio(a, b):
        return float(a / b) if b else float("nan")

    out["star_purity"] = ratio(((pred == 0) & (y == 0)).sum(), (pred == 0).sum())
    out["star_completeness"] = ratio(((pred == 0) & (y == 0)).sum(), (y == 0).sum())
    out["galaxy_purity"] = ratio(((pred == 1) & (y == 1)).sum(), (pred == 1).sum())
    out["galaxy_completeness"] = ratio(((pred == 1) & (y == 1)).sum(), (y == 1).sum())
    return out


_COLS = ("auc", "accuracy", "star_purity", "star_completeness", "galaxy_purity", "galaxy_completeness")


def summarise(y, mag_r, runs, threshold=0.5):
    """Mean and std over seeds of the metrics, overall and per magnitude bin.

    Parameters
    ----------
    y, mag_r : arrays (N,)
    runs : dict method -> list of p_galaxy arrays (one per training seed)

    Returns
    -------
    list of dict rows: ``method``, ``n_seeds``, ``<metric>_mean``,
    ``<metric>_std`` for every metric, and ``auc_<bin>_mean/std`` per bin.
    """
    rows = []
    mag_r = np.asarray(mag_r, dtype=float)
    for name, plist in runs.items():
        per = [binary_metrics(y, p, threshold) for p in plist]
        row = {"method": name, "n_seeds": len(plist), "n": per[0]["n"]}
        for c in _COLS:
            v = np.array([m[c] for m in per], dtype=float)
            row[f"{c}_mean"] = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
            row[f"{c}_std"] = float(np.nanstd(v)) if np.isfinite(v).any() else float("nan")
        for lo, hi, bname in ALL_BINS:
            sel = (mag_r >= lo) & (mag_r < hi)
            v = np.array([binary_metrics(np.asarray(y)[sel], np.asarray(p)[sel])["auc"] for p in plist])
            row[f"auc_{bname}_mean"] = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
            row[f"auc_{bname}_std"] = float(np.nanstd(v)) if np.isfinite(v).any() else float("nan")
            row[f"n_{bname}"] = int(sel.sum())
        rows.append(row)
    return rows


def format_table(rows):
    """Markdown table of `summarise` rows: mean ± std over seeds; the value alone for one seed."""
    heads = ["method", "seeds", "AUC", "accuracy", "star pur.", "star compl.", "gal. pur.", "gal. compl."]
    heads += [f"AUC {b[2]}" for b in ALL_BINS]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in rows:
        cells = [r["method"], str(r["n_seeds"])]
        one = r["n_seeds"] == 1

        def cell(key):
            return f"{r[key + '_mean']:.3f}" if one else f"{r[key + '_mean']:.3f} ± {r[key + '_std']:.3f}"

        cells += [cell(c) for c in _COLS] + [cell(f"auc_{b[2]}") for b in ALL_BINS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_roc(y, runs, path, title="Star/galaxy ROC (positive class: galaxy)"):
    """Write the ROC curves (first seed of every method, AUC mean ± std in the legend) to a PNG.

    The file is written atomically.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    from astrohvae.io.atomic import atomic_path

    y = np.asarray(y)
    ok = (y == 0) | (y == 1)
    fig, ax = plt.subplots(figsize=(6, 5.5))
    for name, plist in runs.items():
        aucs = [binary_metrics(y, p)["auc"] for p in plist]
        p = np.asarray(plist[0], dtype=float)
        good = ok & np.isfinite(p)
        fpr, tpr, _ = roc_curve(y[good], p[good])
        ax.plot(fpr, tpr, label=f"{name}: AUC {np.mean(aucs):.3f} ± {np.std(aucs):.3f}")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false positive rate (stars called galaxies)")
    ax.set_ylabel("true positive rate (galaxies found)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path


def evaluate(train_stamps, test_stamps, methods, seeds=(0, 1, 2, 3, 4), roc_path=None, progress=None):
    """Fit every method on ``train_stamps`` for every seed and score ``test_stamps``.

    Parameters
    ----------
    train_stamps, test_stamps : StampSet-like; ``test_stamps.meta`` must hold
        ``truth_type`` (labels are never given to the methods).
    methods : dict name -> callable(random_state) -> unfitted estimator with
        ``fit(stamps)`` and ``predict_proba(stamps) -> p_galaxy``.  An
        estimator class with ``deterministic = True`` is fitted once.
    seeds : sequence of int
    roc_path : path of the ROC PNG, optional

    Returns
    -------
    (rows, runs) : `summarise` rows and the raw ``{method: [p_galaxy, ...]}``.
    """
    y, mag = labels_from_meta(test_stamps.meta)
    runs = {}
    for name, make in methods.items():
        plist = []
        for s in seeds:
            est = make(s)
            est.fit(train_stamps)
            plist.append(np.asarray(est.predict_proba(test_stamps), dtype=float))
            if progress:
                progress(name, s, binary_metrics(y, plist[-1])["auc"])
            if getattr(est, "deterministic", False):
                break
        runs[name] = plist
    rows = summarise(y, mag, runs)
    if roc_path is not None:
        plot_roc(y, runs, roc_path)
    return rows, runs


def stamps_from_images(images, field="cutouts", size=None, nsigma=1.5):
    """A `~astrohvae.stamps.StampSet` from bare five-band cutouts in nanomaggies.

    For labelled cutouts that come without masks or noise (e.g. the
    Kim & Brunner SDSS test stamps): each image is padded (with zeros, marked
    invalid, mask bit 4) or cropped about its centre to ``size`` (default
    `astrohvae.STAMP_SIZE`); the sky noise per band is the MAD-estimated
    standard deviation of the pixels; the source's own segment is the
    connected region above ``nsigma`` (g+r+i, smoothed) that touches the
    centre, other such regions are marked as other sources (bit 2).

    Parameters
    ----------
    images : ndarray (N, 5, h, w), nanomaggies
    field : str
        Value of ``meta['field']``.

    Returns
    -------
    StampSet
    """
    from astropy.table import Table
    from scipy import ndimage

    from astrohvae import STAMP_SIZE
    from astrohvae.stamps import StampSet

    size = STAMP_SIZE if size is None else int(size)
    img = np.nan_to_num(np.asarray(images, dtype=np.float32))
    n, nb, h, w = img.shape
    flux = np.zeros((n, nb, size, size), np.float32)
    mask = np.full((n, size, size), 4, np.uint8)
    # place centre on centre
    cy, cx = h // 2, w // 2
    y0, x0 = size // 2 - cy, size // 2 - cx
    sy0, sx0 = max(0, -y0), max(0, -x0)
    dy0, dx0 = max(0, y0), max(0, x0)
    hh = min(h - sy0, size - dy0)
    ww = min(w - sx0, size - dx0)
    flux[:, :, dy0 : dy0 + hh, dx0 : dx0 + ww] = img[:, :, sy0 : sy0 + hh, sx0 : sx0 + ww]
    mask[:, dy0 : dy0 + hh, dx0 : dx0 + ww] = 0
    valid = mask == 0
    sky = np.zeros((n, nb), np.float32)
    for k in range(n):
        v = flux[k][:, valid[k]]
        sky[k] = 1.4826 * np.median(np.abs(v - np.median(v, axis=1, keepdims=True)), axis=1)
        det = ndimage.gaussian_filter(flux[k, 1:4].sum(axis=0), 1.0)
        sdet = ndimage.gaussian_filter(np.where(valid[k], flux[k, 1:4].sum(axis=0), 0), 1.0)
        noise = 1.4826 * np.median(np.abs(sdet[valid[k]] - np.median(sdet[valid[k]])))
        lab, _ = ndimage.label((det > nsigma * noise) & valid[k])
        c = size // 2
        own = lab[c - 1 : c + 2, c - 1 : c + 2]
        own_lab = np.bincount(own[own > 0].ravel()).argmax() if (own > 0).any() else 0
        if own_lab:
            mask[k][lab == own_lab] |= 1
        mask[k][(lab > 0) & (lab != own_lab)] |= 2
    meta = Table({"field": np.array([field] * n), "id": np.arange(1, n + 1, dtype=np.int32)})
    return StampSet(flux, mask, sky, meta)


def load_stamps(path, field=None):
    """A labelled `StampSet` from a zarr stamp store (`astrohvae.store`).

    Raises `InputError` when the store cannot be opened.
    """
    from astrohvae.errors import InputError
    from astrohvae.store import open_store

    try:
        store = open_store(path)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(path, f"not a stamp store ({exc.__class__.__name__})") from None
    return store.to_stampset()


class BrightnessOnly:
    """Reference 'classifier' that only sorts by brightness (fainter = more galaxy-like).

    Stars dominate bright, galaxies faint, so it scores well on a mixed
    sample; the per-magnitude AUC shows it for what it is.
    """

    method = "brightness only"
    deterministic = True

    def fit(self, stamps, y=None):
        return self

    def predict_proba(self, stamps):
        from astrohvae.psf import profile_features

        f = np.log10(np.maximum(profile_features(stamps)["flux"], 1e-6))
        return 1.0 / (1.0 + np.exp(np.clip(2.0 * (f - 1.0), -50, 50)))

    def predict(self, stamps):
        return np.where(self.predict_proba(stamps) >= 0.5, "galaxy", "star")


def _truth(stamps, y=None):
    if y is None:
        if getattr(stamps, "meta", None) is None or "truth_type" not in stamps.meta.colnames:
            raise ValueError("a supervised ceiling needs truth labels (meta['truth_type'] or y)")
        y = np.asarray(stamps.meta["truth_type"]).astype(int)
    return np.asarray(y).astype(int)


class SupervisedStatsCeiling:
    """SUPERVISED ceiling, never shipped: gradient boosting on the physical statistics.

    scikit-learn's ``HistGradientBoostingClassifier`` trained with the truth
    labels of the training stamps (``meta['truth_type']``) on the same
    label-free statistics the default A+Vr reads
    (`astrohvae.classify.physical_statistics`: morphology against the field's
    PSF / stellar locus and the four aperture colours) plus log S/N.  It says how much of the
    star/galaxy information these statistics hold at each magnitude; it is a
    bound for the unsupervised methods, not a method.
    """

    method = "supervised ceiling: gradient boosting on physical stats"

    def __init__(self, random_state=0):
        self.random_state = random_state

    def _x(self, stamps):
        from astrohvae.classify import physical_statistics
        from astrohvae.psf import profile_features


        phys = physical_statistics(stamps, self.ref_)
        snr = profile_features(stamps)["snr"]
        return np.c_[phys, np.log10(np.clip(snr, 0.1, None))]

    def fit(self, stamps, y=None):
        from sklearn.ensemble import HistGradientBoostingClassifier

        from astrohvae.classify import physical_reference

        y = _truth(stamps, y)
        self.ref_ = physical_reference(stamps)
        x = self._x(stamps)
        ok = (y == 0) | (y == 1)
        self.model_ = HistGradientBoostingClassifier(random_state=self.random_state, early_stopping=True)
        self.model_.fit(x[ok], y[ok])
        return self

    def predict_proba(self, stamps):
        return self.model_.predict_proba(self._x(stamps))[:, 1].astype(np.float32)

    def predict(self, stamps):
        return np.where(self.predict_proba(stamps) >= 0.5, "galaxy", "star")


class SupervisedCNNCeiling:
    """SUPERVISED ceiling, never shipped: a small CNN on the stamps, trained on truth labels.

    The central 32x32 pixels of the five bands in sky-noise units (other
    sources masked, ``asinh(flux / 3 sigma_sky)``) plus the source's log S/N, three conv layers and a logistic output,
    trained by cross-entropy with rotations / flips on the training stamps
    and, optionally, ``extra`` labelled stamps (more simulated fields).  It
    bounds what the pixels allow a supervised learner at each magnitude.
    """

    method = "supervised ceiling: CNN on stamps"

    def __init__(self, extra=None, epochs=12, crop=32, batch_size=128, lr=2e-3, random_state=0):
        self.extra = extra
        self.epochs = epochs
        self.crop = crop
        self.batch_size = batch_size
        self.lr = lr
        self.random_state = random_state

    def _inputs(self, stamps):
        from astrohvae.preprocess import clean_stamps, crop_window
        from astrohvae.psf import profile_features

        flux = stamps.flux
        x = clean_stamps(flux, stamps.mask, window=crop_window(flux.shape[-2], flux.shape[-1], self.crop))
        sky = np.maximum(np.asarray(stamps.sky_sigma, dtype=np.float32), 1e-12)[:, :, None, None]
        x = np.arcsinh(x / (3.0 * sky)).astype(np.float32)  # pixels in sky-noise units, compressed
        s = np.log10(np.clip(profile_features(stamps)["snr"], 0.1, None)).astype(np.float32)
        return np.ascontiguousarray(np.nan_to_num(x)), s

    def _net(self):
        import torch.nn as nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Sequential(
                    nn.Conv2d(5, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                    nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                    nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
                self.head = nn.Sequential(nn.Linear(64 * 4 + 1, 64), nn.ReLU(), nn.Linear(64, 1))

            def forward(self, x, s):
                import torch

                return self.head(torch.cat([self.conv(x), s[:, None]], 1))[:, 0]

        return Net()

    def fit(self, stamps, y=None):
        import torch

        from astrohvae.train import LabelledSource, fit_model

        y = _truth(stamps, y)
        x, s = self._inputs(stamps)
        if self.extra is not None:
            xe, se = self._inputs(self.extra)
            x, s, y = np.concatenate([x, xe]), np.concatenate([s, se]), np.concatenate([y, _truth(self.extra)])
        ok = (y == 0) | (y == 1)
        bce = torch.nn.BCEWithLogitsLoss(reduction="none")

        def loss_fn(net, batch):
            xb, sb, yb = batch
            return {"loss": bce(net(xb, sb), yb)}

        self.net_, self.history_ = fit_model(
            self._net(), loss_fn, LabelledSource(x[ok], s[ok], y[ok].astype(np.float32)), epochs=self.epochs,
            batch_size=self.batch_size, lr=self.lr, weight_decay=1e-4, optimizer="adamw", schedule="onecycle",
            augment=True, device="cpu", seed=int(self.random_state), kind="ceiling-cnn")
        return self

    def predict_proba(self, stamps):
        import torch

        x, s = self._inputs(stamps)
        out = []
        with torch.no_grad():
            for i in range(0, len(x), 512):
                out.append(torch.sigmoid(self.net_(torch.from_numpy(x[i : i + 512]), torch.from_numpy(s[i : i + 512]))))
        return torch.cat(out).numpy().astype(np.float32) if out else np.zeros(0, np.float32)

    def predict(self, stamps):
        return np.where(self.predict_proba(stamps) >= 0.5, "galaxy", "star")


def method_factories(names, quick=False, extra_train=None):
    """``{display name: factory(random_state) -> estimator}`` for method keys.

    Keys: ``classical``, ``brightness`` (reference failure), ``a+vr`` (the shipped recipe), ``a+vr-ae`` (A+Vr
    with AE latents + physical statistics), ``a+vr-paper`` (the paper's exact
    recipe: 'lupt' whole stamps, symmetric prior, AE latents only), ``v+m``,
    ``vr+m-sc``, ``vr+m-dkl``, ``vr+m-aw``, ``vr+m-pw``, ``probe``, ``a+vr-colour`` (A+Vr with the
    opt-in colour likelihood), and the supervised ceilings ``ceiling-hgb`` / ``ceiling-cnn``
    (`SupervisedStatsCeiling`, `SupervisedCNNCeiling`: they read the truth labels; never shipped).
    ``quick`` shrinks the training (tests, smoke runs); ``extra_train`` are extra labelled stamps
    for the CNN ceiling.
    """
    from astrohvae.classify import HierarchicalClassifier, LatentProbe, ManifoldClassifier

    ae_ep = 1 if quick else 3
    vae_ep = 10 if quick else 30
    small = (8, 16, 32, 32)

    class _Classical(ClassicalClassifier):
        deterministic = True

    table = {
        "classical": ("classical r_half", lambda s: _Classical()),
        "brightness": ("brightness only (reference failure)", lambda s: BrightnessOnly()),
        "a+vr": ("A+Vr (default: physical stats, asym. prior)",
                 lambda s: HierarchicalClassifier(ae_epochs=ae_ep, vae_epochs=vae_ep, random_state=s)),
        "a+vr-colour": ("A+Vr + colour templates (opt-in colour_prior=True)",
                        lambda s: HierarchicalClassifier(colour_prior=True, ae_epochs=ae_ep, vae_epochs=vae_ep,
                                                         random_state=s)),
        "a+vr-ae": ("A+Vr (AE latents + physical stats)",
                    lambda s: HierarchicalClassifier(ae_components=None, ae_epochs=ae_ep, vae_epochs=vae_ep,
                                                     random_state=s)),
        "a+vr-paper": ("A+Vr (paper recipe: lupt, sym. prior)",
                       lambda s: HierarchicalClassifier(representation="lupt", crop=None, physical=False,
                                                        ae_components=None, symmetric_prior=True, fit_weight=False,
                                                        center_weight=0.0, augment=False, channels=small,
                                                        ae_epochs=ae_ep, vae_epochs=vae_ep, random_state=s)),
        "probe": ("probe: logistic on AE latents (supervised)",
                  lambda s: LatentProbe(channels=small, ae_epochs=ae_ep, random_state=s)),
        "ceiling-hgb": ("SUPERVISED CEILING: gradient boosting on physical stats (truth labels; not shipped)",
                        lambda s: SupervisedStatsCeiling(random_state=s)),
        "ceiling-cnn": ("SUPERVISED CEILING: CNN on stamps (truth labels; not shipped)",
                        lambda s: SupervisedCNNCeiling(extra=extra_train, epochs=2 if quick else 15,
                                                       random_state=s)),
    }
    for kl in ("standard", "sc", "dkl", "aw", "pw"):
        key = "v+m" if kl == "standard" else f"vr+m-{kl}"
        label = "V+M (VAE + Isomap)" if kl == "standard" else f"Vr+M ({kl.upper()})"
        table[key] = (label, (lambda k: lambda s: ManifoldClassifier(kl=k, channels=small, epochs=ae_ep,
                                                                      random_state=s))(kl))
    out = {}
    for n in names:
        if n not in table:
            raise ValueError(f"unknown method {n!r}; choose from {sorted(table)}")
        out[table[n][0]] = table[n][1]
    return out


def simulated_stamps(seeds, size, cache=None, segmenter="auto", log=None):
    """Labelled stamps of simulated fields, cut by the chain of ``astrohvae run``.

    Each field (`astrohvae.simulate.simulate_field`, ``size`` x ``size``)
    goes through `astrohvae.pipeline.find_sources` with ``segmenter`` and
    `astrohvae.stamps.cut_stamps`; the truth is matched by position
    (`astrohvae.store.match_truth`) into ``meta['truth_type']`` /
    ``meta['truth_mag_r']`` and is used only for scoring.

    Parameters
    ----------
    seeds : sequence of int
    size : int
    cache : path or None
        Folder of ``sim-<seed>-<size>-<segmenter>.npz`` files (read when present, else written).
    segmenter : str
        As for `astrohvae.pipeline.load_segmenter`.
    log : callable or None

    Returns
    -------
    astrohvae.stamps.StampSet
    """
    from astropy.table import Table

    from astrohvae.pipeline import find_sources, load_segmenter
    from astrohvae.simulate import simulate_field
    from astrohvae.stamps import StampSet, concatenate, cut_stamps
    from astrohvae.store import match_truth

    seg = None
    sets = []
    for s in seeds:
        f = None if cache is None else Path(cache) / f"sim-{s}-{size}-{segmenter}.npz"
        if f is not None and f.exists():
            z = np.load(f)
        else:
            if seg is None:
                seg = load_segmenter(segmenter, device="cpu")
            sim = simulate_field(s, size=(size, size))
            bkg, segm, src = find_sources(sim.field, segmenter=seg)
            st = cut_stamps(sim.field, segm, src, bkg)
            tt, tm = match_truth(st.meta, sim.truth)
            z = {"flux": st.flux, "mask": st.mask, "sky_sigma": st.sky_sigma, "truth_type": np.asarray(tt),
                 "truth_mag_r": np.asarray(tm)}
            if f is not None:
                f.parent.mkdir(parents=True, exist_ok=True)
                np.savez(f, **z)
        meta = Table({"field": np.array([f"sim{s}"] * len(z["flux"])),
                      "truth_type": np.asarray(z["truth_type"]).astype(int),
                      "truth_mag_r": np.asarray(z["truth_mag_r"], float)})
        sets.append(StampSet(np.asarray(z["flux"]), np.asarray(z["mask"]), np.asarray(z["sky_sigma"]), meta))
        if log is not None:
            log(f"simulated seed {s}: {len(meta)} stamps, {(meta['truth_type'] == 0).sum()} stars, "
                f"{(meta['truth_type'] == 1).sum()} galaxies")
    return concatenate(sets)


def evaluate_catalog(catalog, truth, radius=2.0):
    """Metrics of a catalogue's ``p_galaxy`` against a simulator truth table.

    Sources are matched to the nearest truth object within ``radius`` pixels;
    unmatched sources are left out.  Returns `summarise` rows (one method,
    one seed).
    """
    from astrohvae.io.catalog import read_catalog
    from astrohvae.simulate import read_truth
    from astrohvae.store import match_truth

    cat = read_catalog(catalog)
    t, _ = read_truth(truth)
    tt, tm = match_truth(cat.table, t, radius=radius)
    name = str(cat.header.get("CLASSIFR", cat.header.get("METHOD", "catalogue")))
    runs = {name: [np.asarray(cat.table["p_galaxy"], dtype=float)]}
    return summarise(np.asarray(tt).astype(int), tm, runs), runs, np.asarray(tt).astype(int)


def write_rows_csv(rows, path):
    """Write `summarise` rows as CSV (atomically)."""
    from astropy.table import Table

    from astrohvae.io.atomic import atomic_path

    t = Table(rows=[[r[k] for k in rows[0]] for r in rows], names=list(rows[0])) if rows else Table()
    with atomic_path(path) as tmp:
        t.write(tmp, format="ascii.csv", overwrite=True)
    return path


def load_dl4astro(folder):
    """The 20 labelled Kim & Brunner SDSS stamps as a StampSet and labels.

    The stamps (48x48, bands ugriz aligned to r) hold asinh magnitudes; they
    are converted back to nanomaggies with `astrohvae.photometry.luptitude_to_flux`
    (same softening), then centred in 64x64 stamps, the 16-pixel border
    zero-padded and marked invalid (mask bit 4); sky noise and segments are
    measured on the stamps (`stamps_from_images`).  Labels: +1 star -> 0,
    -1 galaxy -> 1.

    Returns
    -------
    (StampSet, y)
    """
    from pathlib import Path

    from astrohvae import BANDS
    from astrohvae.errors import InputError
    from astrohvae.photometry import luptitude_to_flux

    folder = Path(folder)
    try:
        img = np.load(folder / "sdss_test_images.npy")
        lab = np.load(folder / "sdss_test_labels.npy")
    except (OSError, ValueError) as exc:
        raise InputError(folder, f"cannot read the dl4astro stamps ({exc.__class__.__name__})") from None
    flux = np.stack([luptitude_to_flux(img[:, k], b) for k, b in enumerate(BANDS)], axis=1).astype(np.float32)
    st = stamps_from_images(flux, field="dl4astro")
    y = np.where(np.asarray(lab).ravel() > 0, 0, 1)
    return st, y


def star_recall(clf, field_folder, stars_path, radius=3.0, batch_size=256, segmenter="auto"):
    """Share of catalogued stars that ``clf`` labels star on a real field.

    The field goes through the chain of ``astrohvae run``
    (`astrohvae.pipeline.process_field` with the default segmenter); each
    catalogued star (``x_r``, ``y_r``) is matched to the nearest catalogue
    source within ``radius`` pixels (`astrohvae.store.match_truth`).

    Returns
    -------
    dict : ``n_catalogued``, ``n_matched``, ``n_star`` (matched and labelled
    star), ``share`` (n_star / n_matched), ``n_sources`` (detections),
    ``star_fraction_all`` (share of all detections labelled star).
    """
    from astropy.table import Table

    from astrohvae.io.readers import read_field
    from astrohvae.pipeline import load_segmenter, process_field
    from astrohvae.store import match_truth

    field = read_field(field_folder)
    cat = process_field(field, clf, segmenter=load_segmenter(segmenter), batch_size=batch_size).table
    stars = Table.read(stars_path)
    points = Table({"x": np.asarray(stars["x_r"], float), "y": np.asarray(stars["y_r"], float)})
    code, _ = match_truth(points, Table({"x": cat["x"], "y": cat["y"], "type": cat["class"]}), radius=radius)
    hit = code >= 0
    n_star = int(np.count_nonzero(code == 0))
    labels = np.asarray(cat["class"])
    return {"n_catalogued": int(len(points)), "n_matched": int(hit.sum()), "n_star": n_star,
            "share": n_star / max(int(hit.sum()), 1), "n_sources": int(len(cat)),
            "star_fraction_all": float((labels == "star").mean()) if len(labels) else float("nan")}


# ----------------------------------------------------------------------------- any truth list
MATCH_RADIUS = 1.0
"""Default match radius (arcsec) of `evaluate_truth`: a truth object is matched to the nearest
catalogue source within it (0.06" is the typical SDSS-vs-astrohvae offset; 1" = 2.5 px)."""

TRUTH_MAG_EDGES = (16.0, 18.0, 20.0, 21.0, 22.0)
"""r-magnitude bin edges of the `evaluate_truth` table (plus an open bin at each end)."""

_RA = ("ra", "raj2000", "ra_icrs", "alpha_j2000", "ra_deg")
_DEC = ("dec", "dej2000", "decj2000", "de_icrs", "delta_j2000", "dec_deg")
_X = ("x", "x_r", "x_image")
_Y = ("y", "y_r", "y_image")
_CLASS = ("class", "type", "truth_type", "objc_type", "label", "star_galaxy", "is_star")
_MAG = ("mag_r", "r", "psfmag_r", "modelmag_r", "cmodelmag_r", "rmag", "mag")
_FLUX = ("psfflux", "modelflux")


def _col(table, names):
    low = {c.lower(): c for c in table.colnames}
    for n in names:
        if n in low:
            return low[n]
    return None


def truth_labels(values):
    """0 star / 1 galaxy / -1 unknown from a class column.

    Accepted: strings (``star``, ``galaxy``/``gal``, any case; ``qso`` and
    others unknown), SDSS ``TYPE`` codes (6 star, 3 galaxy, others unknown),
    ``+1`` star / ``-1`` galaxy (dl4astro), ``0`` star / ``1`` galaxy
    (astrohvae's ``truth_type``), booleans (``is_star``-like: True = star).
    Integer columns are read by their set of values: {3, 6} SDSS, {-1, 1}
    the ±1 convention, {0, 1} truth_type.

    Raises
    ------
    ValueError
        When the values fit no convention.
    """
    v = np.asarray(values)
    if v.dtype.kind in "SU" or v.dtype == object:
        s = np.char.strip(np.char.lower(v.astype(str)))
        return np.where(s == "star", 0, np.where(np.isin(s, ("galaxy", "gal")), 1, -1)).astype(np.int8)
    if v.dtype.kind == "b":
        return np.where(v, 0, 1).astype(np.int8)
    iv = np.asarray(np.round(v.astype(float)), dtype=np.int64)
    vals = set(np.unique(iv).tolist())
    if vals & {3, 6} and vals <= {0, 1, 2, 3, 4, 5, 6, 7, 8}:
        return np.where(iv == 6, 0, np.where(iv == 3, 1, -1)).astype(np.int8)
    if vals <= {-1, 1}:
        return np.where(iv == 1, 0, 1).astype(np.int8)
    if vals <= {-1, 0, 1}:
        return np.where(iv == 0, 0, np.where(iv == 1, 1, -1)).astype(np.int8)
    raise ValueError(f"class values {sorted(vals)[:6]} fit no convention (star/galaxy, SDSS 3/6, ±1, 0/1)")


def read_truth_list(path):
    """A truth list as a Table with ``ra, dec`` (deg) or ``x, y``, ``label`` and ``mag_r``.

    Parameters
    ----------
    path : path
        FITS (the ``TRUTH`` HDU if there is one, else the first table HDU)
        or CSV/ASCII with a header line; or a simulator output folder.  Its
        position columns are found by name (``ra``/``dec``, ``raj2000`` ...,
        else ``x``/``y`` or ``x_r``/``y_r``, 0-based on the r grid), its class
        column by name (``class``, ``type``, ``truth_type``, ``objc_type``,
        ``label`` ..., see `truth_labels`); a list without a class column is a
        star list.  ``mag_r`` from ``mag_r``/``r``/``psfMag_r`` ..., or
        22.5 - 2.5 log10 of the r entry of ``PSFFLUX``/``MODELFLUX`` (nmgy);
        NaN when absent.

    Returns
    -------
    astropy.table.Table
        ``ra, dec`` (NaN if absent), ``x, y`` (NaN if absent), ``label``
        (0 star, 1 galaxy, -1 unknown), ``mag_r``; ``meta['star_only']``.
    """
    from pathlib import Path

    from astropy.io import fits
    from astropy.table import Table

    from astrohvae.errors import InputError

    p = Path(path)
    if p.is_dir():
        from astrohvae.simulate import read_truth

        raw = read_truth(p)[0]
    elif not p.is_file():
        raise InputError(p, "no such file")
    else:
        try:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if p.suffix.lower() in (".fits", ".fit", ".fts") or p.name.lower().endswith((".fits.gz", ".fits.bz2")):
                    with fits.open(p) as hdul:
                        names = [h.name for h in hdul]
                        hdu = hdul["TRUTH"] if "TRUTH" in names else next(
                            (h for h in hdul if isinstance(h, (fits.BinTableHDU, fits.TableHDU))), None)
                        if hdu is None:
                            raise InputError(p, "no table HDU")
                        raw = Table.read(hdu)
                else:
                    raw = Table.read(p, format="ascii")
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - any unreadable list is bad input
            raise InputError(p, f"cannot read truth list ({type(exc).__name__}: {exc})".splitlines()[0]) from None
    n = len(raw)
    out = Table()
    ra, dec, x, y = _col(raw, _RA), _col(raw, _DEC), _col(raw, _X), _col(raw, _Y)
    if not ((ra and dec) or (x and y)):
        raise InputError(p, f"no sky (ra/dec) or pixel (x/y) position columns among {raw.colnames[:12]}")
    nan = np.full(n, np.nan)
    out["ra"] = np.asarray(raw[ra], float) if ra and dec else nan
    out["dec"] = np.asarray(raw[dec], float) if ra and dec else nan
    out["x"] = np.asarray(raw[x], float) if x and y else nan
    out["y"] = np.asarray(raw[y], float) if x and y else nan
    cls = _col(raw, _CLASS)
    if cls is None:
        out["label"] = np.zeros(n, np.int8)
    else:
        try:
            out["label"] = truth_labels(np.ma.filled(raw[cls], -99) if hasattr(raw[cls], "mask") else raw[cls])
        except ValueError as exc:
            raise InputError(p, f"column {cls}: {exc}") from None
    mag = _col(raw, _MAG)
    if mag is not None:
        out["mag_r"] = np.asarray(raw[mag], float)
    elif _col(raw, _FLUX) is not None and np.asarray(raw[_col(raw, _FLUX)]).ndim == 2:
        f = np.asarray(raw[_col(raw, _FLUX)], float)[:, 2]
        with np.errstate(invalid="ignore", divide="ignore"):
            out["mag_r"] = np.where(f > 0, 22.5 - 2.5 * np.log10(np.where(f > 0, f, 1)), np.nan)
    else:
        out["mag_r"] = nan
    known = out["label"] >= 0
    out.meta["star_only"] = bool(known.any() and (out["label"][known] == 0).all())
    out.meta["class_column"] = cls or ""
    return out


def match_catalog(cat_table, truth, radius=MATCH_RADIUS):
    """Index of the nearest catalogue source within ``radius`` arcsec of each truth object (-1: none).

    On the sky (ra/dec) when both sides have finite positions, else in pixels
    (x/y, ``radius`` / `astrohvae.PIXEL_SCALE` pixels).

    Returns
    -------
    idx : ndarray int (len(truth),), dist : ndarray float (arcsec)
    """
    from astrohvae import PIXEL_SCALE

    nt, nc = len(truth), len(cat_table)
    idx = np.full(nt, -1)
    dist = np.full(nt, np.inf)
    if nt == 0 or nc == 0:
        return idx, dist
    tra, tdec = np.asarray(truth["ra"], float), np.asarray(truth["dec"], float)
    cra, cdec = np.asarray(cat_table["ra"], float), np.asarray(cat_table["dec"], float)
    if np.isfinite(tra).any() and np.isfinite(cra).all():
        from astropy import units as u
        from astropy.coordinates import SkyCoord

        ok = np.isfinite(tra) & np.isfinite(tdec)
        c = SkyCoord(cra * u.deg, cdec * u.deg)
        j, sep, _ = SkyCoord(tra[ok] * u.deg, tdec[ok] * u.deg).match_to_catalog_sky(c)
        d = np.full(nt, np.inf)
        jj = np.full(nt, -1)
        d[ok], jj[ok] = sep.arcsec, j
    else:
        from scipy.spatial import cKDTree

        tx, ty = np.asarray(truth["x"], float), np.asarray(truth["y"], float)
        if not np.isfinite(tx).any():
            raise ValueError("truth has sky positions but the catalogue has no ra/dec (no WCS)")
        ok = np.isfinite(tx) & np.isfinite(ty)
        tree = cKDTree(np.column_stack([np.asarray(cat_table["x"], float), np.asarray(cat_table["y"], float)]))
        dd, j = tree.query(np.column_stack([tx[ok], ty[ok]]))
        d = np.full(nt, np.inf)
        jj = np.full(nt, -1)
        d[ok], jj[ok] = dd * PIXEL_SCALE, j
    hit = d <= radius
    idx[hit], dist[hit] = jj[hit], d[hit]
    return idx, dist


def evaluate_truth(catalog, truth, radius=MATCH_RADIUS, edges=TRUTH_MAG_EDGES):
    """The catalogue's classes against any truth list, by r-magnitude bin.

    Parameters
    ----------
    catalog : path
        An astrohvae catalogue.
    truth : path
        Any list `read_truth_list` reads.
    radius : float
        Match radius in arcsec (`MATCH_RADIUS`).
    edges : sequence of float
        r-magnitude bin edges.  The magnitude is the list's own (``mag_r``),
        else that of the matched catalogue source.

    Returns
    -------
    result : dict
        ``table`` (astropy Table, one row per bin then ``all``), ``star_only``
        (bool), ``y`` / ``p_galaxy`` (matched objects, for a ROC plot),
        ``n_truth``, ``n_matched``, ``radius``.

    Star lists (no galaxy in the list) give, per bin: ``n_star`` listed,
    ``matched``, ``labelled_star`` and ``star_recall`` = labelled_star /
    matched.  Two-class lists give the counts of both classes, star and
    galaxy completeness (recall) and purity among the matched objects, and
    the AUC of ``p_galaxy`` where both classes are present.
    """
    from astropy.table import Table

    from astrohvae.io.catalog import read_catalog

    cat = read_catalog(catalog).table
    tl = read_truth_list(truth)
    idx, _ = match_catalog(cat, tl, radius)
    hit = idx >= 0
    label = np.asarray(tl["label"], int)
    cls = np.asarray(cat["class"]).astype(str)
    pg = np.asarray(cat["p_galaxy"], float)
    pred = np.full(len(tl), -1)
    p = np.full(len(tl), np.nan)
    pred[hit] = (cls[idx[hit]] == "galaxy").astype(int)
    p[hit] = pg[idx[hit]]
    mag = np.asarray(tl["mag_r"], float).copy()
    if "mag_r" in cat.colnames:
        cmag = np.asarray(np.ma.filled(cat["mag_r"], np.nan), float)
        fill = ~np.isfinite(mag) & hit
        mag[fill] = cmag[idx[fill]]
    lo = (-np.inf,) + tuple(edges)
    hi = tuple(edges) + (np.inf,)
    bins = [(a, b, _bin_name(a, b)) for a, b in zip(lo, hi)] + [(-np.inf, np.inf, "all")]
    rows = []
    for a, b, name in bins:
        sel = ((mag >= a) & (mag < b)) if name != "all" else np.ones(len(tl), bool)
        rows.append(_truth_row(name, sel, label, hit, pred, p, tl.meta["star_only"]))
    table = Table(rows=[list(r.values()) for r in rows], names=list(rows[0]))
    ok = hit & (label >= 0)
    return {"table": table, "star_only": tl.meta["star_only"], "y": label[ok], "p_galaxy": p[ok],
            "n_truth": int(len(tl)), "n_matched": int(hit.sum()), "radius": float(radius)}


def _bin_name(a, b):
    if not np.isfinite(a):
        return f"r<{b:g}"
    if not np.isfinite(b):
        return f"r>{a:g}"
    return f"{a:g}<r<{b:g}"


def _truth_row(name, sel, label, hit, pred, p, star_only):
    def ratio(k, n):
        return float(k / n) if n else float("nan")

    s, g = sel & (label == 0), sel & (label == 1)
    sm, gm = s & hit, g & hit
    if star_only:
        ok = int((sm & (pred == 0)).sum())
        return {"bin": name, "n_star": int(s.sum()), "matched": int(sm.sum()), "labelled_star": ok,
                "star_recall": ratio(ok, int(sm.sum()))}
    ss, gg = int((sm & (pred == 0)).sum()), int((gm & (pred == 1)).sum())
    called_star = int(((sm | gm) & (pred == 0)).sum())
    called_gal = int(((sm | gm) & (pred == 1)).sum())
    auc = binary_metrics(label[sm | gm], p[sm | gm])["auc"] if (sm.any() and gm.any()) else float("nan")
    return {"bin": name, "n_star": int(s.sum()), "n_galaxy": int(g.sum()), "matched_star": int(sm.sum()),
            "matched_galaxy": int(gm.sum()), "star_completeness": ratio(ss, int(sm.sum())),
            "star_purity": ratio(ss, called_star), "galaxy_completeness": ratio(gg, int(gm.sum())),
            "galaxy_purity": ratio(gg, called_gal), "auc": float(auc)}


def format_truth_table(table):
    """Markdown of an `evaluate_truth` table: counts as integers, ratios to 3 decimals, '-' for NaN."""
    lines = ["| " + " | ".join(table.colnames) + " |", "|" + "---|" * len(table.colnames)]
    for row in table:
        cells = []
        for c in table.colnames:
            v = row[c]
            if isinstance(v, (float, np.floating)):
                cells.append("-" if not np.isfinite(v) else f"{v:.3f}")
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
