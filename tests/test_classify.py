"""Tests of astrohvae.classify: priors, label rule, estimators, persistence."""

import numpy as np
import pytest
import torch

from astrohvae.classify.base import DEFAULT_WEIGHTS
from astrohvae.classify.features import LatentProbe
from astrohvae.classify.hierarchical import HierarchicalClassifier
from astrohvae.classify.manifold import ManifoldClassifier
from astrohvae.classify.mixture import kl_mixture, mixture_posterior, star_side
from astrohvae.classify.persist import load_default_classifier
from astrohvae.evaluation.metrics import binary_metrics, labels_from_meta

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def train(make_toy_stamps):
    return make_toy_stamps(360, seed=10, mag_range=(16, 20.5))


@pytest.fixture(scope="module")
def test_set(make_toy_stamps):
    return make_toy_stamps(200, seed=11, mag_range=(16, 20.5))


@pytest.fixture(scope="module")
def fitted(train):
    return HierarchicalClassifier(ae_epochs=1, vae_epochs=15, random_state=0).fit(train)


def test_kl_mixture_matches_monte_carlo():
    torch.manual_seed(0)
    mu = torch.tensor([[-1.2], [0.3], [2.0]])
    logvar = torch.log(torch.tensor([[0.05], [0.5], [0.2]]))
    w, m, s = [0.3, 0.7], [-1.5, 1.0], [0.3, 1.0]
    kl = kl_mixture(mu, logvar, w, m, s).numpy()
    v = mu + torch.exp(0.5 * logvar) * torch.randn(3, 200000)
    logq = torch.distributions.Normal(mu, torch.exp(0.5 * logvar)).log_prob(v)
    comps = torch.stack([np.log(wk) + torch.distributions.Normal(mk, sk).log_prob(v) for wk, mk, sk in zip(w, m, s)])
    mc = (logq - torch.logsumexp(comps, 0)).mean(1).numpy()
    np.testing.assert_allclose(kl, mc, atol=0.02)
    assert np.all(kl >= -1e-4)


def test_mixture_posterior():
    w, m, s = [0.3, 0.7], [-1.5, 1.0], [0.3, 1.0]
    p = mixture_posterior(np.array([-1.5, 0.0, 1.0, 3.0]), np.full(4, 0.1), w, m, s)
    np.testing.assert_allclose(p.sum(1), 1)
    assert p[0, 0] > 0.9 and p[2, 1] > 0.9 and p[3, 1] > 0.99


def test_star_side_is_the_compact_group(train):
    y, _ = labels_from_meta(train.meta)
    side, stats = star_side(train, y)  # group 0 = true stars here
    assert side == 0 and stats["r_half"][0] < stats["r_half"][1]
    assert stats["concentration"][0] > stats["concentration"][1]
    side2, _ = star_side(train, 1 - y)
    assert side2 == 1


def test_hierarchical_api(fitted, test_set):
    p = fitted.predict_proba(test_set, batch_size=64)
    assert p.shape == (len(test_set),) and p.dtype == np.float32
    assert np.all((p >= 0) & (p <= 1))
    lab = fitted.predict(test_set)
    assert set(np.unique(lab)) <= {"star", "galaxy"}
    np.testing.assert_array_equal(lab == "galaxy", p >= 0.5)
    t = fitted.transform(test_set[:7])
    assert t["z_ae"].shape == (7, 30) and t["z_hvae"].shape == (7, 1) and t["z_hvae_sigma"].shape == (7, 1)
    assert np.all(t["z_hvae_sigma"] > 0)
    # batching does not change results
    np.testing.assert_allclose(fitted.predict_proba(test_set, batch_size=13), p, atol=1e-5)
    p2, t2 = fitted.predict_proba_transform(test_set)
    np.testing.assert_allclose(p2, p, atol=1e-6)
    assert t2["z_ae"].shape == (len(test_set), 30)
    empty = fitted.transform(test_set[:0])
    assert empty["z_ae"].shape == (0, 30)


def test_hierarchical_separates_toy_stars(fitted, test_set):
    y, _ = labels_from_meta(test_set.meta)
    m = binary_metrics(y, fitted.predict_proba(test_set))
    assert m["auc"] > 0.9, m


def test_labels_never_used(train, test_set):
    a = HierarchicalClassifier(ae_epochs=1, vae_epochs=5, random_state=1).fit(train)
    shuffled = train[np.arange(len(train))]
    shuffled.meta["truth_type"] = np.random.default_rng(0).permutation(np.asarray(shuffled.meta["truth_type"]))
    b = HierarchicalClassifier(ae_epochs=1, vae_epochs=5, random_state=1).fit(shuffled)
    np.testing.assert_allclose(a.predict_proba(test_set), b.predict_proba(test_set), atol=1e-5)


def test_save_load_roundtrip(fitted, test_set, tmp_path):
    fitted.save(tmp_path / "w")
    assert (tmp_path / "w" / "model.safetensors").is_file()
    c = HierarchicalClassifier.load(tmp_path / "w", device="cpu")
    np.testing.assert_allclose(c.predict_proba(test_set), fitted.predict_proba(test_set), atol=1e-5)
    assert isinstance(c.weights_hash, str) and len(c.weights_hash) >= 8
    assert c.method == "A+Vr"


