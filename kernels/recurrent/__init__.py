"""Fused recurrent spiking network step (``SpikingRNN``: LIF and current-based neurons) over a sequence.

::

    spikes, states = spiking_rnn_sequence(x_in, W, state0, neuron="lif", beta=0.9, alpha=0.8,
                                          threshold=1.0, surrogate="atan", reset="subtract",
                                          detach_reset=True, bias=None, backend="auto")

``x_in = x W_in^T + b`` is the feed-forward drive of all ``T`` steps, computed by the caller with one
GEMM (it is not sequential); alternatively ``x_in = x W_in^T`` and ``bias=b``, which adds ``b`` after
the recurrent product as the step function does. The function computes exactly the loop of
:func:`surroflos.models.spiking.lif_step` / :func:`~surroflos.models.spiking.cuba_step` (see that module's
docstring), step ``t = 0 .. T-1`` from the state ``U[-1] = state0``::

    S[t-1] = H(U[t-1] - theta)        (surrogate gradient into U[t-1] and theta)
    R[t]   = S[t-1]                   (detached when detach_reset)
    I[t]   = x_in[t] + S[t-1] W^T (+ bias)
    lif:  U[t] = beta U[t-1] + I[t] - R theta        | beta (1 - R) U[t-1] + I[t]          (subtract | zero)
    cuba: syn[t] = alpha syn[t-1] + I[t]
          mem[t] = beta mem[t-1] + syn[t] - R theta  | (1 - R) (beta mem[t-1] + syn[t])
                 | beta (1 - R) mem[t-1] + syn[t]   (subtract | zero | zero_mem)
    S[t]   = H(U[t] - theta)          (returned, with the surrogate gradient)

and returns ``spikes [T, B, N]`` and ``states [T, B, D]`` (``D = N`` for lif, ``2N = [syn | mem]`` for
cuba). ``reset="zero_mem"`` (cuba only) zeroes just the old membrane, as a LIF zero reset does, and is
what Norse's recurrent LIF layer maps to (:class:`surroflos.norse.LIFRecurrent`). ``beta``, ``alpha``
and ``threshold`` are numbers or tensors ``[]`` / ``[N]``, used as given (:class:`surroflos.SpikingRNN`
passes ``beta`` and ``alpha`` clamped to [0, 1]); gradients reach
``x_in``, ``W``, ``state0`` and every parameter tensor that requires grad.

Ensembles (:mod:`surroflos.ensemble`): ``E`` independent networks of one shape in one call, member axis in
front of the batch axis::

    x_in [T, E, B, N]    W [E, N, N]    state0 [E, B, D]   ->   spikes [T, E, B, N], states [T, E, B, D]

Member ``e`` computes what the solo call on ``x_in[:, e]``, ``W[e]``, ``state0[e]`` and its own parameters
computes. A parameter is either *shared* by all members, as in a solo call (a number, ``[]``, ``[N]``;
a 1-D tensor is always per neuron), or *per member*, with the member axis first: ``[E, 1]`` (one value
per member) or ``[E, N]`` (per member and neuron), or the member views ``[E, 1, 1]`` / ``[E, 1, N]`` that
broadcast against ``[E, B, N]`` states (what :class:`surroflos.SpikingRNN` ``(..., ensemble=E).params()``
passes; :func:`surroflos.ensemble.member_view`). ``bias`` is ``[N]`` (shared), ``[E, N]`` or ``[E, 1, N]``.
Every gradient comes back in the shape that was given (a shared parameter's sums over the members).
The PyTorch path runs one ``torch.bmm`` over the members per step (no loop over members), dW is one
batched GEMM ``dW[e] = sum_{t, b} dI[t, e, b]^T S[t-1, e, b]``; the Triton kernels take the member as
a third grid axis, so each step is still one launch for all members.

Backends (see :mod:`surroflos.kernels.backend`):

- ``"torch"``: one whole-sequence op. Its forward loops over time under no autograd with one matmul and
  a few fused elementwise ops per step into preallocated buffers; its backward scans time in reverse
  with the explicit adjoint below (one matmul ``dI[t] W`` per step), and forms
  ``dW = sum_t dI[t]^T S[t-1]`` with one GEMM per window of time steps (2^21 elements of ``dI``: one GEMM
  for short sequences).
- ``"triton"``: per-step kernels (:mod:`surroflos.kernels.recurrent.triton`): the forward fuses the
  recurrent product (skipping all-zero spike blocks) with the neuron update, the backward fuses
  ``dI[t] W`` with the local adjoint; dW is the same final GEMM.
- ``"cpu"``: the compiled spike-sparse forward (:mod:`surroflos.kernels.recurrent.cpu`, numba): the whole
  sequence in one call, the recurrent input summed over the out-going weights of the neurons that spiked;
  the backward is the PyTorch path's.
- ``"auto"``: Triton for CUDA tensors; on the CPU the compiled forward for float32/float64 networks of
  ``N >= 512`` neurons (where it measured faster at every firing rate), PyTorch otherwise.

Memory (long sequences). Between forward and backward the op keeps the states and the spikes as booleans
(one byte each), not the float spikes it returns; the backward makes one full-length array, ``dI`` (the
gradient of ``x_in``), and derives everything else (surrogate slopes, ``S[t-1]`` as numbers) a chunk of
time steps at a time; an output whose gradient is unused costs nothing (no zero array). With the spike
readout of :class:`surroflos.SpikingRNN` (:func:`surroflos.kernels.spike_linear.spike_linear`, which keeps
bytes too) a training step at ``T = 2000`` peaks at about 3.5 ``[T, B, N]`` float arrays, a third of
snnTorch's loop (``benchmarks/long_sequence_memory.py``).

Both run through the ``torch.library`` custom ops ``surroflos::spiking_rnn_fwd`` / ``_bwd`` (with fake
implementations, so ``torch.compile`` captures them). Forward-mode AD and double backward are not
supported. States accumulate in float32 for float16/bfloat16/float32 inputs and in float64 for float64.

Adjoint (reverse time). With ``sd[t] = sigma'(mem[t] - theta)``, the loss gradients ``gS[t]``, ``gU[t]``
of the outputs, ``gsp[t] = dL/dS[t-1]`` through step ``t`` and ``K[t] = dmem[t]/dmem[t-1]`` (``beta``, or
``beta (1 - R[t])`` for the zero reset)::

    gmem[t] = gU_mem[t] + sd[t] (gS[t] + gsp[t+1]) + K[t+1] gmem[t+1]
    lif:  dI[t] = gmem[t]
    cuba: dI[t] = gU_syn[t] + alpha dI[t+1] + c[t] gmem[t]       (c = 1, or 1 - R[t] for the zero reset)
    gsp[t] = dI[t] W + rho[t] gmem[t]   with rho = 0 when detach_reset, else -theta (subtract),
             -beta mem[t-1] (lif zero, cuba zero_mem), -(beta mem[t-1] + syn[t]) (cuba zero)
    dU[-1]: mem = K[0] gmem[0] + sd[-1] gsp[0];   syn = alpha dI[0]
    (cuba zero_mem: K = beta (1 - R), c = 1, rho = -beta mem[t-1], as the lif zero reset)
    dbeta = sum gmem[t] (1 - R[t] | 1) mem[t-1];  dalpha = sum dI[t] syn[t-1]
    dtheta = -sum_{t >= -1} sd[t] (gS[t] + gsp[t+1]) - sum R[t] gmem[t] (subtract reset only)
    dx_in = dI;  dbias = sum_{t, b} dI[t];  dW = sum_t dI[t]^T S[t-1]
"""

