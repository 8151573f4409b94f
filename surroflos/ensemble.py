"""Ensembles: E independent networks of one shape, simulated, analysed and trained as one.

Grids of small networks (seeds x gains x ...) are what surroflos users run. An ensemble packs E members
into one model whose every tensor has a leading *member axis*, so one batched operation per time step
serves all members (on a CPU the per-step overhead of tiny networks is paid once; on a GPU one launch
fills the device).

Layout (member axis in front of the batch axis)::

    parameters   [E, ...]          each member's solo parameter shape behind the member axis
    inputs       [T, E, B, n_in]   time first, then member, then batch
    states       [E, B, D]         one step;  [T, E, B, D] over time
    outputs      [T, E, B, n_out]
    tangent      [E, B, D, k]      frames of lyapunov_spectrum; exponents [E, B, k]

Member ``e`` of an ensemble computes exactly what the solo model :func:`member` ``(ens, e)`` computes
(the pure step functions broadcast over the member axis). Build an ensemble from solo models with
:func:`stack` (each initialised from its own seed, so member ``e`` *is* that solo network) or with
``RateRNN(..., ensemble=E)`` / ``SpikingRNN(..., ensemble=E)``.

Members may differ in the values of any tensor (weights, and ``beta``, ``alpha``, ``threshold`` of
spiking networks, scalar or per neuron), in the initial gain ``g`` and in the width (scale) of their
surrogate (both kept per member: the model's ``surrogate`` becomes a tuple of the members' surrogates, and
its ``params()`` a :class:`surroflos.surrogate.MemberSurrogate`); settings that are not tensors (sizes,
``dt``, nonlinearity, neuron type, reset, the surrogate's kind, readout kind) must be equal. The fused
recurrent op takes one width per member on its PyTorch and CPU paths; its Triton kernels take one width,
so with ``backend="auto"`` such an ensemble runs the PyTorch path on a GPU.

Training (:func:`surroflos.train.train`): members may also differ in their learning rates. An optimiser of
stacked parameters has one learning rate, but Adam's step is linear in it (its moments do not depend on
it), so :class:`MemberUpdates` rescales each member's step by ``lr_e / lr`` after the optimiser's, which is
the step a solo optimiser at ``lr_e`` takes; :func:`surroflos.floss` takes one learning rate per member the
same way. :func:`select` takes some members as a smaller ensemble (a flossing bout of the members whose
flossing mode has it). ``TrainConfig.members`` and :func:`surroflos.train.ensemble_config` name each
member's settings (:data:`surroflos.train.MEMBER_FIELDS`); ``surroflos sweep`` packs grid points that
differ only in them.
"""

from __future__ import annotations

import copy
import math
from typing import Optional, Sequence

import torch
from torch import nn

__all__ = ["stack", "stack_into", "member", "select", "ensemble_size", "member_view", "check_generators",
           "draw_per_member", "MemberUpdates"]

# Attributes that may differ between members (kept per member as a tuple); the rest must be equal.
# (A surrogate may differ in its scale only: stack checks that the kind is shared.)
_PER_MEMBER_ATTRS = ("g", "surrogate")
# Module attributes that are not settings.
_IGNORED = ("training",)


def ensemble_size(model: nn.Module) -> Optional[int]:
    """E for an ensemble model (its recurrent weights are ``[E, N, N]``), ``None`` for a solo model."""
    w = getattr(model, "weight_rec", None)
    return int(w.shape[0]) if isinstance(w, torch.Tensor) and w.ndim == 3 else None


def member_view(t: torch.Tensor, ensemble: Optional[int]) -> torch.Tensor:
    """A per-member scalar ``[E]`` or per-neuron ``[E, N]`` parameter as ``[E, 1, 1]`` / ``[E, 1, N]``, which
    broadcasts against states ``[E, B, N]``; solo parameters are returned as they are."""
    if ensemble is None:
        return t
    return t.reshape(ensemble, 1, -1) if t.ndim == 2 else t.reshape(ensemble, 1, 1)


def check_generators(generator, ensemble: Optional[int]) -> Optional[list]:
    """``generator`` as a list of E generators (one per member) or ``None``; a single generator (or None)
    is allowed for solo models only, and for ensembles where members need not match solo runs."""
    if generator is None or isinstance(generator, torch.Generator):
        return None
    gens = list(generator)
    if ensemble is None:
        raise ValueError("a list of generators is for ensembles (one per member); this model is not one")
    if len(gens) != ensemble or not all(isinstance(g, torch.Generator) for g in gens):
        raise ValueError(f"generator must be a torch.Generator or a list of {ensemble} (one per member), "
                         f"got {len(gens)} items")
    return gens


