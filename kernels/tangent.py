"""Fused tangent dynamics ``Q <- D[t] Q``: the two forms every surrogate Jacobian of surroflos takes.

Each model's one-step tangent map (SCIENCE.md section 2) is a dense recurrent matrix ``W [N, N]``
applied to a row-scaled frame plus diagonal terms, with per-(b, n) coefficient vectors that cheap
elementwise torch ops compute from the state (``d = sigma'(U - theta)``, ``a = beta``, ...):

- :func:`dense_tangent` (LIF, rate networks, snnTorch ``RLeaky``)::

      out = c * (W @ (d * Q) + a * Q)                 Q, out: [B, N, k];  c optional (1)

- :func:`block_tangent` (current-based neurons: ``cuba``, snnTorch ``RSynaptic``, Norse's recurrent
  LIF), on the blocks of a frame ``[B, 2N, k]`` (or ``[B, 3N, k]`` for Norse)::

      dsyn = a_s * Qs + W @ (d * Qw)                   Qw = Qm unless given
      dmem = a_m * Qm + c * dsyn                       returns [dsyn; dmem]: [B, 2N, k]

Coefficients may be Python numbers, 0-d tensors, per-neuron ``[N]`` or per-(b, n) ``[B, N]`` tensors
(broadcast, never copied). ``backend="torch"`` evaluates the formula with PyTorch (the reference);
``backend="triton"`` runs one batched GEMM kernel per call (:mod:`surroflos.kernels.tangent_triton`):
the ``d`` scaling in the prologue, the diagonal/block terms in the epilogue. Both are
``torch.library`` custom ops (``surroflos::dense_tangent``, ``surroflos::block_tangent``) with
explicit backward ops (``dQ = d * (W^T H) + a * H``, ``dW = sum_b H_b (d_b Q_b)^T``, coefficient
gradients as reductions over k), so they are differentiable (flossing runs on them; first-order
gradients only: the backward ops have no autograd of their own) and capturable by ``torch.compile``.

Ensembles (:mod:`surroflos.ensemble`): with ``W [E, N, N]`` and frames ``[E, B, N, k]`` member ``e``'s frames
are multiplied by its own ``W[e]``; coefficients then broadcast to ``[E, B, N]`` (numbers, ``[]``, ``[N]``,
``[B, N]`` are shared by the members; member views ``[E, 1, 1]`` / ``[E, 1, N]`` and ``[E, B, N]`` are per
member). The PyTorch path does one batched GEMM over the members (batch and k folded into its columns), the
Triton kernels one launch for all members; gradients come back per member (``dW [E, N, N]``).

:func:`fused_tangent_function` maps a known model to a tangent function with the model protocol
signature ``(x, state, params, Q) -> D Q`` built on these ops (see its docstring for the list).

:func:`lean_dense_tangent` / :func:`lean_tangent_function` are the step-loop form that
``lyapunov_spectrum(backend="torch")`` runs: the dense formula as plain autograd ops (no custom-op dispatch
per step), the product taken as ``(d Q)^T W^T`` on the column-major frames ``torch.linalg.qr`` returns (one
matrix product, no copies), and, on the CPU, only over the neurons with non-zero ``d`` where the
coefficient vanishes exactly (relu rate networks, the triangle surrogate).
"""

import sys
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor

from .backend import constant_result, resolve_backend

__all__ = ["dense_tangent", "block_tangent", "fused_tangent_function", "lean_dense_tangent", "lean_tangent_function",
           "TangentFn", "SPARSE_FRACTION"]

TangentFn = Callable[[Tensor, Tensor, Any, Tensor], Tensor]
Coef = Union[float, int, Tensor]

_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_EMPTY = (0,)


# ------------------------------------------------------------------------------------------------
# PyTorch path: the plain formulas (forward) and their explicit gradients (backward)
# ------------------------------------------------------------------------------------------------

def _col(t: Tensor) -> Tensor:
    return t.unsqueeze(-1)


def _wmm(W: Tensor, X: Tensor) -> Tensor:
    """``W @ X`` for a frame: ``W [N, N]`` against ``X [B, N, k]``, or an ensemble's ``W [E, N, N]`` against its
    frames ``[E, B, N, k]``, member by member, as ONE batched GEMM with the batch and k folded into the columns
    (``torch.matmul`` on ``[E, 1, N, N]`` would copy each member's W B times)."""
    if W.ndim == 2:
        return torch.matmul(W, X)
    E, B, N, k = X.shape
    Y = torch.bmm(W, X.transpose(1, 2).reshape(E, N, B * k))  # [E, N, B k]
    return Y.reshape(E, W.shape[1], B, k).transpose(1, 2).contiguous()


def _wgrad(H: Tensor, X: Tensor) -> Tensor:
    """``dW = sum_b H_b X_b^T`` (over the batch and k), per member for ensemble frames ``[E, B, N, k]``."""
    if H.ndim == 3:
        return torch.einsum("bnk,bmk->nm", H, X)
    return torch.einsum("ebnk,ebmk->enm", H, X)


