"""Shared comparisons for kernel-vs-reference tests."""

from __future__ import annotations

import torch

from surroflos.kernels.backend import triton_importable

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def spike_mismatch_allowed(mem_ref: torch.Tensor, threshold, dtype: torch.dtype) -> torch.Tensor:
    """Where a spike may legitimately differ: the reference membrane within float rounding of threshold."""
    eps = torch.finfo(dtype).eps
    theta = torch.as_tensor(threshold, dtype=mem_ref.dtype, device=mem_ref.device)
    return (mem_ref - theta).abs() <= 64 * eps * (1.0 + mem_ref.abs() + theta.abs())


def assert_spikes_match(spk: torch.Tensor, spk_ref: torch.Tensor, mem_ref: torch.Tensor, threshold,
                        dtype: torch.dtype | None = None) -> None:
    """Spikes identical except where the reference membrane is within rounding of the threshold."""
    assert spk.shape == spk_ref.shape, (spk.shape, spk_ref.shape)
    differ = spk != spk_ref
    if bool(differ.any()):
        ok = spike_mismatch_allowed(mem_ref, threshold, dtype or mem_ref.dtype)
        bad = differ & ~ok
        assert not bool(bad.any()), f"{int(bad.sum())} spikes differ away from the threshold, first at {bad.nonzero()[0].tolist()}"


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5, what: str = "") -> None:
    """``|a - e| <= rtol * max(|e|_inf, tiny)`` elementwise: relative to the tensor's scale."""
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    scale = expected.abs().max().clamp(min=1e-30)
    err = (actual.double() - expected.double()).abs().max()
    assert float(err) <= rtol * float(scale), f"{what}: max abs error {float(err):.3e} > {rtol:g} x scale {float(scale):.3e}"


requires_triton = __import__("pytest").mark.skipif(not triton_importable(), reason="triton does not import")


def _cpu_kernels_here() -> bool:
    from surroflos.kernels.backend import cpu_kernels_importable

    return DEVICE == "cpu" and cpu_kernels_importable()


# backend="cpu" (numba) runs CPU tensors only: the suite's tensors are on DEVICE
requires_cpu_kernels = __import__("pytest").mark.skipif(not _cpu_kernels_here(),
                                                        reason="numba does not import, or the tests run on CUDA")
