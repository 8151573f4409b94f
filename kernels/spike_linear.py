"""A linear readout of 0/1 spikes that keeps the spikes as bytes, not numbers, for its backward pass.

::

    y = spike_linear(spikes, weight, bias)

    solo:      spikes [..., N],        weight [n_out, N],     bias [n_out]      ->  y [..., n_out]
    ensemble:  spikes [T, E, B, N],    weight [E, n_out, N],  bias [E, n_out]   ->  y [T, E, B, n_out]

computes ``y = spikes W^T + b`` (member ``e`` with its own ``W[e]``, ``b[e]``) with the same operations as
``nn.Linear`` (solo) and ``torch.matmul(spikes, W.mT) + b`` (ensemble), so the outputs are bit for bit
theirs. The difference is memory: autograd's linear keeps its float input for the weight gradient, which for
a ``[T, B, N]`` spike train is as large as a membrane trace (131 MB at T = 2000, B = 32, N = 512 in float32)
and keeps the spike output of a recurrent layer alive until the backward pass. This op keeps
``spikes != 0`` (one byte per spike slot) and rebuilds the numbers one window of time steps at a time in
the backward::

    dW = sum_{t, b} g[t, b]^T S[t, b]     (ensemble: per member)    db = sum_{t, b} g[t, b]    dS = g W

It is exact only for inputs whose entries are 0 or 1, which the caller guarantees (the spikes of a
spiking layer's forward pass); it does not check, because checking costs a pass over the data.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["spike_linear"]

# Elements of one window of time steps turned back into numbers for the weight gradient's GEMM.
_WINDOW_ELEMS = 1 << 21


class _SpikeLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spikes: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        ens = weight.ndim == 3
        if ens:
            y = torch.matmul(spikes, weight.mT)
            if bias is not None:
                y = y + bias.unsqueeze(-2)
        else:
            y = torch.nn.functional.linear(spikes, weight, bias)
        ctx.save_for_backward(spikes != 0, weight)
        ctx.spike_dtype, ctx.has_bias = spikes.dtype, bias is not None
        return y

    @staticmethod
    def backward(ctx, g: Tensor):
        bits, weight = ctx.saved_tensors
        ens = weight.ndim == 3
        need_s, need_w, need_b = ctx.needs_input_grad
        d_s = torch.matmul(g, weight).to(ctx.spike_dtype) if need_s else None
        d_b = None
        if need_b and ctx.has_bias:
            d_b = g.sum((0, 2)) if ens else g.reshape(-1, g.shape[-1]).sum(0)
        d_w = None
        if need_w:
            N, n_out = bits.shape[-1], g.shape[-1]
            if ens:  # windows of time steps; per member [E, rows, n_out]^T [E, rows, N]
                E = bits.shape[1]
                step = max(1, _WINDOW_ELEMS // bits[0].numel())
                for t0 in range(0, bits.shape[0], step):
                    s, gw = bits[t0:t0 + step].to(g.dtype), g[t0:t0 + step]
                    part = torch.bmm(gw.transpose(0, 1).reshape(E, -1, n_out).transpose(1, 2),
                                     s.transpose(0, 1).reshape(E, -1, N))
                    d_w = part if d_w is None else d_w.add_(part)
            else:  # windows of rows of the flattened [rows, N] input
                bits, g = bits.reshape(-1, N), g.reshape(-1, n_out)
                step = max(1, _WINDOW_ELEMS // N)
                for r0 in range(0, bits.shape[0], step):
                    part = torch.mm(g[r0:r0 + step].t(), bits[r0:r0 + step].to(g.dtype))
                    d_w = part if d_w is None else d_w.add_(part)
            d_w = d_w.to(weight.dtype)
        return d_s, d_w, d_b


def spike_linear(spikes: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``spikes W^T + b`` for 0/1 ``spikes``, keeping them as bytes for the backward (see the module
    docstring for the shapes; ``weight`` with three axes means an ensemble).

    Raises:
        ValueError: shapes that do not fit together.
    """
    ens = weight.ndim == 3
    if weight.ndim not in (2, 3) or spikes.shape[-1] != weight.shape[-1] or (ens and (
            spikes.ndim != 4 or spikes.shape[1] != weight.shape[0])):
        raise ValueError(f"spike_linear: spikes {tuple(spikes.shape)} do not fit weight {tuple(weight.shape)} "
                         "(solo [..., N] with [n_out, N]; ensemble [T, E, B, N] with [E, n_out, N])")
    if bias is not None and bias.shape != weight.shape[:-1]:
        raise ValueError(f"spike_linear: bias must have shape {tuple(weight.shape[:-1])}, got {tuple(bias.shape)}")
    return _SpikeLinear.apply(spikes, weight, bias)
