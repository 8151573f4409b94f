"""Triton kernels of the fused tangent maps of :mod:`surroflos.kernels.tangent`.

Shapes: ``W [N, N]``, frames ``[B, N, k]``, coefficients ``[B, N]`` (any strides, stride 0 for
broadcast scalars / per-neuron vectors: nothing is materialised); for an ensemble of ``E`` members
(:mod:`surroflos.ensemble`) ``W [E, N, N]``, frames ``[E, B, N, k]``, coefficients ``[E, B, N]``, each member
its own weights (a solo call is ``E = 1`` with member strides 0). One program computes a
``[BLOCK_N, BLOCK_K]`` tile of one (member, batch element)'s output (grid ``(E B, N-blocks, k-blocks)``;
program ``e B + b``: one launch for all members):

- forward: ``acc = W[rows, :] @ (d * Qw)`` with the row scaling by ``d`` in the prologue of each
  ``tl.dot``, then the ``a * Q`` (and block) terms in the epilogue;
- backward: ``P = W^T H`` (``H`` = the output gradient folded through ``c``/the block, built in the
  prologue), the epilogue writes ``dQ`` and per-k-block partial sums of the coefficient gradients
  (summed over the k-blocks by the caller);
- ``dW = sum_b H_b (d_b * Qw_b)^T``: grid over ``(N-blocks, N-blocks, E)``, looping over batch and k.

State is accumulated in ``ACC`` (float64 for float64 inputs, else float32), ``tl.dot`` in IEEE
precision (no TF32), results stored in the output's dtype. Imported lazily by the dispatch functions.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .backend import acc_dtype


@triton.jit
def _fwd_kernel(W_ptr, s_we, s_wn, s_wm,
                Qw_ptr, s_we2, s_wb2, s_wn2, s_wk2,
                d_ptr, s_de, s_db, s_dn,
                a1_ptr, s_a1e, s_a1b, s_a1n,
                Q1_ptr, s_q1e, s_q1b, s_q1n, s_q1k,
                c_ptr, s_ce, s_cb, s_cn,
                a2_ptr, s_a2e, s_a2b, s_a2n,
                Q2_ptr, s_q2e, s_q2b, s_q2n, s_q2k,
                O1_ptr, O2_ptr, s_oe, s_ob, s_on, s_ok,
                B, N, K,
                BLOCK_FORM: tl.constexpr, HAS_C: tl.constexpr, ACC: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)  # e * B + b
    e = pid // B
    b = pid - e * B
    W_ptr += e * s_we  # every tensor at this member's slab (solo: member strides 0)
    Qw_ptr += e * s_we2
    d_ptr += e * s_de
    a1_ptr += e * s_a1e
    Q1_ptr += e * s_q1e
    c_ptr += e * s_ce
    a2_ptr += e * s_a2e
    Q2_ptr += e * s_q2e
    O1_ptr += e * s_oe
    O2_ptr += e * s_oe
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.program_id(2) * BLOCK_K + tl.arange(0, BLOCK_K)
    n_ok = rn < N
    k_ok = rk < K
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=ACC)
    for m0 in range(0, N, BLOCK_M):
        rm = m0 + tl.arange(0, BLOCK_M)
        m_ok = rm < N
        w = tl.load(W_ptr + rn[:, None] * s_wn + rm[None, :] * s_wm, mask=n_ok[:, None] & m_ok[None, :],
                    other=0.0).to(ACC)
        q = tl.load(Qw_ptr + b * s_wb2 + rm[:, None] * s_wn2 + rk[None, :] * s_wk2,
                    mask=m_ok[:, None] & k_ok[None, :], other=0.0).to(ACC)
        dv = tl.load(d_ptr + b * s_db + rm * s_dn, mask=m_ok, other=0.0).to(ACC)
        acc += tl.dot(w, q * dv[:, None], input_precision="ieee", out_dtype=ACC)
    mask = n_ok[:, None] & k_ok[None, :]
    a1 = tl.load(a1_ptr + b * s_a1b + rn * s_a1n, mask=n_ok, other=0.0).to(ACC)
    q1 = tl.load(Q1_ptr + b * s_q1b + rn[:, None] * s_q1n + rk[None, :] * s_q1k, mask=mask, other=0.0).to(ACC)
    s = acc + a1[:, None] * q1
    out_off = b * s_ob + rn[:, None] * s_on + rk[None, :] * s_ok
    if BLOCK_FORM:
        tl.store(O1_ptr + out_off, s.to(O1_ptr.dtype.element_ty), mask=mask)
        a2 = tl.load(a2_ptr + b * s_a2b + rn * s_a2n, mask=n_ok, other=0.0).to(ACC)
        cv = tl.load(c_ptr + b * s_cb + rn * s_cn, mask=n_ok, other=0.0).to(ACC)
        q2 = tl.load(Q2_ptr + b * s_q2b + rn[:, None] * s_q2n + rk[None, :] * s_q2k, mask=mask,
                     other=0.0).to(ACC)
        m = a2[:, None] * q2 + cv[:, None] * s
        tl.store(O2_ptr + out_off, m.to(O2_ptr.dtype.element_ty), mask=mask)
    else:
        if HAS_C:
            cv = tl.load(c_ptr + b * s_cb + rn * s_cn, mask=n_ok, other=0.0).to(ACC)
            s = s * cv[:, None]
        tl.store(O1_ptr + out_off, s.to(O1_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _fold_grad(G1_ptr, s_g1b, s_g1n, s_g1k, G2_ptr, s_g2b, s_g2n, s_g2k, c_ptr, s_cb, s_cn,
               b, rows, rk, mask, row_ok,
               BLOCK_FORM: tl.constexpr, HAS_C: tl.constexpr, ACC: tl.constexpr):
    """``H`` at ``rows``: the gradient reaching the GEMM output (``c G``, ``G`` or ``G_s + c G_m``)."""
    h = tl.load(G1_ptr + b * s_g1b + rows[:, None] * s_g1n + rk[None, :] * s_g1k, mask=mask, other=0.0).to(ACC)
    if BLOCK_FORM:
        cv = tl.load(c_ptr + b * s_cb + rows * s_cn, mask=row_ok, other=0.0).to(ACC)
        g2 = tl.load(G2_ptr + b * s_g2b + rows[:, None] * s_g2n + rk[None, :] * s_g2k, mask=mask,
                     other=0.0).to(ACC)
        h = h + cv[:, None] * g2
    elif HAS_C:
        cv = tl.load(c_ptr + b * s_cb + rows * s_cn, mask=row_ok, other=0.0).to(ACC)
        h = h * cv[:, None]
    return h


@triton.jit
def _bwd_dq_kernel(W_ptr, s_we, s_wn, s_wm,
                   G1_ptr, s_g1e, s_g1b, s_g1n, s_g1k,
                   G2_ptr, s_g2e, s_g2b, s_g2n, s_g2k,
                   c_ptr, s_ce, s_cb, s_cn,
                   d_ptr, s_de, s_db, s_dn,
                   a1_ptr, s_a1e, s_a1b, s_a1n,
                   a2_ptr, s_a2e, s_a2b, s_a2n,
                   Qw_ptr, s_we2, s_wb2, s_wn2, s_wk2,
                   Q1_ptr, s_q1e, s_q1b, s_q1n, s_q1k,
                   Q2_ptr, s_q2e, s_q2b, s_q2n, s_q2k,
                   S_ptr, s_se, s_sb, s_sn, s_sk,
                   dQw_ptr, dQ1_ptr, dQ2_ptr, s_oe, s_ob, s_on, s_ok,
                   part_ptr, s_pi, s_pb, s_pn,
                   B, N, K,
                   BLOCK_FORM: tl.constexpr, HAS_C: tl.constexpr, ACC: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)  # e * B + b; also the row of the partial sums
    e = pid // B
    b = pid - e * B
    W_ptr += e * s_we
    G1_ptr += e * s_g1e
    G2_ptr += e * s_g2e
    c_ptr += e * s_ce
    d_ptr += e * s_de
    a1_ptr += e * s_a1e
    a2_ptr += e * s_a2e
    Qw_ptr += e * s_we2
    Q1_ptr += e * s_q1e
    Q2_ptr += e * s_q2e
    S_ptr += e * s_se
    dQw_ptr += e * s_oe
    dQ1_ptr += e * s_oe
    dQ2_ptr += e * s_oe
    pid_k = tl.program_id(2)
    rr = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # output rows = columns of W
    rk = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    r_ok = rr < N
    k_ok = rk < K
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=ACC)
    for n0 in range(0, N, BLOCK_M):
        rn = n0 + tl.arange(0, BLOCK_M)
        n_ok = rn < N
        wt = tl.load(W_ptr + rn[None, :] * s_wn + rr[:, None] * s_wm, mask=r_ok[:, None] & n_ok[None, :],
                     other=0.0).to(ACC)
        h = _fold_grad(G1_ptr, s_g1b, s_g1n, s_g1k, G2_ptr, s_g2b, s_g2n, s_g2k, c_ptr, s_cb, s_cn,
                       b, rn, rk, n_ok[:, None] & k_ok[None, :], n_ok, BLOCK_FORM, HAS_C, ACC)
        acc += tl.dot(wt, h, input_precision="ieee", out_dtype=ACC)
    mask = r_ok[:, None] & k_ok[None, :]
    hr = _fold_grad(G1_ptr, s_g1b, s_g1n, s_g1k, G2_ptr, s_g2b, s_g2n, s_g2k, c_ptr, s_cb, s_cn,
                    b, rr, rk, mask, r_ok, BLOCK_FORM, HAS_C, ACC)
    dv = tl.load(d_ptr + b * s_db + rr * s_dn, mask=r_ok, other=0.0).to(ACC)
    a1 = tl.load(a1_ptr + b * s_a1b + rr * s_a1n, mask=r_ok, other=0.0).to(ACC)
    qw = tl.load(Qw_ptr + b * s_wb2 + rr[:, None] * s_wn2 + rk[None, :] * s_wk2, mask=mask, other=0.0).to(ACC)
    out_off = b * s_ob + rr[:, None] * s_on + rk[None, :] * s_ok
    # partial sums over this k-block: [which, E B, N, k-block]
    p_off = pid * s_pb + rr * s_pn + pid_k
    tl.store(part_ptr + 0 * s_pi + p_off, tl.sum(acc * qw, axis=1), mask=r_ok)  # dd
    if BLOCK_FORM:
        q1 = tl.load(Q1_ptr + b * s_q1b + rr[:, None] * s_q1n + rk[None, :] * s_q1k, mask=mask, other=0.0).to(ACC)
        tl.store(dQw_ptr + out_off, (dv[:, None] * acc).to(dQw_ptr.dtype.element_ty), mask=mask)
        tl.store(dQ1_ptr + out_off, (a1[:, None] * hr).to(dQ1_ptr.dtype.element_ty), mask=mask)
        tl.store(part_ptr + 1 * s_pi + p_off, tl.sum(hr * q1, axis=1), mask=r_ok)  # da_s
        a2 = tl.load(a2_ptr + b * s_a2b + rr * s_a2n, mask=r_ok, other=0.0).to(ACC)
        g2 = tl.load(G2_ptr + b * s_g2b + rr[:, None] * s_g2n + rk[None, :] * s_g2k, mask=mask, other=0.0).to(ACC)
        q2 = tl.load(Q2_ptr + b * s_q2b + rr[:, None] * s_q2n + rk[None, :] * s_q2k, mask=mask, other=0.0).to(ACC)
        sv = tl.load(S_ptr + b * s_sb + rr[:, None] * s_sn + rk[None, :] * s_sk, mask=mask, other=0.0).to(ACC)
        tl.store(dQ2_ptr + out_off, (a2[:, None] * g2).to(dQ2_ptr.dtype.element_ty), mask=mask)
        tl.store(part_ptr + 2 * s_pi + p_off, tl.sum(g2 * q2, axis=1), mask=r_ok)  # da_m
        tl.store(part_ptr + 3 * s_pi + p_off, tl.sum(g2 * sv, axis=1), mask=r_ok)  # dc
    else:
        dq = dv[:, None] * acc + a1[:, None] * hr
        tl.store(dQw_ptr + out_off, dq.to(dQw_ptr.dtype.element_ty), mask=mask)
        tl.store(part_ptr + 1 * s_pi + p_off, tl.sum(hr * qw, axis=1), mask=r_ok)  # da


@triton.jit
def _bwd_dw_kernel(G1_ptr, s_g1e, s_g1b, s_g1n, s_g1k,
                   G2_ptr, s_g2e, s_g2b, s_g2n, s_g2k,
                   c_ptr, s_ce, s_cb, s_cn,
                   d_ptr, s_de, s_db, s_dn,
                   Qw_ptr, s_we2, s_wb2, s_wn2, s_wk2,
                   dW_ptr, s_dwe, s_dwn, s_dwm,
                   B, N, K,
                   BLOCK_FORM: tl.constexpr, HAS_C: tl.constexpr, ACC: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    e = tl.program_id(2).to(tl.int64)  # the member whose dW this program computes
    G1_ptr += e * s_g1e
    G2_ptr += e * s_g2e
    c_ptr += e * s_ce
    d_ptr += e * s_de
    Qw_ptr += e * s_we2
    dW_ptr += e * s_dwe
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    n_ok = rn < N
    m_ok = rm < N
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=ACC)
    for bi in range(0, B):
        b = tl.cast(bi, tl.int64)  # 64-bit offsets for large frames
        dv = tl.load(d_ptr + b * s_db + rm * s_dn, mask=m_ok, other=0.0).to(ACC)
        for k0 in range(0, K, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            k_ok = rk < K
            h = _fold_grad(G1_ptr, s_g1b, s_g1n, s_g1k, G2_ptr, s_g2b, s_g2n, s_g2k, c_ptr, s_cb, s_cn,
                           b, rn, rk, n_ok[:, None] & k_ok[None, :], n_ok, BLOCK_FORM, HAS_C, ACC)
            xt = tl.load(Qw_ptr + b * s_wb2 + rm[None, :] * s_wn2 + rk[:, None] * s_wk2,
                         mask=k_ok[:, None] & m_ok[None, :], other=0.0).to(ACC)
            acc += tl.dot(h, xt * dv[None, :], input_precision="ieee", out_dtype=ACC)
    tl.store(dW_ptr + rn[:, None] * s_dwn + rm[None, :] * s_dwm, acc.to(dW_ptr.dtype.element_ty),
             mask=n_ok[:, None] & m_ok[None, :])


# ------------------------------------------------------------------------------------------------
# Launchers
# ------------------------------------------------------------------------------------------------

_TL = {torch.float64: tl.float64, torch.float32: tl.float32}


def _blocks(N: int, K: int) -> tuple[int, int, int]:
    """Tile sizes: tl.dot needs every block dim >= 16; small k gets a 16-wide tile."""
    block_n = min(64, max(16, triton.next_power_of_2(N)))
    block_k = min(64, max(16, triton.next_power_of_2(K)))
    return block_n, 32, block_k


def _s3(t: torch.Tensor) -> tuple[int, ...]:
    """Strides of a frame ``[B, N, k]`` / ``[E, B, N, k]``, the member's first (0 for a solo frame)."""
    return tuple(t.stride()) if t.ndim == 4 else (0, *t.stride())


