"""Compiled event loop of :mod:`surroflos.event` (numba; also runs as plain Python with ``NUMBA_DISABLE_JIT=1``).

Internal representation (see :mod:`surroflos.event.network` for the models). Every neuron has a *key*, and
the neuron with the smallest key spikes next; a global offset ``g[0]`` carries the free flow, so that between
spikes no key changes (no O(N) work per spike):

* LIF (``model == 0``, drive ``I = p[0] > 1``, ``tau = p[1]``): ``key_i = (I - V_i) E`` with the global scale
  ``E = g[0] = exp((t - t0) / tau)``. Between spikes ``I - V`` decays like ``exp(-t/tau)``, so the key is
  constant. A neuron is at threshold when ``key = (I - 1) E``: the next spike time makes ``E = key_min / (I - 1)``
  (one log per spike). A kick ``V += J`` is ``key -= J E`` (an addition, no transcendental function); the
  reset ``V = 0`` is ``key = I E``. ``E`` is renormalised to 1 (all keys divided by it, ``t0`` moved) when it
  exceeds ``1e100``: O(N) work every ~230 membrane time constants.
* theta (``model == 1``, ``s = sqrt(iext) = p[0]``, ``tau = p[1]``, ``omega = 2 s / tau = p[2]``): the phase
  ``theta_i = Omega - key_i`` with the global phase ``Omega = g[0] = omega (t - t0)``; ``V = s tan(theta/2)``.
  The next spiker reaches ``theta = pi``: ``Omega = pi + key_min``. A kick maps ``theta`` through the phase
  transition curve ``theta' = 2 atan(tan(theta/2) + J/s)``; the reset is ``theta = -pi``. ``Omega`` is
  renormalised to 0 (all keys shifted) when it exceeds ``64 pi``.

``g[1] = t0``: the time at which the offset was last renormalised; the current time is ``t0 + tau log E``
(LIF) or ``t0 + Omega / omega`` (theta).

The keys live in an indexed binary min-heap: ``hkey[pos]`` (key at heap position ``pos``), ``hid[pos]``
(its neuron) and ``hpos[i]`` (position of neuron ``i``). One spike costs one sift-down of the reset
spiker from the root (``log2 N`` levels) and one sift of each of its targets (inhibition moves a target
down, usually by few levels since most heap nodes sit near the leaves): ``O(K log N)`` at worst.

Tangent dynamics (``Q.shape[1] = k > 0``): perturbations of the phases are constant between spikes; at a
spike of ``j`` each target ``i`` (voltage ``V -> V' = V + J``) gets
``dphi_i' = D dphi_i + (1 - D) dphi_j`` with ``D = F(V) / F(V')``, ``F`` the model's vector field
(``I - V`` for LIF, ``V^2 + s^2`` for theta). In key terms ``D = key_old / key_new`` (LIF) and
``D = (1 + h^2) / (1 + h'^2)``, ``h = tan(theta/2)`` (theta); ``1 - D`` and ``log D`` are computed without
cancellation. ``logdet[0]`` accumulates ``sum log D`` (the log-determinant of the spike Jacobians).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

LIF, THETA = 0, 1
_LIF_RENORM = 1e100
_THETA_RENORM = 64.0 * math.pi


@njit(cache=True, inline="always")
def _sift_up(hkey, hid, hpos, p):
    key = hkey[p]
    i = hid[p]
    while p > 0:
        parent = (p - 1) >> 1
        kp = hkey[parent]
        if kp <= key:
            break
        hkey[p] = kp
        ip = hid[parent]
        hid[p] = ip
        hpos[ip] = p
        p = parent
    hkey[p] = key
    hid[p] = i
    hpos[i] = p


@njit(cache=True, inline="always")
def _sift_down(hkey, hid, hpos, p):
    n = hkey.shape[0]
    key = hkey[p]
    i = hid[p]
    while True:
        c = 2 * p + 1
        if c >= n:
            break
        kc = hkey[c]
        if c + 1 < n:
            k2 = hkey[c + 1]
            if k2 < kc:
                c += 1
                kc = k2
        if kc >= key:
            break
        hkey[p] = kc
        ic = hid[c]
        hid[p] = ic
        hpos[ic] = p
        p = c
    hkey[p] = key
    hid[p] = i
    hpos[i] = p


@njit(cache=True)
def heapify(keys, hkey, hid, hpos):
    """Fill the heap arrays from per-neuron ``keys`` (Floyd's O(N) construction)."""
    n = keys.shape[0]
    for i in range(n):
        hkey[i] = keys[i]
        hid[i] = i
        hpos[i] = i
    for p in range((n - 2) // 2, -1, -1):
        _sift_down(hkey, hid, hpos, p)


@njit(cache=True)
def keys_of(hkey, hpos, out):
    """Per-neuron keys ``out[i] = hkey[hpos[i]]``."""
    for i in range(hpos.shape[0]):
        out[i] = hkey[hpos[i]]


@njit(cache=True)
def _renormalise(model, hkey, p, g):
    if model == LIF:
        E = g[0]
        inv = 1.0 / E
        for q in range(hkey.shape[0]):
            hkey[q] *= inv
        g[1] += p[1] * math.log(E)
        g[0] = 1.0
    else:
        Om = g[0]
        for q in range(hkey.shape[0]):
            hkey[q] -= Om
        g[1] += Om / p[2]
        g[0] = 0.0


@njit(cache=True)
def advance(model, n_events, t_stop, hkey, hid, hpos, indptr, indices, jump, p, g, out_t, out_i, Q, logdet):
    """Process up to ``n_events`` spikes, or stop at time ``t_stop`` (the offset then moves to ``t_stop``).

    Records spike times and ids into ``out_t``/``out_i`` when they are non-empty (they must then hold
    ``n_events`` entries), updates the tangent frame ``Q [N, k]`` when ``k > 0`` and adds the log-determinant
    of the spike Jacobians to ``logdet[0]`` when ``logdet`` is non-empty. Returns the number of spikes done.
    """
    k = Q.shape[1]
    record = out_t.shape[0] > 0
    track = logdet.shape[0] > 0
    ld = 0.0
    done = 0
    while done < n_events:
        j = hid[0]
        kj = hkey[0]
        Jj = jump[j]
        if model == LIF:
            I = p[0]
            tau = p[1]
            E = kj / (I - 1.0)
            if E < g[0]:  # kicked above threshold (excitation): spikes now
                E = g[0]
            t = g[1] + tau * math.log(E)
            if t > t_stop:
                g[0] = math.exp((t_stop - g[1]) / tau)
                break
            g[0] = E
            hkey[0] = I * E  # reset to V = 0
            _sift_down(hkey, hid, hpos, 0)
            d = Jj * E
            for q in range(indptr[j], indptr[j + 1]):
                i = indices[q]
                pos = hpos[i]
                old = hkey[pos]
                new = old - d
                hkey[pos] = new
                if k > 0 or track:
                    c = -d / new  # 1 - D, D = old / new = (I - V) / (I - V')
                    if track:
                        ld += math.log1p(-c)
                    if k > 0:
                        D = old / new
                        for m in range(k):
                            Q[i, m] = D * Q[i, m] + c * Q[j, m]
                if new > old:
                    _sift_down(hkey, hid, hpos, pos)
                else:
                    _sift_up(hkey, hid, hpos, pos)
            if E > _LIF_RENORM:
                _renormalise(model, hkey, p, g)
        else:
            s = p[0]
            Om = math.pi + kj
            if Om < g[0]:
                Om = g[0]
            t = g[1] + Om / p[2]
            if t > t_stop:
                g[0] = (t_stop - g[1]) * p[2]
                break
            g[0] = Om
            hkey[0] = Om + math.pi  # reset to theta = -pi
            _sift_down(hkey, hid, hpos, 0)
            a = Jj / s
            for q in range(indptr[j], indptr[j + 1]):
                i = indices[q]
                pos = hpos[i]
                old = hkey[pos]
                h = math.tan(0.5 * (Om - old))
                h2 = h + a
                new = Om - 2.0 * math.atan(h2)
                hkey[pos] = new
                if k > 0 or track:
                    den = 1.0 + h2 * h2
                    c = a * (h2 + h) / den  # 1 - D, D = (1 + h^2) / (1 + h'^2)
                    if track:
                        ld += math.log1p(-c)
                    if k > 0:
                        D = (1.0 + h * h) / den
                        for m in range(k):
                            Q[i, m] = D * Q[i, m] + c * Q[j, m]
                if new > old:
                    _sift_down(hkey, hid, hpos, pos)
                else:
                    _sift_up(hkey, hid, hpos, pos)
            if Om > _THETA_RENORM:
                _renormalise(model, hkey, p, g)
        if record:
            out_t[done] = t
            out_i[done] = j
        done += 1
    if track:
        logdet[0] += ld
    return done


@njit(cache=True)
def naive_advance(model, n_events, keys, indptr, indices, jump, p, g, out_t, out_i):
    """The same dynamics without a priority queue: every spike scans all N keys (O(N) per spike).

    Same key representation and arithmetic as :func:`advance` (so the same spikes, bit for bit, as long as
    no two keys tie); the benchmark's naive event loop.
    """
    N = keys.shape[0]
    record = out_t.shape[0] > 0
    for done in range(n_events):
        j = 0
        kj = keys[0]
        for i in range(1, N):
            if keys[i] < kj:
                kj = keys[i]
                j = i
        Jj = jump[j]
        if model == LIF:
            I = p[0]
            E = kj / (I - 1.0)
            if E < g[0]:
                E = g[0]
            t = g[1] + p[1] * math.log(E)
            g[0] = E
            keys[j] = I * E
            d = Jj * E
            for q in range(indptr[j], indptr[j + 1]):
                keys[indices[q]] -= d
            if E > _LIF_RENORM:
                _renormalise(model, keys, p, g)
        else:
            Om = math.pi + kj
            if Om < g[0]:
                Om = g[0]
            t = g[1] + Om / p[2]
            g[0] = Om
            keys[j] = Om + math.pi
            a = Jj / p[0]
            for q in range(indptr[j], indptr[j + 1]):
                i = indices[q]
                keys[i] = Om - 2.0 * math.atan(math.tan(0.5 * (Om - keys[i])) + a)
            if Om > _THETA_RENORM:
                _renormalise(model, keys, p, g)
        if record:
            out_t[done] = t
            out_i[done] = j
    return n_events


def empty_frame() -> np.ndarray:
    """A ``[0, 0]`` frame: no tangent dynamics."""
    return np.zeros((0, 0), dtype=np.float64)
