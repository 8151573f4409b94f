"""Scientific tests of the QR Lyapunov estimator (``surroflos.lyapunov``).

Every numerical claim is checked against an oracle that does not use the estimator itself:
eigenvalues of a constant tangent map (numpy), explicit Jacobian determinants (``slogdet``), random
matrix theory (circular law), the two-trajectory brute-force exponent, finite differences
(``gradcheck``) and hand-computed spectra. Tolerances are explained where they are set.

Fast tests run by default; ``@pytest.mark.slow`` marks the larger, more convincing versions.
"""

from __future__ import annotations

import math
import types
import warnings

import numpy as np
import pytest
import torch

import surroflos.lyapunov as lyap_mod
from surroflos.models import LinearMap as LinearMapModel

from _oracles import LinearMapWrongTangent, gen, nonnormal_matrix, randn  # tests/_oracles.py
from surroflos import (LyapunovResult, NonFiniteError, RateRNN, SpikingRNN, Surrogate, kaplan_yorke_dimension,
                       ks_entropy, lyapunov_spectrum, max_lyapunov_bruteforce)

F64 = torch.float64


# --------------------------------------------------------------------------------------------------
# A minimal model following the protocol of surroflos.models.base: h <- A h
# --------------------------------------------------------------------------------------------------


def LinearMap(A: torch.Tensor) -> LinearMapModel:
    """``h <- A h`` with no tangent_function: the estimator must fall back to forward-mode AD."""
    return LinearMapModel(A, analytic_tangent=False)


LinearMapWithTangent = LinearMapModel  # the same map with the analytic tangent ``D Q = A Q``


def sorted_log_moduli(M: np.ndarray) -> np.ndarray:
    """Independent oracle: numpy eigenvalues, log-modulus, descending."""
    return np.sort(np.log(np.abs(np.linalg.eigvals(M))))[::-1].copy()


def group_ends(log_mod: np.ndarray, tol: float = 1e-9) -> list[int]:
    """Indices m (1-based counts) that do not split a group of equal moduli (e.g. a conjugate pair).

    The QR method determines the sum of the first m exponents exponentially fast whenever
    ``|mu_m| > |mu_{m+1}|``; inside a conjugate pair only the pair's sum is sharp (each member carries a
    bounded O(1) oscillation, i.e. O(1/T) error).
    """
    ends = [i + 1 for i in range(len(log_mod) - 1) if log_mod[i] - log_mod[i + 1] > tol]
    return ends + [len(log_mod)]


def worst_gap_ratio(log_mod: np.ndarray, ends: list[int]) -> float:
    """Largest ``|mu_{m+1}| / |mu_m|`` over group boundaries: the frame's per-step convergence factor."""
    return max(math.exp(log_mod[m] - log_mod[m - 1]) for m in ends[:-1])


# --------------------------------------------------------------------------------------------------
# 1. Constant linear map
# --------------------------------------------------------------------------------------------------

LIN_EIGS = [1.1, -0.9, 0.7, -0.45, 0.2]  # distinct moduli, mixed signs


@pytest.mark.parametrize("cls", [LinearMapWithTangent, LinearMap], ids=["analytic_tangent", "jvp_fallback"])
@pytest.mark.parametrize("k,qr_every", [(5, 1), (3, 1), (5, 4)])
def test_linear_map_exponents_are_log_eigenvalue_moduli(cls, k, qr_every):
    A = nonnormal_matrix(LIN_EIGS, seed=0)
    # The matrix is far from normal (otherwise Q would not need to rotate at all).
    assert torch.linalg.matrix_norm(A @ A.T - A.T @ A) > 1.0
    assert not hasattr(LinearMap, "tangent_function")  # the fallback really is exercised
    expected = sorted_log_moduli(A.numpy())
    np.testing.assert_allclose(expected, np.sort(np.log(np.abs(LIN_EIGS)))[::-1], atol=1e-12)  # oracle sanity

    T, transient, warmup = 500, 10, 200
    x = torch.zeros(T, 2, 0, dtype=F64)
    res = lyapunov_spectrum(cls(A), x, k, qr_every=qr_every, transient=transient, frame_warmup=warmup,
                            generator=gen(1))
    assert res.exponents.shape == (2, k)
    assert res.steps == T - transient - warmup
    # Tolerance: the worst eigenvalue ratio is 0.9/1.1; after 200 warmup steps the frame is aligned to
    # ~(0.82)^200 ~ 1e-17, so the estimate is exact up to float64 rounding (~1e-14 per exponent).
    for b in range(2):
        np.testing.assert_allclose(res.exponents[b].numpy(), expected[:k], rtol=0, atol=1e-10)


def test_linear_map_uses_the_given_tangent_function():
    # A tangent_function of 2A (inconsistent with the step on purpose) must shift every exponent by log 2:
    # the estimator uses the model's own tangent map, not AD of the step, when one is given.
    A = nonnormal_matrix(LIN_EIGS, seed=0)
    x = torch.zeros(300, 1, 0, dtype=F64)
    res = lyapunov_spectrum(LinearMapWrongTangent(A), x, 5, frame_warmup=100, generator=gen(1))
    np.testing.assert_allclose(res.exponents[0].numpy(), sorted_log_moduli(A.numpy()) + math.log(2.0), atol=1e-10)


# --------------------------------------------------------------------------------------------------
# 2. Discrete rate map with g < 1: fixed point 0, D = J
# --------------------------------------------------------------------------------------------------


def _autonomous_rate(N, g, seed, dt=1.0):
    return RateRNN(0, N, 1, g=g, dt=dt, generator=gen(seed), dtype=F64)


def test_discrete_rate_fixed_point_spectrum_equals_log_eig_J():
    N, g = 10, 0.5
    model = _autonomous_rate(N, g, seed=0)
    J = model.weight_rec.detach()
    transient, warmup, acc = 100, 400, 400
    x = torch.zeros(transient + warmup + acc, 1, 0, dtype=F64)
    s0 = randn(1, N, seed=5)
    # Precondition: after the transient the state sits at the fixed point 0 (phi'(h) = 1 in float64).
    with torch.no_grad():
        h = model.rollout(x[:transient], s0).states[-1]
    assert h.abs().max() < 1e-12

    with torch.no_grad():
        res = lyapunov_spectrum(model, x, N, transient=transient, frame_warmup=warmup, state0=s0, generator=gen(1))
    lam = res.exponents[0].numpy()
    expected = sorted_log_moduli(J.numpy())
    ends = group_ends(expected)
    # Precondition for the tight check: the frame converges as ratio^warmup; make sure that is negligible.
    assert worst_gap_ratio(expected, ends) ** warmup < 1e-8
    # Tight: sums of the leading m exponents at every m that does not split a conjugate pair (the
    # only quantities the QR method pins down exponentially fast); only rounding remains.
    np.testing.assert_allclose(np.cumsum(lam)[np.array(ends) - 1], np.cumsum(expected)[np.array(ends) - 1],
                               rtol=0, atol=1e-9)
    # Loose, per exponent: members of a conjugate pair share a modulus and split their sum with an
    # O(1) bounded oscillation, i.e. O(1/T) = O(1/400) error.
    np.testing.assert_allclose(lam, expected, rtol=0, atol=1e-2)


