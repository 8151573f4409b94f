"""Fused sequence and tangent map of the sparse balanced LIF network (:mod:`surroflos.models.balanced`).

Public functions (``N`` neurons, ``K`` synapses per neuron stored as ``pre_idx [N, K]`` presynaptic ids and
``weight_rec [N, K]`` values; no ``N x N`` matrix is ever formed)::

    spikes, states = balanced_sequence(x_drive, state0, weight_rec, pre_idx, a_m=..., a_s=..., b=..., bc=...,
                                       ac=..., surrogate="atan", detach_reset=True, backend="auto")
    DQ = balanced_tangent_fused(d, e, Q, weight_rec, pre_idx, a_m, a_s, b, bc, ac, backend="auto")

:func:`balanced_sequence` runs ``T`` steps of :func:`surroflos.models.balanced.balanced_step` at once.
``x_drive [T, B, N]`` is the external input current of every step, ``u = I_ext + W_in x[t]`` (computed by
the caller; an expanded tensor with zero strides is fine), ``state0 [B, 2N] = [I | V]``. Per step::

    s = H(V - 1);  r_i = sum_k w[i, k] s[pre[i, k]]
    I' = a_s I + ac r;  V' = a_m (1 - s) V + b I + bc r + (1 - a_m) u;  spike = H(V' - 1)

It returns ``spikes [T, B, N]`` (0/1 in the input dtype, surrogate gradient) and ``states [T, B, 2N]``, with
gradients for ``x_drive``, ``state0`` and ``weight_rec``. Reverse-time adjoint recursion (``gI, gV``: the
complete loss gradient of the state after step ``t``, ``d = sigma'(V - 1)`` and ``s`` at the state before
it)::

    gV += g_spike[t] sigma'(V[t] - 1);  g_r = ac gI + bc gV;  g_u[t] = (1 - a_m) gV
    gI_prev = a_s gI + b gV
    gV_prev = a_m (1 - s) gV [- a_m V d gV if the reset is not detached] + d (J^T g_r)
    g_w[i, k] += sum_b g_r[b, i] s[b, pre[i, k]]

:func:`balanced_tangent_fused` is the surrogate Jacobian of one step applied to a block ``Q = [Q_I; Q_V]:
[B, 2N, k]`` from ``d = sigma'(V - 1)`` and the reset factor ``e`` (``1 - s``, or ``1 - s - d V`` when the reset
is not detached), both ``[B, N]``; it is :func:`surroflos.models.balanced.balanced_tangent` written as::

    dr = J (d * Q_V);  DQ = [a_s Q_I + ac dr;  a_m e Q_V + b Q_I + bc dr]

(the equivalent of a ``(d, e, Q_I, Q_V) -> (dI, dV)`` signature with the halves stacked), differentiable in
``d``, ``e``, ``Q`` and ``weight_rec``.

Backends (:mod:`surroflos.kernels.backend`): ``"torch"`` runs a whole-sequence op whose forward loops over
time under no autograd graph and is event driven (each step touches only the out-going synapses of the
neurons that spiked, through a presynaptic-major copy of the pattern, :func:`out_pattern`), and whose
backward scans time in reverse with the formulas above (``J^T g_r`` by one scatter per step, ``g_w`` in one
pass over all spike events); the tangent's torch path is the plain gather formula. ``"triton"`` launches
one kernel per time step that gathers the ``K`` presynaptic membranes of each neuron and loads only the
weights of the synapses that spiked, one kernel per reverse step, one weight-gradient kernel, and a
tangent kernel over ``(b, n-block, k-block)`` (:mod:`surroflos.kernels.balanced_triton`). ``"auto"`` picks
Triton for CUDA tensors. All are ``torch.library`` custom ops (``surroflos::balanced_sequence[_backward]``,
``surroflos::balanced_tangent[_backward]``) with fake implementations, so ``torch.compile`` captures them.
Forward-mode AD and double backward are not supported.

States are accumulated in float32 for float16/bfloat16/float32 inputs and in float64 for float64 inputs;
outputs have the input dtype. ``pre_idx`` must hold ids in ``[0, N)``: checked (one device sync) when its
presynaptic-major copy is built, once per tensor and in-place version (the copy is cached).
"""

from __future__ import annotations

import math
import numbers
import weakref
from typing import Any, Optional, Tuple

import torch
from torch import Tensor

from surroflos import surrogate as sg

from .backend import acc_dtype, check_backend, resolve_backend

__all__ = ["balanced_sequence", "balanced_tangent_fused", "out_pattern", "prepare_pattern"]


# ----------------------------------------------------------------------------------------------
# Presynaptic-major copy of the connectivity (cached per pre_idx tensor)
# ----------------------------------------------------------------------------------------------


