"""Triton kernels for :mod:`surroflos.kernels.norse_lif` (Norse-style feed-forward LIF and LIF box neurons).

Layout: inputs ``x: [T, R, N]`` contiguous, seen as ``[T, M]`` with ``M = R N`` independent neurons;
element ``m`` reads the per-neuron coefficients at ``m % N``. One program owns ``BLOCK`` neurons for the
whole sequence and keeps their state in registers across the time loop:

- forward: one pass over ``t = 0..T-1`` storing the spikes and states of every step;
- backward: one pass over ``t = T-1..0`` that recomputes the pre-reset membrane from the stored states
  (the spikes themselves are read back, so the backward sees exactly the forward's spikes) and carries the
  adjoints ``lv, li``; the coefficients' gradients are accumulated per neuron over time and stored as
  per-element partial sums ``[M]`` that the launcher sums over the rows.

The equations and adjoint formulas are in :mod:`surroflos.kernels.norse_lif`, whose PyTorch path is the
reference of these kernels. This module imports Triton at its top; import it lazily.
"""

from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

from .._surrogate_triton import surrogate_grad
from ..backend import acc_dtype

__all__ = ["lif_ff_forward", "lif_ff_backward", "lif_box_forward", "lif_box_backward"]

_TL_ACC = {torch.float32: tl.float32, torch.float64: tl.float64}
_MAX_BLOCK = 256