def test_load_bad_folder(tmp_path):
    from astrohvae.errors import InputError

    with pytest.raises(InputError):
        HierarchicalClassifier.load(tmp_path)


@pytest.mark.skipif(not (DEFAULT_WEIGHTS / "config.json").is_file(), reason="default weights not shipped yet")
def test_default_classifier(test_set):
    clf = load_default_classifier("cpu")
    p = clf.predict_proba(test_set)
    assert p.shape == (len(test_set),) and np.isfinite(p).all()


def test_manifold_and_probe(train, test_set):
    y, _ = labels_from_meta(test_set.meta)
    mc = ManifoldClassifier(kl="standard", epochs=1, channels=(8, 8, 16, 16), crop=32, random_state=0).fit(train)
    p = mc.predict_proba(test_set)
    assert p.shape == (len(test_set),) and np.all((p >= 0) & (p <= 1))
    # the threshold puts the assumed star fraction on the star side of the training set
    frac = (mc.predict(train) == "star").mean()
    assert abs(frac - mc.star_fraction) < 0.1
    pr = LatentProbe(ae_epochs=1, channels=(8, 8, 16, 16), crop=32).fit(train)
    assert binary_metrics(y, pr.predict_proba(test_set))["auc"] > 0.7


def test_stellar_locus_is_the_compact_peak_not_the_mode():
    from astrohvae.morphology.psf import stellar_locus

    rng = np.random.default_rng(0)
    stars = np.exp(rng.normal(np.log(1.3), 0.02, 15))  # good seeing: few bright stars
    gals = np.exp(rng.normal(np.log(2.1), 0.03, 40))  # a denser galaxy clump at larger radii
    r_star, _ = stellar_locus(np.r_[stars, gals], np.full(55, 100.0), 50.0)
    assert abs(r_star - 1.3) < 0.05


def test_saturated_flat_core():
    from types import SimpleNamespace

    from astrohvae.morphology.psf import saturated

    yy, xx = np.mgrid[:64, :64]
    star = np.exp(-((yy - 32) ** 2 + (xx - 32) ** 2) / (2 * 1.5**2)) * 1000.0
    flux = np.repeat(np.stack([star, np.minimum(star, 300.0)])[:, None], 5, axis=1).astype(np.float32)
    st = SimpleNamespace(flux=flux, mask=np.zeros((2, 64, 64), np.uint8), sky_sigma=np.ones((2, 5), np.float32))
    assert saturated(st).tolist() == [False, True]


def test_band_saturated_hollow_core_in_some_bands_only():
    """A star whose g, r, i cores were interpolated over (SDSS saturation) is flagged; an
    unsaturated star, a galaxy extended in every band and a faint noisy source are not."""
    from types import SimpleNamespace

    from astrohvae.morphology.psf import band_saturated

    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[:64, :64]
    r2 = (yy - 32) ** 2 + (xx - 32) ** 2
    psf = np.exp(-r2 / (2 * 1.4**2))
    psf /= psf.sum()
    gal = np.exp(-np.sqrt(r2) / 2.5)
    gal /= gal.sum()
    hollow = psf.copy()
    core = r2 <= 4
    hollow[core] = psf[~core & (r2 <= 9)].mean() * 0.8  # a low plateau where the core was
    stamps = [
        np.stack([psf] * 5) * 5e4,                                      # bright star
        np.stack([psf, hollow, hollow, hollow, psf]) * 5e4,             # u, z fine; g, r, i saturated
        np.stack([gal] * 5) * 5e4,                                      # bright galaxy
        np.stack([psf, hollow, hollow, hollow, psf]) * 20 + rng.normal(0, 1, (5, 64, 64)),  # faint
    ]
    flux = np.stack(stamps).astype(np.float32)
    st = SimpleNamespace(flux=flux, mask=np.zeros((4, 64, 64), np.uint8), sky_sigma=np.ones((4, 5), np.float32))
    assert band_saturated(st, np.stack([psf] * 5)).tolist() == [False, True, False, False]


def test_lazy_chunked_stamps_give_the_same_catalogue_values(test_set, monkeypatch):
    """A zarr/dask-backed StampSet read chunk by chunk scores exactly as the in-memory one."""
    import dask.array as da

    import astrohvae.morphology.statistics as psf
    from astrohvae.morphology.psf import saturated
    from astrohvae.stamps.cutouts import StampSet

    clf = load_default_classifier("cpu")
    want_p, want = clf.predict_proba_transform(test_set, batch_size=32)
    monkeypatch.setattr(psf, "CHUNK", 64)  # 200 stamps: four chunks, the last partial
    lazy = StampSet(da.from_array(test_set.flux, chunks=(50, 5, 64, 64)), test_set.mask, test_set.sky_sigma,
                    test_set.meta)
    got_p, got = clf.predict_proba_transform(lazy, batch_size=32)
    np.testing.assert_allclose(got_p, want_p, atol=1e-6)
    for k in ("z_ae", "z_hvae", "z_hvae_sigma"):
        np.testing.assert_allclose(got[k], want[k], atol=1e-5)
    # several statistics in one pass = each on its own
    f, sat = psf.chunked_statistics(lazy, psf.profile_features, saturated)
    direct = psf.profile_features(test_set)
    np.testing.assert_allclose(f["r_half"], direct["r_half"], rtol=1e-6)
    np.testing.assert_array_equal(sat, saturated(test_set))
