"""Sparse balanced LIF network (seed 000): connectivity, exact discrete-time update, event-driven simulation,
surrogate tangent map, Lyapunov spectra with gradients, and the balanced-state science (cancellation of the
O(sqrt K) drive, irregular asynchronous firing, rate -> I0 / (J0 tau_m) as K grows).

Every statistic is recomputed here from the spike rasters and the stored connectivity (numpy / dense
matrices for small N, an independent RK4 integration for the single-step propagator); nothing is compared
with numbers recorded from an earlier run.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import surroflos
from surroflos.models import jvp_tangent
from surroflos.models.balanced import (BalancedNetwork, balanced_step, balanced_tangent, plot_raster,
                                       sparse_fixed_indegree)

from _tolerance import eps

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def dense_weights(net: BalancedNetwork) -> torch.Tensor:
    """The N x N matrix J_ij (row: postsynaptic) built from the stored pattern (small N only)."""
    W = torch.zeros(net.N, net.N, dtype=net.weight_rec.dtype)
    rows = torch.arange(net.N).unsqueeze(1).expand(-1, net.K)
    W.index_put_((rows.reshape(-1), net.pre_idx.reshape(-1)), net.weight_rec.detach().reshape(-1), accumulate=True)
    return W


def raster_stats(spikes: torch.Tensor, dt: float, burn: int) -> dict:
    """Rate (Hz), mean ISI CV over neurons with >= 5 spikes, population-count Fano factor in 1 ms bins."""
    s = spikes[burn:, 0].numpy().astype(bool)  # [T, N]
    T, N = s.shape
    rate = s.sum() / (T * dt * N)
    cvs = []
    for i in range(N):
        t = np.flatnonzero(s[:, i])
        if len(t) >= 5:
            isi = np.diff(t)
            cvs.append(isi.std() / isi.mean())
    bin_steps = max(1, int(round(1e-3 / dt)))
    counts = s[: T // bin_steps * bin_steps].reshape(-1, bin_steps, N).sum(axis=(1, 2))
    return {"rate": rate, "cv": float(np.mean(cvs)), "n_cv": len(cvs), "fano_pop": counts.var() / counts.mean()}


def total_input_ratio(net: BalancedNetwork, spikes: torch.Tensor, burn: int) -> float:
    """mean_i |I_ext + <I_rec,i>_t| / I_ext with <I_rec,i> from spike counts: every spike of j delivers the charge
    c tau_s J_ij (= J_ij tau_m for synapse_norm='tau_m'), so <I_rec,i> = c tau_s sum_j J_ij n_j / T_window."""
    n = spikes[burn:, 0].sum(0).double()  # spikes per neuron in the window
    window = (spikes.shape[0] - burn) * net.dt
    charge = net.tau_m if net.synapse_norm == "tau_m" else net.tau_s
    rec = charge * (net.weight_rec.detach().double() * n[net.pre_idx]).sum(1) / window
    total = net.drive.double() + rec
    return float(total.abs().mean() / net.drive[0])


# ----------------------------------------------------------------------------------------------
# Connectivity and memory
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("N,K", [(500, 50), (300, 250), (40, 39), (2, 1)])
def test_exactly_K_distinct_partners_no_self_loops(N, K):
    net = BalancedNetwork(N, K, generator=gen(0))
    pre = net.pre_idx
    assert pre.shape == (N, K) and pre.dtype == torch.int32
    assert int(pre.min()) >= 0 and int(pre.max()) < N
    assert not bool((pre == torch.arange(N).unsqueeze(1)).any()), "self-connection"
    srt = pre.sort(dim=1).values
    assert bool((srt[:, 1:] != srt[:, :-1]).all()), "repeated presynaptic partner"
    W = dense_weights(net)
    assert torch.equal((W != 0).sum(1), torch.full((N,), K))  # in-degree exactly K
    # one constant, rounded once to the network's dtype (tests/_tolerance.py)
    assert torch.allclose(W[W != 0], torch.tensor(-net.J0 / math.sqrt(K), dtype=W.dtype), rtol=eps(W.dtype), atol=0)
    assert torch.allclose(net.drive, torch.tensor(net.I0 * math.sqrt(K), dtype=net.drive.dtype),
                          rtol=eps(net.drive.dtype), atol=0)


def test_graph_is_uniform_random():
    """Out-degrees of a fixed-in-degree ER graph are Binomial(N - 1, K / (N - 1)); each row is a uniform K-subset."""
    N, K = 2000, 100
    pre = sparse_fixed_indegree(N, K, generator=gen(1))[0]
    out = torch.bincount(pre.reshape(-1), minlength=N).double()
    p = K / (N - 1)
    assert out.mean().item() == pytest.approx(K)
    assert out.var().item() == pytest.approx((N - 1) * p * (1 - p), rel=0.15)
    # the partner of rank r in a uniform K-subset of N - 1 candidates has mean (r + 1) N / (K + 1) - ish:
    # check that the smallest id is spread over [0, N), not stuck near 0 or next to the neuron itself
    rel = (pre - torch.arange(N).unsqueeze(1)) % N  # distance after the neuron, 1..N-1
    assert rel.double().mean().item() == pytest.approx(N / 2, rel=0.02)
    # different generators give different graphs, the same one the same graph
    assert torch.equal(pre, sparse_fixed_indegree(N, K, generator=gen(1))[0])
    assert not torch.equal(pre, sparse_fixed_indegree(N, K, generator=gen(2))[0])


@pytest.mark.parametrize("ei", [False, True])
@pytest.mark.parametrize("N,K", [(300, 12), (40, 30)])  # sparse draw with redraws; dense top-k branch
def test_graph_does_not_depend_on_chunks_or_dtype(monkeypatch, ei, N, K):
    """Drawing a chunk of rows at a time and storing int32 give the ids of one draw of all rows (int64)."""
    from surroflos.models import balanced as mbal

    whole = sparse_fixed_indegree(N, K, generator=gen(7), ei=ei)
    assert whole[0].dtype == torch.int64
    monkeypatch.setattr(mbal, "_ROW_CHUNK", 3 * K + 1)  # 3 rows per chunk
    small = sparse_fixed_indegree(N, K, generator=gen(7), ei=ei, dtype=torch.int32)
    assert small[0].dtype == torch.int32 and small[1:] == whole[1:]
    assert torch.equal(small[0].long(), whole[0])
    rows = small[0].long()
    assert not bool((rows == torch.arange(N).unsqueeze(1)).any())  # no autapses
    assert bool((rows[:, 1:] != rows[:, :-1]).all())  # distinct partners


def test_network_stores_int32_ids_and_loads_int64_checkpoints():
    net = BalancedNetwork(50, 6, generator=gen(3))
    assert net.pre_idx.dtype == torch.int32
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["pre_idx"] = BalancedNetwork(50, 6, generator=gen(4)).pre_idx.long()  # an int64 checkpoint
    net.load_state_dict(state)
    assert net.pre_idx.dtype == torch.int32 and torch.equal(net.pre_idx.long(), state["pre_idx"])


def test_ei_structure():
    N, K, f_E, g = 400, 40, 0.8, 5.0
    net = BalancedNetwork(N, K, J0=1.0, ei=True, f_E=f_E, g=g, generator=gen(3))
    N_E, K_E = round(f_E * N), round(f_E * K)
    assert (net.N_E, net.K_E, net.K_I) == (N_E, K_E, K - K_E)
    pre, w = net.pre_idx, net.weight_rec
    assert not bool((pre == torch.arange(N).unsqueeze(1)).any())
    exc = pre < N_E
    assert torch.equal(exc.sum(1), torch.full((N,), K_E))  # K_E excitatory inputs per neuron
    assert torch.allclose(w[exc], torch.tensor(1.0 / math.sqrt(K), dtype=w.dtype), rtol=eps(w.dtype), atol=0)
    assert torch.allclose(w[~exc], torch.tensor(-g / math.sqrt(K), dtype=w.dtype), rtol=eps(w.dtype), atol=0)
    W = dense_weights(net)
    assert torch.equal((W != 0).sum(1), torch.full((N,), K))
    J_eff = -W.sum(1).mean().item() / math.sqrt(K)  # net inhibition per unit sqrt(K)
    assert net.J_eff == pytest.approx(J_eff)
    assert net.balanced_rate() == pytest.approx(net.I0 / (J_eff * net.tau_m))


def test_memory_is_O_NK_and_N10000_simulates():
    N, K = 10_000, 100
    net = BalancedNetwork(N, K, generator=gen(4))
    spikes = net.simulate(300, generator=gen(5))
    assert spikes.shape == (300, 1, N) and spikes.dtype == torch.bool
    rate = spikes[100:].float().mean().item() / net.dt
    assert 0.3 * net.balanced_rate() < rate < 3 * net.balanced_rate()
    from surroflos.kernels.balanced import _PATTERNS

    pattern = _PATTERNS.peek(net.pre_idx)  # what simulate built and keeps: slot only (int32)
    assert pattern.slot.dtype == torch.int32 and pattern._post32 is None and pattern._pre32 is None
    tensors = list(net.state_dict().values()) + [pattern.slot]
    total = sum(t.numel() * t.element_size() for t in tensors)
    # pattern and values [N, K]; slot padded to the largest out-degree (binomial, < K + 8 sqrt(K))
    assert max(t.numel() for t in tensors) <= N * (K + 8 * math.sqrt(K))
    assert total <= (8 + 4 + 4 * (1 + 8 / math.sqrt(K))) * N * K + 64 * N  # bytes: int64 ids, float32 weights, slot
    assert total < 4 * N * N / 10  # a tenth of a dense float32 matrix
    # the differentiable step works at this size too (gathers N K entries per step)
    out, state = net.step(torch.zeros(2, 0), net.initial_state(2, random=True, generator=gen(6)))
    assert out.shape == (2, N) and state.shape == (2, 2 * N) and bool(torch.isfinite(state).all())


# ----------------------------------------------------------------------------------------------
# The discrete-time update
# ----------------------------------------------------------------------------------------------


def rk4_psp(V0: float, I0: float, u: float, tau_m: float, tau_s: float, t_end: float, n: int) -> np.ndarray:
    """V at t = dt, 2 dt, ..., t_end of tau_m V' = -V + I + u, tau_s I' = -I (fine RK4 steps)."""
    h = t_end / (n * 200)
    y = np.array([V0, I0])

    def f(y):
        return np.array([(-y[0] + y[1] + u) / tau_m, -y[1] / tau_s])

    out = []
    for i in range(n * 200):
        k1 = f(y)
        k2 = f(y + h / 2 * k1)
        k3 = f(y + h / 2 * k2)
        k4 = f(y + h * k3)
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        if (i + 1) % 200 == 0:
            out.append(y[0])
    return np.array(out)


@pytest.mark.parametrize("norm,tau_s", [("tau_m", 2e-3), ("tau_s", 2e-3), ("tau_m", 10e-3), ("tau_m", 0.0)])
def test_single_spike_response_is_the_exact_ode_solution(norm, tau_s):
    """Two neurons (K = 1): neuron 1 fires once at t = 0; neuron 0's V follows the ODE with I(0) = c J."""
    tau_m, dt, J0, I0 = 10e-3, 1e-4, 0.7, 0.45
    net = BalancedNetwork(2, 1, J0=J0, I0=I0, tau_m=tau_m, tau_s=tau_s, dt=dt, synapse_norm=norm, dtype=F64)
    T = 150
    state0 = torch.tensor([[0.0, 0.0, 0.2, 1.5]], dtype=F64)  # [I0, I1 | V0, V1]: neuron 1 above threshold
    states = net.rollout(torch.zeros(T, 1, 0, dtype=F64), state0).states[:, 0]
    J = -J0  # the only synapse onto neuron 0, from neuron 1
    u = I0 * math.sqrt(1)
    if tau_s == 0:  # delta synapse: V jumps by J at t = 0, then relaxes
        expect = (0.2 + J - u) * np.exp(-dt * np.arange(1, T + 1) / tau_m) + u
    else:
        c = tau_m / tau_s if norm == "tau_m" else 1.0
        expect = rk4_psp(0.2, c * J, u, tau_m, tau_s, T * dt, T)
    np.testing.assert_allclose(states[:, 2].numpy(), expect, rtol=0, atol=1e-9)
    # neuron 1 was reset to 0 and relaxes towards u (its input is neuron 0, which never fires)
    np.testing.assert_allclose(states[:, 3].numpy(), u * (1 - np.exp(-dt * np.arange(1, T + 1) / tau_m)), atol=1e-12)
    if tau_s > 0:  # total charge: integral of the PSP current = J tau_m ('tau_m') or J tau_s ('tau_s')
        I = states[:, 0].numpy()
        charge = dt * (c * J + I.sum() + I[-1] * math.exp(-dt / tau_s) / (1 - math.exp(-dt / tau_s)))
        assert charge == pytest.approx(J * (tau_m if norm == "tau_m" else tau_s), rel=dt / tau_s)


