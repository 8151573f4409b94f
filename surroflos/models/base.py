"""What a model must provide to be simulated, analysed and flossed.

A surroflos model is an ``nn.Module`` whose dynamics live in *pure functions*:

- ``step_function(x, state, params) -> (out, new_state)``: one time step; ``x: [B, n_in]``,
  ``state: [B, D]`` (a flat state vector), ``out``: the activity (rates or spikes).
- ``tangent_function(x, state, params, Q) -> D Q`` (optional): the Jacobian of ``new_state`` with
  respect to ``state`` at ``(x, state)`` applied to a block ``Q: [B, D, k]``. With spikes, the
  Heaviside derivative is replaced by the surrogate derivative. Models without it fall back to
  forward-mode AD of ``step_function`` (:func:`jvp_tangent`).
- ``params()``: the bundle of tensors the pure functions read (built from the module's parameters,
  so gradients flow back to them).
- ``initial_state(batch, ...)``, ``state_dim``, ``n_in`` and ``dt`` (time per step, the unit in which
  Lyapunov exponents are reported).

:class:`RecurrentModel` implements the shared parts (rollout over ``[T, B, n_in]``, input checks).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import math

import torch
from torch import nn

from .._random import rand, randn
from ..ensemble import check_generators, ensemble_size, stack_into

__all__ = ["RecurrentModel", "Rollout", "jvp_tangent", "check_inputs", "check_state_and_model", "member_generators"]

StepFn = Callable[[torch.Tensor, torch.Tensor, Any], "tuple[torch.Tensor, torch.Tensor]"]
TangentFn = Callable[[torch.Tensor, torch.Tensor, Any, torch.Tensor], torch.Tensor]


class Rollout(NamedTuple):
    """A simulated trajectory, time first.

    outputs: ``[T, B, n_out]`` readout; states: ``[T, B, D]`` state after each step;
    activity: ``[T, B, N]`` rates (rate models) or spikes (spiking models).
    """

    outputs: torch.Tensor
    states: torch.Tensor
    activity: torch.Tensor


def jvp_tangent(step_function: StepFn, x: torch.Tensor, state: torch.Tensor, params: Any,
                Q: torch.Tensor) -> torch.Tensor:
    """Tangent map by forward-mode AD: ``d new_state / d state`` applied to each column of ``Q``.

    Uses ``torch.func.jvp`` vectorised over the k columns with ``torch.func.vmap``; spike functions
    from :mod:`surroflos.surrogate` contribute their surrogate derivative. Differentiable in the
    tensors that ``params`` holds.
    """

    def new_state(s: torch.Tensor) -> torch.Tensor:
        return step_function(x, s, params)[1]

    def push(q: torch.Tensor) -> torch.Tensor:
        return torch.func.jvp(new_state, (state,), (q,))[1]

    return torch.func.vmap(push, in_dims=-1, out_dims=-1)(Q)


def member_generators(generator: Any, ensemble: Optional[int]) -> Optional[list]:
    """One generator (or ``None``) per member for a model built with ``ensemble=E`` (``None`` for a solo
    model). A list gives member ``e`` the ``e``-th generator, so that it equals the solo network built
    from it; a single generator (or ``None``: the global RNG) draws the members one after another."""
    if ensemble is None:
        return None
    if isinstance(ensemble, bool) or not isinstance(ensemble, int) or ensemble < 1:
        raise ValueError(f"ensemble must be a positive int (the number of members) or None, got {ensemble!r}")
    gens = check_generators(generator, ensemble)
    return gens if gens is not None else [generator] * ensemble


def check_inputs(x: torch.Tensor, n_in: int, *, what: str = "inputs", finite: bool = False,
                 ensemble: Optional[int] = None) -> None:
    """Raise a ValueError unless ``x`` is a floating tensor ``[T, B, n_in]`` (``[T, E, B, n_in]`` for an
    ensemble of ``E`` members), and finite if asked."""
    layout = "[T, B, n_in]" if ensemble is None else f"[T, E={ensemble}, B, n_in]"
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor of shape {layout}, got {type(x).__name__}")
    if x.ndim != (3 if ensemble is None else 4) or (ensemble is not None and x.shape[1] != ensemble):
        raise ValueError(f"{what} must have shape {layout} (time first), got shape {tuple(x.shape)}")
    if x.shape[-1] != n_in:
        raise ValueError(f"{what} have {x.shape[-1]} features in the last dimension, the model expects n_in={n_in}")
    if x.shape[0] < 1 or x.shape[-2] < 1:
        raise ValueError(f"{what} need at least one time step and one batch element, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{what} must be floating point, got dtype {x.dtype}")
    if finite and not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x)).nonzero()[0].tolist()
        raise ValueError(f"{what} contain NaN or inf (first at {'[t, b, i]' if ensemble is None else '[t, e, b, i]'}"
                         f" = {bad})")


def check_state_and_model(model: Any, x: torch.Tensor, state0: Optional[torch.Tensor]) -> None:
    """Raise a ValueError when ``state0`` or the model's parameters do not fit the inputs ``x``.

    ``state0`` must be ``[B, D]`` (``[E, B, D]`` for an ensemble) with the inputs' batch size, dtype and
    device; the model's floating parameters must share the inputs' dtype and device (no silent promotion
    or copies).
    """
    batch = x.shape[-2]
    E = getattr(model, "ensemble", None)
    if state0 is not None:
        lead = () if E is None else (E,)
        if not isinstance(state0, torch.Tensor) or tuple(state0.shape[:-2]) != lead or state0.ndim != 2 + len(lead) \
                or state0.shape[-1] != model.state_dim:
            want = f"[B, D] = [{batch}, {model.state_dim}]" if E is None else f"[E, B, D] = [{E}, {batch}, " \
                                                                             f"{model.state_dim}]"
            raise ValueError(f"state0 must be a tensor of shape {want}, "
                             f"got {getattr(state0, 'shape', type(state0).__name__)}")
        if state0.shape[-2] != batch:
            raise ValueError(f"state0 has batch size {state0.shape[-2]} but the inputs have {batch} "
                             "(a state from another batch?)")
        if state0.dtype != x.dtype or state0.device != x.device:
            raise ValueError(f"state0 is {state0.dtype} on {state0.device} but the inputs are {x.dtype} on "
                             f"{x.device}; convert one of them")
    if isinstance(model, nn.Module):
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if t.is_floating_point() and (t.dtype != x.dtype or t.device != x.device):
                raise ValueError(f"the inputs are {x.dtype} on {x.device} but the model's {name} is {t.dtype} on "
                                 f"{t.device}; use model.to(inputs.dtype / inputs.device) or convert the inputs")


class RecurrentModel(nn.Module):
    """Base class: a recurrent network given by pure step/tangent functions plus a readout."""

    n_in: int
    n_out: int
    dt: float

    # Subclasses set these to their pure functions (staticmethods).
    step_function: StepFn
    tangent_function: Optional[TangentFn] = None

    @property
    def ensemble(self) -> Optional[int]:
        """Number of members E of an ensemble (:mod:`surroflos.ensemble`), ``None`` for a solo network."""
        return ensemble_size(self)

    @property
    def state_dim(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def params(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def initial_state(self, batch: int, *, random: bool = False, generator: torch.Generator | None = None,
                      device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Zeros ``[batch, D]``, or a random state when ``random=True`` (see the subclass)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def readout(self, activity: torch.Tensor) -> torch.Tensor:
        """Map the activity trajectory ``[T, B, N]`` to outputs ``[T, B, n_out]``."""
        raise NotImplementedError  # pragma: no cover - abstract

    def tangent(self, x: torch.Tensor, state: torch.Tensor, Q: torch.Tensor, params: Any = None) -> torch.Tensor:
        """Apply the one-step tangent map at ``(x, state)`` to ``Q: [B, D, k]``."""
        p = self.params() if params is None else params
        if self.tangent_function is None:
            return jvp_tangent(self.step_function, x, state, p, Q)
        return self.tangent_function(x, state, p, Q)

    def step(self, x: torch.Tensor, state: torch.Tensor, params: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One time step ``(out, new_state)`` with the module's current parameters."""
        p = self.params() if params is None else params
        return self.step_function(x, state, p)

    def _init_network(self, n_in: int, n_hidden: int, n_out: int, *, g: float, input_scale: float, bias: bool,
                      generator: torch.Generator | None, device, dtype) -> torch.dtype:
        """Check the sizes and gain, then create the weights every model shares, seeded by ``generator``.

        ``weight_rec ~ N(0, g^2 / N)``, ``weight_in ~ N(0, input_scale^2)``, ``bias`` zeros (a buffer when
        ``bias=False``), and a linear readout ``readout_layer`` (uniform +-1/sqrt(N) weights, zero bias).
        Returns the dtype used.
        """
        for name, v in (("n_in", n_in), ("n_out", n_out)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be a non-negative int, got {v!r}")
        if isinstance(n_hidden, bool) or not isinstance(n_hidden, int) or n_hidden < 1:
            raise ValueError(f"n_hidden must be a positive int, got {n_hidden!r}")
        if not (math.isfinite(g) and g >= 0):
            raise ValueError(f"g must be a non-negative finite number, got {g!r}")
        self.n_in, self.n_hidden, self.n_out, self.g = n_in, n_hidden, n_out, float(g)
        dtype = dtype or torch.get_default_dtype()
        # Drawn where the generator lives, then moved: the same seed gives the same network on any device.
        J = randn(n_hidden, n_hidden, generator=generator, dtype=dtype) * (g / math.sqrt(n_hidden))
        W_in = randn(n_hidden, n_in, generator=generator, dtype=dtype) * input_scale
        self.weight_rec = nn.Parameter(J.to(device))
        self.weight_in = nn.Parameter(W_in.to(device))
        zeros = torch.zeros(n_hidden, dtype=dtype, device=device)
        if bias:
            self.bias = nn.Parameter(zeros)
        else:
            self.register_buffer("bias", zeros)
        self.readout_layer = nn.Linear(n_hidden, n_out, device=device, dtype=dtype)
        bound = 1.0 / math.sqrt(n_hidden)
        with torch.no_grad():  # seeded, unlike nn.Linear's own init which uses the global RNG
            self.readout_layer.weight.copy_(rand(n_out, n_hidden, generator=generator, dtype=dtype) * 2 * bound - bound)
            self.readout_layer.bias.zero_()
        return dtype

    def _init_ensemble(self, ensemble: Optional[int], generators: Optional[list],
                       make_member: Callable[[Any], "RecurrentModel"]) -> None:
        """Turn this freshly built solo network (member 0, drawn from ``generators[0]``) into an ensemble of
        ``ensemble`` members: member ``e`` is ``make_member(generators[e])``, a solo network built exactly as
        one would be on its own, and every tensor is stacked along a leading member axis."""
        if ensemble is None:
            return
        stack_into(self, [self] + [make_member(g) for g in generators[1:]])

    def _factory(self) -> dict:
        p = next(self.parameters())
        return {"device": p.device, "dtype": p.dtype}

    def rollout(self, x: torch.Tensor, state0: torch.Tensor | None = None) -> Rollout:
        """Simulate ``x: [T, B, n_in]`` (``[T, E, B, n_in]`` for an ensemble) and return outputs, states and
        activity (all time first)."""
        check_inputs(x, self.n_in, ensemble=self.ensemble)
        check_state_and_model(self, x, state0)
        batch = x.shape[-2]
        state = self.initial_state(batch, device=x.device, dtype=x.dtype) if state0 is None else state0
        p = self.params()
        step = self.step_function
        states, activity = [], []
        for t in range(x.shape[0]):
            out, state = step(x[t], state, p)
            states.append(state)
            activity.append(out)
        act = torch.stack(activity)
        return Rollout(self.readout(act), torch.stack(states), act)

    def _linear_readout(self, activity: torch.Tensor) -> torch.Tensor:
        """``readout_layer`` applied to ``[T, B, N]`` (solo: the layer itself) or ``[T, E, B, N]`` activity
        (ensemble: each member's weights ``[E, n_out, N]`` and bias ``[E, n_out]``)."""
        if self.ensemble is None:
            return self.readout_layer(activity)
        w, b = self.readout_layer.weight, self.readout_layer.bias
        return torch.matmul(activity, w.mT) + b.unsqueeze(-2)

    def forward(self, x: torch.Tensor, state0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``x: [T, B, n_in]`` -> ``(outputs [T, B, n_out], states [T, B, D])``."""
        r = self.rollout(x, state0)
        return r.outputs, r.states

    def flossing_parameters(self) -> list[nn.Parameter]:
        """Parameters that flossing updates by default: recurrent, input weights and bias."""
        names = ("weight_rec", "weight_in", "bias")
        return [p for n, p in self.named_parameters() if n in names and p.requires_grad]
