"""Sparse balanced network of current-based LIF neurons (seed 000), trainable with surrogate gradients.

Model (van Vreeswijk & Sompolinsky; Engelken & Abbott). ``N`` neurons; neuron ``i`` receives exactly
``K`` synapses from ``K`` distinct presynaptic neurons ``j != i`` drawn uniformly at random (a sparse
directed Erdos-Renyi graph with fixed in-degree; out-degrees are binomial). All weights are
``J_ij = -J0 / sqrt(K)``; the constant external drive is ``I_ext = I0 sqrt(K)``::

    tau_m dV_i/dt = -V_i + I_i + I_ext + (W_in x)_i
    tau_s dI_i/dt = -I_i + c tau_s sum_j J_ij sum_s delta(t - t_j^s)

threshold 1, reset to 0. **Times are in seconds** (defaults ``tau_m = 10 ms``, ``tau_s = 2 ms``,
``dt = 0.1 ms``), rates in Hz, Lyapunov exponents in 1/s.

Defaults ``N = 1000, K = 100, J0 = 2, I0 = 0.5``: balance predicts 25 Hz; the network fires at ~22-24 Hz
(approaching 25 Hz as K grows) with ISI CV ~1, a mean input ~0.45 below threshold (fluctuation-driven) and
no population synchrony. With ``J0 = 1, I0 = 1`` (100 Hz predicted) the mean input is above threshold and
firing is much more regular (CV ~0.3-0.5). The balanced state needs ``I_ext = I0 sqrt(K)`` well above the
threshold; for ``I0 sqrt(K) < 1`` an inhibition-dominated network falls silent.

Spike normalisation ``c`` (``synapse_norm``):

- ``"tau_m"`` (default): ``c = tau_m / tau_s``, i.e. ``tau_s dI/dt = -I + tau_m sum J delta``. Every spike
  delivers the same total charge as a delta pulse that makes ``V`` jump by ``J_ij`` (the pulse-coupled
  LIF of Engelken's SparseProp code, reached exactly as ``tau_s -> 0``; ``tau_s = 0`` is allowed).
  The mean recurrent current is ``sqrt(K) J0 tau_m nu``, so balance predicts ``nu = I0 / (J0 tau_m)``.
- ``"tau_s"``: ``c = 1``, the seed's equation as written: a spike adds ``J_ij`` to ``I``. The mean current is
  ``sqrt(K) J0 tau_s nu`` and the balance prediction is ``nu = I0 / (J0 tau_s)``.

:meth:`BalancedNetwork.balanced_rate` returns the prediction for the chosen convention.

Discrete time (step ``dt``; the linear flow between steps is integrated exactly, spikes act at step
boundaries, the external input is held constant during a step). State ``[I | V]: [B, 2N]``; ``V`` is
stored *before* the reset, spikes are read off the state, ``S[t] = H(V[t] - 1)``::

    s      = H(V - 1)                                 (surrogate derivative in backward / jvp)
    V_r    = (1 - s) V                                (reset to 0; s detached by default)
    r      = sum_k w[i, k] s[pre[i, k]]               (sparse recurrent input, r = J s)
    u      = I_ext + W_in x
    I_new  = a_s I + a_s c r
    V_new  = a_m V_r + b I + b c r + (1 - a_m) u
    out    = H(V_new - 1)

with ``a_m = exp(-dt/tau_m)``, ``a_s = exp(-dt/tau_s)`` and ``b = tau_s / (tau_s - tau_m) (a_s - a_m)``
(``b = (dt/tau_m) a_m`` when ``tau_s = tau_m``; for ``tau_s -> 0``: ``a_s = b = 0`` and ``b c -> a_m``).
So ``(I_new, V_new)`` is the exact solution after ``dt`` of the ODEs above started from
``(I + c r, V_r)``: the spikes of step t act at the start of step t+1 (a one-step synaptic delay).

Surrogate tangent map (``Q = [Q_I; Q_V]: [B, 2N, k]``, ``d = sigma'(V - 1)``, ``e = 1 - s`` for a detached
reset, ``e = 1 - s - d V`` otherwise)::

    dr     = J (d * Q_V)                 (sparse, never densified)
    dI_new = a_s Q_I + a_s c dr
    dV_new = a_m e Q_V + b Q_I + b c dr

Excitatory-inhibitory variant (``ei=True``): the first ``N_E = round(f_E N)`` neurons are excitatory;
every neuron receives exactly ``K_E = round(f_E K)`` synapses from distinct excitatory neurons with weight
``+J0 / sqrt(K)`` and ``K_I = K - K_E`` from distinct inhibitory neurons with weight ``-g J0 / sqrt(K)``
(no self-connections). Balance needs inhibition dominance, ``g K_I > K_E``; with equal E and I rates
(every neuron receives statistically identical input) it predicts ``nu = I0 / (J_eff tau)`` with
``J_eff = J0 (g K_I - K_E) / K``.

Surrogate spectra depend on ``dt`` and the surrogate: a neuron near threshold contributes ``sigma'`` at
*every* step it spends within the surrogate's width, so the surrogate feedback per unit time grows like
``1/dt`` (measured at N = 200, K = 20: lambda_1 ~ 1500/s with atan(2) at dt = 0.1 ms, ~160/s with
fast_sigmoid(25); ~490/s and ~-30/s at dt = 0.5 ms).

Storage: ``pre_idx [N, K]`` (int32 buffer: presynaptic ids, sorted per row) and ``weight_rec [N, K]``
(values; an ``nn.Parameter`` with ``learn_recurrent=True``, else a buffer). Trainable weights keep the
fixed sparsity pattern; no ``N x N`` matrix is ever formed. The differentiable step gathers
``s[..., pre_idx]`` (``B N K`` temporaries; ``B N K k`` in the tangent map).

Backends (``backend="auto" | "torch" | "triton"``, :mod:`surroflos.kernels.backend`):
:meth:`BalancedNetwork.rollout` (so also ``model(x)``) and :meth:`BalancedNetwork.simulate` run the whole
sequence through :func:`surroflos.kernels.balanced.balanced_sequence`: with ``"torch"`` (``"auto"`` on the
CPU) an event-driven loop (work per step proportional to the number of spikes times the largest
out-degree, through a presynaptic-major copy of the pattern padded to the largest out-degree, about
``K + 4 sqrt(K)``, built on first use and cached, not saved in the state dict) with an explicit reverse-time
backward; with ``"triton"`` (``"auto"`` on CUDA) fused per-step kernels. In a subclass that replaces
``step_function``, :meth:`BalancedNetwork.rollout` keeps the generic per-step loop (``simulate`` always runs
the built-in dynamics). :meth:`BalancedNetwork.backend_tangent_function` gives
the fused tangent map (:func:`surroflos.kernels.balanced.balanced_tangent_fused`) for ``"triton"``.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from typing import NamedTuple, Optional

import torch
from torch import nn

from .. import surrogate as sg
from .._random import rand, randn
from ..kernels.backend import check_backend, resolve_backend
from ..kernels.balanced import balanced_sequence, balanced_tangent_fused, prepare_pattern
from .base import RecurrentModel, Rollout, check_inputs, check_state_and_model

__all__ = ["BalancedParams", "BalancedNetwork", "balanced_step", "balanced_tangent", "balanced_tangent_kernel",
           "sparse_fixed_indegree", "plot_raster", "SYNAPSE_NORMS"]

SYNAPSE_NORMS = ("tau_m", "tau_s")
_SIM_CHUNK_BYTES = 16 << 20  # simulate(): states kept per chunk of time (nothing of size N K is redone per chunk)


class BalancedParams(NamedTuple):
    """Tensors and constants read by :func:`balanced_step` and :func:`balanced_tangent`."""

    weight_rec: torch.Tensor  # w [N, K]: weight of the k-th synapse onto neuron i
    pre_idx: torch.Tensor  # [N, K] int32 (int64 accepted): presynaptic neuron of that synapse
    weight_in: torch.Tensor  # W_in [N, n_in]
    drive: torch.Tensor  # I_ext, scalar or [N]
    a_m: float  # exp(-dt / tau_m)
    a_s: float  # exp(-dt / tau_s)
    b: float  # weight of I in the exact V update
    bc: float  # b * c: weight of a spike in V after one step
    ac: float  # a_s * c: weight of a spike in I after one step
    surrogate: sg.Surrogate
    detach_reset: bool


# ----------------------------------------------------------------------------------------------
# Pure functions
# ----------------------------------------------------------------------------------------------


def _check_step_args(x: torch.Tensor, state: torch.Tensor, p: BalancedParams) -> None:
    N = p.pre_idx.shape[0]
    if state.shape[-1] != 2 * N:
        raise ValueError(f"state must have 2N = {2 * N} entries ([I | V]) in its last dimension, "
                         f"got shape {tuple(state.shape)}")
    if x.shape[-1] != p.weight_in.shape[1]:
        raise ValueError(f"x has {x.shape[-1]} features, the network expects n_in={p.weight_in.shape[1]}")
    if x.shape[:-1] != state.shape[:-1]:
        raise ValueError(f"x {tuple(x.shape)} and state {tuple(state.shape)} disagree on the batch size")
    if x.dtype != state.dtype or state.dtype != p.weight_rec.dtype:
        raise ValueError(f"dtype mix: x is {x.dtype}, state is {state.dtype}, the network is "
                         f"{p.weight_rec.dtype}; convert them to one dtype")


def _recurrent(s: torch.Tensor, p: BalancedParams) -> torch.Tensor:
    """``r_i = sum_k w[i, k] s[pre[i, k]]`` for ``s: [..., N]`` (gather; differentiable in ``s`` and ``w``)."""
    N, K = p.pre_idx.shape
    g = s.index_select(-1, p.pre_idx.reshape(-1)).unflatten(-1, (N, K))  # [..., N, K]
    return torch.einsum("...nk,nk->...n", g, p.weight_rec)


def balanced_step(x: torch.Tensor, state: torch.Tensor, p: BalancedParams) -> tuple[torch.Tensor, torch.Tensor]:
    """One step ``(S[t+1], [I | V][t+1])`` of the balanced network from ``x: [B, n_in]`` and ``state: [B, 2N]``."""
    _check_step_args(x, state, p)
    I, V = state.chunk(2, dim=-1)
    s = p.surrogate(V - 1.0)
    R = s.detach() if p.detach_reset else s
    r = _recurrent(s, p)
    u = p.drive + x @ p.weight_in.T if p.weight_in.shape[1] else p.drive
    I_new = p.a_s * I + p.ac * r
    V_new = p.a_m * (1.0 - R) * V + p.b * I + p.bc * r + (1.0 - p.a_m) * u
    return p.surrogate(V_new - 1.0), torch.cat([I_new, V_new], dim=-1)


def balanced_tangent(x: torch.Tensor, state: torch.Tensor, p: BalancedParams, Q: torch.Tensor) -> torch.Tensor:
    """The surrogate Jacobian of :func:`balanced_step` applied to ``Q: [B, 2N, k]`` (sparse product)."""
    _check_step_args(x, state, p)
    N = p.pre_idx.shape[0]
    if Q.ndim != state.ndim + 1 or Q.shape[-2] != 2 * N or Q.shape[:-2] != state.shape[:-1]:
        raise ValueError(f"Q must have shape [B, 2N, k] = [{', '.join(map(str, state.shape[:-1]))}, {2 * N}, k], "
                         f"got {tuple(Q.shape)}")
    I, V = state.chunk(2, dim=-1)
    QI, QV = Q.chunk(2, dim=-2)
    v = V - 1.0
    d = p.surrogate.derivative(v)
    s = (v > 0).to(v.dtype)  # the spikes as constants (the reset factor carries no surrogate derivative)
    e = 1.0 - s if p.detach_reset else 1.0 - s - d * V
    X = d.unsqueeze(-1) * QV  # [B, N, k]
    # dr_i = sum_k w[i, k] X[pre[i, k]]: gather rows, weight, sum over the K synapses.
    G = X.index_select(-2, p.pre_idx.reshape(-1)).unflatten(-2, (N, p.pre_idx.shape[1]))  # [B, N, K, k]
    dr = torch.einsum("...nkq,nk->...nq", G, p.weight_rec)
    dI = p.a_s * QI + p.ac * dr
    dV = p.a_m * e.unsqueeze(-1) * QV + p.b * QI + p.bc * dr
    return torch.cat([dI, dV], dim=-2)


def balanced_tangent_kernel(x: torch.Tensor, state: torch.Tensor, p: BalancedParams, Q: torch.Tensor, *,
                            backend: str = "triton") -> torch.Tensor:
    """:func:`balanced_tangent` through the fused op :func:`surroflos.kernels.balanced.balanced_tangent_fused`.

    Same arguments and result; ``d = sigma'(V - 1)`` and the reset factor ``e`` are computed here with
    PyTorch (differentiable in the state), the sparse product and its epilogue by the fused op.
    """
    _check_step_args(x, state, p)
    N = p.pre_idx.shape[0]
    if Q.ndim != state.ndim + 1 or Q.shape[-2] != 2 * N or Q.shape[:-2] != state.shape[:-1]:
        raise ValueError(f"Q must have shape [B, 2N, k] = [{', '.join(map(str, state.shape[:-1]))}, {2 * N}, k], "
                         f"got {tuple(Q.shape)}")
    lead = state.shape[:-1]
    state2 = state.reshape(-1, 2 * N)  # the op takes [B, ...]: flatten any leading dimensions
    V = state2[:, N:]
    v = V - 1.0
    d = p.surrogate.derivative(v)
    s = (v > 0).to(v.dtype)
    e = 1.0 - s if p.detach_reset else 1.0 - s - d * V
    out = balanced_tangent_fused(d, e, Q.reshape(-1, 2 * N, Q.shape[-1]), p.weight_rec, p.pre_idx, p.a_m, p.a_s,
                                 p.b, p.bc, p.ac, backend=backend)
    return out.reshape(*lead, 2 * N, Q.shape[-1])


# ----------------------------------------------------------------------------------------------
# Connectivity
# ----------------------------------------------------------------------------------------------


_ROW_CHUNK = 1 << 22  # entries per chunk when drawing the connectivity (bounds the temporaries)


def _sample_rows(n_rows: int, pool: int, k: int, self_idx: Optional[torch.Tensor], generator,
                 dtype: torch.dtype = torch.long) -> torch.Tensor:
    """``[n_rows, k]`` distinct indices in ``[0, pool)`` per row, excluding ``self_idx[row]`` if given.

    Sparse case (k small against the pool): draw with replacement and redraw duplicates until none are left
    (vectorised rejection, O(n_rows k) memory). Dense case: top-k of random keys, a chunk of rows at a time.
    """
    m = pool - 1 if self_idx is not None else pool  # candidates per row
    if k > m:
        raise ValueError(f"cannot draw {k} distinct presynaptic partners from {m} candidates")
    if k == 0:
        return torch.zeros(n_rows, 0, dtype=dtype)
    if 4 * k <= m:
        # Drawn and sorted a chunk of rows at a time into one [n_rows, k] tensor: the same random stream as one
        # draw of all rows, without its sort's full-size temporaries (values and int64 indices: 1.6 GB at
        # N = 1e6, K = 100).
        idx = torch.empty(n_rows, k, dtype=dtype)
        step = max(1, _ROW_CHUNK // k)
        for lo in range(0, n_rows, step):
            idx[lo:lo + step] = torch.randint(0, m, (min(step, n_rows - lo), k), generator=generator).sort(dim=1).values
        rows = torch.arange(n_rows)
        sub = idx
        while True:  # only rows that still hold a duplicate are redrawn and re-sorted
            dup = torch.zeros_like(sub, dtype=torch.bool)
            dup[:, 1:] = sub[:, 1:] == sub[:, :-1]
            bad = dup.any(dim=1)
            if not bool(bad.any()):
                break
            rows, sub, dup = rows[bad], sub[bad], dup[bad]
            sub[dup] = torch.randint(0, m, (int(dup.sum()),), generator=generator).to(sub.dtype)
            sub = sub.sort(dim=1).values
            idx[rows] = sub
    else:
        chunk = max(1, (1 << 22) // max(m, 1))
        parts = []
        for start in range(0, n_rows, chunk):
            rows = min(chunk, n_rows - start)
            keys = torch.rand(rows, m, generator=generator)
            parts.append(keys.topk(k, dim=1).indices)
        idx = torch.cat(parts).sort(dim=1).values.to(dtype)
    if self_idx is not None:  # skip self: candidates >= self shift up by one (monotone, so rows stay sorted)
        step = max(1, _ROW_CHUNK // max(k, 1))
        for lo in range(0, n_rows, step):  # in place, a chunk at a time (no full-size temporaries)
            part = idx[lo:lo + step]
            part += part >= self_idx[lo:lo + step].unsqueeze(1)
    return idx


def sparse_fixed_indegree(N: int, K: int, *, generator: torch.Generator | None = None,
                          ei: bool = False, f_E: float = 0.8,
                          dtype: torch.dtype = torch.long) -> tuple[torch.Tensor, int, int, int]:
    """Presynaptic ids ``[N, K]`` (``dtype``, int64 by default; CPU) of a random fixed-in-degree graph without
    self-loops. The ids do not depend on ``dtype`` (int32 halves the memory: 0.4 GB at N = 1e6, K = 100).

    Returns ``(pre_idx, N_E, K_E, K_I)``. With ``ei=False`` every neuron draws ``K`` distinct partners
    among the other ``N - 1`` (``N_E = 0``, ``K_E = 0``, ``K_I = K``). With ``ei=True`` neurons
    ``0..N_E-1`` are excitatory and row ``i`` holds ``K_E`` excitatory then ``K_I`` inhibitory ids.
    """
    if generator is not None and generator.device.type != "cpu":
        raise ValueError("the connectivity is drawn on the CPU: pass a CPU torch.Generator")
    rows = torch.arange(N)
    if not ei:
        return _sample_rows(N, N, K, rows, generator, dtype), 0, 0, K
    N_E = int(round(f_E * N))
    K_E = int(round(f_E * K))
    N_I, K_I = N - N_E, K - K_E
    if K_E > N_E - 1 or K_I > N_I - 1:
        raise ValueError(f"ei=True with N={N}, K={K}, f_E={f_E}: each neuron needs K_E={K_E} excitatory and "
                         f"K_I={K_I} inhibitory partners, but there are only N_E={N_E} and N_I={N_I} "
                         "neurons in the populations (one of which may be itself); increase N")
    eE = _sample_rows(N_E, N_E, K_E, rows[:N_E], generator, dtype)  # E <- E
    iE = _sample_rows(N_I, N_E, K_E, None, generator, dtype)  # I <- E
    eI = _sample_rows(N_E, N_I, K_I, None, generator, dtype) + N_E  # E <- I
    iI = _sample_rows(N_I, N_I, K_I, rows[:N_I], generator, dtype) + N_E  # I <- I
    pre = torch.cat([torch.cat([eE, eI], dim=1), torch.cat([iE, iI], dim=1)], dim=0)
    return pre, N_E, K_E, K_I


# ----------------------------------------------------------------------------------------------
# Module
# ----------------------------------------------------------------------------------------------


def _check_positive(name: str, value, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'non-negative' if allow_zero else 'positive'} and finite, got {value!r}")
    return v


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


class BalancedNetwork(RecurrentModel):
    """Sparse balanced LIF network with current-based synapses (seed 000); see the module docstring.

    Args:
        N: number of neurons.
        K: synapses per neuron (exact in-degree), ``1 <= K <= N - 1``.
        J0: coupling strength; weights ``-J0 / sqrt(K)`` (or ``+J0``/``-g J0`` over ``sqrt(K)`` with ``ei``).
            Default 2 (with ``I0 = 0.5``: 25 Hz predicted, irregular firing; see the module docstring).
        I0: drive; ``I_ext = I0 sqrt(K)`` (a buffer ``drive``, one value per neuron).
        tau_m, tau_s: membrane and synaptic time constants in seconds (``tau_s = 0``: delta synapses,
            only with ``synapse_norm="tau_m"``).
        dt: time step in seconds (also the unit of ``model.dt``: exponents come out in 1/s).
        n_in, n_out: input features (``W_in: [N, n_in]``, trainable, ``N(0, input_scale^2)``) and readout
            size (``nn.Linear(N, n_out)`` on the spikes, seeded uniform ``+-1/sqrt(N)``, zero bias).
        synapse_norm: ``"tau_m"`` (default, spike jump ``c = tau_m / tau_s``) or ``"tau_s"`` (``c = 1``).
        ei, f_E, g: excitatory-inhibitory variant (see the module docstring).
        learn_recurrent: make the ``K`` weights per neuron trainable (the pattern stays fixed).
        surrogate: spike surrogate (name or :class:`~surroflos.surrogate.Surrogate`). Default
            ``Surrogate("atan", 2)``: ``sigma'(x) = 1 / (1 + (pi x)^2)``, peak 1 per unit of the distance
            ``x = V - 1`` to threshold (the threshold-to-reset gap is 1).
        detach_reset: detach the reset from the graph (default True, as in :class:`SpikingRNN`).
        generator: seeds the graph, the input and the readout weights.
        backend: ``"auto"`` (default), ``"torch"`` or ``"triton"``: the implementation of :meth:`rollout`,
            :meth:`simulate` and :meth:`backend_tangent_function` (see the module docstring); resolved
            against the device of the inputs / weights at each call.
    """

    step_function = staticmethod(balanced_step)
    tangent_function = staticmethod(balanced_tangent)

    def __init__(self, N: int = 1000, K: int = 100, J0: float = 2.0, I0: float = 0.5, tau_m: float = 10e-3,
                 tau_s: float = 2e-3, dt: float = 1e-4, *, n_in: int = 0, n_out: int = 0,
                 synapse_norm: str = "tau_m", ei: bool = False, f_E: float = 0.8, g: float = 5.0,
                 learn_recurrent: bool = False, surrogate: sg.SurrogateLike = "atan", detach_reset: bool = True,
                 input_scale: float = 1.0, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 backend: str = "auto") -> None:
        super().__init__()
        N = _check_int("N", N, 2)
        if isinstance(K, bool) or not isinstance(K, int) or K < 1:
            raise ValueError(f"K must be an int >= 1 (synapses per neuron), got {K!r}")
        if K >= N:
            raise ValueError(f"K={K} synapses per neuron need K < N={N}: every neuron draws K distinct "
                             "presynaptic partners among the other N - 1")
        n_in, n_out = _check_int("n_in", n_in, 0), _check_int("n_out", n_out, 0)
        J0 = _check_positive("J0", J0, allow_zero=True)
        if isinstance(I0, bool) or not isinstance(I0, (int, float)) or not math.isfinite(I0):
            raise ValueError(f"I0 must be a finite number, got {I0!r}")
        tau_m = _check_positive("tau_m", tau_m)
        tau_s = _check_positive("tau_s", tau_s, allow_zero=True)
        dt = _check_positive("dt", dt)
        input_scale = _check_positive("input_scale", input_scale, allow_zero=True)
        if synapse_norm not in SYNAPSE_NORMS:
            raise ValueError(f"synapse_norm must be one of {SYNAPSE_NORMS}, got {synapse_norm!r}")
        if tau_s == 0 and synapse_norm == "tau_s":
            raise ValueError("tau_s = 0 (delta synapses) needs synapse_norm='tau_m'; with 'tau_s' spikes would "
                             "have no effect")
        if ei:
            if not (isinstance(f_E, (int, float)) and 0.0 < f_E < 1.0):
                raise ValueError(f"f_E (fraction of excitatory neurons) must lie in (0, 1), got {f_E!r}")
            g = _check_positive("g", g, allow_zero=True)
        dtype = dtype or torch.get_default_dtype()
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be floating point, got {dtype}")

        self.N, self.K, self.J0, self.I0 = N, K, J0, float(I0)
        self.n_hidden, self.n_in, self.n_out = N, n_in, n_out
        self.tau_m, self.tau_s, self.dt = tau_m, tau_s, dt
        self.synapse_norm, self.ei = synapse_norm, bool(ei)
        self.f_E, self.g = (float(f_E), float(g)) if ei else (0.0, 0.0)
        self.surrogate = sg.get(surrogate)
        self.detach_reset = bool(detach_reset)
        self.backend = check_backend(backend)

        pre, self.N_E, self.K_E, self.K_I = sparse_fixed_indegree(N, K, generator=generator, ei=self.ei, f_E=f_E,
                                                                  dtype=torch.int32)
        scale = J0 / math.sqrt(K)
        w = torch.full((N, K), -scale, dtype=dtype)
        if self.ei:
            w[:, :self.K_E] = scale
            w[:, self.K_E:] = -self.g * scale
        self.register_buffer("pre_idx", pre.to(device=device, dtype=torch.int32))  # ids < N: int32 halves 0.8 GB at 1e6
        if learn_recurrent:
            self.weight_rec = nn.Parameter(w.to(device))
        else:
            self.register_buffer("weight_rec", w.to(device))
        self.weight_in = nn.Parameter((randn(N, n_in, generator=generator, dtype=dtype) * input_scale).to(device))
        self.register_buffer("drive", torch.full((N,), self.I0 * math.sqrt(K), dtype=dtype, device=device))
        with warnings.catch_warnings():  # nn.Linear warns about initialising an empty weight when n_out = 0
            warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
            self.readout_layer = nn.Linear(N, n_out, device=device, dtype=dtype)
        bound = 1.0 / math.sqrt(N)
        with torch.no_grad():
            self.readout_layer.weight.copy_(rand(n_out, N, generator=generator, dtype=dtype) * 2 * bound - bound)
            self.readout_layer.bias.zero_()

        # Exact one-step propagator of the linear flow.
        if synapse_norm == "tau_s":
            self.c = 1.0
        else:  # inf for delta synapses (tau_s = 0): only the finite products b c and a_s c are used
            self.c = tau_m / tau_s if tau_s > 0 else math.inf
        self.a_m = math.exp(-dt / tau_m)
        if tau_s == 0:
            self.a_s, self.b, self.bc, self.ac = 0.0, 0.0, self.a_m, 0.0
        else:
            self.a_s = math.exp(-dt / tau_s)
            rr = dt / tau_m - dt / tau_s
            self.b = self.a_m * (dt / tau_m) * (math.expm1(rr) / rr if rr != 0 else 1.0)
            self.bc, self.ac = self.b * self.c, self.a_s * self.c

    # -- protocol ------------------------------------------------------------------------------

    @property
    def state_dim(self) -> int:
        return 2 * self.N

    def params(self) -> BalancedParams:
        return BalancedParams(self.weight_rec, self.pre_idx, self.weight_in, self.drive, self.a_m, self.a_s,
                              self.b, self.bc, self.ac, self.surrogate, self.detach_reset)

    def _factory(self) -> dict:
        return {"device": self.weight_rec.device, "dtype": self.weight_rec.dtype}

    def initial_state(self, batch: int, *, random: bool = False, generator: torch.Generator | None = None,
                      device=None, dtype=None) -> torch.Tensor:
        """Zeros ``[batch, 2N]``, or (``random=True``) ``V ~ U[0, 1)`` and ``I`` at the value that cancels the
        constant drive in the V update (``b I = -(1 - a_m) I_ext``: the balanced mean; ``I = 0`` when
        ``tau_s = 0``).

        The zero state is fully symmetric (every neuron has the same in-degree and weights), so from it all
        neurons stay synchronous; use ``random=True`` to start in the asynchronous state.
        """
        batch = _check_int("batch", batch, 1)
        f = self._factory()
        device, dtype = device or f["device"], dtype or f["dtype"]
        if dtype != f["dtype"]:
            raise ValueError(f"dtype mix: the network is {f['dtype']}, a state of dtype {dtype} was asked for; "
                             f"convert the network (net.to({dtype})) or the inputs")
        state = torch.zeros(batch, 2 * self.N, device=device, dtype=dtype)
        if random:
            state[:, self.N:] = rand(batch, self.N, generator=generator, dtype=dtype).to(device)
            if self.b > 0:
                state[:, :self.N] = -(1.0 - self.a_m) / self.b * self.drive.detach()
        return state

    def readout(self, activity: torch.Tensor) -> torch.Tensor:
        return self.readout_layer(activity)

    def spikes(self, states: torch.Tensor) -> torch.Tensor:
        """Spikes ``H(V - 1)`` read off a state trajectory ``[..., 2N]`` (no gradient)."""
        return (states[..., self.N:] > 1.0).to(states.dtype)

    def flossing_parameters(self) -> list[nn.Parameter]:
        """Recurrent weights (if trainable) and input weights."""
        names = ("weight_rec", "weight_in")
        return [p for n, p in self.named_parameters() if n in names and p.requires_grad]

    # -- theory --------------------------------------------------------------------------------

    @property
    def J_eff(self) -> float:
        """Net inhibitory coupling ``-sqrt(K) * mean weight``: ``J0``, or ``J0 (g K_I - K_E) / K`` with ``ei``."""
        if self.ei:
            return self.J0 * (self.g * self.K_I - self.K_E) / self.K
        return self.J0

    def balanced_rate(self) -> float:
        """Large-K balance prediction of the mean rate in Hz: ``I0 / (J_eff tau)`` with ``tau = tau_m``
        (``synapse_norm="tau_m"``) or ``tau_s``; NaN when the net coupling is not inhibitory."""
        tau = self.tau_m if self.synapse_norm == "tau_m" else self.tau_s
        return self.I0 / (self.J_eff * tau) if self.J_eff > 0 else float("nan")

    # -- event-driven simulation ---------------------------------------------------------------

    def _sequence_backend(self, device: torch.device) -> Optional[str]:
        """The resolved backend of the fused sequence, or None for the generic per-step loop."""
        backend = resolve_backend(self.backend, device)
        if self.step_function is not balanced_step:  # a subclass replaced the dynamics
            if self.backend == "triton":
                raise ValueError(f"backend='triton': {type(self).__name__} replaces step_function, which the fused "
                                 "kernels do not implement; use backend='torch' or 'auto' (the per-step loop)")
            return None
        return backend

    def _drive_sequence(self, inputs: Optional[torch.Tensor], steps: int, batch: int) -> torch.Tensor:
        """The external input current ``u = I_ext + W_in x[t]`` of every step, ``[T, B, N]`` (expanded if constant)."""
        if inputs is None or self.n_in == 0:
            return self.drive.expand(steps, batch, self.N)
        return self.drive + inputs @ self.weight_in.T

    def _sequence(self, u: torch.Tensor, state0: torch.Tensor, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
        return balanced_sequence(u, state0, self.weight_rec, self.pre_idx, a_m=self.a_m, a_s=self.a_s, b=self.b,
                                 bc=self.bc, ac=self.ac, surrogate=self.surrogate, detach_reset=self.detach_reset,
                                 backend=backend)

    def rollout(self, x: torch.Tensor, state0: torch.Tensor | None = None) -> Rollout:
        """Simulate ``x: [T, B, n_in]`` with surrogate gradients: outputs, states ``[T, B, 2N]`` and spikes.

        The same trajectory as looping :func:`balanced_step`, computed by the fused sequence op (one
        whole-sequence autograd node; see the module docstring on backends).
        """
        check_inputs(x, self.n_in)
        check_state_and_model(self, x, state0)
        backend = self._sequence_backend(x.device)
        if backend is None:
            return super().rollout(x, state0)
        batch = x.shape[1]
        state = self.initial_state(batch, device=x.device, dtype=x.dtype) if state0 is None else state0
        spikes, states = self._sequence(self._drive_sequence(x, x.shape[0], batch), state, backend)
        return Rollout(self.readout(spikes), states, spikes)

    def backend_tangent_function(self, backend: str):
        """The fused tangent map for ``backend``: a function ``(x, state, params, Q) -> D Q`` or None.

        ``"triton"`` gives :func:`balanced_tangent_kernel` on the Triton op (same numbers as
        :func:`balanced_tangent`); ``"torch"`` gives None (use ``tangent_function``); ``"auto"`` resolves
        against the weights' device. None as well when a subclass replaced ``tangent_function``.
        """
        resolved = resolve_backend(check_backend(backend), self.weight_rec.device)
        if resolved != "triton" or self.tangent_function is not balanced_tangent:
            return None
        return functools.partial(balanced_tangent_kernel, backend="triton")

    @torch.no_grad()
    def simulate(self, steps: int, batch: int | None = None, inputs: torch.Tensor | None = None,
                 state0: torch.Tensor | None = None, generator: torch.Generator | None = None, *,
                 return_state: bool = False):
        """Simulation without gradient: boolean spikes ``[steps, B, N]``.

        Same update as :func:`balanced_step` with the Heaviside forward (``spikes[t]`` is ``H(V - 1)`` after
        step ``t``, like the step function's output). ``inputs``: optional ``[steps, B, n_in]``; ``state0``:
        ``[B, 2N]`` (default ``initial_state(B, random=True, generator=generator)``); ``batch`` defaults to
        the batch of ``inputs`` / ``state0``, else 1. With ``return_state=True`` returns
        ``(spikes, final_state, mean_current)``, where ``mean_current [B, N]`` is the time average of the
        total input ``u + (b I + b c r) / (1 - a_m)`` that the V update integrates (``u = I_ext + W_in x``; its mean
        is O(1) in the balanced state while ``I_ext = I0 sqrt(K)``), recovered from consecutive states as
        ``(V[t] - a_m (1 - s[t-1]) V[t-1]) / (1 - a_m)``.

        Runs :func:`~surroflos.kernels.balanced.balanced_sequence` (event driven on the ``"torch"`` backend)
        in chunks of time, so the intermediate states never take more than about 16 MiB.
        """
        steps = _check_int("steps", steps, 1)
        f = self._factory()
        sizes = {}
        if inputs is not None:
            check_inputs(inputs, self.n_in)
            if inputs.shape[0] != steps:
                raise ValueError(f"inputs have T={inputs.shape[0]} steps but steps={steps}")
            if inputs.dtype != f["dtype"]:
                raise ValueError(f"dtype mix: inputs are {inputs.dtype}, the network is {f['dtype']}")
            sizes["inputs"] = inputs.shape[1]
        if state0 is not None:
            if not isinstance(state0, torch.Tensor) or state0.ndim != 2 or state0.shape[1] != 2 * self.N:
                raise ValueError(f"state0 must be a tensor [B, 2N] = [B, {2 * self.N}], "
                                 f"got {getattr(state0, 'shape', type(state0).__name__)}")
            if state0.dtype != f["dtype"]:
                raise ValueError(f"dtype mix: state0 is {state0.dtype}, the network is {f['dtype']}")
            sizes["state0"] = state0.shape[0]
        if batch is not None:
            sizes["batch"] = _check_int("batch", batch, 1)
        if len(set(sizes.values())) > 1:
            raise ValueError(f"batch sizes disagree: {sizes}")
        B = next(iter(sizes.values())) if sizes else 1
        if state0 is None:
            state0 = self.initial_state(B, random=True, generator=generator)
        state = state0.to(f["device"])
        N = self.N
        backend = resolve_backend(self.backend, state.device)  # the built-in dynamics, as always
        prepare_pattern(self.pre_idx)  # build (or refresh) the cached event pattern the torch path reads
        out = torch.empty(steps, B, N, dtype=torch.bool, device=f["device"])
        total = torch.zeros(B, N, dtype=torch.float64, device=f["device"]) if return_state else None
        chunk = max(1, _SIM_CHUNK_BYTES // (B * 2 * N * state.element_size()))
        for t0 in range(0, steps, chunk):
            t1 = min(steps, t0 + chunk)
            x = inputs[t0:t1].to(f["device"]) if inputs is not None else None
            spikes, states = self._sequence(self._drive_sequence(x, t1 - t0, B), state, backend)
            out[t0:t1] = spikes > 0
            if return_state:
                V = states[..., N:].double()
                V_in = torch.cat([state[None, :, N:].double(), V[:-1]])
                total += (V - self.a_m * V_in.masked_fill(V_in > 1.0, 0.0)).sum(0)
            state = states[-1]
        if return_state:
            return out, state.clone(), (total / ((1.0 - self.a_m) * steps)).to(f["dtype"])
        return out

    def extra_repr(self) -> str:
        s = (f"N={self.N}, K={self.K}, J0={self.J0}, I0={self.I0}, tau_m={self.tau_m}, tau_s={self.tau_s}, "
             f"dt={self.dt}, n_in={self.n_in}, n_out={self.n_out}, synapse_norm={self.synapse_norm!r}")
        if self.ei:
            s += f", ei=True, f_E={self.f_E}, g={self.g}"
        return s + (f", learn_recurrent={isinstance(self.weight_rec, nn.Parameter)}, surrogate={self.surrogate}, "
                    f"backend={self.backend!r}")


# ----------------------------------------------------------------------------------------------
# Plotting
# ----------------------------------------------------------------------------------------------


def plot_raster(spikes: torch.Tensor, dt: float, path_or_ax, *, n_neurons: int = 200, batch_index: int = 0,
                t0: float = 0.0, title: str = "", markersize: float = 1.0, time_unit: str = "s"):
    """Spike raster of the first ``n_neurons`` neurons: time (s) against neuron index.

    ``spikes``: ``[T, N]`` or ``[T, B, N]`` (bool or float; ``batch_index`` picks the trajectory).
    ``path_or_ax``: a file path (the figure is saved with matplotlib's Agg backend and closed) or a
    matplotlib Axes to draw into. Returns the Axes (``None`` when saved to a path).
    """
    if not isinstance(spikes, torch.Tensor) or spikes.ndim not in (2, 3):
        raise ValueError(f"spikes must be a tensor [T, N] or [T, B, N], got {getattr(spikes, 'shape', spikes)!r}")
    s = spikes[:, batch_index] if spikes.ndim == 3 else spikes
    s = s[:, :n_neurons].detach().cpu() != 0
    t_idx, n_idx = s.nonzero(as_tuple=True)
    times = t0 + (t_idx.double() + 1.0) * dt
    if isinstance(path_or_ax, (str, os.PathLike)):
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 4))
        _draw_raster(ax, times, n_idx, s.shape, dt, t0, title, markersize, time_unit)
        fig.tight_layout()
        fig.savefig(path_or_ax, dpi=120)
        plt.close(fig)
        return None
    _draw_raster(path_or_ax, times, n_idx, s.shape, dt, t0, title, markersize, time_unit)
    return path_or_ax


def _draw_raster(ax, times, n_idx, shape, dt, t0, title, markersize, time_unit="s") -> None:
    ax.plot(times.numpy(), n_idx.numpy(), "|", color="k", markersize=markersize * 3, markeredgewidth=markersize * 0.5)
    ax.set_xlim(t0, t0 + shape[0] * dt)
    ax.set_ylim(-0.5, shape[1] - 0.5)
    ax.set_xlabel(f"time [{time_unit}]")
    ax.set_ylabel("neuron")
    if title:
        ax.set_title(title)