@pytest.mark.parametrize("kw", [{}, {"ei": True, "g": 5.0}, {"tau_s": 0.0}, {"detach_reset": False}])
def test_simulate_matches_the_step_function(kw):
    """The event-driven simulate() and the differentiable step function give the same trajectory."""
    net = BalancedNetwork(80, 10, n_in=3, dtype=F64, generator=gen(7), **kw)
    T, B = 400, 3
    x = 0.5 * torch.randn(T, B, 3, dtype=F64, generator=gen(8))
    state0 = net.initial_state(B, random=True, generator=gen(9))
    spikes, final, _ = net.simulate(T, inputs=x, state0=state0, return_state=True)
    roll = net.rollout(x, state0)
    assert int(spikes.sum()) > 100
    assert torch.equal(spikes, roll.activity.bool())
    torch.testing.assert_close(final, roll.states[-1].detach(), rtol=0, atol=1e-11)
    torch.testing.assert_close(net.spikes(roll.states), roll.activity.detach())
    # and the same as a plain dense re-implementation of the documented update
    W, p = dense_weights(net), net.params()
    I, V = state0[:, :80].clone(), state0[:, 80:].clone()
    for t in range(T):
        s = (V > 1).double()
        r = s @ W.T
        u = net.drive + x[t] @ net.weight_in.detach().T
        I, V = p.a_s * I + p.ac * r, p.a_m * (1 - s) * V + p.b * I + p.bc * r + (1 - p.a_m) * u
        assert torch.equal(spikes[t], V > 1), t
    torch.testing.assert_close(torch.cat([I, V], -1), final, rtol=0, atol=1e-11)


