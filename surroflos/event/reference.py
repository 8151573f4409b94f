"""Plain reference of :mod:`surroflos.event`: a direct event simulation in voltages, O(N) per spike.

Written for clarity, not speed (numpy, one Python iteration per spike), and sharing no code with the compiled
loop of :mod:`surroflos.event._kernels` except the network's parameters and graph. At every spike:

1. every neuron's time to its next spike is computed from its voltage (LIF: ``tau log((I - V) / (I - 1))``;
   theta: ``(tau / s) (pi/2 - atan(V / s))``, ``s = sqrt(iext)``), and the smallest is taken;
2. every voltage is advanced by that time with the exact solution of its ODE (LIF: ``V <- I - (I - V)
   exp(-dt / tau)``; theta: ``V <- s tan(atan(V / s) + s dt / tau)``);
3. the spiker is reset (LIF: 0; theta: ``-inf``) and its targets are kicked, ``V <- V + J_j``.

:func:`jacobian` builds the dense ``N x N`` single-spike Jacobian in phase coordinates (the identity except
the targets' rows, ``D_ii = F(V_i) / F(V_i + J_j)`` and ``D_ij = 1 - D_ii``, with the model's vector field
``F``), and :func:`lyapunov_spectrum` multiplies a frame by it spike by spike and re-orthonormalises with
``numpy.linalg.qr``: the reference for :func:`surroflos.event.lyapunov_spectrum` on small networks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .network import EventNetwork

__all__ = ["simulate", "jacobian", "lyapunov_spectrum", "ReferenceRun"]


@dataclass
class ReferenceRun:
    """Spike times and ids, the voltages just before each spike (``pre_voltages [n, N]``, when asked for), the
    final voltages and the final time."""

    spike_times: np.ndarray
    spike_ids: np.ndarray
    pre_voltages: Optional[np.ndarray]
    final_voltages: np.ndarray
    t: float


def _time_to_spike(net: EventNetwork, V: np.ndarray) -> np.ndarray:
    if net.neuron == "lif":
        with np.errstate(divide="ignore", invalid="ignore"):
            T = net.tau_m * np.log((net.I - V) / (net.I - 1.0))
        return np.where(V >= 1.0, 0.0, T)  # above threshold (an excitatory kick): now
    s = math.sqrt(net.iext)
    return (net.tau_m / s) * (math.pi / 2 - np.arctan(V / s))


def _flow(net: EventNetwork, V: np.ndarray, dt: float) -> np.ndarray:
    if net.neuron == "lif":
        return net.I - (net.I - V) * math.exp(-dt / net.tau_m)
    s = math.sqrt(net.iext)
    return s * np.tan(np.arctan(V / s) + s * dt / net.tau_m)


def simulate(net: EventNetwork, n_spikes: int, *, voltages0: Optional[np.ndarray] = None, t_stop: float = math.inf,
             keep_pre_voltages: bool = False) -> ReferenceRun:
    """``n_spikes`` spikes (or until ``t_stop``) from ``voltages0`` (default: those of ``net.initial_state()``)."""
    V = net.voltages(net.initial_state()) if voltages0 is None else np.array(voltages0, dtype=np.float64)
    reset = 0.0 if net.neuron == "lif" else -np.inf
    times, ids, pre = [], [], []
    t = 0.0
    for _ in range(n_spikes):
        T = _time_to_spike(net, V)
        j = int(np.argmin(T))
        if t + T[j] > t_stop:
            V = _flow(net, V, t_stop - t)
            t = t_stop
            break
        V = _flow(net, V, T[j])
        t += T[j]
        if keep_pre_voltages:
            pre.append(V.copy())
        V[j] = reset
        tg = net.targets(j)
        V[tg] = V[tg] + net.jump[j]
        times.append(t)
        ids.append(j)
    return ReferenceRun(np.array(times), np.array(ids, dtype=np.int32), np.array(pre) if keep_pre_voltages else None,
                        V, t)


def _field(net: EventNetwork, V: np.ndarray) -> np.ndarray:
    """The model's vector field ``tau dV/dt`` (LIF ``I - V``; theta ``V^2 + iext``)."""
    return net.I - V if net.neuron == "lif" else V * V + net.iext


def jacobian(net: EventNetwork, j: int, V: np.ndarray) -> np.ndarray:
    """Dense Jacobian ``[N, N]`` of the phases across a spike of ``j`` (voltages ``V`` just before it)."""
    D = np.eye(net.N)
    tg = net.targets(j)
    d = _field(net, V[tg]) / _field(net, V[tg] + net.jump[j])
    D[tg, tg] = d
    D[tg, j] = 1.0 - d
    return D


def lyapunov_spectrum(net: EventNetwork, n_spikes: int, Q0: np.ndarray, qr_every: int, *,
                      voltages0: Optional[np.ndarray] = None) -> tuple[np.ndarray, float, float]:
    """``(exponents [k] in 1/s descending, sum of log det D over the spikes, elapsed time)`` of ``n_spikes``
    spikes from ``voltages0``, frame ``Q0 [N, k]`` re-orthonormalised every ``qr_every`` spikes (and at the end).

    The elapsed time runs from the start (``t = 0``) to the last spike.
    """
    run = simulate(net, n_spikes, voltages0=voltages0, keep_pre_voltages=True)
    Q = np.array(Q0, dtype=np.float64)
    acc = np.zeros(Q.shape[1])
    logdet = 0.0
    for s in range(len(run.spike_ids)):
        D = jacobian(net, int(run.spike_ids[s]), run.pre_voltages[s])
        logdet += float(np.log(np.abs(np.linalg.det(D))))
        Q = D @ Q
        if (s + 1) % qr_every == 0 or s + 1 == len(run.spike_ids):
            Q, R = np.linalg.qr(Q)
            acc += np.log(np.abs(np.diag(R)))
    return np.sort(acc / run.t)[::-1], logdet, run.t
