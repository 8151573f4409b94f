"""Compiled CPU kernels (numba) for :func:`surroflos.kernels.lif.leaky_sequence` and ``synaptic_sequence``:
``backend="cpu"``.

Per neuron model one forward kernel and two backward kernels (the linear scan of the common case: delayed, detached
reset; the general one for the immediate reset and the gradient through the reset signal), each one
pass over memory: the ``[T, M]`` sequence is cut into blocks of 256 to 2048 contiguous neurons (8192 for
Leaky's forward and linear-scan backward), and a block's state (membrane, reset signal, carried gradient,
parameter partials) lives in small local arrays (L1/L2) for the whole time loop, so every ``[T, M]`` tensor is
read or written exactly once. The inner loops run over the block's contiguous neurons without branches (the
surrogate is chosen once per row; Leaky's backward without parameter gradients has one fused loop per
surrogate), so LLVM vectorises them. Blocks are independent and run in parallel: the kernels are serial
numba functions that release the GIL (``nogil``), called on one block at a time from a small pool of
Python threads that take the next block from a shared counter (the number of threads follows
``torch.get_num_threads()``).

Numerics. No ``fastmath``: every operation rounds as in the PyTorch path (:mod:`.lif`), in the same
order in the forward, so the spikes and the membrane are *bit for bit* those of ``backend="torch"``
(float32 and float64). The backward follows the linear-scan order of the PyTorch path; the reductions
over time are per neuron (no reassociation), so it agrees with it to rounding.

Threads. The scheduling is dynamic: a thread whose core is busy with another process simply takes fewer
blocks, so on a loaded machine two threads cost at most about one block more than one thread (numba's
own ``prange`` layers split the blocks statically: measured 0.81x with 2 threads on the loaded machine,
see BENCHMARKS.md). Idle pool threads wait on a queue (they sleep; nothing spins), and no threading
layer of numba is involved, so OpenMP settings and other numba users are unaffected.

Compilation is cached on disk (``cache=True``): in the package's ``__pycache__`` or, where the
install is read-only, numba's user-wide cache (``NUMBA_CACHE_DIR`` overrides both); where no cache
location is writable the kernels are compiled per process instead of failing.
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor

__all__ = ["numba_importable", "leaky_forward", "leaky_backward", "synaptic_forward", "synaptic_backward"]

BLOCK_MIN, BLOCK_MAX = 256, 2048  # neurons per block (runtime: see _block)
BLOCK_WIDE = 8192  # the cap of the kernels with few per-block arrays (Leaky, the Norse LIF box)
SMALL = 2**18  # element-steps below which one thread runs the kernel


@functools.lru_cache(maxsize=None)
def numba_importable() -> bool:
    """True when numba imports and the kernel module loads (checked once per process; the kernels themselves
    compile, or load from the disk cache, on first call)."""
    try:
        _kernels()
    except Exception:  # pragma: no cover - depends on the installation
        return False
    return True


def _cache_dir_fallback() -> None:
    """Give numba a writable cache directory when neither the package's ``__pycache__`` nor the user's
    cache directory is writable (a read-only install under a read-only home)."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "__pycache__")
    home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    for d in (here, os.path.dirname(here), home):
        if os.path.isdir(d) and os.access(d, os.W_OK):
            return
    import numba

    fallback = os.path.join(tempfile.gettempdir(), f"surroflos-numba-{os.getuid() if hasattr(os, 'getuid') else 0}")
    os.makedirs(fallback, exist_ok=True)
    numba.config.CACHE_DIR = fallback


@functools.lru_cache(maxsize=None)
def _kernels():
    _cache_dir_fallback()
    from . import _cpu_kernels as k

    return k


_POOL: dict = {}


def _pool(workers: int):
    """A process-wide pool of ``workers`` threads (created on first use; idle threads sleep). A forked child
    (multiprocessing, DataLoader workers) inherits the pool object but not its threads: it gets its own."""
    import concurrent.futures

    key = (os.getpid(), workers)
    pool = _POOL.get(key)
    if pool is None:
        pool = _POOL[key] = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="surroflos-cpu")
    return pool


def _run_blocks(kernel, args_before: tuple, args_after: tuple, nblk: int, threads: int) -> None:
    """``kernel(*args_before, b0, b1, *args_after)`` over the blocks ``[0, nblk)``: in this thread when
    ``threads == 1``, else one block at a time from a shared counter in this thread and ``threads - 1``
    pool threads (the kernels release the GIL)."""
    if threads <= 1 or nblk <= 1:
        kernel(*args_before, 0, nblk, *args_after)
        return
    import itertools

    counter = itertools.count()  # next() is atomic under the GIL

    def work():
        while True:
            b = next(counter)
            if b >= nblk:
                return
            kernel(*args_before, b, b + 1, *args_after)

    futures = [_pool(threads - 1).submit(work) for _ in range(threads - 1)]
    work()
    for f in futures:
        f.result()


