"""Fused multi-step feed-forward LIF neurons with snnTorch 1.0 semantics: ``Leaky`` and ``Synaptic``.

:func:`leaky_sequence` and :func:`synaptic_sequence` run a whole sequence ``x: [T, ...]`` (time first,
any trailing shape, flattened to ``[T, M]`` inside) in one call and differentiate it in one call.
Per step, with ``R = H(mem[t-1] - theta)`` the delayed reset signal (detached unless
``detach_reset=False``, then its gradient is the surrogate of ``mem[t-1] - theta``)::

    Leaky     subtract: m = beta mem + x - R theta    zero: m = beta (1 - R) mem + x    none: m = beta mem + x
    Synaptic  syn = alpha syn + x;  b = beta mem + syn
              subtract: m = b - R theta               zero: m = b - R b                 none: m = b
    spk = g H(m - theta)                              (g = ``graded``, a constant)
    reset_delay=False (with a reset): m <- m - (spk/g - R) theta (subtract) or m - (spk/g - R) m (zero),
              not detached (the gradient flows through the surrogate of the spike, as in snnTorch)

``H`` is the Heaviside step (``H(0) = 0``) with the surrogate derivative of ``surrogate`` (a
:class:`surroflos.Surrogate` or its name) in backward. Unlike snnTorch's layers these functions do not
clamp ``beta``/``alpha``: pass the values to use (``surroflos.snntorch.Leaky.sequence`` passes the
clamped ones). The step functions :func:`surroflos.snntorch.leaky_step` / ``synaptic_step`` are the
references these functions reproduce (tests/test_kernels_lif.py).

Parameters ``beta``, ``alpha``, ``threshold``: Python numbers, one-element tensors, or per-neuron
tensors of shape ``[N]`` that broadcast against the last dimension of ``x``. Any other shape (and a
``graded`` that needs a gradient) raises :class:`LIFConfigError`, a ``ValueError`` that tells callers
with a general fallback (the snnTorch drop-ins) to use it. Gradients flow to ``x``, the initial
states and the parameters (reduced to each parameter's shape).

Backends (:mod:`surroflos.kernels.backend`): ``"torch"`` runs a whole-sequence PyTorch implementation:
the forward loops over ``T`` without autograd, writing into preallocated ``[T, M]`` buffers (four ops
per step for the default configuration, the spikes included), and saves only the membrane trace (plus
``x`` and the spikes for ``reset_delay=False``); the backward scans time in reverse with the explicit
per-step gradient formulas (no autograd graph), the same formulas as the Triton backward kernel, whose
PyTorch reference it is. ``"triton"`` runs one forward kernel and one backward kernel over the whole
sequence (:mod:`surroflos.kernels.lif_triton`). ``"cpu"`` (both functions): compiled numba kernels for
CPU tensors, one forward and one backward pass over memory, parallel over blocks of neurons, the forward
bit for bit the PyTorch path's (:mod:`surroflos.kernels.lif_cpu`). ``"auto"``: Triton for CUDA tensors;
for float32/float64 CPU tensors the numba kernels where numba imports; PyTorch otherwise (half
precision on the CPU, numba missing or ``SURROFLOS_DISABLE_CPU_KERNELS=1``). All paths are the torch.library custom ops ``surroflos::leaky_sequence`` and
``surroflos::synaptic_sequence`` (``register_fake`` and ``register_autograd``; the backward is the op
``surroflos::*_sequence_backward``), so ``torch.compile`` captures them whole. Double backward is not
supported.

Precision: states are accumulated in float32 (float64 for float64 inputs); outputs have the dtype of
``x``. The backward recomputes from the stored outputs, so for float16/bfloat16 inputs it sees the
rounded membrane trace (gradients then agree with the forward to the input precision only). Inputs
are not scanned for NaN (that would cost a pass over ``x``); a NaN propagates like in snnTorch.
"""

import math
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from ... import surrogate as sg
from ..backend import acc_dtype, resolve_backend

__all__ = ["leaky_sequence", "synaptic_sequence", "LIFConfigError", "RESETS"]

RESETS = ("subtract", "zero", "none")
_SUB, _ZERO, _NONE = 0, 1, 2
_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

ParamLike = Union[float, Tensor]


