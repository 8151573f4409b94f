"""Triton kernels of the fused multi-step Leaky and Synaptic neurons (see :mod:`surroflos.kernels.lif`).

One program owns ``BLOCK`` neurons of the flattened ``[T, M]`` sequence for the whole of time: the state
stays in registers while the forward kernel walks ``t = 0..T-1`` and the backward kernel walks back.
The backward kernel recomputes what it needs from the stored membrane trace (and, for the immediate
reset, from ``x`` and the stored spikes), so nothing but the outputs is saved. Parameter gradients leave
as per-neuron-element partial sums ``[M]`` that the launcher reduces to the parameter's shape.

Constexpr codes: ``RESET`` 0 subtract / 1 zero / 2 none; ``LATE`` = immediate reset (``reset_delay=False``
with a reset); ``RGRAD`` = gradient through the delayed reset signal (``detach_reset=False`` with a
reset); ``*_VEC`` = per-neuron parameter ``[N]`` (neuron of element ``m`` is ``m % N``) instead of a
scalar; ``ACC`` = accumulator dtype.
``consts`` holds ``[graded, surrogate scale]`` in the accumulator dtype (a float argument would be
float32 inside the kernel, also for float64 inputs).
Kernels are launched with ``enable_fp_fusion=False``: like snnTorch's separate ops, ``beta * mem + x``
rounds the product before the sum (a fused multiply-add would move the membrane by a last bit, which
steep surrogates amplify through time).

This module imports Triton at its top: import it lazily (see :mod:`surroflos.kernels.backend`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._surrogate_triton import surrogate_grad
from ..backend import acc_dtype

_TL_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64}


# --------------------------------------------------------------------------------------------------
# Device helpers shared by the forward and backward kernels (same code, so the same rounding)
# --------------------------------------------------------------------------------------------------


@triton.jit
def _load_param(ptr, idx, mask, VEC: tl.constexpr, ACC: tl.constexpr):
    if VEC:
        v = tl.load(ptr + idx, mask=mask, other=0.0)
    else:
        v = tl.load(ptr)
    return v.to(ACC)


@triton.jit
def _heaviside(v, thr):
    return tl.where(v > thr, 1.0, 0.0).to(v.dtype)


@triton.jit
def _leaky_pre(u, xv, beta, thr, R, RESET: tl.constexpr):
    """Membrane before the immediate reset, from the previous membrane ``u`` and reset signal ``R``."""
    if RESET == 0:
        m = beta * u + xv - R * thr
    elif RESET == 1:
        m = beta * (u - R * u) + xv
    else:
        m = beta * u + xv
    return m


@triton.jit
def _synaptic_pre(b, thr, R, RESET: tl.constexpr):
    """Synaptic/R* reset of the whole update ``b = beta mem + syn``."""
    if RESET == 0:
        m = b - R * thr
    elif RESET == 1:
        m = b - R * b
    else:
        m = b
    return m


@triton.jit
def _fire(m, R, thr, RESET: tl.constexpr, LATE: tl.constexpr):
    """Spike ``s = H(m - theta)`` and the membrane after the immediate reset (if any)."""
    s = _heaviside(m, thr)
    if LATE:
        d = s - R
        if RESET == 0:
            mn = m - d * thr
        else:
            mn = m - d * m
    else:
        mn = m
    return s, mn


@triton.jit
def _fire_backward(A, gs, m, s, R, thr, sm, RESET: tl.constexpr, LATE: tl.constexpr):
    """Through ``spk = g s`` and the immediate reset: gradients on ``m`` and ``R`` and the threshold part.

    ``A`` = gradient on the returned membrane, ``gs`` = gradient on ``s`` from the spike output (already
    times ``g``), ``sm`` = surrogate derivative at ``m - theta``.
    """
    if LATE:
        if RESET == 0:
            Gs = gs - A * thr
            Gm = A + Gs * sm
            GR = A * thr
            dthr = -(s - R) * A - Gs * sm
        else:
            Gs = gs - A * m
            Gm = A * (1.0 - s + R) + Gs * sm
            GR = A * m
            dthr = -Gs * sm
    else:
        Gm = A + gs * sm
        GR = tl.zeros_like(A)
        dthr = -gs * sm
    return Gm, GR, dthr


# --------------------------------------------------------------------------------------------------
# Leaky
# --------------------------------------------------------------------------------------------------


@triton.jit
def _leaky_fwd_kernel(x_ptr, mem0_ptr, beta_ptr, thr_ptr, consts_ptr, spk_ptr, mem_ptr, T, M, N,
                      RESET: tl.constexpr, LATE: tl.constexpr, BETA_VEC: tl.constexpr, THR_VEC: tl.constexpr,
                      ACC: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < M
    beta = _load_param(beta_ptr, offs % N, mask, BETA_VEC, ACC)
    thr = _load_param(thr_ptr, offs % N, mask, THR_VEC, ACC)
    g = tl.load(consts_ptr).to(ACC)
    u = tl.load(mem0_ptr + offs, mask=mask, other=0.0).to(ACC)
    xp = x_ptr + offs
    sp = spk_ptr + offs
    mp = mem_ptr + offs
    for _t in range(T):
        xv = tl.load(xp, mask=mask, other=0.0).to(ACC)
        R = _heaviside(u, thr)
        m = _leaky_pre(u, xv, beta, thr, R, RESET)
        s, u = _fire(m, R, thr, RESET, LATE)
        tl.store(sp, (s * g).to(spk_ptr.dtype.element_ty), mask=mask)
        tl.store(mp, u.to(mem_ptr.dtype.element_ty), mask=mask)
        xp += M
        sp += M
        mp += M


@triton.jit
def _leaky_bwd_kernel(gspk_ptr, gmem_ptr, x_ptr, mem0_ptr, mem_ptr, spk_ptr, beta_ptr, thr_ptr, consts_ptr,
                      gx_ptr, gmem0_ptr, gbeta_ptr, gthr_ptr, T, M, N, last,
                      SURROGATE: tl.constexpr, RESET: tl.constexpr, LATE: tl.constexpr, RGRAD: tl.constexpr,
                      BETA_VEC: tl.constexpr, THR_VEC: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < M
    beta = _load_param(beta_ptr, offs % N, mask, BETA_VEC, ACC)
    thr = _load_param(thr_ptr, offs % N, mask, THR_VEC, ACC)
    g = tl.load(consts_ptr).to(ACC)
    scale = tl.load(consts_ptr + 1).to(ACC)
    carry = tl.zeros([BLOCK], ACC)  # gradient on mem[t] from steps > t
    dbeta = tl.zeros([BLOCK], ACC)
    dthr = tl.zeros([BLOCK], ACC)
    row = last + offs  # element offsets of time step t, walking back from T - 1
    mt = tl.load(mem_ptr + row, mask=mask, other=0.0).to(ACC)
    for i in range(T):
        t = T - 1 - i
        if t > 0:
            u = tl.load(mem_ptr + row - M, mask=mask, other=0.0).to(ACC)
        else:
            u = tl.load(mem0_ptr + offs, mask=mask, other=0.0).to(ACC)
        A = tl.load(gmem_ptr + row, mask=mask, other=0.0).to(ACC) + carry
        gs = tl.load(gspk_ptr + row, mask=mask, other=0.0).to(ACC) * g
        R = _heaviside(u, thr)
        if LATE:
            xv = tl.load(x_ptr + row, mask=mask, other=0.0).to(ACC)
            m = _leaky_pre(u, xv, beta, thr, R, RESET)
            s = tl.where(tl.load(spk_ptr + row, mask=mask, other=0.0) != 0, 1.0, 0.0).to(ACC)
        else:
            m = mt
            s = R  # unused without the immediate reset
        sm = surrogate_grad(m - thr, SURROGATE, scale)
        Gm, GR, dth = _fire_backward(A, gs, m, s, R, thr, sm, RESET, LATE)
        if RESET == 0:
            du = beta
            GR = GR - Gm * thr
            dth = dth - Gm * R
            dbeta += Gm * u
        elif RESET == 1:
            du = beta * (1.0 - R)
            GR = GR - Gm * beta * u
            dbeta += Gm * (u - R * u)
        else:
            du = beta
            dbeta += Gm * u
        carry = Gm * du
        if RGRAD:
            su = surrogate_grad(u - thr, SURROGATE, scale)
            carry += GR * su
            dth = dth - GR * su
        dthr += dth
        tl.store(gx_ptr + row, Gm.to(gx_ptr.dtype.element_ty), mask=mask)
        row -= M
        mt = u
    tl.store(gmem0_ptr + offs, carry.to(gmem0_ptr.dtype.element_ty), mask=mask)
    tl.store(gbeta_ptr + offs, dbeta, mask=mask)
    tl.store(gthr_ptr + offs, dthr, mask=mask)


# --------------------------------------------------------------------------------------------------
# Synaptic
# --------------------------------------------------------------------------------------------------


@triton.jit
def _synaptic_fwd_kernel(x_ptr, syn0_ptr, mem0_ptr, alpha_ptr, beta_ptr, thr_ptr, consts_ptr,
                         spk_ptr, syn_ptr, mem_ptr, T, M, N,
                         RESET: tl.constexpr, LATE: tl.constexpr, ALPHA_VEC: tl.constexpr,
                         BETA_VEC: tl.constexpr, THR_VEC: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < M
    alpha = _load_param(alpha_ptr, offs % N, mask, ALPHA_VEC, ACC)
    beta = _load_param(beta_ptr, offs % N, mask, BETA_VEC, ACC)
    thr = _load_param(thr_ptr, offs % N, mask, THR_VEC, ACC)
    g = tl.load(consts_ptr).to(ACC)
    syn = tl.load(syn0_ptr + offs, mask=mask, other=0.0).to(ACC)
    u = tl.load(mem0_ptr + offs, mask=mask, other=0.0).to(ACC)
    xp = x_ptr + offs
    sp = spk_ptr + offs
    yp = syn_ptr + offs
    mp = mem_ptr + offs
    for _t in range(T):
        xv = tl.load(xp, mask=mask, other=0.0).to(ACC)
        R = _heaviside(u, thr)
        syn = alpha * syn + xv
        m = _synaptic_pre(beta * u + syn, thr, R, RESET)
        s, u = _fire(m, R, thr, RESET, LATE)
        tl.store(sp, (s * g).to(spk_ptr.dtype.element_ty), mask=mask)
        tl.store(yp, syn.to(syn_ptr.dtype.element_ty), mask=mask)
        tl.store(mp, u.to(mem_ptr.dtype.element_ty), mask=mask)
        xp += M
        sp += M
        yp += M
        mp += M


@triton.jit
def _synaptic_bwd_kernel(gspk_ptr, gsyn_ptr, gmem_ptr, syn0_ptr, mem0_ptr, syn_ptr, mem_ptr, spk_ptr,
                         alpha_ptr, beta_ptr, thr_ptr, consts_ptr,
                         gx_ptr, gsyn0_ptr, gmem0_ptr, galpha_ptr, gbeta_ptr, gthr_ptr, T, M, N, last,
                         SURROGATE: tl.constexpr, RESET: tl.constexpr, LATE: tl.constexpr, RGRAD: tl.constexpr,
                         ALPHA_VEC: tl.constexpr, BETA_VEC: tl.constexpr, THR_VEC: tl.constexpr,
                         ACC: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < M
    alpha = _load_param(alpha_ptr, offs % N, mask, ALPHA_VEC, ACC)
    beta = _load_param(beta_ptr, offs % N, mask, BETA_VEC, ACC)
    thr = _load_param(thr_ptr, offs % N, mask, THR_VEC, ACC)
    g = tl.load(consts_ptr).to(ACC)
    scale = tl.load(consts_ptr + 1).to(ACC)
    carry_m = tl.zeros([BLOCK], ACC)
    carry_s = tl.zeros([BLOCK], ACC)
    dalpha = tl.zeros([BLOCK], ACC)
    dbeta = tl.zeros([BLOCK], ACC)
    dthr = tl.zeros([BLOCK], ACC)
    row = last + offs
    mt = tl.load(mem_ptr + row, mask=mask, other=0.0).to(ACC)
    nt = tl.load(syn_ptr + row, mask=mask, other=0.0).to(ACC)
    for i in range(T):
        t = T - 1 - i
        if t > 0:
            u = tl.load(mem_ptr + row - M, mask=mask, other=0.0).to(ACC)
            sy = tl.load(syn_ptr + row - M, mask=mask, other=0.0).to(ACC)
        else:
            u = tl.load(mem0_ptr + offs, mask=mask, other=0.0).to(ACC)
            sy = tl.load(syn0_ptr + offs, mask=mask, other=0.0).to(ACC)
        A = tl.load(gmem_ptr + row, mask=mask, other=0.0).to(ACC) + carry_m
        C = tl.load(gsyn_ptr + row, mask=mask, other=0.0).to(ACC) + carry_s
        gs = tl.load(gspk_ptr + row, mask=mask, other=0.0).to(ACC) * g
        R = _heaviside(u, thr)
        b = beta * u + nt
        if LATE:
            m = _synaptic_pre(b, thr, R, RESET)
            s = tl.where(tl.load(spk_ptr + row, mask=mask, other=0.0) != 0, 1.0, 0.0).to(ACC)
        else:
            m = mt
            s = R  # unused without the immediate reset
        sm = surrogate_grad(m - thr, SURROGATE, scale)
        Gm, GR, dth = _fire_backward(A, gs, m, s, R, thr, sm, RESET, LATE)
        if RESET == 0:
            Gb = Gm
            GR = GR - Gm * thr
            dth = dth - Gm * R
        elif RESET == 1:
            Gb = Gm * (1.0 - R)
            GR = GR - Gm * b
        else:
            Gb = Gm
        Gn = Gb + C
        dalpha += Gn * sy
        dbeta += Gb * u
        carry_s = alpha * Gn
        carry_m = beta * Gb
        if RGRAD:
            su = surrogate_grad(u - thr, SURROGATE, scale)
            carry_m += GR * su
            dth = dth - GR * su
        dthr += dth
        tl.store(gx_ptr + row, Gn.to(gx_ptr.dtype.element_ty), mask=mask)
        row -= M
        mt = u
        nt = sy
    tl.store(gsyn0_ptr + offs, carry_s.to(gsyn0_ptr.dtype.element_ty), mask=mask)
    tl.store(gmem0_ptr + offs, carry_m.to(gmem0_ptr.dtype.element_ty), mask=mask)
    tl.store(galpha_ptr + offs, dalpha, mask=mask)
    tl.store(gbeta_ptr + offs, dbeta, mask=mask)
    tl.store(gthr_ptr + offs, dthr, mask=mask)


# --------------------------------------------------------------------------------------------------
# Launchers: x [T, M] contiguous, states [M], parameters [] or [N] in the accumulator dtype
# --------------------------------------------------------------------------------------------------

BLOCK_OVERRIDE: int | None = None  # tests set it to get shapes that are not multiples of the block


def _block(M: int, device: torch.device) -> tuple[int, int]:
    """Block size and warps: small blocks when M is small, so that every SM gets programs."""
    if BLOCK_OVERRIDE is not None:
        return BLOCK_OVERRIDE, 1
    if device.type != "cuda":
        return 64, 1
    n_sm = torch.cuda.get_device_properties(device).multi_processor_count
    block = 256
    while block > 32 and triton.cdiv(M, block) < 4 * n_sm:
        block //= 2
    return block, max(1, block // 64)


def _common(x: torch.Tensor, params: tuple[torch.Tensor, ...], graded: float, scale: float):
    T, M = x.shape
    acc = acc_dtype(x.dtype)
    N = next((p.numel() for p in params if p.ndim == 1), 1)
    consts = torch.tensor([graded, scale], dtype=acc, device=x.device)
    block, warps = _block(M, x.device)
    return T, M, N, acc, consts, block, warps


def _reduce(partial: torch.Tensor, param: torch.Tensor, N: int) -> torch.Tensor:
    """Per-element partial sums ``[M]`` -> the parameter's shape (``[]`` or ``[N]``)."""
    if param.ndim == 0:
        return partial.sum().to(param.dtype)
    return partial.view(-1, N).sum(0).to(param.dtype)


