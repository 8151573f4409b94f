"""Tests of surroflos.init: recurrent weight initialisations.

Oracles: random-matrix theory (circular law for the Gaussian scheme, Haar moments for the orthogonal one),
the sparse pattern of BalancedNetwork, and for the limit-cycle scheme the QR Lyapunov spectrum checked
against brute-force simulation (near-recurrence of each oscillator, rotation per step, constant amplitude).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import surroflos
from surroflos import init

from _tolerance import F32_EPS, rounding_tol

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------
# Gaussian
# ----------------------------------------------------------------------------------------------


def test_gaussian_spectral_radius_and_circular_law():
    N, radii = 400, []
    for seed in range(4):
        J = init.gaussian(N, 1.0, generator=gen(seed), dtype=F64)
        assert abs(J.mean().item()) < 4 / N  # sd of the mean of N^2 entries is 1/N^1.5
        assert J.var().item() * N == pytest.approx(1.0, rel=0.03)
        ev = torch.linalg.eigvals(J)
        r = ev.abs()
        radii.append(r.max().item())
        # Circular law: eigenvalues uniform in the unit disk, so P(|lambda| < rho) = rho^2.
        assert (r < 0.5).double().mean().item() == pytest.approx(0.25, abs=0.025)
        assert (r < 0.8).double().mean().item() == pytest.approx(0.64, abs=0.035)
        assert (r < 1.08).all()
        # ... and isotropic: as many in each quadrant (up to the ~sqrt(2N/pi) real eigenvalues).
        for quad in (ev.real > 0) & (ev.imag > 0), (ev.real < 0) & (ev.imag > 0):
            assert quad.double().mean().item() == pytest.approx(0.24, abs=0.04)
        assert abs(r.max().item() - 1.0) < 0.06
    assert sum(radii) / len(radii) == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("g", [0.5, 1.7])
def test_gaussian_gain_scales_the_matrix(g):
    J1 = init.gaussian(50, 1.0, generator=gen(3), dtype=F64)
    Jg = init.gaussian(50, g, generator=gen(3), dtype=F64)
    torch.testing.assert_close(Jg, g * J1)
    radius = torch.linalg.eigvals(Jg).abs().max()
    assert radius.item() == pytest.approx(g * torch.linalg.eigvals(J1).abs().max().item(), rel=1e-9)


def test_gaussian_is_what_the_models_draw():
    net = surroflos.RateRNN(2, 30, 1, g=1.3, generator=gen(11))
    torch.testing.assert_close(init.gaussian(30, 1.3, generator=gen(11)), net.weight_rec.detach())
    spk = surroflos.SpikingRNN(2, 30, 1, g=2.0, generator=gen(12))
    torch.testing.assert_close(init.gaussian(30, 2.0, generator=gen(12)), spk.weight_rec.detach())


# ----------------------------------------------------------------------------------------------
# Orthogonal
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_orthogonal_is_orthogonal_with_all_eigenvalues_on_the_circle(dtype):
    g, N = 1.4, 64
    J = init.orthogonal(N, g, generator=gen(0), dtype=dtype)
    assert J.dtype == dtype and J.shape == (N, N)
    Q = J / g
    eye = torch.eye(N, dtype=dtype)
    # Rounding bounds (tests/_tolerance.py): Q is Householder QR in float64 (orthogonality error gamma_{N^2},
    # Higham Thm 19.4; five orders below float32's eps), cast once to dtype and divided by g, then checked
    # with N-term dot products.
    ops = N + 4 + (N * N if dtype == F64 else 0)
    tol = rounding_tol(dtype, 1.0, ops)
    assert (Q.T @ Q - eye).abs().max().item() < tol
    assert (Q @ Q.T - eye).abs().max().item() < tol
    # J is normal, so its eigenvalues (and singular values) move by at most ||dJ||_2 <= ||dJ||_F
    # <= eps g sqrt(N) from the rounding of its entries (Bauer-Fike with condition 1; Weyl), plus the same
    # QR error in float64 and the float64 eigen/singular value solvers' own gamma_{N^2}.
    spectral_tol = rounding_tol(dtype, g * math.sqrt(N)) + rounding_tol(F64, g, N * N)
    ev = torch.linalg.eigvals(J.to(F64)).abs()
    assert (ev - g).abs().max().item() < spectral_tol
    sv = torch.linalg.svdvals(J.to(F64))
    assert (sv - g).abs().max().item() < spectral_tol


def test_orthogonal_is_haar_distributed():
    # Haar measure on O(N): E[Q_00] = 0, E[tr Q] = 0, E[(tr Q)^2] = 1 (N >= 2). A QR without the sign
    # correction gives Q_00 of one fixed sign, which the first check catches.
    n, N = 1500, 6
    g = gen(5)
    Qs = torch.stack([init.orthogonal(N, 1.0, generator=g, dtype=F64) for _ in range(n)])
    tr = Qs.diagonal(dim1=-2, dim2=-1).sum(-1)
    sd = 1 / math.sqrt(n)
    assert abs(Qs[:, 0, 0].mean().item()) < 4 * sd / math.sqrt(N)  # Var(Q_00) = 1/N
    assert abs(tr.mean().item()) < 4 * sd
    assert (tr ** 2).mean().item() == pytest.approx(1.0, abs=4 * math.sqrt(2) * sd)
    # Every column is uniform on the sphere: E[Q_ij^2] = 1/N for every entry.
    torch.testing.assert_close((Qs ** 2).mean(0), torch.full((N, N), 1 / N, dtype=F64), atol=0.025, rtol=0)


# ----------------------------------------------------------------------------------------------
# Balanced sparse
# ----------------------------------------------------------------------------------------------


def test_balanced_inhibitory_pattern():
    N, K, J0 = 60, 10, 1.5
    J = init.balanced_sparse(N, K, J0, generator=gen(0), dtype=F64)
    nz = J != 0
    assert (nz.sum(1) == K).all()  # exact in-degree
    assert not nz.diagonal().any()  # no self-connections
    assert torch.equal(J[nz], torch.full((N * K,), -J0 / math.sqrt(K), dtype=F64))
    assert nz.sum(0).float().std() > 0  # out-degrees vary (random graph, not a ring)


def test_balanced_ei_sign_pattern():
    N, K, J0, f_E, g_I = 100, 20, 1.0, 0.8, 4.0
    J = init.balanced_sparse(N, K, J0, ei=True, f_E=f_E, g_I=g_I, generator=gen(1), dtype=F64)
    N_E, K_E = round(f_E * N), round(f_E * K)
    w = J0 / math.sqrt(K)
    exc, inh = J[:, :N_E], J[:, N_E:]
    assert ((exc == 0) | (exc == w)).all() and ((inh == 0) | (inh == -g_I * w)).all()
    assert ((exc != 0).sum(1) == K_E).all() and ((inh != 0).sum(1) == K - K_E).all()
    assert not J.diagonal().any()


@pytest.mark.parametrize("ei", [False, True])
def test_balanced_matches_the_balanced_network(ei):
    N, K, J0 = 50, 10, 2.0
    net = surroflos.BalancedNetwork(N, K, J0, ei=ei, g=3.0, generator=gen(7), dtype=F64)
    dense = torch.zeros(N, N, dtype=F64).scatter_(1, net.pre_idx, net.weight_rec)
    torch.testing.assert_close(init.balanced_sparse(N, K, J0, ei=ei, g_I=3.0, generator=gen(7), dtype=F64), dense)


# ----------------------------------------------------------------------------------------------
# Limit cycle
# ----------------------------------------------------------------------------------------------


def _blocks(J: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha_i, theta_i read back from the 2x2 diagonal blocks."""
    i = torch.arange(m) * 2
    return torch.hypot(J[i, i], J[i + 1, i]), torch.atan2(J[i + 1, i], J[i, i])


