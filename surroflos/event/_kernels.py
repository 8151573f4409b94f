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

The keys live in an indexed 4-ary min-heap: records ``h[pos + OFF] = (key, neuron)`` and the inverse map
``hpos[i]`` (position of neuron ``i``); the four children of a node fill one cache line. One spike costs one
sift-down of the reset spiker from the root (``log4 N`` levels) and one sift of each of its targets (a kick
moves a target by few levels, since most heap nodes sit near the leaves): ``O(K log N)`` at worst. Equal keys
spike in ascending id order (the naive loop's rule; see "Ties" below).

Lazy heap (inhibitory networks only; ``advance`` with ``key [N, 1]`` and no ``hpos``): an inhibitory kick only
raises a key (also after rounding: both models' kicks are written so), so a record's key can stay stale, a
lower bound of the true key in ``key``. A kick then costs one update of ``key`` and no sift; a root whose true
key is larger is re-sifted with it before it may spike. Same spikes as the eager heap, bit for bit. Measured
(BENCHMARKS.md): in SparseProp's balanced network a neuron reaches the root stale ~23 times per spike it fires
(its free time to threshold is ~1/40 of its inter-spike interval), and 23 root-to-leaf sifts cost more than
the 100 short sifts they replace. The calendar queue (:mod:`~surroflos.event._calendar`) keeps the lazy kick and
re-queues a stale neuron in O(1): ``EventNetwork.simulate`` runs it for inhibitory networks, the eager heap
otherwise.

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


# Heap layout: a 4-ary min-heap of records ``h[p + OFF] = (key, neuron id as float)``, float64 ``[N + OFF, 2]``.
# The children of position ``p`` are ``4p + 1 .. 4p + 4``, i.e. rows ``4p + 4 .. 4p + 7``: 64 contiguous bytes,
# one cache line when the array is 64-byte aligned (``alloc_heap``), so a level of a sift costs one line.
OFF = 3


def alloc_heap(n: int) -> np.ndarray:
    """A 64-byte aligned float64 ``[n + OFF, 2]`` heap array."""
    raw = np.empty((n + OFF) * 2 + 8, dtype=np.float64)
    skip = (-raw.ctypes.data % 64) // 8
    return raw[skip:skip + (n + OFF) * 2].reshape(n + OFF, 2)


@njit(cache=True, inline="always")
def _place(h, hpos, p, key, i):
    """Write record ``(key, i)`` at position ``p`` (and its position, when ``hpos`` is kept: the eager heap)."""
    h[p + OFF, 0] = key
    h[p + OFF, 1] = i
    if hpos.shape[0] > 0:
        hpos[int(i)] = p


@njit(cache=True, inline="always")
def _sift_up(h, hpos, p):
    key = h[p + OFF, 0]
    i = h[p + OFF, 1]
    while p > 0:
        parent = (p - 1) >> 2
        kp = h[parent + OFF, 0]
        if kp <= key:
            break
        _place(h, hpos, p, kp, h[parent + OFF, 1])
        p = parent
    _place(h, hpos, p, key, i)


@njit(cache=True, inline="always")
def _sift_down(h, hpos, n, p):
    key = h[p + OFF, 0]
    i = h[p + OFF, 1]
    while True:
        c = 4 * p + 1
        if c >= n:
            break
        best = c
        kb = h[c + OFF, 0]
        for cc in range(c + 1, min(c + 4, n)):
            kc = h[cc + OFF, 0]
            if kc < kb:
                kb = kc
                best = cc
        if kb >= key:
            break
        _place(h, hpos, p, kb, h[best + OFF, 1])
        p = best
    _place(h, hpos, p, key, i)


# Ties. The sifts order records by key alone (a tie-breaking comparison in them cost 15-25%), so among equal
# keys the root is whichever the heap's history put there. Before the root spikes, a tie with it is detected
# on its children's line (cheap: the root's sift-down reads it anyway) and then resolved: the neurons tied with
# the root are exactly the connected subtree of equal keys below it; the one of least id is swapped into the
# root (records of equal key: the heap stays valid). So equal keys spike in ascending id order, as in the
# naive loop's scan, whatever the heap's shape.


@njit(cache=True, inline="always")
def _root_tied(h, n):
    k0 = h[OFF, 0]
    for c in range(1, min(5, n)):
        if h[c + OFF, 0] == k0:
            return True
    return False


@njit(cache=True)
def _least_id_to_root(h, hpos, key):
    """Swap the least id among the neurons whose key equals the root's to the root (a depth-first walk of the
    subtree of equal records; lazy heap: ``key`` the true keys, only neurons whose true key equals it count)."""
    n = h.shape[0] - OFF
    k0 = h[OFF, 0]
    stack = np.empty(4 * 64, dtype=np.int64)  # a depth-first walk holds <= 3 per level + 4: 64 levels suffice
    top = 0
    best = 0
    for c in range(1, min(5, n)):
        if h[c + OFF, 0] == k0:
            stack[top] = c
            top += 1
    while top > 0:
        top -= 1
        q = stack[top]
        i = h[q + OFF, 1]
        if i < h[best + OFF, 1] and (key.shape[0] == 0 or key[int(i), 0] == k0):
            best = q
        for c in range(4 * q + 1, min(4 * q + 5, n)):
            if h[c + OFF, 0] == k0:
                stack[top] = c
                top += 1
    if best != 0:
        i0, ib = h[OFF, 1], h[best + OFF, 1]
        _place(h, hpos, 0, k0, ib)
        _place(h, hpos, best, k0, i0)


@njit(cache=True)
def heapify(keys, h, hpos):
    """Fill the heap from per-neuron ``keys`` (Floyd's O(N) construction); ``hpos`` empty: no positions kept."""
    n = keys.shape[0]
    for i in range(n):
        _place(h, hpos, i, keys[i], i)
    for p in range((n - 2) // 4, -1, -1):
        _sift_down(h, hpos, n, p)


@njit(cache=True)
def keys_of(h, hpos, out):
    """Per-neuron keys ``out[i]``."""
    for i in range(hpos.shape[0]):
        out[i] = h[hpos[i] + OFF, 0]


@njit(cache=True)
def _shift_offset(model, keys, start, more, p, g):
    """Move the global offset back to ``E = 1`` / ``Omega = 0``; ``keys[start:, 0]`` and ``more[:, 0]`` change with
    it (the same monotone map for both, so a lazy heap's stale keys stay lower bounds of the true ones)."""
    if model == LIF:
        E = g[0]
        inv = 1.0 / E
        for q in range(start, keys.shape[0]):
            keys[q, 0] *= inv
        for q in range(more.shape[0]):
            more[q, 0] *= inv
        g[1] += p[1] * math.log(E)
        g[0] = 1.0
    else:
        Om = g[0]
        for q in range(start, keys.shape[0]):
            keys[q, 0] -= Om
        for q in range(more.shape[0]):
            more[q, 0] -= Om
        g[1] += Om / p[2]
        g[0] = 0.0


@njit(cache=True, inline="always")
def _spike_offset(model, kj, p, g):
    """``(offset, time)`` at which the neuron with key ``kj`` reaches threshold (never before now)."""
    if model == LIF:
        off = kj / (p[0] - 1.0)
        if off < g[0]:  # kicked above threshold by excitation: spikes now
            off = g[0]
        return off, g[1] + p[1] * math.log(off)
    off = math.pi + kj
    if off < g[0]:
        off = g[0]
    return off, g[1] + off / p[2]


@njit(cache=True, inline="always")
def _offset_at(model, t, p, g):
    """The offset at time ``t``."""
    if model == LIF:
        return math.exp((t - g[1]) / p[1])
    return (t - g[1]) * p[2]


@njit(cache=True, inline="always")
def _reset_key(model, off, p):
    if model == LIF:
        return p[0] * off  # V = 0
    return off + math.pi  # theta = -pi


@njit(cache=True, inline="always")
def _kick(model, old, Jj, off, p):
    """``(new key, 1 - D, D)`` of a target with key ``old`` kicked by ``Jj`` at offset ``off``."""
    if model == LIF:
        d = Jj * off
        new = old - d
        return new, -d / new, old / new  # D = (I - V) / (I - V')
    a = Jj / p[0]
    h = math.tan(0.5 * (off - old))
    h2 = h + a
    den = 1.0 + h2 * h2
    # theta' - theta = 2 (atan(h2) - atan(h)) = -2 atan2(a, 1 + h h2): added to the old key, so that an
    # inhibitory kick never lowers a key, also after rounding (the lazy heap relies on it).
    return old + 2.0 * math.atan2(-a, 1.0 + h * h2), a * (h2 + h) / den, (1.0 + h * h) / den  # D = (1+h^2)/(1+h'^2)


@njit(cache=True, inline="always")
def _needs_shift(model, off):
    if model == LIF:
        return off > _LIF_RENORM
    return off > _THETA_RENORM


@njit(cache=True)
def advance(model, n_events, t_stop, h, hpos, key, indptr, indices, jump, p, g, out_t, out_i, Q, logdet):
    """Process up to ``n_events`` spikes, or stop at time ``t_stop`` (the offset then moves to ``t_stop``).

    Eager heap (``key`` empty, ``hpos [N]``): every key lives in its heap record, a kicked target is sifted.
    Lazy heap (``key [N, 1]`` the true keys, ``hpos`` empty; only for kicks that never lower a key, i.e.
    inhibitory coupling): a kick updates ``key`` alone, the records keep stale keys that are lower bounds, and
    a root whose true key is larger is re-sifted with it before it may spike (see :func:`_true_root`).

    Records spike times and ids into ``out_t``/``out_i`` when they are non-empty (they must then hold
    ``n_events`` entries), updates the tangent frame ``Q [N, k]`` when ``k > 0`` and adds the log-determinant
    of the spike Jacobians to ``logdet[0]`` when ``logdet`` is non-empty. Returns the number of spikes done.
    """
    n = h.shape[0] - OFF
    lazy = key.shape[0] > 0
    k = Q.shape[1]
    record = out_t.shape[0] > 0
    track = logdet.shape[0] > 0
    ld = 0.0
    done = 0
    while done < n_events:
        if lazy:
            _true_root(h, hpos, n, key)
        if _root_tied(h, n):
            _least_id_to_root(h, hpos, key)
        kj = h[OFF, 0]
        j = int(h[OFF, 1])
        off, t = _spike_offset(model, kj, p, g)
        if t > t_stop:
            g[0] = _offset_at(model, t_stop, p, g)
            break
        g[0] = off
        r = _reset_key(model, off, p)
        h[OFF, 0] = r  # the spiker is not its own target: reset it first
        if lazy:
            key[j, 0] = r
        _sift_down(h, hpos, n, 0)
        Jj = jump[j]
        for q in range(indptr[j], indptr[j + 1]):
            i = indices[q]
            if lazy:
                old = key[i, 0]
                new, c, D = _kick(model, old, Jj, off, p)
                key[i, 0] = new
            else:
                pos = hpos[i]
                old = h[pos + OFF, 0]
                new, c, D = _kick(model, old, Jj, off, p)
                h[pos + OFF, 0] = new
                if new > old:
                    _sift_down(h, hpos, n, pos)
                else:
                    _sift_up(h, hpos, pos)
            if track:
                ld += math.log1p(-c)
            if k > 0:
                for m in range(k):
                    Q[i, m] = D * Q[i, m] + c * Q[j, m]
        if _needs_shift(model, off):
            _shift_offset(model, h, OFF, key, p, g)
        if record:
            out_t[done] = t
            out_i[done] = j
        done += 1
    if track:
        logdet[0] += ld
    return done


@njit(cache=True, inline="always")
def _true_root(h, hpos, n, key):
    """Lazy heap: re-sift stale roots until the root's record holds its true key. Every record's key is a lower
    bound of its neuron's true key, so that root is the smallest true key (ties by id, as in the eager heap)."""
    while True:
        kt = key[int(h[OFF, 1]), 0]
        if kt <= h[OFF, 0]:
            return
        h[OFF, 0] = kt
        _sift_down(h, hpos, n, 0)


@njit(cache=True)
def naive_advance(model, n_events, keys, indptr, indices, jump, p, g, out_t, out_i):
    """The same dynamics without a priority queue: every spike scans all N keys (``keys [N, 1]``), O(N) per
    spike. Same representation and arithmetic as :func:`advance`, so the same spikes as long as no two keys
    tie; the benchmark's naive event loop."""
    N = keys.shape[0]
    record = out_t.shape[0] > 0
    for done in range(n_events):
        j = 0
        kj = keys[0, 0]
        for i in range(1, N):
            if keys[i, 0] < kj:
                kj = keys[i, 0]
                j = i
        off, t = _spike_offset(model, kj, p, g)
        g[0] = off
        keys[j, 0] = _reset_key(model, off, p)
        Jj = jump[j]
        for q in range(indptr[j], indptr[j + 1]):
            i = indices[q]
            keys[i, 0] = _kick(model, keys[i, 0], Jj, off, p)[0]
        if _needs_shift(model, off):
            _shift_offset(model, keys, 0, keys[:0], p, g)
        if record:
            out_t[done] = t
            out_i[done] = j
    return n_events


def empty_frame() -> np.ndarray:
    """A ``[0, 0]`` frame: no tangent dynamics."""
    return np.zeros((0, 0), dtype=np.float64)
