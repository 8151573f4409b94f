"""Surrogate spike functions.

A spike is the Heaviside step ``H(x) = 1 if x > 0 else 0`` of the shifted membrane ``x = U - theta``
(strict inequality, as in snnTorch and Norse). Its derivative is zero almost everywhere, so training
and the *surrogate tangent dynamics* replace it by a smooth pseudo-derivative ``sigma'(x)``.

:func:`spike` applies the replacement in reverse mode (``backward``) **and** forward mode (``jvp``),
so ``torch.func.jvp`` of a spiking step function gives exactly the surrogate tangent map that
:mod:`surroflos.lyapunov` uses.

Every surrogate has a stable small-integer ``id`` (kernels dispatch on it; never renumber) and one
``scale`` parameter. The defaults reproduce the reference libraries:

============== == ====================================== ============== ==============================
name           id derivative ``sigma'(x)``                default scale  reproduces
============== == ====================================== ============== ==============================
fast_sigmoid   0  ``1 / (scale |x| + 1)^2``               25             snnTorch ``fast_sigmoid()``
superspike     0  same function as fast_sigmoid           1              Norse 1.1 ``method="super"``
atan           1  ``scale/2 / (1 + (pi/2 scale x)^2)``    2              snnTorch ``atan()`` (default)
sigmoid        2  ``scale s (1 - s)``, ``s = sig(scale x)`` 25           snnTorch ``sigmoid()``
triangle       3  ``scale * max(0, 1 - |x|)``             0.3            Norse ``triangle_fn`` (*)
exponential    4  ``scale/2 * exp(-scale |x|)``           5              SLAYER-style PDF
gaussian       5  ``scale/sqrt(2 pi) exp(-(scale x)^2/2)`` 5             (normalised Gaussian)
============== == ====================================== ============== ==============================

(*) Norse's LIF modules with ``method="triangle"`` pass their ``alpha`` (100 by default) as this scale.

Note on Norse: Norse 1.1's SuperSpike backward computes ``1 / (|x| + 1)^2`` and ignores its
``alpha=100`` argument, so the scale that reproduces Norse's numbers is 1, not 100.

Each surrogate also has a *primitive* ``F(x) = int_{-inf}^x sigma'(u) du`` (see
:meth:`Surrogate.primitive`). Using ``F`` instead of ``H`` in the forward pass gives a smooth network
whose exact Jacobian *is* the surrogate tangent map; :class:`surroflos.SpikingRNN` offers it as
``smooth=True`` so that surrogate exponents can be checked against brute-force perturbation growth.

Ensembles (:mod:`surroflos.ensemble`) whose members share a surrogate but not its width use a
:class:`MemberSurrogate`: one name, one scale per member, applied as an ``[E, 1, 1]`` tensor that
broadcasts against member-first arrays (``[E, B, N]`` states, ``[T, E, B, N]`` sequences). The formulas
are the same; in float64 member ``e`` computes what a :class:`Surrogate` with its scale computes, in
float32 to rounding (a scale constant such as ``pi/2 scale`` is then formed in float32, not in double).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Union

import torch

__all__ = [
    "Surrogate",
    "MemberSurrogate",
    "SURROGATES",
    "get",
    "spike",
    "surrogate_derivative",
    "surrogate_primitive",
]


# name -> (id, default scale); ids are part of the kernel ABI and must never change.
SURROGATES: dict[str, tuple[int, float]] = {
    "fast_sigmoid": (0, 25.0),
    "superspike": (0, 1.0),
    "atan": (1, 2.0),
    "sigmoid": (2, 25.0),
    "triangle": (3, 0.3),
    "exponential": (4, 5.0),
    "gaussian": (5, 5.0),
}
_ID_TO_NAME = {0: "fast_sigmoid", 1: "atan", 2: "sigmoid", 3: "triangle", 4: "exponential", 5: "gaussian"}


def surrogate_derivative(x: torch.Tensor, surrogate_id: int, scale: float) -> torch.Tensor:
    """``sigma'(x)`` of the surrogate with the given id; differentiable in ``x`` (double backward works)."""
    if surrogate_id == 0:
        return 1.0 / (scale * x.abs() + 1.0) ** 2
    if surrogate_id == 1:
        return (scale / 2.0) / (1.0 + (math.pi / 2.0 * scale * x) ** 2)
    if surrogate_id == 2:
        # s(scale x) s(-scale x) = s (1 - s) without the cancellation of 1 - s in the upper tail.
        return scale * torch.sigmoid(scale * x) * torch.sigmoid(-scale * x)
    if surrogate_id == 3:
        return scale * torch.relu(1.0 - x.abs())
    if surrogate_id == 4:
        return (scale / 2.0) * torch.exp(-scale * x.abs())
    if surrogate_id == 5:
        return (scale / math.sqrt(2.0 * math.pi)) * torch.exp(-0.5 * (scale * x) ** 2)
    raise ValueError(f"unknown surrogate id {surrogate_id}; known ids: {sorted(_ID_TO_NAME)}")


