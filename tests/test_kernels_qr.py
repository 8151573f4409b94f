"""surroflos.kernels.qr: CholeskyQR2 with Householder fallback against torch.linalg.qr and oracles.

References: ``torch.linalg.qr`` (LAPACK Householder) with its signs fixed independently here; the
defining properties ``X = Q R``, ``Q^T Q = I``, ``R`` upper triangular with a positive diagonal; and
the exponents of a constant linear map, ``log|eig(A)|``.
"""

import math

import numpy as np
import pytest
import torch

from surroflos import lyapunov_spectrum
from surroflos.kernels import qr as kqr
from surroflos.models import LinearMap

from _kernel_checks import DEVICE, assert_close_rel
from _tolerance import rounding_rtol
from _oracles import gen, nonnormal_matrix

pytestmark = pytest.mark.numerics

F64, F32 = torch.float64, torch.float32


def signed_householder(X: torch.Tensor):
    """``torch.linalg.qr`` with rows of R / columns of Q flipped so that ``R_ii >= 0``."""
    Q, R = torch.linalg.qr(X)
    s = torch.sign(R.diagonal(dim1=-2, dim2=-1))
    s = torch.where(s == 0, torch.ones_like(s), s)
    return Q * s.unsqueeze(-2), R * s.unsqueeze(-1)


def with_condition(B: int, D: int, k: int, cond: float, seed: int, dtype=F64) -> torch.Tensor:
    """``U diag(s) V^T`` with singular values log-spaced from 1 to ``1/cond`` (exact 2-norm condition)."""
    g = gen(seed)
    U = torch.linalg.qr(torch.randn(B, D, k, generator=g, dtype=F64)).Q
    V = torch.linalg.qr(torch.randn(B, k, k, generator=g, dtype=F64)).Q
    s = torch.logspace(0.0, -math.log10(cond), k, dtype=F64)
    return ((U * s) @ V.transpose(-1, -2)).to(dtype).to(DEVICE)


def check_qr(X, Q, R, tol):
    eye = torch.eye(X.shape[-1], dtype=X.dtype, device=X.device)
    assert Q.shape == X.shape and R.shape == (X.shape[0], X.shape[-1], X.shape[-1])
    assert float((Q.transpose(-1, -2) @ Q - eye).abs().max()) < tol, "columns not orthonormal"
    assert float((Q @ R - X).abs().max()) < tol * float(X.abs().max()), "Q R != X"
    assert bool((R.tril(-1) == 0).all()), "R not upper triangular"
    assert bool((R.diagonal(dim1=-2, dim2=-1) >= 0).all()), "R has a negative diagonal"


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 40, 7), (2, 9, 9), (4, 33, 1), (2, 50, 17)])
@pytest.mark.parametrize("method", ["householder", "cholesky_qr2", "auto"])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_matches_torch_linalg_qr_on_random_frames(shape, method, dtype):
    X = torch.randn(*shape, generator=gen(sum(shape)), dtype=dtype).to(DEVICE)
    Q, R, fb = kqr.orthonormalize(X, method, return_fallback=True)
    # Householder QR of a D x k frame is backward stable with error gamma_{Dk} (Higham, Accuracy and Stability
    # of Numerical Algorithms, Thm 19.4): D k rounded operations (tolerance policy: tests/_tolerance.py).
    _, D, k = shape
    tol = rounding_rtol(dtype, D * k)
    check_qr(X, Q, R, tol)
    Qh, Rh = torch.linalg.qr(X)
    # |R_ii| and Q's columns up to sign, against LAPACK's own factorisation: two backward-stable factorisations
    # differ by up to the frame's condition number times that error (first-order QR perturbation theory)
    cond = float(torch.linalg.cond(X.double()).max())
    torch.testing.assert_close(R.diagonal(dim1=-2, dim2=-1), Rh.diagonal(dim1=-2, dim2=-1).abs(), rtol=tol * cond,
                               atol=0)
    sign = torch.sign((Q * Qh).sum(-2, keepdim=True))
    torch.testing.assert_close(Q, Qh * sign, rtol=0, atol=tol * cond)
    if method == "cholesky_qr2":
        assert not bool(fb.any()), "a random Gaussian frame is well conditioned: no fallback expected"


