"""Tests of astrohvae.models.priors: every closed form against numerical integration.

Grid (the region the encoder lives in): mu in [-5, 5], sigma in [0.05, 3],
m in [0.5, 3], s in [0.2, 2].  Measured figures (float64; also printed by
``benchmarks/divergences.py``):

* kl_quad vs scipy.integrate.quad: max abs ~1e-10 (asserted < 1e-6).
* kl_mixture_quad vs kl_quad (equal weights) ~1e-7, vs scipy (asymmetric) ~1e-8
  (asserted < 1e-6).
* l2_distance_sq vs scipy: ~1e-12 (asserted < 1e-6).
* kl_sc >= kl_quad everywhere (all variants).
* kl_dkl(erfc='exact'): 0 <= dkl - kl <= log 2 (theory; measured max 0.688).
  kl_dkl(erfc='tanh'): within [-c, log 2 + c], c = 0.0214 m |mu| / s^2
  (|erfc(x) - 1 + tanh(1.19 x)| <= 0.0213; measured max abs 7.5 at mu=5,
  m=3, s=0.2).  remainder=True: |err| < 0.14 (measured 0.13).
"""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from astrohvae.models import priors as P

torch.set_num_threads(1)
LOG2 = math.log(2.0)

MUS = [-5.0, -2.0, -0.5, 0.0, 1.0, 3.0, 5.0]
SIGMAS = [0.05, 0.3, 1.0, 3.0]
MS = [0.5, 1.5, 3.0]
SS = [0.2, 0.7, 2.0]


def _grid(mus=MUS, sigmas=SIGMAS, ms=MS, ss=SS):
    g = np.meshgrid(mus, sigmas, ms, ss, indexing="ij")
    return [torch.tensor(a.ravel(), dtype=torch.float64) for a in g]


def _dense_grid():
    return _grid(np.linspace(-5, 5, 21), np.geomspace(0.05, 3, 8),
                 np.linspace(0.5, 3, 4), np.geomspace(0.2, 2, 5))


def _col(x):
    return x[:, None]


def _ref_mixture_kl(mu, sig, w, mk, sk, kinks):
    """KL(N(mu, sig^2) || mixture) by scipy.integrate.quad in z = (x - mu)/sig."""
    lw = [math.log(wi) - math.log(si) - 0.5 * math.log(2 * math.pi) for wi, si in zip(w, sk)]

    def f(z):
        x = mu + sig * z
        ls = [lw[k] - 0.5 * ((x - mk[k]) / sk[k]) ** 2 for k in range(len(w))]
        top = max(ls)
        return math.exp(-0.5 * z * z) * (top + math.log(sum(math.exp(v - top) for v in ls)))

    pts = [(r - mu) / sig for r in kinks]
    pts = [p for p in pts if abs(p) < 13] or None
    v, _ = quad(f, -13, 13, points=pts, epsabs=1e-13, epsrel=1e-13, limit=400)
    return -0.5 * math.log(2 * math.pi * math.e * sig ** 2) - v / math.sqrt(2 * math.pi)


def _ref_sym(mu, sig, m, s):
    return _ref_mixture_kl(mu, sig, [0.5, 0.5], [-m, m], [s, s], [0.0])


def _report(name, value, ref):
    err = (value - ref).abs()
    rel = err / ref.abs().clamp(min=1e-12)
    print(f"{name}: max abs {err.max().item():.3g}, max rel {rel.max().item():.3g}")
    return err


# ------------------------------------------------------------------ reference quadrature
def test_kl_quad_vs_scipy():
    M, S, MM, SS_ = _grid()
    ref = torch.tensor([_ref_sym(*map(float, a)) for a in zip(M, S, MM, SS_)], dtype=torch.float64)
    val = P.kl_quad(_col(M), _col(torch.log(S ** 2)), _col(MM), _col(SS_))
    err = _report("kl_quad vs scipy", val, ref)
    assert err.max() < 1e-6
    assert (ref > -1e-12).all()