def _s2(t: torch.Tensor) -> tuple[int, ...]:
    """Strides of a coefficient ``[B, N]`` / ``[E, B, N]`` or of ``W`` ``[N, N]`` / ``[E, N, N]``, member's first."""
    return tuple(t.stride()) if t.ndim == 3 else (0, *t.stride())


def _members(Qw: torch.Tensor) -> tuple[int, int, int, int]:
    """``(E, B, N, k)`` of a frame (``E = 1`` for a solo frame ``[B, N, k]``)."""
    return (1, *Qw.shape) if Qw.ndim == 3 else tuple(Qw.shape)


def forward(W, d, a1, Q1, c, a2, Q2, Qw, block_form: bool) -> torch.Tensor:
    """Dense: ``c * (W (d Qw) + a1 Q1)`` ``[(E,) B, N, k]`` (``c`` may be None; ``Q1 = Qw``). Block:
    ``[S; a2 Q2 + c S]`` ``[(E,) B, 2N, k]`` with ``S = a1 Q1 + W (d Qw)``. With a member axis every tensor has
    it (``W [E, N, N]``, coefficients ``[E, B, N]``)."""
    E, B, N, K = _members(Qw)
    acc = _TL[acc_dtype(Qw.dtype)]
    out = torch.empty(*Qw.shape[:-2], 2 * N if block_form else N, K, dtype=Qw.dtype, device=Qw.device)
    o1, o2 = (out[..., :N, :], out[..., N:, :]) if block_form else (out, out)
    c_ = c if c is not None else d
    a2_ = a2 if a2 is not None else a1
    Q2_ = Q2 if Q2 is not None else Q1
    bn, bm, bk = _blocks(N, K)
    grid = (E * B, triton.cdiv(N, bn), triton.cdiv(K, bk))
    _fwd_kernel[grid](W, *_s2(W), Qw, *_s3(Qw), d, *_s2(d), a1, *_s2(a1), Q1, *_s3(Q1), c_, *_s2(c_),
                      a2_, *_s2(a2_), Q2_, *_s3(Q2_), o1, o2, *_s3(o1), B, N, K,
                      BLOCK_FORM=block_form, HAS_C=c is not None, ACC=acc,
                      BLOCK_N=bn, BLOCK_M=bm, BLOCK_K=bk)
    return out