def test_ill_conditioned_float64_cond_1e6_stays_on_cholesky_qr2_and_is_accurate():
    X = with_condition(3, 60, 8, 1e6, seed=1)
    Q, R, fb = kqr.orthonormalize(X, "cholesky_qr2", return_fallback=True)
    assert not bool(fb.any())
    check_qr(X, Q, R, 1e-13)
    Qs, Rs = signed_householder(X)
    # Both backward stable: the small R_ii agree to ~cond * eps relative, the columns of Q likewise.
    torch.testing.assert_close(R.diagonal(dim1=-2, dim2=-1), Rs.diagonal(dim1=-2, dim2=-1), rtol=1e-8, atol=0)
    torch.testing.assert_close(Q, Qs, rtol=0, atol=1e-8)


@pytest.mark.parametrize("dtype,cond", [(F64, 1e10), (F32, 1e6)])
def test_too_ill_conditioned_frames_fall_back_to_householder(dtype, cond):
    X = with_condition(2, 40, 6, cond, seed=2, dtype=dtype)
    Q, R, fb = kqr.orthonormalize(X, "cholesky_qr2", return_fallback=True)
    assert bool(fb.all()), "the condition estimate should reject these frames"
    Qs, Rs = signed_householder(X.to(F64 if dtype == F64 else F32))
    torch.testing.assert_close(Q, Qs, rtol=0, atol=0)  # exactly the (sign-fixed) Householder result
    torch.testing.assert_close(R, Rs, rtol=0, atol=0)


