"""Feature extractors: the AE alone (no classes) and a linear probe of latents."""

from __future__ import annotations

import numpy as np

from astrohvae.classify.base import Estimator

__all__ = ['AutoEncoderFeatures', 'LatentProbe']

# ---------------------------------------------------------------------------
# the plain AE: a feature extractor, not a classifier
# ---------------------------------------------------------------------------
class AutoEncoderFeatures(Estimator):
    """The paper's convolutional AE alone: 30 latents per stamp, no classes.

    ``transform(stamps)`` gives ``{'z_ae': (N, latent_dim)}``; it has no
    ``predict_proba``, so ``astrohvae run`` refuses it.  Parameters as for
    `HierarchicalClassifier` (defaults: the paper's whole-stamp ``'lupt'``
    recipe).
    """

    method = "AE (features)"

    def __init__(self, latent_dim=30, representation="lupt", crop=None, channels=(16, 32, 64, 64), epochs=6,
                 batch_size=128, lr=2e-3, center_weight=0.0, augment=False, device="cpu", random_state=0,
                 verbose=False):
        self.latent_dim = latent_dim
        self.representation = representation
        self.crop = crop
        self.channels = tuple(channels)
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.center_weight = center_weight
        self.augment = augment
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def fit(self, stamps, y=None, checkpoint_dir=None):
        """Fit on unlabelled stamps (``y`` ignored); ``checkpoint_dir`` as in `HierarchicalClassifier.fit`."""
        from astrohvae.classify.base import (
            check_stamps,
            checkpoint_path,
            radial_weight,
            stamp_inputs,
            train_ae,
        )
        from astrohvae.device import resolve_device

        check_stamps(stamps)
        x = stamp_inputs(stamps, self.representation, self.crop)
        w = radial_weight(x.shape[-1], 4.0, self.center_weight)
        self.ae_, self.history_ = train_ae(x, self.latent_dim, self.channels, self.epochs, self.batch_size, self.lr,
                                            0 if self.random_state is None else int(self.random_state), w,
                                            self.augment, resolve_device(self.device), verbose=self.verbose,
                                            checkpoint=checkpoint_path(checkpoint_dir, "ae"))
        return self

    def transform(self, stamps, batch_size=256):
        """dict ``z_ae`` (N, latent_dim)."""
        from astrohvae.classify.base import batched_apply, stamp_inputs
        dev = next(self.ae_.parameters()).device
        out = [np.zeros((0, self.latent_dim), np.float32)]
        for i in range(0, len(stamps.flux), batch_size):
            x = stamp_inputs(stamps[i : i + batch_size], self.representation, self.crop)
            out.append(batched_apply(self.ae_.encode, x, batch_size, dev)[0])
        return {"z_ae": np.concatenate(out)}

    def _fitted_state(self):
        return {"ae": self.ae_}, {}, {}

    def _set_fitted_state(self, modules, arrays, values):
        self.ae_ = modules["ae"]


# ---------------------------------------------------------------------------
# supervised probe
# ---------------------------------------------------------------------------
class LatentProbe:
    """Supervised probe: logistic regression (5-fold CV over C) on the 30 AE latents.

    ``fit(stamps, y)`` trains the AE without labels, then the regression with
    them (``y`` from ``stamps.meta['truth_type']`` when not given; unknown
    labels are dropped).  Not label-free: a measure of what the latents know.
    """

    method = "probe (supervised)"

    def __init__(self, representation="lupt", crop=None, ae_epochs=6, channels=(16, 32, 64, 64),
                 center_weight=0.0, augment=False, device="cpu", random_state=0, verbose=False):
        self.representation = representation
        self.crop = crop
        self.ae_epochs = ae_epochs
        self.channels = tuple(channels)
        self.center_weight = center_weight
        self.augment = augment
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def _z(self, stamps, batch_size=256):
        from astrohvae.classify.base import batched_apply, stamp_inputs
        dev = next(self.ae_.parameters()).device
        out = []
        for i in range(0, len(stamps.flux), batch_size):
            x = stamp_inputs(stamps[i : i + batch_size], self.representation, self.crop)
            out.append(batched_apply(self.ae_.encode, x, batch_size, dev)[0])
        return np.concatenate(out)

    def fit(self, stamps, y=None):
        from sklearn.linear_model import LogisticRegressionCV
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        from astrohvae.classify.base import radial_weight, stamp_inputs, train_ae
        from astrohvae.device import resolve_device

        if y is None:
            y = np.asarray(stamps.meta["truth_type"]).astype(int)
        y = np.asarray(y)
        seed = 0 if self.random_state is None else int(self.random_state)
        x = stamp_inputs(stamps, self.representation, self.crop)
        w = radial_weight(x.shape[-1], 4.0, self.center_weight)
        self.ae_, _ = train_ae(x, 30, self.channels, self.ae_epochs, 128, 2e-3, seed, w, self.augment,
                                resolve_device(self.device))
        del x
        z = self._z(stamps)
        ok = (y == 0) | (y == 1)
        import warnings

        self.lr_ = make_pipeline(StandardScaler(), LogisticRegressionCV(cv=5, max_iter=2000))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.lr_.fit(z[ok], y[ok])
        return self

    def transform(self, stamps, batch_size=256):
        return {"z_ae": self._z(stamps, batch_size)}

    def predict_proba(self, stamps, batch_size=256):
        return self.lr_.predict_proba(self._z(stamps, batch_size))[:, 1].astype(np.float32)

    def predict(self, stamps, batch_size=256):
        return np.where(self.predict_proba(stamps, batch_size) >= 0.5, "galaxy", "star")
