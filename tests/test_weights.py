"""Weights on disk: round trip, hashing, and refusal of corrupt or foreign files."""

import json
import pickle

import pytest

torch = pytest.importorskip("torch")

from astrohvae.errors import InputError  # noqa: E402
from astrohvae.models import ConvAE, ConvVAE, HierarchicalVAE, LatentVAE  # noqa: E402
from astrohvae.models.weights import CONFIG_FILE, WEIGHTS_FILE, load_weights, save_weights, weights_hash  # noqa: E402

torch.set_num_threads(1)


def _trained_like_hvae():
    """An HVAE with non-trivial BatchNorm statistics (as after training)."""
    torch.manual_seed(0)
    h = HierarchicalVAE(ConvAE(latent_dim=30), LatentVAE(in_dim=30, latent_dim=2))
    h.train()
    with torch.no_grad():
        for _ in range(2):
            h(torch.randn(8, 5, 64, 64) * 3 + 1)
    return h.eval()


@pytest.fixture
def saved(tmp_path):
    h = _trained_like_hvae()
    d = save_weights(tmp_path / "w", {"model": h}, {"representation": "lupt", "divergence": "sc",
                                                     "prior": [2.0, 0.5], "metrics": {"val_loss": 0.1}})
    return h, d


def test_round_trip_bit_for_bit(saved):
    h, d = saved
    modules, cfg = load_weights(d)
    h2 = modules["model"]
    assert isinstance(h2, HierarchicalVAE) and not h2.training
    x = torch.randn(3, 5, 64, 64)
    with torch.inference_mode():
        for a, b in zip(h(x), h2(x)):
            assert torch.equal(a, b)
    assert cfg["representation"] == "lupt" and cfg["prior"] == [2.0, 0.5]
    assert cfg["modules"]["model"]["class"] == "HierarchicalVAE"
    assert cfg["format"] == "astrohvae-weights" and "date" in cfg and "astrohvae_version" in cfg


def test_several_modules_and_hash(tmp_path):
    torch.manual_seed(1)
    mods = {"ae": ConvAE(latent_dim=8), "vae": ConvVAE(latent_dim=2, bounded_mu=3.0)}
    d = save_weights(tmp_path / "w", mods, {})
    out, cfg = load_weights(d, device="auto")
    assert set(out) == {"ae", "vae"} and out["vae"].bounded_mu == 3.0
    h1 = weights_hash(d)
    import hashlib

    assert len(h1) == 64 and h1 == hashlib.sha256((d / CONFIG_FILE).read_bytes()).hexdigest()
    assert cfg["tensors_sha256"] == hashlib.sha256((d / WEIGHTS_FILE).read_bytes()).hexdigest()
    with torch.no_grad():
        mods["ae"].decoder.fc.bias.add_(1.0)
    save_weights(tmp_path / "w", mods, {})  # overwrite in place
    assert weights_hash(d) != h1


def test_reserved_and_unregistered(tmp_path):
    with pytest.raises(ValueError):
        save_weights(tmp_path / "a", {"m": ConvAE()}, {"modules": 1})
    with pytest.raises(ValueError):
        save_weights(tmp_path / "b", {"m": torch.nn.Linear(2, 2)}, {})
    assert not (tmp_path / "b").exists()


def test_pickle_named_safetensors(saved):
    _, d = saved
    (d / WEIGHTS_FILE).write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(InputError, match="safetensors"):
        load_weights(d)


def test_random_bytes_and_truncation(saved):
    _, d = saved
    data = (d / WEIGHTS_FILE).read_bytes()
    (d / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError):
        load_weights(d)
    (d / WEIGHTS_FILE).write_bytes(bytes(range(256)) * 8)
    with pytest.raises(InputError):
        load_weights(d)


def test_sha_mismatch_detected(saved):
    """Valid safetensors that do not belong to the config (e.g. swapped files)."""
    _, d = saved
    m = ConvAE(latent_dim=30)
    save_weights(d.parent / "third", {"model": m}, {})
    (d / WEIGHTS_FILE).write_bytes((d.parent / "third" / WEIGHTS_FILE).read_bytes())
    with pytest.raises(InputError, match="sha256"):
        load_weights(d)


def _edit_config(d, fn):
    cfg = json.loads((d / CONFIG_FILE).read_text())
    fn(cfg)
    (d / CONFIG_FILE).write_text(json.dumps(cfg))


def test_unknown_architecture(saved):
    _, d = saved
    _edit_config(d, lambda c: c["modules"]["model"].update({"class": "os.system"}))
    with pytest.raises(InputError, match="unknown architecture"):
        load_weights(d)


def test_bad_kwargs_and_shape_mismatch(saved):
    _, d = saved
    _edit_config(d, lambda c: c["modules"]["model"]["kwargs"]["ae"]["kwargs"].update({"bogus": 1}))
    with pytest.raises(InputError, match="architecture parameters"):
        load_weights(d)
    _edit_config(d, lambda c: (c["modules"]["model"]["kwargs"]["ae"]["kwargs"].pop("bogus"),
                               c["modules"]["model"]["kwargs"]["ae"]["kwargs"].update({"channels": [8, 32, 64, 64]})))
    with pytest.raises(InputError, match="shape"):
        load_weights(d)


def test_missing_and_unexpected_tensors(tmp_path):
    from safetensors.torch import save_file

    d = save_weights(tmp_path / "w", {"model": LatentVAE(latent_dim=1)}, {})
    from safetensors.torch import load_file

    t = load_file(str(d / WEIGHTS_FILE))
    t2 = dict(t)
    t2.pop("model.head.weight")
    save_file(t2, str(d / WEIGHTS_FILE))
    _edit_config(d, lambda c: c.pop("tensors_sha256"))
    with pytest.raises(InputError, match="missing tensor"):
        load_weights(d)
    t3 = dict(t)
    t3["model.extra"] = torch.zeros(2)
    save_file(t3, str(d / WEIGHTS_FILE))
    with pytest.raises(InputError, match="unexpected"):
        load_weights(d)
    t4 = dict(t)
    t4["model.head.weight"] = torch.full_like(t["model.head.weight"], float("nan"))
    save_file(t4, str(d / WEIGHTS_FILE))
    with pytest.raises(InputError, match="non-finite"):
        load_weights(d)


def test_missing_and_foreign_config(tmp_path, saved):
    with pytest.raises(InputError, match="no such"):
        load_weights(tmp_path / "nowhere")
    _, d = saved
    (d / CONFIG_FILE).write_text("{not json")
    with pytest.raises(InputError, match="JSON"):
        load_weights(d)
    (d / CONFIG_FILE).write_text(json.dumps({"hello": 1}))
    with pytest.raises(InputError, match="format"):
        load_weights(d)
    (d / CONFIG_FILE).unlink()
    with pytest.raises(InputError, match="missing"):
        load_weights(d)