from __future__ import annotations

import numbers
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from ... import surrogate as sg
from ..backend import acc_dtype, check_backend, constant_result, resolve_backend

__all__ = ["spiking_rnn_sequence", "spiking_rnn_reference", "NEURONS", "RESETS"]

NEURONS = ("lif", "cuba")
RESETS = ("subtract", "zero", "zero_mem")

ParamLike = Union[float, int, Tensor]


# ----------------------------------------------------------------------------------------------
# PyTorch path. Solo: x_in [T, B, N]; W [N, N]; state0 [B, D]; beta / alpha / theta / bias: [N] vectors.
# Ensemble: x_in [T, E, B, N]; W [E, N, N]; state0 [E, B, D]; vectors [E, N] (used as member views
# [E, 1, N], which broadcast against the per-step [E, B, N] slices). The same operations on [..., B, N]
# slices; the recurrent products are torch.mm (solo) or one torch.bmm over the members (ensemble).
# ----------------------------------------------------------------------------------------------


# The backward's per-chunk working set (elements of one [chunk, (E,) B, N] array): a few such arrays stay in a
# CPU core's L2 cache, where whole [T, (E,) B, N] sequences would not.
_CHUNK_ELEMS = 1 << 15
# Rows of dI (elements) that the backward adds into dW with one GEMM: large enough to run at the GEMM's speed,
# small enough that the window's spikes as numbers are a small fraction of a long sequence's memory.
_DW_WINDOW_ELEMS = 1 << 21


def _member_views(ens: bool):
    """Parameter vectors as they broadcast against per-step slices: [N] as they are, [E, N] as [E, 1, N]."""
    return (lambda v: v.unsqueeze(-2)) if ens else (lambda v: v)


