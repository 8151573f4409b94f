"""Compiled CPU kernels (numba) for :mod:`surroflos.kernels.norse_lif`: ``backend="cpu"`` of Norse's
feed-forward LIF (``lif_feed_forward_sequence``) and LIF box (``lif_box_sequence``).

The same design as :mod:`surroflos.kernels.lif_cpu` (whose block scheduling, thread pool, disk cache and
allocation this module reuses; the kernels live in :mod:`surroflos.kernels._lif_cpu_kernels` beside the
snnTorch ones, so that they share the surrogate and block helpers and numba's cache of one file): one
forward pass writing the spikes and the states after every step, and one reverse-time pass for the
adjoint, each reading and writing every ``[T, M]`` tensor once, blocks of neurons in parallel. The forward
is bit for bit the PyTorch path's (same operations in the same order, no ``fastmath``); the backward
recomputes ``u`` (and ``j``) from the saved states, as the PyTorch path does, and agrees with it to
rounding (per-neuron sums instead of its whole-tensor reductions). The box backward also recomputes the spikes
``H(u - v_th)`` (bit for bit the forward's, so the saved spikes are not read for float32/float64 inputs) and,
for Norse's defaults (value reset, no parameter or ``v`` gradient), runs one fused loop per row and surrogate. An unused output's gradient is not
materialised (``None`` reaches the kernels as one row of zeros).
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from ..lif.cpu import BLOCK_WIDE, _block, _empty, _grad_np, _kernels, _np, _run_blocks, _surrogate_constants, _threads

__all__ = ["lif_ff_forward", "lif_ff_backward", "lif_box_forward", "lif_box_backward"]


def _acc(dtype: torch.dtype) -> Tuple[torch.dtype, np.dtype]:
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    return acc, np.dtype("float64" if acc == torch.float64 else "float32")


def _layout(x: Tensor) -> Tuple[int, int]:
    """``(T, M)`` of the ops' ``x: [T, R, N]`` (``M = R N``)."""
    return x.shape[0], x.shape[1] * x.shape[2]


def _flat(t: Tensor, acc: torch.dtype, T: int, M: int) -> np.ndarray:
    return _np(t.to(acc).reshape(T, M))


def _sur(sid: int, scale: float, npd: np.dtype):
    if sid < 0:  # no surrogate: the kernels write zeros
        return npd.type(0), npd.type(0)
    return _surrogate_constants(sid, scale, npd)


def _partials(M: int, acc: torch.dtype, k: int) -> list:
    return [torch.zeros(M, dtype=acc) for _ in range(k)]


def _to_param(partial: Tensor, p: Tensor, factor: Optional[Tensor] = None) -> Tensor:
    """Per-element partials ``[M]`` -> the ``[N]`` coefficient's gradient (times ``factor`` after the sum)."""
    g = partial.view(-1, p.shape[0]).sum(0)
    if factor is not None:
        g = g * factor.to(g.dtype)
    return g.to(p.dtype)


