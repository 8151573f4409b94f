"""Drop-in snnTorch neurons with a whole-sequence path.

:class:`Leaky`, :class:`Synaptic`, :class:`RLeaky` and :class:`RSynaptic` subclass the snnTorch 1.0
classes of the same name: same constructor, same single-step call (``spk, mem = lif(x, mem)``,
inherited unchanged), and ``isinstance(layer, snntorch.Leaky)`` holds, so snnTorch's own utilities
(``snntorch.export_nir``, ``reset_hidden``, ...) still recognise them. On top of that each layer has

``layer.sequence(x, state=None, backend="auto")``
    runs a whole sequence ``x: [T, B, ...]`` (time first) and returns the spike sequence and the state
    sequences, all ``[T, B, ...]``. ``Leaky`` and ``Synaptic`` run the fused whole-sequence neurons of
    :mod:`surroflos.kernels.lif`, ``RLeaky`` and ``RSynaptic`` the fused recurrent network of
    :mod:`surroflos.kernels.recurrent` (PyTorch, or Triton with ``backend="triton"`` / ``"auto"`` on
    CUDA) where those can express the layer (see below); otherwise ``sequence`` is a plain PyTorch
    loop over the pure step functions of this module (:func:`leaky_step`, :func:`synaptic_step`,
    :func:`rleaky_step`, :func:`rsynaptic_step`), and ``backend="triton"`` raises NotImplementedError
    naming what the kernel lacks. Both reproduce snnTorch's single step: values, spikes and gradients
    match a loop over ``layer(x[t], ...)``. ``sequence`` neither reads nor writes the hidden state
    stored on the module (``layer.mem`` etc.); the initial state is ``state`` (zeros when omitted,
    like ``reset_mem()``).

What the kernels express. ``Leaky``/``Synaptic``: a recognised surrogate (below), a constant
``graded_spikes_factor``, scalar or per-neuron ``[N]`` parameters. ``RLeaky``/``RSynaptic``: a
recognised surrogate, reset ``"subtract"`` or ``"zero"``, the delayed reset (``reset_delay=True``;
RSynaptic ignores it anyway), ``graded_spikes_factor`` the constant 1, scalar or ``[N]`` parameters,
and a recurrent ``nn.Linear(N, N)`` (``all_to_all=True``) or one-to-one ``V`` (scalar or ``[N]``, run
as the ``N x N`` matrix ``diag(V)``) without forward hooks. Then RLeaky-subtract is the network's
LIF neuron, RLeaky-zero (which zeroes the whole update ``beta mem + x + rec(spk)``) its
current-based neuron with ``alpha = 0``, and RSynaptic its current-based neuron, with ``W`` the
recurrent weight and the recurrent bias added to the current. Any given ``spk0`` works (it need not
be ``H(mem0 - theta)`` and may require grad). The kernel adds the terms of a step in another order
than snnTorch: in float32 its states agree with snnTorch's to a few ulps and its gradients to a few
1e-5 of their scale (high surrogate slopes amplify the ulps); in float64 states and gradients agree
to ~1e-13. For the same reason (CPU GEMMs also round by operand alignment) a sequence continued
from ``(spk[-1], mem[-1])`` equals the unsplit one up to rounding, not bit for bit.

- ``Leaky``: ``state = mem``; returns ``(spk, mem)``; replays ``lif(x[t], mem)``.
- ``Synaptic``: ``state = (syn, mem)``; returns ``(spk, syn, mem)``; replays ``lif(x[t], syn, mem)``.
- ``RLeaky``: ``state = (spk, mem)``; returns ``(spk, mem)``; replays ``lif(x[t], spk, mem)``.
- ``RSynaptic``: ``state = (spk, syn, mem)``; returns ``(spk, syn, mem)``; replays
  ``lif(x[t], spk, syn, mem)``.

State entries are ``[B, ...]`` (the shape of one time step of ``x``), outputs ``[T, B, ...]``.
The recurrent layers carry the previous output spikes ``spk`` in their state because snnTorch feeds
the *stored* spikes back (with ``reset_delay=False`` they are not a function of the stored membrane).
Any entry of a state tuple may be ``None`` (zeros). To continue a sequence pass the last entries,
e.g. ``state=(spk[-1], mem[-1])``.

Semantics of one step (``R = H(mem - theta)`` of the *previous* membrane, detached like snnTorch's
``mem_reset``; ``beta``/``alpha`` clamped to [0, 1]; ``g`` the ``graded_spikes_factor``; ``rec`` the
layer's ``recurrent`` module)::

    Leaky     subtract: m = beta mem + x - R theta     zero: m = beta (1 - R) mem + x
    Synaptic  s = alpha syn + x;         b = beta mem + s
    RLeaky    b = beta mem + x + rec(spk)
    RSynaptic s = alpha syn + x + rec(spk); b = beta mem + s
              (Synaptic, RLeaky, RSynaptic) subtract: m = b - R theta    zero: m = b - R b
    none:     no reset.      Output spike: spk = g H(m - theta)
    reset_delay=False: m <- m - (spk / g - R) theta (subtract) or m - (spk / g - R) m (zero); this
              immediate reset is *not* detached (the gradient flows through spk, as in snnTorch).

Surrogates: snnTorch's ``atan``, ``fast_sigmoid`` and ``sigmoid`` (default or custom slope) are read
off the closure of ``layer.spike_grad`` and mapped to :mod:`surroflos.surrogate` (which also gives
them a forward-mode derivative); a :class:`surroflos.Surrogate` passed as ``spike_grad`` is used as is.
Any other ``spike_grad`` (custom functions, ``straight_through_estimator``, ``surrogate_disable=True``,
...) is *called itself* in the loop, in the same order as snnTorch calls it, so results stay
identical (only the analytic tangent maps need a recognised surrogate).

dtypes (snnTorch 1.0's promotion). ``x`` may be floating point, integer or boolean, and a state entry
may have any real dtype. snnTorch's step promotes them with the layer's parameters under PyTorch's
rules; ``sequence`` runs everything in the dtype its membrane reaches, ``D``: the promotion of ``x``, the
given state entries and the parameter tensors with dimensions (``beta``, ``threshold``, ``alpha``,
``graded_spikes_factor``, a one-to-one ``V``); 0-dim parameters only count against an integer or
boolean ``x`` and state (a 0-dim float64 ``beta`` makes an integer input's membrane float64 in
snnTorch too), and ``D`` is at least float32 then. So float64 ``x`` with float32 parameters or a float32
state gives float64 states, float32 ``x`` with a float64 per-neuron ``beta`` float64 states, integer
``x`` float32 states -- snnTorch's membrane dtype in each case, with the same numbers. A given float
state narrower than ``D`` enters snnTorch's first step in its own dtype (``beta * mem`` of a float32
``mem`` rounds in float32 before the sum with a float64 ``x`` promotes); ``sequence`` runs that first
step the same way and the rest in ``D``. (Boolean ``x`` fails in snnTorch's own step only because its
default zero state is ``zeros_like(x)``; from a float state it runs, and ``sequence``'s zero state is
float.)

Deliberate differences from snnTorch's step: spikes have the states' dtype ``D`` (snnTorch's are always
float32, which also makes its RLeaky/RSynaptic with a float64 ``nn.Linear`` fail; their values are the
same); ``syn`` is computed in ``D`` too where snnTorch would keep it narrower than ``mem`` (float32 ``x``
with a float64 per-neuron ``beta``: snnTorch's ``syn`` stays float32); float16/bfloat16 ``x`` keeps its
dtype (snnTorch's float32 spikes promote its membrane to float32 under the subtract reset, not under
others) and the fused kernels carry such states in float32 between steps; the ``sigmoid`` surrogate
derivative is computed in a stable form where snnTorch's overflows to NaN (``slope * (theta - mem) >
88`` in float32); a state whose shape differs from ``x[t]`` raises a ValueError (snnTorch silently
replaces it by zeros). The recurrent kernel runs the layer's weights converted to ``D`` (so float64
``x`` works with a float32 RLeaky, whose ``nn.Linear`` fails in the loop; snnTorch's own layer runs
there only from a float32 ``spk0``, with its float32 spikes, and computes the recurrent term in the
Linear's float32, which ``sequence`` computes in float64).

Parameters are checked once, at construction: a NaN or infinite ``beta``, ``threshold``, ``alpha``,
``graded_spikes_factor`` or one-to-one ``V`` (number or tensor, learnable or not) raises a ValueError
naming it; snnTorch runs with it and returns NaN membranes. Finite ``beta``/``alpha`` outside [0, 1] are
accepted and clamped to [0, 1] in every step, as snnTorch does. Nothing is checked while running (no
host synchronisation per call or step); a parameter changed after construction is not re-checked.
``sequence`` raises NotImplementedError for ``init_hidden=True``, ``inhibition=True``, ``state_quant``
and for a ``reset_mechanism`` changed after construction (snnTorch keeps the old state function then).
``output=True`` is supported (without ``init_hidden`` it does not change snnTorch's return value).

For the recurrent layers, ``layer.step_function`` / ``layer.tangent_function`` / ``layer.params()``
give the one-step map on a flat state and its analytic surrogate tangent map, in the style of
:mod:`surroflos.models` (see :func:`rleaky_flat_step`); they are meant for Lyapunov spectra.
"""