def leaky_forward(x, mem0, beta, thr, reset: int, late: bool, graded: float):
    T, M, N, acc, consts, block, warps = _common(x, (beta, thr), graded, 1.0)
    spk = torch.empty_like(x)
    mem = torch.empty_like(x)
    if T and M:
        _leaky_fwd_kernel[(triton.cdiv(M, block),)](
            x, mem0, beta, thr, consts, spk, mem, T, M, N,
            RESET=reset, LATE=late, BETA_VEC=beta.ndim == 1, THR_VEC=thr.ndim == 1,
            ACC=_TL_DTYPES[acc], BLOCK=block, num_warps=warps, enable_fp_fusion=False)
    return spk, mem


def leaky_backward(gspk, gmem, x, mem0, mem, spk, beta, thr, sid: int, scale: float, reset: int, late: bool,
                   rgrad: bool, graded: float):
    T, M, N, acc, consts, block, warps = _common(mem, (beta, thr), graded, scale)
    gspk, gmem = gspk.contiguous(), gmem.contiguous()  # e.g. the expanded gradient of a sum
    gx = torch.empty_like(mem)
    gmem0 = torch.zeros_like(mem0)
    pbeta = torch.zeros(M, dtype=acc, device=mem.device)
    pthr = torch.zeros(M, dtype=acc, device=mem.device)
    if T and M:
        dummy = mem  # never read when LATE is false
        _leaky_bwd_kernel[(triton.cdiv(M, block),)](
            gspk, gmem, x if late else dummy, mem0, mem, spk if late else dummy, beta, thr, consts,
            gx, gmem0, pbeta, pthr, T, M, N, (T - 1) * M,
            SURROGATE=sid, RESET=reset, LATE=late, RGRAD=rgrad, BETA_VEC=beta.ndim == 1,
            THR_VEC=thr.ndim == 1, ACC=_TL_DTYPES[acc], BLOCK=block, num_warps=warps, enable_fp_fusion=False)
    return gx, gmem0, _reduce(pbeta, beta, N), _reduce(pthr, thr, N)


