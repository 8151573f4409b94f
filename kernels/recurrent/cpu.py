"""Compiled CPU kernels (numba) of :func:`surroflos.kernels.recurrent.spiking_rnn_sequence`: ``backend="cpu"``.

The forward is spike-sparse, and a dense product wastes most of its work on it: a recurrent network at a
firing rate of 10% multiplies nine zeros for every spike. :func:`forward` runs the whole sequence in one
kernel call. Every row (one trajectory: a batch element of a member) runs its ``T`` steps on its own, with its
state in small local arrays; the recurrent input ``S[t-1] W^T`` is the sum of the out-going weight rows of
the neurons that spiked (``W`` is read transposed, so a presynaptic neuron's weights are contiguous), then the
neuron update of the PyTorch path, operation by operation, and the spikes written as numbers, as booleans
and as the list of ids the next step reads. No Python runs per step. Rows are independent and run in
parallel (the thread pool of :mod:`surroflos.kernels.lif.cpu`: dynamic, sleeping, GIL released).

The backward stays the PyTorch path's: its product ``dI[t] W`` is dense (the surrogate slope multiplies it
everywhere), and a spike-sparse ``dW`` (one row addition per spike) measured 45 ms against the windowed
GEMM's 58-79 ms at 12% firing and [500, 32, 512], with a cost growing with the rate: not worth a kernel.

Where it pays (``benchmarks`` in BENCHMARKS.md, one thread): at N = 512 and 1024 the forward is 1.3-2.9x the
PyTorch path's at firing rates 8-30%; at N = 128-256 it is 0.84-2.1x, slower at high rates (a small GEMM is
cheap). ``backend="auto"`` takes it for N >= 512.

Numerics. The elementwise update repeats the PyTorch path's roundings; the recurrent input is summed in
another order than a GEMM's (presynaptic ids ascending), so states agree with ``backend="torch"`` to rounding
and spikes agree except where a membrane lies within rounding of the threshold, as between any two BLAS
libraries.
"""

from __future__ import annotations

import functools
from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from ..lif.cpu import _cache_dir_fallback, _run_blocks

__all__ = ["forward"]

# Rows (trajectories) at once below which one thread runs the forward: handing rows to another thread costs
# more than a short row takes.
_SMALL = 2 ** 16  # element-steps (T * R * N)


@functools.lru_cache(maxsize=None)
def _kernels():
    _cache_dir_fallback()
    from . import _cpu_kernels as k

    return k


def _threads(work: int, blocks: int) -> int:
    if work < _SMALL:
        return 1
    return max(1, min(torch.get_num_threads(), blocks))


def _rows(v: Optional[Tensor], E: int, N: int, acc: torch.dtype) -> np.ndarray:
    """A parameter (``[N]`` shared or ``[E, N]`` per member, possibly a broadcast view) as a contiguous
    ``[E, N]`` array in the accumulator dtype (a row of zeros for an absent one)."""
    if v is None:
        return np.zeros((E, N), dtype=np.float64 if acc == torch.float64 else np.float32)
    return v.detach().to(acc).expand(E, N).contiguous().numpy()


def forward(x_in: Tensor, W: Tensor, state0: Tensor, beta: Tensor, alpha: Optional[Tensor], theta: Tensor,
            bias: Optional[Tensor], cuba: bool, zero: bool, zmem: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """``(spikes, states, spike_bits)`` of the op (solo ``x_in [T, B, N]`` or ensemble ``[T, E, B, N]``), in the
    accumulator dtype (float32 or float64)."""
    k = _kernels()
    ens = x_in.ndim == 4
    T, N = x_in.shape[0], x_in.shape[-1]
    B = x_in.shape[-2]
    E = x_in.shape[1] if ens else 1
    R = E * B
    D = 2 * N if cuba else N
    acc = torch.float64 if x_in.dtype == torch.float64 else torch.float32
    npd = np.dtype("float64" if acc == torch.float64 else "float32")
    x = x_in.detach().to(acc).reshape(T, R, N).contiguous()
    Wt = W.detach().to(acc).reshape(E, N, N).transpose(1, 2).contiguous()
    s0 = state0.detach().to(acc).reshape(R, D)
    mem0 = s0[:, D - N:].contiguous()
    syn0 = s0[:, :N].contiguous() if cuba else mem0
    spikes = torch.from_numpy(np.empty((T, R, N), dtype=npd))
    states = torch.from_numpy(np.empty((T, R, D), dtype=npd))
    bits = torch.from_numpy(np.empty((T, R, N), dtype=np.bool_))
    if T and R and N:
        args = (x.numpy(), Wt.numpy(), mem0.numpy(), syn0.numpy(), _rows(beta, E, N, acc),
                _rows(alpha if cuba else None, E, N, acc), _rows(theta, E, N, acc), _rows(bias, E, N, acc),
                bias is not None, cuba, zero, zmem, B, npd.type(1))
        _run_blocks(k.rnn_forward, args, (spikes.numpy(), states.numpy(), bits.numpy()), R,
                    _threads(T * R * N, R))
    lead = (T, E, B) if ens else (T, B)
    return spikes.view(*lead, N), states.view(*lead, D), bits.view(*lead, N)