def surrogate_primitive(x: torch.Tensor, surrogate_id: int, scale: float) -> torch.Tensor:
    """``F(x) = int_{-inf}^x sigma'(u) du``: the smooth function whose derivative is the surrogate.

    ``F`` rises from 0 to the surrogate's total mass (1 for the normalised surrogates, ``2/scale`` for
    fast_sigmoid, ``scale`` for triangle); its autograd derivative equals :func:`surrogate_derivative`.
    """
    if surrogate_id == 0:
        # 1/s + x / (1 + s|x|): F(-inf) = 0, and its autograd derivative is 1/(1 + s|x|)^2 everywhere,
        # also at x = 0 (a sign(x) form would give sign(0)^2 = 0 there).
        return 1.0 / scale + x / (scale * x.abs() + 1.0)
    if surrogate_id == 1:
        return torch.atan(math.pi / 2.0 * scale * x) / math.pi + 0.5
    if surrogate_id == 2:
        return torch.sigmoid(scale * x)
    if surrogate_id == 3:
        c = x.clamp(-1.0, 1.0)
        # Integral of the tent: quadratic on [-1, 1], constant outside.
        return scale * (0.5 + c - torch.sign(c) * c * c / 2.0)
    if surrogate_id == 4:
        # Clamp each branch's exponent so that the unused branch cannot overflow to inf (whose 0 * inf
        # would turn the gradient into NaN for large |x|).
        return torch.where(x < 0, 0.5 * torch.exp(scale * x.clamp(max=0.0)),
                           1.0 - 0.5 * torch.exp(-scale * x.clamp(min=0.0)))
    if surrogate_id == 5:
        return 0.5 * (1.0 + torch.erf(scale * x / math.sqrt(2.0)))
    raise ValueError(f"unknown surrogate id {surrogate_id}; known ids: {sorted(_ID_TO_NAME)}")


class _SurrogateSpike(torch.autograd.Function):
    """Heaviside forward; surrogate derivative in backward and in jvp (forward-mode AD)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, surrogate_id: int, scale: float) -> torch.Tensor:  # type: ignore[override]
        return (x > 0).to(x.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[override]
        x, surrogate_id, scale = inputs
        ctx.surrogate_id = surrogate_id
        ctx.scale = scale
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad_out * surrogate_derivative(x, ctx.surrogate_id, ctx.scale), None, None

    @staticmethod
    def jvp(ctx, x_tangent, _id_tangent, _scale_tangent):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return x_tangent * surrogate_derivative(x, ctx.surrogate_id, ctx.scale)


@dataclass(frozen=True)
class Surrogate:
    """A surrogate spike function: ``Surrogate("atan")``, ``Surrogate("fast_sigmoid", scale=10)``.

    Calling it on ``x = U - theta`` returns Heaviside spikes whose derivative (reverse and forward mode)
    is ``sigma'(x)``.
    """

    name: str = "atan"
    scale: float | None = None

    def __post_init__(self) -> None:
        if self.name not in SURROGATES:
            raise ValueError(f"unknown surrogate {self.name!r}; choose one of {sorted(SURROGATES)}")
        scale = SURROGATES[self.name][1] if self.scale is None else float(self.scale)
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"surrogate scale must be a positive finite number, got {self.scale!r}")
        object.__setattr__(self, "scale", scale)

    @property
    def id(self) -> int:
        """Stable integer id that the Triton kernels dispatch on."""
        return SURROGATES[self.name][0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return _SurrogateSpike.apply(x, self.id, self.scale)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        """The surrogate derivative ``sigma'(x)`` (differentiable)."""
        return surrogate_derivative(x, self.id, self.scale)  # type: ignore[arg-type]

    def primitive(self, x: torch.Tensor) -> torch.Tensor:
        """The smooth function ``F`` with ``F' = sigma'`` and ``F(-inf) = 0``."""
        return surrogate_primitive(x, self.id, self.scale)  # type: ignore[arg-type]