def test_kl_quad_n_points_converged_and_gh_regime():
    M, S, MM, SS_ = _dense_grid()
    lv = _col(torch.log(S ** 2))
    a = P.kl_quad(_col(M), lv, _col(MM), _col(SS_), n_points=32)
    b = P.kl_quad(_col(M), lv, _col(MM), _col(SS_), n_points=96)
    assert (a - b).abs().max() < 1e-6


def test_kl_mixture_equal_weights_is_kl_quad():
    M, S, MM, SS_ = _dense_grid()
    lv = _col(torch.log(S ** 2))
    ref = P.kl_quad(_col(M), lv, _col(MM), _col(SS_))
    val = P.kl_mixture_quad(_col(M), lv, torch.tensor([0.5, 0.5], dtype=torch.float64),
                            torch.stack([-MM, MM], -1)[:, None, :],
                            torch.stack([SS_, SS_], -1)[:, None, :])
    err = _report("kl_mixture_quad vs kl_quad", val, ref)
    assert err.max() < 1e-6


@pytest.mark.parametrize("w, mk, sk", [
    ([0.3, 0.7], [-1.5, 1.0], [0.3, 1.0]),       # narrow star peak, 30 %
    ([0.2, 0.5, 0.3], [-2.0, 0.5, 2.5], [0.1, 0.8, 0.4]),
])
def test_kl_mixture_asymmetric_vs_scipy(w, mk, sk):
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    with torch.no_grad():
        kinks = P._mixture_crossings(torch.log(t(w)), t(mk), t(sk))
    kinks = [float(k) for k in kinks if math.isfinite(float(k))]
    mus = np.linspace(-5, 5, 11)
    sig = np.geomspace(0.05, 3, 6)
    Mg, Sg = [a.ravel() for a in np.meshgrid(mus, sig, indexing="ij")]
    ref = torch.tensor([_ref_mixture_kl(a, b, w, mk, sk, kinks) for a, b in zip(Mg, Sg)],
                       dtype=torch.float64)
    val = P.kl_mixture_quad(t(Mg)[:, None], t(np.log(Sg ** 2))[:, None], t(w), t(mk), t(sk))
    err = _report(f"kl_mixture_quad K={len(w)} vs scipy", val, ref)
    assert err.max() < 1e-6
    gh = P.kl_mixture_quad(t(Mg)[:, None], t(np.log(Sg ** 2))[:, None], t(w), t(mk), t(sk),
                           method="gauss-hermite", n_points=64)
    narrow = torch.tensor(Sg) < 0.1
    assert (gh - ref)[narrow].abs().max() < 1e-6      # plain GH: fine only for narrow P
    assert torch.isfinite(gh).all()


def test_kl_mixture_gradients_match_finite_differences():
    t = lambda v: torch.tensor(v, dtype=torch.float64, requires_grad=True)  # noqa: E731
    mu, lv = t([[-0.7, 2.0]]), t([[0.5, -2.0]])
    w, mk, sk = t([0.3, 0.7]), t([-1.5, 1.0]), t([0.3, 1.0])
    assert torch.autograd.gradcheck(
        lambda a, b, c, d, e: P.kl_mixture_quad(a, b, c, d, e), (mu, lv, w, mk, sk),
        eps=1e-6, atol=1e-5)


def test_kl_standard():
    mu = torch.tensor([[0.0, 1.0], [-2.0, 0.5]], dtype=torch.float64)
    lv = torch.tensor([[0.0, -1.0], [1.0, 0.3]], dtype=torch.float64)
    expect = 0.5 * (mu ** 2 + lv.exp() - lv - 1).sum(-1)
    assert torch.allclose(P.kl_standard(mu, lv), expect)
    one = torch.tensor([1.0], dtype=torch.float64)
    via_quad = P.kl_mixture_quad(mu, lv, one, 0 * one, one)
    assert torch.allclose(P.kl_standard(mu, lv), via_quad, atol=1e-9)
    assert P.kl_standard(torch.zeros(3), torch.zeros(3)).item() == 0.0