class _Pattern:
    """Presynaptic-major copy of ``pre_idx [N, K]``, padded to the largest out-degree ``D``.

    Only ``slot [N, D]`` is kept: the position of each out-going synapse of neuron ``j`` in
    ``weight_rec.reshape(-1)`` (padding: ``N K``), int32 while ``N K < 2^31``. Its target is ``slot // K`` (the
    padding maps to the dummy target ``N``), so no ``post`` array is stored, and the weights are read through
    ``slot`` when a neuron spikes, so no ``[N, D]`` copy of them either: at N = 1e6, K = 100 the pattern is
    0.6 GB instead of 3.6 GB. The int32 arrays the Triton kernels read (``pre32``, ``post32``) are built on
    first use.
    """

    __slots__ = ("slot", "K", "_post32", "_pre32")

    def __init__(self, slot: Tensor, K: int):
        self.slot, self.K = slot, K
        self._post32: Optional[Tensor] = None
        self._pre32: Optional[Tensor] = None

    def targets(self, rows: Tensor) -> Tensor:
        """``slot // K`` of some rows of ``slot``: the targets of those neurons' synapses (padding: ``N``)."""
        return torch.div(rows, self.K, rounding_mode="floor")

    def post32(self) -> Tensor:
        if self._post32 is None:
            self._post32 = self.targets(self.slot).to(torch.int32).contiguous()
        return self._post32

    def pre32(self, pre: Tensor) -> Tensor:
        if self._pre32 is None:
            self._pre32 = pre.to(torch.int32).contiguous()
        return self._pre32


