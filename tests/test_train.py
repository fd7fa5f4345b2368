"""Training loops: the loss falls, checkpoints resume exactly, early stopping, sources."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from astrohvae.errors import InputError  # noqa: E402
from astrohvae.models import ConvAE, ConvVAE, HierarchicalVAE, LatentVAE  # noqa: E402
from astrohvae.train import (  # noqa: E402
    ChunkedSource, apply_batches, fit_ae, fit_hvae, fit_latent_vae, fit_vae, get_divergence, make_source,
)

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


def test_latent_vae_and_hvae(data):
    (x, width), (v, _) = data
    z = np.random.default_rng(0).normal(size=(200, 30)).astype(np.float32) * 10
    lv, h = fit_latent_vae(z, latent_dim=2, divergence="sc", epochs=5, batch_size=64, progress=False,
                           device="cpu")
    assert isinstance(lv, LatentVAE) and h["train_loss"][-1] < h["train_loss"][0]
    model, hh = fit_hvae(x, ae_latent_dim=30, latent_dim=1, divergence="sc", epochs=3, latent_epochs=30,
                         val=v, seed=0, lr=3e-3, **SMALL)
    assert isinstance(model, HierarchicalVAE) and set(hh) == {"ae", "latent"}
    with torch.inference_mode():
        _, mu, _ = model.encode(torch.from_numpy(x))
    mu = mu[:, 0].numpy()
    # the 1-D latent orders the two blob widths (either sign): clearly separated medians
    narrow, wide = np.median(mu[width < 2]), np.median(mu[width > 2])
    spread = np.std(mu)
    assert abs(narrow - wide) > 1.0 * spread  # measured 1.86-1.99 std over seeds 0-4


# ----------------------------------------------------------------------------- store + CLI
@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    store_mod = pytest.importorskip("astrohvae.store", reason="astrohvae.store not available")
    sim = pytest.importorskip("astrohvae.simulate", reason="astrohvae.simulate not available")
    fields = [sim.simulate_field(seed, size=(256, 256)).field for seed in (11, 12, 13)]
    path = tmp_path_factory.mktemp("store") / "tiny.zarr"
    store_mod.build_store(fields, path, progress=False)
    st = store_mod.open_store(path)
    if len(st) < 20:
        pytest.skip(f"simulated store too small ({len(st)} stamps)")
    return path


def test_split_by_field():
    from astrohvae.train import split_by_field

    fields = np.repeat([f"f{i}" for i in range(7)], 10)
    split = split_by_field(fields, seed=0)
    for f in np.unique(fields):
        assert len(set(split[fields == f])) == 1  # a field never straddles splits
    assert sorted(np.unique(split)) == ["test", "train", "val"]
    assert (split == "train").sum() == 50
    # one big field and many small ones: val and test are filled with small fields up to ~1/7 each
    sizes = [700, 40, 40, 40, 40, 40, 40, 30, 30]
    fields = np.repeat([f"g{i}" for i in range(len(sizes))], sizes)
    for seed in range(5):
        split = split_by_field(fields, seed=seed)
        assert set(split[fields == "g0"]) == {"train"}
        for k in ("val", "test"):
            assert 0 < (split == k).sum() <= len(fields) / 7
    with pytest.warns(UserWarning, match="by stamp"):
        split2 = split_by_field(np.array(["a"] * 70), seed=0)
    assert (split2 == "val").sum() == 10 and (split2 == "test").sum() == 10


def test_train_cli_writes_weights_and_config(tiny_store, tmp_path):
    import json

    from click.testing import CliRunner

    from astrohvae.cli import main
    from astrohvae.weights import load_weights

    out = tmp_path / "hvae"
    res = CliRunner().invoke(main, ["train", str(tiny_store), "--model", "hvae", "--out", str(out), "--epochs", "1",
                                    "--latent-epochs", "3", "--batch-size", "16", "--device", "cpu", "--quiet",
                                    "--plots", "--representation", "lupt"])
    assert res.exit_code == 0, res.output
    assert "trained hvae" in res.output
    modules, cfg = load_weights(out)
    assert type(modules["model"]).__name__ == "HierarchicalVAE"
    assert cfg["representation"] == "lupt" and cfg["divergence"] == "sc" and cfg["model"] == "hvae"
    assert cfg["training"]["split"] == "by field 5:1:1"
    n = cfg["training"]["n"]
    assert n["train"] > 0 and n["val"] > 0 and n["test"] > 0
    assert set(cfg["training"]["fields"]["train"]).isdisjoint(cfg["training"]["fields"]["test"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"train_ae_loss", "val_ae_loss", "test_ae_loss", "test_latent_loss"} <= set(metrics)
    for png in ("loss.png", "latent_hist.png", "latent_scatter.png"):
        assert (out / png).stat().st_size > 1000
    assert not (tmp_path / "hvae.checkpoints").exists()


def test_train_cli_bad_input(tmp_path):
    from click.testing import CliRunner

    from astrohvae.cli import main

    pytest.importorskip("astrohvae.store", reason="astrohvae.store not available")
    res = CliRunner().invoke(main, ["train", str(tmp_path), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "error" in res.output.lower()
    assert not (tmp_path / "o").exists()


def test_train_from_store_streaming_matches_in_memory(tiny_store, tmp_path):
    """Streaming the store chunk by chunk trains on the same rows as loading it whole."""
    from astrohvae.train import train_from_store

    kw = dict(model="ae", epochs=1, batch_size=16, device="cpu", progress=False, latent_dim=4, max_stamps=60)
    a = train_from_store(tiny_store, tmp_path / "mem", **kw)
    b = train_from_store(tiny_store, tmp_path / "stream", in_memory_bytes=0, **kw)
    assert a["n"] == b["n"] and sum(a["n"].values()) == 60
    # different batch order, same data: losses of the same magnitude, all finite
    for k in ("train_loss", "val_loss", "test_loss"):
        assert np.isfinite(b["metrics"][k]) and 0.2 < b["metrics"][k] / a["metrics"][k] < 5


def test_train_from_store_guards_checkpoints(tiny_store, tmp_path):
    """A live lock or checkpoints made with other settings stop a run before it trains."""
    import json
    import os

    from astrohvae.train import train_from_store

    out = tmp_path / "m"
    ck = tmp_path / "m.checkpoints"
    ck.mkdir()
    (ck / "LOCK").write_text(str(os.getpid()))  # this very process: alive
    kw = dict(model="ae", epochs=1, batch_size=16, device="cpu", progress=False, latent_dim=4, max_stamps=40)
    with pytest.raises(InputError, match="another training run"):
        train_from_store(tiny_store, out, **kw)
    (ck / "LOCK").write_text("999999999")  # a dead process: stale, taken over
    (ck / "run.json").write_text(json.dumps({"seed": 123}))
    (ck / "ae.pt").write_bytes(b"x")
    with pytest.raises(InputError, match="other settings"):
        train_from_store(tiny_store, out, resume=True, **kw)
    assert not (ck / "LOCK").exists() and not out.exists()
    res = train_from_store(tiny_store, out, **kw)  # without --resume the old checkpoints are discarded
    assert res["n"]["train"] > 0 and out.is_dir() and not ck.exists()


def test_non_finite_loss_is_reported(data):
    (x, _), _ = data
    bad = x[:64].copy()
    bad[3, 0, 5, 5] = np.nan
    with pytest.raises(FloatingPointError, match="loss"):
        fit_ae(bad, latent_dim=4, epochs=1, **SMALL)