def test_state_dict_round_trip_rebuilds_the_event_pattern():
    a, b = BalancedNetwork(200, 20, generator=gen(60)), BalancedNetwork(200, 20, generator=gen(61))
    state0 = a.initial_state(2, random=True, generator=gen(62))
    a.simulate(5, state0=state0)  # builds and caches a's out-pattern
    a.load_state_dict(b.state_dict())
    assert torch.equal(a.pre_idx, b.pre_idx)
    assert torch.equal(a.simulate(300, state0=state0), b.simulate(300, state0=state0))


def test_propagator_constants():
    net = BalancedNetwork(10, 2, tau_m=10e-3, tau_s=2e-3, dt=1e-4)
    a_m, a_s = math.exp(-1e-4 / 10e-3), math.exp(-1e-4 / 2e-3)
    assert net.a_m == pytest.approx(a_m) and net.a_s == pytest.approx(a_s)
    assert net.b == pytest.approx(2e-3 / (2e-3 - 10e-3) * (a_s - a_m), rel=1e-12)
    assert net.bc == pytest.approx(net.b * 5.0) and net.ac == pytest.approx(a_s * 5.0)
    eq = BalancedNetwork(10, 2, tau_m=10e-3, tau_s=10e-3, dt=1e-4)
    assert eq.b == pytest.approx(1e-4 / 10e-3 * math.exp(-1e-2), rel=1e-12)
    near = BalancedNetwork(10, 2, tau_m=10e-3, tau_s=10e-3 * (1 + 1e-9), dt=1e-4)
    assert near.b == pytest.approx(eq.b, rel=1e-8)