def _circular_law_check(N, g, lam, expected_eig, rms_tol, max_tol, mean_tol):
    i = np.arange(1, N + 1)
    # i-th largest modulus of N points uniform in the disk of radius g: quantile at (i - 1/2)/N.
    circ = math.log(g) + 0.5 * np.log(1.0 - (i - 0.5) / N)
    sel = i <= 0.9 * N  # log(1 - i/N) diverges at the inner edge where few eigenvalues live
    dev = lam[sel] - circ[sel]
    assert np.sqrt(np.mean(dev ** 2)) < rms_tol
    assert np.max(np.abs(dev)) < max_tol
    assert abs(lam.mean() - (math.log(g) - 0.5)) < mean_tol
    # The mean of all N exponents at the fixed point is log|det J| / N exactly (sum rule).
    sign, logabsdet = np.linalg.slogdet(expected_eig)
    assert abs(lam.sum() - logabsdet) < 1e-8 * N


def _fixed_point_spectrum(N, g, *, seed, transient, warmup, acc):
    """All N exponents of an autonomous g < 1 rate net (at its fixed point 0) and its coupling J (numpy)."""
    model = _autonomous_rate(N, g, seed=seed)
    x = torch.zeros(transient + warmup + acc, 1, 0, dtype=F64)
    with torch.no_grad():
        res = lyapunov_spectrum(model, x, N, transient=transient, frame_warmup=warmup, generator=gen(1))
    return res.exponents[0].numpy(), model.weight_rec.detach().numpy()


def test_discrete_rate_circular_law_N100():
    N, g = 100, 0.5
    lam, J = _fixed_point_spectrum(N, g, seed=0, transient=100, warmup=200, acc=300)
    # QR vs eig of the model's own J. Tolerance 2e-2: with 100 eigenvalues some moduli differ by <0.1%,
    # so those directions are still mixing after 300 steps (error O(log(cond)/T)); observed ~4e-3.
    np.testing.assert_allclose(lam, sorted_log_moduli(J), rtol=0, atol=2e-2)
    # Circular law. Tolerances from 200 independent real Ginibre draws at N=100 (eigenvalues only):
    # rms deviation over i <= 0.9N was <= 0.069, max <= 0.27 (largest near i = 0.9N where the law is
    # steep), and the mean deviated from log g - 1/2 by -0.013 +- 0.019 (finite-N bias + log-det
    # fluctuation, max 0.055). The bounds below leave ~1.3-2x headroom.
    _circular_law_check(N, g, lam, J, rms_tol=0.1, max_tol=0.35, mean_tol=0.1)


@pytest.mark.slow
def test_discrete_rate_circular_law_N400():
    N, g = 400, 0.5
    lam, J = _fixed_point_spectrum(N, g, seed=3, transient=100, warmup=150, acc=250)
    np.testing.assert_allclose(lam, sorted_log_moduli(J), rtol=0, atol=2e-2)
    # Calibrated on 40 Ginibre draws at N=400: rms <= 0.020, max <= 0.097, |mean dev| <= 0.014.
    _circular_law_check(N, g, lam, J, rms_tol=0.035, max_tol=0.15, mean_tol=0.03)


# --------------------------------------------------------------------------------------------------
# 3. Sum rule: sum of all exponents = time average of log|det D[t]|
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dt,qr_every", [(1.0, 1), (0.5, 1), (0.5, 3)])
def test_sum_rule_driven_chaotic_rate_network(dt, qr_every):
    # qr_every stays small: with k = N the frame spans exponents from ~+0.1 to ~-9 per step, and between
    # two QRs the columns' scales spread by exp((lambda_1 - lambda_N) * qr_every), which must stay well
    # below 1/eps_float64 ~ e^36 for the smallest R_ii to be resolved at all (qr_every=4 at dt=1 is not).
    N, n_in, B, T, transient, warmup = 24, 4, 2, 300, 20, 30
    model = RateRNN(n_in, N, 1, g=2.5, dt=dt, input_scale=0.2, generator=gen(7), dtype=F64)
    x = randn(T, B, n_in, seed=9)
    s0 = randn(B, N, seed=10)
    with torch.no_grad():
        res = lyapunov_spectrum(model, x, N, qr_every=qr_every, transient=transient, frame_warmup=warmup,
                                state0=s0, generator=gen(11))
        states = model.rollout(x, s0).states  # [T, B, N], state after each step
    lam_sum = res.exponents.sum(dim=-1)
    if dt == 1.0:
        assert res.exponents[:, 0].min() > 0.05  # really chaotic, not a trivial contracting example

    prev = torch.cat([s0.unsqueeze(0), states[:-1]])[transient + warmup:]  # state before each step
    J = model.weight_rec.detach()
    dphi = 1.0 - torch.tanh(prev) ** 2
    D = (1.0 - dt) * torch.eye(N, dtype=F64) + dt * J * dphi.unsqueeze(-2)  # J diag(phi'(h))
    sign, logabsdet = torch.linalg.slogdet(D)  # [steps, B]
    expected = logabsdet.mean(dim=0) / dt
    # An identity up to rounding: sum_i log|R_ii| = log|det(D ... D Q)| with Q orthogonal. Rounding:
    # cond(D[t]) reaches ~1e7-1e8 (saturated tanh), so each step's smallest R_ii is accurate to
    # ~1e-16 * cond relative; averaged over the window the sum is good to ~1e-11 (|sum| ~ 100).
    torch.testing.assert_close(lam_sum, expected, rtol=0, atol=1e-9)
    if dt == 1.0:  # discrete map: log|det J| + < sum_i log phi'(h_i) >
        alt = torch.linalg.slogdet(J)[1] + torch.log(dphi).sum(dim=-1).mean(dim=0)
        torch.testing.assert_close(lam_sum, alt, rtol=0, atol=1e-9)


# --------------------------------------------------------------------------------------------------
# 4. Continuous time (Euler step dt < 1)
# --------------------------------------------------------------------------------------------------