def lif_ff_forward(x: Tensor, v0: Tensor, i0: Tensor, a: Tensor, c: Tensor, vl: Tensor, vth: Tensor,
                   vr: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """``(z, v, i)`` of Norse's LIF over ``x: [T, R, N]``, in ``x``'s dtype."""
    acc, npd = _acc(x.dtype)
    T, M = _layout(x)
    z, v, i = (_empty(T, M, acc) for _ in range(3))
    if T and M:
        block = _block(M)
        coef = [_np(p.to(acc)) for p in (a, c, vl, vth, vr)]
        _run_blocks(_kernels().norse_ff_fwd, (_flat(x, acc, T, M), _np(v0.to(acc).reshape(M)),
                                              _np(i0.to(acc).reshape(M)), *coef, npd.type(1), block),
                    (z.numpy(), v.numpy(), i.numpy()), -(-M // block), _threads(T, M, block))
    return tuple(t.view(x.shape).to(x.dtype) for t in (z, v, i))


def lif_ff_backward(gz: Optional[Tensor], gv: Optional[Tensor], gi: Optional[Tensor], x: Tensor, v0: Tensor,
                    i0: Tensor, z: Tensor, v_all: Tensor, i_all: Tensor, a: Tensor, c: Tensor, vl: Tensor,
                    vth: Tensor, vr: Tensor, surrogate_id: int, scale: float,
                    param_grads: bool) -> Tuple[Tensor, ...]:
    """``(gx, gv0, gi0, da, dc, dv_leak, dv_th, dv_reset)``; ``gz``/``gv``/``gi`` may be ``None``."""
    acc, npd = _acc(x.dtype)
    T, M = _layout(x)
    gx = _empty(T, M, acc)
    gv0, gi0 = torch.zeros(M, dtype=acc), torch.zeros(M, dtype=acc)
    parts = _partials(M, acc, 5)
    if T and M:
        grads = [_grad_np(None if g is None else g.reshape(T, M), acc, M) for g in (gz, gv, gi)]
        c1, c2 = _sur(surrogate_id, scale, npd)
        block = _block(M)
        coef = [_np(p.to(acc)) for p in (a, c, vl, vth, vr)]
        _run_blocks(_kernels().norse_ff_bwd,
                    (*(g for g, _ in grads), *(h for _, h in grads), _flat(x, acc, T, M),
                     _np(v0.to(acc).reshape(M)), _np(i0.to(acc).reshape(M)), _flat(z, acc, T, M),
                     _flat(v_all, acc, T, M), _flat(i_all, acc, T, M), *coef, surrogate_id, c1, c2, npd.type(1),
                     param_grads, block),
                    (gx.numpy(), gv0.numpy(), gi0.numpy(), *(p.numpy() for p in parts)), -(-M // block),
                    _threads(T, M, block))
    da, dc, dvl, dvth, dvr = parts
    shape = v0.shape
    return (gx.view(x.shape).to(x.dtype), gv0.view(shape).to(v0.dtype), gi0.view(shape).to(i0.dtype),
            _to_param(da, a), _to_param(dc, c), _to_param(dvl, vl, a), _to_param(dvth, vth), _to_param(dvr, vr))


def lif_box_forward(x: Tensor, v0: Tensor, a: Tensor, vl: Tensor, vth: Tensor, vr: Tensor,
                    reset: int) -> Tuple[Tensor, Tensor]:
    """``(z, v)`` of Norse's LIF box over ``x: [T, R, N]`` (``reset``: 0 value, 1 subtract)."""
    acc, npd = _acc(x.dtype)
    T, M = _layout(x)
    z, v = _empty(T, M, acc), _empty(T, M, acc)
    if T and M:
        block = _block(M, BLOCK_WIDE)
        coef = [_np(p.to(acc)) for p in (a, vl, vth, vr)]
        _run_blocks(_kernels().norse_box_fwd, (_flat(x, acc, T, M), _np(v0.to(acc).reshape(M)), *coef, reset,
                                               npd.type(1), block),
                    (z.numpy(), v.numpy()), -(-M // block), _threads(T, M, block))
    return z.view(x.shape).to(x.dtype), v.view(x.shape).to(x.dtype)


def lif_box_backward(gz: Optional[Tensor], gv: Optional[Tensor], x: Tensor, v0: Tensor, z: Tensor, v_all: Tensor,
                     a: Tensor, vl: Tensor, vth: Tensor, vr: Tensor, reset: int, surrogate_id: int, scale: float,
                     param_grads: bool) -> Tuple[Tensor, ...]:
    """``(gx, gv0, da, dv_leak, dv_th, dv_reset)``; ``gz``/``gv`` may be ``None``."""
    acc, npd = _acc(x.dtype)
    T, M = _layout(x)
    gx = _empty(T, M, acc)
    gv0 = torch.zeros(M, dtype=acc)
    parts = _partials(M, acc, 4)
    if T and M:
        grads = [_grad_np(None if g is None else g.reshape(T, M), acc, M) for g in (gz, gv)]
        c1, c2 = _sur(surrogate_id, scale, npd)
        block = _block(M, BLOCK_WIDE)
        coef = [_np(p.to(acc)) for p in (a, vl, vth, vr)]
        # The kernel recomputes the spikes from x and v (bit for bit the forward's) unless the saved states
        # were rounded to a narrower dtype (float16/bfloat16 inputs): then it reads them.
        zsaved = x.dtype != acc
        _run_blocks(_kernels().norse_box_bwd,
                    (*(g for g, _ in grads), *(h for _, h in grads), _flat(x, acc, T, M),
                     _np(v0.to(acc).reshape(M)), _flat(z, acc, T, M) if zsaved else _flat(x, acc, T, M),
                     _flat(v_all, acc, T, M), *coef, reset, surrogate_id, c1, c2, npd.type(1), param_grads, zsaved,
                     block),
                    (gx.numpy(), gv0.numpy(), *(p.numpy() for p in parts)), -(-M // block), _threads(T, M, block))
    da, dvl, dvth, dvr = parts
    return (gx.view(x.shape).to(x.dtype), gv0.view(v0.shape).to(v0.dtype), _to_param(da, a),
            _to_param(dvl, vl, a), _to_param(dvth, vth), _to_param(dvr, vr))