# ----------------------------------------------------------------------------------------------
# Surrogate tangent map, Lyapunov spectrum, gradients
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [{}, {"detach_reset": False}, {"ei": True}, {"tau_s": 0.0}, {"tau_s": 10e-3},
                                {"synapse_norm": "tau_s"}, {"surrogate": "fast_sigmoid"}])
def test_analytic_tangent_equals_jvp(kw):
    net = BalancedNetwork(60, 9, n_in=2, dtype=F64, generator=gen(10), learn_recurrent=True, **kw)
    B, k = 3, 7
    state = net.initial_state(B, random=True, generator=gen(11))
    state[:, 60:] = 0.6 + 0.6 * torch.rand(B, 60, dtype=F64, generator=gen(12))  # many neurons near threshold
    x = torch.randn(B, 2, dtype=F64, generator=gen(13))
    Q = torch.randn(B, 120, k, dtype=F64, generator=gen(14))
    p = net.params()
    analytic = balanced_tangent(x, state, p, Q)
    ad = jvp_tangent(balanced_step, x, state, p, Q)
    assert (analytic - ad).abs().max().item() < 1e-10
    # the recurrent (surrogate) part is really exercised: compare with the dense-matrix form
    W = dense_weights(net)
    d = p.surrogate.derivative(state[:, 60:] - 1)
    dr = torch.einsum("ij,bjq->biq", W, d.unsqueeze(-1) * Q[:, 60:])
    assert dr.abs().max() > 0.1
    torch.testing.assert_close(analytic[:, :60], p.a_s * Q[:, :60] + p.ac * dr, rtol=0, atol=1e-12)


