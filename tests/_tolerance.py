"""The test suite's one tolerance policy (written out in docs/TESTING.md).

1. An exactness claim ("identical to snnTorch", "equal to the truncated form") is checked in float64,
   where a tight bound (``exact_tol``) has room for any summation order a CPU or BLAS may pick.
2. A float32 result is never held to a bare absolute bound such as ``atol=1e-6``: the bound is derived
   from rounding, ``eps(dtype) x magnitude x ops`` (``rounding_tol``, ``assert_within_rounding``), or
   the float32 results of ours and of the library we mirror are both measured against a float64 truth
   and ours must be no worse than theirs, up to a small factor (``assert_close_to_truth``).

Why ``eps x magnitude x ops``: every float operation rounds its result with a relative error of at most
``u = eps / 2``. A value computed through ``ops`` rounded operations (a dot product of length n is n of
them; a recurrence of T steps with ``p`` operations per step is ``T p``, and a gradient of a
recurrence is as many again in the backward pass, plus the sum over batch and time for a parameter)
whose intermediate terms are at most ``magnitude`` in size is off by at most ``ops x u x magnitude``
(first order, the standard ``gamma_n`` bound), in any order of evaluation. Two implementations that
add in different orders (another BLAS code path, another SIMD width, a fused kernel) are then at most
``ops x eps x magnitude`` apart. That is a worst case, independent of the CPU, yet still orders of
magnitude below what a wrong formula produces. ``magnitude`` is the size of the largest intermediate
(the summands of a sum, the state of a recurrence), not of the result, since the result may cancel.
A recurrence only carries errors forward without growth when it is contracting (leak factors below 1,
bounded tanh slopes); where a test's recurrence can amplify, the test passes the amplification factor
in ``magnitude``.

Set ``SURROFLOS_TOL_LOG=<file>`` to append one line per check (error, bound, their ratio) to that file:
how docs/TESTING.md's headroom figures were measured.
"""

from __future__ import annotations

import math
import os

import torch

__all__ = ["eps", "scale_of", "rounding_tol", "rounding_rtol", "recurrence_ops", "exact_tol", "close_kw",
           "assert_within_rounding", "assert_close_to_truth", "threshold_margin", "F32_EPS", "F64_EPS",
           "EXACT_RTOL_F64"]

F32_EPS = torch.finfo(torch.float32).eps  # 2^-23 ~ 1.19e-7
F64_EPS = torch.finfo(torch.float64).eps  # 2^-52 ~ 2.22e-16

# Exactness claims in float64: two evaluations of the same formula that differ only in summation order
# agree to ~ops x 1e-16 relative; 1e-12 leaves room for ~4000 accumulated operations and is still 6 orders
# of magnitude tighter than the smallest float32 difference (1e-7) a float32 bug would leave behind.
EXACT_RTOL_F64 = 1e-12


def eps(dtype: torch.dtype) -> float:
    """Machine epsilon (the gap between 1 and the next float) of ``dtype``."""
    return torch.finfo(dtype).eps


def scale_of(*tensors, floor: float = 1e-30) -> float:
    """The largest magnitude among ``tensors`` (their max-norm): the size that rounding errors scale with."""
    return max([floor] + [float(torch.as_tensor(t).detach().abs().max()) for t in tensors if torch.as_tensor(t).numel()])


def recurrence_ops(steps: int, per_step: int, backward: bool = False, reduce: int = 0) -> int:
    """Rounded operations along a recurrence: ``steps x per_step`` forward, the same again for the
    backward pass, plus ``reduce`` for a final sum (a parameter gradient sums over batch and time)."""
    return steps * per_step * (2 if backward else 1) + reduce


def rounding_rtol(dtype: torch.dtype, ops: int = 1) -> float:
    """Relative (to the scale) distance two ``ops``-operation evaluations of one value may have: ``ops x eps``."""
    return ops * eps(dtype)


def rounding_tol(dtype: torch.dtype, magnitude: float, ops: int = 1) -> float:
    """Absolute version of ``rounding_rtol``: ``ops x eps x magnitude``."""
    return rounding_rtol(dtype, ops) * magnitude