def test_fallback_is_per_batch_element_and_keeps_gradients_finite():
    good = torch.randn(2, 30, 5, generator=gen(3), dtype=F64)
    bad = with_condition(1, 30, 5, 1e12, seed=4).cpu()
    rank_def = good[:1].clone()
    rank_def[..., 4] = rank_def[..., 0]  # exactly dependent columns: Cholesky breaks down
    X = torch.cat([good[:1], bad, good[1:], rank_def]).to(DEVICE).requires_grad_(True)
    Q, R, fb = kqr.orthonormalize(X, "cholesky_qr2", return_fallback=True)
    assert fb.tolist() == [False, True, False, True]
    loss = R.diagonal(dim1=-2, dim2=-1)[:, :4].log().sum() + Q[..., :4].sum()
    (g,) = torch.autograd.grad(loss, X)
    assert bool(torch.isfinite(g).all()), "NaN from a failed Cholesky leaked into the gradient"
    # the well-conditioned elements get Householder's gradient
    Xh = X.detach().clone().requires_grad_(True)
    Qs, Rs = signed_householder(Xh)
    (gh,) = torch.autograd.grad(Rs.diagonal(dim1=-2, dim2=-1)[:, :4].log().sum() + Qs[..., :4].sum(), Xh)
    torch.testing.assert_close(g[[0, 2]], gh[[0, 2]], rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("cond", [1.0, 1e4, 1e6])
def test_gradients_equal_householder(cond):
    X0 = torch.randn(3, 25, 6, generator=gen(5), dtype=F64) if cond == 1.0 else with_condition(3, 25, 6, cond, 6)
    w = torch.randn(3, 6, generator=gen(7), dtype=F64)
    P = torch.randn(3, 25, 6, generator=gen(8), dtype=F64)

    def loss(Q, R):
        return (w * R.diagonal(dim1=-2, dim2=-1).log()).sum() + (P * Q).sum() + R.triu(1).square().sum()

    X = X0.clone().requires_grad_(True)
    Q, R, fb = kqr.orthonormalize(X, "cholesky_qr2", return_fallback=True)
    assert not bool(fb.any())
    (g,) = torch.autograd.grad(loss(Q, R), X)
    Xh = X0.clone().requires_grad_(True)
    (gh,) = torch.autograd.grad(loss(*signed_householder(Xh)), Xh)
    # relative to the gradient's scale; the conditioning amplifies rounding in both factorisations
    assert_close_rel(g, gh, rtol=1e-13 + 1e-14 * cond, what="dL/dX")


def test_gradcheck_float64_tiny():
    X = torch.randn(2, 5, 3, generator=gen(9), dtype=F64, requires_grad=True)

    def f(X):
        Q, R = kqr.cholesky_qr2(X)
        return Q, R

    assert torch.autograd.gradcheck(f, (X,))


def test_low_precision_inputs_computed_in_float32():
    X = torch.randn(2, 20, 4, generator=gen(10), dtype=F32)
    for dt in (torch.bfloat16, torch.float16):
        Q, R = kqr.orthonormalize(X.to(dt), "cholesky_qr2")
        assert Q.dtype == dt and R.dtype == dt
        Q32, R32 = kqr.orthonormalize(X.to(dt).float(), "cholesky_qr2")
        torch.testing.assert_close(Q, Q32.to(dt), rtol=0, atol=0)


def test_auto_is_householder_on_cpu_and_cholesky_qr2_on_cuda():
    X = torch.randn(2, 10, 3, generator=gen(11), dtype=F64).to(DEVICE)
    _, _, fb = kqr.orthonormalize(X, "auto", return_fallback=True)
    assert bool(fb.all()) == (X.device.type != "cuda")


def test_nonfinite_frames_are_not_hidden():
    X = torch.randn(2, 10, 3, generator=gen(12), dtype=F64)
    X[1, 2, 1] = float("nan")
    Q, R, fb = kqr.orthonormalize(X, "cholesky_qr2", return_fallback=True)
    assert fb.tolist() == [False, True]
    assert bool(torch.isfinite(R[0]).all()) and not bool(torch.isfinite(R[1]).all())


@pytest.mark.parametrize("bad,exc,match", [
    (lambda: kqr.orthonormalize(torch.randn(2, 3, 4)), ValueError, "k <= D"),
    (lambda: kqr.orthonormalize(torch.randn(3, 4)), ValueError, r"\[B, D, k\]"),
    (lambda: kqr.orthonormalize(torch.randn(2, 3, 2), "qr"), ValueError, "method must be"),
    (lambda: kqr.orthonormalize(torch.ones(2, 3, 2, dtype=torch.int64)), ValueError, "floating"),
    (lambda: kqr.orthonormalize([[1.0]]), TypeError, "torch.Tensor"),
])
def test_bad_arguments(bad, exc, match):
    with pytest.raises(exc, match=match):
        bad()


# --------------------------------------------------------------------------------------------------
# Inside lyapunov_spectrum
# --------------------------------------------------------------------------------------------------

LIN_EIGS = [1.1, -0.9, 0.7, -0.45, 0.2]


@pytest.mark.parametrize("qr_every", [1, 4])
def test_linear_map_exponents_unchanged_with_cholesky_qr2(qr_every):
    A = nonnormal_matrix(LIN_EIGS, seed=0).to(DEVICE)
    expected = np.sort(np.log(np.abs(LIN_EIGS)))[::-1]
    x = torch.zeros(400, 2, 0, dtype=F64, device=DEVICE)
    kw = dict(qr_every=qr_every, transient=10, frame_warmup=150)
    res = lyapunov_spectrum(LinearMap(A), x, 5, qr="cholesky_qr2", generator=gen(1), **kw)
    ref = lyapunov_spectrum(LinearMap(A), x, 5, qr="householder", generator=gen(1), **kw)
    for b in range(2):
        np.testing.assert_allclose(res.exponents[b].cpu().numpy(), expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(res.exponents, ref.exponents, rtol=0, atol=1e-12)


def test_lyapunov_torch_backend_keeps_householder_exactly():
    # backend="torch" with qr="auto" must be today's computation: identical to qr="householder".
    A = nonnormal_matrix(LIN_EIGS, seed=3)
    x = torch.zeros(60, 2, 0, dtype=F64)
    a = lyapunov_spectrum(LinearMap(A), x, 3, qr_every=2, generator=gen(2), backend="torch")
    b = lyapunov_spectrum(LinearMap(A), x, 3, qr_every=2, generator=gen(2), backend="torch", qr="householder")
    assert torch.equal(a.exponents, b.exponents)


def test_lyapunov_rejects_unknown_qr():
    A = nonnormal_matrix(LIN_EIGS, seed=3)
    with pytest.raises(ValueError, match="qr must be one of"):
        lyapunov_spectrum(LinearMap(A), torch.zeros(10, 1, 0, dtype=F64), 2, qr="gram_schmidt")
