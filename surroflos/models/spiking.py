"""Recurrent spiking networks with snnTorch semantics and their surrogate tangent maps.

LIF (snnTorch ``Leaky`` driven by the recurrent current ``W S[t-1]``; identical to ``RLeaky`` for the
subtract reset, while for ``reset="zero"`` ``RLeaky`` zeroes the whole update ``(1 - R)(beta U + I)``
and we follow ``Leaky``, which zeroes only the old membrane), state ``U: [B, N]``; spikes are read
off the state, ``S[t] = H(U[t] - theta)``::

    I[t]  = W_in x[t] + W S[t-1] + b
    R[t]  = S[t-1]                                (detached by default, like snnTorch's mem_reset)
    U[t]  = beta U[t-1] + I[t] - R[t] theta       reset="subtract"
    U[t]  = beta (1 - R[t]) U[t-1] + I[t]         reset="zero"

Current-based neuron (snnTorch ``RSynaptic``), flat state ``[syn | mem]: [B, 2N]``::

    syn[t] = alpha syn[t-1] + I[t]
    mem[t] = beta mem[t-1] + syn[t] - R[t] theta  reset="subtract"
    mem[t] = (1 - R[t]) (beta mem[t-1] + syn[t])  reset="zero" (snnTorch zeroes the whole update)

``beta`` and ``alpha`` are clamped to [0, 1] as in snnTorch. The surrogate tangent map replaces
``H'`` by the surrogate derivative ``sigma'``; with ``c = 0`` for a detached reset and 1 otherwise::

    dU[t]/dU[t-1] = beta I + (W - c theta I) diag(sigma'(U[t-1] - theta))          (subtract)
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import nn

from .. import surrogate as sg
from .._random import rand
from ..kernels.backend import check_backend
from ..kernels.recurrent import spiking_rnn_sequence
from ..kernels.spike_linear import spike_linear
from ..ensemble import draw_per_member, member_view
from .base import RecurrentModel, Rollout, check_inputs, check_state_and_model, member_generators
from .rate import batched_weight

__all__ = ["SpikingParams", "lif_step", "lif_tangent", "cuba_step", "cuba_tangent", "SpikingRNN",
           "NEURONS", "RESETS", "READOUTS", "membrane_time_constant"]


def membrane_time_constant(beta: float) -> float:
    """The membrane time constant in steps of a leak ``beta`` per step: ``tau_m = -1 / log(beta)``, so that
    ``beta = exp(-1 / tau_m)`` (4.48 steps at beta 0.8). ``inf`` for ``beta >= 1`` (no leak), 0 for ``beta <= 0``."""
    if beta >= 1:
        return math.inf
    return 0.0 if beta <= 0 else -1.0 / math.log(beta)

NEURONS = ("lif", "cuba")
RESETS = ("subtract", "zero")
READOUTS = ("linear", "leaky")


class SpikingParams(NamedTuple):
    """Tensors and settings read by the LIF / current-based step and tangent functions."""

    weight_rec: torch.Tensor  # W [N, N]
    weight_in: torch.Tensor  # W_in [N, n_in]
    bias: torch.Tensor  # [N]
    beta: torch.Tensor  # scalar or [N], already clamped to [0, 1]
    alpha: Optional[torch.Tensor]  # scalar or [N] (cuba only), clamped
    threshold: torch.Tensor  # scalar or [N]
    surrogate: sg.Surrogate | sg.MemberSurrogate  # MemberSurrogate: an ensemble of members of other widths
    reset: str
    detach_reset: bool
    smooth: bool  # forward uses the surrogate's primitive instead of the Heaviside step


def _fire(v: torch.Tensor, p: SpikingParams) -> torch.Tensor:
    """Spikes of the shifted membrane ``v = U - theta`` (or the smooth primitive)."""
    return p.surrogate.primitive(v) if p.smooth else p.surrogate(v)


def _current(x: torch.Tensor, spk_prev: torch.Tensor, p: SpikingParams) -> torch.Tensor:
    return x @ p.weight_in.mT + spk_prev @ p.weight_rec.mT + p.bias


def lif_step(x: torch.Tensor, U: torch.Tensor, p: SpikingParams) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the recurrent LIF network: ``(S[t], U[t])`` from ``x[t]`` and ``U[t-1]``."""
    spk_prev = _fire(U - p.threshold, p)
    R = spk_prev.detach() if p.detach_reset else spk_prev
    current = _current(x, spk_prev, p)
    if p.reset == "subtract":
        U_new = p.beta * U + current - R * p.threshold
    else:
        U_new = p.beta * (1.0 - R) * U + current
    return _fire(U_new - p.threshold, p), U_new


