"""Seeded random draws that work whatever device the generator lives on."""

from __future__ import annotations

import torch


def _draw(fn, shape, generator, dtype, device) -> torch.Tensor:
    # Draw where the generator lives (CPU generators cannot fill CUDA tensors), then move.
    where = generator.device if generator is not None else device
    return fn(*shape, generator=generator, dtype=dtype, device=where).to(device)


def randn(*shape: int, generator: torch.Generator | None = None, dtype: torch.dtype | None = None,
          device: torch.device | str | None = None) -> torch.Tensor:
    """``torch.randn`` that accepts a generator on any device."""
    return _draw(torch.randn, shape, generator, dtype, device)


def rand(*shape: int, generator: torch.Generator | None = None, dtype: torch.dtype | None = None,
         device: torch.device | str | None = None) -> torch.Tensor:
    """``torch.rand`` that accepts a generator on any device."""
    return _draw(torch.rand, shape, generator, dtype, device)


def orthonormal_frame(batch: int, dim: int, k: int, *, generator: torch.Generator | None = None,
                      dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """A random orthonormal frame ``[batch, dim, k]`` (QR of a Gaussian matrix)."""
    return torch.linalg.qr(randn(batch, dim, k, generator=generator, dtype=dtype, device=device)).Q