def synaptic_forward(x, syn0, mem0, alpha, beta, thr, reset: int, late: bool, graded: float):
    T, M, N, acc, consts, block, warps = _common(x, (alpha, beta, thr), graded, 1.0)
    spk = torch.empty_like(x)
    syn = torch.empty_like(x)
    mem = torch.empty_like(x)
    if T and M:
        _synaptic_fwd_kernel[(triton.cdiv(M, block),)](
            x, syn0, mem0, alpha, beta, thr, consts, spk, syn, mem, T, M, N,
            RESET=reset, LATE=late, ALPHA_VEC=alpha.ndim == 1, BETA_VEC=beta.ndim == 1, THR_VEC=thr.ndim == 1,
            ACC=_TL_DTYPES[acc], BLOCK=block, num_warps=warps, enable_fp_fusion=False)
    return spk, syn, mem


def synaptic_backward(gspk, gsyn, gmem, syn0, mem0, syn, mem, spk, alpha, beta, thr, sid: int, scale: float,
                      reset: int, late: bool, rgrad: bool, graded: float):
    T, M, N, acc, consts, block, warps = _common(mem, (alpha, beta, thr), graded, scale)
    gspk, gsyn, gmem = gspk.contiguous(), gsyn.contiguous(), gmem.contiguous()
    gx = torch.empty_like(mem)
    gsyn0 = torch.zeros_like(syn0)
    gmem0 = torch.zeros_like(mem0)
    palpha, pbeta, pthr = (torch.zeros(M, dtype=acc, device=mem.device) for _ in range(3))
    if T and M:
        _synaptic_bwd_kernel[(triton.cdiv(M, block),)](
            gspk, gsyn, gmem, syn0, mem0, syn, mem, spk if late else mem, alpha, beta, thr, consts,
            gx, gsyn0, gmem0, palpha, pbeta, pthr, T, M, N, (T - 1) * M,
            SURROGATE=sid, RESET=reset, LATE=late, RGRAD=rgrad, ALPHA_VEC=alpha.ndim == 1,
            BETA_VEC=beta.ndim == 1, THR_VEC=thr.ndim == 1, ACC=_TL_DTYPES[acc], BLOCK=block, num_warps=warps,
            enable_fp_fusion=False)
    return gx, gsyn0, gmem0, _reduce(palpha, alpha, N), _reduce(pbeta, beta, N), _reduce(pthr, thr, N)
