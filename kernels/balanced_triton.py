"""Triton kernels of the sparse balanced network (:mod:`surroflos.kernels.balanced`).

Connectivity: ``pre [N, K]`` (int32 presynaptic ids) with ``w [N, K]``; for the transposed products the
presynaptic-major copy ``post [N, D]`` (padding: the dummy id ``N``) with ``w_out [N, D]`` (zero padding).

- Sequence forward: one launch per time step, grid ``(N-blocks, B)``. A program gathers the previous
  membrane of the ``K`` presynaptic neurons of each of its neurons, loads only the weights of the synapses
  whose presynaptic neuron spiked (masked loads: silent synapses cost no weight traffic), sums them, and
  updates ``[I | V]`` in registers. Every neuron's next step needs all spikes of this one, so the time loop
  is the launch loop; the state is carried in an accumulator-dtype buffer between launches.
- Sequence backward: one launch per reverse step, grid ``(N-blocks, B)``: ``J^T g_r`` of the later step by
  a gather over ``post``, then the elementwise adjoint update (``d = sigma'(V - 1)``); the per-step
  ``g_r`` is kept, and one more kernel (grid over ``(N-blocks, K-blocks)``, looping over time and batch)
  sums ``g_w[i, k] = sum g_r[t, b, i] s[t-1, b, pre[i, k]]`` in registers.
- Tangent: grid ``(B, N-blocks, k-blocks)``; each program gathers the rows ``d[j] Q_V[j, :]`` of its
  neurons' presynaptic partners ``j`` (synapse by synapse, rows with ``w d = 0`` not loaded), reduces over
  the ``K`` synapses with the weights in registers and applies the ``a_s / a_m e / b`` epilogue. Its
  backward reuses the gather kernel over ``post`` for ``J^T`` and a weight-gradient kernel over
  ``(N-blocks, K-blocks)`` looping over batch and columns.

Coefficients are read from a small tensor in the accumulator dtype (float64 for float64 inputs, else
float32), so float64 runs keep them in double precision. Imported lazily by the dispatch functions.
"""

from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

from ._surrogate_triton import surrogate_grad
from .backend import acc_dtype

# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def _seq_fwd_step(prev_ptr, s_pb, acc_ptr, s_ab, st_ptr, s_sb, spk_ptr, s_kb, u_ptr, s_ub, s_un,
                  w_ptr, pre_ptr, c_ptr, N, K,
                  SEPARATE: tl.constexpr, ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < N
    a_m = tl.load(c_ptr + 0)
    a_s = tl.load(c_ptr + 1)
    cb = tl.load(c_ptr + 2)
    bc = tl.load(c_ptr + 3)
    ac = tl.load(c_ptr + 4)
    one_m = tl.load(c_ptr + 5)
    prev = prev_ptr + b * s_pb
    I = tl.load(prev + rn, mask=n_ok, other=0.0).to(ACC)
    V = tl.load(prev + N + rn, mask=n_ok, other=0.0).to(ACC)
    rows = rn.to(tl.int64) * K
    r = tl.zeros((BLOCK_N,), dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        m = n_ok[:, None] & (rk < K)[None, :]
        j = tl.load(pre_ptr + rows[:, None] + rk[None, :], mask=m, other=0)
        vj = tl.load(prev + N + j, mask=m, other=0.0)
        fire = m & (vj > 1.0)
        w = tl.load(w_ptr + rows[:, None] + rk[None, :], mask=fire, other=0.0).to(ACC)  # spiking synapses only
        r += tl.sum(w, axis=1)
    u = tl.load(u_ptr + b * s_ub + rn * s_un, mask=n_ok, other=0.0).to(ACC)
    v_r = tl.where(V > 1.0, tl.zeros_like(V), V)
    v_new = a_m * v_r + cb * I + bc * r + one_m * u
    i_new = a_s * I + ac * r
    out = st_ptr + b * s_sb
    tl.store(out + rn, i_new.to(st_ptr.dtype.element_ty), mask=n_ok)
    tl.store(out + N + rn, v_new.to(st_ptr.dtype.element_ty), mask=n_ok)
    spk = (v_new > 1.0).to(ACC)  # via the accumulator dtype: bool -> bfloat16 directly is not portable
    tl.store(spk_ptr + b * s_kb + rn, spk.to(spk_ptr.dtype.element_ty), mask=n_ok)
    if SEPARATE:  # low-precision outputs: carry the state in the accumulator dtype
        tl.store(acc_ptr + b * s_ab + rn, i_new, mask=n_ok)
        tl.store(acc_ptr + b * s_ab + N + rn, v_new, mask=n_ok)


@triton.jit
def _seq_bwd_step(gn_ptr, s_gnb, rn_ptr, s_rnb, gc_ptr, s_gcb, rc_ptr, s_rcb, gu_ptr, s_gub, v_ptr, s_vb,
                  gst_ptr, s_gsb, s_gsn, gsp_ptr, s_gpb, s_gpn, post_ptr, wout_ptr, c_ptr, N, D,
                  HAS_OUT: tl.constexpr, DETACH: tl.constexpr, SURROGATE: tl.constexpr, ACC: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Adjoint of the state ``V_ptr`` from the adjoint ``gn`` of the next state and the next step's ``g_r``."""
    b = tl.program_id(1).to(tl.int64)
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < N
    a_m = tl.load(c_ptr + 0)
    a_s = tl.load(c_ptr + 1)
    cb = tl.load(c_ptr + 2)
    bc = tl.load(c_ptr + 3)
    ac = tl.load(c_ptr + 4)
    one_m = tl.load(c_ptr + 5)
    scale = tl.load(c_ptr + 6)
    gI1 = tl.load(gn_ptr + b * s_gnb + rn, mask=n_ok, other=0.0)
    gV1 = tl.load(gn_ptr + b * s_gnb + N + rn, mask=n_ok, other=0.0)
    # J^T g_r: gather the later step's g_r over each neuron's out-going synapses
    rows = rn.to(tl.int64) * D
    g_s = tl.zeros((BLOCK_N,), dtype=ACC)
    for d0 in range(0, D, BLOCK_D):
        rd = d0 + tl.arange(0, BLOCK_D)
        m = n_ok[:, None] & (rd < D)[None, :]
        j = tl.load(post_ptr + rows[:, None] + rd[None, :], mask=m, other=N)
        valid = m & (j < N)
        w = tl.load(wout_ptr + rows[:, None] + rd[None, :], mask=valid, other=0.0).to(ACC)
        g = tl.load(rn_ptr + b * s_rnb + j, mask=valid, other=0.0)
        g_s += tl.sum(w * g, axis=1)
    V = tl.load(v_ptr + b * s_vb + N + rn, mask=n_ok, other=0.0).to(ACC)
    d = surrogate_grad(V - 1.0, SURROGATE, scale)
    g_i = a_s * gI1 + cb * gV1
    g_v = tl.where(V > 1.0, tl.zeros_like(gV1), a_m * gV1)
    if not DETACH:
        g_v = g_v - a_m * V * d * gV1
    g_v = g_v + d * g_s
    if HAS_OUT:  # the state is an output: add its own gradient and that of its spikes
        g_i += tl.load(gst_ptr + b * s_gsb + rn * s_gsn, mask=n_ok, other=0.0).to(ACC)
        g_v += tl.load(gst_ptr + b * s_gsb + (N + rn) * s_gsn, mask=n_ok, other=0.0).to(ACC)
        g_v += tl.load(gsp_ptr + b * s_gpb + rn * s_gpn, mask=n_ok, other=0.0).to(ACC) * d
        tl.store(rc_ptr + b * s_rcb + rn, ac * g_i + bc * g_v, mask=n_ok)
        tl.store(gu_ptr + b * s_gub + rn, (one_m * g_v).to(gu_ptr.dtype.element_ty), mask=n_ok)
    tl.store(gc_ptr + b * s_gcb + rn, g_i.to(gc_ptr.dtype.element_ty), mask=n_ok)
    tl.store(gc_ptr + b * s_gcb + N + rn, g_v.to(gc_ptr.dtype.element_ty), mask=n_ok)


@triton.jit
def _seq_wgrad(gw_ptr, gr_ptr, s_grt, s_grb, v0_ptr, s_v0b, st_ptr, s_stt, s_stb, pre_ptr, N, K, T, B,
               ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """``g_w[i, k] = sum_{t, b} g_r[t, b, i] s_in[t, b, pre[i, k]]`` (``s_in``: spikes entering step t)."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    n_ok = rn < N
    m = n_ok[:, None] & (rk < K)[None, :]
    rows = rn.to(tl.int64) * K
    j = tl.load(pre_ptr + rows[:, None] + rk[None, :], mask=m, other=0)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=ACC)
    for bb in range(B):  # step 0: the spikes of state0
        v = tl.load(v0_ptr + bb * s_v0b + N + j, mask=m, other=0.0).to(ACC)
        g = tl.load(gr_ptr + bb * s_grb + rn, mask=n_ok, other=0.0)
        acc += g[:, None] * (v > 1.0).to(ACC)
    vp = st_ptr  # states[t - 1]
    gp = gr_ptr + s_grt  # g_r[t]
    for t in range(1, T):
        for bb in range(B):
            v = tl.load(vp + bb * s_stb + N + j, mask=m, other=0.0).to(ACC)
            g = tl.load(gp + bb * s_grb + rn, mask=n_ok, other=0.0)
            acc += g[:, None] * (v > 1.0).to(ACC)
        vp += s_stt
        gp += s_grt
    tl.store(gw_ptr + rows[:, None] + rk[None, :], acc.to(gw_ptr.dtype.element_ty), mask=m)


@triton.jit
def _gather_rows(out_ptr, s_ob, s_on, s_oq, x_ptr, s_xb, s_xn, s_xq, d_ptr, s_db, s_dn,
                 q_ptr, s_qb, s_qn, s_qq, e_ptr, s_eb, s_en, idx_ptr, w_ptr, c_ptr, N, S, KQ,
                 HAS_SCALE: tl.constexpr, EPILOGUE: tl.constexpr, ACC: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_Q: tl.constexpr):
    """``out[b, n, :] = sum_s w[n, s] (d[b, j] x[b, j, :])`` with ``j = idx[n, s]`` (ids ``>= N`` are padding),
    then (``EPILOGUE``) the tangent map ``[a_s Q_I + ac acc; a_m e Q_V + b Q_I + bc acc]``."""
    b = tl.program_id(0).to(tl.int64)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rq = tl.program_id(2) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    n_ok = rn < N
    q_ok = rq < KQ
    rows = rn.to(tl.int64) * S
    acc = tl.zeros((BLOCK_N, BLOCK_Q), dtype=ACC)
    for s in range(S):
        j = tl.load(idx_ptr + rows + s, mask=n_ok, other=N)
        valid = n_ok & (j < N)
        w = tl.load(w_ptr + rows + s, mask=valid, other=0.0).to(ACC)
        if HAS_SCALE:
            w = w * tl.load(d_ptr + b * s_db + j * s_dn, mask=valid, other=0.0).to(ACC)
        need = valid & (w != 0.0)  # rows with a zero coefficient (silent surrogate, padding) are not loaded
        x = tl.load(x_ptr + b * s_xb + j[:, None] * s_xn + rq[None, :] * s_xq, mask=need[:, None] & q_ok[None, :],
                    other=0.0).to(ACC)
        acc += w[:, None] * x
    mask = n_ok[:, None] & q_ok[None, :]
    o = out_ptr + b * s_ob + rn[:, None] * s_on + rq[None, :] * s_oq
    if EPILOGUE:
        a_m = tl.load(c_ptr + 0)
        a_s = tl.load(c_ptr + 1)
        cb = tl.load(c_ptr + 2)
        bc = tl.load(c_ptr + 3)
        ac = tl.load(c_ptr + 4)
        qp = q_ptr + b * s_qb + rn[:, None] * s_qn + rq[None, :] * s_qq
        qi = tl.load(qp, mask=mask, other=0.0).to(ACC)
        qv = tl.load(qp + N * s_qn, mask=mask, other=0.0).to(ACC)
        e = tl.load(e_ptr + b * s_eb + rn * s_en, mask=n_ok, other=0.0).to(ACC)
        d_i = a_s * qi + ac * acc
        d_v = (a_m * e)[:, None] * qv + cb * qi + bc * acc
        tl.store(o, d_i.to(out_ptr.dtype.element_ty), mask=mask)
        tl.store(o + N * s_on, d_v.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(o, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _tangent_wgrad(gw_ptr, g_ptr, s_gb, s_gn, s_gq, x_ptr, s_xb, s_xn, s_xq, d_ptr, s_db, s_dn, pre_ptr,
                   N, K, B, KQ, ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """``g_w[i, k] = sum_{b, q} g[b, i, q] d[b, j] x[b, j, q]`` with ``j = pre[i, k]``."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    n_ok = rn < N
    m = n_ok[:, None] & (rk < K)[None, :]
    rows = rn.to(tl.int64) * K
    j = tl.load(pre_ptr + rows[:, None] + rk[None, :], mask=m, other=0)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=ACC)
    gb = g_ptr
    xb = x_ptr
    db = d_ptr
    for bb in range(B):
        dj = tl.load(db + j * s_dn, mask=m, other=0.0).to(ACC)
        need = m & (dj != 0.0)
        part = tl.zeros((BLOCK_N, BLOCK_K), dtype=ACC)
        for q in range(KQ):
            g = tl.load(gb + rn * s_gn + q * s_gq, mask=n_ok, other=0.0).to(ACC)
            x = tl.load(xb + j * s_xn + q * s_xq, mask=need, other=0.0).to(ACC)
            part += g[:, None] * x
        acc += part * dj
        gb += s_gb
        xb += s_xb
        db += s_db
    tl.store(gw_ptr + rows[:, None] + rk[None, :], acc.to(gw_ptr.dtype.element_ty), mask=m)


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------

_TL = {torch.float32: tl.float32, torch.float64: tl.float64}
_CONSTS: dict = {}


def _consts(values: Tuple[float, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The coefficients as a small tensor in the accumulator dtype (cached: one host-to-device copy)."""
    key = (values, dtype, str(device))
    c = _CONSTS.get(key)
    if c is None:
        if len(_CONSTS) > 64:
            _CONSTS.clear()
        c = _CONSTS[key] = torch.tensor(values, dtype=dtype, device=device)
    return c


def _block(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(n, 1))))


def sequence_forward(x_drive: torch.Tensor, state0: torch.Tensor, w: torch.Tensor, pre32: torch.Tensor,
                     a_m: float, a_s: float, b: float, bc: float, ac: float) -> Tuple[torch.Tensor, torch.Tensor]:
    T, B, N = x_drive.shape
    K = pre32.shape[1]
    dtype, dev = state0.dtype, state0.device
    acc = acc_dtype(dtype)
    c = _consts((a_m, a_s, b, bc, ac, 1.0 - a_m), acc, dev)
    spikes = torch.empty(T, B, N, dtype=dtype, device=dev)
    states = torch.empty(T, B, 2 * N, dtype=dtype, device=dev)
    w = w.contiguous()
    separate = acc != dtype
    prev = state0.to(acc).contiguous()
    bufs = [torch.empty(B, 2 * N, dtype=acc, device=dev) for _ in range(2)] if separate else None
    BLOCK_N, BLOCK_K = _block(N, 16, 128), _block(K, 16, 32)
    grid = (triton.cdiv(N, BLOCK_N), B)
    for t in range(T):
        cur = bufs[t % 2] if separate else states[t]
        u = x_drive[t]
        _seq_fwd_step[grid](prev, prev.stride(0), cur, cur.stride(0), states[t], states.stride(1), spikes[t],
                            spikes.stride(1), u, u.stride(0), u.stride(1), w, pre32, c, N, K,
                            SEPARATE=separate, ACC=_TL[acc], BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K)
        prev = cur
    return spikes, states


def sequence_backward(g_spk: torch.Tensor, g_st: torch.Tensor, state0: torch.Tensor, states: torch.Tensor,
                      w: torch.Tensor, pre32: torch.Tensor, post32: torch.Tensor, w_out: torch.Tensor,
                      a_m: float, a_s: float, b: float, bc: float, ac: float, surrogate_id: int, scale: float,
                      detach_reset: bool, need_w: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    T, B, N2 = states.shape
    N, K = pre32.shape
    D = post32.shape[1]
    dtype, dev = states.dtype, states.device
    acc = acc_dtype(dtype)
    c = _consts((a_m, a_s, b, bc, ac, 1.0 - a_m, float(scale)), acc, dev)
    w_out = w_out.contiguous()
    g_r = torch.empty(T, B, N, dtype=acc, device=dev)
    g_u = torch.empty(T, B, N, dtype=dtype, device=dev)
    g_state0 = torch.empty(B, N2, dtype=state0.dtype, device=dev)
    adj = [torch.zeros(B, N2, dtype=acc, device=dev) for _ in range(2)]
    zero_r = torch.zeros(B, N, dtype=acc, device=dev)
    BLOCK_N, BLOCK_D = _block(N, 16, 128), _block(D, 16, 32)
    grid = (triton.cdiv(N, BLOCK_N), B)
    meta = dict(DETACH=bool(detach_reset), SURROGATE=int(surrogate_id), ACC=_TL[acc], BLOCK_N=BLOCK_N,
                BLOCK_D=BLOCK_D)
    for t in range(T - 1, -1, -1):
        nxt = adj[(t + 1) % 2]  # zeros for the last step (both buffers start at zero)
        r_next = g_r[t + 1] if t + 1 < T else zero_r
        cur = adj[t % 2]
        gs, gp = g_st[t], g_spk[t]
        _seq_bwd_step[grid](nxt, nxt.stride(0), r_next, r_next.stride(0), cur, cur.stride(0), g_r[t],
                            g_r.stride(1), g_u[t], g_u.stride(1), states[t], states.stride(1),
                            gs, gs.stride(0), gs.stride(1), gp, gp.stride(0), gp.stride(1), post32, w_out, c, N, D,
                            HAS_OUT=True, **meta)
    s0 = state0.contiguous()
    last = adj[0]
    _seq_bwd_step[grid](last, last.stride(0), g_r[0], g_r.stride(1), g_state0, g_state0.stride(0), zero_r, 0,
                        zero_r, 0, s0, s0.stride(0), zero_r, 0, 0, zero_r, 0, 0, post32, w_out, c, N, D,
                        HAS_OUT=False, **meta)
    if need_w:
        g_w = torch.empty(N, K, dtype=w.dtype, device=dev)
        BN, BK = _block(N, 16, 64), _block(K, 16, 32)
        _seq_wgrad[(triton.cdiv(N, BN), triton.cdiv(K, BK))](
            g_w, g_r, g_r.stride(0), g_r.stride(1), s0, s0.stride(0), states, states.stride(0), states.stride(1),
            pre32, N, K, T, B, ACC=_TL[acc], BLOCK_N=BN, BLOCK_K=BK)
    else:
        g_w = w.new_empty(0)
    return g_u, g_state0, g_w


def _gather(out: torch.Tensor, x: torch.Tensor, d, q, e, idx: torch.Tensor, w: torch.Tensor, c: torch.Tensor,
            N: int, epilogue: bool, acc: torch.dtype) -> None:
    B, _, KQ = x.shape
    S = idx.shape[1]
    BLOCK_N, BLOCK_Q = _block(N, 16, 64), _block(KQ, 16, 32)
    grid = (B, triton.cdiv(N, BLOCK_N), triton.cdiv(KQ, BLOCK_Q))
    dd = d if d is not None else x  # unused pointers when the flags are off
    qq = q if q is not None else x
    ee = e if e is not None else x
    _gather_rows[grid](out, out.stride(0), out.stride(1), out.stride(2), x, x.stride(0), x.stride(1), x.stride(2),
                       dd, dd.stride(0), dd.stride(1), qq, qq.stride(0), qq.stride(1), qq.stride(2),
                       ee, ee.stride(0), ee.stride(1), idx, w, c, N, S, KQ,
                       HAS_SCALE=d is not None, EPILOGUE=epilogue, ACC=_TL[acc], BLOCK_N=BLOCK_N, BLOCK_Q=BLOCK_Q)


def tangent_forward(d: torch.Tensor, e: torch.Tensor, Q: torch.Tensor, w: torch.Tensor, pre32: torch.Tensor,
                    a_m: float, a_s: float, b: float, bc: float, ac: float) -> torch.Tensor:
    N = pre32.shape[0]
    acc = acc_dtype(Q.dtype)
    c = _consts((a_m, a_s, b, bc, ac), acc, Q.device)
    out = torch.empty(Q.shape, dtype=Q.dtype, device=Q.device)
    _gather(out, Q[:, N:], d, Q, e, pre32, w.contiguous(), c, N, True, acc)
    return out


def tangent_backward(grad: torch.Tensor, d: torch.Tensor, e: torch.Tensor, Q: torch.Tensor, w: torch.Tensor,
                     pre32: torch.Tensor, post32: torch.Tensor, w_out: torch.Tensor, a_m: float, a_s: float,
                     b: float, bc: float, ac: float,
                     need_w: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    N, K = pre32.shape
    B, _, KQ = Q.shape
    acc = acc_dtype(Q.dtype)
    g = grad.to(acc)
    gI, gV = g[:, :N], g[:, N:]
    Qa = Q.to(acc)
    QV = Qa[:, N:]
    da, ea = d.to(acc), e.to(acc)
    g_dr = (ac * gI).add_(bc * gV).contiguous()  # [B, N, k]
    JTg = torch.empty(B, N, KQ, dtype=acc, device=Q.device)
    _gather(JTg, g_dr, None, None, None, post32, w_out.to(acc).contiguous(), g_dr, N, False, acc)
    gQ = torch.cat([a_s * gI + b * gV, a_m * ea.unsqueeze(-1) * gV + da.unsqueeze(-1) * JTg], dim=1)
    gd = (QV * JTg).sum(-1)
    ge = a_m * (gV * QV).sum(-1)
    if need_w:
        g_w = torch.empty(N, K, dtype=w.dtype, device=Q.device)
        BN, BK = _block(N, 16, 64), _block(K, 16, 32)
        _tangent_wgrad[(triton.cdiv(N, BN), triton.cdiv(K, BK))](
            g_w, g_dr, g_dr.stride(0), g_dr.stride(1), g_dr.stride(2), QV, QV.stride(0), QV.stride(1), QV.stride(2),
            da, da.stride(0), da.stride(1), pre32, N, K, B, KQ, ACC=_TL[acc], BLOCK_N=BN, BLOCK_K=BK)
    else:
        g_w = w.new_empty(0)
    return gd.to(d.dtype), ge.to(e.dtype), gQ.to(Q.dtype), g_w