def _forward_torch(x_in: Tensor, W: Tensor, state0: Tensor, beta: Tensor, alpha: Optional[Tensor], theta: Tensor,
                   bias: Optional[Tensor], cuba: bool, zero: bool, zmem: bool = False) -> Tuple[Tensor, Tensor]:
    # The elementwise ops mirror lif_step / cuba_step operation by operation (same roundings), so with
    # x W_in^T and b passed separately the states follow the step loop's floating-point numbers.
    ens = x_in.ndim == 4
    T, N = x_in.shape[0], x_in.shape[-1]
    lead = tuple(x_in.shape[1:-1])  # (B,) or (E, B)
    D = state0.shape[-1]
    ad = acc_dtype(x_in.dtype)
    mv = _member_views(ens)
    mm = torch.bmm if ens else torch.mm
    x, Wt = x_in.to(ad), W.to(ad).transpose(-2, -1)
    beta, theta = mv(beta.to(ad)), mv(theta.to(ad))
    alpha = mv(alpha.to(ad)) if cuba else None
    bias = mv(bias.to(ad)) if bias is not None else None
    states = torch.empty(T, *lead, D, dtype=ad, device=x.device)
    spikes = torch.empty(T, *lead, N, dtype=ad, device=x.device)
    rec = torch.empty(*lead, N, dtype=ad, device=x.device)
    cur = torch.empty(*lead, N, dtype=ad, device=x.device)
    mem = state0[..., D - N:].to(ad)
    syn = state0[..., :N].to(ad) if cuba else None
    s = (mem > theta).to(ad)  # S[-1]; (u > theta) == (u - theta > 0) in IEEE arithmetic
    for t in range(T):
        torch.add(x[t], mm(s, Wt, out=rec), out=cur)  # I = x_in + S W^T (+ b)
        if bias is not None:
            cur.add_(bias)
        mem_new = states[t, ..., D - N:]
        if cuba:
            syn_new = states[t, ..., :N]
            torch.mul(alpha, syn, out=syn_new).add_(cur)
            drive = syn = syn_new
        else:
            drive = cur
        if zero and cuba and not zmem:
            torch.mul(beta, mem, out=mem_new).add_(drive).mul_(1.0 - s)
        elif zero:
            torch.mul(beta * (1.0 - s), mem, out=mem_new).add_(drive)
        else:
            torch.mul(beta, mem, out=mem_new).add_(drive).addcmul_(s, theta, value=-1.0)
        mem, s = mem_new, spikes[t]
        torch.gt(mem_new, theta, out=s)  # 0/1 written as floats (a bool tensor's copy_ costs ~10x)
    return spikes.to(x_in.dtype), states.to(x_in.dtype)


