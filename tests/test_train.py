"""Training loops: the loss falls, checkpoints resume exactly, early stopping, sources."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from astrohvae.errors import InputError  # noqa: E402
from astrohvae.models import ConvAE, ConvVAE, LatentVAE  # noqa: E402
from astrohvae.models.engine import ChunkedSource, apply_batches, make_source
from astrohvae.models.fitting import fit_ae, fit_latent_vae, fit_vae, get_divergence

torch.set_num_threads(1)
SMALL = dict(channels=(8, 16, 16), batch_size=32, progress=False, device="cpu")


def blobs(n, seed, size=32):
    """Gaussian blobs of two widths (``point``-like 1.2 px, ``extended`` 3.5 px) in 5 bands plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - size // 2
    width = np.where(rng.random(n) < 0.5, 1.2, 3.5)
    img = np.exp(-(xx**2 + yy**2)[None] / (2 * width[:, None, None] ** 2))
    x = img[:, None] * rng.uniform(0.5, 2.0, (n, 5, 1, 1)) + rng.normal(0, 0.05, (n, 5, size, size))
    return x.astype(np.float32), width


@pytest.fixture(scope="module")
def data():
    return blobs(256, 0), blobs(64, 1)


def test_ae_loss_falls(data):
    (x, _), (v, _) = data
    model, h = fit_ae(x, latent_dim=8, epochs=4, lr=3e-3, val=v, seed=0, **SMALL)
    assert isinstance(model, ConvAE) and not model.training
    assert h["epoch"] == [1, 2, 3, 4]
    assert h["train_loss"][-1] < 0.5 * h["train_loss"][0]
    assert h["val_loss"][-1] < h["val_loss"][0]
    assert h["best_epoch"] >= 1 and np.isfinite(h["best_loss"])


def test_resume_is_identical_to_uninterrupted_run(tmp_path, data):
    (x, _), (v, _) = data
    kw = dict(latent_dim=4, epochs=3, lr=2e-3, val=v, seed=7, augment=True, **SMALL)
    ref, h_ref = fit_ae(x, **kw)

    ck = tmp_path / "ck.pt"

    class Stop(Exception):
        pass

    def interrupt(epoch, history):
        if epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        fit_ae(x, checkpoint=ck, on_epoch_end=interrupt, **kw)
    assert ck.exists() and not list(tmp_path.glob(".*tmp"))
    seen = []
    res, h_res = fit_ae(x, checkpoint=ck, resume=True, on_epoch_end=lambda e, h: seen.append(e), **kw)
    assert seen == [3]  # only the missing epoch ran
    assert h_res["epoch"] == [1, 2, 3]
    assert h_res["train_loss"] == h_ref["train_loss"] and h_res["val_loss"] == h_ref["val_loss"]
    for (k, a), b in zip(ref.state_dict().items(), res.state_dict().values()):
        assert torch.equal(a, b), k


def test_resume_rejects_other_model(tmp_path, data):
    (x, _), _ = data
    ck = tmp_path / "ck.pt"
    fit_ae(x[:64], latent_dim=4, epochs=1, checkpoint=ck, **SMALL)
    with pytest.raises(InputError):
        fit_ae(x[:64], latent_dim=5, epochs=2, checkpoint=ck, resume=True, **SMALL)
    ck.write_bytes(b"garbage")
    with pytest.raises(InputError):
        fit_ae(x[:64], latent_dim=4, epochs=2, checkpoint=ck, resume=True, **SMALL)