def lif_tangent(x: torch.Tensor, U: torch.Tensor, p: SpikingParams, Q: torch.Tensor) -> torch.Tensor:
    """``dU[t]/dU[t-1] Q`` with the surrogate derivative; ``Q: [B, N, k]``."""
    v = U - p.threshold
    d = p.surrogate.derivative(v).unsqueeze(-1)  # [B, N, 1]
    beta = p.beta.unsqueeze(-1) if p.beta.ndim else p.beta
    out = torch.matmul(batched_weight(p.weight_rec), d * Q)
    if p.reset == "subtract":
        out = out + beta * Q
        if not p.detach_reset:
            theta = p.threshold.unsqueeze(-1) if p.threshold.ndim else p.threshold
            out = out - theta * d * Q
    else:
        R = _fire(v, p).unsqueeze(-1)
        out = out + beta * (1.0 - R) * Q
        if not p.detach_reset:
            out = out - beta * U.unsqueeze(-1) * d * Q
    return out


def cuba_step(x: torch.Tensor, state: torch.Tensor, p: SpikingParams) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the recurrent current-based network; ``state = [syn | mem]: [B, 2N]``."""
    syn, mem = state.chunk(2, dim=-1)
    spk_prev = _fire(mem - p.threshold, p)
    R = spk_prev.detach() if p.detach_reset else spk_prev
    syn_new = p.alpha * syn + _current(x, spk_prev, p)
    if p.reset == "subtract":
        mem_new = p.beta * mem + syn_new - R * p.threshold
    else:
        mem_new = (1.0 - R) * (p.beta * mem + syn_new)
    return _fire(mem_new - p.threshold, p), torch.cat([syn_new, mem_new], dim=-1)


def cuba_tangent(x: torch.Tensor, state: torch.Tensor, p: SpikingParams, Q: torch.Tensor) -> torch.Tensor:
    """The 2x2-block surrogate Jacobian of :func:`cuba_step` applied to ``Q: [B, 2N, k]``."""
    syn, mem = state.chunk(2, dim=-1)
    Qs, Qm = Q.chunk(2, dim=-2)
    v = mem - p.threshold
    d = p.surrogate.derivative(v).unsqueeze(-1)
    col = lambda t: t.unsqueeze(-1) if t.ndim else t  # noqa: E731 - per-neuron params as column
    dsyn = col(p.alpha) * Qs + torch.matmul(batched_weight(p.weight_rec), d * Qm)
    if p.reset == "subtract":
        dmem = col(p.beta) * Qm + dsyn
        if not p.detach_reset:
            dmem = dmem - col(p.threshold) * d * Qm
    else:
        R = _fire(v, p).unsqueeze(-1)
        dmem = (1.0 - R) * (col(p.beta) * Qm + dsyn)
        if not p.detach_reset:
            spk_prev = _fire(v, p)
            pre = p.beta * mem + p.alpha * syn + _current(x, spk_prev, p)  # beta mem + syn_new
            dmem = dmem - pre.unsqueeze(-1) * d * Qm
    return torch.cat([dsyn, dmem], dim=-2)


def _as_param(value, n: int, learn: bool, name: str, dtype, device, low: float | None = None,
              high: float | None = None) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=dtype).to(device).clone()
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != n):
        raise ValueError(f"{name} must be a scalar or have shape [{n}] (one per neuron), got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if low is not None and bool((t < low).any()) or high is not None and bool((t > high).any()):
        raise ValueError(f"{name} must lie in [{low}, {high}], got {value!r}")
    return nn.Parameter(t) if learn else t


class SpikingRNN(RecurrentModel):
    """Recurrent spiking network (LIF or current-based) with snnTorch semantics and a readout.

    Args:
        n_in, n_hidden, n_out: sizes.
        neuron: ``"lif"`` (snnTorch ``Leaky`` + recurrent current; see the module docstring for the
            zero reset) or ``"cuba"`` (snnTorch ``RSynaptic``).
        beta: membrane decay, scalar or per neuron ``[N]`` (clamped to [0, 1]).
        alpha: synaptic decay for ``"cuba"``, scalar or ``[N]``.
        threshold: firing threshold, scalar or ``[N]``.
        reset: ``"subtract"`` or ``"zero"``; the reset uses the previous step's spike (snnTorch's
            ``reset_delay=True``).
        detach_reset: detach the reset from the graph (snnTorch's behaviour, default True).
        surrogate: name or :class:`~surroflos.surrogate.Surrogate` (default snnTorch's ``atan``); for an
            ensemble also a :class:`~surroflos.surrogate.MemberSurrogate` (one width per member). An ensemble
            whose members differ in width keeps ``surrogate`` as the tuple of their surrogates.
        learn_beta, learn_alpha, learn_threshold: make those parameters trainable.
        g: recurrent weights ``W ~ N(0, g^2 / N)``; input weights ``N(0, input_scale^2)``.
        readout: ``"linear"`` (``W_out S + b``) or ``"leaky"`` (a leaky integrator with decay
            ``readout_beta``: ``y[t] = readout_beta y[t-1] + W_out S[t] + b``).
        smooth: replace the Heaviside forward by the surrogate's primitive, which makes the exact
            Jacobian equal the surrogate tangent map (for validating surrogate exponents against
            brute-force perturbation growth). Use ``detach_reset=False`` with it.
        dt: duration of one step (exponents are reported per ``dt``; default 1 = per step).
        ensemble: ``None`` (one network) or E, the number of members of an ensemble
            (:mod:`surroflos.ensemble`): parameters ``[E, ...]``, inputs ``[T, E, B, n_in]``; ``generator``
            may then be a list of E generators (member e equals the network built alone from the e-th).
            Members with different ``beta``/``alpha``/``threshold`` come from :func:`surroflos.ensemble.stack`.
        backend: how :meth:`rollout` (and ``forward``) runs the sequence: ``"auto"`` (fused Triton
            kernels for CUDA inputs; on the CPU the compiled spike-sparse forward from N = 512 neurons, the
            fused PyTorch op below), ``"torch"``, ``"triton"`` or ``"cpu"``; see
            :func:`surroflos.kernels.recurrent.spiking_rnn_sequence`. ``smooth=True`` always uses the
            step loop. Single steps, tangent maps and Lyapunov spectra use the step functions.
    """

    def __init__(self, n_in: int, n_hidden: int, n_out: int, *, neuron: str = "lif", beta=0.9, alpha=0.8,
                 threshold=1.0, reset: str = "subtract", detach_reset: bool = True,
                 surrogate: sg.SurrogateLike = "atan", learn_beta: bool = False, learn_alpha: bool = False,
                 learn_threshold: bool = False, g: float = 1.0, input_scale: float = 1.0, bias: bool = True,
                 readout: str = "linear", readout_beta: float = 0.9, smooth: bool = False, dt: float = 1.0,
                 generator: torch.Generator | None = None, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, backend: str = "auto", ensemble: int | None = None) -> None:
        super().__init__()
        per_member = surrogate if isinstance(surrogate, sg.MemberSurrogate) else None
        if per_member is not None:  # one width per member: member e is built with its own Surrogate below
            if ensemble != per_member.members:
                raise ValueError(f"a MemberSurrogate of {per_member.members} widths is for an ensemble of as many "
                                 f"members, got ensemble={ensemble!r}")
            surrogate = per_member.member(0)
        gens = member_generators(generator, ensemble)
        solo_generator = gens[0] if gens else generator
        self.backend = check_backend(backend)
        for name, v, allowed in (("neuron", neuron, NEURONS), ("reset", reset, RESETS), ("readout", readout, READOUTS)):
            if v not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {v!r}")
        if not (math.isfinite(dt) and dt > 0):
            raise ValueError(f"dt must be positive, got {dt!r}")
        if not (0.0 <= readout_beta <= 1.0):
            raise ValueError(f"readout_beta must lie in [0, 1], got {readout_beta!r}")
        dtype = self._init_network(n_in, n_hidden, n_out, g=g, input_scale=input_scale, bias=bias,
                                   generator=solo_generator, device=device, dtype=dtype)
        self.neuron, self.reset, self.detach_reset = neuron, reset, bool(detach_reset)
        self.surrogate = sg.get(surrogate)
        self.smooth, self.dt = bool(smooth), float(dt)
        self.readout_kind, self.readout_beta = readout, float(readout_beta)
        # Parameters or buffers, so .to()/state_dict carry them either way.
        for name, value, learn, lo, hi in (("beta", beta, learn_beta, 0.0, 1.0),
                                           ("alpha", alpha, learn_alpha, 0.0, 1.0),
                                           ("threshold", threshold, learn_threshold, None, None)):
            t = _as_param(value, n_hidden, learn, name, dtype, device, lo, hi)
            if isinstance(t, nn.Parameter):
                self.register_parameter(name, t)
            else:
                self.register_buffer(name, t)
        if not bool((self.threshold > 0).all()):
            raise ValueError(f"threshold must be positive, got {threshold!r}")
        self._init_ensemble(ensemble, gens, lambda gen: SpikingRNN(
            n_in, n_hidden, n_out, neuron=neuron, beta=beta, alpha=alpha, threshold=threshold, reset=reset,
            detach_reset=detach_reset, surrogate=surrogate, learn_beta=learn_beta, learn_alpha=learn_alpha,
            learn_threshold=learn_threshold, g=g, input_scale=input_scale, bias=bias, readout=readout,
            readout_beta=readout_beta, smooth=smooth, dt=dt, generator=gen, device=device, dtype=dtype,
            backend=backend))
        if per_member is not None and len(set(per_member.scales)) > 1:
            self.surrogate = tuple(per_member.member(e) for e in range(per_member.members))

    @property
    def step_function(self):  # type: ignore[override]
        return lif_step if self.neuron == "lif" else cuba_step

    @property
    def tangent_function(self):  # type: ignore[override]
        return lif_tangent if self.neuron == "lif" else cuba_tangent

    @property
    def state_dim(self) -> int:
        return self.n_hidden if self.neuron == "lif" else 2 * self.n_hidden

    def params(self) -> SpikingParams:
        E = self.ensemble
        surrogate = self.surrogate
        if isinstance(surrogate, tuple):  # an ensemble whose members differ in the surrogate's width
            surrogate = sg.MemberSurrogate(surrogate[0].name, [s.scale for s in surrogate])
        return SpikingParams(self.weight_rec, self.weight_in, member_view(self.bias, E),
                             member_view(self.beta.clamp(0.0, 1.0), E),
                             member_view(self.alpha.clamp(0.0, 1.0), E) if self.neuron == "cuba" else None,
                             member_view(self.threshold, E), surrogate, self.reset, self.detach_reset,
                             self.smooth)

    def initial_state(self, batch: int, *, random: bool = False, generator: torch.Generator | None = None,
                      device=None, dtype=None) -> torch.Tensor:
        """Zeros ``[B, D]`` (``[E, B, D]``), or (``random=True``) membranes uniform in ``[0, threshold)`` and
        zero synaptic current; for an ensemble ``generator`` may be a list with one generator per member."""
        f = self._factory()
        device, dtype = device or f["device"], dtype or f["dtype"]
        lead = () if self.ensemble is None else (self.ensemble,)
        state = torch.zeros(*lead, batch, self.state_dim, device=device, dtype=dtype)
        if random:
            u = draw_per_member(lambda g: rand(batch, self.n_hidden, generator=g, dtype=dtype), generator,
                                self.ensemble).to(device)
            state[..., -self.n_hidden:] = u * member_view(self.threshold.detach(), self.ensemble)
        return state

    def rollout(self, x: torch.Tensor, state0: torch.Tensor | None = None) -> Rollout:
        """Simulate ``x: [T, B, n_in]`` (ensemble: ``[T, E, B, n_in]``): outputs, states and spikes, as the step
        loop computes them.

        Unless ``smooth``, the drive ``x W_in^T`` of all steps is one GEMM (ensemble: one batched GEMM, each
        member's inputs times its ``W_in``) and the recurrence runs in the fused sequence op (backend
        ``self.backend``, resolved against the inputs' device; an ensemble's members in the same op), whose
        PyTorch path repeats the step loop's floating-point operations in the same order.
        """
        if self.smooth:
            return super().rollout(x, state0)
        ens = self.ensemble
        check_inputs(x, self.n_in, ensemble=ens)
        check_state_and_model(self, x, state0)
        state = self.initial_state(x.shape[-2], device=x.device, dtype=x.dtype) if state0 is None else state0
        p = self.params()
        # x W_in^T for all steps in one GEMM; b goes in separately, added where _current adds it.
        # (An ensemble's parameters come as member views [E, 1, 1] / [E, 1, N], which the op accepts.)
        x_in = torch.matmul(x, p.weight_in.T if ens is None else p.weight_in.mT)
        spikes, states = spiking_rnn_sequence(
            x_in, p.weight_rec, state, neuron=self.neuron, beta=p.beta, alpha=p.alpha, threshold=p.threshold,
            surrogate=p.surrogate, reset=p.reset, detach_reset=p.detach_reset, bias=p.bias,
            backend=getattr(self, "backend", "auto"))  # (modules pickled before the attribute existed)
        return Rollout(self.readout(spikes, spiking=True), states, spikes)

    def readout(self, activity: torch.Tensor, *, spiking: bool = False) -> torch.Tensor:
        """The readout of an activity trajectory ``[T, B, N]`` (ensemble ``[T, E, B, N]``). ``spiking=True``
        promises that every entry is 0 or 1 (the rollout's own spikes): the linear map then keeps them as
        bytes for the backward (:func:`surroflos.kernels.spike_linear.spike_linear`), not as numbers."""
        if spiking:
            w, b = self.readout_layer.weight, self.readout_layer.bias
            drive = spike_linear(activity, w, b)
        else:
            drive = self._linear_readout(activity)
        if self.readout_kind == "linear":
            return drive
        y, out = torch.zeros_like(drive[0]), []
        for t in range(drive.shape[0]):
            y = self.readout_beta * y + drive[t]
            out.append(y)
        return torch.stack(out)

    def spikes(self, states: torch.Tensor) -> torch.Tensor:
        """Spikes ``H(U - theta)`` read off a state trajectory ``[..., D]`` (no gradient)."""
        mem = states[..., -self.n_hidden:]
        return (mem > member_view(self.threshold, self.ensemble)).to(states.dtype)

    def extra_repr(self) -> str:
        return (f"n_in={self.n_in}, n_hidden={self.n_hidden}, n_out={self.n_out}, neuron={self.neuron!r}, "
                f"reset={self.reset!r}, detach_reset={self.detach_reset}, surrogate={self.surrogate}, "
                f"smooth={self.smooth}, dt={self.dt}, backend={self.backend!r}"
                + ("" if self.ensemble is None else f", ensemble={self.ensemble}"))
