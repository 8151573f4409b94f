"""Rate recurrent networks: the discrete map (dt = 1) and its leaky Euler form (dt < 1).

State ``h: [B, N]``, activity ``r = phi(h)``::

    h[t+1] = (1 - dt) h[t] + dt (J phi(h[t]) + W_in x[t+1] + b)        (dt = 1: the discrete map)
    D[t]   = (1 - dt) I + dt J diag(phi'(h[t]))

Exponents are reported per unit time (time unit tau = 1), i.e. divided by ``steps * dt``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._random import randn
from ..ensemble import draw_per_member, member_view
from .base import RecurrentModel, member_generators

__all__ = ["RateParams", "rate_step", "rate_tangent", "RateRNN", "NONLINEARITIES"]

NONLINEARITIES = ("tanh", "relu")


class RateParams(NamedTuple):
    """Tensors and settings read by :func:`rate_step` and :func:`rate_tangent`."""

    weight_rec: torch.Tensor  # J [N, N]   (ensemble: [E, N, N])
    weight_in: torch.Tensor  # W_in [N, n_in]   ([E, N, n_in])
    bias: torch.Tensor  # b [N]   ([E, 1, N])
    dt: float
    nonlinearity: str


def batched_weight(W: torch.Tensor) -> torch.Tensor:
    """``W [N, M]`` as it is, or an ensemble's ``[E, N, M]`` as ``[E, 1, N, M]``: it then multiplies frames
    ``[E, B, M, k]`` member by member (``torch.matmul`` broadcasts over the batch axis)."""
    return W if W.ndim == 2 else W.unsqueeze(-3)


def _phi(h: torch.Tensor, name: str) -> torch.Tensor:
    return torch.tanh(h) if name == "tanh" else torch.relu(h)


def _dphi(h: torch.Tensor, name: str) -> torch.Tensor:
    if name == "tanh":
        return 1.0 - torch.tanh(h) ** 2
    return (h > 0).to(h.dtype)


def rate_step(x: torch.Tensor, h: torch.Tensor, p: RateParams) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the rate network: ``(phi(h_new), h_new)``."""
    drive = _phi(h, p.nonlinearity) @ p.weight_rec.mT + x @ p.weight_in.mT + p.bias
    h_new = drive if p.dt == 1.0 else (1.0 - p.dt) * h + p.dt * drive
    return _phi(h_new, p.nonlinearity), h_new


def rate_tangent(x: torch.Tensor, h: torch.Tensor, p: RateParams, Q: torch.Tensor) -> torch.Tensor:
    """``D[t] Q`` with ``D[t] = (1 - dt) I + dt J diag(phi'(h[t]))``; ``Q: [B, N, k]`` (``[E, B, N, k]``)."""
    JQ = torch.matmul(batched_weight(p.weight_rec), _dphi(h, p.nonlinearity).unsqueeze(-1) * Q)
    return JQ if p.dt == 1.0 else (1.0 - p.dt) * Q + p.dt * JQ


class RateRNN(RecurrentModel):
    """Rate RNN with random Gaussian coupling ``J ~ N(0, g^2 / N)``, input, bias and a linear readout.

    Args:
        n_in, n_hidden, n_out: input, hidden and output sizes (``n_in = 0`` gives an autonomous network).
        g: coupling gain; g > 1 makes the large network chaotic.
        dt: Euler step in units of the time constant; ``dt = 1`` is the discrete map.
        nonlinearity: ``"tanh"`` or ``"relu"``.
        input_scale: input weights are ``N(0, input_scale^2)``.
        bias: learnable bias (initialised at zero); ``False`` keeps a zero buffer.
        generator: a ``torch.Generator`` for reproducible weights; for an ensemble a list of E generators
            (member e is then the network built alone from the e-th one) or one generator drawing the
            members in turn.
        ensemble: ``None`` (one network) or E, the number of members of an ensemble
            (:mod:`surroflos.ensemble`): parameters ``[E, ...]``, inputs ``[T, E, B, n_in]``.

    ``model(x)`` maps ``x: [T, B, n_in]`` to ``(outputs [T, B, n_out], states [T, B, N])``; the readout is
    ``W_out phi(h) + b_out``. An ensemble maps ``[T, E, B, n_in]`` to ``[T, E, B, n_out]`` and ``[T, E, B, N]``.
    """

    tangent_function = staticmethod(rate_tangent)
    step_function = staticmethod(rate_step)

    def __init__(self, n_in: int, n_hidden: int, n_out: int, *, g: float = 1.0, dt: float = 1.0,
                 nonlinearity: str = "tanh", input_scale: float = 1.0, bias: bool = True,
                 generator: torch.Generator | None = None, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, ensemble: int | None = None) -> None:
        super().__init__()
        if not (0.0 < dt <= 1.0):
            raise ValueError(f"dt must be in (0, 1] (units of the time constant), got {dt!r}")
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"nonlinearity must be one of {NONLINEARITIES}, got {nonlinearity!r}")
        gens = member_generators(generator, ensemble)
        self._init_network(n_in, n_hidden, n_out, g=g, input_scale=input_scale, bias=bias,
                           generator=gens[0] if gens else generator, device=device, dtype=dtype)
        self.dt, self.nonlinearity = float(dt), nonlinearity
        self._init_ensemble(ensemble, gens, lambda gen: RateRNN(
            n_in, n_hidden, n_out, g=g, dt=dt, nonlinearity=nonlinearity, input_scale=input_scale, bias=bias,
            generator=gen, device=device, dtype=dtype))

    @property
    def state_dim(self) -> int:
        return self.n_hidden

    def params(self) -> RateParams:
        return RateParams(self.weight_rec, self.weight_in, member_view(self.bias, self.ensemble), self.dt,
                          self.nonlinearity)

    def initial_state(self, batch: int, *, random: bool = False, generator: torch.Generator | None = None,
                      device=None, dtype=None) -> torch.Tensor:
        """Zeros ``[B, N]`` (``[E, B, N]``), or ``N(0, 1)`` entries when ``random=True`` (a generic point on the
        attractor's basin); for an ensemble, ``generator`` may be a list with one generator per member."""
        f = self._factory()
        device, dtype = device or f["device"], dtype or f["dtype"]
        lead = () if self.ensemble is None else (self.ensemble,)
        if not random:
            return torch.zeros(*lead, batch, self.n_hidden, device=device, dtype=dtype)
        return draw_per_member(lambda g: randn(batch, self.n_hidden, generator=g, dtype=dtype), generator,
                               self.ensemble).to(device)

    def readout(self, activity: torch.Tensor) -> torch.Tensor:
        return self._linear_readout(activity)

    def extra_repr(self) -> str:
        return (f"n_in={self.n_in}, n_hidden={self.n_hidden}, n_out={self.n_out}, g={self.g}, dt={self.dt}, "
                f"nonlinearity={self.nonlinearity!r}" + ("" if self.ensemble is None else f", ensemble={self.ensemble}"))
