"""Drop-in replacements for Norse's LIF neurons, on surroflos' pure step functions.

``surroflos.norse.LIFCell``, ``LIFBoxCell``, ``LIFRecurrentCell``, ``LIF`` and ``LIFRecurrent`` subclass the
Norse 1.1 modules of the same name (so ``isinstance(cell, norse.torch.LIFCell)`` holds and the constructors
take the same arguments), use Norse's own parameter and state types (``LIFParameters``, ``LIFState``,
``LIFFeedForwardState``, ``LIFBoxParameters``, ``LIFBoxFeedForwardState``) and reproduce Norse's numbers,
but compute with the pure functions of this module and the surrogate spikes of :mod:`surroflos.surrogate`
(which also work in forward mode, so ``torch.func.jvp`` of a step gives the surrogate tangent map).
``LIFBox`` is the sequence version of ``LIFBoxCell``, which Norse lacks; it subclasses Norse's ``SNN``.

Equations (explicit Euler with step ``dt``, default 1e-3; ``a = dt tau_mem_inv``, ``b = dt tau_syn_inv``;
``H`` is the Heaviside step ``H(u) = [u > 0]`` with the surrogate derivative in its place for gradients)::

    LIF (feed-forward; x is the input current)     LIF recurrent (state z, v, i)
      j  = i + x                                     j  = i + W_in x + W_rec z
      u  = v + a ((v_leak - v) + j)                  u  = v + a ((v_leak - v) + j)
      i' = j - b j                                   i' = j - b j
      z' = H(u - v_th)                               z' = H(u - v_th)
      v' = (1 - z') u + z' v_reset                   v' = (1 - [z']) u + [z'] v_reset

    LIF box (no synaptic current)
      u  = v + a ((x + v_leak) - v)
      z' = H(u - v_th)
      v' = (1 - z') u + z' v_reset        (reset_value, Norse's default reset_method)
      v' = (1 - z') u + z' (u - v_th)     (reset_subtract)

The input current jumps *before* the membrane update (the new input acts in the same step) and decays
after it; ``[z']`` is ``z'`` with its gradient stopped: Norse detaches the reset in the recurrent step
only, while the feed-forward and box resets pass the surrogate gradient.

Norse's spike ``method`` maps to :mod:`surroflos.surrogate`: ``"super"`` -> ``superspike`` with scale 1
(Norse 1.1 ignores ``alpha`` for SuperSpike), ``"triangle"`` -> ``triangle`` with scale ``alpha`` (note
that ``LIFParameters``' default ``alpha`` is 100), ``"heaviside"`` -> no gradient. Norse's ``"tanh"``,
``"circ"``, ``"heavi_erfc"`` and ``"adjoint"`` raise :class:`NotImplementedError`.

The recurrent neuron also comes as a step on a flat state ``[z | v | i]: [..., 3N]``
(:func:`lif_recurrent_flat_step`) with its analytic surrogate tangent map
(:func:`lif_recurrent_flat_tangent`), following the ``step_function`` / ``tangent_function`` protocol of
:mod:`surroflos.models.base`.

Norse compatibility. The modules follow Norse 1.1's dtype rules, which are PyTorch's ordinary type
promotion applied to Norse's step:

- inputs may be floating point, integer or boolean (spike trains); the default states are Norse's --
  ``LIFCell``/``LIFBoxCell``: ``v`` a copy of ``p.v_leak`` (often 0-dim) and, for ``LIFCell``, ``i``
  float32 zeros; ``LIF``: ``v = v_leak`` and ``i = 0`` in float32; recurrent layers: ``z`` in the input's
  dtype, ``v``, ``i`` in float32 -- so a boolean, integer, float16 or bfloat16 input gives float32
  states and spikes, a float64 input float64 ones;
- a given state may have any real dtype (an integer ``LIFFeedForwardState(torch.tensor(0),
  torch.tensor(0))`` works) and promotes the same way;
- parameters with dimensions (``[1]``, ``[N]``) promote like any tensor (a float64 ``[N]`` ``v_th`` makes a
  float32 input's ``v`` and spikes float64 while ``i`` stays float32, as in Norse); 0-dim parameters only
  decide the category (a float64 0-dim parameter leaves a float32 input float32); Python numbers in
  ``p`` stay numbers (``LIFBoxCell``/``LIFBox`` keep ``p`` as given, like Norse's ``LIFBoxCell``).

The result dtypes and numbers are Norse's. The fused sequence kernels run where every operation of
Norse's step would run in one dtype (then input and state are converted to it first, which gives the
same numbers); operands whose dtypes stay mixed run the step loop. Where Norse itself fails, so do
these modules, with a ValueError that says why: the recurrent layers need input, ``z`` and weights of one
dtype (``F.linear`` does not promote), and a state or parameters that promote the spikes past the
weights' dtype make Norse fail at the second step (``LIFRecurrent`` raises before the first). Two
deliberate differences: a float16/bfloat16 recurrent layer starts from ``v``, ``i`` in its own dtype
(Norse's float32 default makes its second step fail); the fused kernels carry float16/bfloat16 states
in float32 between steps where Norse rounds every operation. Sparse inputs are not supported (Norse's
``*_sparse`` activations are not implemented): they raise NotImplementedError; pass ``input.to_dense()``.
``repr`` is Norse's; a non-default ``backend`` is appended (``backend='torch'``).

Parameters are checked once, at construction: a NaN or infinite ``tau_syn_inv``, ``tau_mem_inv``,
``v_leak``, ``v_th``, ``v_reset``, ``dt`` or (for ``method="triangle"``, the only method that reads it)
``alpha`` raises a ValueError naming it (Norse runs with it and returns NaN membranes). Learnable tensors
are checked then and never again while running; a parameter changed later is not re-checked.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, Callable, List, NamedTuple, Optional, Sequence, Tuple

import warnings

import torch
import torch.nn.functional as F

with warnings.catch_warnings():
    # Norse 1.1 decorates functions with torch.jit.script at import, which recent PyTorch deprecates.
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=DeprecationWarning)
    import norse.torch as _norse
    from norse.torch import (LIFBoxFeedForwardState, LIFBoxParameters, LIFFeedForwardState, LIFParameters,
                             LIFState)
    from norse.torch.functional.reset import reset_subtract, reset_value
    from norse.torch.module.snn import SNN as _NorseSNN

from . import surrogate as sg
from .kernels.backend import constant_result

__all__ = [
    "LIFCell", "LIFBoxCell", "LIFRecurrentCell", "LIF", "LIFBox", "LIFRecurrent",
    "LIFParameters", "LIFState", "LIFFeedForwardState", "LIFBoxParameters", "LIFBoxFeedForwardState",
    "lif_feed_forward_step", "lif_box_step", "lif_recurrent_step",
    "LIFRecurrentFlatParams", "lif_state_to_flat", "lif_state_from_flat",
    "lif_recurrent_flat_step", "lif_recurrent_flat_tangent",
    "norse_surrogate", "BACKENDS",
]

BACKENDS = ("auto", "torch", "triton", "cpu")

# Norse threshold methods that surroflos does not (yet) provide.
_UNSUPPORTED_METHODS = {
    "tanh": "HeaviTanh", "circ": "HeaviCirc", "heavi_erfc": "HeaviErfc",
    "adjoint": "Norse's adjoint-equation gradients",
}
_SUPPORTED_METHODS = ("super", "triangle", "heaviside")

_LIF_FIELDS = ("tau_syn_inv", "tau_mem_inv", "v_leak", "v_th", "v_reset")
_BOX_FIELDS = ("tau_mem_inv", "v_leak", "v_th", "v_reset")


# ----------------------------------------------------------------------------------------------
# Spike functions
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _triangle(scale: float) -> sg.Surrogate:
    return sg.Surrogate("triangle", scale)


_SUPERSPIKE = sg.Surrogate("superspike")


def norse_surrogate(method: str, alpha: Any = 100.0) -> Optional[sg.Surrogate]:
    """The :class:`~surroflos.surrogate.Surrogate` that reproduces Norse's ``threshold(x, method, alpha)``.

    ``"super"`` -> superspike (scale 1; Norse 1.1 ignores ``alpha``), ``"triangle"`` -> triangle with
    scale ``alpha``, ``"heaviside"`` -> ``None`` (a plain step without gradient). Norse methods that
    surroflos lacks raise :class:`NotImplementedError`, unknown names :class:`ValueError`.
    """
    if method == "super":
        return _SUPERSPIKE
    if method == "triangle":
        if isinstance(alpha, torch.Tensor) and alpha.numel() != 1:
            raise NotImplementedError(f"method='triangle' needs a scalar alpha, got shape {tuple(alpha.shape)}")
        return _triangle(float(alpha))
    if method == "heaviside":
        return None
    if method in _UNSUPPORTED_METHODS:
        raise NotImplementedError(
            f"Norse's method={method!r} ({_UNSUPPORTED_METHODS[method]}) is not implemented in surroflos.norse; "
            f"supported methods: {list(_SUPPORTED_METHODS)}")
    raise ValueError(f"unknown spike method {method!r}; supported methods: {list(_SUPPORTED_METHODS)}")


def _spike(u: torch.Tensor, surrogate: Optional[sg.Surrogate]) -> torch.Tensor:
    """``H(u)``: Heaviside spikes, with the surrogate derivative unless ``surrogate`` is None."""
    if surrogate is None:
        return (u > 0).to(u.dtype)
    return surrogate(u)


# ----------------------------------------------------------------------------------------------
# Pure step functions
# ----------------------------------------------------------------------------------------------


def lif_feed_forward_step(input_tensor: torch.Tensor, state: LIFFeedForwardState, p: LIFParameters,
                          dt: float = 1e-3) -> Tuple[torch.Tensor, LIFFeedForwardState]:
    """One Euler step of the feed-forward LIF neuron driven by the current ``x = input_tensor``::

        j = i + x;  u = v + dt tau_mem_inv ((v_leak - v) + j);  i' = j - dt tau_syn_inv j
        z' = H(u - v_th);  v' = (1 - z') u + z' v_reset        (reset not detached, as in Norse)

    Returns ``(z', LIFFeedForwardState(v', i'))``; same numbers and gradients as Norse's
    ``lif_feed_forward_step``.
    """
    s = norse_surrogate(p.method, p.alpha)
    j = state.i + input_tensor
    u = state.v + (dt * p.tau_mem_inv) * ((p.v_leak - state.v) + j)
    i_new = j + (-dt * p.tau_syn_inv) * j
    z = _spike(u - p.v_th, s)
    v_new = (1 - z) * u + z * p.v_reset
    return z, LIFFeedForwardState(v=v_new, i=i_new)


def lif_box_step(input_tensor: torch.Tensor, state: LIFBoxFeedForwardState, p: LIFBoxParameters,
                 dt: float = 1e-3) -> Tuple[torch.Tensor, LIFBoxFeedForwardState]:
    """One Euler step of the LIF neuron without synaptic current ("box" currents)::

        u = v + dt tau_mem_inv ((x + v_leak) - v);  z' = H(u - v_th)
        v' = (1 - z') u + z' v_reset               p.reset_method = reset_value (default)
        v' = (1 - z') u + z' (u - v_th)            p.reset_method = reset_subtract

    Any other ``reset_method`` is called as ``reset_method(z', u, v_reset, v_th)``, as Norse does.
    Returns ``(z', LIFBoxFeedForwardState(v'))``; matches Norse's ``lif_box_feed_forward_step``.
    """
    s = norse_surrogate(p.method, p.alpha)
    u = state.v + (dt * p.tau_mem_inv) * ((input_tensor + p.v_leak) - state.v)
    z = _spike(u - p.v_th, s)
    reset = getattr(p, "reset_method", reset_value)
    if reset is reset_value:
        v_new = (1 - z) * u + z * p.v_reset
    elif reset is reset_subtract:
        v_new = (1 - z) * u + z * (u - p.v_th)
    else:
        v_new = reset(z, u, p.v_reset, p.v_th)
    return z, LIFBoxFeedForwardState(v=v_new)


def lif_recurrent_step(input_tensor: torch.Tensor, state: LIFState, input_weights: torch.Tensor,
                       recurrent_weights: torch.Tensor, p: LIFParameters,
                       dt: float = 1e-3) -> Tuple[torch.Tensor, LIFState]:
    """One Euler step of the recurrent LIF layer (Norse's ``lif_step``)::

        j = i + W_in x + W_rec z;  u = v + dt tau_mem_inv ((v_leak - v) + j);  i' = j - dt tau_syn_inv j
        z' = H(u - v_th);  v' = (1 - [z']) u + [z'] v_reset

    ``[z']`` is detached (no surrogate gradient through the reset); the returned ``z'``, which drives the
    next step's recurrent current, is not. Returns ``(z', LIFState(z', v', i'))``.
    """
    s = norse_surrogate(p.method, p.alpha)
    j = state.i + F.linear(input_tensor, input_weights) + F.linear(state.z, recurrent_weights)
    u = state.v + (dt * p.tau_mem_inv) * ((p.v_leak - state.v) + j)
    i_new = j + (-dt * p.tau_syn_inv) * j
    z = _spike(u - p.v_th, s)
    zd = z.detach()
    v_new = (1 - zd) * u + zd * p.v_reset
    return z, LIFState(z=z, v=v_new, i=i_new)


# ----------------------------------------------------------------------------------------------
# Flat-state recurrent step and its surrogate tangent map
# ----------------------------------------------------------------------------------------------


class LIFRecurrentFlatParams(NamedTuple):
    """What :func:`lif_recurrent_flat_step` and :func:`lif_recurrent_flat_tangent` read."""

    input_weights: torch.Tensor  # W_in [N, n_in]
    recurrent_weights: torch.Tensor  # W_rec [N, N]
    p: LIFParameters
    dt: float = 1e-3


def lif_state_to_flat(state: LIFState) -> torch.Tensor:
    """``LIFState(z, v, i)`` -> flat ``[z | v | i]: [..., 3N]`` (broadcasting the three to one shape)."""
    z, v, i = torch.broadcast_tensors(state.z, state.v, state.i)
    return torch.cat([z, v, i], dim=-1)


def lif_state_from_flat(flat: torch.Tensor) -> LIFState:
    """Flat ``[z | v | i]: [..., 3N]`` -> ``LIFState(z, v, i)`` (views)."""
    if flat.shape[-1] % 3:
        raise ValueError(f"a flat LIF state has 3N entries in its last dimension, got shape {tuple(flat.shape)}")
    z, v, i = flat.chunk(3, dim=-1)
    return LIFState(z=z, v=v, i=i)


def lif_recurrent_flat_step(x: torch.Tensor, state: torch.Tensor,
                            params: LIFRecurrentFlatParams) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`lif_recurrent_step` on the flat state ``[z | v | i]: [..., 3N]``; returns ``(z', flat')``."""
    z, new = lif_recurrent_step(x, lif_state_from_flat(state), params.input_weights, params.recurrent_weights,
                                params.p, params.dt)
    return z, lif_state_to_flat(new)


def _col(t: Any) -> Any:
    """Per-neuron parameter ``[N]`` as a column ``[N, 1]`` against ``[..., N, k]``; scalars unchanged."""
    return t.unsqueeze(-1) if isinstance(t, torch.Tensor) and t.ndim else t


def lif_recurrent_flat_tangent(x: torch.Tensor, state: torch.Tensor, params: LIFRecurrentFlatParams,
                               Q: torch.Tensor) -> torch.Tensor:
    """The surrogate Jacobian of :func:`lif_recurrent_flat_step` w.r.t. the state, applied to ``Q: [..., 3N, k]``.

    With ``u`` as in the step, ``a = dt tau_mem_inv``, ``b = dt tau_syn_inv`` and ``sigma'`` the surrogate
    derivative (0 for ``method="heaviside"``)::

        dj = dQ_i + W_rec dQ_z;  du = dQ_v + a (dj - dQ_v)
        dz' = sigma'(u - v_th) du;  dv' = (1 - z') du  (detached reset);  di' = (1 - b) dj
    """
    W_in, W_rec, p, dt = params
    z, v, i = state.chunk(3, dim=-1)
    Qz, Qv, Qi = Q.chunk(3, dim=-2)
    j = i + F.linear(x, W_in) + F.linear(z, W_rec)
    a = dt * p.tau_mem_inv
    u = v + a * ((p.v_leak - v) + j)
    x_th = u - p.v_th
    s = norse_surrogate(p.method, p.alpha)
    dj = Qi + torch.matmul(W_rec, Qz)
    du = Qv + _col(a) * (dj - Qv)
    dz = du * (s.derivative(x_th).unsqueeze(-1) if s is not None else 0.0)
    dv = du * (1 - (x_th > 0).to(u.dtype)).unsqueeze(-1)
    di = dj + _col(-dt * p.tau_syn_inv) * dj
    return torch.cat([dz, dv, di], dim=-2)


# ----------------------------------------------------------------------------------------------
# Input validation
# ----------------------------------------------------------------------------------------------


def _check_input(x: Any, *, min_ndim: int, layout: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor of shape {layout}, got {type(x).__name__}")
    if x.layout != torch.strided:
        raise NotImplementedError(f"surroflos.norse does not support sparse inputs ({x.layout}; Norse's sparse "
                                  f"activations are not implemented): pass input.to_dense()")
    if x.is_complex():
        raise ValueError(f"input must be real (floating point, integer or boolean), got dtype {x.dtype}")
    if x.ndim < min_ndim:
        raise ValueError(f"input must have shape {layout}, got shape {tuple(x.shape)}")


def _broadcasts_to(shape: Sequence[int], target: Sequence[int]) -> bool:
    try:
        return tuple(torch.broadcast_shapes(tuple(shape), tuple(target))) == tuple(target)
    except RuntimeError:
        return False


def _same_device(t: torch.Tensor, x: torch.Tensor) -> bool:
    """PyTorch mixes a 0-dim CPU tensor (a scalar) with tensors on any device; anything else must match."""
    return t.device == x.device or (t.ndim == 0 and t.device.type == "cpu")


def _check_state(state: Any, fields: Sequence[str], kind: str, x: torch.Tensor, target: Sequence[int]) -> None:
    """Each state field must be a tensor on the input's device that broadcasts to ``target``.

    Its dtype may differ from the input's: as in Norse, the step promotes (an integer 0-dim state works).
    """
    missing = [f for f in fields if not hasattr(state, f)]
    if missing:
        raise TypeError(f"state must be a {kind} with fields {list(fields)}, got {type(state).__name__}")
    for f in fields:
        t = getattr(state, f)
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"state.{f} must be a torch.Tensor, got {type(t).__name__}")
        if t.is_complex():
            raise ValueError(f"state.{f} must be real, got dtype {t.dtype}")
        if not _same_device(t, x):
            raise ValueError(f"state.{f} is on {t.device} but the input is on {x.device}")
        if not _broadcasts_to(t.shape, target):
            raise ValueError(f"state.{f} has shape {tuple(t.shape)}, which does not match the shape {tuple(target)} "
                             f"that the input of shape {tuple(x.shape)} needs (a state from another batch size "
                             f"or layer?)")


def _check_params(p: Any, fields: Sequence[str], x: torch.Tensor, target: Sequence[int]) -> None:
    """Parameter tensors with dimensions must be on the input's device and broadcast to ``target``.

    Their dtype may differ from the input's: the step promotes as Norse's does (a float64 per-neuron
    parameter makes a float32 input's membrane float64; a 0-dim one does not).
    """
    missing = [f for f in (*fields, "method", "alpha") if not hasattr(p, f)]
    if missing:
        raise TypeError(f"p is missing the neuron parameters {missing} (got {type(p).__name__})")
    for f in fields:
        t = getattr(p, f)
        if isinstance(t, torch.Tensor) and t.ndim > 0:
            if t.device != x.device:
                raise ValueError(f"p.{f} is on {t.device} but the input is on {x.device}")
            if not _broadcasts_to(t.shape, target):
                raise ValueError(f"p.{f} has shape {tuple(t.shape)}, which does not broadcast to the neurons' "
                                 f"shape {tuple(target)}")


def _check_weights(x: torch.Tensor, w_in: torch.Tensor, w_rec: torch.Tensor, input_size: int,
                   hidden_size: int) -> None:
    if x.shape[-1] != input_size:
        raise ValueError(f"input has {x.shape[-1]} features in its last dimension (shape {tuple(x.shape)}), "
                         f"the layer expects input_size={input_size}")
    for name, w, shape in (("input_weights", w_in, (hidden_size, input_size)),
                           ("recurrent_weights", w_rec, (hidden_size, hidden_size))):
        if tuple(w.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(w.shape)}, expected {shape}")
        if w.dtype != x.dtype:
            raise ValueError(f"{name} has dtype {w.dtype} but the input has dtype {x.dtype}: F.linear does not "
                             f"promote (Norse's recurrent layers fail the same way); convert the input or the layer")


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor) and value.numel() != 1:
        bad = int((~torch.isfinite(value.detach())).sum())
        return f"a tensor of shape {tuple(value.shape)} with {bad} non-finite entr{'y' if bad == 1 else 'ies'}"
    return repr(float(value.detach() if isinstance(value, torch.Tensor) else value))


def _require_finite(owner: str, name: str, value: Any) -> None:
    """ValueError naming ``name`` when ``value`` (a number or a tensor, learnable or not) is NaN or infinite.

    Called once, when the module is built: running it never checks again (no host synchronisation there).
    """
    if isinstance(value, torch.Tensor):
        if not (value.is_floating_point() or value.is_complex()):
            return  # integers and booleans are finite
        with torch.no_grad():
            ok = bool(torch.isfinite(value).all())
    elif isinstance(value, numbers.Real):
        ok = math.isfinite(value)
    else:
        return  # not a number: the forward pass reports what is wrong with it
    if not ok:
        raise ValueError(f"{owner}: {name} must be finite, got {_describe(value)}")


def _check_p(owner: str, p: Any, fields: Sequence[str], dt: Any) -> None:
    """Construction-time checks of a Norse parameter tuple: the fields exist, every numeric parameter
    and ``dt`` are finite (``alpha`` only where the spike method uses it: Norse's SuperSpike ignores it),
    and the spike method is one surroflos provides."""
    if not hasattr(p, "method") or not hasattr(p, "alpha"):
        raise TypeError(f"p must be a Norse parameter tuple with 'method' and 'alpha', got {type(p).__name__}")
    missing = [f for f in fields if not hasattr(p, f)]
    if missing:
        raise TypeError(f"p is missing the neuron parameters {missing} (got {type(p).__name__})")
    for f in fields:
        _require_finite(owner, f"p.{f}", getattr(p, f))
    if p.method == "triangle":
        _require_finite(owner, "p.alpha", p.alpha)
    _require_finite(owner, "dt", dt)
    norse_surrogate(p.method, p.alpha)


def _check_backend(backend: str) -> str:
    """``backend`` after checking it is one of :data:`BACKENDS` (every sequence module has fused kernels)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def _backend_repr(module: Any, base: str) -> str:
    """Norse's ``extra_repr``, plus the backend where it is not the default (so default modules print as Norse's)."""
    return base if module.backend == "auto" else f"{base}, backend={module.backend!r}"


# ----------------------------------------------------------------------------------------------
# Initial states (Norse's) and dtype promotion (Norse's rules)
# ----------------------------------------------------------------------------------------------


def _v_leak_clone(v_leak: Any) -> torch.Tensor:
    """Norse's cell default ``v``: a detached copy of ``v_leak`` (its dtype and shape, often 0-dim).

    (Norse's own ``clone_tensor`` rejects a Python number; here it becomes a tensor.)
    """
    v = torch.as_tensor(v_leak).detach().clone()
    v.requires_grad = True  # as Norse does
    return v


def _v_leak_filled(shape: Sequence[int], v_leak: Any, device: torch.device,
                   dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Norse's sequence default ``v``: ``shape`` filled with ``v_leak`` in float32 (``dtype`` if given).

    Norse calls ``torch.full``, which only takes a scalar; a per-neuron ``v_leak`` is expanded here, in a
    dtype that holds it exactly.
    """
    v_leak = torch.as_tensor(v_leak).detach()
    if dtype is None:
        dtype = torch.float32 if v_leak.ndim == 0 else torch.promote_types(v_leak.dtype, torch.float32)
    return v_leak.to(device=device, dtype=dtype).expand(tuple(shape)).clone()


def _tag(t: Any) -> Any:
    """What type promotion sees of an operand: a tensor's dtype and whether it has dimensions (a 0-dim
    tensor only decides the category), a Python number's type."""
    return (t.dtype, t.ndim > 0) if isinstance(t, torch.Tensor) else type(t)


def _stand_in(tag: Any) -> Any:
    """A one-element CPU operand that promotes like the operand ``tag`` describes."""
    if isinstance(tag, tuple):
        return torch.ones((1,) if tag[1] else (), dtype=tag[0])
    return tag(1)


class _Promotion(NamedTuple):
    """The result dtypes of Norse's step for given input, state and parameter dtypes (see :func:`_trace_lif_cached`)."""

    dtype: torch.dtype        # of the membrane (and the spikes) from the first step on
    uniform: bool             # every operation on the input/state runs in ``dtype``: the fused kernels,
    #                           fed everything converted to ``dtype``, give Norse's numbers
    spike_dtype: torch.dtype  # of the first step's spikes (LIFRecurrent feeds them back through F.linear)


def _holds_exactly(v_leak: Any, v: torch.Tensor) -> bool:
    """Does a default state's ``v`` (filled with ``v_leak``) hold ``v_leak`` exactly, so that ``v_leak - v``
    is 0 in any dtype? By dtype, or by value for a CPU scalar (no device synchronisation)."""
    if isinstance(v_leak, (bool, int)):
        return True
    if isinstance(v_leak, torch.Tensor):
        if torch.promote_types(v_leak.dtype, v.dtype) == v.dtype:
            return True
        if v_leak.numel() != 1 or v_leak.device.type != "cpu" or torch.compiler.is_compiling():
            return False
        v_leak = v_leak.item()
    if isinstance(v_leak, numbers.Real):
        return torch.tensor(v_leak, dtype=v.dtype).item() == v_leak
    return False


@functools.lru_cache(maxsize=1024)
def _trace_lif_cached(x: Any, v: Any, i: Any, tau_mem_inv: Any, tau_syn_inv: Any, v_leak: Any, v_th: Any,
                      v_reset: Any, recurrent: Any, default_state: bool, v_leak_exact: bool) -> _Promotion:
    """Norse's LIF step (:func:`lif_feed_forward_step`, or :func:`lif_recurrent_step` when ``recurrent`` is
    the recurrent weights' tag and ``x`` that of ``W_in x``) run twice on one-element stand-ins of the
    operands' tags: the dtypes every operation produces under PyTorch's promotion.

    ``uniform`` holds when every operation that involves the input or the state produces the final dtype.
    With Norse's default state (``i = 0``, ``v = v_leak``, and ``z = 0``) the first step's
    ``j = i + x``, ``v_leak - v`` (when ``v`` holds ``v_leak`` exactly: ``v_leak_exact``) and their sum
    are exact whatever dtype they run in, so they may differ.
    """
    X, V, I, TM, TS, VL, VTH, VR = (_stand_in(t) for t in (x, v, i, tau_mem_inv, tau_syn_inv, v_leak, v_th,
                                                             v_reset))
    R = _stand_in(recurrent) if recurrent is not None else None
    a, c = 1e-3 * TM, -1e-3 * TS  # (dt's value plays no role in the dtypes)
    strict, lenient = [], []
    spike_dtype = None
    for step in range(2):
        j = I + X if R is None else (I + X) + R
        w = VL - V
        w2 = w + j
        dv = a * w2
        u = V + dv
        cj = c * j
        I = j + cj
        s = u - VTH
        z = (s > 0).to(s.dtype)
        r = 1 - z
        ru = r * u
        zr = z * VR
        V = ru + zr
        if step == 0:
            spike_dtype = z.dtype
            if default_state:
                lenient.extend([j, w, w2])
            else:
                strict.extend([j, w, w2])
        else:
            strict.extend([j, w, w2])
        strict.extend([dv, u, cj, I, s, z, r, ru, zr, V])
        if R is not None:
            R = z  # W_rec z: F.linear keeps z's dtype when it matches the weights' (else Norse fails)
    D = V.dtype
    j1, w1, w21 = lenient if lenient else (None, None, None)
    ok = all(t.dtype == D for t in strict)
    if lenient:
        x_exact = isinstance(x, tuple) and x[0].is_floating_point  # j = x exactly, in a dtype >= x's
        w_exact = v_leak_exact
        ok = ok and (x_exact or j1.dtype == D) and (w_exact or w1.dtype == D)
        ok = ok and ((x_exact and w_exact) or w21.dtype == D)
    return _Promotion(D, ok, spike_dtype)


@functools.lru_cache(maxsize=512)
def _trace_box_cached(x: Any, v: Any, tau_mem_inv: Any, v_leak: Any, v_th: Any, v_reset: Any,
                      reset: str) -> _Promotion:
    """:func:`_trace_lif_cached` for :func:`lif_box_step` (``reset`` is ``"value"`` or ``"subtract"``)."""
    X, V, TM, VL, VTH, VR = (_stand_in(t) for t in (x, v, tau_mem_inv, v_leak, v_th, v_reset))
    a = 1e-3 * TM
    seen = []
    spike_dtype = None
    for step in range(2):
        t1 = X + VL
        t2 = t1 - V
        dv = a * t2
        u = V + dv
        s = u - VTH
        z = (s > 0).to(s.dtype)
        r = 1 - z
        ru = r * u
        if reset == "value":
            zr = z * VR
            seen.extend([zr])
        else:
            d = u - VTH
            zr = z * d
            seen.extend([d, zr])
        V = ru + zr
        if step == 0:
            spike_dtype = z.dtype
        seen.extend([t1, t2, dv, u, s, z, r, ru, V])
    D = V.dtype
    return _Promotion(D, all(t.dtype == D for t in seen), spike_dtype)


@constant_result  # a function of dtypes only: a constant of a compiled graph
def _trace_lif(*tags: Any) -> _Promotion:
    return _trace_lif_cached(*tags)


@constant_result
def _trace_box(*tags: Any) -> _Promotion:
    return _trace_box_cached(*tags)


def _lif_promotion(x: torch.Tensor, state: Any, p: Any, default_state: bool,
                   recurrent_weights: Optional[torch.Tensor] = None,
                   input_weights: Optional[torch.Tensor] = None) -> _Promotion:
    """:func:`_trace_lif` for these operands (cached by their dtypes and dimensionality)."""
    lead = _tag(x) if input_weights is None else (input_weights.dtype, True)
    exact = default_state and _holds_exactly(p.v_leak, state.v)
    return _trace_lif(lead, _tag(state.v), _tag(state.i), _tag(p.tau_mem_inv), _tag(p.tau_syn_inv),
                      _tag(p.v_leak), _tag(p.v_th), _tag(p.v_reset),
                      None if recurrent_weights is None else (recurrent_weights.dtype, True), default_state, exact)


def _box_promotion(x: torch.Tensor, state: Any, p: Any, reset: str) -> _Promotion:
    return _trace_box(_tag(x), _tag(state.v), _tag(p.tau_mem_inv), _tag(p.v_leak), _tag(p.v_th), _tag(p.v_reset),
                      reset)


def _converted(state: Any, dtype: torch.dtype, device: torch.device) -> Any:
    """``state`` with every field converted (differentiably) to ``dtype`` on ``device``."""
    return type(state)(*(t.to(device=device, dtype=dtype) for t in state))


def _stack_states(states: List[Any]) -> Any:
    """Stack a list of state tuples field by field (Norse's ``record_states`` format)."""
    return type(states[0])(*(torch.stack(list(f)) for f in zip(*states)))


def _run(step: Callable[[torch.Tensor, Any], Tuple[torch.Tensor, Any]], xs: torch.Tensor, state: Any,
         record: bool) -> Tuple[torch.Tensor, Any]:
    outputs, states = [], []
    for t in range(xs.shape[0]):
        z, state = step(xs[t], state)
        outputs.append(z)
        if record:
            states.append(state)
    return torch.stack(outputs), (_stack_states(states) if record else state)


# ----------------------------------------------------------------------------------------------
# Cells
# ----------------------------------------------------------------------------------------------


def _cell_forward(module, input_tensor: torch.Tensor, state, param_fields, state_fields, state_name: str,
                  step) -> Tuple[torch.Tensor, Any]:
    """The shared body of the feed-forward cells: checks, initial state, one ``step``."""
    _check_input(input_tensor, min_ndim=1, layout="[..., N]")
    target = input_tensor.shape
    _check_params(module.p, param_fields, input_tensor, target)
    if state is None:
        state = module.initial_state(input_tensor)
    else:
        _check_state(state, state_fields, state_name, input_tensor, target)
    return step(input_tensor, state, module.p, module.dt)


class LIFCell(_norse.LIFCell):
    """Feed-forward LIF cell, one step: ``z, state = cell(x, state)`` (see :func:`lif_feed_forward_step`).

    Same constructor as Norse's (``p: LIFParameters``, ``dt=1e-3``); ``x`` is the input current of any
    shape; ``state`` a ``LIFFeedForwardState`` broadcastable to it, or None for ``v = v_leak, i = 0``.
    """

    def __init__(self, p: LIFParameters = LIFParameters(), **kwargs: Any) -> None:
        _check_p(type(self).__name__, p, _LIF_FIELDS, kwargs.get("dt", 1e-3))
        super().__init__(p, **kwargs)
        self.activation = lif_feed_forward_step
        self.activation_sparse = None

    def initial_state(self, input_tensor: torch.Tensor) -> LIFFeedForwardState:
        """Norse's: ``v`` a copy of ``p.v_leak`` (its dtype and shape), ``i`` float32 zeros like the input."""
        return LIFFeedForwardState(v=_v_leak_clone(self.p.v_leak),
                                   i=torch.zeros(input_tensor.shape, device=input_tensor.device, dtype=torch.float32))

    def forward(self, input_tensor: torch.Tensor,
                state: Optional[LIFFeedForwardState] = None) -> Tuple[torch.Tensor, LIFFeedForwardState]:
        return _cell_forward(self, input_tensor, state, _LIF_FIELDS, ("v", "i"), "LIFFeedForwardState",
                             lif_feed_forward_step)


class LIFBoxCell(_norse.LIFBoxCell):
    """LIF cell without synaptic current, one step (see :func:`lif_box_step`).

    Same constructor as Norse's (``p: LIFBoxParameters``, ``dt=1e-3``); ``p`` is kept as given (Python
    numbers stay numbers, as in Norse). ``state`` is a ``LIFBoxFeedForwardState`` or None for
    ``v = v_leak`` (Norse's: a copy of ``p.v_leak``, which may be a Python number here).
    """

    def __init__(self, p: LIFBoxParameters = LIFBoxParameters(), dt: float = 0.001) -> None:
        _check_p(type(self).__name__, p, _BOX_FIELDS, dt)
        super().__init__(p, dt=dt)
        self.activation = lif_box_step

    def initial_state(self, input_tensor: torch.Tensor) -> LIFBoxFeedForwardState:
        return LIFBoxFeedForwardState(v=_v_leak_clone(self.p.v_leak))

    def forward(self, input_tensor: torch.Tensor,
                state: Optional[LIFBoxFeedForwardState] = None) -> Tuple[torch.Tensor, LIFBoxFeedForwardState]:
        return _cell_forward(self, input_tensor, state, _BOX_FIELDS, ("v",), "LIFBoxFeedForwardState", lif_box_step)


class _FlatRecurrent:
    """Access to the flat-state step/tangent functions of a recurrent LIF module."""

    input_weights: torch.Tensor
    recurrent_weights: torch.Tensor
    p: LIFParameters
    dt: float
    hidden_size: torch.Tensor

    step_function = staticmethod(lif_recurrent_flat_step)
    tangent_function = staticmethod(lif_recurrent_flat_tangent)

    @property
    def state_dim(self) -> int:
        """Size ``3N`` of the flat state ``[z | v | i]``."""
        return 3 * int(self.hidden_size)

    def flat_params(self) -> LIFRecurrentFlatParams:
        """The module's weights, parameters and ``dt`` for :func:`lif_recurrent_flat_step` / ``_tangent``."""
        return LIFRecurrentFlatParams(self.input_weights, self.recurrent_weights, self.p, self.dt)

    def _initial_lif_state(self, batch_shape: Sequence[int], like: torch.Tensor) -> LIFState:
        """Norse's: ``z = 0`` in the input's dtype, ``v = v_leak`` and ``i = 0`` in float32 (the first step
        promotes them to a float64 layer's dtype) -- except for a float16/bfloat16 layer, where float32
        states would promote the spikes past the weights' dtype and make the next step's F.linear fail (as
        Norse's does): there ``v`` and ``i`` take the input's dtype."""
        dims = (*batch_shape, int(self.hidden_size))
        low = like.dtype in (torch.float16, torch.bfloat16)
        vi_dtype = like.dtype if low else torch.float32
        state = LIFState(z=torch.zeros(dims, dtype=like.dtype, device=like.device),
                         v=_v_leak_filled(dims, self.p.v_leak, like.device, like.dtype if low else None),
                         i=torch.zeros(dims, dtype=vi_dtype, device=like.device))
        state.v.requires_grad = True  # as Norse does
        return state

    def _checked_state(self, x: torch.Tensor, state: Optional[LIFState], batch_shape: Sequence[int]) -> LIFState:
        _check_weights(x, self.input_weights, self.recurrent_weights, int(self.input_size), int(self.hidden_size))
        target = (*batch_shape, int(self.hidden_size))
        _check_params(self.p, _LIF_FIELDS, x, target)
        if state is None:
            return self._initial_lif_state(batch_shape, x)
        _check_state(state, ("z", "v", "i"), "LIFState", x, target)
        w = self.recurrent_weights
        if state.z.dtype != w.dtype:
            raise ValueError(f"state.z has dtype {state.z.dtype} but recurrent_weights has dtype {w.dtype}: the spikes "
                             f"feed back through F.linear, which does not promote (Norse fails the same way); a v or "
                             f"i state of a wider dtype than the weights promotes the spikes")
        return state


class LIFRecurrentCell(_FlatRecurrent, _norse.LIFRecurrentCell):
    """Recurrent LIF layer, one step: ``z, state = cell(x, state)`` (see :func:`lif_recurrent_step`).

    Same constructor as Norse's: ``(input_size, hidden_size, p=LIFParameters(), input_weights=None,
    recurrent_weights=None, autapses=False, dt=1e-3)``; ``x: [..., input_size]``; ``state`` a ``LIFState``
    or None (``z = 0, v = v_leak, i = 0``). Also exposes the flat-state step (:meth:`flat_params`,
    ``step_function``, ``tangent_function``, ``state_dim``).
    """

    def __init__(self, input_size: int, hidden_size: int, p: LIFParameters = LIFParameters(),
                 **kwargs: Any) -> None:
        _check_p(type(self).__name__, p, _LIF_FIELDS, kwargs.get("dt", 1e-3))
        super().__init__(input_size, hidden_size, p, **kwargs)
        self.activation = lif_recurrent_step
        self.activation_sparse = None

    def initial_state(self, input_tensor: torch.Tensor) -> LIFState:
        return self._initial_lif_state(input_tensor.shape[:-1], input_tensor)

    def forward(self, input_tensor: torch.Tensor, state: Optional[LIFState] = None) -> Tuple[torch.Tensor, LIFState]:
        _check_input(input_tensor, min_ndim=1, layout="[..., input_size]")
        state = self._checked_state(input_tensor, state, input_tensor.shape[:-1])
        return lif_recurrent_step(input_tensor, state, self.input_weights, self.recurrent_weights, self.p, self.dt)


# ----------------------------------------------------------------------------------------------
# Sequence modules
# ----------------------------------------------------------------------------------------------


def _forward_ad_active() -> bool:
    """True inside ``torch.func`` transforms or a forward-AD dual level (the fused ops have no jvp/vmap rule)."""
    if torch.compiler.is_compiling():
        return False  # (Dynamo reports an interpreter stack of its own while tracing)
    try:
        if torch._C._functorch.peek_interpreter_stack() is not None:
            return True
    except AttributeError:  # pragma: no cover - older PyTorch
        pass
    return getattr(torch.autograd.forward_ad, "_current_level", -1) >= 0


def _fusion_blocker(p: Any, fields: Sequence[str], x: torch.Tensor) -> Optional[str]:
    """Why the fused kernels cannot run this module's step (None when they can)."""
    if _forward_ad_active():
        return "forward-mode AD / torch.func transforms (the fused ops have no forward-mode or vmap rule)"
    n = x.shape[-1]
    for f in fields:
        t = getattr(p, f)
        if isinstance(t, torch.Tensor) and t.ndim > 0 and not (t.ndim == 1 and t.shape[0] in (1, n)):
            return (f"p.{f} has shape {tuple(t.shape)}; the fused kernels take parameters of shape [] or [N] = "
                    f"[{n}] (per neuron of the input's last dimension)")
    reset = getattr(p, "reset_method", reset_value)
    if reset is not reset_value and reset is not reset_subtract:
        return f"reset_method={getattr(reset, '__name__', reset)!r} (only reset_value and reset_subtract are fused)"
    return None


def _lif_fused(module, x: torch.Tensor, state: LIFFeedForwardState, backend: str):
    p = module.p
    z, v, i = _norse_kernels().lif_feed_forward_sequence(
        x, state.v, state.i, tau_mem_inv=p.tau_mem_inv, tau_syn_inv=p.tau_syn_inv, v_leak=p.v_leak, v_th=p.v_th,
        v_reset=p.v_reset, dt=module.dt, surrogate=norse_surrogate(p.method, p.alpha), backend=backend)
    if module.record_states:
        return z, LIFFeedForwardState(v=v, i=i)
    return z, LIFFeedForwardState(v=v[-1], i=i[-1])


def _box_fused(module, x: torch.Tensor, state: LIFBoxFeedForwardState, backend: str):
    p = module.p
    reset = "subtract" if getattr(p, "reset_method", reset_value) is reset_subtract else "value"
    z, v = _norse_kernels().lif_box_sequence(
        x, state.v, tau_mem_inv=p.tau_mem_inv, v_leak=p.v_leak, v_th=p.v_th, v_reset=p.v_reset, dt=module.dt,
        reset=reset, surrogate=norse_surrogate(p.method, p.alpha), backend=backend)
    return z, LIFBoxFeedForwardState(v=v if module.record_states else v[-1])


def _norse_kernels():
    from .kernels import norse_lif  # (lazy: keeps `import surroflos.norse` light)
    return norse_lif


def _sequence_forward(module, input_tensor: torch.Tensor, state, param_fields, state_fields, state_name: str,
                      step, fused, promotion) -> Tuple[torch.Tensor, Any]:
    """The shared body of the feed-forward sequence modules: checks, initial state, then the fused
    whole-sequence op ``fused(module, x, state, backend)`` where it can run, else the loop over ``step``.

    The loop promotes dtypes as Norse's does (it is Norse's step). ``promotion(module, x, state, default)``
    (a :class:`_Promotion`) says which dtype that reaches and whether every operation runs in it; then
    the input and the state are converted to it and the fused op gives the same numbers. Mixed dtypes
    that stay mixed (a float64 per-neuron ``v_th`` with a float32 input keeps ``i`` float32) run the loop.
    ``backend="triton"`` with something the fused kernels cannot express raises NotImplementedError;
    ``"auto"``/``"torch"`` fall back to the loop.
    """
    _check_input(input_tensor, min_ndim=2, layout="[T, B, ...]")
    if input_tensor.shape[0] < 1:
        raise ValueError(f"input needs at least one time step, got shape {tuple(input_tensor.shape)}")
    target = input_tensor.shape[1:]
    _check_params(module.p, param_fields, input_tensor, target)
    default = state is None
    if default:
        state = module.initial_state(input_tensor)
    else:
        _check_state(state, state_fields, state_name, input_tensor, target)
    p, dt = module.p, module.dt
    backend = getattr(module, "backend", "auto")
    blocker = _fusion_blocker(p, param_fields, input_tensor)
    if blocker is None:
        promo = promotion(module, input_tensor, state, default)
        if promo.uniform:
            dev = input_tensor.device
            return fused(module, input_tensor.to(promo.dtype), _converted(state, promo.dtype, dev), backend)
        blocker = (f"operands whose dtypes stay mixed under Norse's promotion (input {input_tensor.dtype}, state "
                   f"{[t.dtype for t in state]}, parameters {[_tag(getattr(p, f)) for f in param_fields]})")
    if backend in ("triton", "cpu"):
        raise NotImplementedError(f"{type(module).__name__}(backend={backend!r}): the fused kernels do not support "
                                  f"{blocker}; use backend='auto' or 'torch' (they fall back to the step loop)")
    return _run(lambda x, s: step(x, s, p, dt), input_tensor, state, module.record_states)


class LIF(_norse.LIF):
    """Feed-forward LIF layer over time: ``z_seq, state = lif(x_seq, state)`` with ``x_seq: [T, ...]``.

    Same constructor as Norse's (``p``, ``dt=1e-3``, ``record_states=False``) plus ``backend``:
    ``"torch"`` runs the whole sequence as one fused PyTorch op, ``"triton"`` as fused Triton kernels
    (:func:`surroflos.kernels.norse_lif.lif_feed_forward_sequence`), ``"cpu"`` as the compiled CPU kernels
    (numba; CPU tensors), ``"auto"`` picks Triton for CUDA inputs and the CPU kernels for float32/float64
    CPU inputs. Parameters of shapes other than ``[]``/``[N]`` and forward-mode AD fall back to the step
    loop (``"triton"`` and ``"cpu"`` raise NotImplementedError instead). Returns the spikes ``[T, ...]`` and the final
    ``LIFFeedForwardState`` (all states stacked over time if ``record_states``).
    """

    def __init__(self, p: LIFParameters = LIFParameters(), *, backend: str = "auto", **kwargs: Any) -> None:
        _check_p(type(self).__name__, p, _LIF_FIELDS, kwargs.get("dt", 1e-3))
        resolved = _check_backend(backend)
        super().__init__(p, **kwargs)
        self.backend = resolved
        self.activation = lif_feed_forward_step
        self.activation_sparse = None

    def initial_state(self, input_tensor: torch.Tensor) -> LIFFeedForwardState:
        """Norse's: ``v = v_leak`` and ``i = 0`` in float32, the shape of one time step (the first step
        promotes them like any state)."""
        shape, dev = input_tensor.shape[1:], input_tensor.device
        state = LIFFeedForwardState(v=_v_leak_filled(shape, self.p.v_leak, dev),
                                    i=torch.zeros(shape, device=dev, dtype=torch.float32))
        state.v.requires_grad = True  # as Norse does
        return state

    def forward(self, input_tensor: torch.Tensor,
                state: Optional[LIFFeedForwardState] = None) -> Tuple[torch.Tensor, LIFFeedForwardState]:
        return _sequence_forward(self, input_tensor, state, _LIF_FIELDS, ("v", "i"), "LIFFeedForwardState",
                                 lif_feed_forward_step, _lif_fused,
                                 lambda m, x, s, default: _lif_promotion(x, s, m.p, default))

    def extra_repr(self) -> str:
        return _backend_repr(self, super().extra_repr())


class LIFBox(_NorseSNN):
    """:class:`LIFBoxCell` over time (Norse has no such module; this one subclasses Norse's ``SNN``).

    ``LIFBox(p=LIFBoxParameters(), dt=1e-3, record_states=False, backend="auto")``; ``x_seq: [T, ...]``;
    returns the spikes ``[T, ...]`` and the final ``LIFBoxFeedForwardState`` (or all, stacked). Backends
    as in :class:`LIF` (:func:`surroflos.kernels.norse_lif.lif_box_sequence`); ``reset_value`` and
    ``reset_subtract`` are fused, other ``reset_method`` callables run the step loop. ``p`` is kept as
    given and the initial state is :class:`LIFBoxCell`'s (a copy of ``p.v_leak``), so the layer computes
    exactly Norse's ``LIFBoxCell`` stepped over time, dtypes included.
    """

    def __init__(self, p: LIFBoxParameters = LIFBoxParameters(), dt: float = 0.001, record_states: bool = False,
                 *, backend: str = "auto") -> None:
        _check_p(type(self).__name__, p, _BOX_FIELDS, dt)
        resolved = _check_backend(backend)
        super().__init__(activation=lif_box_step, state_fallback=self.initial_state, p=p, dt=dt,
                         record_states=record_states)
        self.backend = resolved

    def initial_state(self, input_tensor: torch.Tensor) -> LIFBoxFeedForwardState:
        return LIFBoxFeedForwardState(v=_v_leak_clone(self.p.v_leak))

    def forward(self, input_tensor: torch.Tensor,
                state: Optional[LIFBoxFeedForwardState] = None) -> Tuple[torch.Tensor, LIFBoxFeedForwardState]:
        return _sequence_forward(self, input_tensor, state, _BOX_FIELDS, ("v",), "LIFBoxFeedForwardState",
                                 lif_box_step, _box_fused, _box_module_promotion)

    def extra_repr(self) -> str:
        return _backend_repr(self, super().extra_repr())


def _box_module_promotion(module: LIFBox, x: torch.Tensor, state: LIFBoxFeedForwardState,
                          default: bool) -> _Promotion:
    reset = "subtract" if getattr(module.p, "reset_method", reset_value) is reset_subtract else "value"
    return _box_promotion(x, state, module.p, reset)


def _recurrent_blocker(module, x: torch.Tensor, n: int) -> Optional[str]:
    """Why the fused recurrent kernel cannot run this :class:`LIFRecurrent` (``n`` neurons) on ``x`` (None when
    it can)."""
    if _forward_ad_active():
        return "forward-mode AD / torch.func transforms (the fused ops have no forward-mode or vmap rule)"
    p = module.p
    if norse_surrogate(p.method, p.alpha) is None:
        return f"method={p.method!r} (no surrogate gradient; the kernel needs one)"
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        return f"input dtype {x.dtype}"
    if x[0].numel() == 0:
        return "an empty batch"
    for f in _LIF_FIELDS:
        t = getattr(p, f)
        if isinstance(t, torch.Tensor) and t.ndim > 0 and not (t.ndim == 1 and t.shape[0] in (1, n)):
            return (f"p.{f} has shape {tuple(t.shape)}; the fused kernel takes parameters of shape [] or "
                    f"[hidden_size] = [{n}]")
    for f in ("v_leak", "v_reset"):
        t = torch.as_tensor(getattr(p, f))
        if t.requires_grad or bool((t != 0).any()):
            return f"p.{f} != 0 or requiring grad (the kernel has no leak potential or reset value)"
    return None


def _recurrent_fused(module, x: torch.Tensor, state: LIFState, N: int) -> Tuple[torch.Tensor, LIFState]:
    """:class:`LIFRecurrent` on :func:`surroflos.kernels.recurrent.spiking_rnn_sequence` (cuba, zero_mem).

    With ``v_leak = v_reset = 0``, ``a = dt tau_mem_inv``, ``b = dt tau_syn_inv``, ``syn[t] = a j[t]``
    and ``mem[t] = u[t]`` (the membrane before the reset, whose spikes the kernel reads off)::

        syn[t] = (1 - b) syn[t-1] + a W_in x[t] + (a W_rec) S[t-1]
        mem[t] = (1 - a) (1 - [S[t-1]]) mem[t-1] + syn[t]

    the kernel's current-based neuron with ``alpha = 1 - b``, ``beta = 1 - a``, ``W = a W_rec`` and the
    zero reset of the old membrane only. Step 0 runs here in PyTorch on the given state (Norse's ``z0``
    and ``v0`` are independent states, while the kernel would feed back ``H(v0 - v_th)``), and its
    ``u[0]``, ``a j[0]`` start the kernel: the kernel's ``S[-1] = H(u[0] - v_th)`` with the surrogate
    gradient is then exactly Norse's ``z[0]``. Outputs convert back: ``v = (1 - [z]) u``,
    ``i = (1 - b) syn / a``.
    """
    p, dt = module.p, module.dt
    T, batch = x.shape[0], x.shape[1:-1]
    M = x[0].numel() // x.shape[-1]
    dev, dtype = x.device, x.dtype

    def vec(v):  # a parameter as a [] or [N] tensor in x's dtype / device (gradients flow through .to)
        t = torch.as_tensor(v, device=dev) if not isinstance(v, torch.Tensor) else v
        t = t.to(device=dev, dtype=dtype)
        return t.reshape(()) if t.numel() == 1 and N != 1 else t.reshape(-1) if t.ndim else t

    # Norse's own products (dt * tau) first, then the dtype: the same numbers as the step loop.
    a = vec(dt * torch.as_tensor(p.tau_mem_inv))
    nb = vec(-dt * torch.as_tensor(p.tau_syn_inv))  # -b
    v_th = vec(p.v_th)
    surrogate = norse_surrogate(p.method, p.alpha)
    z0, v0, i0 = (t.expand(*batch, N).reshape(M, N) for t in state)
    drive = F.linear(x.reshape(T, M, x.shape[-1]), module.input_weights)  # W_in x of all steps: one GEMM
    # Step 0 exactly as lif_recurrent_step (v_leak = 0, v_reset = 0).
    j0 = i0 + drive[0] + F.linear(z0, module.recurrent_weights)
    u0 = v0 + a * ((p.v_leak - v0) + j0)
    z_first = _spike(u0 - v_th, surrogate)
    if T > 1:
        a_col = a.reshape(-1, 1) if a.ndim else a
        spikes, states = _kernels_recurrent().spiking_rnn_sequence(
            a * drive[1:], a_col * module.recurrent_weights, torch.cat([a * j0, u0], dim=1), neuron="cuba",
            beta=1.0 - a, alpha=1.0 + nb, threshold=v_th, surrogate=surrogate, reset="zero_mem", detach_reset=True,
            backend=module.backend)
        z = torch.cat([z_first.unsqueeze(0), spikes])
        u = torch.cat([u0.unsqueeze(0), states[..., N:]])
        j = torch.cat([j0.unsqueeze(0), states[..., :N] / a])
    else:
        z, u, j = z_first.unsqueeze(0), u0.unsqueeze(0), j0.unsqueeze(0)
    v = (1 - z.detach()) * u
    i = j + nb * j
    shape = (T, *batch, N)
    z, v, i = z.reshape(shape), v.reshape(shape), i.reshape(shape)
    if module.record_states:
        return z, LIFState(z=z, v=v, i=i)
    return z, LIFState(z=z[-1], v=v[-1], i=i[-1])


def _kernels_recurrent():
    from .kernels import recurrent  # (lazy: keeps `import surroflos.norse` light)
    return recurrent


class LIFRecurrent(_FlatRecurrent, _norse.LIFRecurrent):
    """Recurrent LIF layer over time: ``z_seq, state = layer(x_seq, state)``, ``x_seq: [T, ..., input_size]``.

    Same constructor as Norse's (``input_size, hidden_size, p, input_weights, recurrent_weights, autapses,
    dt, record_states``) plus ``backend``: ``"torch"`` runs steps ``1 .. T-1`` as one fused recurrent
    PyTorch op, ``"triton"`` as the fused Triton kernels, ``"cpu"`` with the op's compiled spike-sparse
    forward (CPU tensors), ``"auto"`` picks Triton for CUDA inputs and the op's own choice on the CPU (see
    :func:`_recurrent_fused` for the mapping onto :func:`surroflos.kernels.recurrent.spiking_rnn_sequence`).
    It needs ``v_leak == 0`` and ``v_reset == 0`` (Norse's defaults, without gradient), parameters of shape
    ``[]`` or ``[hidden_size]`` and a method with a surrogate gradient (``"super"``, ``"triangle"``);
    otherwise, and under forward-mode AD, ``"auto"``/``"torch"`` run the step loop and ``"triton"`` /
    ``"cpu"`` raise NotImplementedError. Returns the spikes ``[T, ..., hidden_size]`` and the final ``LIFState`` (or all,
    stacked). Exposes the flat-state step like :class:`LIFRecurrentCell`.
    """

    def __init__(self, input_size: int, hidden_size: int, p: LIFParameters = LIFParameters(), *,
                 backend: str = "auto", **kwargs: Any) -> None:
        _check_p(type(self).__name__, p, _LIF_FIELDS, kwargs.get("dt", 1e-3))
        resolved = _check_backend(backend)
        super().__init__(input_size, hidden_size, p, **kwargs)
        self.backend = resolved
        self.activation = lif_recurrent_step
        self.activation_sparse = None

    def initial_state(self, input_tensor: torch.Tensor) -> LIFState:
        return self._initial_lif_state(input_tensor.shape[1:-1], input_tensor)

    def forward(self, input_tensor: torch.Tensor, state: Optional[LIFState] = None) -> Tuple[torch.Tensor, LIFState]:
        _check_input(input_tensor, min_ndim=2, layout="[T, ..., input_size]")
        if input_tensor.shape[0] < 1:
            raise ValueError(f"input needs at least one time step, got shape {tuple(input_tensor.shape)}")
        default = state is None
        state = self._checked_state(input_tensor, state, input_tensor.shape[1:-1])
        w_rec, n = self.recurrent_weights, int(self.hidden_size)
        promo = _lif_promotion(input_tensor, state, self.p, default, w_rec, self.input_weights)
        if input_tensor.shape[0] > 1 and promo.spike_dtype != w_rec.dtype:
            raise ValueError(
                f"LIFRecurrent: the state (dtypes {[t.dtype for t in state]}) and parameters promote the spikes to "
                f"{promo.spike_dtype}, but they feed back through F.linear with recurrent_weights of dtype "
                f"{w_rec.dtype}, which does not promote: Norse's step fails at the second time step. Convert the "
                f"state and parameters to {w_rec.dtype} (or the layer and input to {promo.spike_dtype})")
        blocker = _recurrent_blocker(self, input_tensor, n)
        if blocker is None and not (promo.uniform and promo.dtype == input_tensor.dtype):
            blocker = (f"operands whose dtypes stay mixed under Norse's promotion (input {input_tensor.dtype}, state "
                       f"{[t.dtype for t in state]}, parameters {[_tag(getattr(self.p, f)) for f in _LIF_FIELDS]})")
        if blocker is None:
            return _recurrent_fused(self, input_tensor, _converted(state, input_tensor.dtype, input_tensor.device), n)
        if self.backend in ("triton", "cpu"):
            raise NotImplementedError(f"LIFRecurrent(backend={self.backend!r}): the fused recurrent kernel does not "
                                      f"support {blocker}; use backend='auto' or 'torch' (they fall back to the step "
                                      "loop)")
        w_in, w_rec, p, dt = self.input_weights, self.recurrent_weights, self.p, self.dt
        return _run(lambda x, s: lif_recurrent_step(x, s, w_in, w_rec, p, dt), input_tensor, state,
                    self.record_states)

    def extra_repr(self) -> str:
        return _backend_repr(self, super().extra_repr())