def _dense_torch(W: Tensor, d: Tensor, a: Tensor, c: Optional[Tensor], Q: Tensor) -> Tensor:
    out = _wmm(W, _col(d) * Q) + _col(a) * Q
    return _col(c) * out if c is not None else out


def _block_torch(W, d, a_s, a_m, c, Qs, Qm, Qw) -> Tensor:
    dsyn = _col(a_s) * Qs + _wmm(W, _col(d) * Qw)
    dmem = _col(a_m) * Qm + _col(c) * dsyn
    return torch.cat([dsyn, dmem], dim=-2)


def _dense_bwd_torch(G, W, d, a, c, Q, need_w: bool, need_c: bool):
    H = _col(c) * G if c is not None else G
    P = _wmm(W.transpose(-1, -2), H)
    dQ = _col(d) * P + _col(a) * H
    dW = _wgrad(H, _col(d) * Q) if need_w else W.new_empty(_EMPTY)
    dd = (P * Q).sum(-1)
    da = (H * Q).sum(-1)
    dc = (G * _dense_torch(W, d, a, None, Q)).sum(-1) if need_c else Q.new_empty(_EMPTY)
    return dQ, dW, dd, da, dc


def _block_bwd_torch(G, W, d, a_s, a_m, c, Qs, Qm, Qw, S, need_w: bool):
    N = W.shape[-1]
    Gs, Gm = G[..., :N, :], G[..., N:, :]
    H = Gs + _col(c) * Gm
    P = _wmm(W.transpose(-1, -2), H)
    dQw = _col(d) * P
    dQs = _col(a_s) * H
    dQm = _col(a_m) * Gm
    dW = _wgrad(H, _col(d) * Qw) if need_w else W.new_empty(_EMPTY)
    return (dQs, dQm, dQw, dW, (P * Qw).sum(-1), (H * Qs).sum(-1), (Gm * Qm).sum(-1), (Gm * S).sum(-1))


def _triton():
    # Imported here, not at the top: Triton decides interpreter-vs-compiled when the kernels are decorated.
    from . import tangent_triton
    return tangent_triton


def _contig(t: Tensor) -> Tensor:
    # Coefficients are broadcast views (stride 0 is fine); frames only need a last-dim stride the kernel
    # can read, which any strided tensor has. Gradients may arrive with odd strides: normalise them.
    return t if t.is_contiguous() else t.contiguous()


# ------------------------------------------------------------------------------------------------
# Custom ops: dense form
# ------------------------------------------------------------------------------------------------

@torch.library.custom_op("surroflos::dense_tangent", mutates_args=())
def _dense_op(W: Tensor, d: Tensor, a: Tensor, c: Optional[Tensor], Q: Tensor, use_triton: bool) -> Tensor:
    if use_triton:
        return _triton().forward(W, d, a, Q, c, None, None, Q, block_form=False)
    return _dense_torch(W, d, a, c, Q)


@_dense_op.register_fake
def _(W, d, a, c, Q, use_triton):
    return Q.new_empty(Q.shape)