def _backward_torch(gspk: Optional[Tensor], gst: Optional[Tensor], W: Tensor, state0: Tensor, spike_bits: Tensor,
                    states: Tensor, beta: Tensor, alpha: Optional[Tensor], theta: Tensor, cuba: bool, zero: bool,
                    detach: bool, sid: int, scale: Union[float, Tensor], need_beta: bool, need_alpha: bool,
                    need_theta: bool,
                    zmem: bool = False, need_w: bool = True):
    """``(dI, dstate0, dbeta, dalpha, dtheta, dW)`` in the accumulator dtype (see the module docstring).
    ``gspk`` / ``gst`` ``None`` are zero gradients; ``spike_bits`` are the spikes as booleans; ``dW`` is
    ``None`` unless ``need_w``.

    Long sequences run out of memory, so the only full-length array made here is ``dI`` (it is the
    gradient of ``x_in``): the scan reads the saved states and spike bits and derives the surrogate
    derivatives, the parts of ``gmem[t]`` known before the scan and the spikes ``R[t] = S[t-1]`` one chunk of
    time steps (``_CHUNK_ELEMS`` elements, so that a few such arrays stay in a core's L2 cache) at a time as
    it reaches them. ``dW = sum_t dI[t]^T R[t]`` is one GEMM per window of ``_DW_WINDOW_ELEMS`` elements (one
    for the whole sequence when it is short). The parameter gradients accumulate per element and are
    summed over the batch at the end (ensemble: ``[E, N]`` gradients, one row per member).
    """
    ens = states.ndim == 4
    T, N = states.shape[0], spike_bits.shape[-1]
    lead = tuple(states.shape[1:-1])  # (B,) or (E, B)
    D = state0.shape[-1]
    ad = acc_dtype(states.dtype)
    dev = states.device
    mv = _member_views(ens)
    mm = torch.bmm if ens else torch.mm
    W = W.to(ad)
    beta, theta = mv(beta.to(ad)), mv(theta.to(ad))
    alpha = mv(alpha.to(ad)) if cuba else None
    mem = states[..., D - N:]  # in the stored dtype: converted a chunk or a step at a time
    mem0 = state0[..., D - N:].to(ad)
    syn0 = state0[..., :N].to(ad) if cuba else None
    r0 = (mem0 > theta).to(ad)  # R[0] = S[-1]
    sd0 = sg.surrogate_derivative(mem0 - theta, sid, scale)
    step_elems = spike_bits[0].numel()
    chunk = max(1, _CHUNK_ELEMS // step_elems)
    window = max(1, _DW_WINDOW_ELEMS // step_elems)

    def st(t: int, lo: int, hi: int) -> Tensor:  # states[t][..., lo:hi] in the accumulator dtype
        return states[t, ..., lo:hi].to(ad)

    def spikes_before(c0: int, c1: int, member_major: bool = False) -> Tensor:  # R[c0:c1] = S[c0-1:c1-1]
        if member_major:  # [E, c, B, N] storage, returned as the [c, E, B, N] view
            r = torch.empty(lead[0], c1 - c0, *lead[1:], N, dtype=ad, device=dev).transpose(0, 1)
        else:
            r = torch.empty(c1 - c0, *lead, N, dtype=ad, device=dev)
        if c0 == 0:
            r[0] = r0
            r[1:] = spike_bits[:c1 - 1]
        else:
            r.copy_(spike_bits[c0 - 1:c1 - 1])
        return r

    need_alpha = need_alpha and cuba
    acc_b = torch.zeros(*lead, N, dtype=ad, device=dev) if need_beta else None
    acc_a = torch.zeros(*lead, N, dtype=ad, device=dev) if need_alpha else None
    acc_t = torch.zeros(*lead, N, dtype=ad, device=dev) if need_theta else None
    acc_sg = torch.zeros(*lead, N, dtype=ad, device=dev) if need_theta and gspk is not None else None  # sd gS
    dW = None
    dI = torch.empty(T, *lead, N, dtype=ad, device=dev)
    gm, gm_next = torch.empty(*lead, N, dtype=ad, device=dev), torch.empty(*lead, N, dtype=ad, device=dev)
    gsp, gsp_next = torch.empty(*lead, N, dtype=ad, device=dev), torch.empty(*lead, N, dtype=ad, device=dev)
    c0 = w0 = T  # [c0, c1): the chunk in sd_c, G0_c, R_c; [t, w0): dI rows not yet in dW
    R_next = None  # R[t + 1]
    for t in range(T - 1, -1, -1):
        if t < c0:  # the next chunk of time steps (in reverse)
            c1, c0 = c0, max(0, c0 - chunk)
            sd_c = sg.surrogate_derivative(mem[c0:c1].to(ad) - theta, sid, scale)
            G0_c = None  # gU_mem[t] + sd[t] gS[t] (None: zero)
            if gspk is not None:
                gspk_c = gspk[c0:c1].to(ad)
                if gst is not None:
                    G0_c = torch.addcmul(gst[c0:c1, ..., D - N:].to(ad), sd_c, gspk_c)
                    if need_theta:
                        acc_sg.add_((sd_c * gspk_c).sum(0))
                else:
                    G0_c = sd_c * gspk_c
                    if need_theta:
                        acc_sg.add_(G0_c.sum(0))
            elif gst is not None:
                G0_c = gst[c0:c1, ..., D - N:].to(ad)
            R_c = spikes_before(c0, c1)
        sd_t, R = sd_c[t - c0], R_c[t - c0]
        # gmem[t] = gU_mem[t] + sd[t] (gS[t] + gsp[t+1]) + K[t+1] gmem[t+1]
        if t == T - 1:
            if G0_c is None:
                gm.zero_()
            else:
                gm.copy_(G0_c[t - c0])
        else:
            if G0_c is None:
                torch.mul(sd_t, gsp_next, out=gm)
            else:
                torch.addcmul(G0_c[t - c0], sd_t, gsp_next, out=gm)
            gm.addcmul_(beta * (1.0 - R_next) if zero else beta, gm_next)
            if need_theta:
                acc_t.addcmul_(sd_t, gsp_next)
        mem_prev = st(t - 1, D - N, D) if t > 0 else mem0
        d = dI[t]
        if cuba:
            syn_prev = st(t - 1, 0, N) if t > 0 else syn0
            g_syn = gst[t, ..., :N].to(ad) if gst is not None else None
            if zero and not zmem:
                if g_syn is None:
                    torch.mul(1.0 - R, gm, out=d)
                else:
                    torch.addcmul(g_syn, 1.0 - R, gm, out=d)
            elif g_syn is None:
                d.copy_(gm)
            else:
                torch.add(g_syn, gm, out=d)
            if t < T - 1:
                d.addcmul_(alpha, dI[t + 1])
            if need_alpha:
                acc_a.addcmul_(d, syn_prev)
        else:
            d.copy_(gm)
        mm(d, W, out=gsp)
        if not detach:  # the reset's own gradient: rho[t] gmem[t]
            if not zero:
                gsp.addcmul_(theta, gm, value=-1.0)
            elif cuba and not zmem:
                gsp.addcmul_(torch.addcmul(st(t, 0, N), beta, mem_prev), gm, value=-1.0)
            else:
                gsp.addcmul_(beta * mem_prev, gm, value=-1.0)
        if need_beta:
            acc_b.addcmul_(gm * (1.0 - R) if zero else gm, mem_prev)
        if need_theta and not zero:
            acc_t.addcmul_(R, gm)
        if need_w and (t == 0 or w0 - t >= window):  # the rows [t, w0) into dW
            dW = _add_dW(dW, dI[t:w0], spikes_before(t, w0, member_major=ens))
            w0 = t
        gm, gm_next = gm_next, gm
        gsp, gsp_next = gsp_next, gsp
        R_next = R
    # After the swap: gm_next = gmem[0], gsp_next = gsp[0] = dL/dS[-1].
    keep0 = beta * (1.0 - r0) if zero else beta
    g_mem0 = torch.addcmul(keep0 * gm_next, sd0, gsp_next)
    dstate0 = torch.cat([alpha * dI[0], g_mem0], dim=-1) if cuba else g_mem0
    bdim = len(lead) - 1  # the batch axis of a per-step slice
    dbeta = acc_b.sum(bdim) if need_beta else None
    dalpha = acc_a.sum(bdim) if need_alpha else None
    dtheta = None
    if need_theta:  # -sum sd (gS + gsp_next) over t >= -1, minus sum R gmem (subtract reset)
        acc_t.addcmul_(sd0, gsp_next)
        dtheta = -(acc_t.sum(bdim) + acc_sg.sum(bdim)) if acc_sg is not None else -acc_t.sum(bdim)
    return dI, dstate0, dbeta, dalpha, dtheta, dW


def _add_dW(dW: Optional[Tensor], dI: Tensor, R: Tensor) -> Tensor:
    """``dW + sum_{t, b} dI[t, b]^T R[t, b]`` (ensemble: per member, ``[c, E, B, N]`` inputs with ``R`` stored
    member-major), the first window without an addition, so a one-window sequence is one plain GEMM."""
    N = dI.shape[-1]
    if dI.ndim == 3:  # dW[n, k] = sum_{t, b} dI[t, b, n] R[t, b, k]: one GEMM over the window's rows
        a, b = dI.reshape(-1, N).t(), R.reshape(-1, N)
        return torch.mm(a, b) if dW is None else dW.addmm_(a, b)
    # [E, c * B, N] rows (a transposing copy to [E, N, c * B] is slower); the GEMM reads dI's transpose as a view
    E = dI.shape[1]
    a = dI.permute(1, 0, 2, 3).reshape(E, -1, N).transpose(1, 2)
    b = R.transpose(0, 1).reshape(E, -1, N)  # R's member-major storage: a view
    return torch.bmm(a, b) if dW is None else dW.baddbmm_(a, b)


# ----------------------------------------------------------------------------------------------
# Custom ops (both backends behind one op; use_triton picks the implementation)
# ----------------------------------------------------------------------------------------------


@torch.library.custom_op("surroflos::spiking_rnn_fwd", mutates_args=())
def _rnn_fwd(x_in: Tensor, W: Tensor, state0: Tensor, beta: Tensor, alpha: Optional[Tensor], threshold: Tensor,
             bias: Optional[Tensor], cuba: bool, zero_reset: bool, detach_reset: bool, surrogate_id: int,
             surrogate_scale: float, use_triton: bool, zero_mem: bool, use_cpu: bool = False,
             member_scales: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
    if use_cpu:  # the compiled spike-sparse forward (its backward is the PyTorch path's)
        from .cpu import forward as forward_cpu

        spikes, states, bits = forward_cpu(x_in, W, state0, beta, alpha, threshold, bias, cuba, zero_reset, zero_mem)
        return spikes.to(x_in.dtype), states.to(x_in.dtype), bits
    if use_triton:
        from .triton import forward_triton  # lazy: Triton picks interpreter/compiled at import

        spikes, states = forward_triton(x_in, W, state0, beta, alpha, threshold, bias, cuba, zero_reset, zero_mem)
    else:
        spikes, states = _forward_torch(x_in, W, state0, beta, alpha, threshold, bias, cuba, zero_reset, zero_mem)
    # The backward keeps the spikes as one byte each, not as numbers: the float spikes are the caller's output,
    # freed once nothing reads them (a spike readout keeps bytes too: surroflos.kernels.spike_linear).
    return spikes.contiguous(), states, spikes != 0


@_rnn_fwd.register_fake
def _rnn_fwd_fake(x_in, W, state0, beta, alpha, threshold, bias, cuba, zero_reset, detach_reset, surrogate_id,
                  surrogate_scale, use_triton, zero_mem, use_cpu=False, member_scales=None):
    return (x_in.new_empty(x_in.shape), x_in.new_empty(*x_in.shape[:-1], state0.shape[-1]),
            x_in.new_empty(x_in.shape, dtype=torch.bool))


@torch.library.custom_op("surroflos::spiking_rnn_bwd", mutates_args=())
def _rnn_bwd(grad_spikes: Optional[Tensor], grad_states: Optional[Tensor], W: Tensor, state0: Tensor,
             spike_bits: Tensor, states: Tensor, beta: Tensor, alpha: Optional[Tensor], threshold: Tensor, cuba: bool,
             zero_reset: bool, detach_reset: bool, surrogate_id: int, surrogate_scale: float, need_w: bool,
             need_beta: bool, need_alpha: bool, need_theta: bool, use_triton: bool, zero_mem: bool,
             member_scales: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    # one surrogate width per member: an [E, 1, 1] tensor that broadcasts against [.., E, B, N] (PyTorch path only)
    scale = surrogate_scale if member_scales is None else member_scales.to(acc_dtype(states.dtype)).view(-1, 1, 1)
    flags = (cuba, zero_reset, detach_reset, surrogate_id, scale, need_beta, need_alpha, need_theta, zero_mem)
    if use_triton:
        from .triton import backward_triton

        spikes = spike_bits.to(states.dtype)  # the Triton kernels read spikes as numbers
        gspk = torch.zeros_like(spikes) if grad_spikes is None else grad_spikes
        gst = torch.zeros_like(states) if grad_states is None else grad_states
        dI, ds0, db, da, dt, s_prev = backward_triton(gspk, gst, W, state0, spikes, states, beta, alpha, threshold,
                                                      *flags)
        del spikes, gspk, gst
        dW = _add_dW(None, dI, s_prev.to(dI.dtype)) if need_w else None
    else:
        dI, ds0, db, da, dt, dW = _backward_torch(grad_spikes, grad_states, W, state0, spike_bits, states, beta,
                                                  alpha, threshold, *flags, need_w=need_w)
    # (custom ops may not return one tensor twice: a fresh empty for every unneeded gradient)
    vec = lambda g, like: like.new_empty(0) if g is None else g.to(like.dtype)  # noqa: E731
    return (dI.to(states.dtype), W.new_empty(0) if dW is None else dW.to(W.dtype), ds0.to(state0.dtype),
            vec(db, beta), vec(da, beta), vec(dt, threshold))


@_rnn_bwd.register_fake
def _rnn_bwd_fake(grad_spikes, grad_states, W, state0, spike_bits, states, beta, alpha, threshold, cuba, zero_reset,
                  detach_reset, surrogate_id, surrogate_scale, need_w, need_beta, need_alpha, need_theta, use_triton,
                  zero_mem, member_scales=None):
    vec = lambda need: W.new_empty(W.shape[:-1] if need else (0,))  # noqa: E731 - [N] or [E, N]
    return (states.new_empty(spike_bits.shape), W.new_empty(W.shape) if need_w else W.new_empty(0),
            torch.empty_like(state0), vec(need_beta), vec(need_alpha and cuba), vec(need_theta))


def _setup(ctx, inputs, output):
    (_, W, state0, beta, alpha, threshold, _bias, cuba, zero, detach, sid, scale, use_triton, zmem, _cpu,
     member_scales) = inputs  # (the op's defaults are filled in)
    _spikes, states, spike_bits = output
    ctx.save_for_backward(W, state0, beta, alpha, threshold, spike_bits, states, member_scales)
    ctx.set_materialize_grads(False)  # an unused output's gradient stays None, not a full-size zero array
    ctx.flags = (cuba, zero, detach, sid, scale, use_triton, zmem)


def _backward(ctx, g_spikes, g_states, _g_bits):
    W, state0, beta, alpha, threshold, spike_bits, states, member_scales = ctx.saved_tensors
    cuba, zero, detach, sid, scale, use_triton, zmem = ctx.flags
    need = ctx.needs_input_grad
    dx, dW, ds0, db, da, dt = _rnn_bwd(g_spikes, g_states, W, state0, spike_bits, states, beta, alpha, threshold,
                                       cuba, zero, detach, sid, scale, need[1], need[3], need[4] and cuba,
                                       need[5], use_triton, zmem, member_scales)
    db_in = None  # I = x_in + S W^T + bias: sum over time and batch ([N], or [E, N] per member)
    if need[6]:
        db_in = dx.sum((0, 1)) if dx.ndim == 3 else dx.sum((0, 2))
    return (dx, dW if need[1] else None, ds0, db if need[3] else None, da if need[4] and cuba else None,
            dt if need[5] else None, db_in, None, None, None, None, None, None, None, None, None)


_rnn_fwd.register_autograd(_backward, setup_context=_setup)


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------


def _param(value: ParamLike, name: str, N: int, like: Tensor) -> Tensor:
    """A parameter as an ``[N]`` tensor (a broadcast view of a scalar, so gradients sum back to it)."""
    if isinstance(value, Tensor):
        if value.ndim > 1 or (value.ndim == 1 and value.shape[0] != N):
            raise ValueError(f"{name} must be a number or a tensor of shape [] or [{N}], got {tuple(value.shape)}")
        if value.dtype != like.dtype or value.device != like.device:
            raise ValueError(f"{name} is {value.dtype} on {value.device} but x_in is {like.dtype} on "
                             f"{like.device}; convert one of them")
        return value.expand(N)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return torch.full((N,), float(value), dtype=like.dtype, device=like.device)
    raise TypeError(f"{name} must be a number or a tensor, got {type(value).__name__}")


def _member_param(value: ParamLike, name: str, E: int, N: int, like: Tensor, bias: bool = False) -> Tensor:
    """An ensemble's parameter as an ``[E, N]`` tensor: a view (broadcast or reshape) of what was given, so
    that gradients sum back to the given shape (see the module docstring for the accepted shapes)."""
    if not isinstance(value, Tensor):
        if bias or not isinstance(value, numbers.Real) or isinstance(value, bool):
            what = "a tensor" if bias else "a number or a tensor"
            raise TypeError(f"{name} must be {what}, got {type(value).__name__}")
        return torch.full((E, N), float(value), dtype=like.dtype, device=like.device)
    shape = tuple(value.shape)
    shared = [(N,)] if bias else [(), (N,)]
    per_member = [(E, N), (E, 1, N)] if bias else [(E, 1), (E, N), (E, 1, 1), (E, 1, N)]
    if shape not in shared + per_member:
        allowed = ", ".join(str(list(s)) for s in shared + per_member)
        hint = ""
        if shape == (E,) and not bias:
            hint = (f" (a 1-D tensor is per neuron and shared by the members; one value per member is [{E}, 1] "
                    f"or [{E}, 1, 1])")
        raise ValueError(f"{name} of an ensemble of E={E} members with N={N} neurons must be "
                         f"{'' if bias else 'a number or '}a tensor of shape {allowed}, got {list(shape)}{hint}")
    if value.dtype != like.dtype or value.device != like.device:
        raise ValueError(f"{name} is {value.dtype} on {value.device} but x_in is {like.dtype} on "
                         f"{like.device}; convert one of them")
    if value.ndim == 3:  # a member view [E, 1, 1] / [E, 1, N]
        value = value.reshape(E, value.shape[-1])
    return value.expand(E, N)


# The compiled CPU forward (.cpu) pays for N >= this many neurons at every firing rate measured (8-30%); below it
# "auto" keeps the PyTorch path, whose small GEMMs are cheap (explicit backend="cpu" runs it at any N).
_CPU_AUTO_MIN_N = 512


def _resolved(backend: str, device_type: str) -> str:
    return resolve_backend(backend, device_type, cpu_kernel=True)


# torch.compile must evaluate the resolution while tracing and keep the answer as a constant (it reads
# the environment, numba's and Triton's settings, which Dynamo cannot trace).
_resolved = constant_result(_resolved)


def _implementation(backend: str, x_in: Tensor) -> str:
    """``"torch"``, ``"triton"`` or ``"cpu"`` for this call (see :mod:`surroflos.kernels.backend`)."""
    if backend == "torch":
        return "torch"
    if backend == "auto" and x_in.device.type == "cpu" and (x_in.dtype not in (torch.float32, torch.float64)
                                                            or x_in.shape[-1] < _CPU_AUTO_MIN_N):
        return "torch"  # decided before asking whether numba imports (small networks never import it)
    return _resolved(backend, x_in.device.type)


def spiking_rnn_sequence(x_in: Tensor, W: Tensor, state0: Tensor, *, neuron: str = "lif", beta: ParamLike = 0.9,
                         alpha: Optional[ParamLike] = 0.8, threshold: ParamLike = 1.0,
                         surrogate: sg.SurrogateLike = "atan", reset: str = "subtract", detach_reset: bool = True,
                         bias: Optional[Tensor] = None, backend: str = "auto") -> Tuple[Tensor, Tensor]:
    """Run the recurrent spiking network over ``x_in: [T, B, N]`` (see the module docstring), or an
    ensemble of ``E`` networks over ``x_in: [T, E, B, N]``.

    Args:
        x_in: feed-forward drive ``x W_in^T + b`` of every step, ``[T, B, N]`` (ensemble ``[T, E, B, N]``),
            floating point.
        W: recurrent weights ``[N, N]`` (ensemble ``[E, N, N]``; ``I = S W^T``), same dtype and device as
            ``x_in``.
        state0: ``[B, D]`` (ensemble ``[E, B, D]``) state before the first step (``D = N`` lif, ``2N`` cuba
            ``[syn | mem]``).
        neuron: ``"lif"`` or ``"cuba"``.
        beta, alpha, threshold: numbers or tensors ``[]`` / ``[N]`` (``alpha`` is read for cuba only); for
            an ensemble also per member ``[E, 1]``, ``[E, N]``, ``[E, 1, 1]`` or ``[E, 1, N]``.
        surrogate: name or :class:`~surroflos.surrogate.Surrogate` (its id and scale); for an ensemble also
            a :class:`~surroflos.surrogate.MemberSurrogate`, one width per member (PyTorch and CPU paths;
            ``"auto"`` on a GPU then runs the PyTorch path).
        reset: ``"subtract"``, ``"zero"`` or (cuba) ``"zero_mem"``; detach_reset: no gradient through the reset's spike.
        bias: optional ``[N]`` added after the recurrent product, ``I[t] = (x_in[t] + S[t-1] W^T) + bias``:
            the step function's order of additions, so a caller that passes ``x W_in^T`` and ``b``
            separately gets the step loop's roundings on the PyTorch path (bit for bit where the BLAS
            rounds the one ``[T*B]``-row GEMM like the per-step ones; near-threshold membranes make the
            surrogate gradients sensitive to the last bit). Otherwise fold ``b`` into ``x_in``. For an
            ensemble ``[N]`` (shared), ``[E, N]`` or ``[E, 1, N]``.
        backend: ``"auto"``, ``"torch"``, ``"triton"`` or ``"cpu"`` (see the module docstring).

    Returns:
        ``(spikes [T, B, N], states [T, B, D])`` (ensemble ``[T, E, B, N]``, ``[T, E, B, D]``) in the dtype
        of ``x_in``.

    Raises:
        ValueError / TypeError: bad shapes, dtypes, devices or options.
        TritonUnavailableError: ``backend="triton"`` where the kernels cannot run.
        CpuKernelUnavailableError: ``backend="cpu"`` where numba does not import, or for non-CPU tensors.
    """
    check_backend(backend)
    if neuron not in NEURONS:
        raise ValueError(f"neuron must be one of {NEURONS}, got {neuron!r}")
    if reset not in RESETS:
        raise ValueError(f"reset must be one of {RESETS}, got {reset!r}")
    if reset == "zero_mem" and neuron != "cuba":
        raise ValueError("reset='zero_mem' is for neuron='cuba' (for lif it is reset='zero')")
    for name, t in (("x_in", x_in), ("W", W), ("state0", state0)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if x_in.ndim not in (3, 4) or min(x_in.shape) < 1:
        raise ValueError(f"x_in must have shape [T, B, N] (or [T, E, B, N] for an ensemble) with every size >= 1, "
                         f"got {tuple(x_in.shape)}")
    if not x_in.is_floating_point():
        raise ValueError(f"x_in must be floating point, got {x_in.dtype}")
    ens = x_in.ndim == 4
    T, N = x_in.shape[0], x_in.shape[-1]
    E = x_in.shape[1] if ens else None
    B = x_in.shape[-2]
    D = 2 * N if neuron == "cuba" else N
    lead, lead_s = ((E,), "[E, ") if ens else ((), "[")
    if W.shape != (*lead, N, N):
        raise ValueError(f"W must have shape {lead_s}N, N] = {list((*lead, N, N))}, got {tuple(W.shape)}")
    if state0.shape != (*lead, B, D):
        raise ValueError(f"state0 must have shape {lead_s}B, D] = {list((*lead, B, D))} for neuron={neuron!r}, "
                         f"got {tuple(state0.shape)}")
    for name, t in (("W", W), ("state0", state0)):
        if t.dtype != x_in.dtype or t.device != x_in.device:
            raise ValueError(f"{name} is {t.dtype} on {t.device} but x_in is {x_in.dtype} on {x_in.device}; "
                             "convert one of them")
    surrogate = sg.get(surrogate)
    member_scales = None
    if isinstance(surrogate, sg.MemberSurrogate):  # one width per member
        if not ens or surrogate.members != E:
            raise ValueError(f"a MemberSurrogate of {surrogate.members} widths needs an ensemble of as many members "
                             f"(x_in [T, E, B, N]), got x_in of shape {tuple(x_in.shape)}")
        member_scales = torch.tensor(surrogate.scales, dtype=acc_dtype(x_in.dtype), device=x_in.device)
    cuba = neuron == "cuba"
    if cuba and alpha is None:
        raise ValueError("neuron='cuba' needs alpha (the synaptic decay)")
    if ens:  # every parameter as an [E, N] view of what was given
        beta_v = _member_param(beta, "beta", E, N, x_in)
        alpha_v = _member_param(alpha, "alpha", E, N, x_in) if cuba else None
        theta_v = _member_param(threshold, "threshold", E, N, x_in)
        if bias is not None:
            bias = _member_param(bias, "bias", E, N, x_in, bias=True)
    else:
        beta_v = _param(beta, "beta", N, x_in)
        alpha_v = _param(alpha, "alpha", N, x_in) if cuba else None
        theta_v = _param(threshold, "threshold", N, x_in)
    if bias is not None and not ens:
        if not isinstance(bias, Tensor) or bias.shape != (N,):
            raise ValueError(f"bias must be a tensor of shape [{N}], got {getattr(bias, 'shape', type(bias).__name__)}")
        if bias.dtype != x_in.dtype or bias.device != x_in.device:
            raise ValueError(f"bias is {bias.dtype} on {bias.device} but x_in is {x_in.dtype} on {x_in.device}; "
                             "convert one of them")
    impl = _implementation(backend, x_in)
    if member_scales is not None and impl == "triton":  # the Triton kernels take one width
        if backend == "triton":
            raise ValueError("backend='triton' takes one surrogate width for all members; an ensemble of members with "
                             "different widths runs on backend='auto' or 'torch' (or 'cpu')")
        impl = "torch"
    scale = float(surrogate.scales[0]) if member_scales is not None else float(surrogate.scale)
    spikes, states, _bits = _rnn_fwd(x_in, W, state0, beta_v, alpha_v, theta_v, bias, cuba,
                                     reset in ("zero", "zero_mem"), bool(detach_reset), surrogate.id, scale,
                                     impl == "triton", reset == "zero_mem", impl == "cpu", member_scales)
    return spikes, states


def spiking_rnn_reference(x_in: Tensor, W: Tensor, state0: Tensor, *, neuron: str = "lif", beta: ParamLike = 0.9,
                          alpha: Optional[ParamLike] = 0.8, threshold: ParamLike = 1.0,
                          surrogate: sg.SurrogateLike = "atan", reset: str = "subtract",
                          detach_reset: bool = True) -> Tuple[Tensor, Tensor]:
    """The naive loop over :func:`~surroflos.models.spiking.lif_step` / ``cuba_step`` (autograd per op), for
    one network (an ensemble's reference is this loop per member).

    ``x_in`` enters as the input with ``W_in = I`` and ``b = 0`` (exact: multiplying by the identity
    rounds nothing), so this is the model's own step function on the same numbers.
    """
    from ...models.spiking import SpikingParams, cuba_step, lif_step

    N = x_in.shape[-1]
    if reset == "zero_mem":  # (no step function has it: the equations of the module docstring, op by op)
        sgt = sg.get(surrogate)
        syn, mem = state0[:, :N], state0[:, N:]
        spikes, states = [], []
        for t in range(x_in.shape[0]):
            s = sgt(mem - threshold)
            r = s.detach() if detach_reset else s
            syn = alpha * syn + (x_in[t] + s @ W.t())
            mem = beta * (1 - r) * mem + syn
            spikes.append(sgt(mem - threshold))
            states.append(torch.cat([syn, mem], dim=1))
        return torch.stack(spikes), torch.stack(states)

    def as_t(v):
        return v if isinstance(v, Tensor) else torch.tensor(float(v), dtype=x_in.dtype, device=x_in.device)

    eye = torch.eye(N, dtype=x_in.dtype, device=x_in.device)
    p = SpikingParams(W, eye, torch.zeros(N, dtype=x_in.dtype, device=x_in.device), as_t(beta),
                      as_t(alpha) if neuron == "cuba" else None, as_t(threshold), sg.get(surrogate), reset,
                      bool(detach_reset), False)
    step = lif_step if neuron == "lif" else cuba_step
    state, spikes, states = state0, [], []
    for t in range(x_in.shape[0]):
        s, state = step(x_in[t], state, p)
        spikes.append(s)
        states.append(state)
    return torch.stack(spikes), torch.stack(states)