def test_limit_cycle_structure():
    N, m = 11, 4
    J = init.limit_cycle(N, n_blocks=m, remainder=0.3, generator=gen(0), dtype=F64)
    alpha, theta = _blocks(J, m)
    lo, hi = init.ALPHA_RANGE
    assert ((alpha >= lo) & (alpha <= hi)).all()
    lo, hi = init.THETA_RANGE
    assert ((theta >= lo) & (theta <= hi)).all()
    expected = torch.zeros(N, N, dtype=F64)
    for b in range(m):  # alpha R(theta) rebuilt independently
        c, s = math.cos(theta[b]), math.sin(theta[b])
        expected[2 * b:2 * b + 2, 2 * b:2 * b + 2] = alpha[b] * torch.tensor([[c, -s], [s, c]], dtype=F64)
    expected[2 * m:, 2 * m:] = 0.3 * torch.eye(N - 2 * m, dtype=F64)
    torch.testing.assert_close(J, expected)
    # Defaults: all units in blocks (N // 2 of them); a one-point range fixes the value.
    J = init.limit_cycle(6, alpha_range=(1.1, 1.1), theta_range=(0.5, 0.5), dtype=F64)
    a, t = _blocks(J, 3)
    torch.testing.assert_close(a, torch.full((3,), 1.1, dtype=F64))
    torch.testing.assert_close(t, torch.full((3,), 0.5, dtype=F64))
    ev = torch.linalg.eigvals(J)
    torch.testing.assert_close(ev.abs(), torch.full((6,), 1.1, dtype=F64))