def test_lyapunov_spectrum_runs_and_differentiates():
    net = BalancedNetwork(50, 8, n_in=2, dtype=F64, generator=gen(15), learn_recurrent=True)
    x = 0.3 * torch.randn(120, 2, 2, dtype=F64, generator=gen(16))
    res = surroflos.lyapunov_spectrum(net, x, 4, transient=40, frame_warmup=20, generator=gen(17))
    assert res.exponents.shape == (2, 4) and bool(torch.isfinite(res.exponents).all())
    assert bool((res.exponents[:, :-1] >= res.exponents[:, 1:]).all())
    res.exponents[:, 0].sum().backward()
    for prm in (net.weight_rec, net.weight_in):
        assert prm.grad is not None and bool(torch.isfinite(prm.grad).all()) and prm.grad.abs().sum() > 0
    # the fallback (jvp) tangent gives the same spectrum as the analytic one
    class NoTangent(BalancedNetwork):
        tangent_function = None

    other = NoTangent(50, 8, n_in=2, dtype=F64, generator=gen(15), learn_recurrent=True)
    with torch.no_grad():
        ref = surroflos.lyapunov_spectrum(other, x, 4, transient=40, frame_warmup=20, generator=gen(17))
    torch.testing.assert_close(ref.exponents, res.exponents.detach(), rtol=1e-9, atol=1e-9)


def test_gradcheck_in_weights():
    """One step and one tangent map are smooth in (recurrent, input) weights: autograd == finite differences."""
    net = BalancedNetwork(20, 4, n_in=2, dtype=F64, generator=gen(18), learn_recurrent=True)
    state = net.initial_state(2, random=True, generator=gen(19))
    state[:, 20:] = 0.7 + 0.5 * torch.rand(2, 20, dtype=F64, generator=gen(20))
    x = torch.randn(2, 2, dtype=F64, generator=gen(21))
    Q = torch.randn(2, 40, 3, dtype=F64, generator=gen(22))
    base = net.params()

    def f(w, w_in):
        p = base._replace(weight_rec=w, weight_in=w_in)
        # one output, so that gradcheck also compares parts whose autograd graph could be missing
        return torch.cat([balanced_step(x, state, p)[1].reshape(-1), balanced_tangent(x, state, p, Q).reshape(-1)])

    assert torch.autograd.gradcheck(f, (net.weight_rec.detach().clone().requires_grad_(),
                                        net.weight_in.detach().clone().requires_grad_()))


def test_surrogate_gradients_reach_input_and_readout():
    net = BalancedNetwork(100, 10, n_in=3, n_out=2, generator=gen(23))
    x = torch.randn(200, 4, 3, generator=gen(24))
    out, _ = net(x, net.initial_state(4, random=True, generator=gen(25)))
    assert out.shape == (200, 4, 2)
    out.pow(2).mean().backward()
    assert net.weight_in.grad.abs().sum() > 0 and net.readout_layer.weight.grad.abs().sum() > 0
    assert [n for n, _ in net.named_parameters()] == ["weight_in", "readout_layer.weight", "readout_layer.bias"]
    assert net.flossing_parameters() == [net.weight_in]


# ----------------------------------------------------------------------------------------------
# Balanced-state science (K = 50, 200, 800 here; the @slow test goes up to K = 3200)
# ----------------------------------------------------------------------------------------------