class MemberSurrogate:
    """The surrogate of an ensemble whose members differ in its width: ``MemberSurrogate("atan", [2, 4, 8])``.

    ``name`` and ``id`` as :class:`Surrogate`; ``scales``: one positive scale per member (E of them).
    Calling it, :meth:`derivative` and :meth:`primitive` take member-first arrays (the member axis third from
    the end: ``[E, B, N]`` or ``[T, E, B, N]``) and use member ``e``'s scale on slice ``e``.
    :meth:`member` is member ``e``'s own :class:`Surrogate`.

    Raises:
        ValueError: an unknown name, no scales, or a scale that is not positive and finite.
    """

    def __init__(self, name: str, scales: Sequence[float]) -> None:
        members = [Surrogate(name, s) for s in scales]  # checks the name and each scale
        if not members:
            raise ValueError("MemberSurrogate needs one scale per member, got none")
        self.name = name
        self.scales = tuple(float(m.scale) for m in members)
        self._tensors: dict = {}

    @property
    def id(self) -> int:
        return SURROGATES[self.name][0]

    @property
    def members(self) -> int:
        return len(self.scales)

    def member(self, index: int) -> Surrogate:
        return Surrogate(self.name, self.scales[index])

    def scale_tensor(self, like: torch.Tensor) -> torch.Tensor:
        """The scales as ``[E, 1, 1]`` in ``like``'s dtype and on its device (made once per dtype and device)."""
        key = (like.dtype, like.device)
        t = self._tensors.get(key)
        if t is None:
            t = self._tensors[key] = torch.tensor(self.scales, dtype=like.dtype, device=like.device).view(-1, 1, 1)
        return t

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim < 3 or x.shape[-3] != len(self.scales):
            raise ValueError(f"a MemberSurrogate of {len(self.scales)} members needs member-first arrays [..., E, B, N] "
                             f"with E = {len(self.scales)}, got shape {tuple(x.shape)}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return _SurrogateSpike.apply(x, self.id, self.scale_tensor(x))

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return surrogate_derivative(x, self.id, self.scale_tensor(x))  # type: ignore[arg-type]

    def primitive(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return surrogate_primitive(x, self.id, self.scale_tensor(x))  # type: ignore[arg-type]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MemberSurrogate) and (self.name, self.scales) == (other.name, other.scales)

    def __hash__(self) -> int:
        return hash((self.name, self.scales))

    def __getstate__(self) -> dict:
        return {"name": self.name, "scales": self.scales}

    def __setstate__(self, state: dict) -> None:
        self.name, self.scales, self._tensors = state["name"], tuple(state["scales"]), {}

    def __repr__(self) -> str:
        return f"MemberSurrogate(name={self.name!r}, scales={list(self.scales)})"


SurrogateLike = Union[str, Surrogate, MemberSurrogate]


def get(surrogate: SurrogateLike = "atan", scale: float | None = None) -> Surrogate:
    """Return a :class:`Surrogate` from a name (with optional scale) or pass one through (a
    :class:`MemberSurrogate` too, when no scale is given)."""
    if isinstance(surrogate, MemberSurrogate):
        if scale is not None:
            raise ValueError("a MemberSurrogate has one scale per member; give it no other scale")
        return surrogate  # type: ignore[return-value]
    if isinstance(surrogate, Surrogate):
        if scale is not None and scale != surrogate.scale:
            return Surrogate(surrogate.name, scale)
        return surrogate
    if isinstance(surrogate, str):
        return Surrogate(surrogate, scale)
    raise TypeError(f"surrogate must be a name or a Surrogate, got {type(surrogate).__name__}")


def spike(x: torch.Tensor, surrogate: SurrogateLike = "atan", scale: float | None = None) -> torch.Tensor:
    """Heaviside spikes ``(x > 0)`` with the surrogate derivative in backward and forward mode."""
    return get(surrogate, scale)(x)
