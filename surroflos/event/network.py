"""Exact event-based simulation of sparse pulse-coupled spiking networks (SparseProp, seed 004).

Model (times in seconds, rates in Hz). ``N`` neurons; each neuron projects to ``K`` distinct random
postsynaptic neurons other than itself (``graph="out"``, SparseProp's network; in-degrees are then binomial
with mean ``K``) or receives from exactly ``K`` (``graph="in"``, the graph of
:class:`surroflos.BalancedNetwork`, drawn by the same sampler). A spike of neuron ``j`` changes the voltage of
each of its targets instantly by ``J_j = -J0 / sqrt(K)`` (no delay). The constant drive follows from the
balance equation for the target rate ``nu`` (``rate``): ``iext = tau_m sqrt(K) J0 nu`` (``J0`` replaced by
``J_eff`` in the excitatory-inhibitory variant), unless given directly.

* ``neuron="lif"``: ``tau_m dV/dt = -V + I`` with ``I = 1 + iext``; threshold 1, reset 0. Free period
  ``T = tau_m log(I / (I - 1)) = tau_m log(1 + 1/iext)``.
* ``neuron="theta"`` (quadratic integrate-and-fire): ``tau_m dV/dt = V^2 + iext``; the neuron spikes when ``V``
  reaches ``+inf`` and resets to ``-inf``. With ``V = sqrt(iext) tan(theta/2)`` the phase ``theta`` advances
  uniformly, ``d theta/dt = 2 sqrt(iext) / tau_m``; spike at ``theta = pi``, reset to ``-pi``; free period
  ``T = pi tau_m / sqrt(iext)``.

Excitatory-inhibitory variant (``ei=True``): neurons ``0 .. N_E - 1`` (``N_E = round(f_E N)``) are excitatory
and kick their targets by ``+J0 / sqrt(K)``, the others by ``-g J0 / sqrt(K)``; the balance equation uses
``J_eff = J0 (g N_I - N_E) / N`` (``graph="out"``: each neuron receives on average ``K N_E / N`` excitatory
inputs) or ``J0 (g K_I - K_E) / K`` (``graph="in"``, as :attr:`BalancedNetwork.J_eff`), which must be positive
(inhibition dominated). An excitatory kick that lifts a LIF neuron above threshold makes it spike at once.

State. A network state is the vector of *phases* ``u`` in units of the free period: ``u = 0`` at the reset, ``u
= 1`` at threshold, advancing at ``1/T`` for every neuron between spikes (LIF phases below 0 mean
hyperpolarised, ``V < 0``; theta phases stay in ``[0, 1)``). ``V = I (1 - exp(-u T / tau_m))`` (LIF) and ``V =
sqrt(iext) tan(pi (u - 1/2))`` (theta); :meth:`EventNetwork.voltages` and :meth:`EventNetwork.phases_of`
convert.

Algorithm (SparseProp, Engelken 2023): all neurons' states are stored relative to one global offset that
carries the free flow, so nothing is updated between spikes; the next spiker is the top of a priority queue
(an indexed 4-ary heap); a spike updates the reset spiker and its ``K`` targets, each by one heap sift.
Cost per spike ``O(K log N)``, memory ``O(N K)`` (the targets, int32). Purely inhibitory networks run, by
default, on a calendar queue instead (:mod:`surroflos.event._calendar`): a kick only updates the target's key
(O(1)), and a neuron found stale at the front is re-queued in O(1); the same spikes bit for bit. The compiled loop and the exact
representation are documented in :mod:`surroflos.event._kernels`; :mod:`surroflos.event.reference` is the
plain O(N)-per-spike simulation (voltages, every neuron's next spike time recomputed at each spike) that the
tests hold it to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from . import _calendar as cal
from . import _kernels as kern

__all__ = ["EventNetwork", "SimulationResult", "NEURONS", "GRAPHS"]

NEURONS = ("lif", "theta")
GRAPHS = ("out", "in")
_CHUNK_ROWS = 1 << 16  # rows of the target matrix drawn at a time (fixed: the graph must not depend on it)


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


def _int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def _number(name: str, value, *, positive: bool = True, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if positive and (v < 0 or (v == 0 and not allow_zero)):
        raise ValueError(f"{name} must be {'non-negative' if allow_zero else 'positive'}, got {value!r}")
    return v


# ----------------------------------------------------------------------------------------------
# Graphs
# ----------------------------------------------------------------------------------------------


def _out_graph(N: int, K: int, rng: np.random.Generator) -> np.ndarray:
    """``[N, K]`` int32: K distinct targets per row, none equal to the row, sorted."""
    m = N - 1
    out = np.empty((N, K), dtype=np.int32)
    for r0 in range(0, N, _CHUNK_ROWS):
        r1 = min(N, r0 + _CHUNK_ROWS)
        rows = r1 - r0
        if 4 * K <= m:  # sparse: draw with replacement, redraw duplicates
            idx = np.sort(rng.integers(0, m, size=(rows, K), dtype=np.int64), axis=1)
            while True:
                dup = np.zeros(idx.shape, dtype=bool)
                dup[:, 1:] = idx[:, 1:] == idx[:, :-1]
                bad = dup.any(axis=1)
                if not bad.any():
                    break
                sub = idx[bad]
                d = dup[bad]
                sub[d] = rng.integers(0, m, size=int(d.sum()), dtype=np.int64)
                idx[bad] = np.sort(sub, axis=1)
        else:  # dense: the K smallest of random keys
            idx = np.sort(np.argsort(rng.random((rows, m)), axis=1)[:, :K], axis=1)
        self_idx = np.arange(r0, r1)[:, None]
        out[r0:r1] = idx + (idx >= self_idx)  # skip self; monotone, so rows stay sorted
    return out


def _csr_from_pre(pre: np.ndarray, N: int) -> tuple[np.ndarray, np.ndarray]:
    """Targets (CSR by presynaptic neuron) of a fixed in-degree pattern ``pre [N, K]``."""
    K = pre.shape[1]
    post = np.repeat(np.arange(N, dtype=np.int64), K)
    src = pre.reshape(-1).astype(np.int64)
    order = np.lexsort((post, src))
    counts = np.bincount(src, minlength=N)
    indptr = np.zeros(N + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return indptr, post[order].astype(np.int32)


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------


@dataclass
class SimulationResult:
    """What :meth:`EventNetwork.simulate` returns.

    Attributes:
        spike_times: ``[n_spikes]`` float64, seconds since the start of the simulation (warm-up included),
            ascending.
        spike_ids: ``[n_spikes]`` int32, the neuron of each spike.
        n_spikes: number of recorded spikes (after the warm-up).
        rate: mean rate in Hz, ``n_spikes / (N * duration)``.
        duration: recorded time ``t_end - t_start`` in seconds.
        t_start, t_end: the recorded window (the warm-up ends at ``t_start``; ``t_end`` is the last spike, or
            the end of ``duration``).
        final_state: phases ``[N]`` at ``t_end`` (pass as ``state0`` to continue).
        N: number of neurons.
    """

    spike_times: np.ndarray
    spike_ids: np.ndarray
    n_spikes: int
    rate: float
    duration: float
    t_start: float
    t_end: float
    final_state: np.ndarray = field(repr=False)
    N: int = 0

    def rates(self) -> np.ndarray:
        """Per-neuron rates in Hz, ``[N]``."""
        return np.bincount(self.spike_ids, minlength=self.N) / max(self.duration, 1e-300)

    def isi_cv(self) -> float:
        """Mean coefficient of variation of the inter-spike intervals (neurons with >= 3 spikes; NaN if none)."""
        if self.n_spikes < 3:
            return float("nan")
        order = np.lexsort((self.spike_times, self.spike_ids))
        ids, ts = self.spike_ids[order], self.spike_times[order]
        same = ids[1:] == ids[:-1]
        isi = np.diff(ts)[same]
        owner = ids[1:][same]
        n = np.bincount(owner, minlength=self.N)
        s1 = np.bincount(owner, weights=isi, minlength=self.N)
        s2 = np.bincount(owner, weights=isi * isi, minlength=self.N)
        ok = n >= 2
        if not ok.any():
            return float("nan")
        mean = s1[ok] / n[ok]
        var = np.maximum(s2[ok] / n[ok] - mean ** 2, 0.0)
        return float(np.mean(np.sqrt(var) / mean))


# ----------------------------------------------------------------------------------------------
# The engine: heap, offset and parameters of one running simulation
# ----------------------------------------------------------------------------------------------


QUEUES = ("heap", "lazy", "calendar")


class _Engine:
    """One running simulation: the queue of keys, the global offset and the compiled loop.

    ``queue`` (default ``"heap"``, or ``"lazy"`` when ``lazy=True``):

    * ``"heap"``: the eager indexed 4-ary heap (records hold the true keys, ``hpos`` their positions);
    * ``"lazy"`` (purely inhibitory networks: every kick ``<= 0``, so kicks only delay spikes): the lazy heap of
      :mod:`~surroflos.event._kernels`, the true keys in ``key [N, 1]``, the records only lower bounds of them;
    * ``"calendar"`` (inhibitory too): the calendar queue of :mod:`~surroflos.event._calendar`, the true keys in
      ``key [N, 1]`` and each neuron queued by a stale lower bound in a ring of key-range slots, so a kick and a
      re-insertion are both O(1).

    All give the same spikes, tangent frame and log-determinant bit for bit (tests); speeds in BENCHMARKS.md."""

    def __init__(self, net: "EventNetwork", phases: np.ndarray, lazy: bool = False, queue: Optional[str] = None,
                 fill: Optional[float] = None) -> None:
        if queue is None:
            queue = "lazy" if lazy else "heap"
        elif lazy and queue != "lazy":
            raise ValueError(f"lazy=True contradicts queue={queue!r}")
        if queue not in QUEUES:
            raise ValueError(f"queue must be one of {QUEUES}, got {queue!r}")
        self.net = net
        self.model = kern.LIF if net.neuron == "lif" else kern.THETA
        self.p = net._kernel_params()
        self.g = np.array([1.0 if self.model == kern.LIF else 0.0, 0.0])
        self.queue = queue
        self.lazy = queue != "heap"  # true keys in self.key, stale bounds in the queue
        if self.lazy and not (net.jump <= 0).all():
            raise ValueError(f"the {queue} queue (lazy keys) needs purely inhibitory kicks")
        keys = net._keys_from_phases(phases)
        self.hpos = _EMPTY_I
        if queue == "calendar":
            fill = cal.DEFAULT_FILL if fill is None else _number("fill", fill)
            self.key = keys.reshape(-1, 1).copy()
            self.cal = cal.alloc(self.model, net.N, self.p, fill)
            cal.rebuild(self.model, self.key, *self.cal)
            return
        self.h = kern.alloc_heap(net.N)
        if self.lazy:
            self.key = keys.reshape(-1, 1).copy()
        else:
            self.key = _EMPTY_K
            self.hpos = np.empty(net.N, dtype=np.int32)
        kern.heapify(keys, self.h, self.hpos)

    def time(self) -> float:
        if self.model == kern.LIF:
            return float(self.g[1] + self.p[1] * math.log(self.g[0]))
        return float(self.g[1] + self.g[0] / self.p[2])

    def advance(self, n: int, t_stop: float = math.inf, out_t: Optional[np.ndarray] = None,
                out_i: Optional[np.ndarray] = None, Q: Optional[np.ndarray] = None,
                logdet: Optional[np.ndarray] = None) -> int:
        net = self.net
        if self.queue == "calendar":
            return int(cal.advance(self.model, n, t_stop, self.key, *self.cal, net.indptr, net.indices, net.jump,
                                   self.p, self.g, _EMPTY_F if out_t is None else out_t,
                                   _EMPTY_I if out_i is None else out_i, _EMPTY_Q if Q is None else Q,
                                   _EMPTY_F if logdet is None else logdet))
        return int(kern.advance(self.model, n, t_stop, self.h, self.hpos, self.key, net.indptr, net.indices, net.jump,
                                self.p, self.g, _EMPTY_F if out_t is None else out_t,
                                _EMPTY_I if out_i is None else out_i, _EMPTY_Q if Q is None else Q,
                                _EMPTY_F if logdet is None else logdet))

    def phases(self) -> np.ndarray:
        if self.lazy:
            keys = self.key[:, 0].copy()
        else:
            keys = np.empty(self.net.N, dtype=np.float64)
            kern.keys_of(self.h, self.hpos, keys)
        return self.net._phases_from_keys(keys, self.g)


_EMPTY_F = np.zeros(0, dtype=np.float64)
_EMPTY_I = np.zeros(0, dtype=np.int32)
_EMPTY_Q = np.zeros((0, 0), dtype=np.float64)
_EMPTY_K = np.zeros((0, 1), dtype=np.float64)


# ----------------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------------


class EventNetwork:
    """A sparse pulse-coupled network of LIF or theta neurons, simulated exactly, spike by spike.

    See the module docstring for the model, the state (phases) and the algorithm.

    Args:
        N: number of neurons (>= 2).
        K: out-degree (``graph="out"``) or in-degree (``graph="in"``), ``1 <= K <= N - 1``.
        J0: coupling strength; kicks ``-J0 / sqrt(K)`` (``ei``: ``+J0`` / ``-g J0`` over ``sqrt(K)``). >= 0.
        rate: target rate ``nu`` in Hz that sets the drive by the balance equation
            ``iext = tau_m sqrt(K) J_eff nu`` (ignored when ``iext`` is given).
        tau_m: membrane time constant in seconds.
        neuron: ``"lif"`` or ``"theta"``.
        seed: seeds the graph (stream ``[seed, 0]``) and the default initial state (stream ``[seed, 1]``).
        iext: the drive, given directly (``> 0``; e.g. for uncoupled neurons, ``J0 = 0``).
        graph: ``"out"`` (fixed out-degree, SparseProp) or ``"in"`` (fixed in-degree, BalancedNetwork's graph).
        ei, f_E, g: excitatory-inhibitory variant (fraction ``f_E`` excitatory, relative inhibition ``g``).

    Raises ValueError naming the bad argument.
    """

    def __init__(self, N: int, K: int, J0: float, rate: float, tau_m: float, neuron: str = "lif",
                 seed: int = 0, *, iext: Optional[float] = None, graph: str = "out", ei: bool = False,
                 f_E: float = 0.8, g: float = 5.0) -> None:
        N = _int("N", N, 2)
        if isinstance(K, bool) or not isinstance(K, (int, np.integer)) or K < 1:
            raise ValueError(f"K must be an int >= 1 (synapses per neuron), got {K!r}")
        K = int(K)
        if K > N - 1:
            raise ValueError(f"K={K} needs K <= N - 1 = {N - 1}: each neuron connects to K distinct other neurons")
        J0 = _number("J0", J0, allow_zero=True)
        rate = _number("rate", rate)
        tau_m = _number("tau_m", tau_m)
        if neuron not in NEURONS:
            raise ValueError(f"neuron must be one of {NEURONS}, got {neuron!r}")
        seed = _int("seed", seed, 0)
        if graph not in GRAPHS:
            raise ValueError(f"graph must be one of {GRAPHS}, got {graph!r}")
        if N * K > 2**31 - 1:
            raise ValueError(f"N K = {N * K} synapses exceed the int32 index range of the target list")
        self.N, self.K, self.J0, self.rate, self.tau_m = N, K, J0, rate, tau_m
        self.neuron, self.seed, self.graph, self.ei = neuron, seed, graph, bool(ei)
        self.f_E, self.g = (float(f_E), float(g)) if ei else (0.0, 0.0)

        rng = np.random.default_rng([seed, 0])
        scale = J0 / math.sqrt(K)
        self.N_E, self.K_E, self.K_I = 0, 0, K
        if ei:
            if not isinstance(f_E, (int, float)) or isinstance(f_E, bool) or not 0.0 < f_E < 1.0:
                raise ValueError(f"f_E (fraction of excitatory neurons) must lie in (0, 1), got {f_E!r}")
            self.g = _number("g", g, allow_zero=True)
            self.N_E = int(round(f_E * N))
            if not 0 < self.N_E < N:
                raise ValueError(f"ei=True with N={N}, f_E={f_E} leaves a population empty (N_E={self.N_E})")
        if graph == "out":
            post = _out_graph(N, K, rng)
            self.indptr = np.arange(N + 1, dtype=np.int64) * K
            self.indices = post.reshape(-1)
            if ei:
                self.K_E = K * self.N_E / N  # mean excitatory in-degree
                self.K_I = K - self.K_E
        else:
            import torch

            from ..models.balanced import sparse_fixed_indegree

            pre, n_e, k_e, k_i = sparse_fixed_indegree(N, K, generator=torch.Generator().manual_seed(seed),
                                                       ei=self.ei, f_E=f_E)
            if ei:
                self.N_E, self.K_E, self.K_I = n_e, k_e, k_i
            self.indptr, self.indices = _csr_from_pre(pre.numpy(), N)
        self.jump = np.full(N, -scale, dtype=np.float64)
        if ei:
            self.jump[:self.N_E] = scale
            self.jump[self.N_E:] = -self.g * scale
        self.J_eff = J0 * (self.g * self.K_I - self.K_E) / K if ei else J0
        if iext is None:
            if ei and not self.J_eff > 0:
                raise ValueError(f"ei=True with g={self.g}, f_E={self.f_E}: the net coupling J_eff={self.J_eff} is not "
                                 "inhibitory, so the balance equation has no positive drive; raise g or give iext")
            iext = tau_m * math.sqrt(K) * self.J_eff * rate
            if not iext > 0:
                raise ValueError(f"the balance equation gives iext = tau_m sqrt(K) J0 rate = {iext}; it must be > 0 "
                                 "(J0 = 0 needs iext given directly)")
        self.iext = _number("iext", iext)
        if neuron == "lif":
            self.I = 1.0 + self.iext
            self._L = math.log1p(1.0 / self.iext)  # log(I / (I - 1)) = T / tau_m
            self.free_period = tau_m * self._L
        else:
            self.I = self.iext
            self._s = math.sqrt(self.iext)
            self.free_period = math.pi * tau_m / self._s

    # -- parameters and conversions --------------------------------------------------------------

    def _kernel_params(self) -> np.ndarray:
        if self.neuron == "lif":
            return np.array([self.I, self.tau_m, 0.0])
        return np.array([self._s, self.tau_m, 2.0 * self._s / self.tau_m])

    def _keys_from_phases(self, u: np.ndarray) -> np.ndarray:
        """Kernel keys at offset ``E = 1`` / ``Omega = 0``, ``t0 = 0``."""
        if self.neuron == "lif":
            return self.I * np.exp(-u * self._L)
        return -math.pi * (2.0 * u - 1.0)

    def _phases_from_keys(self, keys: np.ndarray, g: np.ndarray) -> np.ndarray:
        if self.neuron == "lif":
            # A neuron kicked to or above threshold by excitation (key <= (I - 1) E) is due to spike at once:
            # phase 1, which continues the same way (its voltage above threshold plays no further role).
            with np.errstate(invalid="ignore", divide="ignore"):
                u = np.log(self.I * g[0] / keys) / self._L
            return np.where(keys <= (self.I - 1.0) * g[0], 1.0, u)
        u = ((g[0] - keys) + math.pi) / (2.0 * math.pi)
        return np.clip(u, 0.0, np.nextafter(1.0, 0.0))  # a neuron just reset can round to -1e-16

    def check_state(self, state: np.ndarray) -> np.ndarray:
        """``state`` as a float64 ``[N]`` array of valid phases (ValueError otherwise)."""
        u = np.asarray(state, dtype=np.float64)
        if u.shape != (self.N,):
            raise ValueError(f"state must be the phases [N] = [{self.N}], got shape {list(u.shape)}")
        if not np.isfinite(u).all():
            raise ValueError("state contains NaN or inf")
        if self.neuron == "lif":
            if (u > 1.0).any():
                raise ValueError("LIF phases must be <= 1 (1 = threshold), got a maximum of "
                                 f"{float(u.max())}")
        elif (u < 0.0).any() or (u >= 1.0).any():
            raise ValueError("theta phases must lie in [0, 1) (0: reset at V = -inf, 1: spike at V = +inf), got "
                             f"[{float(u.min())}, {float(u.max())}]")
        return u

    def voltages(self, phases: np.ndarray) -> np.ndarray:
        """Voltages of phases ``[N]`` (theta: ``-inf`` at phase 0)."""
        u = np.asarray(phases, dtype=np.float64)
        if self.neuron == "lif":
            return self.I * -np.expm1(-u * self._L)
        with np.errstate(divide="ignore"):
            V = self._s * np.tan(math.pi * (u - 0.5))
        return np.where(u == 0.0, -np.inf, V)

    def phases_of(self, voltages: np.ndarray) -> np.ndarray:
        """Phases of voltages ``[N]`` (LIF: ``V < 1``; theta: any ``V``, ``-inf`` the reset)."""
        V = np.asarray(voltages, dtype=np.float64)
        if self.neuron == "lif":
            return np.log(self.I / (self.I - V)) / self._L
        return (2.0 * np.arctan(V / self._s) + math.pi) / (2.0 * math.pi)

    def initial_state(self, seed: Optional[int] = None) -> np.ndarray:
        """Phases drawn uniformly in ``[0, 1)`` (stream ``[seed, 1]``; ``seed`` defaults to the network's)."""
        seed = self.seed if seed is None else _int("seed", seed, 0)
        return np.random.default_rng([seed, 1]).random(self.N)

    def targets(self, j: int) -> np.ndarray:
        """The postsynaptic neurons of neuron ``j``."""
        return self.indices[self.indptr[j]:self.indptr[j + 1]]

    def in_degrees(self) -> np.ndarray:
        """Number of presynaptic partners of each neuron, ``[N]``."""
        return np.bincount(self.indices, minlength=self.N)

    def _engine(self, state0: Optional[np.ndarray], lazy: bool = False, queue: Optional[str] = None,
                fill: Optional[float] = None) -> _Engine:
        """A running simulation from phases ``state0``; ``queue`` ``"heap"`` (default), ``"lazy"`` (also
        ``lazy=True``) or ``"calendar"`` (see :class:`_Engine`; ``fill``: the calendar's neurons per slot)."""
        u = self.initial_state() if state0 is None else self.check_state(state0)
        return _Engine(self, u, lazy, queue, fill)

    # -- simulation ------------------------------------------------------------------------------

    def simulate(self, spikes_per_neuron: Optional[float] = None, warmup_spikes_per_neuron: float = 0, *,
                 duration: Optional[float] = None, state0: Optional[np.ndarray] = None,
                 record: bool = True, queue: str = "auto") -> SimulationResult:
        """Simulate exactly, spike by spike; returns a :class:`SimulationResult`.

        Args:
            spikes_per_neuron: record ``round(spikes_per_neuron * N)`` spikes (or give ``duration``).
            warmup_spikes_per_neuron: spikes simulated first and not recorded (``round(. * N)``).
            duration: record for this many seconds instead (after the warm-up).
            state0: initial phases ``[N]`` (default :meth:`initial_state`).
            record: keep spike times and ids (``False``: only counts, rate and the final state).
            queue: the event queue: ``"heap"`` (the eager heap; any network), or for purely inhibitory networks
                (``ei=False``) ``"lazy"`` (lazy heap) or ``"calendar"`` (calendar queue: O(1) kicks and
                re-insertions); ``"auto"`` (default): the calendar when every kick is inhibitory, else the heap.
                All give the same spikes bit for bit; the calendar measured 2.8-3.3x the heap's spikes per
                second at N = 1e4-1e6 (BENCHMARKS.md).
        """
        if (spikes_per_neuron is None) == (duration is None):
            raise ValueError("give exactly one of spikes_per_neuron and duration")
        warm = int(round(_number("warmup_spikes_per_neuron", warmup_spikes_per_neuron, allow_zero=True) * self.N))
        if queue == "auto":
            queue = "calendar" if bool((self.jump <= 0).all()) else "heap"
        eng = self._engine(state0, queue=queue)
        if warm:
            eng.advance(warm)
        t_start = eng.time()
        if spikes_per_neuron is not None:
            n = int(round(_number("spikes_per_neuron", spikes_per_neuron) * self.N))
            if n < 1:
                raise ValueError(f"spikes_per_neuron={spikes_per_neuron} gives no spike for N={self.N}")
            out_t = np.empty(n if record else 0, dtype=np.float64)
            out_i = np.empty(n if record else 0, dtype=np.int32)
            if record:
                eng.advance(n, out_t=out_t, out_i=out_i)
                t_end = float(out_t[-1])
            else:
                eng.advance(n)
                t_end = eng.time()
            count = n
        else:
            duration = _number("duration", duration)
            t_stop = t_start + duration
            chunk = max(1024, min(1 << 22, int(self.N * max(self.rate, 1.0 / self.free_period) * duration * 1.2) + 1))
            ts, ids, count = [], [], 0
            while True:
                ot = np.empty(chunk if record else 0, dtype=np.float64)
                oi = np.empty(chunk if record else 0, dtype=np.int32)
                done = eng.advance(chunk, t_stop, ot, oi)
                count += done
                if record:
                    ts.append(ot[:done])
                    ids.append(oi[:done])
                if done < chunk:
                    break
            out_t = np.concatenate(ts) if record else np.zeros(0)
            out_i = np.concatenate(ids) if record else np.zeros(0, dtype=np.int32)
            t_end = t_stop
        dur = t_end - t_start
        return SimulationResult(out_t, out_i, count, count / (self.N * dur) if dur > 0 else float("nan"), dur,
                                t_start, t_end, eng.phases(), self.N)

    # -- the time-stepped counterpart ------------------------------------------------------------

    def to_balanced(self, dt: float, *, tau_s: float = 0.0, surrogate="atan", dtype=None, **kwargs):
        """The time-stepped :class:`surroflos.BalancedNetwork` with the same graph and parameters (LIF only).

        Same neurons (``tau_m``, threshold 1, reset 0, drive ``I_ext = 1 + iext``, i.e. ``I0 = I_ext / sqrt(K)``),
        the same synapses and kicks (``synapse_norm="tau_m"``: a spike moves the target's ``V`` by ``J_j``;
        ``tau_s = 0``, the default, makes them instantaneous, as here). The time-stepped network delivers a
        spike at the end of the step in which the threshold was crossed, so its spike times converge to the
        exact ones as ``dt -> 0`` (error O(dt)). Its pattern is stored per postsynaptic neuron, ``pre_idx
        [N, K_max]``; with ``graph="out"`` in-degrees vary and rows are padded to the largest in-degree with
        zero-weight synapses from the neuron itself (no effect on the dynamics or the tangent map).
        ``dtype`` defaults to float64; other keyword arguments go to :class:`BalancedNetwork`.
        Use :meth:`balanced_state` for the matching initial state.
        """
        if self.neuron != "lif":
            raise ValueError("BalancedNetwork is a network of LIF neurons; a theta network has no time-stepped "
                             "counterpart there")
        import torch

        from ..models.balanced import BalancedNetwork

        dtype = dtype or torch.float64
        for key in ("N", "K", "J0", "I0", "tau_m", "synapse_norm", "ei", "f_E", "g", "n_in"):
            if key in kwargs:
                raise ValueError(f"to_balanced sets {key!r} from the EventNetwork; it cannot be given")
        net = BalancedNetwork(self.N, self.K, self.J0, (1.0 + self.iext) / math.sqrt(self.K), self.tau_m, tau_s, dt,
                              synapse_norm="tau_m", surrogate=surrogate, dtype=dtype,
                              generator=torch.Generator().manual_seed(self.seed), **kwargs)
        # Incoming lists: for each postsynaptic neuron, its presynaptic partners and their kicks.
        pre_of = np.repeat(np.arange(self.N, dtype=np.int64), np.diff(self.indptr))
        post = self.indices.astype(np.int64)
        order = np.lexsort((pre_of, post))
        post_s, pre_s = post[order], pre_of[order]
        counts = np.bincount(post_s, minlength=self.N)
        width = int(counts.max()) if counts.size else 0
        start = np.zeros(self.N, dtype=np.int64)
        np.cumsum(counts[:-1], out=start[1:])
        rank = np.arange(post_s.size) - start[post_s]
        pre_idx = np.repeat(np.arange(self.N, dtype=np.int64)[:, None], width, axis=1)  # padding: self, weight 0
        weight = np.zeros((self.N, width), dtype=np.float64)
        pre_idx[post_s, rank] = pre_s
        weight[post_s, rank] = self.jump[pre_s]
        device = net.weight_rec.device
        net.pre_idx = torch.as_tensor(pre_idx, device=device).to(torch.int32)
        w = torch.as_tensor(weight, dtype=dtype, device=device)
        if isinstance(net.weight_rec, torch.nn.Parameter):
            net.weight_rec = torch.nn.Parameter(w)
        else:
            net.weight_rec = w
        return net

    def balanced_state(self, state: Optional[np.ndarray] = None):
        """The ``[1, 2N]`` state ``[I | V]`` of :meth:`to_balanced`'s network for phases ``state`` (float64)."""
        import torch

        u = self.initial_state() if state is None else self.check_state(state)
        V = torch.as_tensor(self.voltages(u), dtype=torch.float64)
        return torch.cat([torch.zeros(self.N, dtype=torch.float64), V]).unsqueeze(0)

    def __repr__(self) -> str:
        s = (f"EventNetwork(N={self.N}, K={self.K}, J0={self.J0}, rate={self.rate}, tau_m={self.tau_m}, "
             f"neuron={self.neuron!r}, seed={self.seed}, graph={self.graph!r}, iext={self.iext:.6g}")
        if self.ei:
            s += f", ei=True, f_E={self.f_E}, g={self.g}"
        return s + ")"
