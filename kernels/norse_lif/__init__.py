"""Fused multi-step Norse-style feed-forward neurons: the current-based LIF and the LIF "box" neuron.

Public functions (time-first inputs ``x: [T, ...]``; the neurons are the trailing dimensions)::

    z, v, i = lif_feed_forward_sequence(x, v0, i0, tau_mem_inv=..., tau_syn_inv=..., v_leak=..., v_th=...,
                                        v_reset=..., dt=1e-3, surrogate=Surrogate("superspike"))
    z, v = lif_box_sequence(x, v0, tau_mem_inv=..., v_leak=..., v_th=..., v_reset=..., dt=1e-3,
                            reset="value", surrogate=...)

They return the spikes and the states after every step (``[T, ...]`` each) and compute exactly the
loops of :func:`surroflos.norse.lif_feed_forward_step` and :func:`surroflos.norse.lif_box_step`
(Norse 1.1 semantics, same operation order, so the same floating-point numbers)::

    LIF:  j = i + x;  u = v + a ((v_leak - v) + j);  i' = j + c j;  z = H(u - v_th)
          v' = (1 - z) u + z v_reset
    box:  u = v + a ((x + v_leak) - v);  z = H(u - v_th)
          v' = (1 - z) u + z v_reset   (reset="value")   or   (1 - z) u + z (u - v_th)   (reset="subtract")

with ``a = dt tau_mem_inv`` and ``c = -dt tau_syn_inv``. The resets are not detached: the surrogate
gradient flows through ``z`` in the reset, as in Norse's feed-forward neurons. ``surrogate=None`` is
Norse's ``method="heaviside"`` (no gradient through the spike).

Parameters are Python numbers or tensors of shape ``[]`` or ``[N]`` (``N = x.shape[-1]``, one value per
neuron of the last dimension); anything else raises :class:`ValueError` (the Norse drop-ins then fall
back to their step loop). Gradients reach ``x``, the initial state and every parameter tensor that
requires grad (Norse lets users learn ``tau_mem_inv`` and friends): the ops take the per-neuron
coefficient vectors ``a, c, v_leak, v_th, v_reset`` (each ``[N]``), their backward returns the
coefficients' gradients, and autograd chains them back to the user's parameters.

Backends (see :mod:`surroflos.kernels.backend`): ``"torch"`` runs a whole-sequence op whose forward
loops over time with a few fused tensor operations per step (no autograd graph) and whose backward
scans time in reverse with the explicit adjoint formulas below; ``"triton"`` runs one forward kernel
over ``[T, M]`` (state in registers) and one reverse-time backward kernel
(:mod:`surroflos.kernels.norse_lif_triton`); ``"cpu"`` runs the same two passes as compiled numba kernels
for CPU tensors (:mod:`surroflos.kernels.norse_lif_cpu`; the forward bit for bit the PyTorch path's);
``"auto"`` picks Triton for CUDA tensors and, for float32/float64 CPU tensors, the numba kernels where
numba imports (else PyTorch). All are
``torch.library`` custom ops (``surroflos::norse_lif_ff_fwd``/``_bwd``, ``surroflos::norse_lif_box_fwd``/
``_bwd``), so ``torch.compile`` captures them. Forward-mode AD and double backward are not supported.

Adjoint (reverse-time) recursion of the LIF neuron, with ``sigma'`` the surrogate derivative at
``s = u - v_th``, ``gz, gv, gi`` the loss gradients of the step's outputs and ``lv, li`` the gradients
carried back from the next step (zero after the last one)::

    Gv = gv + lv;  Gi = gi + li;  Gz = gz + Gv (v_reset - u);  Gu = Gv (1 - z) + Gz sigma'
    lv <- (1 - a) Gu;  li <- a Gu + (1 + c) Gi  (= dL/dx_t)
    da += Gu ((v_leak - v) + j);  dc += Gi j;  dv_leak += a Gu;  dv_th -= Gz sigma';  dv_reset += Gv z

The box neuron drops ``i``; its subtract reset has ``Gz = gz - Gv v_th``, ``Gu = Gv + Gz sigma'`` and
``dv_th -= Gz sigma' + Gv z``. States are accumulated in float32 for float16/bfloat16/float32 inputs
and in float64 for float64 inputs; outputs have the input's dtype.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from surroflos import surrogate as sg

from ..backend import acc_dtype, check_backend, constant_result, resolve_backend

__all__ = ["lif_feed_forward_sequence", "lif_box_sequence", "RESETS"]

RESETS = ("value", "subtract")
_RESET_ID = {"value": 0, "subtract": 1}
_NO_SURROGATE = -1  # surrogate id meaning "Heaviside without gradient" (Norse's method="heaviside")

ParamLike = Union[float, int, Tensor]


# ----------------------------------------------------------------------------------------------
# PyTorch path: forward loops and reverse-time backward scans
# (x: [T, R, N], states [R, N], coefficient vectors [N]; everything contiguous)
# ----------------------------------------------------------------------------------------------


def _ff_forward_torch(x: Tensor, v0: Tensor, i0: Tensor, a: Tensor, c: Tensor, vl: Tensor, vth: Tensor,
                      vr: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    acc = acc_dtype(x.dtype)
    xs = x.to(acc)
    a, c, vl, vth, vr = (p.to(acc) for p in (a, c, vl, vth, vr))
    spk = torch.empty(x.shape, dtype=torch.bool, device=x.device)
    v_all = torch.empty(x.shape, dtype=acc, device=x.device)
    i_all = torch.empty(x.shape, dtype=acc, device=x.device)
    v, i = v0.to(acc), i0.to(acc)
    s = torch.empty_like(v)
    for t in range(x.shape[0]):
        # Norse's operation order, so that the numbers (and the spikes) are the step loop's.
        j = i + xs[t]
        u = torch.sub(vl, v).add_(j).mul_(a).add_(v)  # v + a ((v_leak - v) + j)
        i = torch.mul(j, c, out=i_all[t]).add_(j)  # j + c j
        torch.gt(torch.sub(u, vth, out=s), 0, out=spk[t])
        v = torch.where(spk[t], vr, u, out=v_all[t])
    return spk.to(x.dtype), v_all.to(x.dtype), i_all.to(x.dtype)


def _surrogate_derivative(s: Tensor, surrogate_id: int, scale: float) -> Tensor:
    if surrogate_id == _NO_SURROGATE:
        return torch.zeros_like(s)
    return sg.surrogate_derivative(s, surrogate_id, scale)


def _ff_backward_torch(gz: Optional[Tensor], gv: Optional[Tensor], gi: Optional[Tensor], x: Tensor, v0: Tensor,
                       i0: Tensor, z: Tensor, v_all: Tensor, i_all: Tensor, a: Tensor, c: Tensor, vl: Tensor,
                       vth: Tensor, vr: Tensor, surrogate_id: int, scale: float,
                       param_grads: bool) -> Tuple[Tensor, ...]:
    # One reverse pass over [rows, N] slices, each step's coefficients recomputed inside the loop (see
    # _box_backward_torch: full-size temporaries cost more than the loop saves). A missing output gradient
    # (None: that output is unused) is zero.
    acc = acc_dtype(x.dtype)
    T = x.shape[0]
    ac, cc, vl, vth, vr = (p.to(acc) for p in (a, c, vl, vth, vr))
    one_minus_a, one_plus_c = 1.0 - ac, 1.0 + cc
    gx = torch.empty(x.shape, dtype=acc, device=x.device)
    lv = torch.zeros(x.shape[1:], dtype=acc, device=x.device)
    li = torch.zeros_like(lv)
    if param_grads:
        s_da, s_dc, s_gu, s_gzsp, s_gvz = (torch.zeros_like(lv) for _ in range(5))
    for t in range(T - 1, -1, -1):
        v_in = (v0 if t == 0 else v_all[t - 1]).to(acc)
        j = torch.add((i0 if t == 0 else i_all[t - 1]).to(acc), x[t].to(acc))
        drive = torch.sub(vl, v_in).add_(j)  # (v_leak - v) + j
        u = torch.mul(drive, ac).add_(v_in)
        sp = _surrogate_derivative(u - vth, surrogate_id, scale)
        vr_minus_u = vr - u
        zt = z[t].to(acc)
        # Gu_t = Gv_t A_t + B_t: the reset and spike terms folded into one coefficient per step.
        A = (1.0 - zt).addcmul_(vr_minus_u, sp)
        Gv = lv if gv is None else torch.add(gv[t].to(acc), lv)
        Gu = torch.mul(Gv, A)
        if gz is not None:
            Gu.add_(gz[t].to(acc) * sp)
        lv = one_minus_a * Gu
        Gi = li if gi is None else torch.add(gi[t].to(acc), li)
        li = torch.mul(Gi, one_plus_c, out=gx[t]).addcmul_(Gu, ac)
        if param_grads:
            s_da.addcmul_(Gu, drive)
            s_dc.addcmul_(Gi, j)
            s_gu.add_(Gu)
            Gz = torch.mul(Gv, vr_minus_u) if gz is None else torch.addcmul(gz[t].to(acc), Gv, vr_minus_u)
            s_gzsp.add_(Gz.mul_(sp))
            s_gvz.addcmul_(Gv, zt)
    gv0, gi0 = lv.to(v0.dtype), gx[0].to(i0.dtype, copy=True)
    if param_grads:
        pg = (s_da.sum(0), s_dc.sum(0), s_gu.sum(0) * ac, -s_gzsp.sum(0), s_gvz.sum(0))
    else:
        pg = tuple(torch.zeros_like(p) for p in (ac, cc, vl, vth, vr))
    return (gx.to(x.dtype), gv0, gi0) + tuple(g.to(p.dtype) for g, p in zip(pg, (a, c, vl, vth, vr)))


def _box_forward_torch(x: Tensor, v0: Tensor, a: Tensor, vl: Tensor, vth: Tensor, vr: Tensor,
                       reset: int) -> Tuple[Tensor, Tensor]:
    acc = acc_dtype(x.dtype)
    xs = x.to(acc)
    a, vl, vth, vr = (p.to(acc) for p in (a, vl, vth, vr))
    spk = torch.empty(x.shape, dtype=torch.bool, device=x.device)
    v_all = torch.empty(x.shape, dtype=acc, device=x.device)
    v = v0.to(acc)
    s = torch.empty_like(v)
    for t in range(x.shape[0]):
        u = torch.add(xs[t], vl).sub_(v).mul_(a).add_(v)  # v + a ((x + v_leak) - v)
        torch.sub(u, vth, out=s)
        torch.gt(s, 0, out=spk[t])
        # (1 - z) u + z v_reset  or  (1 - z) u + z (u - v_th), exactly, for z in {0, 1}
        v = torch.where(spk[t], vr if reset == 0 else s, u, out=v_all[t])
    return spk.to(x.dtype), v_all.to(x.dtype)


def _box_backward_torch(gz: Optional[Tensor], gv: Optional[Tensor], x: Tensor, v0: Tensor, z: Tensor, v_all: Tensor,
                        a: Tensor,
                        vl: Tensor, vth: Tensor, vr: Tensor, reset: int, surrogate_id: int, scale: float,
                        param_grads: bool) -> Tuple[Tensor, ...]:
    # One reverse pass over [rows, N] slices that recomputes each step's coefficients (u, sigma', A) inside the
    # loop. Computing them for all steps at once made a dozen [T, rows, N] temporaries, each a fresh allocation
    # whose page faults and memory traffic cost more than the loop saves: 3.4x slower than Norse's own cell loop
    # at [500, 16, 2048]. The element-wise formulas (and so gx and gv0) are unchanged; the parameter gradients
    # are summed per step into [rows, N] accumulators and over the rows at the end. A missing output gradient
    # (gz or gv None: that output is unused) is zero.
    acc = acc_dtype(x.dtype)
    T = x.shape[0]
    ac, vl, vth, vr = (p.to(acc) for p in (a, vl, vth, vr))
    one_minus_a = 1.0 - ac
    gx = torch.empty(x.shape, dtype=acc, device=x.device)
    lv = torch.zeros(x.shape[1:], dtype=acc, device=x.device)
    if param_grads:
        s_da, s_gu, s_gzsp, s_gvz = (torch.zeros_like(lv) for _ in range(4))
    for t in range(T - 1, -1, -1):
        v_in = (v0 if t == 0 else v_all[t - 1]).to(acc)
        drive = torch.add(x[t].to(acc), vl).sub_(v_in)  # (x + v_leak) - v
        u = torch.mul(drive, ac).add_(v_in)
        sp = _surrogate_derivative(u - vth, surrogate_id, scale)
        zt = z[t].to(acc)
        if reset == 0:
            jump = vr - u  # dv'/dz
            A = (1.0 - zt).addcmul_(jump, sp)
        else:
            jump = -vth
            A = 1.0 - vth * sp
        Gv = lv if gv is None else torch.add(gv[t].to(acc), lv)
        Gu = torch.mul(Gv, A)
        if gz is not None:
            Gu.add_(gz[t].to(acc) * sp)
        lv = one_minus_a * Gu
        torch.mul(Gu, ac, out=gx[t])
        if param_grads:
            s_da.addcmul_(Gu, drive)
            s_gu.add_(Gu)
            Gz = torch.mul(Gv, jump) if gz is None else torch.addcmul(gz[t].to(acc), Gv, jump)
            s_gzsp.add_(Gz.mul_(sp))
            s_gvz.addcmul_(Gv, zt)
    gv0 = lv.to(v0.dtype)
    if param_grads:
        GzSp = s_gzsp.sum(0)
        da = s_da.sum(0)
        dvl = s_gu.sum(0) * ac
        if reset == 0:
            dvth = -GzSp
            dvr = s_gvz.sum(0)
        else:
            dvth = -GzSp - s_gvz.sum(0)
            dvr = torch.zeros_like(vr)
        pg = (da, dvl, dvth, dvr)
    else:
        pg = tuple(torch.zeros_like(p) for p in (ac, vl, vth, vr))
    return (gx.to(x.dtype), gv0) + tuple(g.to(p.dtype) for g, p in zip(pg, (a, vl, vth, vr)))


def _triton_module():
    # Imported lazily: Triton decides interpreter-vs-compiled when the kernels are decorated.
    from . import triton as norse_lif_triton
    return norse_lif_triton


def _cpu_module():
    # Imported lazily: numba is imported (and the kernels compiled or loaded from its cache) on first use.
    from . import cpu as norse_lif_cpu
    return norse_lif_cpu


# ----------------------------------------------------------------------------------------------
# Custom ops (backend "torch" | "triton" | "cpu", already resolved)
# ----------------------------------------------------------------------------------------------


@torch.library.custom_op("surroflos::norse_lif_ff_fwd", mutates_args=())
def _lif_ff_fwd(x: Tensor, v0: Tensor, i0: Tensor, a: Tensor, c: Tensor, v_leak: Tensor, v_th: Tensor,
                v_reset: Tensor, surrogate_id: int, scale: float, backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    if backend == "triton":
        return _triton_module().lif_ff_forward(x, v0, i0, a, c, v_leak, v_th, v_reset)
    if backend == "cpu":
        return _cpu_module().lif_ff_forward(x, v0, i0, a, c, v_leak, v_th, v_reset)
    return _ff_forward_torch(x, v0, i0, a, c, v_leak, v_th, v_reset)


@_lif_ff_fwd.register_fake
def _(x, v0, i0, a, c, v_leak, v_th, v_reset, surrogate_id, scale, backend):
    return torch.empty_like(x), torch.empty_like(x), torch.empty_like(x)


@torch.library.custom_op("surroflos::norse_lif_ff_bwd", mutates_args=())
def _lif_ff_bwd(gz: Optional[Tensor], gv: Optional[Tensor], gi: Optional[Tensor], x: Tensor, v0: Tensor, i0: Tensor,
                z: Tensor, v: Tensor, i: Tensor, a: Tensor, c: Tensor, v_leak: Tensor, v_th: Tensor, v_reset: Tensor,
                surrogate_id: int, scale: float, param_grads: bool,
                backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    if backend == "cpu":  # an unused output's gradient may be None (no [T, M] zero fill)
        return _cpu_module().lif_ff_backward(gz, gv, gi, x, v0, i0, z, v, i, a, c, v_leak, v_th, v_reset,
                                             surrogate_id, scale, param_grads)
    if backend != "triton":  # the PyTorch loop takes a missing gradient as zero itself (no full-size zeros)
        return _ff_backward_torch(gz, gv, gi, x, v0, i0, z, v, i, a, c, v_leak, v_th, v_reset, surrogate_id, scale,
                                  param_grads)
    gz, gv, gi = (_zeros_if_none(g, x) for g in (gz, gv, gi))
    return _triton_module().lif_ff_backward(gz, gv, gi, x, v0, i0, z, v, i, a, c, v_leak, v_th, v_reset,
                                            surrogate_id, scale, param_grads)


@_lif_ff_bwd.register_fake
def _(gz, gv, gi, x, v0, i0, z, v, i, a, c, v_leak, v_th, v_reset, surrogate_id, scale, param_grads, backend):
    return (torch.empty_like(x), torch.empty_like(v0), torch.empty_like(i0),
            *(torch.empty_like(p) for p in (a, c, v_leak, v_th, v_reset)))


def _lif_ff_setup(ctx, inputs, output):
    x, v0, i0, a, c, v_leak, v_th, v_reset, surrogate_id, scale, backend = inputs
    ctx.save_for_backward(x, v0, i0, a, c, v_leak, v_th, v_reset, *output)
    ctx.surrogate = (surrogate_id, scale)
    ctx.backend = backend
    ctx.set_materialize_grads(False)  # unused outputs' gradients stay None (the backward op fills where needed)


def _zeros_if_none(g: Optional[Tensor], like: Tensor) -> Tensor:
    return torch.zeros_like(like) if g is None else g.contiguous()


def _lif_ff_backward(ctx, gz, gv, gi):
    x, v0, i0, a, c, v_leak, v_th, v_reset, z, v, i = ctx.saved_tensors
    gz, gv, gi = (None if g is None else g.contiguous() for g in (gz, gv, gi))
    param_grads = any(ctx.needs_input_grad[3:8])
    grads = _lif_ff_bwd(gz, gv, gi, x, v0, i0, z, v, i, a, c, v_leak, v_th, v_reset, *ctx.surrogate,
                        param_grads, ctx.backend)
    return (*grads, None, None, None)


_lif_ff_fwd.register_autograd(_lif_ff_backward, setup_context=_lif_ff_setup)


@torch.library.custom_op("surroflos::norse_lif_box_fwd", mutates_args=())
def _lif_box_fwd(x: Tensor, v0: Tensor, a: Tensor, v_leak: Tensor, v_th: Tensor, v_reset: Tensor, reset: int,
                 surrogate_id: int, scale: float, backend: str) -> Tuple[Tensor, Tensor]:
    if backend == "triton":
        return _triton_module().lif_box_forward(x, v0, a, v_leak, v_th, v_reset, reset)
    if backend == "cpu":
        return _cpu_module().lif_box_forward(x, v0, a, v_leak, v_th, v_reset, reset)
    return _box_forward_torch(x, v0, a, v_leak, v_th, v_reset, reset)


@_lif_box_fwd.register_fake
def _(x, v0, a, v_leak, v_th, v_reset, reset, surrogate_id, scale, backend):
    return torch.empty_like(x), torch.empty_like(x)


@torch.library.custom_op("surroflos::norse_lif_box_bwd", mutates_args=())
def _lif_box_bwd(gz: Optional[Tensor], gv: Optional[Tensor], x: Tensor, v0: Tensor, z: Tensor, v: Tensor, a: Tensor,
                 v_leak: Tensor, v_th: Tensor, v_reset: Tensor, reset: int, surrogate_id: int, scale: float,
                 param_grads: bool, backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    if backend == "cpu":
        return _cpu_module().lif_box_backward(gz, gv, x, v0, z, v, a, v_leak, v_th, v_reset, reset, surrogate_id,
                                              scale, param_grads)
    if backend != "triton":  # the PyTorch loop takes a missing gradient as zero itself (no full-size zeros)
        return _box_backward_torch(gz, gv, x, v0, z, v, a, v_leak, v_th, v_reset, reset, surrogate_id, scale,
                                   param_grads)
    gz, gv = (_zeros_if_none(g, x) for g in (gz, gv))
    return _triton_module().lif_box_backward(gz, gv, x, v0, z, v, a, v_leak, v_th, v_reset, reset, surrogate_id,
                                             scale, param_grads)


@_lif_box_bwd.register_fake
def _(gz, gv, x, v0, z, v, a, v_leak, v_th, v_reset, reset, surrogate_id, scale, param_grads, backend):
    return (torch.empty_like(x), torch.empty_like(v0), *(torch.empty_like(p) for p in (a, v_leak, v_th, v_reset)))


def _lif_box_setup(ctx, inputs, output):
    x, v0, a, v_leak, v_th, v_reset, reset, surrogate_id, scale, backend = inputs
    ctx.save_for_backward(x, v0, a, v_leak, v_th, v_reset, *output)
    ctx.static = (reset, surrogate_id, scale)
    ctx.backend = backend
    ctx.set_materialize_grads(False)


def _lif_box_backward(ctx, gz, gv):
    x, v0, a, v_leak, v_th, v_reset, z, v = ctx.saved_tensors
    gz, gv = (None if g is None else g.contiguous() for g in (gz, gv))
    param_grads = any(ctx.needs_input_grad[2:6])
    grads = _lif_box_bwd(gz, gv, x, v0, z, v, a, v_leak, v_th, v_reset, *ctx.static, param_grads, ctx.backend)
    return (*grads, None, None, None, None)


_lif_box_fwd.register_autograd(_lif_box_backward, setup_context=_lif_box_setup)


# ----------------------------------------------------------------------------------------------
# Public dispatch
# ----------------------------------------------------------------------------------------------


def _check_x(x: Any) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape [T, ..., N], got {type(x).__name__}")
    if x.layout != torch.strided:
        raise ValueError(f"x must be a dense (strided) tensor, got layout {x.layout}")
    if not x.is_floating_point():
        raise ValueError(f"x must be floating point, got dtype {x.dtype}")
    if x.ndim < 2:
        raise ValueError(f"x must have shape [T, ..., N] (time first, at least 2 dimensions), got {tuple(x.shape)}")
    if x.shape[0] < 1:
        raise ValueError(f"x needs at least one time step, got shape {tuple(x.shape)}")


def _state(name: str, s: Any, x: Tensor) -> Tensor:
    """An initial state broadcast to the neurons' shape ``x.shape[1:]`` (autograd sums the broadcast back)."""
    if not isinstance(s, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(s).__name__}")
    if s.dtype != x.dtype:
        raise ValueError(f"{name} has dtype {s.dtype} but x has dtype {x.dtype}")
    if s.device != x.device:
        raise ValueError(f"{name} is on {s.device} but x is on {x.device}")
    target = tuple(x.shape[1:])
    try:
        ok = tuple(torch.broadcast_shapes(tuple(s.shape), target)) == target
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"{name} has shape {tuple(s.shape)}, which does not broadcast to the neurons' shape "
                         f"{target} of x with shape {tuple(x.shape)}")
    return s.expand(target)