def sweep(Ks, N, T, seed=0):
    rows = []
    for K in Ks:
        net = BalancedNetwork(N, K, generator=gen(seed))
        burn = T // 10
        head, state, _ = net.simulate(burn, generator=gen(seed + 1), return_state=True)
        tail, _, mu = net.simulate(T - burn, state0=state, return_state=True)
        spikes = torch.cat([head, tail])
        stats = raster_stats(spikes, net.dt, burn)
        stats.update(K=K, pred=net.balanced_rate(), ratio=total_input_ratio(net, spikes, burn),
                     ratio_sim=float(mu.abs().mean() / net.drive[0]), mu=float(mu.mean()))
        rows.append(stats)
    return rows


@pytest.fixture(scope="module")
def balance_sweep():
    """K = 50, 200, 800 at N = 4000 (N >= 4 K), 1 s of network time each (a few seconds in all)."""
    return sweep([50, 200, 800], N=4000, T=10_000)


def test_recurrent_input_cancels_the_drive(balance_sweep):
    """Time-averaged total input I_ext + <I_rec> is O(1) while I_ext = I0 sqrt(K) grows: the ratio falls with K."""
    ratios = [r["ratio"] for r in balance_sweep]
    assert ratios[0] > ratios[1] > ratios[2], ratios
    assert ratios[2] < 0.5 * ratios[0]
    for r in balance_sweep:  # the simulator's own running average agrees with the spike-count estimate
        assert r["ratio_sim"] == pytest.approx(r["ratio"], abs=0.01)
        assert abs(r["mu"]) < 1.0  # O(1) (below threshold: fluctuation driven), while I_ext = 3.5 .. 14.1


def test_rate_approaches_the_balance_prediction(balance_sweep):
    dev = [abs(r["rate"] - r["pred"]) for r in balance_sweep]
    assert dev[0] > dev[1] > dev[2], [(r["K"], r["rate"], r["pred"]) for r in balance_sweep]
    assert dev[2] < 0.5 * dev[0]
    assert dev[2] < 0.06 * balance_sweep[2]["pred"]
    for r in balance_sweep:
        assert r["pred"] == pytest.approx(0.5 / (2.0 * 10e-3))  # I0 / (J0 tau_m) at the defaults


def test_irregular_asynchronous_across_K(balance_sweep):
    for r in balance_sweep:
        assert r["n_cv"] > 3000
        assert 0.7 < r["cv"] < 1.3, r
        assert r["fano_pop"] < 3.0, r  # no population synchrony (Poisson-like population count)


def test_irregular_asynchronous_at_defaults():
    net = BalancedNetwork(generator=gen(30))  # N = 1000, K = 100
    T = 10_000  # 1 s
    stats = raster_stats(net.simulate(T, generator=gen(31)), net.dt, burn=1000)
    assert stats["n_cv"] > 900
    assert 0.7 < stats["cv"] < 1.3, stats
    assert stats["fano_pop"] < 3.0, stats


def test_ei_variant_balances():
    """E and I neurons fire at the same rate; the distance to I0 / (J_eff tau_m) shrinks with K."""
    devs = []
    for K in (100, 400):
        net = BalancedNetwork(2000, K, J0=1.0, I0=0.2, ei=True, g=8.0, generator=gen(32))
        s = net.simulate(3000, generator=gen(33))[300:, 0].float()
        rE, rI = (s[:, :net.N_E].mean().item() / net.dt, s[:, net.N_E:].mean().item() / net.dt)
        assert rE == pytest.approx(rI, rel=0.1)
        devs.append(abs(0.5 * (rE + rI) - net.balanced_rate()))
    assert devs[1] < 0.7 * devs[0], devs


@pytest.mark.slow
def test_slow_balance_up_to_K_3200():
    """K = 50 .. 3200 at N = 12800, 2 s each: the deviations keep shrinking."""
    rows = sweep([50, 200, 800, 3200], N=12_800, T=20_000, seed=3)
    ratios = [r["ratio"] for r in rows]
    dev = [abs(r["rate"] - r["pred"]) for r in rows]
    assert all(a > b for a, b in zip(ratios, ratios[1:])), ratios
    assert all(a > b for a, b in zip(dev, dev[1:])), [(r["K"], r["rate"]) for r in rows]
    assert dev[-1] < 0.03 * rows[-1]["pred"]
    for r in rows:
        assert 0.7 < r["cv"] < 1.3, r
        assert r["fano_pop"] < 3.0, r