class LIFConfigError(ValueError):
    """A configuration the fused neurons cannot express (parameter shape, learnable ``graded``, ...)."""


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def leaky_sequence(x: Tensor, mem0: Optional[Tensor], beta: ParamLike, threshold: ParamLike, *,
                   surrogate: Union[sg.Surrogate, str], reset: str = "subtract", reset_delay: bool = True,
                   detach_reset: bool = True, graded: Union[float, Tensor] = 1.0,
                   backend: str = "auto") -> Tuple[Tensor, Tensor]:
    """snnTorch ``Leaky`` over a whole sequence: ``(spk, mem)``, both ``[T, ...]`` like ``x``.

    Args:
        x: input current ``[T, ...]`` (floating point).
        mem0: initial membrane, the shape of ``x[0]`` (``None``: zeros).
        beta, threshold: decay and threshold (scalars or per-neuron ``[N]``, ``N = x.shape[-1]``).
        surrogate: the surrogate spike function (:class:`surroflos.Surrogate` or a name).
        reset: ``"subtract"``, ``"zero"`` or ``"none"``.
        reset_delay: snnTorch's ``reset_delay`` (``False``: also reset right after the spike).
        detach_reset: ``False`` lets the gradient flow through the delayed reset signal.
        graded: constant factor of the output spikes (snnTorch's ``graded_spikes_factor``).
        backend: ``"auto"``, ``"torch"``, ``"triton"`` or ``"cpu"``.

    Raises:
        LIFConfigError: a parameter shape or ``graded`` the fused path cannot express.
        ValueError, TypeError: malformed inputs. TritonUnavailableError: see
        :func:`surroflos.kernels.backend.resolve_backend`.
    """
    x2, shape = _flatten_input(x)
    m0 = _initial_state("mem0", mem0, x, x2)
    b, th = _param("beta", beta, x), _param("threshold", threshold, x)
    cfg = _config(surrogate, reset, reset_delay, detach_reset, graded)
    which = _backend(backend, x)
    spk, mem = torch.ops.surroflos.leaky_sequence(x2, m0, b, th, *cfg, which)
    return spk.view(shape), mem.view(shape)


def synaptic_sequence(x: Tensor, syn0: Optional[Tensor], mem0: Optional[Tensor], alpha: ParamLike,
                      beta: ParamLike, threshold: ParamLike, *, surrogate: Union[sg.Surrogate, str],
                      reset: str = "subtract", reset_delay: bool = True, detach_reset: bool = True,
                      graded: Union[float, Tensor] = 1.0, backend: str = "auto") -> Tuple[Tensor, Tensor, Tensor]:
    """snnTorch ``Synaptic`` over a whole sequence: ``(spk, syn, mem)``, each ``[T, ...]`` like ``x``.

    ``syn0``/``mem0``: initial synaptic current and membrane (``None``: zeros); ``alpha``: synaptic
    decay. Everything else as in :func:`leaky_sequence`.
    """
    x2, shape = _flatten_input(x)
    s0 = _initial_state("syn0", syn0, x, x2)
    m0 = _initial_state("mem0", mem0, x, x2)
    a, b, th = _param("alpha", alpha, x), _param("beta", beta, x), _param("threshold", threshold, x)
    cfg = _config(surrogate, reset, reset_delay, detach_reset, graded)
    which = _backend(backend, x)
    spk, syn, mem = torch.ops.surroflos.synaptic_sequence(x2, s0, m0, a, b, th, *cfg, which)
    return spk.view(shape), syn.view(shape), mem.view(shape)


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def _flatten_input(x: object) -> Tuple[Tensor, torch.Size]:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor [T, ...], got {type(x).__name__}")
    if x.ndim < 1:
        raise ValueError("x must have a leading time dimension, [T, ...]; got a 0-d tensor")
    if not x.is_floating_point():
        raise ValueError(f"x must be floating point, got dtype {x.dtype}")
    T = x.shape[0]
    return x.reshape(T, math.prod(x.shape[1:])), x.shape


def _initial_state(name: str, s: Optional[Tensor], x: Tensor, x2: Tensor) -> Tensor:
    if s is None:
        return x2.new_zeros(x2.shape[1:])
    if not isinstance(s, Tensor):
        raise TypeError(f"{name} must be a tensor or None, got {type(s).__name__}")
    if s.shape != x.shape[1:]:
        raise ValueError(f"{name} must have the shape of one time step of x, {tuple(x.shape[1:])}; got "
                         f"{tuple(s.shape)}")
    if s.dtype != x.dtype:
        raise ValueError(f"{name} has dtype {s.dtype} but x has dtype {x.dtype}")
    if s.device != x.device:
        raise ValueError(f"{name} is on {s.device} but x is on {x.device}")
    return s.reshape(-1)


