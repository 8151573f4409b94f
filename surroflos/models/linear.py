"""The constant linear map ``h[t+1] = A h[t]``: the simplest model, and an exact oracle.

Its Lyapunov exponents are ``log|eig(A)| / dt`` (sorted) and its gradient norms grow as
``|mu_max|^lag``, which makes it the reference case for testing estimators. A plain class following the
model protocol of :mod:`surroflos.models.base` (no ``nn.Module``, no readout, no input).
"""

from __future__ import annotations

from typing import Optional

import torch

from .._random import randn

__all__ = ["LinearMap"]


def _linear_step(x: torch.Tensor, h: torch.Tensor, A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    h_new = h @ A.T
    return h_new, h_new


def _linear_tangent(x: torch.Tensor, h: torch.Tensor, A: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    return A @ Q


class LinearMap:
    """``h[t+1] = A h[t]`` (autonomous: ``n_in = 0``), each step lasting ``dt``.

    Args:
        A: ``[D, D]`` matrix.
        dt: duration of one step.
        analytic_tangent: provide ``tangent_function`` (``D Q = A Q``); with ``False`` estimators fall
            back to forward-mode AD of the step.
    """

    n_in = 0
    step_function = staticmethod(_linear_step)

    def __init__(self, A: torch.Tensor, dt: float = 1.0, *, analytic_tangent: bool = True) -> None:
        if not isinstance(A, torch.Tensor) or A.ndim != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(f"A must be a square matrix [D, D], got {getattr(A, 'shape', type(A).__name__)}")
        self.A, self.dt = A, float(dt)
        self.tangent_function: Optional[object] = _linear_tangent if analytic_tangent else None

    @property
    def state_dim(self) -> int:
        return self.A.shape[0]

    def params(self) -> torch.Tensor:
        return self.A

    def initial_state(self, batch: int, *, random: bool = False, generator: torch.Generator | None = None,
                      device=None, dtype=None) -> torch.Tensor:
        """Zeros, or standard normal entries with ``random=True``."""
        dtype = dtype or self.A.dtype
        if not random:
            return torch.zeros(batch, self.state_dim, dtype=dtype, device=device)
        return randn(batch, self.state_dim, generator=generator, dtype=dtype, device=device)
