"""Batched re-orthonormalisation of tangent frames: Householder QR or CholeskyQR2.

:func:`orthonormalize` returns ``(Q, R)`` with ``X = Q R``, ``Q^T Q = I`` and ``R`` upper triangular
with a **positive diagonal** (the unique thin QR of a full-rank ``X``; ``torch.linalg.qr`` agrees up to
the signs of its columns/rows). All torch ops, so differentiable.

CholeskyQR2 (Fukaya, Nakatsukasa, Yanagisawa, Yamamoto 2014) replaces the sequential Householder
reflections by two rounds of ``G = X^T X``, ``R_1 = chol(G)^T``, ``X <- X R_1^{-1}`` (a triangular
solve), with ``R = R_2 R_1``: GEMMs and k x k factorisations, which batch well on GPUs. It is as
accurate as Householder (backward stable, orthogonal to working precision) while the condition
number ``kappa(X)`` stays well below ``u^{-1/2}`` (``u`` the unit roundoff); beyond that the first
Cholesky factor is inaccurate or fails. Hence, per batch element:

- the columns are first scaled to unit norm (free: ``R`` absorbs the scaling; it removes the part of
  the ill-conditioning that is mere column scale, typical of Lyapunov frames);
- ``kappa`` is estimated from the first Cholesky factor, ``max_i R_ii / min_i R_ii`` (a lower bound
  of ``kappa`` of the scaled columns, usually within a small factor);
- an element falls back to Householder (``torch.linalg.qr``) when its Cholesky fails, the estimate
  exceeds :data:`KAPPA_FACTOR` ``* u^{-1/2}`` (``u`` of the compute dtype: ~256 in float32, ~4.2e6 in
  float64), or the second round's factor is not close to the identity (diagonal outside
  ``[1/2, 2]``), or anything is non-finite.

The computation runs in float32 for float16/bfloat16/float32 inputs and float64 for float64 inputs;
results are returned in the input dtype.
"""

from typing import Optional

import torch
from torch import Tensor

__all__ = ["orthonormalize", "householder_qr", "cholesky_qr2", "METHODS", "KAPPA_FACTOR"]

METHODS = ("auto", "householder", "cholesky_qr2")

#: CholeskyQR2 is used while the estimated condition number of the scaled columns is at most
#: ``KAPPA_FACTOR * u**-0.5`` of the compute dtype (float32: 256, float64: ~4.2e6).
KAPPA_FACTOR = 1.0 / 16.0


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _kappa_limit(dtype: torch.dtype) -> float:
    return KAPPA_FACTOR * float(torch.finfo(dtype).eps / 2) ** -0.5


def _positive_diagonal(Q: Tensor, R: Tensor) -> tuple[Tensor, Tensor]:
    """Flip column/row signs so that ``diag(R) >= 0`` (zero diagonals keep their sign +1)."""
    s = torch.where(R.diagonal(dim1=-2, dim2=-1) < 0, -1.0, 1.0).to(R.dtype)
    return Q * s.unsqueeze(-2), R * s.unsqueeze(-1)


def householder_qr(X: Tensor) -> tuple[Tensor, Tensor]:
    """``torch.linalg.qr`` (reduced) of ``X: [..., D, k]`` with the positive-diagonal convention."""
    return _positive_diagonal(*torch.linalg.qr(X))


def _chol_upper(G: Tensor) -> tuple[Tensor, Tensor]:
    """``(R, info)`` with ``G = R^T R``, ``R`` upper; ``info > 0`` where the factorisation failed."""
    L, info = torch.linalg.cholesky_ex(G)
    return L.transpose(-1, -2), info


