"""V+M and Vr+M: a VAE's latents, a manifold embedding, a two-component split."""

from __future__ import annotations

import numpy as np

from astrohvae.classify.base import Estimator
from astrohvae.classify.mixture import star_side

__all__ = ['ManifoldClassifier']

# ---------------------------------------------------------------------------
# V+M / Vr+M
# ---------------------------------------------------------------------------
class ManifoldClassifier(Estimator):
    """V+M / Vr+M: conv VAE latents -> 1-D Isomap -> threshold at the star fraction.

    Parameters
    ----------
    kl : {'standard', 'sc', 'dkl', 'aw', 'pw'}
        KL term of the VAE (``'standard'`` = V+M, the others = Vr+M).
    latent_dim : int
    star_fraction : float
        Prior star fraction: the threshold puts this share of the training
        stamps on the star side.
    n_neighbors : int
        Isomap neighbours; Isomap is fitted on at most ``max_manifold``
        training stamps.
    representation, crop, channels, epochs, batch_size, lr, center_weight,
    augment, device, random_state : as for `HierarchicalClassifier`
    prior : (m, s)
        The two-peak prior of the revised terms.
    beta : float
        Weight of the divergence.
        (defaults: the paper's whole-stamp ``'lupt'`` recipe).
    """

    def __init__(self, kl="standard", latent_dim=4, star_fraction=0.35, n_neighbors=12, max_manifold=1500,
                 representation="lupt", crop=None, channels=(16, 32, 64, 64), epochs=6, batch_size=128,
                 lr=2e-3, center_weight=0.0, augment=False, prior=(1.0, 0.5), beta=1.0, device="cpu",
                 random_state=0, verbose=False):
        self.kl = kl
        self.prior = tuple(prior)
        self.beta = beta
        self.latent_dim = latent_dim
        self.star_fraction = star_fraction
        self.n_neighbors = n_neighbors
        self.max_manifold = max_manifold
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

    @property
    def method(self):
        return "V+M" if self.kl == "standard" else f"Vr+M ({self.kl.upper()})"

    def _latent(self, stamps, batch_size=256):
        from astrohvae.classify.base import batched_apply, stamp_inputs
        dev = next(self.vae_.parameters()).device
        out = []
        for i in range(0, len(stamps.flux), batch_size):
            x = stamp_inputs(stamps[i : i + batch_size], self.representation, self.crop)
            out.append(batched_apply(lambda t: self.vae_.encode(t)[0], x, batch_size, dev)[0])
        return np.concatenate(out)

    def fit(self, stamps, y=None, checkpoint_dir=None):
        """Fit on unlabelled stamps (``y`` ignored); ``checkpoint_dir`` as in `HierarchicalClassifier.fit`."""

        from astrohvae.classify.base import (
            check_stamps,
            checkpoint_path,
            radial_weight,
            stamp_inputs,
            train_conv_vae,
        )
        from astrohvae.device import resolve_device

        check_stamps(stamps)
        seed = 0 if self.random_state is None else int(self.random_state)
        x = stamp_inputs(stamps, self.representation, self.crop)
        w = radial_weight(x.shape[-1], 4.0, self.center_weight)
        self.vae_, self.history_ = train_conv_vae(x, self.latent_dim, self.kl, self.channels, self.epochs,
                                                   self.batch_size, self.lr, seed, w, self.augment,
                                                   resolve_device(self.device), prior_m=self.prior[0],
                                                   prior_s=self.prior[1], beta=self.beta, verbose=self.verbose,
                                                   checkpoint=checkpoint_path(checkpoint_dir, "vae"))
        del x
        z = self._latent(stamps)
        z = np.nan_to_num(z)
        rng = np.random.default_rng(seed)
        idx = rng.permutation(len(z))[: self.max_manifold]
        self.scale_ = z[idx].std(axis=0) + 1e-6
        self.center_ = z[idx].mean(axis=0)
        self.manifold_z_ = ((z[idx] - self.center_) / self.scale_).astype(np.float32)
        self.iso_ = self._isomap().fit(self.manifold_z_)
        e = self.iso_.embedding_[:, 0]
        self.manifold_embedding_ = e.astype(np.float32)
        # orientation: which end is stars (more concentrated members), then the threshold
        thr0 = np.median(e)
        side, _ = star_side(stamps[idx], (e > thr0).astype(int))
        self.sign_ = 1.0 if side == 0 else -1.0  # stars at low sign*e
        es = self.sign_ * e
        self.threshold_ = float(np.quantile(es, self.star_fraction))
        self.width_ = float(es.std() * 0.1 + 1e-9)
        return self

    def _isomap(self):
        from sklearn.manifold import Isomap

        # the dense eigensolver is deterministic: `load_model` refits the
        # embedding on the saved training latents and gets the same one
        return Isomap(n_neighbors=min(self.n_neighbors, self.max_manifold - 1), n_components=1,
                      eigen_solver="dense")

    def _fitted_state(self):
        arrays = {"scale": self.scale_, "center": self.center_, "manifold_z": self.manifold_z_,
                  "manifold_embedding": self.manifold_embedding_}
        values = {"sign": float(self.sign_), "threshold": float(self.threshold_), "width": float(self.width_)}
        return {"vae": self.vae_}, arrays, values

    def _set_fitted_state(self, modules, arrays, values):
        self.vae_ = modules["vae"]
        self.scale_, self.center_ = arrays["scale"], arrays["center"]
        self.manifold_z_, self.manifold_embedding_ = arrays["manifold_z"], arrays["manifold_embedding"]
        self.iso_ = self._isomap().fit(self.manifold_z_)
        if float(np.dot(self.iso_.embedding_[:, 0], self.manifold_embedding_)) < 0:  # eigenvector sign
            self.iso_.embedding_ *= -1
            self.iso_.kernel_pca_.eigenvectors_ *= -1
        self.sign_, self.threshold_, self.width_ = values["sign"], values["threshold"], values["width"]

    def transform(self, stamps, batch_size=256):
        """dict ``z_vae`` (N, latent_dim), ``embedding`` (N,) (galaxy-positive) and ``z_hvae``.

        ``z_hvae`` (N, 1) is the embedding again, under the name of the
        catalogue's classifier-latent column.
        """
        z = np.nan_to_num(self._latent(stamps, batch_size))
        e = self.sign_ * self.iso_.transform((z - self.center_) / self.scale_)[:, 0]
        return {"z_vae": z, "embedding": e, "z_hvae": e[:, None].astype(np.float32)}

    def predict_proba(self, stamps, batch_size=256):
        e = self.transform(stamps, batch_size)["embedding"]
        return (1.0 / (1.0 + np.exp(-np.clip((e - self.threshold_) / self.width_, -50, 50)))).astype(np.float32)

    def predict(self, stamps, batch_size=256):
        return np.where(self.predict_proba(stamps, batch_size) >= 0.5, "galaxy", "star")
