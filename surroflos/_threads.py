"""Torch CPU thread counts: one thread for small networks, and a block that restores the caller's count.

Small networks (the main job: 8 + 8 LIF networks, N = 64, batch 32, ops of [8, 32, 64]) run faster on one
torch thread: every parallel region waits for a second thread, which costs more than it shares. `make train`
took 87 s on torch's 2 threads and 45 s on one on the idle 2-core CPU, with the same results.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

from . import _argtypes as at

__all__ = ["SMALL_STATE", "threads_arg", "train_threads", "torch_threads"]

SMALL_STATE = 1 << 16  # state elements per step (ensemble x batch x N) up to which "auto" means one thread


def threads_arg(s: str):
    """argparse type of ``--threads``: ``auto`` or a positive integer."""
    return "auto" if s == "auto" else at.positive_int(s)


def train_threads(cfg, threads, compare: bool = False) -> Optional[int]:
    """The torch thread count to train ``cfg`` with: ``threads`` if a number; for ``"auto"``, 1 on the CPU when
    ensemble x batch x N <= :data:`SMALL_STATE`, else None (torch's default)."""
    if threads != "auto":
        return int(threads)
    if str(cfg.device).split(":")[0] != "cpu":
        return None
    members = cfg.ensemble if cfg.ensemble is not None else (8 if compare else 1)
    return 1 if members * cfg.batch * cfg.N <= SMALL_STATE else None


@contextlib.contextmanager
def torch_threads(n: Optional[int]) -> Iterator[None]:
    """Run the block on ``n`` torch threads (None: as they are) and restore the caller's count afterwards."""
    import torch

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
