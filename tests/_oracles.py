"""Helpers shared by the oracle tests (seeded draws and exactly solvable linear maps)."""

import torch

from surroflos.models import LinearMap

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed: int, scale: float = 1.0, dtype=F64) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed), dtype=dtype) * scale


def nonnormal_matrix(eigs, seed: int, skew: float = 2.0) -> torch.Tensor:
    """``O (diag(eigs) + strictly upper noise) O^T``: eigenvalues ``eigs``, strongly non-normal."""
    n = len(eigs)
    g = gen(seed)
    U = torch.triu(torch.randn(n, n, generator=g, dtype=F64), diagonal=1) * skew
    U = U + torch.diag(torch.tensor(eigs, dtype=F64))
    O = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64)).Q
    return O @ U @ O.T


def LinearMapWrongTangent(A: torch.Tensor, dt: float = 1.0) -> LinearMap:
    """``h <- A h`` declaring the inconsistent tangent ``2 A``: shows whether a tangent_function is used."""
    model = LinearMap(A, dt)
    model.tangent_function = lambda x, h, A_, Q: 2.0 * (A_ @ Q)
    return model


def spiking_param_defaults(kw: dict, N: int, per_neuron: bool) -> dict:
    """Fill beta / alpha / threshold for a test SpikingRNN: per-neuron ramps or scalars (kw wins)."""
    if per_neuron:
        kw.setdefault("beta", torch.linspace(0.55, 0.95, N))
        kw.setdefault("alpha", torch.linspace(0.9, 0.6, N))
        kw.setdefault("threshold", torch.linspace(0.8, 1.3, N))
    else:
        kw.setdefault("beta", 0.85)
        kw.setdefault("alpha", 0.7)
        kw.setdefault("threshold", 1.1)
    return kw
