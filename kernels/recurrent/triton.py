"""Triton kernels of :func:`surroflos.kernels.recurrent.spiking_rnn_sequence` (recurrent LIF / cuba).

One launch per time step (the recurrent product couples every neuron to every other one, so a step
needs all spikes of the previous step: a grid-wide dependency that a launch boundary provides). An
ensemble of ``E`` members (``x_in [T, E, B, N]``, ``W [E, N, N]``, parameters ``[E, N]``) runs in the same
launches: the grid's third axis is the member, each program shifts its pointers to its member's slabs
(a solo network is the ensemble ``E = 1``).

Forward, step ``t`` (grid over ``[B, N]`` tiles x members)::

    I = x_in[t] + S[t-1] W^T      tl.dot over K-blocks of the spikes; all-zero spike blocks are skipped
    neuron update (epilogue)      state kept in an accumulator-dtype work buffer, updated in place

Backward, launch ``j`` (reverse time; grid over ``[B, N]`` tiles of the *presynaptic* index x members)::

    gsp = dI[j+1] W (+ reset term)     = dL/dS[j] through step j+1 (a GEMM over the postsynaptic index)
    local adjoint of step j            -> dI[j], the carried membrane adjoint, parameter partial sums

and a last launch (``FINAL``) that turns ``dI[0] W`` into the gradient of the initial state (``ZMEM``: the
cuba zero_mem reset, which zeroes only the old membrane). The
adjoint formulas are those of ``_backward_torch`` in :mod:`surroflos.kernels.recurrent`.

Backward buffers (built by the launcher): ``spk_ext [T+1, (E,) B, N]`` with row 0 the initial spikes
``H(U[-1] - theta)`` and row ``t+1`` the spikes of step ``t``; ``st_ext [T+1, (E,) B, D]`` likewise for the
states. Time rows are ``E B N`` (``E B D``) elements apart, a member's slab within a row ``B N`` (``B D``).
Each program reads and writes only its own tile of
the in-place buffers, and every new value depends on the old one at the same element, so in-place
updates are race free.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._surrogate_triton import surrogate_grad
from ..backend import acc_dtype

__all__ = ["forward_triton", "backward_triton", "pick_blocks"]

_TL_DTYPE = {torch.float32: tl.float32, torch.float64: tl.float64}


@triton.jit(do_not_specialize=["off_n", "off_d"])
def _rnn_fwd_step(xin_ptr, w_ptr, sprev_ptr, spk_ptr, work_ptr, st_ptr, beta_ptr, alpha_ptr, theta_ptr, bias_ptr,
                  off_n, off_d, B, N,
                  CUBA: tl.constexpr, ZERO: tl.constexpr, HAS_BIAS: tl.constexpr, SKIP_ZERO: tl.constexpr,
                  ACC: tl.constexpr, ZMEM: tl.constexpr,
                  BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # sprev_ptr: S[t-1] ([E, B, N]); off_n = t * E * B * N (row t of x_in and of the spikes); off_d = t * E * B * D.
    pid_b = tl.program_id(0)
    pid_n = tl.program_id(1)
    e = tl.program_id(2).to(tl.int64)  # the member: every pointer moves to its slab
    rb = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mb = rb < B
    mn = rn < N
    m2 = mb[:, None] & mn[None, :]
    if CUBA:
        D = 2 * N
    else:
        D = N
    w_ptr += e * N * N
    sprev_ptr += e * B * N
    work_ptr += e * B * D
    beta_ptr += e * N
    alpha_ptr += e * N
    theta_ptr += e * N
    bias_ptr += e * N
    off_n += e * B * N
    off_d += e * B * D

    # Recurrent current S[t-1] W^T, K-block by K-block; spikes are 0/1, so silent blocks add nothing.
    acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=ACC)
    for k0 in range(0, N, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        mk = rk < N
        s = tl.load(sprev_ptr + rb[:, None] * N + rk[None, :], mask=mb[:, None] & mk[None, :], other=0.0)
        if SKIP_ZERO:
            active = tl.max(tl.max(s, axis=1), axis=0)
            if active > 0:
                w = tl.load(w_ptr + rn[None, :] * N + rk[:, None], mask=mk[:, None] & mn[None, :], other=0.0)
                acc += tl.dot(s, w, input_precision="ieee").to(ACC)
        else:
            w = tl.load(w_ptr + rn[None, :] * N + rk[:, None], mask=mk[:, None] & mn[None, :], other=0.0)
            acc += tl.dot(s, w, input_precision="ieee").to(ACC)

    cur = tl.load(xin_ptr + off_n + rb[:, None] * N + rn[None, :], mask=m2, other=0.0).to(ACC) + acc
    if HAS_BIAS:
        cur += tl.load(bias_ptr + rn, mask=mn, other=0.0)[None, :]
    beta = tl.load(beta_ptr + rn, mask=mn, other=0.0)[None, :]
    theta = tl.load(theta_ptr + rn, mask=mn, other=1.0)[None, :]
    r = tl.load(sprev_ptr + rb[:, None] * N + rn[None, :], mask=m2, other=0.0).to(ACC)  # own S[t-1]
    i_mem = rb[:, None] * D + (D - N) + rn[None, :]
    mem = tl.load(work_ptr + i_mem, mask=m2, other=0.0)
    if CUBA:
        i_syn = rb[:, None] * D + rn[None, :]
        alpha = tl.load(alpha_ptr + rn, mask=mn, other=0.0)[None, :]
        syn = alpha * tl.load(work_ptr + i_syn, mask=m2, other=0.0) + cur
        if ZERO:
            if ZMEM:  # zero_mem: only the old membrane is reset
                mem = beta * (1.0 - r) * mem + syn
            else:
                mem = (1.0 - r) * (beta * mem + syn)
        else:
            mem = beta * mem + syn - r * theta
        tl.store(work_ptr + i_syn, syn, mask=m2)
        tl.store(st_ptr + off_d + i_syn, syn.to(st_ptr.dtype.element_ty), mask=m2)
    else:
        if ZERO:
            mem = beta * (1.0 - r) * mem + cur
        else:
            mem = beta * mem + cur - r * theta
    tl.store(work_ptr + i_mem, mem, mask=m2)
    tl.store(st_ptr + off_d + i_mem, mem.to(st_ptr.dtype.element_ty), mask=m2)
    spk = tl.where(mem - theta > 0, 1.0, 0.0)
    tl.store(spk_ptr + off_n + rb[:, None] * N + rn[None, :], spk.to(spk_ptr.dtype.element_ty), mask=m2)


@triton.jit(do_not_specialize=["off_n", "off_d"])
def _rnn_bwd_step(dI_ptr, w_ptr, gspk_ptr, gst_ptr, spk_ptr, st_ptr, gm_ptr, rt_ptr, pb_ptr, pa_ptr, pt_ptr,
                  ds0_ptr, beta_ptr, alpha_ptr, theta_ptr, scale_ptr,
                  off_n, off_d, E, B, N,
                  CUBA: tl.constexpr, ZERO: tl.constexpr, DETACH: tl.constexpr, SURROGATE: tl.constexpr,
                  HAS_GEMM: tl.constexpr, FINAL: tl.constexpr, NEED_B: tl.constexpr, NEED_A: tl.constexpr,
                  NEED_T: tl.constexpr, ACC: tl.constexpr, ZMEM: tl.constexpr,
                  BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr):
    # Launch for step j: off_n = j * E * B * N, off_d = j * E * B * D (j = -1 for FINAL). dI row j+1 =
    # dL/dI[j+1] (read only when HAS_GEMM, i.e. j+1 < T); st_ext / spk_ext row j = step j-1 (row 0 =
    # initial), row j+1 = step j. Program (., ., e) works on member e.
    pid_b = tl.program_id(0)
    pid_n = tl.program_id(1)
    e = tl.program_id(2).to(tl.int64)
    rb = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mb = rb < B
    mn = rn < N
    m2 = mb[:, None] & mn[None, :]
    if CUBA:
        D = 2 * N
    else:
        D = N
    i_bn = rb[:, None] * N + rn[None, :]
    i_mem = rb[:, None] * D + (D - N) + rn[None, :]
    i_syn = rb[:, None] * D + rn[None, :]
    w_ptr += e * N * N
    gm_ptr += e * B * N
    rt_ptr += e * B * N
    pb_ptr += e * B * N
    pa_ptr += e * B * N
    pt_ptr += e * B * N
    ds0_ptr += e * B * D
    beta_ptr += e * N
    alpha_ptr += e * N
    theta_ptr += e * N
    off_n += e * B * N
    off_d += e * B * D
    nxt_n = off_n + E * B * N
    nxt_d = off_d + E * B * D

    # gsp = dL/dS[j] through step j+1: dI[j+1] W plus the (non-detached) reset term stored last launch.
    gsp = tl.zeros((BLOCK_B, BLOCK_N), dtype=ACC)
    if HAS_GEMM:
        for r0 in range(0, N, BLOCK_R):
            rr = r0 + tl.arange(0, BLOCK_R)
            mr = rr < N
            d = tl.load(dI_ptr + nxt_n + rb[:, None] * N + rr[None, :], mask=mb[:, None] & mr[None, :], other=0.0)
            w = tl.load(w_ptr + rr[:, None] * N + rn[None, :], mask=mr[:, None] & mn[None, :], other=0.0)
            gsp += tl.dot(d.to(w.dtype), w, input_precision="ieee").to(ACC)
        if not DETACH:
            gsp += tl.load(rt_ptr + i_bn, mask=m2, other=0.0)

    beta = tl.load(beta_ptr + rn, mask=mn, other=0.0)[None, :]
    theta = tl.load(theta_ptr + rn, mask=mn, other=1.0)[None, :]
    scale = tl.load(scale_ptr)
    gm_next = tl.load(gm_ptr + i_bn, mask=m2, other=0.0)  # dL/dmem[j+1] (total), zero after the last step
    snext = tl.load(spk_ptr + nxt_n + i_bn, mask=m2, other=0.0).to(ACC)  # S[j] = R[j+1]
    if ZERO:
        keep = beta * (1.0 - snext)  # dmem[j+1]/dmem[j]
    else:
        keep = beta
    mem = tl.load(st_ptr + nxt_d + i_mem, mask=m2, other=0.0).to(ACC)  # mem[j] (FINAL: initial membrane)
    sd = surrogate_grad(mem - theta, SURROGATE, scale)

    if FINAL:
        gmem0 = keep * gm_next + sd * gsp
        tl.store(ds0_ptr + i_mem, gmem0, mask=m2)
        if CUBA:
            alpha = tl.load(alpha_ptr + rn, mask=mn, other=0.0)[None, :]
            gsyn0 = alpha * tl.load(dI_ptr + nxt_n + i_bn, mask=m2, other=0.0)
            tl.store(ds0_ptr + i_syn, gsyn0, mask=m2)
        if NEED_T:
            tl.store(pt_ptr + i_bn, tl.load(pt_ptr + i_bn, mask=m2, other=0.0) - sd * gsp, mask=m2)
    else:
        gS = tl.load(gspk_ptr + off_n + i_bn, mask=m2, other=0.0).to(ACC) + gsp
        gmem = tl.load(gst_ptr + off_d + i_mem, mask=m2, other=0.0).to(ACC) + sd * gS + keep * gm_next
        r = tl.load(spk_ptr + off_n + i_bn, mask=m2, other=0.0).to(ACC)  # R[j] = S[j-1]
        mem_prev = tl.load(st_ptr + off_d + i_mem, mask=m2, other=0.0).to(ACC)
        if CUBA:
            alpha = tl.load(alpha_ptr + rn, mask=mn, other=0.0)[None, :]
            gsyn_next = tl.zeros((BLOCK_B, BLOCK_N), dtype=ACC)
            if HAS_GEMM:  # (row j+1 exists)
                gsyn_next = tl.load(dI_ptr + nxt_n + i_bn, mask=m2, other=0.0)  # dL/dsyn[j+1] (total)
            if ZERO and not ZMEM:
                dI = tl.load(gst_ptr + off_d + i_syn, mask=m2, other=0.0).to(ACC) + alpha * gsyn_next \
                    + (1.0 - r) * gmem
            else:
                dI = tl.load(gst_ptr + off_d + i_syn, mask=m2, other=0.0).to(ACC) + alpha * gsyn_next + gmem
            if NEED_A:
                syn_prev = tl.load(st_ptr + off_d + i_syn, mask=m2, other=0.0).to(ACC)
                tl.store(pa_ptr + i_bn, tl.load(pa_ptr + i_bn, mask=m2, other=0.0) + dI * syn_prev, mask=m2)
        else:
            dI = gmem
        tl.store(dI_ptr + off_n + i_bn, dI, mask=m2)
        tl.store(gm_ptr + i_bn, gmem, mask=m2)
        if not DETACH:
            # dmem[j]/dR[j]: the reset's own gradient, added to dL/dS[j-1] in the next launch.
            if ZERO:
                if CUBA and not ZMEM:
                    syn = tl.load(st_ptr + nxt_d + i_syn, mask=m2, other=0.0).to(ACC)
                    rterm = -(beta * mem_prev + syn)
                else:
                    rterm = -beta * mem_prev
            else:
                rterm = -theta
            tl.store(rt_ptr + i_bn, rterm * gmem, mask=m2)
        if NEED_T:
            if ZERO:
                pt = -sd * gS
            else:
                pt = -sd * gS - r * gmem
            tl.store(pt_ptr + i_bn, tl.load(pt_ptr + i_bn, mask=m2, other=0.0) + pt, mask=m2)
        if NEED_B:
            if ZERO:
                pb = gmem * (1.0 - r) * mem_prev
            else:
                pb = gmem * mem_prev
            tl.store(pb_ptr + i_bn, tl.load(pb_ptr + i_bn, mask=m2, other=0.0) + pb, mask=m2)


def pick_blocks(B: int, N: int) -> tuple[int, int, int]:
    """``(BLOCK_B, BLOCK_N, BLOCK_K)``: 16-wide tiles for small networks (tl.dot needs >= 16), wider
    reduction blocks for large ones. Small batch tiles keep enough programs to fill the GPU (B = 64,
    N = 1024: a 4 x 32 grid); each program streams a ``[N, BLOCK_N]`` slab of W per step."""
    block_b = 16 if B <= 64 else 32
    if N <= 128:
        return block_b, 16, 16
    return block_b, 32, 64


def _vec(p: torch.Tensor | None, shape: tuple, dtype: torch.dtype, like: torch.Tensor) -> torch.Tensor:
    """A parameter as a contiguous ``[N]`` (solo) or ``[E, N]`` (ensemble) vector."""
    if p is None:
        return like  # a dummy pointer for kernels that never read it
    return p.detach().to(dtype).expand(shape).contiguous()


def _sizes(x: torch.Tensor) -> tuple[int, int, int, int, tuple]:
    """``(T, E, B, N, vector shape)`` of ``[T, B, N]`` (``E = 1``, vectors ``[N]``) or ``[T, E, B, N]``."""
    if x.ndim == 3:
        T, B, N = x.shape
        return T, 1, B, N, (N,)
    T, E, B, N = x.shape
    return T, E, B, N, (E, N)


def _mv(v: torch.Tensor) -> torch.Tensor:
    """``[N]`` as it is, ``[E, N]`` as ``[E, 1, N]`` (to broadcast against ``[E, B, N]``)."""
    return v if v.ndim == 1 else v.unsqueeze(-2)


def forward_triton(x_in: torch.Tensor, W: torch.Tensor, state0: torch.Tensor, beta: torch.Tensor,
                   alpha: torch.Tensor | None, theta: torch.Tensor, bias: torch.Tensor | None, cuba: bool,
                   zero: bool, zmem: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Spikes ``[T, (E,) B, N]`` and states ``[T, (E,) B, D]`` (input dtype); one kernel launch per step (for
    all members of an ensemble)."""
    T, E, B, N, vshape = _sizes(x_in)
    D = 2 * N if cuba else N
    ad = acc_dtype(x_in.dtype)
    x_in, W = x_in.contiguous(), W.contiguous()
    theta_v = _vec(theta, vshape, ad, None)
    beta_v = _vec(beta, vshape, ad, None)
    alpha_v = _vec(alpha, vshape, ad, beta_v)
    bias_v = _vec(bias, vshape, ad, beta_v)
    work = state0.detach().to(ad).contiguous().clone()
    s0 = (work[..., D - N:] > _mv(theta_v)).to(x_in.dtype)
    spikes = x_in.new_empty(x_in.shape)
    states = x_in.new_empty(*x_in.shape[:-1], D)
    BB, BN, BK = pick_blocks(B, N)
    grid = (triton.cdiv(B, BB), triton.cdiv(N, BN), E)
    for t in range(T):
        _rnn_fwd_step[grid](x_in, W, s0 if t == 0 else spikes[t - 1], spikes, work, states, beta_v, alpha_v, theta_v,
                            bias_v, t * E * B * N, t * E * B * D, B, N, CUBA=cuba, ZERO=zero, HAS_BIAS=bias is not None,
                            SKIP_ZERO=True, ACC=_TL_DTYPE[ad], ZMEM=zmem, BLOCK_B=BB, BLOCK_N=BN, BLOCK_K=BK)
    return spikes, states