def backward(G1, G2, W, d, a1, Q1, c, a2, Q2, Qw, S, block_form: bool, need_w: bool):
    """Gradients of :func:`forward`. ``G1`` is the gradient of the dense output / of ``S``, ``G2`` of
    the block's second half. Returns ``(dQw, dQ1, dQ2, dW, sums)`` with, for the
    dense form, ``dQw`` the whole ``dQ`` and ``dQ1 = dQ2 = None``; the sums are the four ``[(E,) B, N]``
    ``(dd, da1, da2, dc)`` (dense: ``(dd, da, -, -)``), ``dW`` (``[(E,) N, N]``) None unless ``need_w``."""
    E, B, N, K = _members(Qw)
    accd = acc_dtype(Qw.dtype)
    acc = _TL[accd]
    bn, bm, bk = _blocks(N, K)
    n_kb = triton.cdiv(K, bk)
    dev = Qw.device
    dQw = torch.empty(Qw.shape, dtype=Qw.dtype, device=dev)
    dQ1 = torch.empty_like(dQw) if block_form else dQw
    dQ2 = torch.empty_like(dQw) if block_form else dQw
    part = torch.zeros(4, E * B, N, n_kb, dtype=accd, device=dev)  # row e * B + b
    c_ = c if c is not None else d
    G2_ = G2 if G2 is not None else G1
    a2_ = a2 if a2 is not None else a1
    Q2_ = Q2 if Q2 is not None else Q1
    S_ = S if S is not None else Q1
    grid = (E * B, triton.cdiv(N, bn), n_kb)
    _bwd_dq_kernel[grid](W, *_s2(W), G1, *_s3(G1), G2_, *_s3(G2_), c_, *_s2(c_), d, *_s2(d), a1, *_s2(a1),
                         a2_, *_s2(a2_), Qw, *_s3(Qw), Q1, *_s3(Q1), Q2_, *_s3(Q2_), S_, *_s3(S_),
                         dQw, dQ1, dQ2, *_s3(dQw), part, part.stride(0), part.stride(1), part.stride(2),
                         B, N, K, BLOCK_FORM=block_form, HAS_C=c is not None, ACC=acc,
                         BLOCK_N=bn, BLOCK_M=bm, BLOCK_K=bk)
    dW = None
    if need_w:
        dW = torch.empty(W.shape, dtype=W.dtype, device=dev)
        bw = min(64, max(16, triton.next_power_of_2(N)))
        grid_w = (triton.cdiv(N, bw), triton.cdiv(N, bw), E)
        _bwd_dw_kernel[grid_w](G1, *_s3(G1), G2_, *_s3(G2_), c_, *_s2(c_), d, *_s2(d), Qw, *_s3(Qw),
                               dW, *_s2(dW), B, N, K, BLOCK_FORM=block_form, HAS_C=c is not None, ACC=acc,
                               BLOCK_N=bw, BLOCK_M=bw, BLOCK_K=bk)
    lead = tuple(Qw.shape[:-2])  # separate tensors: custom-op outputs may not alias
    sums = [part[i].sum(-1).reshape(*lead, N) for i in range(4)]
    return dQw, (dQ1 if block_form else None), (dQ2 if block_form else None), dW, sums