def _threads(T: int, M: int, block: int) -> int:
    """As many threads as torch uses (``torch.set_num_threads``), at most one per block, and one for small
    problems (below ~2^18 element-steps handing blocks to other threads costs more than it saves)."""
    if T * M < SMALL:
        return 1
    return max(1, min(torch.get_num_threads(), -(-M // block)))


def _block(M: int, cap: int = BLOCK_MAX) -> int:
    """Neurons per block: up to ``cap`` (2048: 8 KiB of float32 per row: long contiguous runs for the hardware
    prefetcher, which the time loop otherwise restarts at every row), down to 256 so that every thread
    gets about four blocks to balance. Kernels with few per-block arrays take ``cap=BLOCK_WIDE``: longer
    runs per row (Leaky's forward 9.6 -> 8.8 ms, its backward 11.2 -> 10.7 ms at ``[500, 16*2048]``, 1 thread)."""
    want = -(-M // (4 * max(1, torch.get_num_threads())))
    return int(min(cap, max(BLOCK_MIN, -(-want // 64) * 64)))


def _surrogate_constants(sid: int, scale: float, dtype: np.dtype) -> Tuple[np.generic, np.generic]:
    """The constants of :func:`surroflos.surrogate.surrogate_derivative` as PyTorch casts them to ``dtype``."""
    c = {0: (scale, scale), 1: (math.pi / 2.0 * scale, scale / 2.0), 2: (scale, scale), 3: (scale, scale),
         4: (-scale, scale / 2.0), 5: (scale, scale / math.sqrt(2.0 * math.pi))}[sid]
    return dtype.type(c[0]), dtype.type(c[1])


def _empty(T: int, M: int, acc: torch.dtype) -> Tensor:
    """An uninitialised ``[T, M]`` output allocated by numpy, which asks the kernel for transparent huge
    pages on Linux (``madvise``): a fresh output then costs ~20x fewer page faults than from PyTorch's
    allocator (at ``[500, 16*2048]`` float32: 22 ms instead of 49 ms to first touch 64 MiB)."""
    return torch.from_numpy(np.empty((T, M), dtype=np.float64 if acc == torch.float64 else np.float32))


def _np(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def _param_np(p: Tensor, dtype: torch.dtype) -> np.ndarray:
    return _np(p.to(dtype).reshape(-1))


def leaky_forward(x: Tensor, mem0: Tensor, beta: Tensor, thr: Tensor, reset: int, late: bool,
                  g: float) -> Tuple[Tensor, Tensor]:
    """``(spk, mem)`` of Leaky over ``x: [T, M]`` (float32/float64 accumulation; outputs in x's dtype)."""
    fwd = _kernels().leaky_fwd
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    xa = x.detach().to(acc).contiguous()
    T, M = xa.shape
    spk = _empty(T, M, acc)
    mem = _empty(T, M, acc)
    if T and M:
        npd = np.dtype("float64" if acc == torch.float64 else "float32")
        block = _block(M, BLOCK_WIDE)
        _run_blocks(fwd, (xa.numpy(), _np(mem0.to(acc)), _param_np(beta, acc), _param_np(thr, acc), reset, late,
                          npd.type(g), npd.type(1), block), (spk.numpy(), mem.numpy()), -(-M // block),
                    _threads(T, M, block))
    return spk.to(x.dtype), mem.to(x.dtype)


def leaky_backward(gspk: Optional[Tensor], gmem: Optional[Tensor], x: Optional[Tensor], mem0: Tensor, mem: Tensor,
                   spk: Optional[Tensor], beta: Tensor, thr: Tensor, sid: int, scale: float, reset: int, late: bool,
                   rgrad: bool, g: float, params_grad: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(grad x, grad mem0, grad beta, grad threshold)``; ``gspk``/``gmem`` may be ``None`` (zero)."""
    k = _kernels()
    bwd_linear, bwd_general = k.leaky_bwd_linear, k.leaky_bwd_general
    acc = torch.float64 if mem.dtype == torch.float64 else torch.float32
    npd = np.dtype("float64" if acc == torch.float64 else "float32")
    T, M = mem.shape
    m = mem.detach().to(acc).contiguous()
    # An unused output's gradient: the kernels read one row of zeros (adding 0 is exact) instead of [T, M].
    (gs, has_gspk), (gm, has_gmem) = _grad_np(gspk, acc, M), _grad_np(gmem, acc, M)
    gx = _empty(T, M, acc)
    gmem0 = torch.zeros(M, dtype=acc)
    db = torch.zeros(M, dtype=acc)
    dt = torch.zeros(M, dtype=acc)
    if T and M:
        c1, c2 = _surrogate_constants(sid, scale, npd)
        b, th = _param_np(beta, acc), _param_np(thr, acc)
        m0 = _np(mem0.to(acc))
        block = _block(M, BLOCK_WIDE if not late and not rgrad else BLOCK_MAX)
        nblk, threads = -(-M // block), _threads(T, M, block)
        outs = (gx.numpy(), gmem0.numpy(), db.numpy(), dt.numpy())
        if not late and not rgrad:
            _run_blocks(bwd_linear, (gs, gm, has_gspk, has_gmem, m0, m.numpy(), b, th, sid, c1, c2, reset,
                                     npd.type(g), npd.type(1), params_grad, block), outs, nblk, threads)
        else:
            xa = _np(x.to(acc)) if x is not None else m.numpy()
            sa = _np(spk.to(acc)) if spk is not None else m.numpy()
            _run_blocks(bwd_general, (gs, gm, has_gspk, has_gmem, xa, m0, m.numpy(), sa, b, th, sid, c1, c2,
                                      reset, late, rgrad, npd.type(g), npd.type(1), params_grad, block), outs, nblk,
                        threads)
    return gx.to(mem.dtype), gmem0.to(mem0.dtype), _reduce(db, beta), _reduce(dt, thr)


def _reduce(partial: Tensor, param: Tensor) -> Tensor:
    """Per-element partials ``[M]`` -> the parameter's shape (``[]`` or ``[N]``, ``M = K N``)."""
    if param.ndim == 1:
        return partial.view(-1, param.shape[0]).sum(0).to(param.dtype)
    return partial.sum().to(param.dtype)


def _grad_np(grad: Optional[Tensor], acc: torch.dtype, M: int) -> Tuple[np.ndarray, bool]:
    """An output's gradient for the kernels: ``[T, M]``, or one row of zeros and ``False`` when the output
    was not used (``None``; adding 0 is exact, and no ``[T, M]`` zero fill is made)."""
    if grad is None:
        return np.zeros((1, M), dtype=np.float64 if acc == torch.float64 else np.float32), False
    return _np(grad.to(acc)), True


def synaptic_forward(x: Tensor, syn0: Tensor, mem0: Tensor, alpha: Tensor, beta: Tensor, thr: Tensor, reset: int,
                     late: bool, g: float) -> Tuple[Tensor, Tensor, Tensor]:
    """``(spk, syn, mem)`` of Synaptic over ``x: [T, M]`` (float32/float64 accumulation; outputs in x's dtype)."""
    fwd = _kernels().synaptic_fwd
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    xa = x.detach().to(acc).contiguous()
    T, M = xa.shape
    spk, syn, mem = (_empty(T, M, acc) for _ in range(3))
    if T and M:
        npd = np.dtype("float64" if acc == torch.float64 else "float32")
        block = _block(M)
        _run_blocks(fwd, (xa.numpy(), _np(syn0.to(acc)), _np(mem0.to(acc)), _param_np(alpha, acc),
                          _param_np(beta, acc), _param_np(thr, acc), reset, late, npd.type(g), npd.type(1), block),
                    (spk.numpy(), syn.numpy(), mem.numpy()), -(-M // block), _threads(T, M, block))
    return spk.to(x.dtype), syn.to(x.dtype), mem.to(x.dtype)


def synaptic_backward(gspk: Optional[Tensor], gsyn: Optional[Tensor], gmem: Optional[Tensor], syn0: Tensor,
                      mem0: Tensor, syn: Tensor, mem: Tensor, spk: Optional[Tensor], alpha: Tensor, beta: Tensor,
                      thr: Tensor, sid: int, scale: float, reset: int, late: bool, rgrad: bool, g: float,
                      params_grad: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(grad x, grad syn0, grad mem0, grad alpha, grad beta, grad threshold)``; an output's gradient may be
    ``None`` (that output was not used)."""
    k = _kernels()
    acc = torch.float64 if mem.dtype == torch.float64 else torch.float32
    npd = np.dtype("float64" if acc == torch.float64 else "float32")
    T, M = mem.shape
    gx = _empty(T, M, acc)
    gsyn0, gmem0, da, db, dt = (torch.zeros(M, dtype=acc) for _ in range(5))
    if T and M:
        grads = [_grad_np(gr, acc, M) for gr in (gspk, gsyn, gmem)]
        c1, c2 = _surrogate_constants(sid, scale, npd)
        m, y = _np(mem.to(acc)), _np(syn.to(acc))
        a, b, th = (_param_np(p, acc) for p in (alpha, beta, thr))
        s0, m0 = _np(syn0.to(acc)), _np(mem0.to(acc))
        block = _block(M)
        nblk, threads = -(-M // block), _threads(T, M, block)
        gin = (*(arr for arr, _ in grads), *(has for _, has in grads))
        outs = (gx.numpy(), gsyn0.numpy(), gmem0.numpy(), da.numpy(), db.numpy(), dt.numpy())
        if not late and not rgrad:
            _run_blocks(k.synaptic_bwd_linear, (*gin, s0, m0, y, m, a, b, th, sid, c1, c2, reset, npd.type(g),
                                                npd.type(1), params_grad, block), outs, nblk, threads)
        else:
            sa = _np(spk.to(acc)) if spk is not None else m
            _run_blocks(k.synaptic_bwd_general, (*gin, s0, m0, y, m, sa, a, b, th, sid, c1, c2, reset, late, rgrad,
                                                 npd.type(g), npd.type(1), params_grad, block), outs, nblk, threads)
    return (gx.to(mem.dtype), gsyn0.to(syn0.dtype), gmem0.to(mem0.dtype), _reduce(da, alpha), _reduce(db, beta),
            _reduce(dt, thr))