def _simulate(net: surroflos.RateRNN, T: int, seed: int) -> torch.Tensor:
    with torch.no_grad():
        h0 = net.initial_state(1, random=True, generator=gen(seed))
        return net(torch.zeros(T, 1, 0, dtype=F64), h0)[1][:, 0]


def _recurrence(x: torch.Tensor, window: int = 800) -> float:
    """min over lags tau of max_t |x[t + tau] - x[t]|, relative to the amplitude (x: [T, 2], T >= 2 window).

    A periodic or quasi-periodic orbit on a closed curve returns uniformly close to itself at some lag
    (rotation number times tau near an integer), a chaotic one does not.
    """
    amp = x.norm(dim=-1).mean()
    d = [(x[tau:tau + window] - x[:window]).norm(dim=-1).max() for tau in range(1, window + 1)]
    return (torch.stack(d).min() / amp).item()


@pytest.mark.parametrize("seed", [0, 1])
def test_limit_cycle_one_zero_exponent_per_block(seed):
    # Discrete tanh network (the seed's experiments), no input: m oscillators, 3 leftover units at rest.
    N, m = 11, 4
    net = surroflos.RateRNN(0, N, 1, dtype=F64, generator=gen(100 + seed))
    out = init.initialize_(net, "limit_cycle", n_blocks=m, remainder=0.5, generator=gen(seed))
    assert out is net
    x = torch.zeros(2200, 2, 0, dtype=F64)
    with torch.no_grad():
        res = surroflos.lyapunov_spectrum(net, x, k=m + 2, transient=300, frame_warmup=200,
                                          generator=gen(seed + 50))
    lam = res.exponents
    assert lam[:, :m].abs().max().item() < 2e-3  # one neutral phase per oscillator
    assert lam[:, m:].max().item() < -0.05  # radial directions and the units at rest contract
    # The contracting ones are the radial exponents of the blocks (about -2 (alpha - 1), within the
    # default alpha range) or log(0.5) of the units at rest.
    assert lam[:, m:].min().item() > -0.75


def test_limit_cycle_trajectories_are_periodic_brute_force():
    N, m = 8, 4
    net = surroflos.RateRNN(0, N, 1, dtype=F64)
    init.initialize_(net, "limit_cycle", generator=gen(3))
    _, theta = _blocks(net.weight_rec.detach(), m)
    traj = _simulate(net, 2000, seed=1)[300:]
    for b in range(m):
        x = traj[:, 2 * b:2 * b + 2]
        r = x.norm(dim=-1)
        assert r.mean().item() > 0.3  # oscillating, not at rest
        # Neither growing nor decaying: same amplitude statistics early and late.
        assert r[:800].mean().item() == pytest.approx(r[-800:].mean().item(), rel=1e-3)
        assert _recurrence(x) < 0.02
        z = torch.complex(x[:, 0], x[:, 1])
        rotation = torch.angle(z[1:] / z[:-1])
        assert (rotation > 0).all()  # monotone rotation around the origin
        assert rotation.mean().item() == pytest.approx(theta[b].item(), abs=0.07)  # theta sets the frequency


def test_periodicity_checks_can_fail():
    # Chaos (Gaussian g = 3): no uniform return. Damped blocks (alpha < 1): the amplitude decays.
    net = surroflos.RateRNN(0, 60, 1, g=3.0, dtype=F64, generator=gen(0))
    assert _recurrence(_simulate(net, 2000, seed=1)[300:, :2]) > 0.3
    net = surroflos.RateRNN(0, 8, 1, dtype=F64)
    init.initialize_(net, "limit_cycle", alpha_range=(0.9, 0.95), generator=gen(3))
    r = _simulate(net, 400, seed=1)[:, :2].norm(dim=-1)
    assert r[-1].item() < 1e-6
    with torch.no_grad():
        lam = surroflos.lyapunov_spectrum(net, torch.zeros(600, 1, 0, dtype=F64), k=2, transient=100).exponents
    assert lam.max().item() < math.log(0.95) + 1e-6  # |eig| = alpha: no zero exponent