# ----------------------------------------------------------------------------------------------
# Errors and plotting
# ----------------------------------------------------------------------------------------------


def test_clear_errors():
    with pytest.raises(ValueError, match="K < N"):
        BalancedNetwork(10, 10)
    with pytest.raises(ValueError, match="K < N"):
        BalancedNetwork(10, 12)
    for K in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="K must be an int >= 1"):
            BalancedNetwork(10, K)
    with pytest.raises(ValueError, match="synapse_norm"):
        BalancedNetwork(10, 2, synapse_norm="x")
    with pytest.raises(ValueError, match="tau_s = 0"):
        BalancedNetwork(10, 2, tau_s=0.0, synapse_norm="tau_s")
    with pytest.raises(ValueError, match="dt"):
        BalancedNetwork(10, 2, dt=0.0)
    with pytest.raises(ValueError, match="increase N"):
        BalancedNetwork(10, 8, ei=True)

    net = BalancedNetwork(30, 5, n_in=2, dtype=F64, generator=gen(40))
    with pytest.raises(ValueError, match=r"\[T, B, n_in\]"):
        net.simulate(5, inputs=torch.zeros(5, 2, dtype=F64))
    with pytest.raises(ValueError, match="n_in=2"):
        net.simulate(5, inputs=torch.zeros(5, 1, 3, dtype=F64))
    with pytest.raises(ValueError, match="steps=6"):
        net.simulate(6, inputs=torch.zeros(5, 1, 2, dtype=F64))
    with pytest.raises(ValueError, match="batch sizes disagree"):
        net.simulate(5, batch=2, state0=net.initial_state(3))
    with pytest.raises(ValueError, match="batch sizes disagree"):
        net.simulate(5, inputs=torch.zeros(5, 2, 2, dtype=F64), state0=net.initial_state(3))
    with pytest.raises(ValueError, match=r"\[B, 2N\]"):
        net.simulate(5, state0=torch.zeros(1, 30, dtype=F64))
    with pytest.raises(ValueError, match="batch size"):  # no silent broadcasting of a batch-1 input
        balanced_step(torch.zeros(1, 2, dtype=F64), net.initial_state(3), net.params())
    with pytest.raises(ValueError, match=r"batch"):
        net.rollout(torch.zeros(4, 2, 2, dtype=F64), net.initial_state(3))
    with pytest.raises(ValueError, match="dtype mix"):
        net.simulate(5, inputs=torch.zeros(5, 1, 2))
    with pytest.raises(ValueError, match="dtype mix"):
        net.simulate(5, state0=torch.zeros(1, 60))
    with pytest.raises(ValueError, match="dtype mix"):
        net.initial_state(2, dtype=torch.float32)
    with pytest.raises(ValueError, match="dtype mix|float32"):
        surroflos.lyapunov_spectrum(net, torch.zeros(10, 1, 2), 2)
    with pytest.raises(ValueError, match="dtype mix|float32"):
        net.rollout(torch.zeros(10, 1, 2))
    with pytest.raises(ValueError, match="dtype mix"):
        balanced_step(torch.zeros(1, 2), net.initial_state(1), net.params())
    with pytest.raises(ValueError, match=r"Q must have shape"):
        balanced_tangent(torch.zeros(1, 2, dtype=F64), net.initial_state(1), net.params(),
                         torch.zeros(1, 30, 2, dtype=F64))


def test_plot_raster(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    net = BalancedNetwork(300, 30, generator=gen(50))
    spikes = net.simulate(2000, generator=gen(51))
    path = tmp_path / "raster.png"
    assert plot_raster(spikes, net.dt, path, n_neurons=100) is None
    assert path.stat().st_size > 1000
    fig, ax = plt.subplots()
    assert plot_raster(spikes, net.dt, ax, n_neurons=50) is ax
    xs, ys = ax.lines[0].get_xdata(), ax.lines[0].get_ydata()
    assert len(xs) == int(spikes[:, 0, :50].sum()) > 0
    assert ys.max() < 50 and xs.max() <= 2000 * net.dt + 1e-12
    plt.close(fig)
    with pytest.raises(ValueError, match="spikes must be"):
        plot_raster(spikes[0, 0], net.dt, ax)