class _TensorCache:
    """Values computed from a tensor, kept while it lives and until it changes: keyed by the tensor's identity,
    valid while the ``stamp`` it was stored with (its in-place version and whatever else the value depends on)
    is unchanged and the ``also`` tensor stored beside it is the same object. An entry dies with its tensor.
    Tensors that cannot be weakly referenced are not cached."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple] = {}

    def get(self, t: Tensor, stamp: object, also: Optional[Tensor] = None) -> Tuple[bool, object]:
        """``(True, value)`` on a valid hit; else ``(False, None)``, the stale entry dropped first (so that a
        large value is freed before its replacement is built)."""
        hit = self._entries.get(id(t))
        if hit is not None and hit[0]() is t and hit[1] == stamp and (hit[2] is None) == (also is None) \
                and (also is None or hit[2]() is also):
            return True, hit[3]
        self._entries.pop(id(t), None)
        return False, None

    def put(self, t: Tensor, stamp: object, value: object, also: Optional[Tensor] = None) -> None:
        key = id(t)
        try:
            ref = weakref.ref(t, lambda _r, k=key: self._entries.pop(k, None))
            also_ref = None if also is None else weakref.ref(also)
        except TypeError:  # pragma: no cover - tensors that cannot be weakly referenced are not cached
            return
        self._entries[key] = (ref, stamp, also_ref, value)

    def peek(self, t: Tensor) -> object:
        """The value stored for ``t`` (KeyError if none), whether still valid or not (for tests)."""
        return self._entries[id(t)][3]

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


# The presynaptic-major pattern of each pre_idx (rebuilt after an in-place change, e.g. load_state_dict).
_PATTERNS = _TensorCache()

_EVENT_CHUNK = 1 << 20  # synapses read per pass of the event-driven recurrent input (bounds its temporaries)
_BUILD_CHUNK = 1 << 20  # synapses ranked per pass when the pattern is built (bounds its temporaries)


def _build_pattern(pre: Tensor) -> _Pattern:
    N, K = pre.shape
    NK = N * K
    if pre.numel():  # once per tensor version (the result is cached): out-of-range ids would index out of bounds
        lo, hi = int(pre.min()), int(pre.max())
        if lo < 0 or hi >= N:
            raise ValueError(f"pre_idx must hold presynaptic ids in [0, N) = [0, {N}), found values in [{lo}, {hi}]")
    itype = torch.int32 if NK < 2 ** 31 - 1 else torch.int64
    flat = pre.reshape(-1)
    counts = torch.bincount(flat, minlength=N)
    D = int(counts.max()) if NK else 0
    slot = torch.full((N, D), NK, dtype=itype, device=pre.device)
    # Synapses grouped by presynaptic neuron in their order in weight_rec (a stable counting sort), ranked a
    # chunk at a time: one argsort of all N K ids took minutes and 4 int64 copies of them at N = 1e6. A chunk
    # is at least N long, so the O(N) bookkeeping per chunk keeps the build O(N K) in all.
    fill = torch.zeros(N, dtype=torch.long, device=pre.device)
    chunk = max(_BUILD_CHUNK, N)
    for lo in range(0, NK, chunk):
        j = flat[lo:lo + chunk].long()
        perm = torch.argsort(j, stable=True)
        js = j[perm]
        c = torch.bincount(js, minlength=N)
        start = torch.cumsum(c, 0) - c
        rank = torch.arange(js.numel(), device=pre.device) - start[js] + fill[js]
        slot[js, rank] = (perm + lo).to(itype)
        fill += c
    return _Pattern(slot, K)


def _pattern(pre: Tensor) -> _Pattern:
    found, pat = _PATTERNS.get(pre, pre._version)
    if not found:
        pat = _build_pattern(pre)
        _PATTERNS.put(pre, pre._version, pat)
    return pat


def prepare_pattern(pre_idx: Tensor) -> None:
    """Build (or refresh) the cached presynaptic-major pattern of ``pre_idx`` now rather than at the first call.

    The pattern is cached per tensor and in-place version; :class:`surroflos.models.BalancedNetwork` calls
    this before a simulation. It checks that the ids lie in ``[0, N)``.
    """
    _check_pattern(pre_idx, None)


def out_pattern(pre_idx: Tensor) -> Tuple[Tensor, Tensor]:
    """Presynaptic-major copy of ``pre_idx [N, K]``, padded to the largest out-degree ``D`` (cached).

    Returns ``post [N, D]`` (targets of each neuron's spikes; padding: the dummy target ``N``) and
    ``slot [N, D]`` (position of that synapse in ``weight_rec.reshape(-1)``; padding: ``N K``). Both int32
    (``slot`` int64 when ``N K >= 2^31``). ``post`` is built on the first call (the kernels keep only ``slot``).
    """
    _check_pattern(pre_idx, None)
    pat = _pattern(pre_idx)
    return pat.post32(), pat.slot


def _outgoing_weights(w: Tensor, slot: Tensor, dtype: torch.dtype) -> Tensor:
    """``w_out [N, D]``: weights of the out-going synapses, zero on the padding (the Triton backward reads it)."""
    with torch.no_grad():
        flat = w.detach().reshape(-1).to(dtype)
        return torch.cat([flat, flat.new_zeros(1)]).index_select(0, slot.reshape(-1)).view(slot.shape)


# Per weight tensor: its jump vector, or None where the weights are not a function of the presynaptic neuron.
_JUMPS = _TensorCache()


def _presynaptic_weights(w: Tensor, pre: Tensor, pat: _Pattern, dtype: torch.dtype) -> Optional[Tensor]:
    """``jump [N]`` (in ``dtype``) when every synapse's weight is a function of its presynaptic neuron alone,
    ``w[i, k] == jump[pre[i, k]]`` (the fixed weights of the balanced and the E/I networks), else None.

    With it a spike adds one number to its ``D`` targets and no weight is gathered: the gather through ``slot``
    reads scattered cache lines of all ``N K`` weights (0.4 GB at N = 1e6), about a third of a step there.
    The check reads all weights once, so it is cached per weight tensor (identity, version, storage) and
    ``pre_idx``, and used only by calls without gradient (``BalancedNetwork.simulate``): training changes the
    weights at every step, and a write through ``.data`` bumps no version (the pattern's cache has the same
    caveat).
    """
    try:
        stamp = (w._version, w.data_ptr(), dtype)
    except Exception:  # pragma: no cover - inference tensors have no version counter
        return None
    found, jump = _JUMPS.get(w, stamp, also=pre)
    if found:
        return jump
    N, K = pre.shape
    with torch.no_grad():
        wd = w.detach()
        if wd.numel() == 0:
            return None
        # the first out-going synapse of each neuron; a neuron without any gets the padding, clamped: its
        # value is never read
        first = pat.slot[:, 0].clamp(max=N * K - 1)
        jump = wd.reshape(-1).index_select(0, first).to(dtype)
        same = True
        step = max(1, _BUILD_CHUNK // K)
        for lo in range(0, N, step):  # a chunk of rows at a time: no [N, K] temporaries
            rows = wd[lo:lo + step].to(dtype)
            if not bool((rows == jump.index_select(0, pre[lo:lo + step].reshape(-1)).view_as(rows)).all()):
                same = False  # (NaN weights compare unequal: they take the general path)
                break
    result = jump if same else None
    _JUMPS.put(w, stamp, result, also=pre)
    return result


# ----------------------------------------------------------------------------------------------
# PyTorch path of the sequence
# ----------------------------------------------------------------------------------------------


def _event_recurrent(fire: Tensor, pat: _Pattern, w_flat: Tensor, jump: Optional[Tensor] = None) -> Tensor:
    """``r = J s`` for boolean spikes ``fire [B, N]``, touching only the synapses of the spiking neurons
    (``jump``: the weights as a function of the presynaptic neuron, :func:`_presynaptic_weights`, if any)."""
    B, N = fire.shape
    r = torch.zeros(B, N + 1, dtype=w_flat.dtype, device=w_flat.device)
    bi, j = fire.nonzero(as_tuple=True)
    # A chunk of spiking neurons at a time: a synchronous burst (a random initial state) would otherwise make
    # [spikes, D] temporaries of gigabytes at N = 1e6.
    chunk = max(1, _EVENT_CHUNK // max(pat.slot.shape[1], 1))
    for lo in range(0, j.numel(), chunk):
        # index_select rather than slot[j]: the advanced-indexing kernel is much slower for these row gathers
        rows = pat.slot.index_select(0, j[lo:lo + chunk])
        target = pat.targets(rows) + (bi[lo:lo + chunk] * (N + 1)).unsqueeze(1)
        if jump is not None:  # the same numbers in the same order as the gather below
            vals = jump.index_select(0, j[lo:lo + chunk]).unsqueeze(1).expand(rows.shape).reshape(-1)
        else:  # padding (slot N K) goes to the dummy target N, whatever weight it reads: clamp it into range
            vals = w_flat.index_select(0, rows.clamp(max=w_flat.numel() - 1).reshape(-1))
        r.view(-1).index_add_(0, target.reshape(-1), vals)
    return r[:, :N]


def _sequence_forward_torch(x_drive: Tensor, state0: Tensor, w: Tensor, pre: Tensor, a_m: float, a_s: float,
                            b: float, bc: float, ac: float, reuse_weights: bool = False) -> Tuple[Tensor, Tensor]:
    T, B, N = x_drive.shape
    dtype, dev = state0.dtype, state0.device
    acc = acc_dtype(dtype)
    pat = _pattern(pre)
    w_flat = w.detach().reshape(-1).to(acc)  # a view for float32/float64 weights: nothing of size N K is copied
    jump = _presynaptic_weights(w, pre, pat, acc) if reuse_weights else None
    states = torch.empty(T, B, 2 * N, dtype=dtype, device=dev)
    st = states if acc == dtype else torch.empty(T, B, 2 * N, dtype=acc, device=dev)  # written in place
    fire_all = torch.empty(T, B, N, dtype=torch.bool, device=dev)
    one_m = 1.0 - a_m
    # A constant input (an expanded [N] or [B, N] drive) is scaled once, not at every step.
    const_u = one_m * x_drive[0].to(acc) if x_drive.stride(0) == 0 else None
    I, V = state0[:, :N].to(acc), state0[:, N:].to(acc)
    fire = V > 1.0
    for t in range(T):
        r = _event_recurrent(fire, pat, w_flat, jump)
        I_new, V_new = st[t, :, :N], st[t, :, N:]
        # balanced_step's operation order: a_m (1 - s) V + b I + bc r + (1 - a_m) u
        torch.mul(V.masked_fill(fire, 0.0), a_m, out=V_new).add_(b * I).add_(bc * r)
        V_new.add_(const_u if const_u is not None else one_m * x_drive[t].to(acc))
        torch.mul(I, a_s, out=I_new).add_(ac * r)
        I, V = I_new, V_new
        fire = torch.gt(V, 1.0, out=fire_all[t])
    if st is not states:
        states.copy_(st)
    return fire_all.to(dtype), states


def _sequence_backward_torch(g_spk: Tensor, g_st: Tensor, state0: Tensor, states: Tensor, w: Tensor, pre: Tensor,
                             a_m: float, a_s: float, b: float, bc: float, ac: float, surrogate_id: int, scale: float,
                             detach_reset: bool, need_w: bool) -> Tuple[Tensor, Tensor, Tensor]:
    T, B, N2 = states.shape
    N, K = pre.shape
    dtype = states.dtype
    acc = acc_dtype(dtype)
    wa = w.to(acc)
    # Everything that does not depend on the adjoint is computed for all steps at once:
    # V_in[t] is the membrane entering step t (state0 for t = 0), d and s at it.
    V_all = torch.cat([state0[None, :, N:], states[:, :, N:]]).to(acc)  # [T + 1, B, N]
    d_all = sg.surrogate_derivative(V_all - 1.0, surrogate_id, scale)
    fire_all = V_all > 1.0
    keep = (~fire_all[:T]).to(acc).mul_(a_m)  # a_m (1 - s) at the state entering step t
    if not detach_reset:
        keep.sub_(a_m * V_all[:T] * d_all[:T])
    gS = g_st.to(acc, copy=True)  # direct gradients of states[t], plus the spikes' surrogate path
    gS[..., N:].add_(g_spk.to(acc) * d_all[1:])
    flat = pre.reshape(-1)  # int32 or int64 as stored: index_add_ takes either (no N K int64 copy per call)
    g_r_all = torch.empty(T, B, N, dtype=acc, device=states.device)
    g_u = torch.empty(T, B, N, dtype=acc, device=states.device)
    gI = torch.zeros(B, N, dtype=acc, device=states.device)
    gV = torch.zeros(B, N, dtype=acc, device=states.device)
    for t in range(T - 1, -1, -1):
        gI = gI.add_(gS[t, :, :N])
        gV = gV.add_(gS[t, :, N:])
        g_r = torch.mul(gI, ac, out=g_r_all[t]).add_(bc * gV)
        g_u[t] = gV
        g_s = torch.zeros(B, N, dtype=acc, device=states.device)
        g_s.index_add_(1, flat, (g_r.unsqueeze(-1) * wa).reshape(B, N * K))  # J^T g_r
        gI, gV = (a_s * gI).add_(b * gV), (keep[t] * gV).add_(d_all[t] * g_s)
    g_state0 = torch.cat([gI, gV], dim=-1).to(state0.dtype)
    g_u.mul_(1.0 - a_m)
    if need_w:
        g_w = _weight_grad_events(g_r_all, fire_all[:T], pre).to(w.dtype)
    else:
        g_w = w.new_empty(0)
    return g_u.to(dtype), g_state0, g_w


def _weight_grad_events(g_r: Tensor, fire_in: Tensor, pre: Tensor) -> Tensor:
    """``g_w[i, k] = sum_{t, b} g_r[t, b, i] s_in[t, b, pre[i, k]]`` over the spike events only."""
    T, B, N = g_r.shape
    K = pre.shape[1]
    pat = _pattern(pre)
    D = pat.slot.shape[1]
    g_pad = torch.cat([g_r, g_r.new_zeros(T, B, 1)], dim=-1).reshape(-1)  # [T B (N + 1)], dummy target N
    g_w = g_r.new_zeros(N * K + 1)  # slot N K collects the padding
    tb, j = fire_in.reshape(T * B, N).nonzero(as_tuple=True)
    chunk = max(1, (1 << 22) // max(D, 1))  # bounded [events, D] temporaries
    for lo in range(0, j.numel(), chunk):
        jj, row = j[lo:lo + chunk], tb[lo:lo + chunk]
        rows = pat.slot.index_select(0, jj)
        vals = g_pad.index_select(0, (pat.targets(rows) + (row * (N + 1)).unsqueeze(1)).reshape(-1))
        g_w.index_add_(0, rows.reshape(-1), vals)
    return g_w[:N * K].reshape(N, K)


# ----------------------------------------------------------------------------------------------
# PyTorch path of the tangent map
# ----------------------------------------------------------------------------------------------


def _tangent_forward_torch(d: Tensor, e: Tensor, Q: Tensor, w: Tensor, pre: Tensor, a_m: float, a_s: float,
                           b: float, bc: float, ac: float) -> Tensor:
    N, K = pre.shape
    acc = acc_dtype(Q.dtype)
    Qa = Q.to(acc)
    QI, QV = Qa[:, :N], Qa[:, N:]
    X = d.to(acc).unsqueeze(-1) * QV  # [B, N, k]
    G = X.index_select(1, pre.reshape(-1)).unflatten(1, (N, K))  # [B, N, K, k]; int32 ids index directly
    dr = torch.einsum("bnkq,nk->bnq", G, w.to(acc))
    dI = a_s * QI + ac * dr
    dV = a_m * e.to(acc).unsqueeze(-1) * QV + b * QI + bc * dr
    return torch.cat([dI, dV], dim=1).to(Q.dtype)


def _tangent_backward_torch(grad: Tensor, d: Tensor, e: Tensor, Q: Tensor, w: Tensor, pre: Tensor, a_m: float,
                            a_s: float, b: float, bc: float, ac: float,
                            need_w: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    N, K = pre.shape
    B, _, k = Q.shape
    acc = acc_dtype(Q.dtype)
    g, Qa, da, ea, wa = grad.to(acc), Q.to(acc), d.to(acc), e.to(acc), w.to(acc)
    gI, gV = g[:, :N], g[:, N:]
    QV = Qa[:, N:]
    g_dr = ac * gI + bc * gV  # [B, N, k]
    flat = pre.reshape(-1)  # int32 ids index directly (no int64 copy per tangent step)
    JTg = torch.zeros(B, N, k, dtype=acc, device=Q.device)
    JTg.index_add_(1, flat, (g_dr.unsqueeze(2) * wa.unsqueeze(-1)).reshape(B, N * K, k))  # J^T g_dr
    gQ = torch.cat([a_s * gI + b * gV, a_m * ea.unsqueeze(-1) * gV + da.unsqueeze(-1) * JTg], dim=1)
    gd = (QV * JTg).sum(-1)
    ge = a_m * (gV * QV).sum(-1)
    if need_w:
        X = da.unsqueeze(-1) * QV
        g_w = torch.einsum("bnq,bnkq->nk", g_dr, X.index_select(1, flat).unflatten(1, (N, K))).to(w.dtype)
    else:
        g_w = w.new_empty(0)
    return gd.to(d.dtype), ge.to(e.dtype), gQ.to(Q.dtype), g_w


def _triton_module():
    # Imported lazily: Triton decides interpreter-vs-compiled when the kernels are decorated.
    from . import balanced_triton
    return balanced_triton


# ----------------------------------------------------------------------------------------------
# Custom ops (backend "torch" | "triton", already resolved)
# ----------------------------------------------------------------------------------------------


@torch.library.custom_op("surroflos::balanced_sequence", mutates_args=())
def _sequence_op(x_drive: Tensor, state0: Tensor, weight_rec: Tensor, pre_idx: Tensor, a_m: float, a_s: float,
                 b: float, bc: float, ac: float, surrogate_id: int, scale: float, detach_reset: bool,
                 backend: str, reuse_weights: bool = False) -> Tuple[Tensor, Tensor]:
    if backend == "triton":
        return _triton_module().sequence_forward(x_drive, state0, weight_rec, _pattern(pre_idx).pre32(pre_idx),
                                                 a_m, a_s, b, bc, ac)
    return _sequence_forward_torch(x_drive, state0, weight_rec, pre_idx, a_m, a_s, b, bc, ac, reuse_weights)


@_sequence_op.register_fake
def _(x_drive, state0, weight_rec, pre_idx, a_m, a_s, b, bc, ac, surrogate_id, scale, detach_reset, backend,
      reuse_weights=False):
    T, B, N = x_drive.shape
    return state0.new_empty(T, B, N), state0.new_empty(T, B, 2 * N)


@torch.library.custom_op("surroflos::balanced_sequence_backward", mutates_args=())
def _sequence_backward_op(g_spikes: Tensor, g_states: Tensor, state0: Tensor, states: Tensor, weight_rec: Tensor,
                          pre_idx: Tensor, a_m: float, a_s: float, b: float, bc: float, ac: float, surrogate_id: int,
                          scale: float, detach_reset: bool, need_w: bool,
                          backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    if backend == "triton":
        pat = _pattern(pre_idx)
        return _triton_module().sequence_backward(g_spikes, g_states, state0, states, weight_rec, pat.pre32(pre_idx),
                                                  pat.post32(), _outgoing_weights(weight_rec, pat.slot, weight_rec.dtype),
                                                  a_m, a_s, b, bc, ac, surrogate_id, scale, detach_reset, need_w)
    return _sequence_backward_torch(g_spikes, g_states, state0, states, weight_rec, pre_idx, a_m, a_s, b, bc, ac,
                                    surrogate_id, scale, detach_reset, need_w)


@_sequence_backward_op.register_fake
def _(g_spikes, g_states, state0, states, weight_rec, pre_idx, a_m, a_s, b, bc, ac, surrogate_id, scale,
      detach_reset, need_w, backend):
    T, B, N2 = states.shape
    g_w = torch.empty_like(weight_rec) if need_w else weight_rec.new_empty(0)
    return states.new_empty(T, B, N2 // 2), torch.empty_like(state0), g_w


def _sequence_setup(ctx, inputs, output):
    x_drive, state0, weight_rec, pre_idx, a_m, a_s, b, bc, ac, surrogate_id, scale, detach_reset, backend = inputs[:13]
    ctx.save_for_backward(state0, output[1], weight_rec, pre_idx)
    ctx.static = (a_m, a_s, b, bc, ac, surrogate_id, scale, detach_reset)
    ctx.backend = backend


def _sequence_backward(ctx, g_spikes, g_states):
    state0, states, weight_rec, pre_idx = ctx.saved_tensors
    T, B, N2 = states.shape
    if g_spikes is None:
        g_spikes = states.new_zeros(T, B, N2 // 2)
    if g_states is None:
        g_states = torch.zeros_like(states)
    need_w = bool(ctx.needs_input_grad[2])
    g_x, g_s0, g_w = _sequence_backward_op(g_spikes, g_states, state0, states, weight_rec, pre_idx, *ctx.static,
                                           need_w, ctx.backend)
    return (g_x, g_s0, g_w if need_w else None) + (None,) * 11


_sequence_op.register_autograd(_sequence_backward, setup_context=_sequence_setup)


@torch.library.custom_op("surroflos::balanced_tangent", mutates_args=())
def _tangent_op(d: Tensor, e: Tensor, Q: Tensor, weight_rec: Tensor, pre_idx: Tensor, a_m: float, a_s: float,
                b: float, bc: float, ac: float, backend: str) -> Tensor:
    if backend == "triton":
        return _triton_module().tangent_forward(d, e, Q, weight_rec, _pattern(pre_idx).pre32(pre_idx), a_m, a_s, b, bc,
                                                ac)
    return _tangent_forward_torch(d, e, Q, weight_rec, pre_idx, a_m, a_s, b, bc, ac)


@_tangent_op.register_fake
def _(d, e, Q, weight_rec, pre_idx, a_m, a_s, b, bc, ac, backend):
    return torch.empty_like(Q, memory_format=torch.contiguous_format)


@torch.library.custom_op("surroflos::balanced_tangent_backward", mutates_args=())
def _tangent_backward_op(grad: Tensor, d: Tensor, e: Tensor, Q: Tensor, weight_rec: Tensor, pre_idx: Tensor,
                         a_m: float, a_s: float, b: float, bc: float, ac: float, need_w: bool,
                         backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    if backend == "triton":
        pat = _pattern(pre_idx)
        return _triton_module().tangent_backward(grad, d, e, Q, weight_rec, pat.pre32(pre_idx), pat.post32(),
                                                 _outgoing_weights(weight_rec, pat.slot, weight_rec.dtype),
                                                 a_m, a_s, b, bc, ac, need_w)
    return _tangent_backward_torch(grad, d, e, Q, weight_rec, pre_idx, a_m, a_s, b, bc, ac, need_w)


@_tangent_backward_op.register_fake
def _(grad, d, e, Q, weight_rec, pre_idx, a_m, a_s, b, bc, ac, need_w, backend):
    g_w = torch.empty_like(weight_rec) if need_w else weight_rec.new_empty(0)
    return (torch.empty_like(d, memory_format=torch.contiguous_format),
            torch.empty_like(e, memory_format=torch.contiguous_format),
            torch.empty_like(Q, memory_format=torch.contiguous_format), g_w)


def _tangent_setup(ctx, inputs, output):
    d, e, Q, weight_rec, pre_idx, a_m, a_s, b, bc, ac, backend = inputs
    ctx.save_for_backward(d, e, Q, weight_rec, pre_idx)
    ctx.static = (a_m, a_s, b, bc, ac)
    ctx.backend = backend


def _tangent_backward(ctx, grad):
    d, e, Q, weight_rec, pre_idx = ctx.saved_tensors
    need_w = bool(ctx.needs_input_grad[3])
    gd, ge, gQ, g_w = _tangent_backward_op(grad, d, e, Q, weight_rec, pre_idx, *ctx.static, need_w, ctx.backend)
    return (gd, ge, gQ, g_w if need_w else None) + (None,) * 7


_tangent_op.register_autograd(_tangent_backward, setup_context=_tangent_setup)


# ----------------------------------------------------------------------------------------------
# Public dispatch
# ----------------------------------------------------------------------------------------------


def _check_tensor(name: str, t: Any, shape: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {shape}, got {type(t).__name__}")
    if t.layout != torch.strided:
        raise ValueError(f"{name} must be a dense (strided) tensor, got layout {t.layout}")
    return t


def _check_pattern(pre_idx: Any, weight_rec: Optional[Tensor]) -> None:
    _check_tensor("pre_idx", pre_idx, "[N, K]")
    if pre_idx.ndim != 2 or pre_idx.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"pre_idx must be an int32/int64 tensor [N, K], got {pre_idx.dtype} of shape "
                         f"{tuple(pre_idx.shape)}")
    if weight_rec is not None and (weight_rec.ndim != 2 or weight_rec.shape != pre_idx.shape):
        raise ValueError(f"weight_rec must have the shape of pre_idx [N, K] = {list(pre_idx.shape)}, got "
                         f"{tuple(weight_rec.shape)}")
    if weight_rec is not None and weight_rec.device != pre_idx.device:
        raise ValueError(f"pre_idx is on {pre_idx.device} but weight_rec on {weight_rec.device}")
    if not torch.compiler.is_compiling():
        _pattern(pre_idx)  # checks the id range when the (cached) pattern is built: once per tensor version


def _check_float(name: str, t: Tensor, ref: Tensor) -> None:
    if not t.is_floating_point():
        raise ValueError(f"{name} must be floating point, got dtype {t.dtype}")
    if t.dtype != ref.dtype or t.device != ref.device:
        raise ValueError(f"{name} is {t.dtype} on {t.device} but weight_rec is {ref.dtype} on {ref.device}; "
                         "convert them to one dtype and device")


def _coefficients(a_m: Any, a_s: Any, b: Any, bc: Any, ac: Any) -> Tuple[float, ...]:
    out = []
    for name, v in (("a_m", a_m), ("a_s", a_s), ("b", b), ("bc", bc), ("ac", ac)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)):
            raise ValueError(f"{name} must be a finite real number, got {v!r}")
        out.append(float(v))
    return tuple(out)


def _resolve(backend: Any, device: torch.device) -> str:
    check_backend(backend)
    if torch.compiler.is_compiling():
        # Dynamo cannot trace Triton's environment probes: decide by the device alone while tracing (a
        # missing Triton then fails when the op runs; eager calls get resolve_backend's clear errors).
        return "triton" if backend == "triton" or (backend == "auto" and device.type == "cuda") else "torch"
    return resolve_backend(backend, device)


def balanced_sequence(x_drive: Tensor, state0: Tensor, weight_rec: Tensor, pre_idx: Tensor, *, a_m: float,
                      a_s: float, b: float, bc: float, ac: float, surrogate: sg.SurrogateLike = "atan",
                      detach_reset: bool = True, backend: str = "auto") -> Tuple[Tensor, Tensor]:
    """``T`` steps of the balanced network: ``(spikes [T, B, N], states [T, B, 2N])``.

    Args:
        x_drive: external input current of every step, ``[T, B, N]`` (``I_ext + W_in x[t]``; may be expanded).
        state0: ``[B, 2N] = [I | V]`` before the first step.
        weight_rec, pre_idx: ``[N, K]`` synaptic weights and presynaptic ids (int32/int64 in ``[0, N)``).
        a_m, a_s, b, bc, ac: the exact one-step propagator (see :class:`surroflos.models.BalancedNetwork`).
        surrogate: spike surrogate (name or :class:`~surroflos.surrogate.Surrogate`); only the gradient uses it.
        detach_reset: detach the reset ``(1 - s)`` from the gradient (as :func:`balanced_step`).
        backend: ``"auto"``, ``"torch"`` or ``"triton"`` (see the module docstring).

    Gradients flow to ``x_drive``, ``state0`` and ``weight_rec``. Same numbers as looping
    :func:`surroflos.models.balanced.balanced_step` (up to the summation order of the recurrent input).
    """
    _check_tensor("x_drive", x_drive, "[T, B, N]")
    _check_tensor("state0", state0, "[B, 2N]")
    _check_tensor("weight_rec", weight_rec, "[N, K]")
    _check_pattern(pre_idx, weight_rec)
    if x_drive.ndim != 3 or x_drive.shape[0] < 1 or x_drive.shape[1] < 1:
        raise ValueError(f"x_drive must have shape [T, B, N] with T, B >= 1, got {tuple(x_drive.shape)}")
    N = pre_idx.shape[0]
    T, B = x_drive.shape[:2]
    if x_drive.shape[2] != N:
        raise ValueError(f"x_drive has {x_drive.shape[2]} neurons in its last dimension, pre_idx has N = {N}")
    if state0.ndim != 2 or tuple(state0.shape) != (B, 2 * N):
        raise ValueError(f"state0 must have shape [B, 2N] = [{B}, {2 * N}], got {tuple(state0.shape)}")
    for name, t in (("weight_rec", weight_rec), ("x_drive", x_drive), ("state0", state0)):
        _check_float(name, t, weight_rec)
    coef = _coefficients(a_m, a_s, b, bc, ac)
    surr = sg.get(surrogate)
    resolved = _resolve(backend, x_drive.device)
    # Without gradient (BalancedNetwork.simulate, rollouts) the weights may be checked once and reused across
    # calls (see _presynaptic_weights); with gradient they change at every step.
    return _sequence_op(x_drive, state0, weight_rec, pre_idx, *coef, surr.id, float(surr.scale),
                        bool(detach_reset), resolved, not torch.is_grad_enabled())


def balanced_tangent_fused(d: Tensor, e: Tensor, Q: Tensor, weight_rec: Tensor, pre_idx: Tensor, a_m: float,
                           a_s: float, b: float, bc: float, ac: float, *, backend: str = "auto") -> Tensor:
    """The surrogate tangent map of one balanced-network step applied to ``Q [B, 2N, k]``: ``DQ [B, 2N, k]``.

    ``d = sigma'(V - 1)`` and ``e`` (the reset factor: ``1 - s``, or ``1 - s - d V`` without a detached reset)
    are ``[B, N]``. Differentiable in ``d``, ``e``, ``Q`` and ``weight_rec``; see the module docstring.
    """
    for name, t, shape in (("d", d, "[B, N]"), ("e", e, "[B, N]"), ("Q", Q, "[B, 2N, k]"),
                           ("weight_rec", weight_rec, "[N, K]")):
        _check_tensor(name, t, shape)
    _check_pattern(pre_idx, weight_rec)
    N = pre_idx.shape[0]
    if Q.ndim != 3 or Q.shape[1] != 2 * N or Q.shape[0] < 1:
        raise ValueError(f"Q must have shape [B, 2N, k] = [B, {2 * N}, k], got {tuple(Q.shape)}")
    B = Q.shape[0]
    for name, t in (("d", d), ("e", e)):
        if tuple(t.shape) != (B, N):
            raise ValueError(f"{name} must have shape [B, N] = [{B}, {N}], got {tuple(t.shape)}")
    for name, t in (("weight_rec", weight_rec), ("Q", Q), ("d", d), ("e", e)):
        _check_float(name, t, weight_rec)
    coef = _coefficients(a_m, a_s, b, bc, ac)
    resolved = _resolve(backend, Q.device)
    return _tangent_op(d, e, Q, weight_rec, pre_idx, *coef, resolved)