from __future__ import annotations

import functools
import importlib
import math
import warnings
from typing import Callable, NamedTuple, Optional, Sequence, Tuple, Union

import snntorch as _snn
import torch
from snntorch import surrogate as _snn_surrogate
from torch import nn

from . import surrogate as sg
from .kernels import lif as _lif
from .kernels import recurrent as _rec

__all__ = [
    "Leaky", "Synaptic", "RLeaky", "RSynaptic",
    "NeuronParams", "BACKENDS", "surrogate_from_spike_grad",
    "leaky_step", "synaptic_step", "rleaky_step", "rsynaptic_step",
    "rleaky_flat_step", "rleaky_flat_tangent", "rsynaptic_flat_step", "rsynaptic_flat_tangent",
]

BACKENDS = ("auto", "torch", "triton", "cpu")
RESETS = ("subtract", "zero", "none")  # snnTorch's reset_mechanism_val 0, 1, 2

Tensor = torch.Tensor
SpikeFn = Callable[[Tensor], Tensor]


# --------------------------------------------------------------------------------------------------
# Surrogates: snnTorch's spike_grad closures -> surroflos.surrogate
# --------------------------------------------------------------------------------------------------

# our name -> (snnTorch factory, the closure variable holding the slope, the autograd Function it applies)
_SNN_FACTORIES = {
    "atan": ("atan", "alpha", "ATan"),
    "fast_sigmoid": ("fast_sigmoid", "slope", "FastSigmoid"),
    "sigmoid": ("sigmoid", "slope", "Sigmoid"),
}


def _closure_code(factory_name: str):
    factory = getattr(_snn_surrogate, factory_name, None)
    try:
        return factory().__code__ if callable(factory) else None
    except Exception:  # pragma: no cover - a different snnTorch version
        return None


_SNN_CODES = {name: _closure_code(f) for name, (f, _, _) in _SNN_FACTORIES.items()}


def surrogate_from_spike_grad(spike_grad: object) -> Optional[sg.Surrogate]:
    """The :class:`surroflos.Surrogate` equivalent to an snnTorch ``spike_grad``, or ``None``.

    Recognises the functions returned by ``snntorch.surrogate.atan(alpha)``, ``fast_sigmoid(slope)``
    and ``sigmoid(slope)`` (by their code object and their closure: the slope is read from it) and a
    :class:`surroflos.Surrogate` itself. Anything else (custom functions, other snnTorch surrogates,
    non-positive or tensor-with-grad slopes) gives ``None``.
    """
    if isinstance(spike_grad, sg.Surrogate):
        return spike_grad
    code = getattr(spike_grad, "__code__", None)
    closure = getattr(spike_grad, "__closure__", None)
    if code is None or not closure:
        return None
    for name, (_, var, fn_class) in _SNN_FACTORIES.items():
        if _SNN_CODES[name] is None or code is not _SNN_CODES[name]:
            continue
        cells = dict(zip(code.co_freevars, closure))
        if set(cells) != {var}:
            return None
        # The closure looks its autograd Function up in snnTorch's module globals: it must still be snnTorch's.
        if getattr(spike_grad, "__globals__", {}).get(fn_class) is not getattr(_snn_surrogate, fn_class, None):
            return None
        try:
            value = cells[var].cell_contents
        except ValueError:  # empty cell
            return None
        if isinstance(value, torch.Tensor):
            if value.numel() != 1 or value.requires_grad or not value.is_floating_point():
                return None
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        if not math.isfinite(value) or value <= 0:
            return None
        return sg.Surrogate(name, float(value))
    return None


# --------------------------------------------------------------------------------------------------
# Pure step functions
# --------------------------------------------------------------------------------------------------