def _check_dt(dt: Any) -> float:
    if isinstance(dt, bool) or not isinstance(dt, numbers.Real):
        raise TypeError(f"dt must be a real number, got {type(dt).__name__}")
    dt = float(dt)
    if not math.isfinite(dt) or dt <= 0:
        raise ValueError(f"dt must be a positive finite number, got {dt!r}")
    return dt


def _check_param(name: str, p: Any, n: int, x: Tensor) -> None:
    if isinstance(p, Tensor):
        if p.ndim == 0:
            return  # 0-dim tensors follow PyTorch's scalar promotion, on any device
        if p.ndim != 1 or p.shape[0] not in (1, n):
            raise ValueError(f"{name} has shape {tuple(p.shape)}; the fused kernels take parameters of shape [] or "
                             f"[N] = [{n}] (one value per neuron of x's last dimension)")
        if p.device != x.device:
            raise ValueError(f"{name} is on {p.device} but x is on {x.device}")
        return
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"{name} must be a real number or a tensor, got {type(p).__name__}")
    if not math.isfinite(float(p)):
        raise ValueError(f"{name} must be finite, got {p!r}")


def _vector(p: ParamLike, n: int, x: Tensor) -> Tensor:
    """A coefficient as a contiguous ``[N]`` vector in the accumulator dtype (differentiable for tensors)."""
    acc = acc_dtype(x.dtype)
    if isinstance(p, Tensor):
        return p.to(device=x.device, dtype=acc).expand(n).contiguous()
    return torch.full((n,), float(p), dtype=acc, device=x.device)


