"""Shapes and behaviour of the torch modules in astrohvae.models."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from astrohvae.models import ConvAE, ConvVAE, HierarchicalVAE, LatentVAE  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def x():
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 5, 64, 64, generator=g)


def test_conv_ae_shapes(x):
    ae = ConvAE(latent_dim=30).eval()
    z = ae.encode(x)
    assert z.shape == (4, 30)
    assert ae.decode(z).shape == x.shape
    z2, xh = ae(x)
    assert torch.equal(z, z2) and xh.shape == x.shape


def test_conv_ae_other_geometry():
    ae = ConvAE(latent_dim=8, in_channels=3, size=32, channels=(8, 16)).eval()
    z, xh = ae(torch.zeros(2, 3, 32, 32))
    assert z.shape == (2, 8) and xh.shape == (2, 3, 32, 32)
    with pytest.raises(ValueError):
        ConvAE(size=60)


def test_conv_vae_shapes_and_sampling(x):
    vae = ConvVAE(latent_dim=2)
    vae.train()
    torch.manual_seed(1)
    mu, logvar, xh = vae(x)
    assert mu.shape == logvar.shape == (4, 2) and xh.shape == x.shape
    # training mode samples: two passes differ in the reconstruction; eval mode is deterministic
    vae.eval()
    a, b = vae(x)[2], vae(x)[2]
    assert torch.equal(a, b)
    assert torch.equal(vae.decode(vae.encode(x)[0]), a)
    assert bool((logvar >= -12).all() and (logvar <= 8).all())


def test_conv_vae_bounded_mu(x):
    vae = ConvVAE(latent_dim=1, bounded_mu=0.5).eval()
    with torch.no_grad():
        vae.encoder.fc.bias.fill_(100.0)  # push the raw mean far out
        mu, _ = vae.encode(x)
    assert bool((mu.abs() <= 0.5).all())
    assert float(mu.abs().max()) > 0.49


def test_latent_vae_shapes_and_normalisation():
    torch.manual_seed(0)
    z = torch.randn(64, 30) * 50 + 7  # badly scaled latents
    lv = LatentVAE(in_dim=30, latent_dim=2).train()
    mu, logvar, recon, target = lv(z)
    assert mu.shape == (64, 2) and logvar.shape == (64, 2) and recon.shape == (64, 30)
    # the reconstruction target is the batch-normalised input: mean 0, std 1 per feature
    assert torch.allclose(target.mean(0), torch.zeros(30), atol=1e-4)
    assert torch.allclose(target.std(0, unbiased=False), torch.ones(30), atol=1e-3)
    lv.eval()
    assert lv.encode(z)[0].shape == (64, 2)


def test_hierarchical_vae(x):
    ae, lv = ConvAE(latent_dim=30), LatentVAE(in_dim=30, latent_dim=1)
    h = HierarchicalVAE(ae, lv).eval()
    z, mu, logvar, recon = h(x)
    assert z.shape == (4, 30) and mu.shape == (4, 1) and logvar.shape == (4, 1) and recon.shape == (4, 30)
    z2, mu2, _ = h.encode(x)
    assert torch.equal(z, z2) and torch.equal(mu, mu2)
    assert torch.equal(z, ae.encode(x))
    with pytest.raises(ValueError):
        HierarchicalVAE(ConvAE(latent_dim=10), LatentVAE(in_dim=30))


def test_configs_rebuild_same_architecture():
    for m in (ConvAE(latent_dim=12), ConvVAE(latent_dim=3, bounded_mu=2.0), LatentVAE(latent_dim=2)):
        clone = type(m)(**m.get_config())
        assert [p.shape for p in clone.parameters()] == [p.shape for p in m.parameters()]


def test_encoder_cost_is_small():
    """The network is meant to be cheap: < 40 MFLOP per stamp for encoder+decoder."""
    from torch.utils.flop_counter import FlopCounterMode

    ae = ConvAE().eval()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        ae(torch.zeros(1, 5, 64, 64))
    total = fc.get_total_flops()
    assert 5e6 < total < 40e6
    assert np.isfinite(total)