def draw_per_member(draw, generator, ensemble: Optional[int]) -> torch.Tensor:
    """``draw(g)`` for a solo model; for an ensemble the stack of ``draw(g_e)`` over its members' generators
    (a list, so that member e draws what a solo run with g_e draws) or of E draws from one generator."""
    if ensemble is None:
        return draw(generator)
    gens = check_generators(generator, ensemble) or [generator] * ensemble
    return torch.stack([draw(g) for g in gens])


def _settings(model: nn.Module) -> dict:
    return {k: v for k, v in vars(model).items()
            if not k.startswith("_") and k not in _IGNORED and k not in _PER_MEMBER_ATTRS}


def _tensors(model: nn.Module) -> dict:
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def _replace(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Set the parameter or buffer ``name`` (dotted) of ``module`` to ``value``, keeping its kind."""
    *path, leaf = name.split(".")
    owner = module.get_submodule(".".join(path)) if path else module
    if leaf in owner._parameters:
        old = owner._parameters[leaf]
        owner._parameters[leaf] = nn.Parameter(value, requires_grad=old.requires_grad)
    else:
        owner._buffers[leaf] = value


def stack(models: Sequence[nn.Module]) -> nn.Module:
    """The ensemble whose member ``e`` is ``models[e]``: same class, every parameter and buffer stacked
    along a new leading member axis.

    Raises:
        ValueError: fewer than one model, models of different classes, sizes or settings, or a model
            that is already an ensemble.
    """
    models = list(models)
    if not models:
        raise ValueError("stack needs at least one model")
    first = models[0]
    for i, m in enumerate(models):
        if type(m) is not type(first):
            raise ValueError(f"member {i} is a {type(m).__name__}, member 0 a {type(first).__name__}")
        if ensemble_size(m) is not None:
            raise ValueError(f"member {i} is already an ensemble")
        if not hasattr(type(m), "step_function") or getattr(m, "weight_rec", None) is None:
            raise ValueError(f"{type(m).__name__} has no dense recurrent weights to stack")
        tm, t0 = _tensors(m), _tensors(first)
        if {k: tuple(v.shape) for k, v in tm.items()} != {k: tuple(v.shape) for k, v in t0.items()}:
            raise ValueError(f"member {i} has other tensor shapes than member 0")
        if _settings(m) != _settings(first):
            diff = sorted(k for k in _settings(first) if _settings(m).get(k) != _settings(first)[k])
            raise ValueError(f"member {i} differs from member 0 in {diff}; only tensors (weights, beta, alpha, "
                             "threshold), g and the surrogate's width may differ between members")
        kinds = [getattr(getattr(x, "surrogate", None), "name", None) for x in (first, m)]
        if kinds[0] != kinds[1]:
            raise ValueError(f"member {i}'s surrogate is {kinds[1]!r}, member 0's {kinds[0]!r}; members may differ "
                             "in the surrogate's width (scale) but not in its kind")
    return stack_into(copy.deepcopy(first), models)


def stack_into(target: nn.Module, models: Sequence[nn.Module]) -> nn.Module:
    """Replace every tensor of ``target`` by the stack of the members' (no checks: :func:`stack` checks)."""
    tensors = [_tensors(m) for m in models]
    with torch.no_grad():
        for name in tensors[0]:
            _replace(target, name, torch.stack([t[name].detach() for t in tensors]).clone())
    for attr in _PER_MEMBER_ATTRS:
        if hasattr(models[0], attr):
            values = tuple(getattr(m, attr) for m in models)
            setattr(target, attr, values[0] if len(set(values)) == 1 else values)
    return target


def _take(model: nn.Module, index) -> nn.Module:
    """A copy of ``model`` with every tensor and per-member attribute indexed by ``index`` along the member axis:
    an int gives a solo model, a list of ints a smaller ensemble (in that order)."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for name, t in _tensors(model).items():
            _replace(out, name, t.detach()[index].clone())
    for attr in _PER_MEMBER_ATTRS:
        values = getattr(out, attr, None)
        if isinstance(values, tuple):
            setattr(out, attr, values[index] if isinstance(index, int) else tuple(values[i] for i in index))
    return out


def member(model: nn.Module, index: int) -> nn.Module:
    """Member ``index`` of an ensemble as a solo model (a copy: training it leaves the ensemble alone)."""
    E = ensemble_size(model)
    if E is None:
        raise ValueError(f"{type(model).__name__} is not an ensemble")
    if isinstance(index, bool) or not isinstance(index, int) or not -E <= index < E:
        raise ValueError(f"member index must be an int in [-{E}, {E}), got {index!r}")
    return _take(model, index)


def select(model: nn.Module, indices: Sequence[int]) -> nn.Module:
    """The ensemble of members ``indices`` of ``model`` (a copy, in that order): member ``j`` of the result
    is member ``indices[j]`` of ``model``."""
    E = ensemble_size(model)
    if E is None:
        raise ValueError(f"{type(model).__name__} is not an ensemble")
    idx = list(indices)
    if not idx or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < E for i in idx):
        raise ValueError(f"indices must be members in [0, {E}), at least one, got {indices!r}")
    return _take(model, idx)


class MemberUpdates:
    """Per-member gradient clipping and stopping around an optimiser of ensemble parameters.

    Optimisers such as Adam act element by element, so on stacked parameters ``[E, ...]`` they update each
    member exactly as a solo optimiser would; what couples members is gradient-norm clipping (done here
    per member, as ``torch.nn.utils.clip_grad_norm_`` does for one network) and a member that diverges
    (stopped here: its gradients are zeroed and its parameters put back after every step, so the others
    go on undisturbed).

    Per-member learning rates: an optimiser of stacked parameters has one learning rate, but the step of
    Adam (and of SGD, RMSprop, ...: every optimiser whose step is ``lr`` times a direction computed from the
    gradients and its state) is linear in ``lr``, and its state does not depend on ``lr``. With
    ``lr_scale[e] = lr_e / lr`` (``lr``: the optimiser's), :meth:`step_` rescales member e's step after the
    optimiser's, ``p_e <- p_e + lr_scale[e] (p_e' - p_e)``, which is the step of a solo optimiser with
    ``lr_e`` (to rounding: one subtraction and one product more). Members with scale 1 keep the
    optimiser's step untouched.

    Args:
        params: the ensemble's parameters being optimised, each with a leading member axis.
        members: E.
        lr_scale: ``None`` (every member at the optimiser's learning rate) or E positive factors.
    """

    def __init__(self, params, members: int, lr_scale: Optional[Sequence[float]] = None) -> None:
        self.params = [p for p in params]
        for p in self.params:
            if p.ndim == 0 or p.shape[0] != members:
                raise ValueError(f"every parameter needs a leading member axis of size {members}, got {tuple(p.shape)}")
        self.members = members
        self._saved: dict[int, list[torch.Tensor]] = {}
        self.reasons: dict[int, str] = {}
        self.lr_scale: Optional[list[float]] = None
        if lr_scale is not None:
            scale = [float(v) for v in lr_scale]
            if len(scale) != members or not all(math.isfinite(v) and v > 0 for v in scale):
                raise ValueError(f"lr_scale must be {members} positive numbers (one per member), got {lr_scale!r}")
            self.lr_scale = None if all(v == 1.0 for v in scale) else scale

    @property
    def stopped(self) -> list[int]:
        return sorted(self._saved)

    @property
    def active(self) -> torch.Tensor:
        """``[E]`` bool: members still being updated."""
        mask = torch.ones(self.members, dtype=torch.bool)
        mask[self.stopped] = False
        return mask

    def stop(self, member: int, reason: str) -> None:
        """Freeze ``member`` at its current parameters (call before the update that would move it)."""
        if member not in self._saved:
            self._saved[member] = [p.detach()[member].clone() for p in self.params]
            self.reasons[member] = reason

    def clip_(self, max_norm: Optional[float]) -> None:
        """Zero the stopped members' gradients, then clip each member's gradient norm to ``max_norm``."""
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            return
        if self._saved:
            idx = self.stopped
            for g in grads:
                g[idx] = 0
        if max_norm is None:
            return
        norms = torch.stack([torch.linalg.vector_norm(g.reshape(self.members, -1), dim=1) for g in grads])
        total = torch.linalg.vector_norm(norms, dim=0)  # [E], as clip_grad_norm_ combines per-tensor norms
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        for g in grads:
            g.mul_(coef.view(-1, *([1] * (g.ndim - 1))))

    def restore_(self) -> None:
        """Put the stopped members' parameters back (after the optimiser's step)."""
        with torch.no_grad():
            for member, saved in self._saved.items():
                for p, v in zip(self.params, saved):
                    p[member] = v

    def step_(self, optimizer: torch.optim.Optimizer, max_norm: Optional[float] = None) -> None:
        """One update of every member still going: :meth:`clip_`, ``optimizer.step()`` with each member's
        step rescaled to its learning rate (``lr_scale``), then :meth:`restore_`."""
        self.clip_(max_norm)
        if self.lr_scale is None:
            optimizer.step()
        else:
            with torch.no_grad():
                before = [p.detach().clone() for p in self.params]
            optimizer.step()
            with torch.no_grad():
                for p, old in zip(self.params, before):
                    scale = torch.tensor(self.lr_scale, dtype=p.dtype, device=p.device)
                    scale = scale.view(-1, *([1] * (p.ndim - 1)))
                    moved = old + scale * (p - old)
                    keep = (scale == 1.0).expand_as(p)  # members at the optimiser's rate: its step as it is
                    p.copy_(torch.where(keep, p, moved))
        self.restore_()