@triton.jit
def _lif_ff_fwd_kernel(x_ptr, v0_ptr, i0_ptr, a_ptr, c_ptr, vl_ptr, vth_ptr, vr_ptr, z_ptr, v_ptr, i_ptr,
                       T, M, N, ACC: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < M
    n = offs % N
    a = tl.load(a_ptr + n, mask=mask, other=0.0).to(ACC)
    c = tl.load(c_ptr + n, mask=mask, other=0.0).to(ACC)
    vl = tl.load(vl_ptr + n, mask=mask, other=0.0).to(ACC)
    vth = tl.load(vth_ptr + n, mask=mask, other=0.0).to(ACC)
    vr = tl.load(vr_ptr + n, mask=mask, other=0.0).to(ACC)
    v = tl.load(v0_ptr + offs, mask=mask, other=0.0).to(ACC)
    i = tl.load(i0_ptr + offs, mask=mask, other=0.0).to(ACC)
    # Pointer increments (64-bit) instead of t * M offsets, which could overflow int32.
    xp = x_ptr + offs
    zp = z_ptr + offs
    vp = v_ptr + offs
    ip = i_ptr + offs
    for _t in range(T):
        xt = tl.load(xp, mask=mask, other=0.0).to(ACC)
        j = i + xt
        u = v + a * ((vl - v) + j)
        i = j + c * j
        spk = (u - vth) > 0.0
        v = tl.where(spk, vr, u)
        # (via ACC: Triton's interpreter cannot cast bool to bfloat16)
        tl.store(zp, spk.to(ACC).to(z_ptr.dtype.element_ty), mask=mask)
        tl.store(vp, v.to(v_ptr.dtype.element_ty), mask=mask)
        tl.store(ip, i.to(i_ptr.dtype.element_ty), mask=mask)
        xp += M
        zp += M
        vp += M
        ip += M


@triton.jit
def _lif_ff_bwd_kernel(x_ptr, v0_ptr, i0_ptr, z_ptr, v_ptr, i_ptr, gz_ptr, gv_ptr, gi_ptr,
                       a_ptr, c_ptr, vl_ptr, vth_ptr, vr_ptr,
                       gx_ptr, gv0_ptr, gi0_ptr, da_ptr, dc_ptr, dvl_ptr, dvth_ptr, dvr_ptr,
                       T, M, N, last, scale,
                       SURROGATE: tl.constexpr, PARAM_GRADS: tl.constexpr, ACC: tl.constexpr,
                       BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < M
    n = offs % N
    a = tl.load(a_ptr + n, mask=mask, other=0.0).to(ACC)
    c = tl.load(c_ptr + n, mask=mask, other=0.0).to(ACC)
    vl = tl.load(vl_ptr + n, mask=mask, other=0.0).to(ACC)
    vth = tl.load(vth_ptr + n, mask=mask, other=0.0).to(ACC)
    vr = tl.load(vr_ptr + n, mask=mask, other=0.0).to(ACC)
    v0 = tl.load(v0_ptr + offs, mask=mask, other=0.0).to(ACC)
    i0 = tl.load(i0_ptr + offs, mask=mask, other=0.0).to(ACC)
    lv = tl.zeros([BLOCK], dtype=ACC)
    li = tl.zeros([BLOCK], dtype=ACC)
    da = tl.zeros([BLOCK], dtype=ACC)
    dc = tl.zeros([BLOCK], dtype=ACC)
    dvl = tl.zeros([BLOCK], dtype=ACC)
    dvth = tl.zeros([BLOCK], dtype=ACC)
    dvr = tl.zeros([BLOCK], dtype=ACC)
    base = offs + last  # element offs of step T-1
    xp = x_ptr + base
    zp = z_ptr + base
    gzp = gz_ptr + base
    gvp = gv_ptr + base
    gip = gi_ptr + base
    gxp = gx_ptr + base
    vpp = v_ptr + base - M  # the state entering step t is the output of step t-1
    ipp = i_ptr + base - M
    for k in range(T):
        # (a block-shaped condition: the interpreter rejects scalar masks)
        has_prev = (tl.zeros([BLOCK], dtype=tl.int32) + k) < T - 1
        pm = mask & has_prev
        v_in = tl.where(has_prev, tl.load(vpp, mask=pm, other=0.0).to(ACC), v0)
        i_in = tl.where(has_prev, tl.load(ipp, mask=pm, other=0.0).to(ACC), i0)
        xt = tl.load(xp, mask=mask, other=0.0).to(ACC)
        zt = tl.load(zp, mask=mask, other=0.0).to(ACC)
        j = i_in + xt
        u = v_in + a * ((vl - v_in) + j)
        if SURROGATE >= 0:
            sp = surrogate_grad(u - vth, SURROGATE, scale)
        else:
            sp = tl.zeros([BLOCK], dtype=ACC)
        Gv = tl.load(gvp, mask=mask, other=0.0).to(ACC) + lv
        Gi = tl.load(gip, mask=mask, other=0.0).to(ACC) + li
        Gz = tl.load(gzp, mask=mask, other=0.0).to(ACC) + Gv * (vr - u)
        Gu = Gv * (1.0 - zt) + Gz * sp
        lv = Gu * (1.0 - a)
        li = Gu * a + Gi * (1.0 + c)
        tl.store(gxp, li.to(gx_ptr.dtype.element_ty), mask=mask)
        if PARAM_GRADS:
            da += Gu * ((vl - v_in) + j)
            dc += Gi * j
            dvl += Gu * a
            dvth -= Gz * sp
            dvr += Gv * zt
        xp -= M
        zp -= M
        gzp -= M
        gvp -= M
        gip -= M
        gxp -= M
        vpp -= M
        ipp -= M
    tl.store(gv0_ptr + offs, lv.to(gv0_ptr.dtype.element_ty), mask=mask)
    tl.store(gi0_ptr + offs, li.to(gi0_ptr.dtype.element_ty), mask=mask)
    if PARAM_GRADS:
        tl.store(da_ptr + offs, da, mask=mask)
        tl.store(dc_ptr + offs, dc, mask=mask)
        tl.store(dvl_ptr + offs, dvl, mask=mask)
        tl.store(dvth_ptr + offs, dvth, mask=mask)
        tl.store(dvr_ptr + offs, dvr, mask=mask)


@triton.jit
def _lif_box_fwd_kernel(x_ptr, v0_ptr, a_ptr, vl_ptr, vth_ptr, vr_ptr, z_ptr, v_ptr, T, M, N,
                        RESET: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < M
    n = offs % N
    a = tl.load(a_ptr + n, mask=mask, other=0.0).to(ACC)
    vl = tl.load(vl_ptr + n, mask=mask, other=0.0).to(ACC)
    vth = tl.load(vth_ptr + n, mask=mask, other=0.0).to(ACC)
    vr = tl.load(vr_ptr + n, mask=mask, other=0.0).to(ACC)
    v = tl.load(v0_ptr + offs, mask=mask, other=0.0).to(ACC)
    xp = x_ptr + offs
    zp = z_ptr + offs
    vp = v_ptr + offs
    for _t in range(T):
        xt = tl.load(xp, mask=mask, other=0.0).to(ACC)
        u = v + a * ((xt + vl) - v)
        s = u - vth
        spk = s > 0.0
        if RESET == 0:
            v = tl.where(spk, vr, u)
        else:
            v = tl.where(spk, s, u)
        # (via ACC: Triton's interpreter cannot cast bool to bfloat16)
        tl.store(zp, spk.to(ACC).to(z_ptr.dtype.element_ty), mask=mask)
        tl.store(vp, v.to(v_ptr.dtype.element_ty), mask=mask)
        xp += M
        zp += M
        vp += M


@triton.jit
def _lif_box_bwd_kernel(x_ptr, v0_ptr, z_ptr, v_ptr, gz_ptr, gv_ptr, a_ptr, vl_ptr, vth_ptr, vr_ptr,
                        gx_ptr, gv0_ptr, da_ptr, dvl_ptr, dvth_ptr, dvr_ptr,
                        T, M, N, last, scale,
                        RESET: tl.constexpr, SURROGATE: tl.constexpr, PARAM_GRADS: tl.constexpr,
                        ACC: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < M
    n = offs % N
    a = tl.load(a_ptr + n, mask=mask, other=0.0).to(ACC)
    vl = tl.load(vl_ptr + n, mask=mask, other=0.0).to(ACC)
    vth = tl.load(vth_ptr + n, mask=mask, other=0.0).to(ACC)
    vr = tl.load(vr_ptr + n, mask=mask, other=0.0).to(ACC)
    v0 = tl.load(v0_ptr + offs, mask=mask, other=0.0).to(ACC)
    lv = tl.zeros([BLOCK], dtype=ACC)
    da = tl.zeros([BLOCK], dtype=ACC)
    dvl = tl.zeros([BLOCK], dtype=ACC)
    dvth = tl.zeros([BLOCK], dtype=ACC)
    dvr = tl.zeros([BLOCK], dtype=ACC)
    base = offs + last
    xp = x_ptr + base
    zp = z_ptr + base
    gzp = gz_ptr + base
    gvp = gv_ptr + base
    gxp = gx_ptr + base
    vpp = v_ptr + base - M
    for k in range(T):
        has_prev = (tl.zeros([BLOCK], dtype=tl.int32) + k) < T - 1
        v_in = tl.where(has_prev, tl.load(vpp, mask=mask & has_prev, other=0.0).to(ACC), v0)
        xt = tl.load(xp, mask=mask, other=0.0).to(ACC)
        zt = tl.load(zp, mask=mask, other=0.0).to(ACC)
        drive = (xt + vl) - v_in
        u = v_in + a * drive
        if SURROGATE >= 0:
            sp = surrogate_grad(u - vth, SURROGATE, scale)
        else:
            sp = tl.zeros([BLOCK], dtype=ACC)
        Gv = tl.load(gvp, mask=mask, other=0.0).to(ACC) + lv
        gz = tl.load(gzp, mask=mask, other=0.0).to(ACC)
        if RESET == 0:
            Gz = gz + Gv * (vr - u)
            Gu = Gv * (1.0 - zt) + Gz * sp
        else:
            Gz = gz - Gv * vth
            Gu = Gv + Gz * sp
        lv = Gu * (1.0 - a)
        tl.store(gxp, (Gu * a).to(gx_ptr.dtype.element_ty), mask=mask)
        if PARAM_GRADS:
            da += Gu * drive
            dvl += Gu * a
            dvth -= Gz * sp
            if RESET == 0:
                dvr += Gv * zt
            else:
                dvth -= Gv * zt
        xp -= M
        zp -= M
        gzp -= M
        gvp -= M
        gxp -= M
        vpp -= M
    tl.store(gv0_ptr + offs, lv.to(gv0_ptr.dtype.element_ty), mask=mask)
    if PARAM_GRADS:
        tl.store(da_ptr + offs, da, mask=mask)
        tl.store(dvl_ptr + offs, dvl, mask=mask)
        tl.store(dvth_ptr + offs, dvth, mask=mask)
        tl.store(dvr_ptr + offs, dvr, mask=mask)


# ----------------------------------------------------------------------------------------------
# Launchers (x: [T, R, N]; states [R, N]; coefficient vectors [N] in the accumulator dtype)
# ----------------------------------------------------------------------------------------------


def _block(m: int) -> int:
    return max(16, min(_MAX_BLOCK, triton.next_power_of_2(max(m, 1))))


def _check_device(*tensors: torch.Tensor) -> None:
    dev = tensors[0].device
    for t in tensors:
        if t.device != dev:
            raise ValueError(f"all tensors must be on one device, got {t.device} and {dev}")
        if not t.is_contiguous():
            raise ValueError("the Triton launchers need contiguous tensors")


def _launch_shape(x: torch.Tensor) -> Tuple[int, int, int]:
    T = x.shape[0]
    M = x[0].numel()
    return T, M, x.shape[-1]


def _row_sums(partials: torch.Tensor, n: int, like: torch.Tensor) -> torch.Tensor:
    """Per-element partial sums ``[M]`` -> per-neuron gradients ``[N]`` in ``like``'s dtype."""
    return partials.view(-1, n).sum(0).to(like.dtype)


def lif_ff_forward(x, v0, i0, a, c, vl, vth, vr):
    """Spikes and states of every step: ``(z, v, i)``, each ``x.shape`` in ``x.dtype``."""
    _check_device(x, v0, i0, a, c, vl, vth, vr)
    T, M, N = _launch_shape(x)
    z, v, i = (torch.empty_like(x) for _ in range(3))
    if M:
        block = _block(M)
        _lif_ff_fwd_kernel[(triton.cdiv(M, block),)](x, v0, i0, a, c, vl, vth, vr, z, v, i, T, M, N,
                                                      ACC=_TL_ACC[acc_dtype(x.dtype)], BLOCK=block)
    return z, v, i


def lif_ff_backward(gz, gv, gi, x, v0, i0, z, v, i, a, c, vl, vth, vr, surrogate_id, scale, param_grads):
    """``(dx, dv0, di0, da, dc, dv_leak, dv_th, dv_reset)`` by one reverse-time pass."""
    _check_device(gz, gv, gi, x, v0, i0, z, v, i, a, c, vl, vth, vr)
    T, M, N = _launch_shape(x)
    acc = acc_dtype(x.dtype)
    gx = torch.empty_like(x)
    gv0, gi0 = torch.empty_like(v0), torch.empty_like(i0)
    parts = [torch.zeros(M if param_grads else 1, dtype=acc, device=x.device) for _ in range(5)]
    if M:
        block = _block(M)
        _lif_ff_bwd_kernel[(triton.cdiv(M, block),)](
            x, v0, i0, z, v, i, gz, gv, gi, a, c, vl, vth, vr, gx, gv0, gi0, *parts,
            T, M, N, (T - 1) * M, float(scale),
            SURROGATE=int(surrogate_id), PARAM_GRADS=bool(param_grads), ACC=_TL_ACC[acc], BLOCK=block)
    coefs = (a, c, vl, vth, vr)
    if param_grads:
        pg = [_row_sums(p, N, q) for p, q in zip(parts, coefs)]
    else:
        pg = [torch.zeros_like(q) for q in coefs]
    return (gx, gv0, gi0, *pg)


def lif_box_forward(x, v0, a, vl, vth, vr, reset):
    """Spikes and membrane voltages of every step: ``(z, v)``."""
    _check_device(x, v0, a, vl, vth, vr)
    T, M, N = _launch_shape(x)
    z, v = torch.empty_like(x), torch.empty_like(x)
    if M:
        block = _block(M)
        _lif_box_fwd_kernel[(triton.cdiv(M, block),)](x, v0, a, vl, vth, vr, z, v, T, M, N, RESET=int(reset),
                                                       ACC=_TL_ACC[acc_dtype(x.dtype)], BLOCK=block)
    return z, v


def lif_box_backward(gz, gv, x, v0, z, v, a, vl, vth, vr, reset, surrogate_id, scale, param_grads):
    """``(dx, dv0, da, dv_leak, dv_th, dv_reset)`` by one reverse-time pass."""
    _check_device(gz, gv, x, v0, z, v, a, vl, vth, vr)
    T, M, N = _launch_shape(x)
    acc = acc_dtype(x.dtype)
    gx = torch.empty_like(x)
    gv0 = torch.empty_like(v0)
    parts = [torch.zeros(M if param_grads else 1, dtype=acc, device=x.device) for _ in range(4)]
    if M:
        block = _block(M)
        _lif_box_bwd_kernel[(triton.cdiv(M, block),)](
            x, v0, z, v, gz, gv, a, vl, vth, vr, gx, gv0, *parts, T, M, N, (T - 1) * M, float(scale),
            RESET=int(reset), SURROGATE=int(surrogate_id), PARAM_GRADS=bool(param_grads), ACC=_TL_ACC[acc],
            BLOCK=block)
    coefs = (a, vl, vth, vr)
    if param_grads:
        pg = [_row_sums(p, N, q) for p, q in zip(parts, coefs)]
    else:
        pg = [torch.zeros_like(q) for q in coefs]
    return (gx, gv0, *pg)