def test_limit_cycle_locks_outside_the_default_theta_range():
    # Why theta_range avoids pi/2 and small angles: there the rotation locks to a periodic orbit (period 4)
    # or a fixed point and the phase exponent becomes clearly negative: no zero exponent left.
    for theta_range in ((1.52, 1.6), (0.02, 0.06)):
        net = surroflos.RateRNN(0, 4, 1, dtype=F64)
        init.initialize_(net, "limit_cycle", alpha_range=(1.15, 1.2), theta_range=theta_range, generator=gen(0))
        with torch.no_grad():
            lam = surroflos.lyapunov_spectrum(net, torch.zeros(1500, 1, 0, dtype=F64), k=2, transient=300,
                                              frame_warmup=200, generator=gen(1)).exponents
        assert lam.max().item() < -0.05


def test_limit_cycle_warns_on_leaky_rate_network():
    net = surroflos.RateRNN(0, 8, 1, dt=0.1)
    with pytest.warns(UserWarning, match="will not oscillate"):
        init.initialize_(net, "limit_cycle", generator=gen(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # alpha cos(theta) > 1: every block oscillates
        init.initialize_(net, "limit_cycle", alpha_range=(1.3, 1.4), theta_range=(0.1, 0.2), generator=gen(0))
        init.initialize_(surroflos.RateRNN(0, 8, 1), "limit_cycle", generator=gen(0))  # dt = 1: no warning


# ----------------------------------------------------------------------------------------------
# Registry, initialize_, seeding, dtypes
# ----------------------------------------------------------------------------------------------

CASES = {
    "gaussian": dict(g=1.2),
    "orthogonal": dict(g=0.9),
    "balanced": dict(K=5, g=1.0),
    "limit_cycle": dict(),
}


def test_registry():
    assert init.names() == sorted(CASES)
    assert init.SCHEMES["limit_cycle"].gain is None and init.SCHEMES["balanced"].gain == "J0"


@pytest.mark.parametrize("scheme", sorted(CASES))
def test_initialize_in_place_and_reproducible(scheme):
    net = surroflos.RateRNN(1, 20, 1, dtype=F64, generator=gen(0))
    W = net.weight_rec
    before, ptr = W.detach().clone(), W.data_ptr()
    init.initialize_(net, scheme, generator=gen(1), **CASES[scheme])
    assert net.weight_rec is W and W.data_ptr() == ptr and W.requires_grad and W.grad_fn is None
    assert W.dtype == F64 and not torch.equal(W.detach(), before)
    first = W.detach().clone()
    init.initialize_(net, scheme, generator=gen(1), **CASES[scheme])
    assert torch.equal(W.detach(), first)  # same seed, same matrix
    init.initialize_(net, scheme, generator=gen(2), **CASES[scheme])
    assert not torch.equal(W.detach(), first)
    # The pure function gives the same matrix in another dtype, up to rounding (not "gaussian": like
    # torch.randn and the models' constructors it draws in the requested dtype, a different stream).
    kw = dict(CASES[scheme])
    if scheme == "balanced":
        kw["J0"] = kw.pop("g")
    J32 = init.SCHEMES[scheme].build(20, **kw, generator=gen(1), dtype=torch.float32)
    assert J32.dtype == torch.float32
    if scheme != "gaussian":
        # built in float64 and cast: each entry rounded once, within float32's eps of itself
        torch.testing.assert_close(J32.to(F64), first, rtol=F32_EPS, atol=0)
    # A gradient step still works on the re-initialised parameter.
    loss = net(torch.randn(5, 2, 1, dtype=F64, generator=gen(3)))[0].square().sum()
    loss.backward()
    assert W.grad is not None and torch.isfinite(W.grad).all()


def test_initialize_defaults_and_other_models():
    net = surroflos.RateRNN(1, 16, 1, g=1.7, generator=gen(0))
    init.initialize_(net, "gaussian", generator=gen(4))  # g defaults to the model's gain
    torch.testing.assert_close(net.weight_rec.detach(), init.gaussian(16, 1.7, generator=gen(4)))
    init.initialize_(net, "balanced", K=4, generator=gen(4))  # J0 = model.g
    assert torch.allclose(net.weight_rec[net.weight_rec != 0], torch.tensor(-1.7 / 2))
    init.initialize_(net, "balanced", K=4, J0=0.5, generator=gen(4))
    assert torch.allclose(net.weight_rec[net.weight_rec != 0], torch.tensor(-0.25))
    spk = surroflos.SpikingRNN(1, 16, 1)
    init.initialize_(spk, "orthogonal", g=1.0, generator=gen(4))
    torch.testing.assert_close(spk.weight_rec.detach(), init.orthogonal(16, 1.0, generator=gen(4)))
    t = torch.zeros(6, 6)
    assert init.initialize_(t, "limit_cycle", generator=gen(4)) is t and t.abs().sum() > 0
    torch.manual_seed(0)  # generator=None: the global RNG
    a = init.gaussian(5)
    torch.manual_seed(0)
    assert torch.equal(a, init.gaussian(5))


def test_cuda_generator_and_device():
    # The balanced pattern is drawn on the CPU from a CPU generator seeded by the CUDA one.
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA generator")
    g = torch.Generator(device="cuda").manual_seed(0)
    J = init.balanced_sparse(30, 5, generator=g, device="cuda")
    assert J.device.type == "cuda" and ((J != 0).sum(1) == 5).all()
    for scheme in ("gaussian", "orthogonal", "limit_cycle"):
        J = init.SCHEMES[scheme].build(10, generator=torch.Generator(device="cuda").manual_seed(1), device="cuda")
        J2 = init.SCHEMES[scheme].build(10, generator=torch.Generator(device="cuda").manual_seed(1), device="cuda")
        assert J.device.type == "cuda" and torch.equal(J, J2)


@pytest.mark.parametrize("call,err,match", [
    (lambda: init.gaussian(0, 1.0), ValueError, "N must be an int"),
    (lambda: init.gaussian(4.0, 1.0), ValueError, "N must be an int"),
    (lambda: init.gaussian(4, -1.0), ValueError, "g must be non-negative"),
    (lambda: init.gaussian(4, float("nan")), ValueError, "g must be"),
    (lambda: init.gaussian(4, "1"), TypeError, "g must be a real number"),
    (lambda: init.gaussian(4, dtype=torch.int64), ValueError, "floating-point"),
    (lambda: init.orthogonal(4, generator=123), TypeError, "torch.Generator"),
    (lambda: init.balanced_sparse(10, 10), ValueError, "K < N"),
    (lambda: init.balanced_sparse(10, 0), ValueError, "K must be"),
    (lambda: init.balanced_sparse(10, 3, ei=True, f_E=1.5), ValueError, "f_E"),
    (lambda: init.balanced_sparse(10, 8, ei=True), ValueError, "increase N"),
    (lambda: init.limit_cycle(1), ValueError, "N must be"),
    (lambda: init.limit_cycle(6, n_blocks=4), ValueError, "2 \\* n_blocks <= N"),
    (lambda: init.limit_cycle(6, alpha_range=(1.2, 1.1)), ValueError, "low must not exceed high"),
    (lambda: init.limit_cycle(6, alpha_range=(0.0, 1.1)), ValueError, "alpha_range"),
    (lambda: init.limit_cycle(6, theta_range=(0.1, 4.0)), ValueError, "theta_range"),
    (lambda: init.limit_cycle(6, theta_range=0.5), ValueError, "pair"),
    (lambda: init.limit_cycle(6, remainder=float("inf")), ValueError, "remainder"),
    (lambda: init.initialize_(surroflos.RateRNN(1, 4, 1), "xavier"), ValueError, "unknown initialisation"),
    (lambda: init.initialize_(surroflos.RateRNN(1, 4, 1), "limit_cycle", g=1.0), ValueError, "no gain"),
    (lambda: init.initialize_(surroflos.RateRNN(1, 4, 1), "balanced", K=2, g=1.0, J0=1.0), ValueError,
     "either g or J0"),
    (lambda: init.initialize_(surroflos.RateRNN(1, 4, 1), "gaussian", K=2), TypeError, "'gaussian'"),
    (lambda: init.initialize_(surroflos.RateRNN(1, 4, 1), "gaussian", dtype=F64), TypeError, "dtype"),
    (lambda: init.initialize_(surroflos.BalancedNetwork(20, 4), "balanced", K=4), ValueError, "square"),
    (lambda: init.initialize_(torch.nn.Linear(3, 3), "gaussian"), TypeError, "no tensor weight_rec"),
])
def test_bad_arguments(call, err, match):
    with pytest.raises(err, match=match):
        call()