def _surrogate(surrogate: Any) -> Tuple[int, float]:
    if surrogate is None:
        return _NO_SURROGATE, 1.0
    s = sg.get(surrogate)
    return s.id, float(s.scale)


@constant_result
def _resolve(backend: str, device: str, dtype: str) -> str:
    # Dynamo cannot trace Triton's environment knobs; the answer is a constant of the compiled graph.
    resolved = resolve_backend(backend, device, cpu_kernel=True)
    if resolved == "cpu" and backend == "auto" and dtype not in ("torch.float32", "torch.float64"):
        return "torch"  # half precision on the CPU: the reference path
    return resolved


def _prepare(x: Tensor, states: Sequence[Tuple[str, Any]], params: Sequence[Tuple[str, Any]],
             backend: str) -> Tuple[str, Tensor, list]:
    _check_x(x)
    check_backend(backend)
    n = x.shape[-1]
    for name, p in params:
        _check_param(name, p, n, x)
    resolved = _resolve(backend, str(x.device), str(x.dtype))
    if resolved in ("triton", "cpu") and x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise ValueError(f"the {resolved} kernels support float16, bfloat16, float32 and float64 inputs, not "
                         f"{x.dtype}")
    rows = x[0].numel() // n if n else 0
    shape = (x.shape[0], rows, n)
    flat = [_state(name, s, x).reshape(rows, n).contiguous() for name, s in states]
    return resolved, x.reshape(shape).contiguous(), flat