@torch.library.custom_op("surroflos::dense_tangent_backward", mutates_args=())
def _dense_bwd_op(G: Tensor, W: Tensor, d: Tensor, a: Tensor, c: Optional[Tensor], Q: Tensor, use_triton: bool,
                  need_w: bool, need_c: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    if not use_triton:
        return _dense_bwd_torch(G, W, d, a, c, Q, need_w, need_c)
    tt = _triton()
    dQ, _, _, dW, sums = tt.backward(_contig(G), None, W, d, a, Q, c, None, None, Q, None, False, need_w)
    dc = Q.new_empty(_EMPTY)
    if need_c:
        dc = (G * tt.forward(W, d, a, Q, None, None, None, Q, block_form=False)).sum(-1)
    dW = dW if dW is not None else W.new_empty(_EMPTY)
    return dQ, dW, sums[0].to(d.dtype), sums[1].to(a.dtype), dc


@_dense_bwd_op.register_fake
def _(G, W, d, a, c, Q, use_triton, need_w, need_c):
    BN = Q.shape[:-1]  # [B, N] ([E, B, N])
    return (Q.new_empty(Q.shape), W.new_empty(W.shape if need_w else _EMPTY), d.new_empty(BN),
            a.new_empty(BN), Q.new_empty(BN if need_c else _EMPTY))


def _dense_setup(ctx, inputs, output):
    W, d, a, c, Q, use_triton = inputs
    ctx.use_triton = use_triton
    ctx.has_c = c is not None
    ctx.save_for_backward(W, d, a, c, Q)


def _dense_backward(ctx, grad):
    W, d, a, c, Q = ctx.saved_tensors
    need = ctx.needs_input_grad
    need_c = ctx.has_c and bool(need[3])
    dQ, dW, dd, da, dc = _dense_bwd_op(grad, W, d, a, c, Q, ctx.use_triton, bool(need[0]), need_c)
    return (dW if need[0] else None, dd if need[1] else None, da if need[2] else None,
            dc if need_c else None, dQ if need[4] else None, None)


_dense_op.register_autograd(_dense_backward, setup_context=_dense_setup)


# ------------------------------------------------------------------------------------------------
# Custom ops: 2x2-block form
# ------------------------------------------------------------------------------------------------

@torch.library.custom_op("surroflos::block_tangent", mutates_args=())
def _block_op(W: Tensor, d: Tensor, a_s: Tensor, a_m: Tensor, c: Tensor, Qs: Tensor, Qm: Tensor, Qw: Tensor,
              use_triton: bool) -> Tensor:
    if use_triton:
        return _triton().forward(W, d, a_s, Qs, c, a_m, Qm, Qw, block_form=True)
    return _block_torch(W, d, a_s, a_m, c, Qs, Qm, Qw)


@_block_op.register_fake
def _(W, d, a_s, a_m, c, Qs, Qm, Qw, use_triton):
    *lead, N, k = Qm.shape
    return Qm.new_empty(*lead, 2 * N, k)


@torch.library.custom_op("surroflos::block_tangent_backward", mutates_args=())
def _block_bwd_op(G: Tensor, W: Tensor, d: Tensor, a_s: Tensor, a_m: Tensor, c: Tensor, Qs: Tensor, Qm: Tensor,
                  Qw: Tensor, out: Tensor, use_triton: bool, need_w: bool
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    N = W.shape[-1]
    S = out[..., :N, :]
    if not use_triton:
        return _block_bwd_torch(G, W, d, a_s, a_m, c, Qs, Qm, Qw, S, need_w)
    G = _contig(G)
    dQw, dQs, dQm, dW, sums = _triton().backward(G[..., :N, :], G[..., N:, :], W, d, a_s, Qs, c, a_m, Qm, Qw, S,
                                                 True, need_w)
    dW = dW if dW is not None else W.new_empty(_EMPTY)
    dt = Qm.dtype
    return dQs, dQm, dQw, dW, sums[0].to(dt), sums[1].to(dt), sums[2].to(dt), sums[3].to(dt)


@_block_bwd_op.register_fake
def _(G, W, d, a_s, a_m, c, Qs, Qm, Qw, out, use_triton, need_w):
    BN = Qm.shape[:-1]  # [B, N] ([E, B, N])
    e = Qm.new_empty
    return (e(Qm.shape), e(Qm.shape), e(Qm.shape), W.new_empty(W.shape if need_w else _EMPTY),
            e(BN), e(BN), e(BN), e(BN))


def _block_setup(ctx, inputs, output):
    W, d, a_s, a_m, c, Qs, Qm, Qw, use_triton = inputs
    ctx.use_triton = use_triton
    ctx.save_for_backward(W, d, a_s, a_m, c, Qs, Qm, Qw, output)


def _block_backward(ctx, grad):
    W, d, a_s, a_m, c, Qs, Qm, Qw, out = ctx.saved_tensors
    need = ctx.needs_input_grad
    dQs, dQm, dQw, dW, dd, da_s, da_m, dc = _block_bwd_op(grad, W, d, a_s, a_m, c, Qs, Qm, Qw, out,
                                                          ctx.use_triton, bool(need[0]))
    grads = (dW, dd, da_s, da_m, dc, dQs, dQm, dQw)
    return tuple(g if n else None for g, n in zip(grads, need[:8])) + (None,)


_block_op.register_autograd(_block_backward, setup_context=_block_setup)


# ------------------------------------------------------------------------------------------------
# Public dispatch
# ------------------------------------------------------------------------------------------------

def _check_frame(name: str, Q: Any, like: Optional[Tensor] = None) -> None:
    if not isinstance(Q, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [B, N, k], got {type(Q).__name__}")
    if Q.ndim not in (3, 4) or min(Q.shape) < 1:
        raise ValueError(f"{name} must have shape [B, N, k] (ensemble: [E, B, N, k]) with every size >= 1, "
                         f"got {tuple(Q.shape)}")
    if not Q.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {Q.dtype}")
    if like is not None:
        if Q.shape != like.shape:
            raise ValueError(f"{name} has shape {tuple(Q.shape)}, expected {tuple(like.shape)} like the other blocks")
        if Q.dtype != like.dtype or Q.device != like.device:
            raise ValueError(f"{name} is {Q.dtype} on {Q.device}, the other blocks are {like.dtype} on {like.device}")


def _check_weight(W: Any, Q: Tensor) -> None:
    if not isinstance(W, Tensor):
        raise TypeError(f"W must be a torch.Tensor [N, N], got {type(W).__name__}")
    N = Q.shape[-2]
    if Q.ndim == 4 and tuple(W.shape) != (Q.shape[0], N, N):
        raise ValueError(f"W must have shape [E, N, N] = [{Q.shape[0]}, {N}, {N}] for ensemble frames "
                         f"[E, B, N, k] = {tuple(Q.shape)}, got {tuple(W.shape)}")
    if Q.ndim == 3 and (W.ndim != 2 or W.shape[0] != N or W.shape[1] != N):
        raise ValueError(f"W must have shape [N, N] = [{N}, {N}] for frames [B, N, k] = {tuple(Q.shape)}, "
                         f"got {tuple(W.shape)}")
    if W.dtype != Q.dtype or W.device != Q.device:
        raise ValueError(f"W is {W.dtype} on {W.device} but the frame is {Q.dtype} on {Q.device}; convert one")


def _coef(name: str, value: Coef, Q: Tensor) -> Tensor:
    """A coefficient as a ``[B, N]`` (ensemble ``[E, B, N]``) view (scalars, ``[N]`` and member views broadcast
    with stride 0)."""
    shape = tuple(Q.shape[:-1])
    layout = "[B, N]" if Q.ndim == 3 else "[E, B, N]"
    if isinstance(value, bool) or not isinstance(value, (int, float, Tensor)):
        raise TypeError(f"{name} must be a number or a tensor (scalar, [N] or {layout}), got {type(value).__name__}")
    if not isinstance(value, Tensor):
        value = Q.new_full((), float(value))  # a fill on the device, not a host-to-device copy (no sync)
    elif value.dtype != Q.dtype or value.device != Q.device:
        raise ValueError(f"{name} is {value.dtype} on {value.device} but the frame is {Q.dtype} on {Q.device}")
    if value.ndim > len(shape):
        raise ValueError(f"{name} must be a scalar, [N] or {layout} = {list(shape)}, got shape {tuple(value.shape)}")
    try:
        return torch.broadcast_to(value, shape)
    except RuntimeError:
        raise ValueError(f"{name} of shape {tuple(value.shape)} does not broadcast to {layout} = "
                         f"{list(shape)}") from None


def _resolved_triton(backend: str, device: str) -> bool:
    return resolve_backend(backend, device) == "triton"


# torch.compile: resolve at trace time and treat the answer as a constant (it reads the environment and
# Triton's knobs, which Dynamo cannot trace).
_resolved_triton = constant_result(_resolved_triton)
_resolved_triton_const = _resolved_triton


def _use_triton(backend: str, Q: Tensor) -> bool:
    use = _resolved_triton_const(backend, str(Q.device))
    if use and Q.dtype not in _TRITON_DTYPES:
        if backend == "triton":
            raise ValueError(f"backend='triton' supports float16/bfloat16/float32/float64 frames, got {Q.dtype}")
        use = False
    return use


def dense_tangent(W: Tensor, d: Coef, a: Coef, Q: Tensor, c: Optional[Coef] = None, *,
                  backend: str = "auto") -> Tensor:
    """``c * (W @ (d * Q) + a * Q)`` for a frame ``Q: [B, N, k]``, differentiable in every tensor.

    Args:
        W: ``[N, N]`` recurrent matrix (shared by the batch); for an ensemble ``[E, N, N]`` (member e's
            frames use ``W[e]``).
        d: row scaling of ``Q`` before ``W``: number, ``[N]`` or ``[B, N]`` (ensemble: anything that
            broadcasts to ``[E, B, N]``, e.g. the member views ``[E, 1, 1]`` / ``[E, 1, N]``).
        a: diagonal term, same shapes.
        Q: the frame ``[B, N, k]`` (ensemble ``[E, B, N, k]``).
        c: optional outer row factor (``None`` = 1), same shapes.
        backend: ``"auto"`` (Triton for CUDA tensors), ``"torch"`` or ``"triton"``.

    Returns:
        ``[B, N, k]`` (``[E, B, N, k]``) in ``Q``'s dtype (Triton accumulates in float32, float64 for float64).
    """
    _check_frame("Q", Q)
    _check_weight(W, Q)
    d_, a_ = _coef("d", d, Q), _coef("a", a, Q)
    c_ = None if c is None else _coef("c", c, Q)
    return _dense_op(W, d_, a_, c_, Q, _use_triton(backend, Q))


def block_tangent(W: Tensor, d: Coef, a_s: Coef, a_m: Coef, c: Coef, Qs: Tensor, Qm: Tensor,
                  Qw: Optional[Tensor] = None, *, backend: str = "auto") -> Tensor:
    """The 2x2-block tangent map ``[dsyn; dmem]: [B, 2N, k]`` of a current-based network::

        dsyn = a_s * Qs + W @ (d * Qw)        (Qw = Qm when not given)
        dmem = a_m * Qm + c * dsyn

    ``Qs``, ``Qm``, ``Qw``: ``[B, N, k]`` blocks (views of one frame are fine); coefficients as in
    :func:`dense_tangent`. For an ensemble: ``W [E, N, N]``, blocks ``[E, B, N, k]``, result ``[E, B, 2N, k]``.
    With ``Qw = Qm`` this is the Jacobian of ``cuba``/``RSynaptic``
    (``a_s = alpha``, ``a_m = c beta`` or ``beta - theta d``, ...); Norse's recurrent LIF uses
    ``Qw = Qz`` and ``d = 1`` to get ``(dj, du)``.
    """
    _check_frame("Qm", Qm)
    _check_frame("Qs", Qs, Qm)
    Qw = Qm if Qw is None else Qw
    _check_frame("Qw", Qw, Qm)
    _check_weight(W, Qm)
    coefs = [_coef(n, v, Qm) for n, v in (("d", d), ("a_s", a_s), ("a_m", a_m), ("c", c))]
    return _block_op(W, *coefs, Qs, Qm, Qw, _use_triton(backend, Qm))


# ------------------------------------------------------------------------------------------------
# Lean PyTorch path for lyapunov_spectrum's step loop (plain autograd ops, no custom-op dispatch)
# ------------------------------------------------------------------------------------------------

#: :func:`lean_dense_tangent` with ``sparse=True`` multiplies only the columns of ``W`` of the neurons whose
#: ``d`` is non-zero in some trajectory of the batch, when they are at most this fraction of the neurons.
SPARSE_FRACTION = 0.5


def _row(t: Coef) -> Coef:
    """A per-neuron coefficient (``[N]`` or ``[B, N]``) laid along the last axis of a ``[B, k, N]`` frame."""
    return t.unsqueeze(-2) if isinstance(t, Tensor) and t.ndim else t


def _is_zero(t: Coef) -> bool:
    return not isinstance(t, Tensor) and t == 0


def lean_dense_tangent(W: Tensor, d: Coef, a: Coef, Q: Tensor, *, sparse: bool = False,
                       W_t: Optional[Tensor] = None) -> Tensor:
    """``W @ (d * Q) + a * Q`` (:func:`dense_tangent` with ``c = 1``) as plain PyTorch ops, for step loops.

    A frame ``Q: [B, N, k]`` is processed as its transpose ``Q^T: [B, k, N]``: ``(d Q)^T W^T`` is ONE matrix
    product ``[B k, N] @ [N, N]`` (no copy of ``W`` per trajectory, which ``torch.matmul(W, X)`` makes), and
    the result is returned as the transpose of a contiguous ``[B, k, N]`` tensor, the column-major layout
    ``torch.linalg.qr`` reads and writes, so a frame passed from QR to tangent map to QR is never copied.

    ``sparse=True`` (CPU, solo frames, ``d`` a ``[B, N]`` tensor): a neuron whose ``d`` is exactly zero
    contributes exactly nothing to ``W (d Q)``; when at most :data:`SPARSE_FRACTION` of the entries of ``d``
    are non-zero, only the columns of ``W`` and rows of ``Q`` of the non-zero ones enter the product (one
    product over the union of the trajectories' neurons when that is small enough, else one per
    trajectory): the same value up to summation order. Its gradient equals the dense one only where ``d``'s own derivative vanishes with
    ``d`` (a step function such as relu's ``h > 0``, the triangle surrogate's ``relu(1 - |x|)``): the caller
    asks for it only there. ``W_t``: ``W.mT.contiguous()`` if the caller keeps one (the sparse product then
    gathers contiguous rows of it instead of strided columns of ``W``). Ensemble frames ``[E, B, N, k]`` take
    the batched product of :func:`_wmm`.
    Coefficients: numbers, ``[]``, ``[N]`` or ``[B, N]`` (ensembles: anything broadcasting to ``[E, B, N]``).
    """
    if Q.ndim != 3:
        return _dense_torch(W, _coef("d", d, Q), _coef("a", a, Q), None, Q)
    Qt = Q.mT  # [B, k, N]
    Y = None
    if sparse and isinstance(d, Tensor) and d.ndim == 2 and Q.device.type == "cpu" \
            and not torch.compiler.is_compiling():
        Y = _sparse_product(W if W_t is None else W_t.mT, d, Qt, W_t)
    if Y is None:
        Y = torch.matmul(Qt * _row(d), W.mT)
    return (Y if _is_zero(a) else Y + _row(a) * Qt).mT


def _sparse_product(W: Tensor, d: Tensor, Qt: Tensor, W_t: Optional[Tensor]) -> Optional[Tensor]:
    """``(d Q)^T W^T`` over the neurons with non-zero ``d`` only, or None when too few of them are zero.

    One product over the union of the trajectories' active neurons when it is small enough, else one per
    trajectory over its own (``B`` products ``[k, m_b] @ [m_b, N]``)."""
    N = W.shape[-1]
    nz = d != 0
    union = nz.any(0)

    def rows_of_wt(idx: Tensor) -> Tensor:  # W[:, idx]^T: [m, N]
        return W.index_select(1, idx).mT if W_t is None else W_t.index_select(0, idx)

    if int(union.sum()) <= SPARSE_FRACTION * N:  # a host sync: cheap on the CPU
        idx = union.nonzero().squeeze(1)
        X = Qt.index_select(-1, idx) * d.index_select(-1, idx).unsqueeze(-2)  # [B, k, m]
        return torch.matmul(X, rows_of_wt(idx))  # [B k, m] @ [m, N]
    if int(nz.sum()) > SPARSE_FRACTION * N * d.shape[0]:
        return None
    out = []
    for b in range(d.shape[0]):
        idx = nz[b].nonzero().squeeze(1)
        X = Qt[b].index_select(-1, idx) * d[b].index_select(-1, idx)  # [k, m_b]
        out.append(torch.matmul(X, rows_of_wt(idx)))
    return torch.stack(out)


class _Transposed:
    """``W.mT.contiguous()`` computed once per weight tensor, version and grad mode (one estimate's cache)."""

    def __init__(self) -> None:
        self.key: Any = None
        self.value: Optional[Tensor] = None

    def __call__(self, W: Tensor) -> Tensor:
        key = (id(W), W._version, torch.is_grad_enabled())
        if key != self.key:
            self.key, self.value = key, W.mT.contiguous()
        return self.value  # type: ignore[return-value]


def _lean_lif() -> TangentFn:
    transposed = _Transposed()

    def lif_tangent_lean(x: Tensor, U: Tensor, p: Any, Q: Tensor) -> Tensor:
        d, a = _lif_diagonals(U, p)
        # triangle (id 3): d = scale relu(1 - |v|) is exactly zero off its support, and so is its derivative
        sparse = p.surrogate.id == 3 and Q.ndim == 3 and Q.device.type == "cpu"
        return lean_dense_tangent(p.weight_rec, d, a, Q, sparse=sparse,
                                  W_t=transposed(p.weight_rec) if sparse else None)
    return lif_tangent_lean


def _lean_rate(reference: TangentFn) -> TangentFn:
    transposed = _Transposed()

    def rate_tangent_lean(x: Tensor, h: Tensor, p: Any, Q: Tensor) -> Tensor:
        if p.nonlinearity == "tanh":
            dphi = 1.0 - torch.tanh(h) ** 2
        elif p.nonlinearity == "relu":
            dphi = (h > 0).to(h.dtype)  # a step: no gradient of its own
        else:
            return reference(x, h, p, Q)
        sparse = p.nonlinearity == "relu" and Q.ndim == 3 and Q.device.type == "cpu"
        W_t = transposed(p.weight_rec) if sparse else None
        if p.dt == 1.0:
            return lean_dense_tangent(p.weight_rec, dphi, 0.0, Q, sparse=sparse, W_t=W_t)
        return lean_dense_tangent(p.weight_rec, p.dt * dphi, 1.0 - p.dt, Q, sparse=sparse, W_t=W_t)
    return rate_tangent_lean


def lean_tangent_function(model: Any) -> Optional[TangentFn]:
    """The step-loop form of a known model's tangent map, or None (use the model's own).

    :class:`~surroflos.RateRNN` (``rate_tangent``) and the LIF :class:`~surroflos.SpikingRNN`
    (``lif_tangent``, every reset), recognised by their reference tangent function as in
    :func:`fused_tangent_function`: the same formula through :func:`lean_dense_tangent` (one matrix product
    per step without copies of ``W``; relu rate networks and the triangle surrogate skip the neurons whose
    coefficient is exactly zero). What ``lyapunov_spectrum(backend="torch")`` runs; a fresh function per
    call, as it keeps the transpose of the recurrent weights for the sparse product (recomputed when the
    weight tensor, its version or the grad mode changes).
    """
    try:
        reference = getattr(model, "tangent_function", None)
    except Exception:
        return None
    if reference is None:
        return None
    spiking = sys.modules.get(__package__.rsplit(".", 1)[0] + ".models.spiking")
    rate = sys.modules.get(__package__.rsplit(".", 1)[0] + ".models.rate")
    if spiking is not None and reference is spiking.lif_tangent:
        return _lean_lif()
    if rate is not None and reference is rate.rate_tangent:
        return _lean_rate(reference)
    return None


# ------------------------------------------------------------------------------------------------
# Registry: model -> fused tangent function
# ------------------------------------------------------------------------------------------------

def _spiking_fire(v: Tensor, p: Any) -> Tensor:
    # Same as surroflos.models.spiking's spike of the shifted membrane (smooth primitive or Heaviside).
    return p.surrogate.primitive(v) if p.smooth else p.surrogate(v)


def _lif_diagonals(U: Tensor, p: Any) -> tuple:
    """The LIF tangent map's diagonals ``(d, a)``: surrogate slope ``d`` at the membrane and leak factor ``a``
    (with the reset's contribution) of ``Q <- W (d Q) + a Q``; shared by the fused and the lean maps."""
    v = U - p.threshold
    d = p.surrogate.derivative(v)
    if p.reset == "subtract":
        a = p.beta if p.detach_reset else p.beta - p.threshold * d
    else:
        a = p.beta * (1.0 - _spiking_fire(v, p))
        if not p.detach_reset:
            a = a - p.beta * U * d
    return d, a


def _make_lif(backend: str) -> TangentFn:
    def lif_tangent_fused(x: Tensor, U: Tensor, p: Any, Q: Tensor) -> Tensor:
        d, a = _lif_diagonals(U, p)
        return dense_tangent(p.weight_rec, d, a, Q, backend=backend)
    return lif_tangent_fused


def _make_cuba(backend: str) -> TangentFn:
    def cuba_tangent_fused(x: Tensor, state: Tensor, p: Any, Q: Tensor) -> Tensor:
        syn, mem = state.chunk(2, dim=-1)
        Qs, Qm = Q.chunk(2, dim=-2)
        v = mem - p.threshold
        d = p.surrogate.derivative(v)
        if p.reset == "subtract":
            c: Any = 1.0
            a_m = p.beta if p.detach_reset else p.beta - p.threshold * d
        else:
            spk = _spiking_fire(v, p)
            c = 1.0 - spk
            a_m = c * p.beta
            if not p.detach_reset:
                pre = p.beta * mem + p.alpha * syn + x @ p.weight_in.mT + spk @ p.weight_rec.mT + p.bias
                a_m = a_m - pre * d
        return block_tangent(p.weight_rec, d, p.alpha, a_m, c, Qs, Qm, backend=backend)
    return cuba_tangent_fused


def _make_rate(backend: str, reference: TangentFn) -> TangentFn:
    def rate_tangent_fused(x: Tensor, h: Tensor, p: Any, Q: Tensor) -> Tensor:
        if p.nonlinearity == "tanh":
            dphi = 1.0 - torch.tanh(h) ** 2
        elif p.nonlinearity == "relu":
            dphi = (h > 0).to(h.dtype)
        else:  # a nonlinearity added later: the model's own map stays correct
            return reference(x, h, p, Q)
        if p.dt == 1.0:
            return dense_tangent(p.weight_rec, dphi, 0.0, Q, backend=backend)
        return dense_tangent(p.weight_rec, p.dt * dphi, 1.0 - p.dt, Q, backend=backend)
    return rate_tangent_fused


def _make_rleaky(backend: str, reference: TangentFn) -> TangentFn:
    def rleaky_tangent_fused(x: Tensor, state: Tensor, p: Any, Q: Tensor) -> Tensor:
        if p.recurrent_kind != "linear" or p.surrogate is None or not p.reset_delay:
            return reference(x, state, p, Q)  # one-to-one feedback is diagonal; errors come from the reference
        d = p.surrogate.derivative(state - p.threshold) * p.graded_spikes_factor
        c = None
        if p.reset == "zero":
            c = 1.0 - p.spike(state - p.threshold).detach()
        return dense_tangent(p.recurrent_weight, d, p.beta, Q, c, backend=backend)
    return rleaky_tangent_fused


def _make_rsynaptic(backend: str, reference: TangentFn) -> TangentFn:
    def rsynaptic_tangent_fused(x: Tensor, state: Tensor, p: Any, Q: Tensor) -> Tensor:
        if p.recurrent_kind != "linear" or p.surrogate is None:
            return reference(x, state, p, Q)
        syn, mem = state.chunk(2, dim=-1)
        Qs, Qm = Q.chunk(2, dim=-2)
        d = p.surrogate.derivative(mem - p.threshold) * p.graded_spikes_factor
        c: Any = 1.0
        if p.reset == "zero":
            c = 1.0 - p.spike(mem - p.threshold).detach()
        return block_tangent(p.recurrent_weight, d, p.alpha, c * p.beta, c, Qs, Qm, backend=backend)
    return rsynaptic_tangent_fused


def _make_norse(backend: str) -> TangentFn:
    from ..norse import norse_surrogate  # only reached when surroflos.norse is already imported

    def norse_lif_tangent_fused(x: Tensor, state: Tensor, params: Any, Q: Tensor) -> Tensor:
        W_in, W_rec, p, dt = params
        z, v, i = state.chunk(3, dim=-1)
        Qz, Qv, Qi = Q.chunk(3, dim=-2)
        j = i + torch.nn.functional.linear(x, W_in) + torch.nn.functional.linear(z, W_rec)
        a = dt * p.tau_mem_inv
        u = v + a * ((p.v_leak - v) + j)
        x_th = u - p.v_th
        s = norse_surrogate(p.method, p.alpha)
        # [dj; du] with dj = Qi + W_rec Qz, du = (1 - a) Qv + a dj: the block form with Qw = Qz, d = 1.
        a = _as_coef(a, Q)  # Norse keeps float32 parameters: promote before forming 1 - a
        ju = block_tangent(W_rec, 1.0, 1.0, 1.0 - a, a, Qi, Qv, Qz, backend=backend)
        N = v.shape[-1]
        dj, du = ju[..., :N, :], ju[..., N:, :]
        dz = du * s.derivative(x_th).unsqueeze(-1) if s is not None else torch.zeros_like(du)
        dv = du * (1 - (x_th > 0).to(u.dtype)).unsqueeze(-1)
        keep = 1.0 - _as_coef(dt * p.tau_syn_inv, Q)
        di = dj * (keep.unsqueeze(-1) if isinstance(keep, Tensor) and keep.ndim else keep)
        return torch.cat([dz, dv, di], dim=-2)
    return norse_lif_tangent_fused


def _as_coef(value: Any, like: Tensor) -> Coef:
    """Norse parameters may be floats or tensors; tensors must match the frame's dtype."""
    if isinstance(value, Tensor):
        return value.to(like.dtype)
    return float(value)


def _layer_fused(layer: Any, backend: str) -> Optional[TangentFn]:
    try:
        reference = getattr(layer, "tangent_function", None)
    except Exception:  # the layer's own property refuses (unsupported options): no analytic map to fuse
        return None
    return _by_reference(reference, backend)


def _by_reference(reference: Any, backend: str) -> Optional[TangentFn]:
    """The fused version of a known reference tangent function, else None."""
    if reference is None:
        return None
    spiking = sys.modules.get(__package__.rsplit(".", 1)[0] + ".models.spiking")
    rate = sys.modules.get(__package__.rsplit(".", 1)[0] + ".models.rate")
    snn = sys.modules.get(__package__.rsplit(".", 1)[0] + ".snntorch")
    norse = sys.modules.get(__package__.rsplit(".", 1)[0] + ".norse")
    if spiking is not None and reference is spiking.lif_tangent:
        return _make_lif(backend)
    if spiking is not None and reference is spiking.cuba_tangent:
        return _make_cuba(backend)
    if rate is not None and reference is rate.rate_tangent:
        return _make_rate(backend, reference)
    if snn is not None and reference is snn.rleaky_flat_tangent:
        return _make_rleaky(backend, reference)
    if snn is not None and reference is snn.rsynaptic_flat_tangent:
        return _make_rsynaptic(backend, reference)
    if norse is not None and reference is norse.lif_recurrent_flat_tangent:
        return _make_norse(backend)
    return None


def fused_tangent_function(model: Any, backend: str = "triton") -> Optional[TangentFn]:
    """A tangent function ``(x, state, params, Q) -> D Q`` for ``model`` built on the fused ops, or None.

    Known models (recognised by their reference tangent function, so a subclass that replaces it is
    left alone): :class:`~surroflos.SpikingRNN` (``lif`` and ``cuba``, every reset and
    ``detach_reset``), :class:`~surroflos.RateRNN` (``tanh``/``relu``), and a
    :class:`~surroflos.models.layered.LayeredNetwork` (what ``lyapunov_spectrum`` makes of an
    ``nn.Sequential``) around :class:`surroflos.snntorch.RLeaky` / ``RSynaptic`` (``nn.Linear``
    feedback; one-to-one feedback falls back to the layer's own map at call time) or
    :class:`surroflos.norse.LIFRecurrentCell`. A model with a ``backend_tangent_function(backend)``
    method (e.g. :class:`~surroflos.BalancedNetwork`) decides itself. Anything else gives ``None``:
    use the model's own ``tangent_function``.

    Ensembles (``RateRNN`` / ``SpikingRNN`` built with ``ensemble=E``, :mod:`surroflos.ensemble`) get the same
    fused functions: their parameters are ``[E, ...]`` (member views for beta, alpha, threshold and bias),
    states ``[E, B, D]`` and frames ``[E, B, D, k]``, and the ops take ``W [E, N, N]`` natively (one batched
    GEMM / one Triton launch for all members).

    The returned function reads the same ``params`` bundle as the model's own (``model.params()``)
    and runs the ops with ``backend`` (``"triton"`` by default; ``"torch"`` gives the same numbers
    through the PyTorch path).
    """
    own = getattr(model, "backend_tangent_function", None)
    if callable(own):
        return own(backend)
    layered = sys.modules.get(__package__.rsplit(".", 1)[0] + ".models.layered")
    if layered is not None and isinstance(model, layered.LayeredNetwork):
        inner = _layer_fused(model.layer, backend)
        if inner is None:
            return None

        def layered_tangent_fused(x: Tensor, state: Tensor, p: Any, Q: Tensor) -> Tensor:
            return inner(p.encoder(x), state, p.layer, Q)
        return layered_tangent_fused
    try:
        reference = getattr(model, "tangent_function", None)
    except Exception:
        return None
    return _by_reference(reference, backend)