def test_continuous_time_fixed_point_matches_euler_eigenvalues_small_N():
    N, g, dt = 8, 0.5, 0.1
    model = _autonomous_rate(N, g, seed=2, dt=dt)
    transient, warmup, acc = 600, 3000, 1000
    x = torch.zeros(transient + warmup + acc, 1, 0, dtype=F64)
    with torch.no_grad():
        res = lyapunov_spectrum(model, x, N, qr_every=2, transient=transient, frame_warmup=warmup,
                                state0=randn(1, N, seed=3), generator=gen(1))
    lam = res.exponents[0].numpy()
    M = (1.0 - dt) * np.eye(N) + dt * model.weight_rec.detach().numpy()  # D at h = 0
    expected = sorted_log_moduli(M) / dt
    ends = group_ends(expected * dt)
    assert worst_gap_ratio(expected * dt, ends) ** warmup < 1e-8  # frame settled (precondition)
    # Tight as in the discrete case; residual error from h not being exactly 0 (phi' = 1 - O(h^2)).
    np.testing.assert_allclose(np.cumsum(lam)[np.array(ends) - 1], np.cumsum(expected)[np.array(ends) - 1],
                               rtol=0, atol=1e-8)
    np.testing.assert_allclose(lam, expected, rtol=0, atol=2e-2)  # per exponent: conjugate pairs, O(1/T), seen 5e-3


def _continuous_lambda1_check(N, seed, warmup, acc, g1_tol):
    g, dt, transient = 0.5, 0.1, 400
    model = _autonomous_rate(N, g, seed=seed, dt=dt)
    x = torch.zeros(transient + warmup + acc, 1, 0, dtype=F64)
    with torch.no_grad():
        res = lyapunov_spectrum(model, x, 2, transient=transient, frame_warmup=warmup, generator=gen(1))
    lam = res.exponents[0].numpy()
    mu = np.linalg.eigvals(model.weight_rec.detach().numpy())
    rates = np.sort(np.log(np.abs(1.0 - dt + dt * mu)) / dt)[::-1]
    # The leading Euler eigenvalue is often a complex pair; the pair's *mean* exponent is what QR pins
    # down (each member oscillates). Tolerance 5e-3: the next modulus may be close (gap ~0.01/unit time),
    # leaving O(1/(gap * T)) alignment error; observed ~1e-3.
    lead = lam[0] if rates[0] - rates[1] > 1e-9 else lam[:2].mean()
    assert abs(lead - rates[0]) < 5e-3
    # Loose: g - 1 is the N -> infinity, dt -> 0 limit. The finite-N spectral edge fluctuates (over 100
    # draws at N=100: max Euler rate - (g-1) in [-0.084, 0.063]; [-0.036, 0.011] at N=400), and Euler
    # at dt=0.1 shifts it by about -0.013.
    assert abs(lam[0] - (g - 1.0)) < g1_tol


def test_continuous_time_lambda1_near_g_minus_1():
    _continuous_lambda1_check(N=100, seed=0, warmup=1000, acc=1500, g1_tol=0.15)


@pytest.mark.slow
def test_continuous_time_lambda1_near_g_minus_1_N400():
    _continuous_lambda1_check(N=400, seed=1, warmup=2000, acc=3000, g1_tol=0.06)


def _zero_exponent_check(seed, acc, zero_tol):
    N, g, dt, transient, warmup = 60, 3.0, 0.1, 500, 1000
    model = _autonomous_rate(N, g, seed=seed, dt=dt)
    T = transient + warmup + acc
    x = torch.zeros(T, 1, 0, dtype=F64)
    s0 = randn(1, N, seed=5)
    with torch.no_grad():
        res = lyapunov_spectrum(model, x, 4, qr_every=5, transient=transient, frame_warmup=warmup, state0=s0,
                                generator=gen(1))
        states = model.rollout(x, s0).states[:, 0]
    lam = res.exponents[0].numpy()
    # The orbit keeps moving (no fixed point reached), so the flow direction exists throughout ...
    speed = (states[1:] - states[:-1]).norm(dim=-1)[transient:] / dt
    assert speed.min() > 0.1
    # ... and it is chaotic: lambda_1 clearly positive.
    assert lam[0] > 3 * zero_tol
    # Exactly one exponent at 0 (the flow direction). zero_tol: finite-time fluctuation of a neutral
    # exponent ~ O(1/T) (observed 4e-3 after 200 time units, 1e-3 after 1000) plus a small Euler bias.
    near = np.abs(lam) < zero_tol
    assert near.sum() == 1, lam
    assert np.abs(lam[~near]).min() > 3 * zero_tol, lam


def test_continuous_time_chaotic_network_has_a_zero_exponent():
    _zero_exponent_check(seed=0, acc=4000, zero_tol=0.008)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 5])
def test_continuous_time_chaotic_network_has_a_zero_exponent_long(seed):
    _zero_exponent_check(seed=seed, acc=10000, zero_tol=0.004)


# --------------------------------------------------------------------------------------------------
# 5. Agreement with the brute-force (two-trajectory) exponent
# --------------------------------------------------------------------------------------------------


def _qr_vs_bruteforce(model, n_in, T, transient, warmup, B=2, input_scale=1.0):
    x = randn(T, B, n_in, seed=20, scale=input_scale)
    s0 = model.initial_state(B, random=True, generator=gen(21))
    with torch.no_grad():
        qr = lyapunov_spectrum(model, x, 2, transient=transient, frame_warmup=warmup, state0=s0, generator=gen(22))
        bf = max_lyapunov_bruteforce(model, x, transient=transient, warmup=warmup, state0=s0, generator=gen(23))
    return qr.exponents[:, 0], bf


def test_lambda1_matches_bruteforce_rate():
    model = RateRNN(3, 32, 1, g=3.0, input_scale=0.5, generator=gen(0), dtype=F64)
    qr, bf = _qr_vs_bruteforce(model, 3, T=600, transient=100, warmup=100)
    assert (bf > 0.05).all()  # chaotic: a relative tolerance is meaningful
    # 3%: both follow the same trajectory and converge to the same leading direction; the difference is
    # the O(1/T) alignment transient of frame vs perturbation (observed ~0.1%).
    torch.testing.assert_close(qr, bf, rtol=0.03, atol=0)


def test_lambda1_matches_bruteforce_smooth_spiking():
    # smooth=True replaces the Heaviside forward by the surrogate primitive and detach_reset=False keeps
    # the reset in the graph, so the surrogate tangent map is the exact Jacobian of the step.
    model = SpikingRNN(3, 32, 1, g=8.0, beta=0.8, surrogate=Surrogate("sigmoid", scale=5.0), smooth=True,
                       detach_reset=False, input_scale=0.5, generator=gen(0), dtype=F64)
    qr, bf = _qr_vs_bruteforce(model, 3, T=800, transient=100, warmup=100)
    assert (bf > 0.02).all()
    # Same reasoning as for the rate network (exact Jacobian, same trajectory): only the O(1/T) alignment
    # transients differ; eps = 1e-8 keeps the perturbation linear (curvature ~ scale^2 = 25).
    torch.testing.assert_close(qr, bf, rtol=0.03, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["rate_dt0.5", "lif_atan", "cuba_sigmoid"])