# ------------------------------------------------------------------ SC bound
def test_kl_sc_is_upper_bound():
    M, S, MM, SS_ = _dense_grid()
    args = (_col(M), _col(torch.log(S ** 2)), _col(MM), _col(SS_))
    ref = P.kl_quad(*args)
    for variant in ("convex", "nearest", "min"):
        b = P.kl_sc(*args, variant=variant)
        over = b - ref
        print(f"kl_sc[{variant}] overshoot: min {over.min().item():.3g} max {over.max().item():.3g}")
        assert (over > -1e-9).all(), variant
    # convex bound = mean of the two component KLs
    sig2, m, s = S ** 2, MM, SS_
    kl_pm = [torch.log(s / S) + (sig2 + (M - c) ** 2) / (2 * s ** 2) - 0.5 for c in (-m, m)]
    assert torch.allclose(P.kl_sc(*args), 0.5 * (kl_pm[0] + kl_pm[1]))
    assert (P.kl_sc(*args, variant="min") <= P.kl_sc(*args) + 1e-12).all()
    with pytest.raises(ValueError):
        P.kl_sc(*args, variant="nope")


def test_kl_sc_printed_formula_is_convex_bound_at_s1():
    # printed: -1/2 log2 (s^2 + log sig^2 - (mu-m)^2/2 - (mu+m)^2/2 - sig^2);
    # dropping "log 2" and reading the leading s^2 as 1 (s = 1) it is the convex bound
    mu, lv, m = torch.tensor([[0.3]]), torch.tensor([[-0.4]]), 1.7
    printed = -0.5 * (1 + lv - 0.5 * (mu - m) ** 2 - 0.5 * (mu + m) ** 2 - lv.exp())
    assert torch.allclose(P.kl_sc(mu, lv, m, 1.0), printed.sum(-1), atol=1e-6)


# ------------------------------------------------------------------ DKL
def test_dkl_gamma_closed_form_vs_scipy():
    # E[max(0, -a X)], X ~ N(mu, sig^2), a = 2m/s^2: the closed form kl_dkl uses
    for mu, sig in [(-2.0, 0.5), (0.0, 0.05), (0.7, 1.3), (3.0, 3.0)]:
        val, _ = quad(lambda x: max(0.0, -x) * math.exp(-0.5 * ((x - mu) / sig) ** 2)
                      / (sig * math.sqrt(2 * math.pi)), mu - 15 * sig, mu + 15 * sig,
                      points=[0.0] if abs(mu) < 15 * sig else None, epsabs=1e-13)
        z = mu / (math.sqrt(2) * sig)
        closed = sig / math.sqrt(2 * math.pi) * math.exp(-z * z) - 0.5 * mu * math.erfc(z)
        assert abs(val - closed) < 1e-10


def test_kl_dkl_errors_vs_quad():
    M, S, MM, SS_ = _dense_grid()
    args = (_col(M), _col(torch.log(S ** 2)), _col(MM), _col(SS_))
    ref = P.kl_quad(*args)
    exact = P.kl_dkl(*args, erfc="exact")
    d = exact - ref
    _report("kl_dkl[exact erfc]", exact, ref)
    assert (d > -1e-9).all() and (d < LOG2 + 1e-9).all()
    tanh = P.kl_dkl(*args, erfc="tanh")
    _report("kl_dkl[tanh]", tanh, ref)
    c = 0.0214 * MM * M.abs() / SS_ ** 2
    d = tanh - ref
    assert (d > -c - 1e-9).all() and (d < LOG2 + c + 1e-9).all()
    rem = P.kl_dkl(*args, erfc="exact", remainder=True)
    assert (_report("kl_dkl[exact, remainder]", rem, ref) < 0.14).all()
    # exact as |mu|/sigma -> inf; worst (-> log 2) at mu = 0, small sigma m / s^2
    # (error = E[softplus(-|Y|)] ~ exp(-2 m |mu| / s^2) when sigma m / s^2 is small)
    mu4, lv4 = torch.tensor([[4.0]], dtype=torch.float64), torch.tensor([[2 * math.log(0.1)]])
    far = P.kl_dkl(mu4, lv4, 3.0, 0.5, erfc="exact") - P.kl_quad(mu4, lv4, 3.0, 0.5)
    assert far.abs().item() < 1e-9
    near = P.kl_dkl(mu4, lv4, 1.0, 1.0, erfc="exact") - P.kl_quad(mu4, lv4, 1.0, 1.0)
    assert abs(near.item() - math.log1p(math.exp(-8.0))) < 2e-5
    worst = (P.kl_dkl(torch.zeros(1, 1), torch.full((1, 1), -12.0), 1.0, 1.0, erfc="exact")
             - P.kl_quad(torch.zeros(1, 1), torch.full((1, 1), -12.0), 1.0, 1.0))
    assert abs(worst.item() - LOG2) < 1e-2
    with pytest.raises(ValueError):
        P.kl_dkl(*args, erfc="nope")