class NeuronParams(NamedTuple):
    """What the pure step and tangent functions read; build it with ``layer.params()``.

    ``beta`` and ``alpha`` are already clamped to [0, 1]. ``spike`` is the spike function actually
    applied (a :class:`surroflos.Surrogate`, or the layer's own ``spike_grad`` when unrecognised);
    ``surrogate`` is the recognised surrogate or ``None`` (then no analytic tangent map exists).
    ``recurrent`` is the layer's recurrent module (``RLeaky``/``RSynaptic``); ``recurrent_weight`` is
    its matrix ``[N, N]`` (``nn.Linear``, bias excluded) or the one-to-one gain ``V`` (scalar or
    ``[N]``), with ``recurrent_kind`` ``"linear"`` / ``"one_to_one"`` / ``None`` (other modules).
    """

    beta: Tensor
    threshold: Tensor
    graded_spikes_factor: Tensor
    spike: SpikeFn
    surrogate: Optional[sg.Surrogate]
    reset: str
    reset_delay: bool
    alpha: Optional[Tensor] = None
    recurrent: Optional[Callable[[Tensor], Tensor]] = None
    recurrent_weight: Optional[Tensor] = None
    recurrent_kind: Optional[str] = None


def _reset_signal(mem: Tensor, p: NeuronParams) -> Tensor:
    """snnTorch's ``mem_reset``: the detached spike of the previous membrane (no graded factor)."""
    return p.spike(mem - p.threshold).detach()


def _fire(mem: Tensor, p: NeuronParams) -> Tensor:
    return p.spike(mem - p.threshold) * p.graded_spikes_factor


def _late_reset(mem: Tensor, spk: Tensor, R: Tensor, p: NeuronParams) -> Tensor:
    """``reset_delay=False``: reset right after the spike (not detached), minus what R already did."""
    if p.reset_delay or p.reset == "none":
        return mem
    do_reset = spk / p.graded_spikes_factor - R
    if p.reset == "subtract":
        return mem - do_reset * p.threshold
    return mem - do_reset * mem


def _reset_base(base: Tensor, R: Tensor, p: NeuronParams) -> Tensor:
    """Reset of Synaptic/RLeaky/RSynaptic: subtract ``R theta`` or zero the whole update."""
    if p.reset == "subtract":
        return base - R * p.threshold
    if p.reset == "zero":
        return base - R * base
    return base


def leaky_step(x: Tensor, mem: Tensor, p: NeuronParams) -> Tuple[Tensor, Tensor]:
    """One step of snnTorch's ``Leaky``: ``(spk, mem_new)`` from the input ``x`` and ``mem``.

    Note the zero reset of ``Leaky`` zeroes only the old membrane, ``beta (1 - R) mem + x`` (the other
    layers zero the whole update).
    """
    R = _reset_signal(mem, p)
    if p.reset == "subtract":
        new = p.beta * mem + x - R * p.threshold
    elif p.reset == "zero":
        new = p.beta * ((1 - R) * mem) + x
    else:
        new = p.beta * mem + x
    spk = _fire(new, p)
    return spk, _late_reset(new, spk, R, p)


def synaptic_step(x: Tensor, state: Tuple[Tensor, Tensor], p: NeuronParams
                  ) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
    """One step of snnTorch's ``Synaptic``: ``(spk, (syn, mem))`` from ``x`` and ``state = (syn, mem)``."""
    syn, mem = state
    R = _reset_signal(mem, p)
    syn_new = p.alpha * syn + x
    new = _reset_base(p.beta * mem + syn_new, R, p)
    spk = _fire(new, p)
    return spk, (syn_new, _late_reset(new, spk, R, p))


def rleaky_step(x: Tensor, state: Tuple[Tensor, Tensor], p: NeuronParams
                ) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
    """One step of snnTorch's ``RLeaky``: ``(spk, (spk, mem))`` from ``x`` and ``state = (spk, mem)``.

    ``spk`` in the state is the previous output, fed back through ``p.recurrent``.
    """
    spk_prev, mem = state
    R = _reset_signal(mem, p)
    new = _reset_base(p.beta * mem + x + p.recurrent(spk_prev), R, p)
    spk = _fire(new, p)
    return spk, (spk, _late_reset(new, spk, R, p))


def rsynaptic_step(x: Tensor, state: Tuple[Tensor, Tensor, Tensor], p: NeuronParams
                   ) -> Tuple[Tensor, Tuple[Tensor, Tensor, Tensor]]:
    """One step of snnTorch's ``RSynaptic``: ``(spk, (spk, syn, mem))`` from ``state = (spk, syn, mem)``.

    snnTorch 1.0's ``RSynaptic.forward`` computes its ``reset_delay=False`` reset on local variables
    and discards it, so the reset is always delayed; this function reproduces that (``p.reset_delay``
    is ignored).
    """
    spk_prev, syn, mem = state
    R = _reset_signal(mem, p)
    syn_new = p.alpha * syn + x + p.recurrent(spk_prev)
    new = _reset_base(p.beta * mem + syn_new, R, p)
    spk = _fire(new, p)
    return spk, (spk, syn_new, new)


# --------------------------------------------------------------------------------------------------
# Flat-state one-step maps and their analytic surrogate tangent maps (recurrent layers)
# --------------------------------------------------------------------------------------------------


def _col(t: Tensor) -> Tensor:
    """A scalar or per-neuron ``[N]`` tensor as a column that broadcasts against ``[B, N, k]``."""
    return t.unsqueeze(-1) if t.ndim else t


def _require_delayed(p: NeuronParams) -> None:
    if not p.reset_delay:
        raise NotImplementedError(
            "the flat-state maps of RLeaky need reset_delay=True: with reset_delay=False the fed-back "
            "spikes are not a function of the membrane, so the state is not the membrane alone; "
            "use layer.sequence() for reset_delay=False")


def _recurrent_tangent(dspk: Tensor, p: NeuronParams) -> Tensor:
    """The linear part of ``p.recurrent`` applied to the columns of ``dspk: [B, N, k]``."""
    if p.recurrent_kind == "linear":
        return torch.matmul(p.recurrent_weight, dspk)
    if p.recurrent_kind == "one_to_one" and p.recurrent_weight is not None and p.recurrent_weight.ndim <= 1:
        return _col(p.recurrent_weight) * dspk
    raise NotImplementedError(
        "the analytic tangent map supports recurrent=nn.Linear (all_to_all=True, linear_features=N) or "
        "one-to-one V (all_to_all=False, V scalar or [N]); this layer's recurrent module is "
        f"{type(p.recurrent).__name__}")


def _require_surrogate(p: NeuronParams) -> sg.Surrogate:
    if p.surrogate is None:
        raise NotImplementedError(
            f"no analytic tangent map for spike_grad={p.spike!r}: only snnTorch's atan, fast_sigmoid and "
            "sigmoid surrogates and surroflos.Surrogate are recognised (the step functions still work)")
    return p.surrogate


def _spike_derivative(v: Tensor, p: NeuronParams) -> Tensor:
    """``d spk / d v`` with the surrogate derivative, as a column block ``[B, N, 1]``."""
    return (_require_surrogate(p).derivative(v) * p.graded_spikes_factor).unsqueeze(-1)