def test_lambda1_matches_bruteforce_long(kind):
    if kind == "rate_dt0.5":
        model = RateRNN(3, 64, 1, g=5.0, dt=0.5, input_scale=0.2, generator=gen(1), dtype=F64)
    elif kind == "lif_atan":
        model = SpikingRNN(3, 48, 1, g=12.0, beta=0.8, surrogate=Surrogate("atan", scale=2.0), smooth=True,
                           detach_reset=False, input_scale=0.5, generator=gen(1), dtype=F64)
    else:
        model = SpikingRNN(3, 32, 1, neuron="cuba", g=8.0, beta=0.8, alpha=0.5,
                           surrogate=Surrogate("sigmoid", scale=5.0), smooth=True, detach_reset=False,
                           input_scale=0.5, generator=gen(1), dtype=F64)
    # Inputs of unit scale; the rate net has input_scale=0.2 so that it stays chaotic.
    qr, bf = _qr_vs_bruteforce(model, 3, T=3000, transient=200, warmup=300)
    assert (bf > 0.03).all()  # chaotic, lambda_1 well away from 0 so a relative tolerance makes sense
    torch.testing.assert_close(qr, bf, rtol=0.01, atol=0)  # longer window: O(1/T) term ~4x smaller


def test_bruteforce_heaviside_lif_detached_reset_is_log_beta():
    # With the Heaviside forward and a detached subtract reset, the true Jacobian between spike flips is
    # beta I: a 1e-8 perturbation shrinks by exactly beta per step, spikes or not.
    beta, theta, eps = 0.85, 1.0, 1e-8
    model = SpikingRNN(3, 24, 1, beta=beta, threshold=theta, g=2.0, input_scale=1.0, smooth=False,
                       detach_reset=True, reset="subtract", generator=gen(4), dtype=F64)
    T, B = 300, 2
    x = randn(T, B, 3, seed=5).abs()
    s0 = model.initial_state(B, random=True, generator=gen(6))
    with torch.no_grad():
        U = model.rollout(x, s0).states
        bf = max_lyapunov_bruteforce(model, x, eps=eps, transient=10, state0=s0, generator=gen(7))
    # Preconditions: the network spikes (so this is not the trivial subthreshold case), and no membrane
    # came within 100 eps of threshold, so the perturbed copy (|dU| <= eps) cannot flip a spike.
    assert (U > theta).double().mean() > 0.02
    assert (U - theta).abs().min() > 100 * eps
    # Tolerance: rounding of the difference of two O(1) states, ~1e-16/1e-8 = 1e-8 relative per step.
    torch.testing.assert_close(bf, torch.full_like(bf, math.log(beta)), rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# 6. qr_every, batch independence, reproducibility
# --------------------------------------------------------------------------------------------------


def _chaotic_rate(N=12, seed=3):
    return RateRNN(3, N, 1, g=2.5, input_scale=0.5, generator=gen(seed), dtype=F64)


def _spiking(N=12, seed=3, neuron="lif"):
    return SpikingRNN(3, N, 1, neuron=neuron, g=3.0, beta=0.8, input_scale=1.0, generator=gen(seed), dtype=F64)


@pytest.mark.parametrize("make", [_chaotic_rate, _spiking], ids=["rate", "lif"])
def test_qr_every_1_and_5_agree(make):
    model = make()
    D = model.state_dim
    # 205 - 20 - 32 = 153 accumulated steps; 5 divides neither the warmup nor the window, so the closing
    # QRs of both phases are exercised.
    x = randn(205, 2, 3, seed=30)
    s0 = model.initial_state(2, random=True, generator=gen(31))
    with torch.no_grad():
        a = lyapunov_spectrum(model, x, 6, qr_every=1, transient=20, frame_warmup=32, state0=s0, generator=gen(32))
        b = lyapunov_spectrum(model, x, 6, qr_every=5, transient=20, frame_warmup=32, state0=s0, generator=gen(32))
    assert D >= 6 and b.qr_every == 5 and b.history.shape[0] == math.ceil(153 / 5)
    # The product of triangular R factors has diagonal = product of diagonals and QR is unique up to
    # signs, so both schedules give the same numbers up to float64 rounding (amplified at most by
    # exp((lambda_1 - lambda_6) * 5) between re-orthonormalisations).
    torch.testing.assert_close(a.exponents, b.exponents, rtol=0, atol=1e-10)


def _fixed_frames(B, D, k):
    return torch.linalg.qr(torch.randn(B, D, k, generator=gen(99), dtype=F64)).Q


@pytest.mark.parametrize("make", [
    lambda: RateRNN(3, 10, 1, g=0.9, input_scale=0.5, generator=gen(3), dtype=F64),
    lambda: _spiking(10),
    lambda: _spiking(6, neuron="cuba"),
], ids=["rate", "lif", "cuba"])
def test_single_trajectory_equals_same_trajectory_in_batch(make, monkeypatch):
    # The initial frame is drawn per batch from the generator, so a lone trajectory and a batched one would
    # start from different frames. Pin the frame per batch index to test that batch elements do not
    # interact anywhere in the estimator (QR, normalisation, guards, sorting).
    # Networks are non-chaotic / spike-driven so float rounding of batched vs. single matmuls cannot be
    # amplified into different trajectories.
    model = make()
    D, k, B = model.state_dim, 4, 3
    frames = _fixed_frames(B, D, k)
    rows = {"which": slice(0, B)}  # batch elements whose frames the next call receives

    def fake_frame(batch, dim, kk, **kw):
        Q = frames[rows["which"]]
        assert Q.shape == (batch, dim, kk)
        return Q.clone()

    monkeypatch.setattr(lyap_mod, "orthonormal_frame", fake_frame)
    x = randn(120, B, 3, seed=40)
    s0 = model.initial_state(B, random=True, generator=gen(41))
    with torch.no_grad():
        full = lyapunov_spectrum(model, x, k, qr_every=2, transient=10, frame_warmup=20, state0=s0)
        for b in range(B):
            rows["which"] = slice(b, b + 1)
            one = lyapunov_spectrum(model, x[:, b:b + 1], k, qr_every=2, transient=10, frame_warmup=20,
                                    state0=s0[b:b + 1])
            # Tolerance: only BLAS rounding differences between batched and single products.
            torch.testing.assert_close(one.exponents[0], full.exponents[b], rtol=0, atol=1e-12)
            torch.testing.assert_close(one.history[:, 0], full.history[:, b], rtol=0, atol=1e-12)
    # The elements differ from each other, so the comparison above is not vacuous.
    assert (full.exponents[0] - full.exponents[1]).abs().max() > 1e-4


@pytest.mark.parametrize("make", [_chaotic_rate, _spiking], ids=["rate", "lif"])
def test_same_generator_seed_reproduces_exactly(make):
    model = make()
    x = randn(80, 2, 3, seed=50)

    def run(seed, global_seed):
        torch.manual_seed(global_seed)  # must not matter: only the generator is used
        with torch.no_grad():
            return lyapunov_spectrum(model, x, 4, transient=5, frame_warmup=10, generator=gen(seed))

    a, b, c = run(7, 0), run(7, 12345), run(8, 0)
    assert torch.equal(a.exponents, b.exponents) and torch.equal(a.history, b.history)
    # A different seed (different random state0 and frame) gives a different finite-time estimate.
    assert not torch.allclose(a.exponents, c.exponents)
    bf1 = max_lyapunov_bruteforce(model, x, transient=5, generator=gen(7))
    bf2 = max_lyapunov_bruteforce(model, x, transient=5, generator=gen(7))
    assert torch.equal(bf1, bf2)


# --------------------------------------------------------------------------------------------------
# 7. LIF with a compact surrogate and subthreshold input: D = beta I
# --------------------------------------------------------------------------------------------------


TRIANGLE = Surrogate("triangle", scale=0.3)  # scale * relu(1 - |U - theta|): zero for U <= theta - 1


def _subthreshold_drive(model, level, beta):
    """Bias and small positive input weights that hold every membrane near ``level`` (< theta - 1).

    The fixed point of ``U <- beta U + b + W_in x`` is ``(b + W_in x) / (1 - beta)``: the bias puts it at
    ``level`` and the input (weights <= 0.01 (1 - beta), x in [0, 1)) adds at most 0.03.
    """
    N = model.n_hidden
    leak = 1.0 - torch.as_tensor(beta, dtype=F64).expand(N)
    with torch.no_grad():
        model.bias.copy_(level * leak)
        model.weight_in.copy_(torch.rand(N, model.n_in, generator=gen(61), dtype=F64) * 0.01 * leak.unsqueeze(-1))


@pytest.mark.parametrize("per_neuron,k", [(False, 8), (True, 8), (True, 3)],
                         ids=["scalar_beta", "per_neuron_beta", "per_neuron_beta_k3"])
def test_lif_triangle_subthreshold_exponents_are_log_beta(per_neuron, k):
    N, theta, T, B = 8, 2.0, 400, 2
    beta = torch.linspace(0.5, 0.95, N, dtype=F64) if per_neuron else 0.9
    model = SpikingRNN(3, N, 1, beta=beta, threshold=theta, surrogate=TRIANGLE, g=1.5, generator=gen(60), dtype=F64)
    # Membranes are driven up to ~0.85-0.88, just below the edge theta - 1 = 1 of the surrogate's support, so
    # the test also pins down where that support ends.
    _subthreshold_drive(model, 0.85, beta)
    x = torch.rand(T, B, 3, generator=gen(62), dtype=F64)
    s0 = torch.rand(B, N, generator=gen(63), dtype=F64) * 0.5
    with torch.no_grad():
        U = model.rollout(x, s0).states
        res = lyapunov_spectrum(model, x, k, transient=0, frame_warmup=200, state0=s0, generator=gen(64))
    # Precondition: no membrane entered the surrogate's support (so D = beta I exactly), but came close.
    assert U.max() < theta - 1.0 and s0.max() < theta - 1.0
    assert U[100:].min() > 0.8
    if per_neuron:
        expected = torch.sort(torch.log(beta), descending=True).values[:k]
        # D = diag(beta): the frame converges with the worst neighbouring ratio 0.886/0.95 ~ 0.93, and
        # 0.93^200 ~ 1e-6 residual misalignment enters only the first accumulated steps (O(1e-6 / T)).
    else:
        expected = torch.full((k,), math.log(0.9), dtype=F64)
    for b in range(B):
        torch.testing.assert_close(res.exponents[b], expected, rtol=0, atol=1e-6)


def test_cuba_triangle_subthreshold_exponents_are_log_beta_and_log_alpha():
    # Current-based neuron below threshold: d(syn, mem)/d(syn, mem) = [[alpha I, 0], [alpha I, beta I]]
    # (block lower triangular), so the 2N exponents are N x log(beta) followed by N x log(alpha).
    N, theta, alpha, beta, T, B = 5, 2.0, 0.5, 0.8, 300, 2
    model = SpikingRNN(3, N, 1, neuron="cuba", alpha=alpha, beta=beta, threshold=theta, surrogate=TRIANGLE,
                       g=1.5, generator=gen(65), dtype=F64)
    # mem fixed point = syn / (1 - beta) = drive / ((1 - alpha)(1 - beta)): hold it near 0.85.
    _subthreshold_drive(model, 0.85 * (1.0 - alpha), beta)
    x = torch.rand(T, B, 3, generator=gen(66), dtype=F64)
    s0 = torch.zeros(B, 2 * N, dtype=F64)
    with torch.no_grad():
        mem = model.rollout(x, s0).states[..., N:]
        res = lyapunov_spectrum(model, x, 2 * N, frame_warmup=100, state0=s0, generator=gen(67))
    assert mem.max() < theta - 1.0 and mem[100:].min() > 0.5
    expected = torch.tensor([math.log(beta)] * N + [math.log(alpha)] * N, dtype=F64)
    # Frame convergence ratio alpha / beta = 0.625 per step: fully settled after 100 steps.
    for b in range(B):
        torch.testing.assert_close(res.exponents[b], expected, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# 8. Gradients through the QR chain
# --------------------------------------------------------------------------------------------------


def _with_weight(model, W, frozen_step_params=None):
    """The model protocol with ``weight_rec`` replaced by ``W`` (a free tensor for gradcheck).

    ``frozen_step_params`` (optional) makes the *state update* use fixed parameters while the tangent map
    uses ``W``: exponents along a trajectory that does not depend on ``W``.
    """
    base = model.params()
    step = model.step_function
    if frozen_step_params is not None:
        def step(x, s, p, _f=frozen_step_params, _s=model.step_function):  # noqa: E306
            return _s(x, s, _f)
    return types.SimpleNamespace(step_function=step, tangent_function=model.tangent_function,
                                 initial_state=model.initial_state, state_dim=model.state_dim, n_in=model.n_in,
                                 dt=model.dt, params=lambda: base._replace(weight_rec=W))


def _grad_setup(kind):
    if kind == "rate":
        model = RateRNN(2, 4, 1, g=1.5, generator=gen(70), dtype=F64)
    else:
        model = SpikingRNN(2, 4, 1, g=2.0, beta=0.8, surrogate=Surrogate("sigmoid", scale=2.0), smooth=True,
                           detach_reset=False, generator=gen(70), dtype=F64)
    x = randn(12, 2, 2, seed=71)
    s0 = model.initial_state(2, random=True, generator=gen(72))
    return model, x, s0


@pytest.mark.parametrize("kind", ["rate", "smooth_spiking"])
@pytest.mark.parametrize("qr_every", [1, 3])
def test_gradcheck_exponents_wrt_weight_rec(kind, qr_every):
    model, x, s0 = _grad_setup(kind)
    W0 = model.weight_rec.detach().clone().requires_grad_(True)

    # transient = frame_warmup = 0: by design, gradients flow only through the accumulation window (the
    # state and frame entering it are constants), so only then is the estimate the full function of W
    # that finite differences see. The truncation itself is tested below.
    def f(W):
        return lyapunov_spectrum(_with_weight(model, W), x, 2, qr_every=qr_every, state0=s0,
                                 generator=gen(73)).exponents

    out = f(W0)
    # Sorting is only differentiable away from ties: make sure the 2 exponents are well separated.
    assert ((out[:, 0] - out[:, 1]).abs() > 1e-3).all()
    assert torch.autograd.gradcheck(f, (W0,), eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("kind", ["rate", "smooth_spiking"])
def test_gradcheck_through_transient_and_warmup(kind):
    # grad_through_transient=True: the exponents are then the full function of W, transient and frame
    # warm-up included, so finite differences must agree with them too.
    model, x, s0 = _grad_setup(kind)

    def f(W):
        return lyapunov_spectrum(_with_weight(model, W), x, 2, qr_every=2, transient=2, frame_warmup=3,
                                 state0=s0, generator=gen(73), grad_through_transient=True).exponents

    assert torch.autograd.gradcheck(f, (model.weight_rec.detach().clone().requires_grad_(True),), eps=1e-6,
                                    atol=1e-6, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["rate_dt0.5", "cuba_smooth", "lif_smooth_zero_reset"])
def test_gradcheck_larger(kind):
    if kind == "rate_dt0.5":
        model = RateRNN(2, 8, 1, g=2.0, dt=0.5, generator=gen(74), dtype=F64)
    elif kind == "cuba_smooth":
        model = SpikingRNN(2, 4, 1, neuron="cuba", g=3.0, beta=0.8, alpha=0.6, surrogate=Surrogate("atan", scale=1.0),
                           smooth=True, detach_reset=False, generator=gen(74), dtype=F64)
    else:
        model = SpikingRNN(2, 6, 1, g=3.0, beta=0.8, reset="zero", surrogate=Surrogate("sigmoid", scale=2.0),
                           smooth=True, detach_reset=False, generator=gen(74), dtype=F64)
    x = randn(30, 2, 2, seed=75)
    s0 = model.initial_state(2, random=True, generator=gen(76))

    def f(W):
        return lyapunov_spectrum(_with_weight(model, W), x, 3, qr_every=2, transient=3, frame_warmup=4,
                                 state0=s0, generator=gen(77), grad_through_transient=True).exponents

    W0 = model.weight_rec.detach().clone().requires_grad_(True)
    out = f(W0)
    assert (out[:, :-1] - out[:, 1:]).abs().min() > 1e-3  # no ties, sorting is differentiable
    assert torch.autograd.gradcheck(f, (W0,), eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("kind", ["rate", "smooth_spiking"])
def test_detach_state_same_values_local_gradient(kind):
    model, x, s0 = _grad_setup(kind)
    W0 = model.weight_rec.detach().clone()

    def run(detach, wrapper_W=None, frozen=None):
        W = W0.clone().requires_grad_(True)
        m = _with_weight(model, W, frozen_step_params=frozen)
        res = lyapunov_spectrum(m, x, 2, state0=s0, generator=gen(73), detach_state=detach)
        (grad,) = torch.autograd.grad(res.exponents[:, 0].sum() + 0.5 * res.exponents[:, 1].sum(), W)
        return res.exponents.detach(), grad

    full_val, full_grad = run(False)
    loc_val, loc_grad = run(True)
    # Identical values: detach_state only changes the autograd graph.
    torch.testing.assert_close(loc_val, full_val, rtol=0, atol=1e-14)
    # Different gradients: the local form drops the dependence of the trajectory on W.
    assert (loc_grad - full_grad).norm() > 1e-3 * full_grad.norm()
    # Oracle for the local gradient: exponents along a trajectory frozen at W0 (the state update reads a
    # constant copy of the parameters, the tangent map reads W) have exactly the local gradient ...
    frozen = model.params()._replace(weight_rec=W0)
    fr_val, fr_grad = run(False, frozen=frozen)
    torch.testing.assert_close(fr_val, full_val, rtol=0, atol=1e-14)
    torch.testing.assert_close(loc_grad, fr_grad, rtol=1e-10, atol=1e-12)

    # ... and that frozen-trajectory gradient is correct by finite differences.
    def f(W):
        m = _with_weight(model, W, frozen_step_params=frozen)
        return lyapunov_spectrum(m, x, 2, state0=s0, generator=gen(73)).exponents

    assert torch.autograd.gradcheck(f, (W0.clone().requires_grad_(True),), eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("kind", ["rate", "smooth_spiking"])
def test_no_gradient_through_the_transient(kind):
    # Contract: the transient only moves the state; the accumulation window starts from a constant state.
    # So (transient=4 from s0) == (no transient, starting from the state reached after 4 steps), values
    # and gradients; the frame is the generator's first draw in both runs (state0 is given).
    model, x, s0 = _grad_setup(kind)
    t0 = 4
    with torch.no_grad():
        s_t0 = model.rollout(x[:t0], s0).states[-1]
    W0 = model.weight_rec.detach().clone()
    out = []
    for xx, ss, tr in ((x, s0, t0), (x[t0:], s_t0, 0)):
        W = W0.clone().requires_grad_(True)
        res = lyapunov_spectrum(_with_weight(model, W), xx, 2, transient=tr, state0=ss, generator=gen(73))
        out.append((res.exponents.detach(), torch.autograd.grad(res.exponents.sum(), W)[0]))
    torch.testing.assert_close(out[0][0], out[1][0], rtol=0, atol=1e-13)
    torch.testing.assert_close(out[0][1], out[1][1], rtol=1e-10, atol=1e-12)
    assert out[0][1].abs().max() > 1e-3


def test_gradients_reach_module_parameters():
    # Through the real module (params() built from nn.Parameters), not only through a free tensor.
    model, x, s0 = _grad_setup("rate")
    res = lyapunov_spectrum(model, x, 2, transient=2, frame_warmup=3, state0=s0, generator=gen(73))
    res.exponents[:, 0].sum().backward()
    for name in ("weight_rec", "weight_in"):
        grad = getattr(model, name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().max() > 0
    assert res.history.requires_grad is False  # history is detached


# --------------------------------------------------------------------------------------------------
# 9. Bad input -> clear errors
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def small_rate():
    return RateRNN(3, 5, 1, g=1.5, generator=gen(80), dtype=F64)


@pytest.mark.parametrize("kwargs,match", [
    (dict(k=6), r"k=6.*D=5"),
    (dict(k=0), r"k must be an int >= 1"),
    (dict(k=2.0), r"k must be an int"),
    (dict(qr_every=0), r"qr_every must be an int >= 1"),
    (dict(qr_every=2.0), r"qr_every must be an int"),
    (dict(qr_every=True), r"qr_every must be an int"),
    (dict(transient=-1), r"transient must be an int >= 0"),
    (dict(frame_warmup=-3), r"frame_warmup must be an int >= 0"),
    (dict(transient=10, frame_warmup=10), r"T=20.*nothing is left"),
    (dict(transient=20), r"T=20"),
    (dict(state0=torch.zeros(2, 4, dtype=F64)), r"state0 must be a tensor of shape \[B, D\] = \[2, 5\]"),
    (dict(state0=torch.zeros(5, dtype=F64)), r"state0"),
    (dict(state0=torch.full((2, 5), float("nan"), dtype=F64)), r"state0 contains NaN"),
])
def test_bad_arguments_raise_value_error(small_rate, kwargs, match):
    kw = dict(k=2)
    kw.update(kwargs)
    x = torch.zeros(20, 2, 3, dtype=F64)
    with pytest.raises(ValueError, match=match):
        lyapunov_spectrum(small_rate, x, **kw)


@pytest.mark.parametrize("x,match", [
    (torch.zeros(20, 3, dtype=F64), r"\[T, B, n_in\]"),
    (torch.zeros(20, 2, 1, 3, dtype=F64), r"\[T, B, n_in\]"),
    (torch.zeros(20, 2, 4, dtype=F64), r"n_in=3"),
    (torch.zeros(0, 2, 3, dtype=F64), r"at least one time step"),
    (torch.zeros(20, 2, 3, dtype=torch.int64), r"floating point"),
])
def test_bad_inputs_raise_value_error(small_rate, x, match):
    with pytest.raises(ValueError, match=match):
        lyapunov_spectrum(small_rate, x, 2)
    with pytest.raises(ValueError, match=match):
        max_lyapunov_bruteforce(small_rate, x)


def test_nan_inputs_raise_value_error(small_rate):
    x = torch.zeros(20, 2, 3, dtype=F64)
    x[7, 1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"NaN.*\[7, 1, 2\]"):
        lyapunov_spectrum(small_rate, x, 2)
    x[7, 1, 2] = float("inf")
    with pytest.raises(ValueError, match=r"NaN or inf"):
        max_lyapunov_bruteforce(small_rate, x)


def test_bruteforce_bad_arguments(small_rate):
    x = torch.zeros(20, 2, 3, dtype=F64)
    with pytest.raises(ValueError, match="eps must be positive"):
        max_lyapunov_bruteforce(small_rate, x, eps=0.0)
    with pytest.raises(ValueError, match="transient"):
        max_lyapunov_bruteforce(small_rate, x, transient=15, warmup=5)
    with pytest.raises(ValueError, match="warmup must be an int >= 0"):
        max_lyapunov_bruteforce(small_rate, x, warmup=-1)


def test_not_a_model_raises_type_error():
    with pytest.raises(TypeError, match="not a surroflos dynamical model"):
        lyapunov_spectrum(object(), torch.zeros(5, 1, 1), 1)


def _diverging_relu_net(dtype, device="cpu"):
    # A ReLU rate net with a huge gain and no saturation grows without bound until it overflows.
    N, T = 8, 200
    model = RateRNN(1, N, 1, g=1e3, nonlinearity="relu", generator=gen(90), dtype=dtype).to(device)
    x = torch.ones(T, 1, 1, dtype=dtype, device=device)
    s0 = torch.rand(1, N, generator=gen(91), dtype=dtype).to(device)
    with torch.no_grad():
        states = model.rollout(x, s0).states[:, 0]
    bad = (~torch.isfinite(states).all(dim=-1)).nonzero()
    assert len(bad), "precondition: the network must diverge within T steps"
    return model, x, s0, int(bad[0])  # independent oracle: first step whose state is not finite


@pytest.mark.numerics
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("where", ["window", "window_qr_every_4", "warmup_qr_every_5", "transient"])
def test_diverging_network_raises_nonfinite_error_naming_the_step(dtype, where):
    model, x, s0, t_bad = _diverging_relu_net(dtype)
    # The divergence happens inside the accumulation window, between two QRs, inside the frame warm-up, or
    # inside the transient: the message must name the step where the state stopped being finite.
    kw = {"window": dict(), "window_qr_every_4": dict(qr_every=4, transient=2),
          "warmup_qr_every_5": dict(qr_every=5, transient=3, frame_warmup=t_bad + 4),
          "transient": dict(transient=t_bad + 2)}[where]
    with pytest.raises(NonFiniteError, match=rf"state became NaN/inf at step {t_bad}\b") as info:
        lyapunov_spectrum(model, x, 2, state0=s0, generator=gen(92), **kw)
    assert isinstance(info.value, ValueError)
    with pytest.raises(NonFiniteError, match="step"):
        max_lyapunov_bruteforce(model, x, state0=s0, generator=gen(92))


def test_a_step_that_fails_on_the_diverged_state_is_reported_as_the_divergence(monkeypatch):
    # The finiteness flags are read every CHECK_EVERY entries on the CPU: a model whose step raises when fed a
    # non-finite state (before the next read) must still produce the divergence error naming the step.
    model, x, s0, t_bad = _diverging_relu_net(torch.float64)
    step = model.step_function

    def strict_step(x_t, h, p):
        if not bool(torch.isfinite(h).all()):
            raise RuntimeError("strict_step: non-finite state")
        return step(x_t, h, p)

    strict = types.SimpleNamespace(**{n: getattr(model, n) for n in ("n_in", "state_dim", "dt", "params",
                                                                      "initial_state", "tangent_function")})
    strict.step_function = strict_step
    monkeypatch.setattr(lyap_mod._FiniteGuard, "CHECK_EVERY", 10**6)  # the step fails before any read
    for kw in (dict(), dict(transient=t_bad + 3)):
        with pytest.raises(NonFiniteError, match=rf"state became NaN/inf at step {t_bad}\b"):
            lyapunov_spectrum(strict, x, 2, state0=s0, generator=gen(92), **kw)


@pytest.mark.parametrize("kw", [dict(), dict(qr_every=3, transient=2), dict(transient=150)])
def test_deferred_finiteness_checks_report_the_same_step(monkeypatch, kw):
    # The accelerators' path (flags read only at the end) run on the CPU: the same step is named.
    model, x, s0, t_bad = _diverging_relu_net(torch.float64)
    init = lyap_mod._FiniteGuard.__init__

    def deferred(self, *a, **k):
        init(self, *a, **k)
        self.eager = False
    monkeypatch.setattr(lyap_mod._FiniteGuard, "__init__", deferred)
    with pytest.raises(NonFiniteError, match=rf"state became NaN/inf at step {t_bad}\b"):
        lyapunov_spectrum(model, x, 2, state0=s0, generator=gen(92), **kw)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="deferred (no-sync) finiteness checks run on accelerators")
def test_diverging_network_on_accelerator_reports_the_same_step():
    model, x, s0, t_bad = _diverging_relu_net(torch.float32, device="cuda")
    with pytest.raises(NonFiniteError, match=rf"state became NaN/inf at step {t_bad}\b"):
        lyapunov_spectrum(model, x, 2, qr_every=3, transient=2, state0=s0, generator=gen(92))


@pytest.mark.numerics
def test_too_large_qr_every_overflows_float32_with_hint():
    # tanh keeps the state bounded; only the unnormalised tangent vectors overflow: lambda_1 ~ 0.45 per
    # step, so 2 x 200 steps without re-orthonormalisation grow them by ~e^180 >> float32 max ~ e^88.
    model = RateRNN(2, 32, 1, g=8.0, input_scale=0.0, generator=gen(93), dtype=torch.float32)
    x = torch.randn(800, 1, 2, generator=gen(94), dtype=torch.float32)
    with torch.no_grad():
        ok = lyapunov_spectrum(model, x, 4, qr_every=1, transient=10, generator=gen(95))
        assert torch.isfinite(ok.exponents).all() and ok.exponents[0, 0] > 0.3
        with pytest.raises(NonFiniteError, match=r"qr_every=200") as info:
            lyapunov_spectrum(model, x, 4, qr_every=200, transient=10, generator=gen(95))
    assert isinstance(info.value, ValueError)
    assert "tangent frame" in str(info.value)


# --------------------------------------------------------------------------------------------------
# 10. Result helpers
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spectrum,expected", [
    ([0.5, 0.1, -0.3, -1.0], 3.0 + 0.3 / 1.0),  # partial sums 0.5, 0.6, 0.3, -0.7 -> j = 3
    ([-1.0, 0.5, -0.3, 0.1], 3.3),  # unsorted input is sorted first
    ([1.0, -0.5, -2.0], 2.0 + 0.5 / 2.0),  # partial sums 1.0, 0.5, -1.5 -> j = 2
    ([0.2, -0.5, -1.0], 1.0 + 0.2 / 0.5),  # j = 1
    ([0.5, -0.5, -1.0], 2.0),  # partial sum exactly 0 counts as non-negative: j = 2, + 0/1
    ([-0.1, -0.5], 0.0),  # all negative
    ([0.5, 0.2, -0.1], 3.0),  # every partial sum positive: returns k
    ([0.3], 1.0),
    ([-0.3], 0.0),
])
def test_kaplan_yorke_dimension_hand_computed(spectrum, expected):
    got = kaplan_yorke_dimension(torch.tensor(spectrum, dtype=F64))
    assert got.shape == ()
    assert abs(float(got) - expected) < 1e-12


def test_kaplan_yorke_and_ks_batched():
    spectra = torch.tensor([[0.5, 0.1, -0.3, -1.0], [-0.1, -0.2, -0.3, -0.4], [1.0, 0.5, 0.2, -0.1]], dtype=F64)
    torch.testing.assert_close(kaplan_yorke_dimension(spectra), torch.tensor([3.3, 0.0, 4.0], dtype=F64))
    torch.testing.assert_close(ks_entropy(spectra), torch.tensor([0.6, 0.0, 1.7], dtype=F64))
    assert float(ks_entropy(torch.tensor([0.5, 0.1, -0.3]))) == pytest.approx(0.6)


def test_result_statistics_and_history():
    model = _chaotic_rate()
    B, k, T, transient, warmup, qe = 3, 4, 73, 5, 10, 5
    n_acc = T - transient - warmup  # 58 = 11 * 5 + 3: 12 QRs, the last one closing the window
    x = randn(T, B, 3, seed=100)
    s0 = model.initial_state(B, random=True, generator=gen(101))
    with torch.no_grad():
        res = lyapunov_spectrum(model, x, k, qr_every=qe, transient=transient, frame_warmup=warmup, state0=s0,
                                generator=gen(102))
    assert isinstance(res, LyapunovResult)
    assert res.steps == n_acc and res.qr_every == qe and res.dt == 1.0
    ex = res.exponents.numpy()
    assert (np.diff(ex, axis=-1) <= 0).all()  # descending
    np.testing.assert_allclose(res.mean().numpy(), ex.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(res.std().numpy(), ex.std(axis=0, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(res.kaplan_yorke_dimension().numpy(), kaplan_yorke_dimension(res.exponents).numpy())
    np.testing.assert_allclose(res.ks_entropy().numpy(), np.clip(ex, 0, None).sum(-1), rtol=1e-13)
    n_qr = math.ceil(n_acc / qe)
    assert res.history.shape == (n_qr, B, k)
    torch.testing.assert_close(res.history[-1], res.exponents, rtol=0, atol=1e-15)
    expected_times = [qe * (j + 1) for j in range(n_qr - 1)] + [n_acc]
    np.testing.assert_allclose(res.history_times.numpy(), expected_times)
    # Each history row is the estimate of a run that stops at that time (same state0, frame, seed).
    for j in (0, 4, n_qr - 2):
        with torch.no_grad():
            short = lyapunov_spectrum(model, x[:transient + warmup + expected_times[j]], k, qr_every=qe,
                                      transient=transient, frame_warmup=warmup, state0=s0, generator=gen(102))
        torch.testing.assert_close(res.history[j], short.exponents, rtol=0, atol=1e-13)
    # A single trajectory has zero spread.
    one = LyapunovResult(res.exponents[:1], 1.0, n_acc, qe, res.history[:, :1], res.history_times)
    assert torch.equal(one.std(), torch.zeros(k, dtype=F64))


def test_history_times_are_per_unit_time():
    model = _autonomous_rate(6, 0.5, seed=1, dt=0.25)
    x = torch.zeros(40, 1, 0, dtype=F64)
    with torch.no_grad():
        res = lyapunov_spectrum(model, x, 2, qr_every=4, transient=4, generator=gen(3))
    assert res.dt == 0.25 and res.steps == 36
    np.testing.assert_allclose(res.history_times.numpy(), 0.25 * np.arange(4, 37, 4))


@pytest.mark.numerics
def test_warns_when_qr_every_loses_the_small_directions():
    # Spread of the 12 leading exponents x qr_every far beyond -log(sqrt(eps)) in float32: must warn.
    net = RateRNN(1, 12, 1, g=1.5, dt=0.1, generator=torch.Generator().manual_seed(0))
    x = torch.randn(400, 2, 1, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), pytest.warns(RuntimeWarning, match="qr_every=200"):
        lyap_mod.lyapunov_spectrum(net, x, 12, qr_every=200, transient=100)


def test_no_precision_warning_at_safe_settings():
    net = RateRNN(1, 12, 1, g=1.5, dt=0.1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = torch.randn(400, 2, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            lyap_mod.lyapunov_spectrum(net, x, 12, qr_every=2, transient=100)


def test_linear_map_rejects_a_non_square_matrix():
    with pytest.raises(ValueError, match="square"):
        LinearMapModel(torch.zeros(2, 3))