# ------------------------------------------------------------------ PW, AW
def test_l2_distance_vs_scipy():
    M, S, MM, SS_ = _grid(sigmas=[0.05, 0.3, 1.0, 3.0])
    val = P.l2_distance_sq(_col(M), _col(torch.log(S ** 2)), _col(MM), _col(SS_))[:, 0]
    ref = []
    for mu, sig, m, s in zip(*(a.tolist() for a in (M, S, MM, SS_))):
        n = lambda x, a, b: math.exp(-0.5 * ((x - a) / b) ** 2) / (b * math.sqrt(2 * math.pi))  # noqa: E731
        f = lambda x: (n(x, mu, sig) - 0.5 * n(x, m, s) - 0.5 * n(x, -m, s)) ** 2  # noqa: E731
        lo, hi = min(mu - 12 * sig, -m - 12 * s), max(mu + 12 * sig, m + 12 * s)
        v, _ = quad(f, lo, hi, points=sorted({mu, m, -m}), epsabs=1e-13, epsrel=1e-12, limit=400)
        ref.append(v)
    ref = torch.tensor(ref, dtype=torch.float64)
    err = _report("l2_distance_sq vs scipy", val, ref)
    assert err.max() < 1e-6


def test_pw_values_and_minima():
    mu, lv = torch.tensor([[1.2, -0.3]]), torch.tensor([[-1.0, 0.2]])
    l2 = P.l2_distance_sq(mu, lv, 1.0, 0.5).sum(-1)
    assert torch.allclose(P.pw(mu, lv, 1.0, 0.5), torch.sqrt(l2 + 1e-12))
    printed = P.pw(mu, lv, 1.0, 0.5, mu_weight=1.0)
    assert torch.allclose(printed, torch.sqrt(l2 + 1e-12) + mu.norm(dim=-1))
    with pytest.raises(ValueError):
        P.pw(mu, lv, p=1)
    grid = torch.linspace(0, 4, 801, dtype=torch.float64)[:, None]
    lv_s = torch.full_like(grid, 2 * math.log(0.5))
    assert abs(grid[P.pw(grid, lv_s, 2.0, 0.5).argmin(), 0].item() - 2.0) < 0.02
    assert grid[P.pw(grid, lv_s, 2.0, 0.5, mu_weight=1.0).argmin(), 0].item() == 0.0


def test_aw_values_and_gradient_directions():
    mu = torch.tensor([[3.0, 4.0]], requires_grad=True)
    lv = torch.tensor([[2 * math.log(0.5), 2 * math.log(2.0)]], requires_grad=True)
    v = P.aw(mu, lv, s=0.5)
    assert torch.allclose(v, torch.tensor([-5.0 + 1.5]))
    v.sum().backward()
    assert torch.allclose(mu.grad, -mu.detach() / 5.0)          # pushes |mu| up
    assert lv.grad[0, 1] > 0                                     # sigma = 2 > s: shrink
    assert P.aw(torch.zeros(1, 2), torch.zeros(1, 2), s=1.0).item() == 0.0
    assert P.aw(torch.tensor([[-2.0]]), torch.zeros(1, 1), s=1.0, p=1).item() == -2.0
    with pytest.raises(TypeError):             # aw has no m: (mu, logvar, m, s) must fail
        P.aw(mu, lv, 1.0, 0.5)
    with pytest.raises(ValueError):
        P.aw(mu, lv, 0.5, p=0.5)
    z = torch.zeros(1, 2, requires_grad=True)
    P.aw(z, torch.zeros(1, 2), 0.5).sum().backward()
    assert torch.isfinite(z.grad).all()
    raw = torch.tensor([-1e3, -1.0, 0.0, 1e3])
    b = P.bound_mu(raw, 2.0)
    assert (b.abs() <= 2.0).all() and b[2] == 0
    assert abs(P.bound_mu(torch.tensor(1e-3), 2.0).item() - 1e-3) < 1e-9