def rleaky_flat_step(x: Tensor, state: Tensor, p: NeuronParams) -> Tuple[Tensor, Tensor]:
    """``RLeaky`` as a map on the flat state ``mem: [B, N]``: ``(spk, mem_new)`` (``reset_delay=True``).

    The fed-back spikes are read off the state, ``spk_prev = g H(mem - theta)``, which is exactly what
    snnTorch stored one step earlier; so a rollout of this map equals ``sequence`` from the zero
    state whenever ``H(-theta) = 0`` (positive thresholds), and from any state after the first step.
    """
    _require_delayed(p)
    spk, (_, mem) = rleaky_step(x, (_fire(state, p), state), p)
    return spk, mem


def rleaky_flat_tangent(x: Tensor, state: Tensor, p: NeuronParams, Q: Tensor) -> Tensor:
    """``d mem_new / d mem`` of :func:`rleaky_flat_step` applied to ``Q: [B, N, k]``, surrogate ``H'``.

    ``D = diag(c) (beta I + W_rec diag(g sigma'(mem - theta)))`` with ``c = 1 - R`` for the zero
    reset and 1 otherwise (the delayed reset ``R`` is detached, as in snnTorch).
    """
    _require_delayed(p)
    dspk = _spike_derivative(state - p.threshold, p) * Q
    out = _col(p.beta) * Q + _recurrent_tangent(dspk, p)
    if p.reset == "zero":
        out = (1 - _reset_signal(state, p)).unsqueeze(-1) * out
    return out


def rsynaptic_flat_step(x: Tensor, state: Tensor, p: NeuronParams) -> Tuple[Tensor, Tensor]:
    """``RSynaptic`` as a map on the flat state ``[syn | mem]: [B, 2N]``: ``(spk, [syn_new | mem_new])``.

    Fed-back spikes are read off the state (``g H(mem - theta)``) as in :func:`rleaky_flat_step`.
    ``reset_delay`` plays no role (snnTorch 1.0's RSynaptic ignores ``reset_delay=False``).
    """
    syn, mem = state.chunk(2, dim=-1)
    spk, (_, syn_new, mem_new) = rsynaptic_step(x, (_fire(mem, p), syn, mem), p)
    return spk, torch.cat([syn_new, mem_new], dim=-1)


def rsynaptic_flat_tangent(x: Tensor, state: Tensor, p: NeuronParams, Q: Tensor) -> Tensor:
    """The 2x2-block surrogate Jacobian of :func:`rsynaptic_flat_step` applied to ``Q: [B, 2N, k]``::

        d syn_new = alpha d syn + W_rec (g sigma'(mem - theta) d mem)
        d mem_new = c (beta d mem + d syn_new)      c = 1 - R (zero reset) or 1
    """
    syn, mem = state.chunk(2, dim=-1)
    Qs, Qm = Q.chunk(2, dim=-2)
    dsyn = _col(p.alpha) * Qs + _recurrent_tangent(_spike_derivative(mem - p.threshold, p) * Qm, p)
    dmem = _col(p.beta) * Qm + dsyn
    if p.reset == "zero":
        dmem = (1 - _reset_signal(mem, p)).unsqueeze(-1) * dmem
    return torch.cat([dsyn, dmem], dim=-2)


# --------------------------------------------------------------------------------------------------
# The layers
# --------------------------------------------------------------------------------------------------


