"""Memory estimates checked before any work starts.

A network that cannot fit should be refused with the estimate and what is available, not die in the
allocator minutes later (or take the machine down while swapping). The estimates are lower bounds of
the dominant terms (weights with their gradient and Adam moments, the activations kept for the backward
pass, the tangent frames of a spectrum), so a refusal is certain to be right; a run that passes may
still need somewhat more.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from .errors import UsageError

__all__ = ["available_bytes", "require_memory", "train_bytes", "spectrum_bytes", "format_bytes"]


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover - the loop returns


def available_bytes(device: torch.device | str) -> Optional[int]:
    """Free memory on ``device`` in bytes: CUDA's free memory, or the host's ``MemAvailable`` (physical
    memory when that is unreadable); ``None`` when unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except Exception:  # pragma: no cover - depends on the driver
            return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return None


def require_memory(estimate: int, device: torch.device | str, what: str, hint: str) -> None:
    """Raise :class:`~surroflos.errors.UsageError` when ``estimate`` bytes exceed the free memory of
    ``device``; the message gives both numbers and ``hint`` (which flags to lower)."""
    avail = available_bytes(device)
    if avail is not None and estimate > avail:
        raise UsageError(f"{what} needs at least {format_bytes(estimate)} of memory but {format_bytes(avail)} is "
                         f"available on {torch.device(device)}; {hint}")


def spectrum_bytes(state_dim: int, n_hidden: int, k: int, batch: int, itemsize: int, *, n_weights: int) -> int:
    """A Lyapunov spectrum estimate: the weights, the state and ``k`` tangent vectors per trajectory
    (with their product and QR workspace, about three frames)."""
    return itemsize * (n_weights + batch * state_dim * (2 + 3 * k) + batch * n_hidden)


def train_bytes(cfg, task) -> int:
    """Lower bound for a :func:`surroflos.train.train` run of ``cfg`` on ``task``: weights with gradient and
    two Adam moments, the states of a training batch kept for backpropagation through time, the
    validation batch, and the flossing and spectrum frames (times E for an ensemble)."""
    itemsize = torch.empty((), dtype=getattr(torch, cfg.dtype)).element_size()
    N, n_in, n_out = cfg.N, task.n_in, task.n_out
    state_dim = N if cfg.model in ("rate", "lif") else 2 * N
    if cfg.model == "balanced":
        n_rec, idx = N * cfg.K, N * cfg.K * 8  # sparse [N, K] weights and their int64 targets
    else:
        n_rec, idx = N * N, 0
    n_params = n_rec + N * n_in + N + N * n_out + n_out
    T = cfg.T or getattr(task, "T", None) or 1
    weights = 4 * itemsize * n_params + idx
    # the states of every step, and the activity: rates as numbers, spikes as one byte each (the fused
    # recurrent op and its readout keep them as booleans for the backward)
    activity = 1 if cfg.model in ("lif", "cuba") else itemsize
    activations = T * (cfg.batch + cfg.eval_batch) * (itemsize * state_dim + activity * N)
    k = max(cfg.k, cfg.spectrum_k or cfg.k)
    frames = itemsize * cfg.floss_T * cfg.floss_batch * state_dim * (k + 1) if cfg.flossing != "none" else 0
    spectrum = spectrum_bytes(state_dim, N, k, 4, itemsize, n_weights=0)
    return (weights + activations + frames + spectrum) * (cfg.ensemble or 1)  # an ensemble holds E of each