# ------------------------------------------------------------------ safety, shapes
TERMS = {
    "kl_standard": lambda mu, lv: P.kl_standard(mu, lv),
    "kl_quad": lambda mu, lv: P.kl_quad(mu, lv, 1.5, 0.2),
    "kl_quad_wide": lambda mu, lv: P.kl_quad(mu, lv, 0.5, 2.0),
    "kl_mixture_quad": lambda mu, lv: P.kl_mixture_quad(
        mu, lv, torch.tensor([0.3, 0.7]), torch.tensor([-1.5, 1.0]), torch.tensor([0.1, 1.0])),
    "kl_sc": lambda mu, lv: P.kl_sc(mu, lv, 3.0, 0.2, variant="min"),
    "kl_dkl_tanh": lambda mu, lv: P.kl_dkl(mu, lv, 3.0, 0.2),
    "kl_dkl_exact": lambda mu, lv: P.kl_dkl(mu, lv, 0.5, 2.0, erfc="exact", remainder=True),
    "aw": lambda mu, lv: P.aw(mu, lv, 0.5),
    "pw": lambda mu, lv: P.pw(mu, lv, 3.0, 0.2, mu_weight=0.1),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(TERMS))
def test_finite_values_and_gradients_on_extreme_grid(name, dtype):
    mus = torch.tensor([-1e3, -30.0, -1.0, 0.0, 1e-4, 1.5, 5.0, 1e3], dtype=dtype)
    lvs = torch.tensor([-40.0, -30.0, -12.0, -3.0, 0.0, 4.0, 20.0], dtype=dtype)
    mu, lv = torch.meshgrid(mus, lvs, indexing="ij")
    mu = mu.reshape(-1, 1).clone().requires_grad_(True)
    lv = lv.reshape(-1, 1).clone().requires_grad_(True)
    v = TERMS[name](mu, lv)
    assert v.dtype == dtype and v.shape == (mu.shape[0],)
    assert torch.isfinite(v).all(), name
    v.sum().backward()
    assert torch.isfinite(mu.grad).all() and torch.isfinite(lv.grad).all(), name


def test_shapes_dtypes_and_tensor_params():
    mu = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    lv = torch.zeros(5, 3)
    for f in (lambda a, b: P.kl_quad(a, b, 1.0, 0.5), lambda a, b: P.kl_sc(a, b, 1.0, 0.5),
              lambda a, b: P.kl_dkl(a, b, 1.0, 0.5), lambda a, b: P.pw(a, b, 1.0, 0.5),
              lambda a, b: P.aw(a, b, 0.5), P.kl_standard):
        out = f(mu, lv)
        assert out.shape == (5,) and out.dtype == torch.float32
        assert f(mu[0], lv[0]).shape == ()
        assert torch.allclose(f(mu[0], lv[0]), out[0])
    # float32 agrees with float64
    a32 = P.kl_quad(mu, lv, 1.0, 0.3)
    a64 = P.kl_quad(mu.double(), lv.double(), 1.0, 0.3)
    assert torch.allclose(a32.double(), a64, rtol=1e-5, atol=1e-5)
    # learnable prior parameters get gradients
    m = torch.tensor(1.0, requires_grad=True)
    s = torch.tensor(0.5, requires_grad=True)
    P.kl_quad(mu, lv, m, s).sum().backward()
    assert torch.isfinite(m.grad) and torch.isfinite(s.grad)
