"""Exact Lyapunov spectra of event networks, from the single-spike Jacobians (no surrogate, no time step)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .network import EventNetwork, _int, _number

__all__ = ["EventLyapunovResult", "lyapunov_spectrum", "max_lyapunov_bruteforce", "kaplan_yorke_dimension",
           "ks_entropy"]

_HISTORY = 200  # running estimates kept for convergence plots


def kaplan_yorke_dimension(exponents: np.ndarray) -> float:
    """Kaplan-Yorke dimension ``j + sum_{i<=j} lambda_i / |lambda_{j+1}|`` of one spectrum (any order).

    ``j`` is the largest index with a non-negative partial sum (0 when ``lambda_1 < 0``); ``k`` when every partial
    sum of the ``k`` given exponents is non-negative (the dimension is at least ``k``). Same definition as
    :func:`surroflos.kaplan_yorke_dimension`.
    """
    lam = np.sort(np.asarray(exponents, dtype=np.float64))[::-1]
    csum = np.cumsum(lam)
    j = int((csum >= 0).sum())
    if j >= lam.size:
        return float(lam.size)
    partial = csum[j - 1] if j > 0 else 0.0
    return float(j + partial / abs(lam[j]))


def ks_entropy(exponents: np.ndarray) -> float:
    """Sum of the positive exponents (the Kolmogorov-Sinai entropy rate by Pesin's formula), in 1/s."""
    lam = np.asarray(exponents, dtype=np.float64)
    return float(lam[lam > 0].sum())


@dataclass
class EventLyapunovResult:
    """What :func:`lyapunov_spectrum` returns.

    Attributes:
        exponents: ``[k]`` float64, descending, in 1/s.
        rate: mean firing rate over the accumulation window, Hz.
        log_det_rate: time average of ``log|det D|`` over the window's spike Jacobians, 1/s: equals the sum of
            all ``N`` exponents (the sum rule), whatever ``k``.
        time: length of the accumulation window, s (from the last warm-up spike to the last spike).
        n_spikes: spikes in the window.
        qr_every: spikes between re-orthonormalisations.
        N: number of neurons.
        history: ``[n, k]`` running estimates after some of the QRs (at most 200, for convergence plots), and
            ``history_times`` their times since the window's start.
    """

    exponents: np.ndarray
    rate: float
    log_det_rate: float
    time: float
    n_spikes: int
    qr_every: int
    N: int
    history: np.ndarray = field(repr=False)
    history_times: np.ndarray = field(repr=False)

    @property
    def k(self) -> int:
        return int(self.exponents.size)

    def kaplan_yorke_dimension(self, neutral_tol: Optional[float] = None) -> float:
        """Kaplan-Yorke (Lyapunov) dimension of the attractor (at least ``k`` when every partial sum is >= 0).

        The time-shift direction is exactly neutral, but its estimate is zero only up to rounding and finite
        time (``~1e-12`` of the spectrum for a stable network), and its sign decides whether a stable network's
        dimension comes out 0 or 1. Exponents within ``neutral_tol`` of zero (default ``1e-6 max|lambda|``) are
        therefore counted as 0, which gives 1 (the trajectory) for a stable network.
        """
        lam = self.exponents.copy()
        tol = 1e-6 * float(np.abs(lam).max()) if neutral_tol is None else _number("neutral_tol", neutral_tol,
                                                                                  allow_zero=True)
        lam[np.abs(lam) <= tol] = 0.0
        return kaplan_yorke_dimension(lam)

    def ks_entropy(self) -> float:
        """Sum of the positive exponents in 1/s (an upper bound of, and for SRB measures equal to, the KS entropy)."""
        return ks_entropy(self.exponents)

    def sum_rule_error(self) -> float:
        """``|sum(exponents) - log_det_rate| / max(|log_det_rate|, 1e-300)`` (meaningful for ``k = N`` only)."""
        if self.k != self.N:
            raise ValueError(f"the sum rule needs all N = {self.N} exponents, this result has k = {self.k}")
        return abs(float(self.exponents.sum()) - self.log_det_rate) / max(abs(self.log_det_rate), 1e-300)


def _check_supported(net: EventNetwork) -> None:
    if not isinstance(net, EventNetwork):
        raise TypeError(f"net must be an EventNetwork, got {type(net).__name__}")
    if net.ei and net.neuron == "lif":
        raise ValueError("lyapunov_spectrum: excitatory kicks can lift a LIF neuron above threshold, which then "
                         "spikes at the same instant as the kicker; the Jacobian of such locked spikes is not "
                         "implemented (use neuron='theta' for ei=True, or ei=False)")


def lyapunov_spectrum(net: EventNetwork, k: Optional[int] = None, spikes_per_neuron: float = 100,
                      warmup_spikes_per_neuron: float = 20, qr_every: Optional[int] = None, *,
                      frame_warmup_spikes_per_neuron: Optional[float] = None, state0: Optional[np.ndarray] = None,
                      seed: Optional[int] = None, queue: str = "auto") -> EventLyapunovResult:
    """The ``k`` largest Lyapunov exponents of ``net`` (all ``N`` by default), exactly, from its spike Jacobians.

    Algorithm (the QR method on the exact tangent dynamics; Monteforte & Wolf 2010, Engelken et al. 2023):

    1. ``warmup_spikes_per_neuron * N`` spikes move the state alone, from ``state0`` (default
       ``net.initial_state()``).
    2. A random orthonormal frame ``Q [N, k]`` (seeded by ``seed``, default ``net.seed``) is carried for
       ``frame_warmup_spikes_per_neuron * N`` further spikes (default: as many as the warm-up), re-orthonormalised
       every ``qr_every`` spikes, so that it aligns with the leading directions; nothing is accumulated.
    3. Over the next ``spikes_per_neuron * N`` spikes, ``log|R_ii|`` of every QR (``numpy.linalg.qr``, and one at
       the end) is summed; ``lambda_i = sum log|R_ii| / time`` with the window's length in seconds.

    Tangent dynamics in phase coordinates (perturbations of the spike times, in any unit of phase): between
    spikes every phase advances at the same speed, so perturbations stay constant; across a spike of neuron
    ``j`` only the rows of its ``K`` targets change (the spiker's own phase perturbation is carried through the
    reset, since its reset time moves with it)::

        dphi_i' = D_i dphi_i + (1 - D_i) dphi_j,   D_i = F(V_i) / F(V_i + J_j)

    with ``V_i`` the target's voltage just before the kick and ``F`` the model's vector field ``tau dV/dt``
    (LIF: ``I - V``, theta: ``V^2 + iext``): a kick shifts a target's phase by an amount that depends on the phase
    through the phase transition curve, whose slope is ``D_i``; and since the kick arrives when ``j`` fires, a
    perturbation of ``j``'s spike time enters with weight ``1 - D_i``. Each spike costs ``O(K k)`` in the
    compiled loop. ``det D = prod D_i``: the time average of ``sum log D_i`` is :attr:`~EventLyapunovResult.
    log_det_rate`, which equals the sum of all N exponents (the sum rule, tested to 1e-9). The uniform shift of
    all phases (a shift in time) is invariant, ``D 1 = 1``: one exponent is exactly zero in the limit.

    Args:
        net: the network (``ei=True`` only with ``neuron="theta"``).
        k: number of exponents, ``1 <= k <= N`` (default ``N``).
        spikes_per_neuron: length of the accumulation window, in spikes per neuron (``> 0``).
        warmup_spikes_per_neuron: state transient, in spikes per neuron (``>= 0``).
        qr_every: spikes between QRs (default ``max(1, N // 4)``). Between two QRs the frame's columns grow
            apart like ``exp((lambda_1 - lambda_k) dt)``; a warning says when the smallest direction fell below
            ``sqrt(eps)`` of its column (lower ``qr_every`` then).
        frame_warmup_spikes_per_neuron: frame transient (default: ``warmup_spikes_per_neuron``).
        state0: initial phases ``[N]``.
        seed: seed of the initial frame.
        queue: the event queue, ``"heap"``, or for purely inhibitory networks ``"lazy"`` or ``"calendar"``;
            ``"auto"`` (default) the calendar when every kick is inhibitory, else the heap (as
            :meth:`EventNetwork.simulate`): the same exponents bit for bit. The calendar measured 1.0-1.3x the
            heap's speed here (N = 1e3-1e4, k = 1-100), where the tangent updates and QR take most of the time.

    Returns an :class:`EventLyapunovResult` (exponents in 1/s, descending).
    """
    _check_supported(net)
    N = net.N
    k = N if k is None else _int("k", k, 1)
    if k > N:
        raise ValueError(f"k={k} exponents requested but the state has N={N} dimensions")
    n_acc = int(round(_number("spikes_per_neuron", spikes_per_neuron) * N))
    if n_acc < 1:
        raise ValueError(f"spikes_per_neuron={spikes_per_neuron} gives no spike for N={N}")
    n_warm = int(round(_number("warmup_spikes_per_neuron", warmup_spikes_per_neuron, allow_zero=True) * N))
    fw = warmup_spikes_per_neuron if frame_warmup_spikes_per_neuron is None else frame_warmup_spikes_per_neuron
    n_frame = int(round(_number("frame_warmup_spikes_per_neuron", fw, allow_zero=True) * N))
    qr_every = max(1, N // 4) if qr_every is None else _int("qr_every", qr_every, 1)
    seed = net.seed if seed is None else _int("seed", seed, 0)

    if queue == "auto":
        queue = "calendar" if bool((net.jump <= 0).all()) else "heap"
    eng = net._engine(state0, queue=queue)
    if n_warm:
        eng.advance(n_warm)
    rng = np.random.default_rng([seed, 2])
    Q, _ = np.linalg.qr(rng.standard_normal((N, k)))
    Q = np.ascontiguousarray(Q)
    done = 0
    while done < n_frame:  # frame warm-up
        m = min(qr_every, n_frame - done)
        eng.advance(m, Q=Q)
        done += m
        Q = np.ascontiguousarray(np.linalg.qr(Q)[0])
    t_start = eng.time()
    acc = np.zeros(k)
    logdet = np.zeros(1)
    n_qr = -(-n_acc // qr_every)
    keep = max(1, n_qr // _HISTORY)
    hist, hist_t = [], []
    min_kept = math.inf
    done = 0
    q = 0
    while done < n_acc:
        m = min(qr_every, n_acc - done)
        eng.advance(m, Q=Q, logdet=logdet)
        done += m
        Qn, R = np.linalg.qr(Q)
        d = np.abs(np.diag(R))
        logd = np.log(d)
        min_kept = min(min_kept, float(np.min(logd - np.log(np.linalg.norm(Q, axis=0)))))
        acc += logd
        Q = np.ascontiguousarray(Qn)
        q += 1
        if q % keep == 0 or done == n_acc:
            elapsed = eng.time() - t_start
            if elapsed > 0:
                hist.append(acc / elapsed)
                hist_t.append(elapsed)
    elapsed = eng.time() - t_start
    if not np.isfinite(acc).all():
        raise FloatingPointError("lyapunov_spectrum: log|R_ii| became NaN/inf (a direction collapsed between "
                                 f"two QRs); lower qr_every={qr_every}")
    if min_kept < 0.5 * math.log(np.finfo(np.float64).eps):
        warnings.warn(f"lyapunov_spectrum: between two QRs the smallest tracked direction shrank to "
                      f"exp({min_kept:.1f}) of its column's length, below sqrt(eps); the smallest exponents lose "
                      f"accuracy to rounding. Lower qr_every={qr_every} or ask for fewer exponents k.",
                      RuntimeWarning, stacklevel=2)
    order = np.argsort(-acc)
    return EventLyapunovResult(
        exponents=acc[order] / elapsed, rate=n_acc / (N * elapsed), log_det_rate=float(logdet[0]) / elapsed,
        time=elapsed, n_spikes=n_acc, qr_every=qr_every, N=N,
        history=np.array([h[order] for h in hist]).reshape(len(hist), k), history_times=np.array(hist_t))


def _phase_difference(net: EventNetwork, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a - b`` on the phase circle (threshold and reset are one point): wrapped into ``[-1/2, 1/2)``."""
    d = a - b
    return d - np.floor(d + 0.5)


def max_lyapunov_bruteforce(net: EventNetwork, duration: float, *, interval: Optional[float] = None,
                            warmup_spikes_per_neuron: float = 20, eps: float = 1e-9,
                            remove_time_shift: bool = False, state0: Optional[np.ndarray] = None,
                            seed: Optional[int] = None) -> float:
    """Largest Lyapunov exponent (1/s) from two exact trajectories, renormalised every ``interval`` seconds.

    The oracle for :func:`lyapunov_spectrum`'s ``lambda_1``, sharing none of its tangent code: after the
    warm-up, a copy of the state is displaced by ``eps`` along a random direction of the phases; both are
    simulated exactly for ``interval`` (default ``tau_m``), their phase distance (wrapped on the circle) is
    measured, its log growth accumulated and the copy put back at distance ``eps`` along the new difference.

    ``remove_time_shift=True`` projects the uniform phase shift (a shift in time, neutral: exponent 0) out of
    the difference before each renormalisation, which gives the largest exponent of the remaining
    directions: for a stable network (LIF) the largest non-zero exponent, ``lambda_2`` of the spectrum.
    """
    if not isinstance(net, EventNetwork):
        raise TypeError(f"net must be an EventNetwork, got {type(net).__name__}")
    duration = _number("duration", duration)
    interval = net.tau_m if interval is None else _number("interval", interval)
    eps = _number("eps", eps)
    seed = net.seed if seed is None else _int("seed", seed, 0)
    eng = net._engine(state0)
    n_warm = int(round(_number("warmup_spikes_per_neuron", warmup_spikes_per_neuron, allow_zero=True) * net.N))
    if n_warm:
        eng.advance(n_warm)
    u = eng.phases()
    t = eng.time()
    rng = np.random.default_rng([seed, 3])
    v = rng.standard_normal(net.N)
    if remove_time_shift:
        v -= v.mean()
    v /= np.linalg.norm(v)
    big = 1 << 62
    total, elapsed = 0.0, 0.0
    steps = max(1, int(round(duration / interval)))
    for _ in range(steps):
        if net.neuron == "lif":
            pert = np.minimum(u + eps * v, 1.0)
        else:
            pert = np.mod(u + eps * v, 1.0)
            pert[pert >= 1.0] = 0.0  # mod of a tiny negative number rounds to 1
        a = _restart(net, u, t)
        b = _restart(net, pert, t)
        a.advance(big, t + interval)
        b.advance(big, t + interval)
        t += interval
        elapsed += interval
        u, ub = a.phases(), b.phases()
        d = _phase_difference(net, ub, u)
        if remove_time_shift:
            d -= d.mean()
        dist = float(np.linalg.norm(d))
        if dist == 0.0:
            raise FloatingPointError("max_lyapunov_bruteforce: the two trajectories merged (distance 0); raise eps")
        total += math.log(dist / eps)
        v = d / dist
    return total / elapsed


def _restart(net: EventNetwork, phases: np.ndarray, t: float):
    """An engine at phases ``phases`` whose clock reads ``t``."""
    eng = net._engine(phases)
    eng.g[1] = t
    return eng