def test_early_stopping_restores_best(data):
    (x, _), (v, _) = data
    torch.manual_seed(0)
    net = ConvAE(latent_dim=4, in_channels=5, size=32, channels=(8, 16, 16))
    states = {}

    def keep(epoch, history):
        states[epoch] = {k: t.clone() for k, t in net.state_dict().items()}

    # lr=0 leaves the weights alone (only BatchNorm statistics move) and min_delta=1
    # makes every later epoch "no improvement": stop after 1 + patience epochs, keep epoch 1
    model, h = fit_ae(x[:64], model=net, epochs=10, lr=0.0, val=v, patience=2, min_delta=1.0,
                      on_epoch_end=keep, **SMALL)
    assert h["stopped_early"] and h["epoch"] == [1, 2, 3] and h["best_epoch"] == 1
    assert any(not torch.equal(states[3][k], states[1][k]) for k in states[1])
    for k, t in model.state_dict().items():
        assert torch.equal(t, states[1][k]), k


def test_chunked_source_streams_every_row_once():
    x = np.arange(50, dtype=np.float32).reshape(50, 1) * np.ones((1, 3), np.float32)
    src = ChunkedSource.from_array(x, chunk_size=7, select=lambda a, b: np.arange(a, b) % 5 != 0)
    assert src.n == 40
    rows = np.concatenate(list(src.batches(np.random.default_rng(0), 8)))
    assert sorted(rows[:, 0]) == [i for i in range(50) if i % 5]
    sizes = [len(b) for b in src.batches(np.random.default_rng(1), 8)]
    assert sizes == [8] * 5
    # order differs between epochs, content does not
    r2 = np.concatenate(list(src.batches(np.random.default_rng(2), 8)))
    assert not np.array_equal(rows, r2)
    ordered = np.concatenate([a for _, a in src.ordered()])[:, 0]
    assert list(ordered) == [i for i in range(50) if i % 5]