def _param(name: str, value: object, x: Tensor) -> Tensor:
    """A parameter as a 0-d or ``[N]`` tensor in the accumulator dtype on x's device (differentiably)."""
    acc = acc_dtype(x.dtype)
    if isinstance(value, bool) or not isinstance(value, (int, float, Tensor)):
        raise TypeError(f"{name} must be a number or a tensor, got {type(value).__name__}")
    if not isinstance(value, Tensor):
        return torch.tensor(float(value), dtype=acc, device=x.device)
    if not (value.is_floating_point() or value.dtype in (torch.int32, torch.int64)):
        raise ValueError(f"{name} must be a real tensor, got dtype {value.dtype}")
    if value.numel() == 1 and value.ndim <= 1:
        return value.to(device=x.device, dtype=acc).reshape(())
    if value.ndim == 1 and x.ndim >= 2 and value.shape[0] == x.shape[-1]:
        return value.to(device=x.device, dtype=acc)
    last = x.shape[-1] if x.ndim >= 2 else None
    raise LIFConfigError(f"{name} must be a scalar or a per-neuron tensor of shape [{last}] (the last dimension "
                         f"of x: {tuple(x.shape)}); got shape {tuple(value.shape)}")


def _config(surrogate: object, reset: object, reset_delay: object, detach_reset: object,
            graded: object) -> Tuple[int, float, int, bool, bool, float]:
    """``(surrogate id, scale, reset code, reset_delay, detach_reset, graded)`` for the ops."""
    if not isinstance(surrogate, (sg.Surrogate, str)):
        raise TypeError(f"surrogate must be a surroflos.Surrogate or its name, got {type(surrogate).__name__}")
    sur = sg.get(surrogate)
    if reset not in RESETS:
        raise ValueError(f"reset must be one of {RESETS}, got {reset!r}")
    for name, flag in (("reset_delay", reset_delay), ("detach_reset", detach_reset)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    if isinstance(graded, Tensor):
        if graded.requires_grad:
            raise LIFConfigError("graded must be a constant: a learnable graded_spikes_factor is not supported by "
                                 "the fused neurons")
        if graded.numel() != 1:
            raise LIFConfigError(f"graded must be a single number, got a tensor of shape {tuple(graded.shape)}")
        graded = float(graded)
    if isinstance(graded, bool) or not isinstance(graded, (int, float)) or not math.isfinite(graded):
        raise ValueError(f"graded must be a finite number, got {graded!r}")
    code = RESETS.index(reset)
    if graded == 0 and not reset_delay and code != _NONE:
        # snnTorch's immediate reset divides the spikes by graded (NaN); the kernels read spikes back.
        raise LIFConfigError("graded=0 with reset_delay=False is not supported (the immediate reset divides by it)")
    return sur.id, float(sur.scale), code, reset_delay, detach_reset, float(graded)


def _backend(backend: str, x: Tensor, cpu_kernel: bool = True) -> str:
    which = resolve_backend(backend, x.device, cpu_kernel=cpu_kernel)
    if which == "cpu" and backend == "auto" and x.dtype not in (torch.float32, torch.float64):
        return "torch"  # half precision on the CPU: the reference path
    if which in ("triton", "cpu") and x.dtype not in _KERNEL_DTYPES:
        raise ValueError(f"backend={which!r} supports dtypes {_KERNEL_DTYPES}, got {x.dtype}")
    return which


# --------------------------------------------------------------------------------------------------
# PyTorch path: shared pieces
# --------------------------------------------------------------------------------------------------
# Both directions work one time step at a time on [K, N] rows (K = M // N): the rows stay in cache,
# while whole-sequence [T, M] temporaries would stream through memory once per op. The backward
# applies the same per-step formulas as the Triton backward kernel.
# Products that are not exact (beta * mem, grad * surrogate) are rounded before they are added, as in
# snnTorch's own ops: torch.addcmul fuses them (one rounding), and with steep surrogates a last-bit
# difference in the membrane grows through time into visible gradient differences. addcmul is used
# only where the product is exact (a 0/1 reset signal times theta or mem).


def _neurons(*params: Tensor) -> int:
    """Length of the per-neuron parameters (1 when all are scalars)."""
    return next((p.shape[0] for p in params if p.ndim == 1), 1)


def _as_acc(t: Tensor, acc: torch.dtype, shape: Tuple[int, ...]) -> Tensor:
    return t.reshape(shape).to(acc)


def _reduce(partial: Optional[Tensor], param: Tensor) -> Tensor:
    """Per-element gradient ``[K, N]`` -> the parameter's shape (zeros when it was not accumulated)."""
    if partial is None:
        return torch.zeros_like(param)
    return (partial.sum(0) if param.ndim == 1 else partial.sum()).to(param.dtype)


def _late_reset_(m: Tensor, R: Tensor, thr: Tensor, nthr: Tensor, s: Tensor, d: Tensor, reset: int) -> None:
    """Immediate reset in place: ``s = H(m - theta)``, ``m -= (s - R) theta`` (or ``(s - R) m``)."""
    torch.gt(m, thr, out=s)
    torch.sub(s, R, out=d)
    if reset == _SUB:
        m.addcmul_(d, nthr)
    else:
        m.addcmul_(d, m, value=-1)


def _spike_output(s: Tensor, g: float, dtype: torch.dtype, T: int, M: int) -> Tensor:
    spk = s.to(dtype)
    if g != 1.0:
        spk.mul_(g)
    return spk.view(T, M)


def _fire_backward(A: Tensor, gs: Tensor, m: Optional[Tensor], s: Optional[Tensor], R: Optional[Tensor],
                   thr: Tensor, nthr: Tensor, sm: Tensor, reset: int, late: bool, out: Tensor,
                   want_GR: bool, dthr: Optional[Tensor]) -> Optional[Tensor]:
    """Backward through ``spk = g s`` and the immediate reset of one step.

    ``A``: gradient on the returned membrane; ``gs``: gradient on ``s`` from the spike output (times
    ``g``); ``sm``: surrogate derivative at ``m - theta``. Writes the gradient on the pre-reset
    membrane ``m`` into ``out``, adds the threshold part into ``dthr`` and returns the gradient on
    the reset signal ``R`` (zeros without the immediate reset; ``None`` unless ``want_GR``).
    """
    if not late:
        torch.mul(gs, sm, out=out).add_(A)
        if dthr is not None:
            dthr.addcmul_(gs, sm, value=-1)
        return torch.zeros_like(A) if want_GR else None
    if reset == _SUB:  # m' = m - (s - R) theta
        Gs = gs - A * thr
        torch.mul(Gs, sm, out=out).add_(A)
        if dthr is not None:
            dthr.addcmul_(s - R, A, value=-1)
        GR = A * thr if want_GR else None
    else:  # zero: m' = m - (s - R) m
        Gs = gs - A * m
        torch.mul(Gs, sm, out=out).add_(A * (R - s).add_(1))
        GR = A * m if want_GR else None
    if dthr is not None:
        dthr.addcmul_(Gs, sm, value=-1)
    return GR


class _Rows:
    """Per-step access to the ``[T, K, N]`` views of the saved tensors, converted to the accumulator dtype."""

    def __init__(self, acc: torch.dtype, shape: Tuple[int, ...], **tensors: Optional[Tensor]):
        self.acc = acc
        self.views = {k: None if v is None else v.reshape(shape) for k, v in tensors.items()}

    def __call__(self, name: str, t: int) -> Tensor:
        return self.views[name][t].to(self.acc)


# --------------------------------------------------------------------------------------------------
# PyTorch path: Leaky
# --------------------------------------------------------------------------------------------------


def _leaky_forward_torch(x: Tensor, mem0: Tensor, beta: Tensor, thr: Tensor, reset: int, late: bool,
                         g: float) -> Tuple[Tensor, Tensor]:
    T, M = x.shape
    n = _neurons(beta, thr)
    acc = acc_dtype(x.dtype)
    shape = (T, M // n, n)
    xa = _as_acc(x, acc, shape)
    mem = torch.empty((T, M), dtype=acc, device=x.device)
    mv = mem.view(shape)
    s = torch.empty(shape, dtype=acc, device=x.device)  # H(m - theta), also the next step's reset signal
    u = _as_acc(mem0, acc, shape[1:])
    R, tmp = torch.empty_like(u), torch.empty_like(u)
    nthr = -thr
    with torch.no_grad():
        for t in range(T):
            m = mv[t]
            if reset != _NONE:
                # With the delayed reset only, R is the previous spike; otherwise recompute it.
                Rt = s[t - 1] if t and not late else torch.gt(u, thr, out=R)
            if reset == _ZERO:
                torch.addcmul(u, Rt, u, value=-1, out=tmp)  # (1 - R) mem
                torch.mul(tmp, beta, out=m).add_(xa[t])
            else:
                torch.mul(u, beta, out=m).add_(xa[t])
                if reset == _SUB:
                    m.addcmul_(Rt, nthr)
            if late:
                _late_reset_(m, Rt, thr, nthr, s[t], tmp, reset)
            else:
                torch.gt(m, thr, out=s[t])
            u = m
    return _spike_output(s, g, x.dtype, T, M), mem.to(x.dtype)


def _leaky_backward_torch(gspk: Tensor, gmem: Tensor, x: Optional[Tensor], mem0: Tensor, mem: Tensor,
                          spk: Optional[Tensor], beta: Tensor, thr: Tensor, sid: int, scale: float, reset: int,
                          late: bool, rgrad: bool, g: float, params_grad: bool
                          ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    if not late and not rgrad:
        return _leaky_backward_linear_scan(gspk, gmem, mem0, mem, beta, thr, sid, scale, reset, g, params_grad)
    T, M = mem.shape
    n = _neurons(beta, thr)
    acc = acc_dtype(mem.dtype)
    shape = (T, M // n, n)
    row = _Rows(acc, shape, gspk=gspk, gmem=gmem, x=x, mem=mem, spk=spk)
    gx = torch.empty(shape, dtype=acc, device=mem.device)
    carry = _as_acc(mem0, acc, shape[1:]).new_zeros(shape[1:])  # gradient on mem[t] from the steps after t
    dbeta = torch.zeros_like(carry) if params_grad else None
    dthr = torch.zeros_like(carry) if params_grad else None
    nthr = -thr
    vm = None  # m[t] - theta; without the immediate reset it is the previous iteration's u - theta
    for t in range(T - 1, -1, -1):
        u = row("mem", t - 1) if t else _as_acc(mem0, acc, shape[1:])
        vu = u - thr
        R = (vu > 0).to(acc) if reset != _NONE else None
        A = row("gmem", t) + carry
        gs = row("gspk", t) if g == 1.0 else row("gspk", t) * g
        m = s = None
        if late:
            xt = row("x", t)
            m = (u * beta).add_(xt).addcmul_(R, nthr) if reset == _SUB else ((u - R * u) * beta).add_(xt)
            vm = m - thr
            s = (row("spk", t) != 0).to(acc)
        elif vm is None:
            vm = row("mem", t) - thr
        sm = sg.surrogate_derivative(vm, sid, scale)
        Gm = gx[t]
        GR = _fire_backward(A, gs, m, s, R, thr, nthr, sm, reset, late, Gm, rgrad, dthr)
        # m = beta u + x - R theta  |  beta (1 - R) u + x  |  beta u + x
        if reset == _SUB:
            du = beta
            if rgrad:
                GR.addcmul_(Gm, nthr)
            if params_grad:
                dthr.addcmul_(Gm, R, value=-1)
                dbeta.addcmul_(Gm, u)
        elif reset == _ZERO:
            keep = 1.0 - R
            du = beta * keep
            if rgrad:
                GR.addcmul_(Gm, beta * u, value=-1)
            if params_grad:
                dbeta.addcmul_(Gm, u * keep)
        else:
            du = beta
            if params_grad:
                dbeta.addcmul_(Gm, u)
        carry = Gm * du
        if rgrad:
            su = sg.surrogate_derivative(vu, sid, scale)
            carry.addcmul_(GR, su)
            if params_grad:
                dthr.addcmul_(GR, su, value=-1)
        vm = vu
    return gx.to(mem.dtype).view(T, M), carry.to(mem0.dtype).reshape(M), _reduce(dbeta, beta), _reduce(dthr, thr)


def _leaky_backward_linear_scan(gspk: Tensor, gmem: Tensor, mem0: Tensor, mem: Tensor, beta: Tensor, thr: Tensor,
                                sid: int, scale: float, reset: int, g: float, params_grad: bool,
                                chunk: int = 8) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The backward of the common case (delayed, detached reset: snnTorch's default) as a linear scan.

    With ``R`` detached and no immediate reset, the gradient on the membrane obeys the *linear*
    recurrence ``G[t] = a[t] + c[t+1] G[t+1]`` with ``a = gmem + g gspk sigma'(m - theta)`` and
    ``c = dm[t]/dm[t-1]`` (``beta``, or ``beta (1 - R)`` for the zero reset). ``a`` and ``c`` are
    computed for ``chunk`` steps at a time (small enough to stay in cache; whole-sequence temporaries
    would stream through main memory), which leaves one fused op per step in the time loop instead of
    about ten.
    """
    T, M = mem.shape
    n = _neurons(beta, thr)
    acc = acc_dtype(mem.dtype)
    shape = (T, M // n, n)
    m_all = mem.reshape(shape)
    gs_all = gspk.reshape(shape)
    gm_all = gmem.reshape(shape)
    u0 = _as_acc(mem0, acc, shape[1:])
    G = torch.empty(shape, dtype=acc, device=mem.device)  # gradient on m[t], which is also the one on x[t]
    dbeta = torch.zeros(shape[1:], dtype=acc, device=mem.device) if params_grad else None
    dthr = torch.zeros_like(dbeta) if params_grad else None
    nxt = None  # G[t1] of the chunk after this one
    c_nxt = None  # c[t1]
    for t1 in range(T, 0, -chunk):
        t0 = max(0, t1 - chunk)
        m = m_all[t0:t1].to(acc)
        prev = torch.cat([(u0 if t0 == 0 else m_all[t0 - 1].to(acc)).unsqueeze(0), m[:-1]])
        sm = sg.surrogate_derivative(m - thr, sid, scale)
        gsm = gs_all[t0:t1].to(acc) * sm
        if g != 1.0:
            gsm.mul_(g)
        Gc = G[t0:t1]
        torch.add(gm_all[t0:t1].to(acc), gsm, out=Gc)
        R = (prev > thr).to(acc) if reset != _NONE else None
        c = (1.0 - R) * beta if reset == _ZERO else None
        for j in range(t1 - t0 - 1, -1, -1):
            if nxt is not None:
                if reset == _ZERO:
                    Gc[j].addcmul_(c_nxt, nxt)
                else:
                    Gc[j].addcmul_(nxt, beta)
            nxt = Gc[j]
            c_nxt = c[j] if c is not None else None
        if params_grad:
            dthr.sub_(gsm.sum(0))
            if reset == _SUB:
                dthr.sub_((Gc * R).sum(0))
            dbeta.add_((Gc * prev * (1.0 - R)).sum(0) if reset == _ZERO else (Gc * prev).sum(0))
    gmem0 = G[0] * c_nxt if reset == _ZERO else G[0] * beta
    return (G.to(mem.dtype).view(T, M), gmem0.to(mem0.dtype).reshape(M), _reduce(dbeta, beta),
            _reduce(dthr, thr))

# --------------------------------------------------------------------------------------------------
# PyTorch path: Synaptic
# --------------------------------------------------------------------------------------------------


def _synaptic_forward_torch(x: Tensor, syn0: Tensor, mem0: Tensor, alpha: Tensor, beta: Tensor, thr: Tensor,
                            reset: int, late: bool, g: float) -> Tuple[Tensor, Tensor, Tensor]:
    T, M = x.shape
    n = _neurons(alpha, beta, thr)
    acc = acc_dtype(x.dtype)
    shape = (T, M // n, n)
    xa = _as_acc(x, acc, shape)
    syn = torch.empty((T, M), dtype=acc, device=x.device)
    mem = torch.empty((T, M), dtype=acc, device=x.device)
    yv, mv = syn.view(shape), mem.view(shape)
    s = torch.empty(shape, dtype=acc, device=x.device)
    y, u = _as_acc(syn0, acc, shape[1:]), _as_acc(mem0, acc, shape[1:])
    R, tmp = torch.empty_like(u), torch.empty_like(u)
    nthr = -thr
    with torch.no_grad():
        for t in range(T):
            if reset != _NONE:
                Rt = s[t - 1] if t and not late else torch.gt(u, thr, out=R)
            y = torch.mul(y, alpha, out=yv[t]).add_(xa[t])
            m = torch.mul(u, beta, out=mv[t]).add_(y)
            if reset == _SUB:
                m.addcmul_(Rt, nthr)
            elif reset == _ZERO:
                m.addcmul_(Rt, m, value=-1)
            if late:
                _late_reset_(m, Rt, thr, nthr, s[t], tmp, reset)
            else:
                torch.gt(m, thr, out=s[t])
            u = m
    return _spike_output(s, g, x.dtype, T, M), syn.to(x.dtype), mem.to(x.dtype)


def _synaptic_backward_torch(gspk: Tensor, gsyn: Tensor, gmem: Tensor, syn0: Tensor, mem0: Tensor, syn: Tensor,
                             mem: Tensor, spk: Optional[Tensor], alpha: Tensor, beta: Tensor, thr: Tensor, sid: int,
                             scale: float, reset: int, late: bool, rgrad: bool, g: float, params_grad: bool):
    T, M = mem.shape
    n = _neurons(alpha, beta, thr)
    acc = acc_dtype(mem.dtype)
    shape = (T, M // n, n)
    row = _Rows(acc, shape, gspk=gspk, gsyn=gsyn, gmem=gmem, syn=syn, mem=mem, spk=spk)
    gx = torch.empty(shape, dtype=acc, device=mem.device)
    carry_m = torch.zeros(shape[1:], dtype=acc, device=mem.device)
    carry_s = torch.zeros_like(carry_m)
    dalpha, dbeta, dthr = ((torch.zeros_like(carry_m) for _ in range(3)) if params_grad else (None,) * 3)
    Gm = torch.empty_like(carry_m)
    nthr = -thr
    vm = None
    for t in range(T - 1, -1, -1):
        u = row("mem", t - 1) if t else _as_acc(mem0, acc, shape[1:])
        y = row("syn", t - 1) if t else _as_acc(syn0, acc, shape[1:])
        vu = u - thr
        R = (vu > 0).to(acc) if reset != _NONE else None
        A = row("gmem", t) + carry_m
        C = row("gsyn", t) + carry_s
        gs = row("gspk", t) if g == 1.0 else row("gspk", t) * g
        b = (u * beta).add_(row("syn", t)) if late or reset == _ZERO else None  # beta u + syn[t]
        m = s = None
        if late:
            m = torch.addcmul(b, R, nthr) if reset == _SUB else torch.addcmul(b, R, b, value=-1)
            vm = m - thr
            s = (row("spk", t) != 0).to(acc)
        elif vm is None:
            vm = row("mem", t) - thr
        sm = sg.surrogate_derivative(vm, sid, scale)
        GR = _fire_backward(A, gs, m, s, R, thr, nthr, sm, reset, late, Gm, rgrad, dthr)
        # m = b - R theta  |  b - R b  |  b
        Gb = Gm
        if reset == _SUB:
            if rgrad:
                GR.addcmul_(Gm, nthr)
            if params_grad:
                dthr.addcmul_(Gm, R, value=-1)
        elif reset == _ZERO:
            if rgrad:
                GR.addcmul_(Gm, b, value=-1)
            Gb = Gm * (1.0 - R)
        Gn = torch.add(Gb, C, out=gx[t])
        if params_grad:
            dalpha.addcmul_(Gn, y)
            dbeta.addcmul_(Gb, u)
        carry_s = alpha * Gn
        carry_m = beta * Gb
        if rgrad:
            su = sg.surrogate_derivative(vu, sid, scale)
            carry_m.addcmul_(GR, su)
            if params_grad:
                dthr.addcmul_(GR, su, value=-1)
        vm = vu
    return (gx.to(mem.dtype).view(T, M), carry_s.to(syn0.dtype).reshape(M), carry_m.to(mem0.dtype).reshape(M),
            _reduce(dalpha, alpha), _reduce(dbeta, beta), _reduce(dthr, thr))


# --------------------------------------------------------------------------------------------------
# Custom ops (both backends; the autograd formula is the whole-sequence backward)
# --------------------------------------------------------------------------------------------------


def _triton():
    from . import triton as lif_triton  # lazily: Triton decides interpreter-vs-compiled when this is imported
    return lif_triton


def _cpu():
    from . import cpu as lif_cpu  # lazily: numba is imported (and the kernels compiled or loaded) on first use
    return lif_cpu


@torch.library.custom_op("surroflos::leaky_sequence", mutates_args=())
def _leaky_op(x: Tensor, mem0: Tensor, beta: Tensor, threshold: Tensor, surrogate_id: int, scale: float,
              reset: int, reset_delay: bool, detach_reset: bool, graded: float,
              backend: str) -> Tuple[Tensor, Tensor]:
    late = not reset_delay and reset != _NONE
    if backend == "triton":
        return _triton().leaky_forward(x.contiguous(), mem0.contiguous(), beta, threshold, reset, late, graded)
    if backend == "cpu":
        return _cpu().leaky_forward(x, mem0, beta, threshold, reset, late, graded)
    return _leaky_forward_torch(x, mem0, beta, threshold, reset, late, graded)


@_leaky_op.register_fake
def _(x, mem0, beta, threshold, surrogate_id, scale, reset, reset_delay, detach_reset, graded, backend):
    return torch.empty_like(x), torch.empty_like(x)


@torch.library.custom_op("surroflos::leaky_sequence_backward", mutates_args=())
def _leaky_backward_op(grad_spk: Optional[Tensor], grad_mem: Optional[Tensor], x: Optional[Tensor], mem0: Tensor,
                       mem: Tensor, spk: Optional[Tensor], beta: Tensor, threshold: Tensor, surrogate_id: int,
                       scale: float, reset: int, reset_delay: bool, detach_reset: bool, graded: float, backend: str,
                       params_grad: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    late = not reset_delay and reset != _NONE
    rgrad = not detach_reset and reset != _NONE
    if backend == "cpu":  # an unused output's gradient may be None (no [T, M] zero fill)
        return _cpu().leaky_backward(grad_spk, grad_mem, x, mem0, mem, spk, beta, threshold, surrogate_id, scale,
                                     reset, late, rgrad, graded, params_grad)
    grad_spk = torch.zeros_like(mem) if grad_spk is None else grad_spk
    grad_mem = torch.zeros_like(mem) if grad_mem is None else grad_mem
    if backend == "triton":
        return _triton().leaky_backward(grad_spk, grad_mem, x, mem0.contiguous(), mem, spk, beta, threshold,
                                        surrogate_id, scale, reset, late, rgrad, graded)
    return _leaky_backward_torch(grad_spk, grad_mem, x, mem0, mem, spk, beta, threshold, surrogate_id, scale,
                                 reset, late, rgrad, graded, params_grad)


@_leaky_backward_op.register_fake
def _(grad_spk, grad_mem, x, mem0, mem, spk, beta, threshold, *args):
    return torch.empty_like(mem), torch.empty_like(mem0), torch.empty_like(beta), torch.empty_like(threshold)


def _leaky_setup(ctx, inputs, output):
    x, mem0, beta, threshold, *cfg = inputs
    spk, mem = output
    late = not cfg[3] and cfg[2] != _NONE  # not reset_delay and a reset
    # Without the immediate reset the backward needs only the membrane trace (x and spikes are not kept).
    ctx.save_for_backward(x if late else None, mem0, mem, spk if late else None, beta, threshold)
    ctx.cfg = cfg
    if cfg[-1] == "cpu":  # the CPU kernels take None for an unused output's gradient
        ctx.set_materialize_grads(False)


def _leaky_autograd(ctx, grad_spk, grad_mem):
    x, mem0, mem, spk, beta, threshold = ctx.saved_tensors
    params_grad = ctx.needs_input_grad[2] or ctx.needs_input_grad[3]
    grads = torch.ops.surroflos.leaky_sequence_backward(grad_spk, grad_mem, x, mem0, mem, spk, beta, threshold,
                                                        *ctx.cfg, params_grad)
    return (*grads, None, None, None, None, None, None, None)


_leaky_op.register_autograd(_leaky_autograd, setup_context=_leaky_setup)


@torch.library.custom_op("surroflos::synaptic_sequence", mutates_args=())
def _synaptic_op(x: Tensor, syn0: Tensor, mem0: Tensor, alpha: Tensor, beta: Tensor, threshold: Tensor,
                 surrogate_id: int, scale: float, reset: int, reset_delay: bool, detach_reset: bool, graded: float,
                 backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    late = not reset_delay and reset != _NONE
    if backend == "triton":
        return _triton().synaptic_forward(x.contiguous(), syn0.contiguous(), mem0.contiguous(), alpha, beta,
                                          threshold, reset, late, graded)
    if backend == "cpu":
        return _cpu().synaptic_forward(x, syn0, mem0, alpha, beta, threshold, reset, late, graded)
    return _synaptic_forward_torch(x, syn0, mem0, alpha, beta, threshold, reset, late, graded)


@_synaptic_op.register_fake
def _(x, syn0, mem0, alpha, beta, threshold, *args):
    return torch.empty_like(x), torch.empty_like(x), torch.empty_like(x)


@torch.library.custom_op("surroflos::synaptic_sequence_backward", mutates_args=())
def _synaptic_backward_op(grad_spk: Optional[Tensor], grad_syn: Optional[Tensor], grad_mem: Optional[Tensor],
                          syn0: Tensor, mem0: Tensor,
                          syn: Tensor, mem: Tensor, spk: Optional[Tensor], alpha: Tensor, beta: Tensor,
                          threshold: Tensor, surrogate_id: int, scale: float, reset: int, reset_delay: bool,
                          detach_reset: bool, graded: float, backend: str,
                          params_grad: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    late = not reset_delay and reset != _NONE
    rgrad = not detach_reset and reset != _NONE
    if backend == "cpu":  # an unused output's gradient may be None (no [T, M] zero fill)
        return _cpu().synaptic_backward(grad_spk, grad_syn, grad_mem, syn0, mem0, syn, mem, spk, alpha, beta,
                                        threshold, surrogate_id, scale, reset, late, rgrad, graded, params_grad)
    grad_spk, grad_syn, grad_mem = (torch.zeros_like(mem) if gr is None else gr
                                    for gr in (grad_spk, grad_syn, grad_mem))
    if backend == "triton":
        return _triton().synaptic_backward(grad_spk, grad_syn, grad_mem, syn0.contiguous(), mem0.contiguous(), syn,
                                           mem, spk, alpha, beta, threshold, surrogate_id, scale, reset, late,
                                           rgrad, graded)
    return _synaptic_backward_torch(grad_spk, grad_syn, grad_mem, syn0, mem0, syn, mem, spk, alpha, beta, threshold,
                                    surrogate_id, scale, reset, late, rgrad, graded, params_grad)


@_synaptic_backward_op.register_fake
def _(grad_spk, grad_syn, grad_mem, syn0, mem0, syn, mem, spk, alpha, beta, threshold, *args):
    return (torch.empty_like(mem), torch.empty_like(syn0), torch.empty_like(mem0), torch.empty_like(alpha),
            torch.empty_like(beta), torch.empty_like(threshold))


def _synaptic_setup(ctx, inputs, output):
    x, syn0, mem0, alpha, beta, threshold, *cfg = inputs
    spk, syn, mem = output
    late = not cfg[3] and cfg[2] != _NONE
    ctx.save_for_backward(syn0, mem0, syn, mem, spk if late else None, alpha, beta, threshold)
    ctx.cfg = cfg
    if cfg[-1] == "cpu":  # the CPU kernels take None for an unused output's gradient
        ctx.set_materialize_grads(False)


def _synaptic_autograd(ctx, grad_spk, grad_syn, grad_mem):
    params_grad = any(ctx.needs_input_grad[3:6])
    grads = torch.ops.surroflos.synaptic_sequence_backward(grad_spk, grad_syn, grad_mem, *ctx.saved_tensors,
                                                           *ctx.cfg, params_grad)
    return (*grads, None, None, None, None, None, None, None)


_synaptic_op.register_autograd(_synaptic_autograd, setup_context=_synaptic_setup)