def _resolve_backend(backend: object) -> str:
    """``backend`` after checking its name; the device decides later (:mod:`surroflos.kernels.backend`)."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def _one_to_one_classes() -> tuple:
    classes = []
    for mod in ("rleaky", "rsynaptic"):
        try:
            classes.append(importlib.import_module(f"snntorch._neurons.{mod}").RecurrentOneToOne)
        except (ImportError, AttributeError):  # pragma: no cover - a different snnTorch layout
            pass
    return tuple(classes)


_ONE_TO_ONE = _one_to_one_classes()

StateArg = Union[None, Tensor, Sequence[Optional[Tensor]]]


def _describe(value: object) -> str:
    if isinstance(value, Tensor) and value.numel() != 1:
        bad = int((~torch.isfinite(value.detach())).sum())
        return f"a tensor of shape {tuple(value.shape)} with {bad} non-finite entr{'y' if bad == 1 else 'ies'}"
    return repr(float(value.detach() if isinstance(value, Tensor) else value))


def _require_finite(owner: str, name: str, value: object) -> None:
    """ValueError naming ``name`` when ``value`` (a number or a tensor) is NaN or infinite (construction only)."""
    if isinstance(value, Tensor):
        if not (value.is_floating_point() or value.is_complex()):
            return
        with torch.no_grad():
            ok = bool(torch.isfinite(value).all())
    elif isinstance(value, (int, float)):
        ok = math.isfinite(value)
    else:
        return
    if not ok:
        raise ValueError(f"{owner}: {name} must be finite, got {_describe(value)}")


def _state_dtype(x: Tensor, states: Sequence[Optional[Tensor]], params: Sequence[object]) -> torch.dtype:
    """The dtype snnTorch's step gives the membrane for this ``x``, these state entries and parameters.

    PyTorch's promotion: ``x``, the state entries and the parameter tensors with dimensions promote;
    0-dim parameters only decide the result when those are all integer/boolean (a float 0-dim tensor has
    the higher category then); the result is at least float32 (snnTorch's spikes are float32).
    """
    dims = [x.dtype] + [s.dtype for s in states if s is not None]
    dims += [t.dtype for t in params if isinstance(t, Tensor) and t.ndim > 0]
    D = functools.reduce(torch.promote_types, dims)
    if not D.is_floating_point:
        zero_dim = [t.dtype for t in params if isinstance(t, Tensor) and t.ndim == 0 and t.is_floating_point()]
        if zero_dim:
            D = torch.promote_types(D, functools.reduce(torch.promote_types, zero_dim))
    if not D.is_floating_point:
        D = torch.float32
    return D


class _SequenceMixin:
    """Shared ``sequence``/``params`` implementation; mixed in before the snnTorch class."""

    _STATE_NAMES: Tuple[str, ...] = ()
    _HAS_ALPHA = False
    _RECURRENT = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._check_finite()

    def _check_finite(self) -> None:
        """Construction-time check of the neuron parameters (never repeated while the layer runs)."""
        names = ["beta", "threshold", "graded_spikes_factor"]
        if self._HAS_ALPHA:
            names.append("alpha")
        if self._RECURRENT:
            names.append("V")
        for name in names:
            _require_finite(type(self).__name__, name, getattr(self, name, None))

    # -- parameters ------------------------------------------------------------------------------

    def _reset_name(self) -> str:
        fn = getattr(self.state_function, "__func__", None)
        cls = type(self)
        by_function = {cls._base_sub: "subtract", cls._base_zero: "zero", cls._base_int: "none"}
        used = by_function.get(fn)
        if used is None:
            raise NotImplementedError(
                f"{cls.__name__}.state_function was replaced by {self.state_function!r}; sequence() only "
                "reproduces snnTorch's subtract/zero/none state functions")
        declared = RESETS[int(self.reset_mechanism_val)]
        if declared != used:
            raise NotImplementedError(
                f"reset_mechanism is {declared!r}, but snnTorch's forward still uses the {used!r} state "
                "function chosen at construction (snnTorch does not switch it when reset_mechanism is "
                f"changed later); construct the layer with reset_mechanism={declared!r} instead")
        return used

    def params(self) -> NeuronParams:
        """The parameter bundle the pure step/tangent functions read (gradients flow to the module)."""
        self._check_supported()
        sur = surrogate_from_spike_grad(self.spike_grad)
        rec = rec_weight = rec_kind = None
        if self._RECURRENT:
            rec = self.recurrent
            if isinstance(rec, nn.Linear):
                rec_weight, rec_kind = rec.weight, "linear"
            elif _ONE_TO_ONE and isinstance(rec, _ONE_TO_ONE):
                rec_weight, rec_kind = torch.as_tensor(rec.V), "one_to_one"
        return NeuronParams(
            beta=self.beta.clamp(0, 1),
            threshold=self.threshold,
            graded_spikes_factor=self.graded_spikes_factor,
            spike=sur if sur is not None else self.spike_grad,
            surrogate=sur,
            reset=self._reset_name(),
            reset_delay=bool(self.reset_delay),
            alpha=self.alpha.clamp(0, 1) if self._HAS_ALPHA else None,
            recurrent=rec,
            recurrent_weight=rec_weight,
            recurrent_kind=rec_kind,
        )

    def _check_supported(self) -> None:
        name = type(self).__name__
        if self.init_hidden:
            raise NotImplementedError(
                f"{name}.sequence() and the pure step functions do not support init_hidden=True: they take "
                "and return the state explicitly; construct the layer with init_hidden=False")
        if self.inhibition:
            raise NotImplementedError(
                f"{name}.sequence() and the pure step functions do not support inhibition=True")
        if self.state_quant:
            raise NotImplementedError(f"{name}.sequence() and the pure step functions do not support state_quant")

    # -- sequence --------------------------------------------------------------------------------

    def _state_entries(self, state: StateArg) -> Tuple[Optional[Tensor], ...]:
        """The entries of ``state`` (``None`` for zeros), checked for their number and types."""
        cls, names = type(self).__name__, self._STATE_NAMES
        expected = names[0] if len(names) == 1 else "(" + ", ".join(names) + ")"
        if state is None:
            return (None,) * len(names)
        if len(names) == 1:
            if not isinstance(state, Tensor):
                raise TypeError(f"{cls}.sequence expects state={expected} (a tensor [B, ...]) or None, "
                                f"got {type(state).__name__}")
            entries: Tuple[Optional[Tensor], ...] = (state,)
        else:
            if not isinstance(state, (tuple, list)) or len(state) != len(names):
                got = type(state).__name__ if not isinstance(state, (tuple, list)) else f"{len(state)} entries"
                raise ValueError(f"{cls}.sequence expects state={expected} (entries [B, ...] or None) "
                                 f"or None, got {got}")
            entries = tuple(state)
        for name, s in zip(names, entries):
            if s is not None and not isinstance(s, Tensor):
                raise TypeError(f"state {name} must be a tensor or None, got {type(s).__name__}")
            if s is not None and s.is_complex():
                raise ValueError(f"state {name} must be real, got dtype {s.dtype}")
        return entries

    def _initial_state(self, x: Tensor, entries: Sequence[Optional[Tensor]]) -> Tuple[Tensor, ...]:
        """The state entries in ``x``'s dtype (``x`` is already in the promoted dtype): zeros for ``None``."""
        step_shape = tuple(x.shape[1:])
        out = []
        for name, s in zip(self._STATE_NAMES, entries):
            if s is None:
                out.append(x.new_zeros(step_shape))
                continue
            if tuple(s.shape) != step_shape:
                raise ValueError(
                    f"state {name} has shape {tuple(s.shape)} but one time step of x has shape {step_shape} "
                    f"(x: {tuple(x.shape)} = [T, B, ...]); a state from another batch size or layer?")
            if s.device != x.device:
                raise ValueError(f"state {name} is on {s.device} but x is on {x.device}")
            out.append(s.to(x.dtype))
        return tuple(out)

    def _loop(self, x: Tensor, state: Tuple[Tensor, ...], p: NeuronParams) -> Tuple[list, ...]:
        raise NotImplementedError  # pragma: no cover - each layer implements it

    def _fused(self, x: Tensor, state: Tuple[Tensor, ...], p: NeuronParams,
               backend: str) -> Optional[Tuple[Tensor, ...]]:
        """The fused whole-sequence path, or ``None`` where the layer has none (the loop runs)."""
        return None

    def _run_fused(self, p: NeuronParams, backend: str, call: Callable[[dict], Tuple[Tensor, ...]]
                   ) -> Optional[Tuple[Tensor, ...]]:
        """``call(options)`` of :mod:`surroflos.kernels.lif`, or ``None`` (loop) where it cannot express the layer.

        For ``backend="triton"`` a configuration the kernels cannot express is an error instead.
        """
        reason = None
        if p.surrogate is None:
            reason = (f"spike_grad={p.spike!r} is not a surrogate the kernels know (snnTorch's atan, fast_sigmoid, "
                      "sigmoid or a surroflos.Surrogate)")
        else:
            try:
                return call(dict(surrogate=p.surrogate, reset=p.reset, reset_delay=p.reset_delay,
                                 graded=p.graded_spikes_factor, backend=backend))
            except _lif.LIFConfigError as err:
                reason = str(err)
        if backend in ("triton", "cpu"):
            raise NotImplementedError(f'backend="{backend}" cannot run this {type(self).__name__}: {reason}. '
                                      'backend="torch" or "auto" run it as a PyTorch loop.')
        return None

    def sequence(self, x: Tensor, state: StateArg = None, backend: str = "auto") -> Tuple[Tensor, ...]:
        """Run the layer over ``x: [T, B, ...]`` (time first); see the class docstring for ``state``.

        Returns the spike sequence and the state sequences, each ``[T, B, ...]``, identical to calling
        the layer step by step with the states passed explicitly. ``backend``: ``"torch"`` runs the
        fused whole-sequence PyTorch path of :mod:`surroflos.kernels.lif` (``Leaky``, ``Synaptic``) or
        :mod:`surroflos.kernels.recurrent` (``RLeaky``, ``RSynaptic``) where it can express the layer,
        else the PyTorch loop; ``"triton"`` the Triton kernels (NotImplementedError where they cannot
        express the layer); ``"cpu"`` the compiled CPU kernels (numba) on CPU tensors: ``Leaky`` and
        ``Synaptic``'s, and for ``RLeaky``/``RSynaptic`` the recurrent op's spike-sparse forward
        (NotImplementedError where they cannot express the layer); ``"auto"`` Triton for CUDA tensors; on the
        CPU the compiled CPU kernels of ``Leaky`` and ``Synaptic`` (numba, :mod:`surroflos.kernels.lif`'s
        ``backend="cpu"``; the PyTorch path where numba is missing or ``SURROFLOS_DISABLE_CPU_KERNELS=1``) and
        the recurrent op's choice (its compiled forward from 512 neurons), else ``"torch"``. ``x`` may also be
        integer or boolean; ``x`` and the state are converted to the dtype snnTorch's step promotes the
        membrane to (see the module docstring), which the outputs have.
        """
        backend = _resolve_backend(backend)
        cls = type(self).__name__
        if not isinstance(x, Tensor):
            raise TypeError(f"{cls}.sequence expects x to be a torch.Tensor [T, B, ...], got {type(x).__name__}")
        if x.ndim < 2:
            raise ValueError(f"{cls}.sequence expects x of shape [T, B, ...] (time first, ndim >= 2), got shape "
                             f"{tuple(x.shape)}; call the layer itself for a single step")
        if x.is_complex():
            raise ValueError(f"{cls}.sequence expects a real x (floating point, integer or boolean), got dtype "
                             f"{x.dtype}")
        p = self.params()
        entries = self._state_entries(state)
        params = (p.beta, p.threshold, p.graded_spikes_factor, p.alpha,
                  p.recurrent_weight if p.recurrent_kind == "one_to_one" else None)
        dtype = _state_dtype(x, entries, params)
        x = x.to(dtype)
        init = self._initial_state(x, entries)
        self._warn_ignored()
        narrower = [s is not None and s.is_floating_point() and s.dtype != dtype for s in entries]
        if any(narrower) and x.shape[0] > 0:
            # snnTorch's first step computes with a given float state in its own dtype (a float32 mem with
            # float64 x: beta * mem rounds in float32 before the sum promotes): that step as snnTorch's,
            # the rest (all in the promoted dtype from then on) from its result.
            first = tuple(s if keep else t for s, t, keep in zip(entries, init, narrower))
            head = self._loop(x[:1], first, p)
            carried = tuple(c[-1] for c in (head if self._RECURRENT else head[1:]))
            head = tuple(torch.stack(c) for c in head)
            if x.shape[0] == 1:
                return head
            tail = self._run(x[1:], carried, p, backend)
            return tuple(torch.cat([a, b]) for a, b in zip(head, tail))
        return self._run(x, init, p, backend)

    def _run(self, x: Tensor, init: Tuple[Tensor, ...], p: NeuronParams, backend: str) -> Tuple[Tensor, ...]:
        """The sequence from ``init`` (everything in ``x``'s dtype): the fused path where it can run, else the loop."""
        fused = self._fused(x, init, p, backend)
        if fused is not None:
            return fused
        if backend in ("triton", "cpu"):
            raise NotImplementedError(  # defensive: every layer's _fused raises its own reason first
                f'backend="{backend}" has no kernel for this {type(self).__name__}; backend="torch" (or "auto") '
                'runs it as a PyTorch loop.')
        columns = self._loop(x, init, p)
        if x.shape[0] == 0:
            return tuple(x.new_zeros(x.shape) for _ in columns)
        return tuple(torch.stack(c) for c in columns)

    def _warn_ignored(self) -> None:
        pass


class Leaky(_SequenceMixin, _snn.Leaky):
    """snnTorch ``Leaky`` (first-order LIF) plus :meth:`sequence`.

    ``spk, mem = lif.sequence(x, state=mem0)``: ``x, spk, mem: [T, B, ...]``, ``state`` = the initial
    membrane ``[B, ...]`` (zeros when ``None``). Step semantics: :func:`leaky_step`. Supports all
    constructor options except ``init_hidden``, ``inhibition`` and ``state_quant``
    (``NotImplementedError``).
    """

    _STATE_NAMES = ("mem",)

    def _fused(self, x, state, p, backend):
        return self._run_fused(p, backend, lambda kw: _lif.leaky_sequence(x, state[0], p.beta, p.threshold, **kw))

    def _loop(self, x, state, p):
        (mem,) = state
        spks, mems = [], []
        for t in range(x.shape[0]):
            spk, mem = leaky_step(x[t], mem, p)
            spks.append(spk)
            mems.append(mem)
        return spks, mems


class Synaptic(_SequenceMixin, _snn.Synaptic):
    """snnTorch ``Synaptic`` (current-based LIF) plus :meth:`sequence`.

    ``spk, syn, mem = layer.sequence(x, state=(syn0, mem0))``, all ``[T, B, ...]``; ``state=None`` or
    ``None`` entries mean zeros. Step semantics: :func:`synaptic_step`.
    """

    _STATE_NAMES = ("syn", "mem")
    _HAS_ALPHA = True

    def _fused(self, x, state, p, backend):
        return self._run_fused(p, backend, lambda kw: _lif.synaptic_sequence(x, state[0], state[1], p.alpha, p.beta,
                                                                            p.threshold, **kw))

    def _loop(self, x, state, p):
        spks, syns, mems = [], [], []
        for t in range(x.shape[0]):
            spk, state = synaptic_step(x[t], state, p)
            spks.append(spk)
            syns.append(state[0])
            mems.append(state[1])
        return spks, syns, mems


class _FlatMixin:
    """Flat-state one-step map and surrogate tangent map of a recurrent layer."""

    _FLAT_STEP: Callable
    _FLAT_TANGENT: Callable
    _STATE_FACTOR = 1

    def _check_flat(self, tangent: bool) -> NeuronParams:
        p = self.params()
        if isinstance(self, _snn.RLeaky):
            _require_delayed(p)
        if p.recurrent_kind is None or (p.recurrent_kind == "one_to_one" and p.recurrent_weight.ndim > 1):
            raise NotImplementedError(
                "the flat-state maps need recurrent=nn.Linear (all_to_all=True, linear_features=N) or a "
                f"one-to-one V that is a scalar or [N]; got {type(self.recurrent).__name__}")
        if tangent:
            _require_surrogate(p)
        return p

    @property
    def step_function(self) -> Callable[[Tensor, Tensor, NeuronParams], Tuple[Tensor, Tensor]]:
        """The pure one-step map ``(x [B, N], flat_state, params) -> (spk, new_flat_state)``."""
        self._check_flat(tangent=False)
        return type(self)._FLAT_STEP

    @property
    def tangent_function(self) -> Callable[[Tensor, Tensor, NeuronParams, Tensor], Tensor]:
        """The pure surrogate tangent map ``(x, flat_state, params, Q [B, D, k]) -> D Q``."""
        self._check_flat(tangent=True)
        return type(self)._FLAT_TANGENT

    @property
    def state_dim(self) -> int:
        """Size ``D`` of the flat state: ``N`` (RLeaky) or ``2N`` (RSynaptic)."""
        p = self._check_flat(tangent=False)
        w = p.recurrent_weight
        if w.ndim == 0:
            raise ValueError("with a scalar one-to-one V the layer size is not fixed (the flat maps work for "
                             "any N); D = N for RLeaky and 2N for RSynaptic")
        return self._STATE_FACTOR * int(w.shape[0])


# --------------------------------------------------------------------------------------------------
# RLeaky / RSynaptic on the fused recurrent-network kernel (surroflos.kernels.recurrent)
# --------------------------------------------------------------------------------------------------


class _RecurrentPlan(NamedTuple):
    """What :func:`spiking_rnn_sequence` needs, every tensor in the dtype of ``x`` (differentiable views)."""

    W: Tensor                          # [N, N], I = S W^T
    bias: Optional[Tensor]             # [N] recurrent bias or None
    beta: Tensor                       # [] or [N], clamped
    threshold: Tensor                  # [] or [N]
    alpha: Optional[Tensor]            # [] or [N] (RSynaptic), None for RLeaky
    feed: Callable[[Tensor], Tensor]   # spikes -> S W^T (the recurrent module without its bias)


def _has_hooks(module: nn.Module) -> bool:
    from torch.nn.modules import module as _m  # global hooks apply to every module call

    own = (module._forward_hooks, module._forward_pre_hooks)
    glob = (getattr(_m, "_global_forward_hooks", {}), getattr(_m, "_global_forward_pre_hooks", {}))
    return any(len(h) for h in own + glob)


def _kernel_vector(value: object, name: str, N: int, x: Tensor) -> Union[Tensor, str]:
    """A parameter as a ``[]`` / ``[N]`` tensor in ``x``'s dtype, or the reason why the kernel cannot take it."""
    t = torch.as_tensor(value)
    if t.device != x.device:
        return f"{name} is on {t.device} but x is on {x.device}"
    if not t.is_floating_point():
        t = t.to(x.dtype)
    if t.numel() == 1 and t.ndim <= 1:
        return t.reshape(()).to(x.dtype)
    if t.ndim == 1 and t.shape[0] == N:
        return t.to(x.dtype)
    return f"{name} has shape {tuple(t.shape)}; the kernel takes a scalar or a per-neuron [{N}] tensor"


def _recurrent_plan(layer: nn.Module, x: Tensor, p: NeuronParams, synaptic: bool) -> Union[_RecurrentPlan, str]:
    """The kernel's arguments for this layer and ``x: [T, ..., N]``, or why the kernel cannot express it.

    The recurrent network kernel reads the fed-back spikes off the state, ``S[t-1] = H(mem[t-1] - theta)``
    (surrogate gradient), feeds them through ``W`` with a delayed, detached reset: snnTorch's
    RLeaky/RSynaptic exactly when the spikes are 0/1 (graded factor 1), the recurrent module is linear
    and the reset is delayed. (The given ``spk0`` need not be ``H(mem0 - theta)``, see
    :func:`_recurrent_fused`.)
    """
    if p.surrogate is None:
        return (f"spike_grad={p.spike!r} is not a surrogate the kernel knows (snnTorch's atan, fast_sigmoid, "
                "sigmoid or a surroflos.Surrogate)")
    if p.reset == "none":
        return 'reset_mechanism="none" (the recurrent kernel resets by subtraction or to zero)'
    if not synaptic and not p.reset_delay:
        return "reset_delay=False (the recurrent kernel only has the delayed reset)"
    g = p.graded_spikes_factor
    if isinstance(g, Tensor):
        if g.requires_grad or g.numel() != 1 or float(g) != 1.0:
            return ("graded_spikes_factor must be the constant 1 (the kernel feeds 0/1 spikes back); got "
                    + ("a learnable factor" if g.requires_grad else f"{g.tolist()}"))
    elif g != 1:
        return f"graded_spikes_factor must be 1, got {g!r}"
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        return f"x has dtype {x.dtype}"
    N = x.shape[-1]
    rec = p.recurrent
    if _has_hooks(rec):
        return "the recurrent module has forward hooks (the kernel would bypass them)"
    if type(rec) is nn.Linear:
        W, b = rec.weight, rec.bias
        if W.shape != (N, N):
            return f"recurrent nn.Linear weight has shape {tuple(W.shape)}, expected [{N}, {N}] (N = x.shape[-1])"
        if W.device != x.device:
            return f"the recurrent weights are on {W.device} but x is on {x.device}"
        W = W.to(x.dtype)
        b = b.to(x.dtype) if b is not None else None

        def feed(s: Tensor) -> Tensor:
            return nn.functional.linear(s, W)
    elif _ONE_TO_ONE and type(rec) in _ONE_TO_ONE:
        V = _kernel_vector(rec.V, "the one-to-one recurrent gain V", N, x)
        if isinstance(V, str):
            return V
        # x * V is the diagonal matrix diag(V) applied to the spikes
        W = torch.diag(V) if V.ndim else V * torch.eye(N, dtype=x.dtype, device=x.device)
        b = None

        def feed(s: Tensor) -> Tensor:
            return s * V
    else:
        return (f"the recurrent module is {type(rec).__name__}; the kernel takes nn.Linear (all_to_all=True, "
                "linear_features=N) or the one-to-one V (all_to_all=False)")
    vecs = {}
    for name, value in (("beta", p.beta), ("threshold", p.threshold), ("alpha", p.alpha if synaptic else None)):
        if value is None:
            continue
        v = _kernel_vector(value, name, N, x)
        if isinstance(v, str):
            return v
        vecs[name] = v
    return _RecurrentPlan(W, b, vecs["beta"], vecs["threshold"], vecs.get("alpha"), feed)


def _recurrent_fused(layer: nn.Module, x: Tensor, state: Tuple[Tensor, ...], p: NeuronParams, backend: str,
                     synaptic: bool) -> Optional[Tuple[Tensor, ...]]:
    """RLeaky / RSynaptic ``sequence`` on :func:`surroflos.kernels.recurrent.spiking_rnn_sequence`.

    ``None`` (the loop runs) where the kernel cannot express the layer; for ``backend="triton"`` and
    ``"cpu"`` (the op's compiled spike-sparse forward) that is a NotImplementedError instead. Mapping (reset delayed and detached, spikes 0/1)::

        RLeaky    subtract -> neuron="lif",  W = rec.weight, bias = rec.bias  (b = beta mem + x + rec(spk))
        RLeaky    zero     -> neuron="cuba", alpha = 0: syn = I, mem = (1 - R)(beta mem + I) = b - R b
        RSynaptic          -> neuron="cuba" with the layer's alpha
        one-to-one V       -> W = diag(V)

    The kernel feeds back ``S[-1] = H(mem0 - theta)`` at its first step, with the surrogate gradient
    into ``mem0`` and ``theta``; snnTorch feeds back the given ``spk0`` (any values, maybe requiring
    grad) as a constant of ``mem0``. Where that matters, ``x[0]`` gets ``(spk0 - S~) W^T`` with
    ``S~ = H(mem0 - theta)`` carrying the same surrogate gradient: zero in value when ``spk0 = S[-1]``,
    and its gradient cancels the kernel's into ``mem0``/``theta`` and routes ``spk0``'s.
    """
    plan = _recurrent_plan(layer, x, p, synaptic)
    if isinstance(plan, str):
        if backend in ("triton", "cpu"):
            raise NotImplementedError(f'backend="{backend}" cannot run this {type(layer).__name__}: {plan}. '
                                      'backend="torch" or "auto" run it as a PyTorch loop.')
        return None
    n_out = 3 if synaptic else 2
    if x.numel() == 0:
        return tuple(x.new_zeros(x.shape) for _ in range(n_out))
    T, N = x.shape[0], x.shape[-1]
    M = x[0].numel() // N
    flat = [s.reshape(M, N) for s in state]
    spk0, mem0 = flat[0], flat[-1]
    theta = plan.threshold
    x_in = x.reshape(T, M, N)
    if (spk0.requires_grad or mem0.requires_grad or theta.requires_grad
            or not torch.equal(spk0, (mem0 > theta).to(spk0.dtype))):
        s_kernel = p.surrogate(mem0 - theta)  # the kernel's S[-1], with its surrogate gradient
        x_in = torch.cat([(x_in[0] + plan.feed(spk0 - s_kernel)).unsqueeze(0), x_in[1:]])
    if synaptic:
        state0, neuron, alpha = torch.cat([flat[1], mem0], dim=1), "cuba", plan.alpha
    elif p.reset == "zero":  # syn = 0 syn + I = I exactly: the syn half of the state is just the current
        state0, neuron, alpha = torch.cat([torch.zeros_like(mem0), mem0], dim=1), "cuba", 0.0
    else:
        state0, neuron, alpha = mem0, "lif", None
    spikes, states = _rec.spiking_rnn_sequence(
        x_in, plan.W, state0, neuron=neuron, beta=plan.beta, alpha=alpha, threshold=theta, surrogate=p.surrogate,
        reset=p.reset, detach_reset=True, bias=plan.bias, backend=backend)
    outs = (spikes, states[..., :N], states[..., N:]) if synaptic else (spikes, states[..., -N:])
    return tuple(o.reshape(x.shape) for o in outs)


class RLeaky(_FlatMixin, _SequenceMixin, _snn.RLeaky):
    """snnTorch ``RLeaky`` (LIF with recurrent feedback of its own spikes) plus :meth:`sequence`.

    ``spk, mem = layer.sequence(x, state=(spk0, mem0))``, all ``[T, B, ...]``; ``spk0`` are the spikes
    fed back at the first step (zeros by default). Step semantics: :func:`rleaky_step`. Note that
    RLeaky's zero reset zeroes the whole update ``beta mem + x + rec(spk)``, unlike Leaky's.
    ``sequence`` runs on the fused recurrent network (:mod:`surroflos.kernels.recurrent`, LIF neuron
    for the subtract reset, current-based with ``alpha = 0`` for the zero reset) where it can express
    the layer (see the module docstring; ``reset_delay=False`` and reset ``"none"`` run the loop).

    Flat maps (``reset_delay=True``, recurrent ``nn.Linear`` or one-to-one ``V``):
    ``layer.step_function`` = :func:`rleaky_flat_step` on ``mem: [B, N]``, ``layer.tangent_function``
    = :func:`rleaky_flat_tangent`, used with ``p = layer.params()``.
    """

    _STATE_NAMES = ("spk", "mem")
    _RECURRENT = True
    _FLAT_STEP = staticmethod(rleaky_flat_step)
    _FLAT_TANGENT = staticmethod(rleaky_flat_tangent)
    _STATE_FACTOR = 1

    def _fused(self, x, state, p, backend):
        return _recurrent_fused(self, x, state, p, backend, synaptic=False)

    def _loop(self, x, state, p):
        spks, mems = [], []
        for t in range(x.shape[0]):
            spk, state = rleaky_step(x[t], state, p)
            spks.append(spk)
            mems.append(state[1])
        return spks, mems


class RSynaptic(_FlatMixin, _SequenceMixin, _snn.RSynaptic):
    """snnTorch ``RSynaptic`` (current-based LIF with recurrent spike feedback) plus :meth:`sequence`.

    ``spk, syn, mem = layer.sequence(x, state=(spk0, syn0, mem0))``, all ``[T, B, ...]``. Step
    semantics: :func:`rsynaptic_step`. snnTorch 1.0's RSynaptic ignores ``reset_delay=False`` (its
    immediate reset is computed and discarded), and so does ``sequence`` (with a warning).
    ``sequence`` runs on the fused recurrent network's current-based neuron
    (:mod:`surroflos.kernels.recurrent`) where it can express the layer (see the module docstring).

    Flat maps (recurrent ``nn.Linear`` or one-to-one ``V``): ``layer.step_function`` =
    :func:`rsynaptic_flat_step` on ``[syn | mem]: [B, 2N]``, ``layer.tangent_function`` =
    :func:`rsynaptic_flat_tangent`, used with ``p = layer.params()``.
    """

    _STATE_NAMES = ("spk", "syn", "mem")
    _HAS_ALPHA = True
    _RECURRENT = True
    _FLAT_STEP = staticmethod(rsynaptic_flat_step)
    _FLAT_TANGENT = staticmethod(rsynaptic_flat_tangent)
    _STATE_FACTOR = 2

    def _warn_ignored(self) -> None:
        if not self.reset_delay:
            warnings.warn(
                "RSynaptic(reset_delay=False): snnTorch 1.0's RSynaptic.forward discards its immediate reset, "
                "so the reset stays delayed; sequence() reproduces snnTorch", UserWarning, stacklevel=3)

    def _fused(self, x, state, p, backend):
        return _recurrent_fused(self, x, state, p, backend, synaptic=True)

    def _loop(self, x, state, p):
        spks, syns, mems = [], [], []
        for t in range(x.shape[0]):
            spk, state = rsynaptic_step(x[t], state, p)
            spks.append(spk)
            syns.append(state[1])
            mems.append(state[2])
        return spks, syns, mems