def lif_feed_forward_sequence(x: Tensor, v0: Tensor, i0: Tensor, *, tau_mem_inv: ParamLike, tau_syn_inv: ParamLike,
                              v_leak: ParamLike, v_th: ParamLike, v_reset: ParamLike, dt: float = 1e-3,
                              surrogate: Optional[sg.SurrogateLike] = None,
                              backend: str = "auto") -> Tuple[Tensor, Tensor, Tensor]:
    """Run the feed-forward (current-based) LIF neuron over ``x: [T, ..., N]`` in one fused op.

    Args:
        x: input currents, time first.
        v0, i0: initial membrane voltage and synaptic current; tensors of ``x``'s dtype and device that
            broadcast to ``x.shape[1:]``.
        tau_mem_inv, tau_syn_inv, v_leak, v_th, v_reset: numbers or tensors of shape ``[]`` or ``[N]``
            (per neuron of the last dimension); tensors that require grad get gradients.
        dt: the Euler step.
        surrogate: a :class:`~surroflos.surrogate.Surrogate` (or its name) for the spike's gradient, or
            None for a plain Heaviside step without gradient (Norse's ``method="heaviside"``).
        backend: ``"auto"`` | ``"torch"`` | ``"triton"`` | ``"cpu"`` (see :mod:`surroflos.kernels.backend`).

    Returns:
        ``(z, v, i)``, each of ``x``'s shape and dtype: the spikes and the states after every step.

    Raises:
        ValueError: bad shapes, dtypes, devices, ``dt`` or parameter shapes other than ``[]``/``[N]``.
        TypeError: arguments of the wrong type.
        TritonUnavailableError: ``backend="triton"`` where the kernels cannot run.
    """
    dt = _check_dt(dt)
    params = (("tau_mem_inv", tau_mem_inv), ("tau_syn_inv", tau_syn_inv), ("v_leak", v_leak), ("v_th", v_th),
              ("v_reset", v_reset))
    resolved, x3, (v, i) = _prepare(x, (("v0", v0), ("i0", i0)), params, backend)
    sid, scale = _surrogate(surrogate)
    n = x.shape[-1]
    # The coefficients in the parameters' own dtype first, as Norse's step computes them.
    a = _vector(dt * tau_mem_inv, n, x)
    c = _vector(-dt * tau_syn_inv, n, x)
    vl, vth, vr = (_vector(p, n, x) for p in (v_leak, v_th, v_reset))
    z, v_all, i_all = _lif_ff_fwd(x3, v, i, a, c, vl, vth, vr, sid, scale, resolved)
    return z.reshape(x.shape), v_all.reshape(x.shape), i_all.reshape(x.shape)


