"""Baselines: the classical half-light radius cut and the supervised ceilings."""

from __future__ import annotations

import numpy as np

__all__ = ['SupervisedStatsCeiling', 'SupervisedCNNCeiling', 'ClassicalClassifier']

class ClassicalClassifier:
    """Half-light-radius star/galaxy separator (label-free threshold).

    ``predict_proba`` returns a monotone ``p_galaxy`` built from the ratio of
    each source's half-light radius to the stellar locus' (estimated on the
    stamps given to `fit`, see `astrohvae.morphology.psf.estimate_psf`): a logistic of
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
        from astrohvae.morphology.psf import stellar_locus
        from astrohvae.morphology.statistics import profile_features

        feat = profile_features(stamps)
        self.r_star_, _ = stellar_locus(feat["r_half"], feat["snr"], 50.0)
        return self

    def score_samples(self, stamps):
        from astrohvae.morphology.statistics import profile_features

        rh = profile_features(stamps)["r_half"]
        return np.nan_to_num(rh / self.r_star_ - 1.0, nan=0.0)

    def predict_proba(self, stamps):
        s = self.score_samples(stamps)
        return 1.0 / (1.0 + np.exp(-np.clip((s - self.margin) / self.width, -50, 50)))

    def predict(self, stamps):
        return np.where(self.predict_proba(stamps) >= 0.5, "galaxy", "star")


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
        from astrohvae.morphology.statistics import profile_features

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
    (`astrohvae.morphology.physical.physical_statistics`: morphology against the field's
    PSF / stellar locus and the four aperture colours) plus log S/N.  It says how much of the
    star/galaxy information these statistics hold at each magnitude; it is a
    bound for the unsupervised methods, not a method.
    """

    method = "supervised ceiling: gradient boosting on physical stats"

    def __init__(self, random_state=0):
        self.random_state = random_state

    def _x(self, stamps):
        from astrohvae.morphology.physical import physical_statistics
        from astrohvae.morphology.statistics import profile_features


        phys = physical_statistics(stamps, self.ref_)
        snr = profile_features(stamps)["snr"]
        return np.c_[phys, np.log10(np.clip(snr, 0.1, None))]

    def fit(self, stamps, y=None):
        from sklearn.ensemble import HistGradientBoostingClassifier

        from astrohvae.morphology.physical import physical_reference

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
        from astrohvae.morphology.statistics import profile_features
        from astrohvae.stamps.preprocess import clean_stamps, crop_window

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

        from astrohvae.models.engine import LabelledSource, fit_model

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
    from astrohvae.classify.features import LatentProbe
    from astrohvae.classify.hierarchical import HierarchicalClassifier
    from astrohvae.classify.manifold import ManifoldClassifier

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