def exact_tol(magnitude: float = 1.0, rtol: float = EXACT_RTOL_F64) -> dict:
    """``assert_close`` keywords for a float64 exactness claim on values of size ``magnitude``."""
    return dict(rtol=rtol, atol=rtol * magnitude)


def close_kw(dtype: torch.dtype, magnitude: float, ops: int = 1) -> dict:
    """``assert_close`` keywords: an absolute rounding bound for values of size ``magnitude``."""
    return dict(rtol=0.0, atol=rounding_tol(dtype, magnitude, ops))


def _log(what: str, err: float, bound: float) -> None:
    path = os.environ.get("SURROFLOS_TOL_LOG")
    if not path:
        return
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
    with open(path, "a") as fh:
        fh.write(f"{test}\t{what}\t{err:.3e}\t{bound:.3e}\t{err / bound if bound > 0 else math.inf:.4f}\n")


def assert_within_rounding(actual: torch.Tensor, expected: torch.Tensor, ops: int, what: str = "",
                           magnitude: float | None = None, dtype: torch.dtype | None = None) -> None:
    """``max|actual - expected| <= ops x eps x magnitude`` with ``magnitude = max|expected|`` by default.

    ``dtype``: whose epsilon (default: the coarser of the two tensors' dtypes).
    """
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    if dtype is None:
        dtype = actual.dtype if eps(actual.dtype) >= eps(expected.dtype) else expected.dtype
    mag = scale_of(expected) if magnitude is None else magnitude
    bound = rounding_tol(dtype, mag, ops)
    err = float((actual.detach().double() - expected.detach().double()).abs().max()) if actual.numel() else 0.0
    _log(what, err, bound)
    assert err <= bound, (f"{what}: max abs error {err:.3e} > {ops} ops x eps({dtype}) x magnitude {mag:.3e} "
                          f"= {bound:.3e}")


def assert_close_to_truth(ours: torch.Tensor, theirs: torch.Tensor, truth: torch.Tensor, ops: int,
                          factor: float = 4.0, what: str = "", magnitude: float | None = None) -> None:
    """Ours is no worse than the library we mirror, both measured against a float64 ``truth``.

    ``max|ours - truth| <= factor x max(max|theirs - truth|, sqrt(ops) x eps x magnitude)``.
    The floor ``sqrt(ops) x eps x magnitude`` is the typical (random-walk) rounding error of an
    ``ops``-operation evaluation whose terms are of size ``magnitude`` (default ``max|truth|``; pass the
    summands' size where the result cancels, e.g. a gradient summed over time): where theirs happens to be
    far better than that, ours need not match its luck. ``factor`` covers two different evaluation orders
    of the same formula; the max over many elements of either error is stable, so their ratio stays well
    inside it (measured in docs/TESTING.md).
    """
    assert ours.shape == theirs.shape == truth.shape, (what, ours.shape, theirs.shape, truth.shape)
    assert truth.dtype == torch.float64, f"{what}: the truth must be float64, got {truth.dtype}"
    t = truth.detach()
    err_ours = float((ours.detach().double() - t).abs().max())
    err_theirs = float((theirs.detach().double() - t).abs().max())
    floor = math.sqrt(ops) * eps(ours.dtype) * (scale_of(t) if magnitude is None else magnitude)
    bound = factor * max(err_theirs, floor)
    _log(what, err_ours, bound)
    assert err_ours <= bound, (f"{what}: our error vs float64 {err_ours:.3e} > {factor:g} x max(theirs "
                               f"{err_theirs:.3e}, rounding floor {floor:.3e})")


def threshold_margin(mem: torch.Tensor, threshold) -> float:
    """``min |mem - threshold|``: a float32 run reproduces a float64 run's spikes when its membrane error
    stays below this margin."""
    thr = torch.as_tensor(threshold).detach().to(dtype=mem.dtype, device=mem.device)
    return float((mem.detach() - thr).abs().min())