def lif_box_sequence(x: Tensor, v0: Tensor, *, tau_mem_inv: ParamLike, v_leak: ParamLike, v_th: ParamLike,
                     v_reset: ParamLike, dt: float = 1e-3, reset: str = "value",
                     surrogate: Optional[sg.SurrogateLike] = None, backend: str = "auto") -> Tuple[Tensor, Tensor]:
    """Run the LIF neuron without synaptic current ("box") over ``x: [T, ..., N]`` in one fused op.

    ``reset="value"`` sets spiking neurons to ``v_reset`` (Norse's ``reset_value``), ``"subtract"``
    subtracts ``v_th`` (Norse's ``reset_subtract``; ``v_reset`` is then unused). Other arguments as in
    :func:`lif_feed_forward_sequence`. Returns ``(z, v)``, each of ``x``'s shape and dtype.
    """
    dt = _check_dt(dt)
    if reset not in _RESET_ID:
        raise ValueError(f"reset must be one of {RESETS}, got {reset!r}")
    params = (("tau_mem_inv", tau_mem_inv), ("v_leak", v_leak), ("v_th", v_th), ("v_reset", v_reset))
    resolved, x3, (v,) = _prepare(x, (("v0", v0),), params, backend)
    sid, scale = _surrogate(surrogate)
    n = x.shape[-1]
    a = _vector(dt * tau_mem_inv, n, x)
    vl, vth, vr = (_vector(p, n, x) for p in (v_leak, v_th, v_reset))
    z, v_all = _lif_box_fwd(x3, v, a, vl, vth, vr, _RESET_ID[reset], sid, scale, resolved)
    return z.reshape(x.shape), v_all.reshape(x.shape)
