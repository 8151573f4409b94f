"""Calendar queue for the event loop (inhibitory networks; ``simulate``'s default there): O(1) kicks and re-insertions.

The lazy heap of :mod:`~surroflos.event._kernels` makes a kick O(1) (it raises the target's true key in ``key``
and leaves a stale lower bound in the queue) but pays a log-depth sift-down each time a stale record reaches the
root (~23 times per spike in the balanced network). Here the queue is a calendar: a ring of ``B`` slots, slot
``a & (B - 1)`` holding the neurons whose queued (stale) key ``s`` has the *slot number* ``a = A(s)``, with ``A`` a
monotone non-decreasing map of keys to integers:

* LIF (keys ``(I - V) E > 0``, multiplicative): ``A(k)`` = the float's bit pattern (an increasing integer for
  positive floats) without its low ``52 - b`` mantissa bits: exponent and top ``b`` mantissa bits, a slot
  ``2^-b`` of an octave wide (``tau ln 2 / 2^b`` of time to threshold).
* theta (keys ``Omega - theta``, additive): ``A(k) = floor((k - lo) w)``, a slot ``1 / w`` of phase wide.

Both are monotone in floating point (the bit pattern of positive floats, a rounded subtraction, a product by a
positive constant and ``floor`` never reverse an order), so ``A(x) < A(y)`` implies ``x < y``: a neuron queued in a later slot has a
larger key than any key of an earlier one. ``cur`` is the current slot; ``act [act_n]`` holds the neurons whose
queued slot is ``<= cur`` (the current slot's contents, loaded from the ring), the ring those in ``(cur, cur +
B)``, an overflow list those beyond (a neuron hyperpolarised far past the reset; rare). Every neuron is queued
exactly once.

* Kick (inhibitory: it only raises a key, after rounding too; see ``_kick``): ``key[i]`` changes, nothing else.
* Next spiker: every neuron of ``act`` whose true key moved past slot ``cur`` is re-queued at its true key
  (O(1): one slot append, a re-check); the smallest ``(key, id)`` among the others is the spiker: every other
  neuron's queued key lies in a later slot, so its key (and its true key, larger still) is larger. Equal keys
  therefore spike in ascending id order, exactly as in the eager heap. When ``act`` empties, ``cur`` advances to
  the next non-empty slot and loads it.
* The spiker's reset key is queued like a re-check.
* Renormalisation of the global offset (every ~230 ``tau`` for LIF, ``64 pi`` of phase for theta) moves every
  key, so the calendar is rebuilt from the true keys: O(N + B), rare.

Arithmetic on keys, the tangent frame and the log-determinant is that of :func:`~surroflos.event._kernels.advance`
(the same helper functions, the same order), and the order of spikes is the exact ``(key, id)`` order: the same
spikes as the eager heap, bit for bit (tests).

Storage. ``ring [B, 2]`` int32, ``[count, head block]`` per slot (8 bytes: 256 KB at N = 1e6), the slot's ids in a
chain of 64-byte blocks ``blk [P, 16]`` (``[next, 15 ids]``) from a free list, the head block the one being
filled (``P = N // 15 + B + 2`` suffices: a slot of ``n`` neurons holds ``ceil(n / 15) <= n // 15 + 1`` blocks).
An append reads the slot's counters (a small array, mostly in cache) and writes one block line. (Formerly a
64-byte ring line per slot, ``[count, first extra block, 14 ids]``: 2 MB at N = 1e6, fill 64, and two dependent
cache lines per append once a slot held more than 14; the compact counters measured 1.06-1.1x the spikes per
second at N = 1e4, 1e5, 1e6.) ``act`` keeps the key each neuron had when it was last found in the current slot
(``actk``), so an unchanged key is not mapped again.

Measured (``python -m surroflos.event.bench_queues``, BENCHMARKS.md; SparseProp's LIF network, K = 100, one
process, interleaved rounds): with ``fill = 8`` and the general kick loop 1.9x, 1.6x and 2.2x the eager heap's
spikes per second at N = 1e4, 1e5, 1e6 (1.8e6, 9.3e5, 6.7e5 spikes/s); with ``fill = 64``, the keys-only kick
loop and the runner-up's prefetch (notes below) 3.1e6, 1.7e6, 1.0e6 spikes/s (1.45-1.6x the former, measured in
one process); with the compact slot counters too (Storage) 3.4e6, 2.0e6, 1.17e6 spikes/s, 3.3x, 2.8x and 3.3x
the eager heap (bench_queues). Cost per spike from N = 1e4 to 1e6: x2.9 (log ratio 1.5), mostly the kicks
themselves (K random keys of an N-array: a loop of the same spikers' kicks alone, with the same prefetch,
measured 0.075 us at 1e4 and 0.42 us at 1e6 per spike, x5.6), the queue's share 0.24 -> 0.37 us (x1.5). ~24 re-checks per spike, each O(1), whatever the slot width (a property of the dynamics: a
neuron's free time to threshold against its inter-spike interval); the slot width trades the scan of ``act``
(~``fill`` keys per spike, in L1) against the ring's size (then ``B`` 64-byte lines: 16 MB at N = 1e6 with
``fill = 8``, 2 MB with 64), into which every re-check appends at a random slot (measured at N = 1e6, general kick loop:
``fill`` 4, 8, 16, 32, 64, 128, 256: 0.68, 0.74, 0.77, 0.75, 0.79-0.85, 0.83-0.86, 0.85 x 1e6 spikes/s;
at N = 1e4, 1e5 ``fill`` 64 was best or within noise of the best). Worst case: neurons whose keys stay within one
slot (a persistent synchronous cluster) are compared at each of their spikes, O(cluster) per spike (the heap's
tie walk is O(tied neurons) too).

Ring size: ``span`` slots cover the keys between the front and a just-reset neuron (LIF: ``log2(I / (I - 1))``
octaves; theta: ``2 pi``), with ``span ~ N / fill`` (``fill`` neurons per slot on average over that span); ``B`` is
the power of two ``>= 2 span``, so keys up to one more span past the reset stay in the ring.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ._kernels import LIF, _kick, _needs_shift, _offset_at, _reset_key, _shift_offset, _spike_offset

# st (int64) fields
CUR, ACTN, OVFN, OVFMIN, RINGN, FREE, MASK, BITS, RECHECKS, OVFSCANS, REBUILDS, STEPS, SINK = range(13)
N_ST = 13
PER_BLOCK = 15  # ids in a block

DEFAULT_FILL = 64.0


def layout(model: int, N: int, p: np.ndarray, fill: float = DEFAULT_FILL):
    """Ring size ``B`` and the slot map's parameters (``bits`` for LIF, ``cp = [w, lo]`` for theta)."""
    span_slots = max(8.0, N / fill)
    if model == LIF:
        octaves = math.log2(p[0] / (p[0] - 1.0))  # front (I - 1) E to reset I E
        bits = int(min(30, max(0, round(math.log2(span_slots / octaves)))))
        span = octaves * 2.0 ** bits
        cp = np.array([0.0, 0.0])
    else:
        bits = 0
        w = span_slots / (2.0 * math.pi)  # slots per unit of phase
        span = span_slots
        cp = np.array([w, -4.0])  # keys >= Omega - pi >= -pi
    B = 16
    while B < 2.0 * span + 2.0:
        B *= 2
    return B, bits, cp