def _cholqr2_core(X: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """CholeskyQR2 of ``X: [B, D, k]`` (compute dtype); returns ``(Q, R, bad [B])``."""
    norms = X.norm(dim=-2)  # [B, k]
    scale = torch.where(norms > 0, norms, torch.ones_like(norms))
    Xs = X / scale.unsqueeze(-2)
    R1, info1 = _chol_upper(Xs.transpose(-1, -2) @ Xs)
    Q1 = torch.linalg.solve_triangular(R1, Xs, upper=True, left=False)
    R2, info2 = _chol_upper(Q1.transpose(-1, -2) @ Q1)
    Q = torch.linalg.solve_triangular(R2, Q1, upper=True, left=False)
    R = (R2 @ R1) * scale.unsqueeze(-2)
    with torch.no_grad():
        d1 = R1.diagonal(dim1=-2, dim2=-1)
        d2 = R2.diagonal(dim1=-2, dim2=-1)
        kappa = d1.amax(-1) / d1.amin(-1)
        bad = (info1 != 0) | (info2 != 0) | ~(kappa <= _kappa_limit(X.dtype))
        bad |= ~((d2 >= 0.5) & (d2 <= 2.0)).all(-1)
        bad |= ~torch.isfinite(Q).flatten(1).all(-1) | ~torch.isfinite(R).flatten(1).all(-1)
        bad |= (norms == 0).any(-1)
    return Q, R, bad


def cholesky_qr2(X: Tensor, *, return_fallback: bool = False):
    """CholeskyQR2 of ``X: [B, D, k]`` (float32/float64) with the per-element Householder fallback.

    Returns ``(Q, R)``, and with ``return_fallback=True`` also the boolean mask ``[B]`` of the
    elements that used Householder. Reads the mask on the host (one synchronisation per call).
    """
    Q, R, bad = _cholqr2_core(X)
    if bool(bad.any()):
        idx = bad.nonzero().squeeze(-1)
        # Recompute the good elements from inputs where the failing ones are replaced by an orthonormal
        # block: their NaN/inf intermediates would otherwise leak NaN into the gradients (0 * NaN).
        eye = torch.eye(X.shape[-2], X.shape[-1], dtype=X.dtype, device=X.device)
        Xsafe = torch.where(bad[:, None, None], eye, X)
        Q, R, _ = _cholqr2_core(Xsafe)
        Qh, Rh = householder_qr(X.index_select(0, idx))
        Q = Q.index_copy(0, idx, Qh)
        R = R.index_copy(0, idx, Rh)
    return (Q, R, bad) if return_fallback else (Q, R)


def orthonormalize(Q: Tensor, method: str = "auto", *, return_fallback: bool = False):
    """Thin QR of a batch of frames ``Q: [B, D, k]`` (``k <= D``): ``(Q_new [B, D, k], R [B, k, k])``.

    Args:
        Q: the frames; float16, bfloat16, float32 or float64.
        method: ``"householder"`` (``torch.linalg.qr``), ``"cholesky_qr2"`` (with the per-element
            Householder fallback described in the module docstring) or ``"auto"`` (CholeskyQR2 for
            CUDA tensors, Householder elsewhere).
        return_fallback: also return a boolean ``[B]`` mask of the elements that used Householder
            (all True for ``"householder"``).

    ``R`` has a non-negative diagonal (``|R_ii|`` equals ``torch.linalg.qr``'s, and the columns of
    ``Q_new`` equal its columns up to sign). Computed in float32 (float64 for float64 inputs) and
    returned in the input dtype.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not isinstance(Q, Tensor):
        raise TypeError(f"Q must be a torch.Tensor [B, D, k], got {type(Q).__name__}")
    if Q.ndim != 3 or min(Q.shape) < 1:
        raise ValueError(f"Q must have shape [B, D, k] with B, D, k >= 1, got {tuple(Q.shape)}")
    if Q.shape[-1] > Q.shape[-2]:
        raise ValueError(f"Q has k={Q.shape[-1]} columns but only D={Q.shape[-2]} rows; a thin QR needs k <= D")
    if not Q.is_floating_point():
        raise ValueError(f"Q must be floating point, got {Q.dtype}")
    if method == "auto":
        method = "cholesky_qr2" if Q.device.type == "cuda" else "householder"
    X = Q.to(_compute_dtype(Q.dtype))
    if method == "householder":
        Qn, R = householder_qr(X)
        bad: Optional[Tensor] = torch.ones(Q.shape[0], dtype=torch.bool, device=Q.device)
    else:
        Qn, R, bad = cholesky_qr2(X, return_fallback=True)
    Qn, R = Qn.to(Q.dtype), R.to(Q.dtype)
    return (Qn, R, bad) if return_fallback else (Qn, R)