def test_dask_array_input(data):
    da = pytest.importorskip("dask.array")
    (x, _), _ = data
    dx = da.from_array(x[:96], chunks=(40, 5, 32, 32))
    assert isinstance(make_source(dx), ChunkedSource)
    model, h = fit_ae(dx, latent_dim=4, epochs=1, **SMALL)
    z = apply_batches(model.encode, dx, batch_size=50, device="cpu")
    with torch.inference_mode():
        ref = model.encode(torch.from_numpy(x[:96])).numpy()
    np.testing.assert_allclose(z, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("div", ["standard", "sc", "dkl", "aw", "pw", "quad"])
def test_vae_every_divergence_trains(data, div):
    (x, _), _ = data
    model, h = fit_vae(x[:64], latent_dim=2, divergence=div, epochs=2, lr=1e-3, seed=0, **SMALL)
    assert isinstance(model, ConvVAE)
    assert np.isfinite(h["train_loss"]).all() and "train_div" in h and "train_recon" in h
    if div == "aw":
        assert model.bounded_mu == 2.0  # the default prior's m


def test_divergence_values():
    mu, lv = torch.zeros(3, 1), torch.zeros(3, 1)
    np.testing.assert_allclose(get_divergence("standard")(mu, lv).numpy(), 0.0, atol=1e-7)
    # at mu=+-m, sigma=s the two-peak KL is small and much smaller than at mu=0
    f = get_divergence("quad", (2.0, 0.5))
    at_peak = f(torch.full((1, 1), 2.0), torch.full((1, 1), 2 * np.log(0.5)))
    at_zero = f(torch.zeros(1, 1), torch.full((1, 1), 2 * np.log(0.5)))
    assert float(at_peak) < 0.8 and float(at_zero) > 3 * float(at_peak)
    with pytest.raises(ValueError):
        get_divergence("nope")
    # a general (asymmetric) mixture prior; symmetric weights reproduce the two-peak quadrature
    mix = get_divergence("mixture", dict(weights=[0.5, 0.5], means=[-2.0, 2.0], sigmas=[0.5, 0.5]))
    v = torch.tensor([[0.3], [2.0]]), torch.tensor([[0.0], [-1.0]])
    np.testing.assert_allclose(mix(*v).numpy(), f(*v).numpy(), rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError):
        get_divergence("mixture", (2.0, 0.5))


def test_pixel_weight_changes_the_loss(data):
    (x, _), _ = data
    w = np.zeros((32, 32), np.float32)
    w[12:20, 12:20] = 1.0
    _, h1 = fit_ae(x[:64], latent_dim=4, epochs=1, seed=0, **SMALL)
    _, h2 = fit_ae(x[:64], latent_dim=4, epochs=1, seed=0, pixel_weight=w, **SMALL)
    assert h1["train_loss"][0] != h2["train_loss"][0]
    with pytest.raises(ValueError):
        fit_ae(x[:64], epochs=1, pixel_weight=np.ones((8, 8)), **SMALL)


def test_latent_vae(data):
    z = np.random.default_rng(0).normal(size=(200, 30)).astype(np.float32) * 10
    lv, h = fit_latent_vae(z, latent_dim=2, divergence="sc", epochs=5, batch_size=64, progress=False,
                           device="cpu")
    assert isinstance(lv, LatentVAE) and h["train_loss"][-1] < h["train_loss"][0]


def test_onecycle_schedule(data):
    (x, _), _ = data
    _, flat = fit_ae(x[:128], latent_dim=4, epochs=2, lr=1e-2, **SMALL)
    _, cyc = fit_ae(x[:128], latent_dim=4, epochs=2, lr=1e-2, schedule="onecycle", **SMALL)
    # the one-cycle schedule starts at lr / 25: a different (finite) first epoch from the same seed
    assert np.isfinite(cyc["train_loss"]).all() and cyc["train_loss"][0] != flat["train_loss"][0]
    with pytest.raises(ValueError, match="schedule"):
        fit_ae(x[:64], latent_dim=4, epochs=1, schedule="linear", **SMALL)


# ----------------------------------------------------------------------------- store + CLI
@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    import astrohvae.simulate.field as sim
    import astrohvae.stamps.store as store_mod

    fields = [sim.simulate_field(seed, size=(256, 256)).field for seed in (11, 12, 13)]
    path = tmp_path_factory.mktemp("store") / "tiny.zarr"
    store_mod.build_store(fields, path, progress=False)
    st = store_mod.open_store(path)
    assert len(st) >= 60, f"simulated store too small ({len(st)} stamps)"
    return path


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    """Two 640x640 simulated fields: enough bright stars for the shipped recipe's stellar locus."""
    import astrohvae.simulate.field as sim
    import astrohvae.stamps.store as store_mod

    fields = [sim.simulate_field(seed, size=(640, 640)).field for seed in (31, 32)]
    path = tmp_path_factory.mktemp("store") / "small.zarr"
    store_mod.build_store(fields, path, progress=False)
    return path


def test_make_estimator_default_is_the_shipped_recipe():
    from astrohvae.classify.base import DEFAULT_WEIGHTS
    from astrohvae.classify.hierarchical import HierarchicalClassifier
    from astrohvae.classify.persist import load_model
    from astrohvae.pipeline.train import make_estimator

    est = make_estimator("avr", device="cpu")
    shipped = load_model(DEFAULT_WEIGHTS, device="cpu")
    mine, theirs = est.get_params(), shipped.get_params()
    for k in ("device", "verbose"):
        mine.pop(k), theirs.pop(k)
    assert type(est) is HierarchicalClassifier and mine == theirs
    with pytest.raises(ValueError, match="divergence"):
        make_estimator("avr", divergence="pw")
    with pytest.raises(ValueError, match="divergence"):
        make_estimator("vae-revised", divergence="standard")


def test_select_training_rows_keeps_bright_sources(tiny_store):
    from astrohvae.morphology.statistics import profile_features
    from astrohvae.stamps.store import open_store
    from astrohvae.pipeline.train import select_training_rows

    st = open_store(tiny_store)
    fields = np.asarray(st.meta["field"])
    rows = select_training_rows(st, per_field=20, seed=0)
    assert np.all(np.diff(rows) > 0)
    for f in np.unique(fields):
        assert np.count_nonzero(fields[rows] == f) == min(20, np.count_nonzero(fields == f))
    snr = profile_features(st[:])["snr"]
    for f in np.unique(fields):
        bright = np.flatnonzero((fields == f) & (snr >= 50))[:10]
        assert np.isin(bright, rows).all()
    assert len(select_training_rows(st, per_field=None, max_stamps=17, seed=1)) == 17


def test_train_cli_default_model_runs_and_hash_matches(small_store, tmp_path):
    """`astrohvae train STORE --out W` makes the classifier `run --weights W` uses; MODELSHA = printed hash."""
    from astropy.io import fits
    from astropy.table import Table
    from click.testing import CliRunner

    from astrohvae.classify.hierarchical import HierarchicalClassifier
    from astrohvae.classify.persist import load_model
    from astrohvae.cli import main
    from astrohvae.simulate.io import write_simulation
    from astrohvae.models.weights import weights_hash

    out = tmp_path / "w"
    res = CliRunner().invoke(main, ["train", str(small_store), "--out", str(out), "--epochs", "1",
                                    "--device", "cpu", "--quiet", "--plots"])
    assert res.exit_code == 0, res.output
    assert "A+Vr (avr)" in res.output
    printed = res.output.split("model sha256 ")[1].split()[0]
    assert printed == weights_hash(out)
    clf = load_model(out, device="cpu")
    assert type(clf) is HierarchicalClassifier and clf.ae_epochs == 1 and clf.vae_epochs == 40
    assert clf.training_["n"] >= 200 and len(clf.training_["fields"]) == 2
    for png in ("loss.png", "latent_hist.png"):
        assert (out / png).stat().st_size > 1000
    field = tmp_path / "f"
    write_simulation(field, seed=21, size=(512, 512))
    cat = tmp_path / "c.fits"
    res = CliRunner().invoke(main, ["run", str(field), "--out", str(cat), "--weights", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    with fits.open(cat) as h:
        assert h[0].header["MODELSHA"] == printed
        assert h[0].header["CLFMETH"] == "A+Vr"
        table = Table(h["CATALOG"].data)
    from astrohvae.evaluation.metrics import binary_metrics
    from astrohvae.simulate.io import read_truth
    from astrohvae.stamps.store import match_truth

    truth, _ = read_truth(field)
    ttype, tmag = match_truth(table, truth)
    sel = (ttype >= 0) & (tmag < 21)
    m = binary_metrics(ttype[sel].astype(int), np.asarray(table["p_galaxy"])[sel])
    # a model retrained from the CLI on two small fields separates the bright stars and galaxies
    assert sel.sum() >= 20 and m["auc"] >= 0.9, m


@pytest.mark.parametrize("model,extra,method", [
    ("vae-revised", ["--divergence", "pw"], "Vr+M (PW)"),
    ("vae", [], "V+M"),
    ("hvae", ["--divergence", "sc"], "A+Vr"),
])
def test_every_paper_classifier_trains_and_runs(tiny_store, tmp_path, model, extra, method):
    from click.testing import CliRunner

    from astrohvae.classify.persist import load_model
    from astrohvae.cli import main
    from astrohvae.io.readers import read_field
    from astrohvae.pipeline.field import process_field
    from astrohvae.simulate.io import write_simulation

    out = tmp_path / model
    res = CliRunner().invoke(main, ["train", str(tiny_store), "--model", model, *extra, "--out", str(out),
                                    "--epochs", "1", "--latent-epochs", "3", "--device", "cpu", "--quiet"])
    assert res.exit_code == 0, res.output
    clf = load_model(out, device="cpu")
    assert clf.method == method
    write_simulation(tmp_path / "f", seed=22, size=(256, 256))
    prod = process_field(read_field(tmp_path / "f"), clf)
    p = np.asarray(prod.table["p_galaxy"])
    assert len(p) > 10 and np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()
    # the saved model gives the same answers as the one in memory (round trip)
    clf2 = load_model(out, device="cpu")
    prod2 = process_field(read_field(tmp_path / "f"), clf2)
    np.testing.assert_allclose(np.asarray(prod2.table["p_galaxy"]), p, atol=1e-6)


def test_train_checkpoint_resumes_an_interrupted_training(tiny_store, tmp_path):
    """A fit with a checkpoint folder, interrupted after its AE, continues: the same weights as one
    uninterrupted fit, and the finished AE is not trained again; `train --checkpoint` writes there."""
    from click.testing import CliRunner

    from astrohvae.classify.hierarchical import HierarchicalClassifier
    from astrohvae.cli import main
    from astrohvae.stamps.store import open_store
    from astrohvae.pipeline.train import select_training_rows

    st = open_store(tiny_store)
    stamps = st[select_training_rows(st, max_stamps=120)]
    params = dict(ae_epochs=2, vae_epochs=3, device="cpu", random_state=0)
    ref = HierarchicalClassifier(**params).fit(stamps)

    class Interrupted(HierarchicalClassifier):
        def _fit_latent(self, *a, **k):
            raise KeyboardInterrupt

    ck = tmp_path / "ck"
    with pytest.raises(KeyboardInterrupt):
        Interrupted(**params).fit(stamps, checkpoint_dir=ck)
    assert (ck / "ae.pt").is_file() and not (ck / "latent-0.pt").exists()
    ae_written = (ck / "ae.pt").stat().st_mtime_ns
    again = HierarchicalClassifier(**params).fit(stamps, checkpoint_dir=ck)
    assert (ck / "ae.pt").stat().st_mtime_ns == ae_written  # the finished AE was not trained again
    assert (ck / "latent-0.pt").is_file()
    for k, v in ref.ae_.state_dict().items():
        np.testing.assert_allclose(again.ae_.state_dict()[k].numpy(), v.numpy(), atol=1e-6, err_msg=k)
    np.testing.assert_allclose(again.predict_proba(stamps), ref.predict_proba(stamps), atol=1e-5)

    out = tmp_path / "w"
    args = ["--epochs", "1", "--latent-epochs", "2", "--device", "cpu", "--quiet", "--max-stamps", "60"]
    res = CliRunner().invoke(main, ["train", str(tiny_store), "--out", str(out), "--checkpoint",
                                    str(tmp_path / "ck2"), *args])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "ck2" / "ae.pt").is_file() and (tmp_path / "ck2" / "latent-0.pt").is_file()
    # the checkpoint folder must not be the output or the store
    res = CliRunner().invoke(main, ["train", str(tiny_store), "--out", str(tmp_path / "x"), "--checkpoint",
                                    str(tiny_store), *args])
    assert res.exit_code == 2 and "checkpoint folder" in res.output


def test_feature_extractor_is_refused_by_run(tiny_store, tmp_path):
    from click.testing import CliRunner

    from astrohvae.cli import main
    from astrohvae.simulate.io import write_simulation

    out = tmp_path / "ae"
    res = CliRunner().invoke(main, ["train", str(tiny_store), "--model", "ae", "--out", str(out), "--epochs", "1",
                                    "--latent-dim", "4", "--device", "cpu", "--quiet"])
    assert res.exit_code == 0, res.output
    write_simulation(tmp_path / "f", seed=23, size=(128, 128))
    res = CliRunner().invoke(main, ["run", str(tmp_path / "f"), "--out", str(tmp_path / "c.fits"),
                                                    "--weights", str(out)])
    assert res.exit_code == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "feature extractor" in lines[0] and str(out) in lines[0]
    assert not (tmp_path / "c.fits").exists()


def test_train_cli_bad_input(tmp_path):
    from click.testing import CliRunner

    from astrohvae.cli import main

    res = CliRunner().invoke(main, ["train", str(tmp_path), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "error" in res.output.lower()
    assert not (tmp_path / "o").exists()


def test_non_finite_loss_is_reported(data):
    (x, _), _ = data
    bad = x[:64].copy()
    bad[3, 0, 5, 5] = np.nan
    with pytest.raises(FloatingPointError, match="loss"):
        fit_ae(bad, latent_dim=4, epochs=1, **SMALL)