def alloc(model: int, N: int, p: np.ndarray, fill: float = DEFAULT_FILL):
    """Fresh calendar arrays ``(ring, blk, act, actk, ovf_i, ovf_a, st, cp)`` for ``N`` neurons."""
    B, bits, cp = layout(model, N, p, fill)
    ring = np.empty((B, 2), dtype=np.int32)
    raw = np.empty((N // PER_BLOCK + B + 2) * 16 + 16, dtype=np.int32)
    skip = (-raw.ctypes.data % 64) // 4
    blk = raw[skip:skip + (N // PER_BLOCK + B + 2) * 16].reshape(-1, 16)
    st = np.zeros(N_ST, dtype=np.int64)
    st[MASK] = B - 1
    st[BITS] = bits
    return (ring, blk, np.empty(N, dtype=np.int32), np.empty(N, dtype=np.float64), np.empty(N, dtype=np.int32),
            np.empty(N, dtype=np.int64), st, cp)



# Numba note: every helper below that receives arrays is called only on rare paths (rebuild, overflow scan);
# passing arrays to a helper (inlined or called) costs an atomic reference-count increment and decrement per
# array and call, which in the hot loop cost more than the queue itself. The hot loop in ``advance`` therefore
# touches its arrays directly and keeps the calendar's counters in local variables. Its kick loop has a
# keys-only copy (no tangent frame, no log-determinant): in the general loop the compiled code still evaluated
# ``_kick``'s two divisions per kick (measured: the keys-only loop is 1.1-1.35x the spikes per second).
# Software prefetch without an intrinsic: the search also finds the runner-up ``(key, id)`` of ``act``, which is
# the next spiker unless this spike kicks it or ``act`` empties, and the spike reads one entry per cache line of
# its target list (summed into ``st[SINK]`` so that the reads stay), so that the next spike's target list, a
# random block of an array of ``N K`` ids (400 MB at N = 1e6), is mostly in cache when it is needed (measured:
# 1.08-1.12x the spikes per second at N = 1e5 and 1e6, 0.98x at 1e4). Reading the next spiker's targets' keys
# too was measured slower (0.8x).


@njit(cache=True, inline="always")
def _slot_of(model, k, bits, w, lo):
    """The slot number ``A(k)``: monotone non-decreasing in ``k``. LIF (``k > 0``): the float's bit pattern, an
    increasing integer for positive floats, without its low ``52 - bits`` mantissa bits."""
    if model == LIF:
        return np.float64(k).view(np.int64) >> (52 - bits)
    x = (k - lo) * w
    if x < 0.0:  # never for a valid key; harmless (monotone)
        x = 0.0
    return int(x)


@njit(cache=True)
def _queue(ring, blk, act, actk, ovf_i, ovf_a, st, i, k, a):
    """Queue neuron ``i`` with key ``k`` at slot number ``a`` (rare paths only, see above)."""
    cur = st[CUR]
    if a <= cur:
        n = st[ACTN]
        act[n] = i
        actk[n] = k
        st[ACTN] = n + 1
    elif a - cur <= st[MASK]:
        s = a & st[MASK]
        n = ring[s, 0]
        f = n % PER_BLOCK
        if f == 0:  # a new block at the head of the slot's chain
            b = st[FREE]
            st[FREE] = blk[b, 0]
            blk[b, 0] = ring[s, 1]
            ring[s, 1] = b
        else:
            b = ring[s, 1]
        blk[b, 1 + f] = i
        ring[s, 0] = n + 1
        st[RINGN] += 1
    else:
        n = st[OVFN]
        ovf_i[n] = i
        ovf_a[n] = a
        st[OVFN] = n + 1
        if n == 0 or a < st[OVFMIN]:
            st[OVFMIN] = a


@njit(cache=True)
def _scan_overflow(model, key, ring, blk, act, actk, ovf_i, ovf_a, st, cp):
    """Move the overflow's neurons whose true key now falls within the ring (or the current slot) there."""
    st[OVFSCANS] += 1
    lim = st[CUR] + st[MASK]
    n = st[OVFN]
    st[OVFN] = 0
    kept = 0
    mn = 0
    for q in range(n):
        i = ovf_i[q]
        k = key[i, 0]
        a = _slot_of(model, k, st[BITS], cp[0], cp[1])
        if a <= lim:  # into the ring or act: never appends to the overflow, so the kept entries stay put
            _queue(ring, blk, act, actk, ovf_i, ovf_a, st, i, k, a)
        else:
            ovf_i[kept] = i
            ovf_a[kept] = a
            if kept == 0 or a < mn:
                mn = a
            kept += 1
    st[OVFN] = kept
    st[OVFMIN] = mn


@njit(cache=True)
def rebuild(model, key, ring, blk, act, actk, ovf_i, ovf_a, st, cp):
    """(Re)fill the calendar from the true keys ``key [N, 1]``: O(N + B)."""
    N = key.shape[0]
    for s in range(ring.shape[0]):
        ring[s, 0] = 0
        ring[s, 1] = -1
    P = blk.shape[0]
    for b in range(P - 1):
        blk[b, 0] = b + 1
    blk[P - 1, 0] = -1
    st[FREE] = 0
    st[ACTN] = 0
    st[OVFN] = 0
    st[RINGN] = 0
    st[REBUILDS] += 1
    kmin = key[0, 0]
    for i in range(1, N):
        if key[i, 0] < kmin:
            kmin = key[i, 0]
    st[CUR] = _slot_of(model, kmin, st[BITS], cp[0], cp[1])
    for i in range(N):
        k = key[i, 0]
        _queue(ring, blk, act, actk, ovf_i, ovf_a, st, i, k, _slot_of(model, k, st[BITS], cp[0], cp[1]))


@njit(cache=True)
def advance(model, n_events, t_stop, key, ring, blk, act, actk, ovf_i, ovf_a, st, cp, indptr, indices, jump, p, g,
            out_t, out_i, Q, logdet):
    """:func:`~surroflos.event._kernels.advance` with the calendar queue (inhibitory kicks only): same arguments
    and results, the queue given by ``key [N, 1]`` (true keys) and the calendar arrays of :func:`alloc`, filled by
    :func:`rebuild`. The spiker is put back into ``act`` with a key that forces a re-check, which queues it."""
    k = Q.shape[1]
    record = out_t.shape[0] > 0
    track = logdet.shape[0] > 0
    plain = k == 0 and not track
    bits = st[BITS]
    w, lo = cp[0], cp[1]
    mask = st[MASK]
    half = (mask + 1) >> 1
    cur, act_n, ring_n, free = st[CUR], st[ACTN], st[RINGN], st[FREE]
    rechecks, steps = 0, 0
    sink = 0
    ld = 0.0
    done = 0
    while done < n_events:
        # -- the next spiker: the least (key, id) in act, after re-queueing act's stale neurons --
        while True:
            best = -1
            bi = 0
            kb = 0.0
            bi2 = -1  # the runner-up: the next spiker unless this spike kicks it or it is alone
            kb2 = 0.0
            q = 0
            while q < act_n:
                i = act[q]
                ki = key[i, 0]
                if ki != actk[q]:  # kicked, loaded or reset: still in this slot?
                    a = _slot_of(model, ki, bits, w, lo)
                    if a > cur:
                        act_n -= 1
                        act[q] = act[act_n]
                        actk[q] = actk[act_n]
                        rechecks += 1
                        if a - cur <= mask:  # into the ring (a stays > cur, so never back into act)
                            s = a & mask
                            n = ring[s, 0]
                            f = n % PER_BLOCK
                            if f == 0:
                                b = free
                                free = blk[b, 0]
                                blk[b, 0] = ring[s, 1]
                                ring[s, 1] = b
                            else:
                                b = ring[s, 1]
                            blk[b, 1 + f] = i
                            ring[s, 0] = n + 1
                            ring_n += 1
                        else:  # past the ring: the overflow
                            n = st[OVFN]
                            ovf_i[n] = i
                            ovf_a[n] = a
                            st[OVFN] = n + 1
                            if n == 0 or a < st[OVFMIN]:
                                st[OVFMIN] = a
                        continue
                    actk[q] = ki
                if best < 0 or ki < kb or (ki == kb and i < bi):
                    if best >= 0:
                        bi2 = bi
                        kb2 = kb
                    best = q
                    bi = i
                    kb = ki
                elif bi2 < 0 or ki < kb2 or (ki == kb2 and i < bi2):
                    bi2 = i
                    kb2 = ki
                q += 1
            if best >= 0:
                break
            # the current slot is exhausted: load the next non-empty one
            while act_n == 0:
                if ring_n == 0:
                    cur = max(cur + 1, st[OVFMIN] - half)  # only the overflow holds neurons
                else:
                    cur += 1
                steps += 1
                if st[OVFN] > 0 and st[OVFMIN] <= cur + half:
                    st[CUR], st[ACTN], st[RINGN], st[FREE] = cur, act_n, ring_n, free
                    _scan_overflow(model, key, ring, blk, act, actk, ovf_i, ovf_a, st, cp)
                    act_n, ring_n, free = st[ACTN], st[RINGN], st[FREE]
                s = cur & mask
                n = ring[s, 0]
                if n > 0:
                    c = n - PER_BLOCK * ((n - 1) // PER_BLOCK)  # the head block is the one being filled
                    b = ring[s, 1]
                    while b >= 0:
                        for e in range(c):
                            act[act_n] = blk[b, 1 + e]
                            actk[act_n] = -math.inf  # forces a re-check
                            act_n += 1
                        nb = blk[b, 0]
                        blk[b, 0] = free
                        free = b
                        b = nb
                        c = PER_BLOCK
                    ring[s, 0] = 0
                    ring[s, 1] = -1
                    ring_n -= n
        # -- the spike --
        j = bi
        off, t = _spike_offset(model, kb, p, g)
        if t > t_stop:
            g[0] = _offset_at(model, t_stop, p, g)
            break
        g[0] = off
        key[j, 0] = _reset_key(model, off, p)
        actk[best] = -math.inf  # stays in act until the next search re-queues it at its reset key
        Jj = jump[j]
        if bi2 >= 0:  # touch the runner-up's target list (one read per cache line): loaded during this spike
            for e in range(indptr[bi2], indptr[bi2 + 1], 16):
                sink += indices[e]
        if plain:  # keys only: a loop without the tangent's branches and divisions (see the note above)
            if model == LIF:
                d = Jj * off  # _kick's arithmetic: new = old - Jj off
                for e in range(indptr[j], indptr[j + 1]):
                    i = indices[e]
                    key[i, 0] = key[i, 0] - d
            else:
                for e in range(indptr[j], indptr[j + 1]):
                    i = indices[e]
                    key[i, 0] = _kick(model, key[i, 0], Jj, off, p)[0]
        else:
            for e in range(indptr[j], indptr[j + 1]):
                i = indices[e]
                old = key[i, 0]
                new, c, D = _kick(model, old, Jj, off, p)
                key[i, 0] = new
                if track:
                    ld += math.log1p(-c)
                if k > 0:
                    for m in range(k):
                        Q[i, m] = D * Q[i, m] + c * Q[j, m]
        if _needs_shift(model, off):
            _shift_offset(model, key, 0, key[:0], p, g)
            st[CUR], st[ACTN], st[RINGN], st[FREE] = cur, act_n, ring_n, free
            rebuild(model, key, ring, blk, act, actk, ovf_i, ovf_a, st, cp)
            cur, act_n, ring_n, free = st[CUR], st[ACTN], st[RINGN], st[FREE]
        if record:
            out_t[done] = t
            out_i[done] = j
        done += 1
    st[CUR], st[ACTN], st[RINGN], st[FREE] = cur, act_n, ring_n, free
    st[RECHECKS] += rechecks
    st[STEPS] += steps
    st[SINK] += sink  # keeps the touches
    if track:
        logdet[0] += ld
    return done
