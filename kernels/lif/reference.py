"""Naive per-step references of :func:`surroflos.kernels.lif.leaky_sequence` / ``synaptic_sequence``.

A plain Python loop of autograd ops, written straight from the equations (one step = snnTorch's
``Leaky``/``Synaptic`` forward), with one addition: ``detach_reset=False`` keeps the gradient of the
delayed reset signal. With ``detach_reset=True`` it must equal the tested step functions
:func:`surroflos.snntorch.leaky_step` / ``synaptic_step`` (tests/test_kernels_lif.py checks that), so
it is an oracle for the fused paths, not a third implementation to trust blindly. Slow; for tests.
"""

from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from ... import surrogate as sg

__all__ = ["leaky_reference", "synaptic_reference"]


def _step_end(m: Tensor, R: Tensor, spike: sg.Surrogate, thr, reset: str, reset_delay: bool, graded):
    spk = spike(m - thr) * graded
    if not reset_delay and reset != "none":
        do_reset = spk / graded - R
        m = m - do_reset * (thr if reset == "subtract" else m)
    return spk, m


def leaky_reference(x: Tensor, mem0: Optional[Tensor], beta, threshold, *, surrogate: Union[sg.Surrogate, str],
                    reset: str = "subtract", reset_delay: bool = True, detach_reset: bool = True,
                    graded: float = 1.0) -> Tuple[Tensor, Tensor]:
    """``(spk, mem)`` of snnTorch's Leaky step by step; ``beta``/``threshold`` broadcast against ``x[t]``."""
    spike = sg.get(surrogate)
    mem = torch.zeros_like(x[0]) if mem0 is None else mem0
    spks, mems = [], []
    for t in range(x.shape[0]):
        R = spike(mem - threshold)
        if detach_reset:
            R = R.detach()
        if reset == "subtract":
            m = beta * mem + x[t] - R * threshold
        elif reset == "zero":
            m = beta * ((1 - R) * mem) + x[t]
        else:
            m = beta * mem + x[t]
        spk, mem = _step_end(m, R, spike, threshold, reset, reset_delay, graded)
        spks.append(spk)
        mems.append(mem)
    return torch.stack(spks), torch.stack(mems)


def synaptic_reference(x: Tensor, syn0: Optional[Tensor], mem0: Optional[Tensor], alpha, beta, threshold, *,
                       surrogate: Union[sg.Surrogate, str], reset: str = "subtract", reset_delay: bool = True,
                       detach_reset: bool = True, graded: float = 1.0) -> Tuple[Tensor, Tensor, Tensor]:
    """``(spk, syn, mem)`` of snnTorch's Synaptic step by step."""
    spike = sg.get(surrogate)
    syn = torch.zeros_like(x[0]) if syn0 is None else syn0
    mem = torch.zeros_like(x[0]) if mem0 is None else mem0
    spks, syns, mems = [], [], []
    for t in range(x.shape[0]):
        R = spike(mem - threshold)
        if detach_reset:
            R = R.detach()
        syn = alpha * syn + x[t]
        b = beta * mem + syn
        if reset == "subtract":
            m = b - R * threshold
        elif reset == "zero":
            m = b - R * b
        else:
            m = b
        spk, mem = _step_end(m, R, spike, threshold, reset, reset_delay, graded)
        spks.append(spk)
        syns.append(syn)
        mems.append(mem)
    return torch.stack(spks), torch.stack(syns), torch.stack(mems)