def backward_triton(gspk: torch.Tensor, gst: torch.Tensor, W: torch.Tensor, state0: torch.Tensor,
                    spikes: torch.Tensor, states: torch.Tensor, beta: torch.Tensor, alpha: torch.Tensor | None,
                    theta: torch.Tensor, cuba: bool, zero: bool, detach: bool, surrogate_id: int, scale: float,
                    need_beta: bool, need_alpha: bool, need_theta: bool, zmem: bool = False):
    """``(dI [T, (E,) B, N], dstate0 [(E,) B, D], dbeta, dalpha, dtheta, S_prev [T, (E,) B, N])``: adjoints in
    the accumulator dtype, parameter gradients as ``[N]`` (ensemble: ``[E, N]``) vectors (None where not
    needed) and the spikes ``S[t-1]`` for the caller's single dW GEMM."""
    T, E, B, N, vshape = _sizes(spikes)
    lead = tuple(spikes.shape[1:-1])
    D = 2 * N if cuba else N
    ad = acc_dtype(spikes.dtype)
    dev = spikes.device
    W = W.contiguous()
    theta_v = _vec(theta, vshape, ad, None)
    beta_v = _vec(beta, vshape, ad, None)
    alpha_v = _vec(alpha, vshape, ad, beta_v)
    st_ext = torch.cat([state0.detach().to(states.dtype).unsqueeze(0), states]).contiguous()
    s0 = (state0.detach()[..., D - N:].to(ad) > _mv(theta_v)).to(spikes.dtype)
    spk_ext = torch.cat([s0.unsqueeze(0), spikes]).contiguous()
    gspk, gst = gspk.contiguous(), gst.contiguous()
    dI = torch.empty(T, *lead, N, dtype=ad, device=dev)
    gm = torch.zeros(*lead, N, dtype=ad, device=dev)
    rt = torch.zeros(*lead, N, dtype=ad, device=dev)
    need_alpha = need_alpha and cuba
    pb = torch.zeros(*lead, N, dtype=ad, device=dev) if need_beta else gm
    pa = torch.zeros(*lead, N, dtype=ad, device=dev) if need_alpha else gm
    pt = torch.zeros(*lead, N, dtype=ad, device=dev) if need_theta else gm
    ds0 = torch.empty(*lead, D, dtype=ad, device=dev)
    scale_t = torch.tensor([scale], dtype=ad, device=dev)
    BB, BN, BR = pick_blocks(B, N)
    grid = (triton.cdiv(B, BB), triton.cdiv(N, BN), E)
    common = dict(CUBA=cuba, ZERO=zero, DETACH=detach, SURROGATE=surrogate_id, NEED_B=need_beta, NEED_A=need_alpha,
                  NEED_T=need_theta, ACC=_TL_DTYPE[ad], ZMEM=zmem, BLOCK_B=BB, BLOCK_N=BN, BLOCK_R=BR)
    for j in range(T - 1, -2, -1):  # j = T-1 .. 0, then j = -1 (FINAL)
        _rnn_bwd_step[grid](dI, W, gspk, gst, spk_ext, st_ext, gm, rt, pb, pa, pt, ds0, beta_v, alpha_v, theta_v,
                            scale_t, j * E * B * N, j * E * B * D, E, B, N, HAS_GEMM=j + 1 < T, FINAL=j < 0, **common)
    bdim = len(lead) - 1  # the batch axis
    return (dI, ds0, pb.sum(bdim) if need_beta else None, pa.sum(bdim) if need_alpha else None,
            pt.sum(bdim) if need_theta else None, spk_ext[:T])
