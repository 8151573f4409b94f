"""The benchmark suite behind ``surroflos bench``: surroflos' sequence paths against snnTorch and Norse.

Configurations (``--config``; sizes as ``[T, B, N]``, time first; ``--quick`` shrinks every size so the
whole run takes seconds, for tests):

``cpu``  LIF neuron forward+backward ``[200, 32, 512]`` float32 (target: our PyTorch path >= 2x
         snnTorch's loop), plus scaled-down versions of 3 (N=256) and 4 (N=128, k=16); then every case of
         ``cpu_kernels`` in the same run (on the CPU only; case key ``group`` says which config a case is
         from). Runs anywhere.
``cpu_kernels``  The compiled CPU kernels (issue 17): LIF neuron forward+backward ``[500, 16, 2048]`` and
         ``[500, 16, 8192]`` float32, ``backend="cpu"`` (numba) on ``--threads`` threads and on 2, against
         snnTorch, the PyTorch path and ``torch.compile`` of the step (targets: >= 50% of the bandwidth
         floor, >= 5x snnTorch, >= 3x torch.compile, 2 threads never slower than one); then snnTorch's
         ``Synaptic`` (current-based) at ``[500, 16, 2048]`` against snnTorch and the PyTorch path; then
         Norse's feed-forward LIF and LIF box at ``[500, 16, 2048]``: Norse 1.1's own module against our
         drop-in (``backend="torch"`` and ``auto``) and its numba kernels, checked against Norse in float32
         and float64; then the recurrent LIF network's training step at N=512, B=32, T=500 (n_in=128)
         against snnTorch, ``SpikingRNN`` on the PyTorch path and with the compiled spike-sparse forward
         (``backend="cpu"``; target: >= 4x snnTorch).
``cpu_lyapunov``  Issue 17's Lyapunov cases: the k=32 spectrum of a tanh rate network N=256 (T=1000) and of
         a LIF network N=512 (T=500; atan surrogate, never zero; triangle, zero off its support: the sparse
         product), 4 trajectories, forward and forward+backward, ``lyapunov_spectrum`` against the naive loop
         (tangent matmul + ``torch.linalg.qr`` every step); ours with QR every step (rate, LIF) and every
         10 steps (LIF). Targets: rate >= 1.5x, LIF >= 3x the naive loop.
``1``    LIF neuron forward+backward ``[500, 64, 4096]``, float32 and bfloat16.
``2``    Linear + LIF layer (``N -> N`` weights, the Open Neuromorphic configuration), B=16, T=500,
         N = 4096 and 16384, forward+backward to the layer's weights.
``3``    Recurrent LIF network training step (forward+backward to all parameters), N=1024, n_in=128,
         B=64, T=500, with the peak memory of each implementation.
``4``    Surrogate Lyapunov spectrum of that network, k=64, 8 trajectories, T=1000, qr_every=10:
         forward (no gradient) and forward+backward of the flossing loss (one flossing step).
``ensemble``  A training step (task batches, forward, loss, backward, clipping, Adam) of E networks of
         the xor-lif preset (LIF N=64, T=60, B=32) as E solo networks one after another against one
         ensemble (:mod:`surroflos.ensemble`), E = 1, 4, 16, 64: network-epochs per second (20 steps an
         epoch) and the activation memory saved for the backward. Runs on the CPU and on a GPU.

Configs 1-4 are GPU configurations: without CUDA they are reported as skipped (``--device cpu`` runs
them on the CPU anyway, meant for ``--quick`` smoke tests; their targets are H100 targets).

Method. Every implementation is timed on the same inputs in the same process: warm-up calls first
(the first one's wall time is kept, so that ``torch.compile``'s compile time is reported separately as
``first call - median``), then repeated runs; medians and inter-quartile ranges in milliseconds. On
CUDA each run is bracketed by CUDA events (as ``triton.testing.do_bench`` does); on the CPU
``torch.utils.benchmark.Timer.blocked_autorange`` times blocks of runs, and the implementations of a
case are timed in interleaved rounds (one block of each per round, rotating the order), so that the
load drifting on a shared machine hits all of them alike. Inputs rotate among enough
independent sets that together they exceed twice the last-level cache (the GPU's L2), so no run reads
its inputs from a cache the previous run warmed. Backward passes take a fixed random cotangent for the
output (a loss whose gradient it is), never a ``sum()`` whose all-ones gradient a kernel could exploit.

Floors. A multi-step neuron is memory bound: the *bandwidth floor* is the fewest bytes that must move
(each input read once, each output and each saved state written once, the backward likewise) over
the device's copy bandwidth, measured here by timing a large tensor copy the same way. Configs with
matrix products also get a *compute floor* (their matmul FLOPs over the measured rate of one large
matmul in the same dtype); the floor is the larger of the two, and each implementation's
``fraction_of_floor`` is ``floor / median`` (1.0 = at the floor).

Every implementation is guarded: one that cannot be imported, built or run is reported as
``"unavailable: <reason>"`` and the suite goes on. Implementations with the reference's semantics are
also *checked* against the reference (snnTorch's loop in float32, Norse's own module, or the naive
Lyapunov loop) on a slice of the inputs: spike mismatches, membrane and gradient errors, printed beside the
timings. The Norse rows are also held to the tolerance policy of docs/TESTING.md: their float32 membrane
and input gradient, measured against Norse's module run in float64, must be within 4x Norse's own float32
error (or of ``sqrt(ops) x eps x magnitude`` where that is larger): ``check["within_tolerance"]``.

Output: one JSON per configuration (``bench_<config>.json``, schema :data:`SCHEMA`) and a table on
stdout. Entry points: :func:`add_bench_parser` / :func:`run_bench` (the ``surroflos bench`` command),
:func:`main` (``python -m surroflos.bench``), :func:`run_config` and :func:`format_table`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import inspect
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from ._argtypes import positive_float as _positive_float
from ._argtypes import positive_int as _positive_int
from ._argtypes import seed as _seed
from ._threads import torch_threads

__all__ = ["SCHEMA", "CONFIGS", "GPU_CONFIGS", "Context", "Impl", "Built", "add_bench_parser", "run_bench",
           "main", "run_config", "format_table", "time_callable", "lif_floor_bytes",
           "synaptic_floor_bytes", "norse_floor_bytes", "evaluate_target"]

SCHEMA = "surroflos.bench/1"
CONFIGS = ("cpu", "cpu_kernels", "cpu_lyapunov", "1", "2", "3", "4", "ensemble", "event")
GPU_CONFIGS = ("1", "2", "3", "4")
TARGET_DEVICE = "H100"

Tensor = torch.Tensor

# snnTorch-compatible neuron used by configs cpu/1/2 (snnTorch Leaky defaults, atan surrogate).
BETA, THRESHOLD = 0.9, 1.0
ALPHA = 0.7  # synaptic decay of the Synaptic rows (config cpu_kernels)
# Norse rows (config cpu_kernels): Norse 1.1's default parameters (dt 1e-3, tau_mem_inv 100, tau_syn_inv 200,
# v_th 1, method "super"). The box neuron's input is a potential (u relaxes to x + v_leak), so its inputs are
# shifted to 0.5 N(0,1) + 1.0 to fire (about 3% of steps, as the LIF's 0.5 N(0,1) + 0.15 do); ops per step of
# each recurrence, for the tolerance of the check against Norse in float64 (see _truth_check).
NORSE_BOX_SHIFT = 1.0
NORSE_OPS_PER_STEP = {"lif": 11, "box": 8}


# --------------------------------------------------------------------------------------------------
# Context and timing
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Context:
    """Settings shared by every measurement of one run."""

    device: torch.device
    repeats: int = 10
    warmup: int = 2
    budget_s: float = 30.0
    quick: bool = False
    compile_backend: Optional[str] = "inductor"  # None: compiled rows are skipped
    seed: int = 0
    cache_bytes: int = 32 << 20
    forced_cpu: bool = False  # --device cpu: GPU configurations run on the CPU (smoke test)
    progress: bool = False  # one line per implementation on stderr while the run goes on
    interleave: bool = True  # CPU: time implementations in interleaved rounds (see _time_interleaved)
    _ceilings: Dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def n_sets(self, bytes_per_set: int, cap: int = 8) -> int:
        """How many input sets to rotate so that together they exceed twice the last-level cache."""
        if bytes_per_set <= 0:
            return 1
        return int(min(cap, max(1, math.ceil(2 * self.cache_bytes / bytes_per_set))))

    def generator(self, offset: int = 0) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(self.seed + offset)


def _cache_bytes(device: torch.device) -> int:
    """The GPU's L2 size, or the CPU's last-level cache size (sysfs), with a 32 MiB fallback."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return int(getattr(props, "L2_cache_size", 0) or (50 << 20))
    best = 0
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in os.listdir(base):
            try:
                with open(os.path.join(base, entry, "size")) as f:
                    text = f.read().strip().upper()
                mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
                best = max(best, int(text.rstrip("KMG")) * mult)
            except (OSError, ValueError):
                continue
    except OSError:
        pass
    return best or (32 << 20)


def _quartiles(times_ms: Sequence[float]) -> tuple:
    ts = sorted(times_ms)
    if len(ts) == 1:
        return ts[0], ts[0], ts[0]
    q = statistics.quantiles(ts, n=4, method="inclusive")
    return q[0], statistics.median(ts), q[2]


def _warm_up(fn: Callable[[], Any], ctx: Context) -> tuple:
    """Run ``fn`` 1 + ``ctx.warmup`` times; ``(first call s, last warm-up s)`` by the host clock."""
    t0 = time.perf_counter()
    fn()
    ctx.sync()
    first = time.perf_counter() - t0
    est = first
    for _ in range(max(1, ctx.warmup)):
        t0 = time.perf_counter()
        fn()
        ctx.sync()
        est = time.perf_counter() - t0
    return first, est


def _run_count(ctx: Context, est: float) -> int:
    """``ctx.repeats``, lowered (never below 3) when the runs would exceed ``ctx.budget_s``."""
    return int(max(3, min(ctx.repeats, ctx.budget_s // max(est, 1e-9))))


def _summary(times_ms: Sequence[float], calls: int, timer: str) -> Dict[str, Any]:
    q1, med, q3 = _quartiles(times_ms)
    return {"median_ms": med, "iqr_ms": q3 - q1, "q1_ms": q1, "q3_ms": q3, "runs": calls,
            "blocks": len(times_ms), "timer": timer}


def _cpu_timer(fn: Callable[[], Any]):
    from torch.utils import benchmark as tbench

    return tbench.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())


def _timed_runs(fn: Callable[[], Any], ctx: Context, est: float) -> Dict[str, Any]:
    """Median/IQR of warmed-up ``fn``: CUDA events per run, or torch.utils.benchmark blocks on the CPU."""
    runs = _run_count(ctx, est)
    if ctx.cuda:
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
        for s, e in zip(starts, ends):
            s.record()
            fn()
            e.record()
        torch.cuda.synchronize(ctx.device)
        return _summary([s.elapsed_time(e) for s, e in zip(starts, ends)], runs, "cuda events, one pair per run")
    t = _cpu_timer(fn)
    times, calls = [], 0
    while len(times) < runs:  # blocked_autorange stops on time, not on a count: top up to `runs` blocks
        m = t.blocked_autorange(min_run_time=max(est * (runs - len(times)), 1e-3))
        times += [v * 1e3 for v in m.times]
        calls += len(m.times) * int(m.number_per_run)
    return _summary(times, calls, "torch.utils.benchmark blocked_autorange")


def time_callable(fn: Callable[[], Any], ctx: Context) -> Dict[str, Any]:
    """Median and IQR (ms) of ``fn()`` after warm-up; see the module docstring for the method.

    The run count is ``ctx.repeats``, lowered (to no fewer than 3) when the warm-up estimate says the
    runs would exceed ``ctx.budget_s``. Returns ``median_ms``, ``iqr_ms``, ``q1_ms``, ``q3_ms``,
    ``runs``, ``blocks``, ``first_call_s`` and ``timer``.
    """
    first, est = _warm_up(fn, ctx)
    out = _timed_runs(fn, ctx, est)
    out["first_call_s"] = first
    return out


def _time_interleaved(fns: Sequence[Callable[[], Any]], ests: Sequence[float], ctx: Context) -> List[Any]:
    """CPU timing in rounds: each round times one block of every implementation, in rotating order.

    On a shared machine the load drifts during a run; interleaving exposes every implementation to
    the same drift, so their ratios stay meaningful. Returns a summary dict per function, or the
    exception that stopped it.
    """
    timers = [_cpu_timer(fn) for fn in fns]
    runs = [_run_count(ctx, e) for e in ests]
    times: List[List[float]] = [[] for _ in fns]
    calls = [0] * len(fns)
    failed: Dict[int, BaseException] = {}
    n = len(fns)
    for r in range(max(runs, default=0)):
        for i in [(r + j) % n for j in range(n)]:
            if i in failed or len(times[i]) >= runs[i]:
                continue
            try:
                m = timers[i].blocked_autorange(min_run_time=max(ests[i], 1e-3))
            except Exception as e:  # noqa: BLE001 - reported as unavailable by the caller
                failed[i] = e
                continue
            times[i] += [v * 1e3 for v in m.times]
            calls[i] += len(m.times) * int(m.number_per_run)
    return [failed[i] if i in failed else
            _summary(times[i], calls[i], "torch.utils.benchmark blocked_autorange, interleaved rounds")
            for i in range(n)]


def _peak_memory_mib(fn: Callable[[], Any], ctx: Context) -> Optional[float]:
    """Extra device memory one call allocates at its peak (MiB, CUDA only; inputs excluded)."""
    if not ctx.cuda:
        return None
    torch.cuda.synchronize(ctx.device)
    torch.cuda.reset_peak_memory_stats(ctx.device)
    base = torch.cuda.memory_allocated(ctx.device)
    fn()
    torch.cuda.synchronize(ctx.device)
    return (torch.cuda.max_memory_allocated(ctx.device) - base) / 2**20


def _cleanup(ctx: Context) -> None:
    # Device memory is what runs out between implementations; a full gc pass costs ~0.1 s each, so
    # on the CPU reference counting alone frees the graphs.
    if ctx.cuda:
        gc.collect()
        torch.cuda.empty_cache()


def _reason(e: BaseException) -> str:
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return "out of device memory"
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if len(msg) > 200:
        msg = msg[:197] + "..."
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


# --------------------------------------------------------------------------------------------------
# Device ceilings: copy bandwidth and matmul rate, measured the same way as the implementations
# --------------------------------------------------------------------------------------------------


def copy_bandwidth(ctx: Context) -> float:
    """Bytes per second of a large device copy (bytes read + bytes written), cached per context."""
    if "copy" not in ctx._ceilings:
        mib = (16 if ctx.quick else 256) if not ctx.cuda else (64 if ctx.quick else 1024)
        n = mib * 2**20 // 4
        src = torch.empty(n, device=ctx.device).uniform_(-1, 1, generator=ctx.generator(99))
        dst = torch.empty_like(src)
        r = time_callable(lambda: dst.copy_(src), ctx)
        ctx._ceilings["copy"] = 2 * n * 4 / (r["median_ms"] * 1e-3)
        del src, dst
        _cleanup(ctx)
    return ctx._ceilings["copy"]


def matmul_rate(ctx: Context, dtype: torch.dtype) -> float:
    """FLOP/s of one large square matmul in ``dtype`` with the process' default settings, cached."""
    key = f"matmul_{dtype}"
    if key not in ctx._ceilings:
        n = (1024 if ctx.quick else 8192) if ctx.cuda else (256 if ctx.quick else 1024)
        if not ctx.cuda and dtype not in (torch.float32, torch.float64):
            dtype_run = torch.float32  # CPU half-precision matmuls are not the path anyone times
        else:
            dtype_run = dtype
        g = ctx.generator(98)
        a = torch.randn(n, n, device=ctx.device, generator=g).to(dtype_run)
        b = torch.randn(n, n, device=ctx.device, generator=g).to(dtype_run)
        r = time_callable(lambda: a @ b, ctx)
        ctx._ceilings[key] = 2 * n**3 / (r["median_ms"] * 1e-3)
        del a, b
        _cleanup(ctx)
    return ctx._ceilings[key]


def lif_floor_bytes(T: int, B: int, N: int, itemsize: int) -> int:
    """Fewest bytes a LIF forward+backward over ``[T, B, N]`` must move.

    Forward: read x, write spikes and membrane (the membrane is also the saved state: the surrogate
    derivative is recomputed from it). Backward: read the spike cotangent and the saved membrane,
    write the input gradient. Six ``[T, B, N]`` tensors in the input dtype.
    """
    return 6 * T * B * N * itemsize


def synaptic_floor_bytes(T: int, B: int, N: int, itemsize: int) -> int:
    """Fewest bytes a Synaptic forward+backward over ``[T, B, N]`` (gradient to x) must move.

    Forward: read x, write the three outputs (spikes, synaptic current, membrane; the membrane is
    also the saved state). Backward: read the spike cotangent and the saved membrane, write the input
    gradient (the saved synaptic current is read only for alpha's gradient). Seven ``[T, B, N]``
    tensors in the input dtype.
    """
    return 7 * T * B * N * itemsize


def norse_floor_bytes(T: int, B: int, N: int, itemsize: int) -> int:
    """Fewest bytes a forward+backward of Norse's feed-forward LIF or LIF box over ``[T, B, N]`` (gradient to x
    for a spike cotangent) must move.

    The layer's output is the spikes; the backward needs only the membrane before the reset ``u`` (the
    spike is ``H(u - v_th)``, the reset's and the surrogate's derivatives are functions of ``u``). Forward:
    read x, write spikes and ``u``; backward: read the spike cotangent and ``u``, write dx. Six ``[T, B, N]``
    tensors in the input dtype, as :func:`lif_floor_bytes` (our kernels move more: they keep ``v`` and, for
    the LIF, ``i`` after every step).
    """
    return 6 * T * B * N * itemsize


def _floor(ctx: Context, nbytes: float, flops: float, dtype: torch.dtype) -> Dict[str, Any]:
    bw = copy_bandwidth(ctx)
    out: Dict[str, Any] = {"bytes": int(nbytes), "copy_bandwidth_GBps": bw / 1e9, "bandwidth_ms": nbytes / bw * 1e3}
    if flops:
        rate = matmul_rate(ctx, dtype)
        out.update({"flops": float(flops), "matmul_TFLOPs": rate / 1e12, "compute_ms": flops / rate * 1e3})
    out["ms"] = max(out["bandwidth_ms"], out.get("compute_ms", 0.0))
    out["bound"] = "compute" if out.get("compute_ms", 0.0) > out["bandwidth_ms"] else "memory"
    return out


# --------------------------------------------------------------------------------------------------
# Implementations and the measurement loop
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Built:
    """What an implementation's ``build`` returns.

    ``forward(x) -> (y, mem_or_None)`` for the sequence configs (``y`` receives the cotangent);
    ``params`` are differentiated in the timed backward; ``check_params`` (default ``params``) are
    the ones compared with the reference's; ``run`` replaces the generic timed function (config 4).
    """

    forward: Optional[Callable[[Tensor], tuple]] = None
    params: Sequence[Tensor] = ()
    check_params: Optional[Sequence[Tensor]] = None
    run: Optional[Callable[[], Any]] = None
    result: Optional[Callable[[], Any]] = None
    note: str = ""
    threads: Optional[int] = None  # CPU threads for this implementation's timed calls (None: the run's)
    check_forward: Optional[Callable[[Tensor], tuple]] = None  # the output check's forward (default forward)


@dataclasses.dataclass
class Impl:
    """One implementation: a stable key, a printed label and a builder (which may raise)."""

    name: str
    label: str
    build: Callable[[], Built]
    needs_cuda: bool = False
    compiled: bool = False
    checked: bool = False  # same semantics as the reference: compare outputs
    note: str = ""


@contextlib.contextmanager
def _cold_compile():
    """Compile from scratch: dynamo reset, inductor's FX-graph and AOTAutograd caches off (restored after).

    Compiled kernels themselves may still come from the on-disk kernel cache on a rerun.
    """
    import torch._dynamo

    torch._dynamo.reset()
    with contextlib.ExitStack() as stack:
        try:
            import torch._functorch.config as functorch_config
            import torch._inductor.config as inductor_config

            stack.enter_context(inductor_config.patch(fx_graph_cache=False))
            stack.enter_context(functorch_config.patch(enable_autograd_cache=False))
        except (ImportError, AttributeError, RuntimeError):  # pragma: no cover - other torch versions
            pass
        yield


@dataclasses.dataclass
class _Prepared:
    impl: Impl
    rec: Dict[str, Any]
    built: Optional[Built] = None
    fn: Optional[Callable[[], Any]] = None
    est: float = 0.0


def _unavailable(p: _Prepared, e: BaseException, ctx: Context) -> None:
    p.rec = {k: v for k, v in p.rec.items() if k in ("name", "label", "note", "compile_backend")}
    p.rec["status"] = f"unavailable: {_reason(e)}"
    p.built = p.fn = None
    _cleanup(ctx)


def _prepare(ctx: Context, impl: Impl, make_fn: Callable[[Built], Callable[[], Any]]) -> _Prepared:
    """Build and warm up one implementation (compile time is in its first call)."""
    p = _Prepared(impl, {"name": impl.name, "label": impl.label, "status": "ok"})
    if impl.note:
        p.rec["note"] = impl.note
    if impl.needs_cuda and not ctx.cuda:
        p.rec["status"] = "unavailable: needs a CUDA device (Triton's CPU interpreter is for tests, not timing)"
        return p
    if impl.compiled and ctx.compile_backend is None:
        p.rec["status"] = "skipped: --compile-backend none"
        return p
    try:
        with contextlib.ExitStack() as stack:
            if impl.compiled:
                p.rec["compile_backend"] = ctx.compile_backend
                stack.enter_context(_cold_compile())
            p.built = impl.build()
            if p.built.note:
                p.rec["note"] = (p.rec.get("note", "") + "; " if p.rec.get("note") else "") + p.built.note
            p.fn = make_fn(p.built)
            p.rec["first_call_s"], p.est = _warm_up(p.fn, ctx)
    except Exception as e:  # noqa: BLE001 - any failure of one implementation is reported, not raised
        _unavailable(p, e, ctx)
    return p


def _finalize(ctx: Context, p: _Prepared, check: Optional[Callable[[Built], Dict[str, Any]]]) -> Dict[str, Any]:
    """Compile time, peak memory and the output check of a timed implementation; frees it."""
    if p.fn is not None:
        if p.impl.compiled:
            p.rec["compile_s"] = max(0.0, p.rec["first_call_s"] - p.rec["median_ms"] * 1e-3)
        try:
            p.rec["peak_mem_mib"] = _peak_memory_mib(p.fn, ctx)
        except Exception as e:  # noqa: BLE001
            _unavailable(p, e, ctx)
    if p.fn is not None and check is not None and p.impl.checked:
        try:
            p.rec["check"] = check(p.built)
        except Exception as e:  # noqa: BLE001
            p.rec["check"] = {"error": _reason(e), "summary": f"check failed: {_reason(e)}"}
    p.built = p.fn = None
    _cleanup(ctx)
    _progress(ctx, p.rec)
    return p.rec


def _measure(ctx: Context, impl: Impl, make_fn: Callable[[Built], Callable[[], Any]],
             check: Optional[Callable[[Built], Dict[str, Any]]] = None) -> Dict[str, Any]:
    """Build, warm up, time, check and free one implementation; never raises."""
    p = _prepare(ctx, impl, make_fn)
    if p.fn is not None:
        try:
            p.rec.update(_timed_runs(p.fn, ctx, p.est))
        except Exception as e:  # noqa: BLE001
            _unavailable(p, e, ctx)
    return _finalize(ctx, p, check)


def _run_impls(ctx: Context, impls: Sequence[Impl], make_fn: Callable[[Built], Callable[[], Any]],
               check: Optional[Callable[[Built], Dict[str, Any]]] = None) -> List[Dict[str, Any]]:
    """All implementations of one case: one after the other on CUDA (each freed before the next), in
    interleaved rounds on the CPU (``ctx.interleave``)."""
    if ctx.cuda or not ctx.interleave:
        return [_measure(ctx, impl, make_fn, check) for impl in impls]
    preps = [_prepare(ctx, impl, make_fn) for impl in impls]
    live = [p for p in preps if p.fn is not None]
    for p, res in zip(live, _time_interleaved([p.fn for p in live], [p.est for p in live], ctx)):
        if isinstance(res, BaseException):
            _unavailable(p, res, ctx)
        else:
            p.rec.update(res)
    return [_finalize(ctx, p, check) for p in preps]


def _progress_case(ctx: Context, name: str) -> None:
    if ctx.progress:
        print(f"   -- {name}", file=sys.stderr, flush=True)


def _progress(ctx: Context, rec: Dict[str, Any]) -> None:
    if ctx.progress:
        what = f"{rec['median_ms']:.3f} ms" if rec["status"] == "ok" else rec["status"]
        print(f"   .. {rec['label']}: {what}", file=sys.stderr, flush=True)


def _finish_case(case: Dict[str, Any]) -> Dict[str, Any]:
    """Fill ``fraction_of_floor`` and ``speedup_vs_baseline`` from the medians."""
    rows = case["implementations"]
    by = {r["name"]: r for r in rows}
    base = by.get(case.get("baseline", ""))
    base_ms = base["median_ms"] if base and base["status"] == "ok" else None
    floor_ms = case.get("floor", {}).get("ms")
    for r in rows:
        if r["status"] != "ok":
            continue
        r["fraction_of_floor"] = floor_ms / r["median_ms"] if floor_ms else None
        r["speedup_vs_baseline"] = base_ms / r["median_ms"] if base_ms else None
    return case


def evaluate_target(case: Dict[str, Any], target: Dict[str, Any]) -> Dict[str, Any]:
    """Evaluate one target against a finished case; returns the target with ``value`` and ``result``.

    Kinds: ``fraction`` (subject's ``fraction_of_floor >= threshold``), ``speedup`` (``median(other) /
    median(subject) >= threshold``), ``memory`` (``peak(subject) <= peak(other)``). ``result`` is
    ``"pass"``, ``"fail"`` or ``"n/a: <why>"`` (an implementation unavailable, no memory figures).
    """
    t = dict(target)
    by = {r["name"]: r for r in case["implementations"]}
    subj, other = by.get(t["subject"]), by.get(t.get("other", ""))
    t["value"] = None

    def missing(name, row):
        if row is None:
            return f"n/a: no implementation {name!r}"
        # The row itself carries the reason; the target names only the state.
        return f"n/a: {name} {row['status'].split(':')[0]}" if row["status"] != "ok" else None

    why = missing(t["subject"], subj)
    if why is None and t["kind"] in ("speedup", "memory"):
        why = missing(t["other"], other)
    if why is not None:
        t["result"] = why
        return t
    if t["kind"] == "fraction":
        v = subj.get("fraction_of_floor")
        if v is None:
            t["result"] = "n/a: no floor"
            return t
        t["value"] = v
        t["result"] = "pass" if v >= t["threshold"] else "fail"
    elif t["kind"] == "speedup":
        v = other["median_ms"] / subj["median_ms"]
        t["value"] = v
        t["result"] = "pass" if v >= t["threshold"] else "fail"
    elif t["kind"] == "memory":
        a, b = subj.get("peak_mem_mib"), other.get("peak_mem_mib")
        if a is None or b is None:
            t["result"] = "n/a: peak memory is measured on CUDA only"
            return t
        t["value"] = a / b if b else float("inf")
        t["result"] = "pass" if a <= b else "fail"
    else:
        raise ValueError(f"unknown target kind {t['kind']!r}")
    return t


def _target(text: str, kind: str, subject: str, threshold: float = 1.0, other: str = "") -> Dict[str, Any]:
    return {"text": text, "kind": kind, "subject": subject, "other": other, "threshold": threshold}


# --------------------------------------------------------------------------------------------------
# Shared helpers: inputs, cotangents, checks
# --------------------------------------------------------------------------------------------------


def _randn(ctx: Context, shape, dtype, gen, scale=1.0, shift=0.0) -> Tensor:
    return (torch.randn(*shape, device=ctx.device, generator=gen) * scale + shift).to(dtype)


def _sets(ctx: Context, make: Callable[[torch.Generator], tuple], bytes_per_set: int, offset: int) -> list:
    gen = ctx.generator(offset)
    return [make(gen) for _ in range(ctx.n_sets(bytes_per_set))]


def _cycle_fwd_bwd(built: Built, sets: list, input_grad: bool) -> Callable[[], Any]:
    """Timed function: forward on the next input set, backward of the cotangent to x and the params."""
    it = itertools.cycle(sets)
    params = list(built.params)
    fwd = built.forward

    def run():
        x, g = next(it)
        y = fwd(x)[0]
        if y.dtype != g.dtype:
            g = g.to(y.dtype)
        wrt = ([x] if input_grad else []) + params
        return torch.autograd.grad(y, wrt, g)

    return run


def _rel(a: Tensor, b: Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _check_outputs(built: Built, x: Tensor, g: Tensor, input_grad: bool) -> tuple:
    """``(y, mem, grads)`` of a built implementation on the check slice (its ``check_forward`` where set)."""
    xx = x.detach().clone().requires_grad_(input_grad)
    y, mem = (built.check_forward or built.forward)(xx)
    cps = list(built.check_params if built.check_params is not None else built.params)
    wrt = ([xx] if input_grad else []) + cps
    grads = torch.autograd.grad(y, wrt, g.to(y.dtype), allow_unused=True)
    return y, mem, grads


def _compare(ref: Dict[str, Any], y: Tensor, mem: Optional[Tensor], grads: Sequence[Optional[Tensor]],
             spiking_out: bool) -> tuple:
    """The check's numbers against the reference outputs ``ref``: ``(dict, printed parts)``."""
    out: Dict[str, Any] = {}
    parts = []
    if spiking_out:
        mism = int((y.detach().float() != ref["y"].float()).sum())
        out["spike_mismatches"], out["spikes_compared"] = mism, int(ref["y"].numel())
        parts.append(f"spk {mism}/{ref['y'].numel()}")
    else:
        out["out_rel_err"] = _rel(y.float(), ref["y"].float())
        parts.append(f"out {out['out_rel_err']:.1e}")
    if mem is not None and ref.get("mem") is not None:
        out["mem_max_abs_err"] = float((mem.detach().float() - ref["mem"].float()).abs().max())
        parts.append(f"mem {out['mem_max_abs_err']:.1e}")
    errs = [_rel(gi.float(), gr.float()) for gi, gr in zip(grads, ref["grads"]) if gi is not None]
    if errs:
        out["grad_rel_err"] = max(errs)
        parts.append(f"grad {out['grad_rel_err']:.1e}")
    return out, parts


def _seq_check(ref: Dict[str, Any], x: Tensor, g: Tensor, input_grad: bool, spiking_out: bool):
    """A check function comparing a built implementation with the reference outputs ``ref``."""

    def check(built: Built) -> Dict[str, Any]:
        out, parts = _compare(ref, *_check_outputs(built, x, g, input_grad), spiking_out)
        out["summary"] = ", ".join(parts)
        return out

    return check


def _guarded(make_check: Callable[[], Callable[[Built], Dict[str, Any]]]):
    """``make_check()``, or a check that reports why making it (running the reference) failed."""
    try:
        return make_check()
    except Exception as e:  # noqa: BLE001 - e.g. snnTorch missing: time anyway, check nothing
        why = _reason(e)
        return lambda built: {"error": why, "summary": f"no reference: {why}"}


def _guarded_check(reference: Callable[[], Dict[str, Any]], x: Tensor, g: Tensor, input_grad: bool,
                   spiking_out: bool):
    """:func:`_seq_check` against ``reference()``, or a check that reports why the reference failed."""
    return _guarded(lambda: _seq_check(reference(), x, g, input_grad, spiking_out))


def _reference(forward: Callable, params: Sequence[Tensor], x: Tensor, g: Tensor, input_grad: bool) -> Dict[str, Any]:
    xx = x.detach().clone().requires_grad_(input_grad)
    y, mem = forward(xx)
    wrt = ([xx] if input_grad else []) + list(params)
    grads = torch.autograd.grad(y, wrt, g.to(y.dtype))
    return {"y": y.detach(), "mem": None if mem is None else mem.detach(), "grads": [t.detach() for t in grads]}


TRUTH_FACTOR = 4.0  # the tolerance policy's factor for two evaluation orders of one formula (docs/TESTING.md)


def _max_abs_err(a: Tensor, b: Tensor) -> float:
    """``max |a - b|``; infinite where the shapes differ (no broadcasting of a final state against a trace)."""
    if a.shape != b.shape:
        return math.inf
    return float((a.detach().double() - b.detach().double()).abs().max()) if b.numel() else 0.0


def _truth_check(make_reference: Callable[[], Callable[[Tensor], tuple]], x: Tensor, g: Tensor,
                 per_step_ops: int, factor: float = TRUTH_FACTOR):
    """A check against the library we mirror, run by ``make_reference()`` (a forward returning the spikes and
    the membrane trace) on the check slice ``x``, ``g`` (float32), with a bound from the project's tolerance
    policy (docs/TESTING.md; ``tests/_tolerance.assert_close_to_truth``).

    As for the snnTorch rows: spike mismatches, largest membrane error and relative gradient error against the
    reference's float32 run. Then ours and the reference's float32 runs are both measured against the
    reference run in float64 (the truth), for the membrane trace and the gradient to x: ours must be within
    ``factor x max(reference's error, sqrt(ops) x eps(float32) x max|truth|)``, with ``ops = T x per_step_ops``
    for the forward and twice that for the backward. ``within_tolerance`` says whether both hold; a row whose
    forward gives no membrane trace fails it.
    """
    fwd = make_reference()
    ref = _reference(fwd, [], x.float(), g.float(), True)
    truth = _reference(fwd, [], x.double(), g.double(), True)
    if ref["mem"] is None or truth["mem"] is None:
        raise RuntimeError("the reference forward gives no membrane trace")
    eps32 = torch.finfo(torch.float32).eps
    ops = {"membrane": x.shape[0] * per_step_ops, "dx": 2 * x.shape[0] * per_step_ops}
    truths = {"membrane": truth["mem"], "dx": truth["grads"][0]}
    theirs = {"membrane": _max_abs_err(ref["mem"], truth["mem"]), "dx": _max_abs_err(ref["grads"][0], truths["dx"])}
    bounds = {k: factor * max(theirs[k], math.sqrt(ops[k]) * eps32 * float(truths[k].abs().max()))
              for k in truths}

    def check(built: Built) -> Dict[str, Any]:
        y, mem, grads = _check_outputs(built, x, g, True)
        out, parts = _compare(ref, y, mem, grads, True)
        errs = {"membrane": None if mem is None else _max_abs_err(mem, truths["membrane"]),
                "dx": None if grads[0] is None else _max_abs_err(grads[0], truths["dx"])}
        ok = all(errs[k] is not None and errs[k] <= bounds[k] for k in errs)
        out["vs_float64"] = {k: {"err": errs[k], "reference_err": theirs[k], "bound": bounds[k], "ops": ops[k]}
                             for k in errs}
        out["vs_float64"]["factor"] = factor
        out["within_tolerance"] = ok
        shown = ", ".join(f"{'v' if k == 'membrane' else k} " + ("-" if errs[k] is None else f"{errs[k]:.1e}")
                          + f"<={bounds[k]:.1e}" for k in errs)
        parts.append(f"f64: {shown} {'ok' if ok else 'FAIL'}")
        out["summary"] = ", ".join(parts)
        return out

    return check


# --------------------------------------------------------------------------------------------------
# LIF neuron implementations (configs cpu, 1, 2)
# --------------------------------------------------------------------------------------------------


def _snn_leaky(device):
    import snntorch
    from snntorch import surrogate as snn_sur

    lif = snntorch.Leaky(beta=BETA, threshold=THRESHOLD, spike_grad=snn_sur.atan(), reset_mechanism="subtract")
    return lif.to(device)


def _snntorch_forward(device, per_step: Optional[Callable[[Tensor], Tensor]] = None):
    lif = _snn_leaky(device)

    def forward(x):
        mem = None
        spks, mems = [], []
        for xt in x.unbind(0):  # one UnbindBackward; x[t] would cost T full-size zero fills in backward
            cur = xt if per_step is None else per_step(xt)
            if mem is None:
                mem = torch.zeros_like(cur)
            spk, mem = lif(cur, mem)
            spks.append(spk)
            mems.append(mem)
        return torch.stack(spks), torch.stack(mems)

    return forward


def _snntorch_synaptic_forward(device):
    """snnTorch's ``Synaptic`` (atan surrogate, subtract reset) looped over time: ``(spikes, membrane)``."""
    import snntorch
    from snntorch import surrogate as snn_sur

    lif = snntorch.Synaptic(alpha=ALPHA, beta=BETA, threshold=THRESHOLD, spike_grad=snn_sur.atan(),
                            reset_mechanism="subtract").to(device)

    def forward(x):
        syn = mem = None
        spks, mems = [], []
        for xt in x.unbind(0):
            if mem is None:
                syn, mem = torch.zeros_like(xt), torch.zeros_like(xt)
            spk, syn, mem = lif(xt, syn, mem)
            spks.append(spk)
            mems.append(mem)
        return torch.stack(spks), torch.stack(mems)

    return forward


def _synaptic_sequence_fn(backend: str, device: torch.device) -> Callable[[Tensor], tuple]:
    """``surroflos.kernels.lif.synaptic_sequence`` bound to the Synaptic rows' neuron: ``(spikes, membrane)``."""
    from . import surrogate as sg
    from .kernels.lif import synaptic_sequence

    sur = sg.get("atan")

    def forward(x):
        spk, _, mem = synaptic_sequence(x, None, None, ALPHA, BETA, THRESHOLD, surrogate=sur, backend=backend)
        return spk, mem

    return forward


def _synaptic_dropin_forward(device):
    from snntorch import surrogate as snn_sur

    from .snntorch import Synaptic

    lif = Synaptic(alpha=ALPHA, beta=BETA, threshold=THRESHOLD, spike_grad=snn_sur.atan(),
                   reset_mechanism="subtract").to(device)

    def forward(x):
        spk, _, mem = lif.sequence(x, backend="auto")
        return spk, mem

    return forward


def _norse_lif(device):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import norse.torch as norse
    lif = norse.LIF().to(device)

    def forward(x):
        z, _ = lif(x)
        return z, None

    return forward


def _leaky_sequence_fn(backend: str, device: torch.device) -> Callable[[Tensor], tuple]:
    """``surroflos.kernels.lif.leaky_sequence`` bound to the benchmark neuron (snnTorch Leaky, atan).

    Options with a default are left to it except the ones that define the neuron; scalar parameters
    are tried as Python floats first, then as 0-dim tensors (whichever the function accepts).
    """
    from . import surrogate as sg
    from .kernels.lif import leaky_sequence

    sig = inspect.signature(leaky_sequence)
    kw: Dict[str, Any] = {"backend": backend}
    for name, value in (("surrogate", sg.get("atan")), ("reset", "subtract"), ("reset_delay", True),
                        ("detach_reset", True)):
        if name in sig.parameters:
            kw[name] = value
    if "graded" in sig.parameters and sig.parameters["graded"].default is inspect.Parameter.empty:
        kw["graded"] = 1.0
    variants = [lambda x: (BETA, THRESHOLD),
                lambda x: (torch.tensor(BETA, dtype=x.dtype, device=x.device),
                           torch.tensor(THRESHOLD, dtype=x.dtype, device=x.device))]
    probe = torch.randn(3, 2, 5, device=device).requires_grad_(True)
    errors = []
    for make_params in variants:
        try:
            beta, th = make_params(probe)
            spk, _ = leaky_sequence(probe, torch.zeros_like(probe[0]), beta, th, **kw)
            torch.autograd.grad(spk, probe, torch.ones_like(spk))
        except Exception as e:  # noqa: BLE001
            errors.append(_reason(e))
            continue

        def forward(x, _make=make_params):
            beta, th = _make(x)
            return leaky_sequence(x, torch.zeros_like(x[0]), beta, th, **kw)

        return forward
    raise RuntimeError("leaky_sequence rejected every call form: " + " | ".join(errors))


def _dropin_forward(device):
    from snntorch import surrogate as snn_sur

    from .snntorch import Leaky

    lif = Leaky(beta=BETA, threshold=THRESHOLD, spike_grad=snn_sur.atan(), reset_mechanism="subtract").to(device)

    def forward(x):
        return lif.sequence(x, torch.zeros_like(x[0]), backend="auto")

    return forward


def _compiled_lif_forward(ctx: Context):
    """torch.compile of one LIF step (snnTorch Leaky semantics), looped over time in Python."""
    from . import surrogate as sg

    sur = sg.get("atan")

    def step(x, mem):
        reset = sur(mem - THRESHOLD).detach()
        mem = BETA * mem + x - reset * THRESHOLD
        return sur(mem - THRESHOLD), mem

    cstep = torch.compile(step, backend=ctx.compile_backend, dynamic=False)

    def forward(x):
        mem = torch.zeros_like(x[0])
        spks, mems = [], []
        for xt in x.unbind(0):
            spk, mem = cstep(xt, mem)
            spks.append(spk)
            mems.append(mem)
        return torch.stack(spks), torch.stack(mems)

    return forward


def _spikingjelly_forward(device):
    from spikingjelly.activation_based import neuron, surrogate  # noqa: F401 - not installed everywhere

    node = neuron.LIFNode(tau=1.0 / (1.0 - BETA), decay_input=False, v_threshold=THRESHOLD, v_reset=None,
                          detach_reset=True, surrogate_function=surrogate.ATan(), step_mode="m",
                          backend="triton").to(device)

    def forward(x):
        node.reset()
        return node(x), None

    return forward


def _lif_impls(ctx: Context, gpu: bool, make_linear: Optional[Callable[[], Any]] = None) -> List[Impl]:
    """The LIF rows. With ``make_linear`` (config 2: a factory of the layer's Linear) each forward applies
    the Linear first."""
    dev = ctx.device

    def wrap(make):
        # Config 2: Linear over the whole sequence, then the neuron (snnTorch applies it per step below).
        if make_linear is None:
            return lambda: Built(forward=make())
        def build():
            fc = make_linear()
            f = make()
            return Built(forward=lambda x: f(fc(x)), params=list(fc.parameters()))
        return build

    def snn_build():
        if make_linear is None:
            return Built(forward=_snntorch_forward(dev))
        fc = make_linear()
        return Built(forward=_snntorch_forward(dev, per_step=fc), params=list(fc.parameters()))

    impls = [
        Impl("snntorch", "snnTorch Leaky, Python loop", snn_build, checked=True),
        Impl("norse", "Norse LIF (own dynamics), loop", wrap(lambda: _norse_lif(dev)),
             note="Norse's current-based LIF: same sizes, different equations (not checked)"),
        Impl("ours_torch", "ours: leaky_sequence torch", wrap(lambda: _leaky_sequence_fn("torch", dev)), checked=True),
        Impl("ours_dropin", "ours: snntorch.Leaky.sequence", wrap(lambda: _dropin_forward(dev)), checked=True,
             note="the drop-in's sequence(backend='auto')"),
        Impl("ours_compiled", "ours: torch.compile(step) loop", wrap(lambda: _compiled_lif_forward(ctx)),
             compiled=True, checked=True),
    ]
    if gpu:
        impls += [
            Impl("ours_triton", "ours: leaky_sequence triton", wrap(lambda: _leaky_sequence_fn("triton", dev)),
                 needs_cuda=True, checked=True),
            Impl("spikingjelly_triton", "SpikingJelly LIFNode triton", wrap(lambda: _spikingjelly_forward(dev)),
                 needs_cuda=True,
                 note="immediate (same-step) soft reset: not the reference's semantics (not checked)"),
        ]
    return impls


def _cpu_kernel_lif_impls(ctx: Context) -> List[Impl]:
    """The rows of config ``cpu_kernels``: snnTorch, the PyTorch path, the compiled CPU kernels (numba) on
    the run's threads and on 2, the snnTorch drop-in (``auto``: the CPU kernels) and the compiled step loop."""
    dev = ctx.device

    def cpu_build(threads=None):
        return lambda: Built(forward=_leaky_sequence_fn("cpu", dev), threads=threads)

    by = {i.name: i for i in _lif_impls(ctx, gpu=False)}
    return [by["snntorch"], by["ours_torch"],
            Impl("ours_cpu", "ours: leaky_sequence cpu (numba)", cpu_build(), checked=True),
            Impl("ours_cpu_2t", "ours: leaky_sequence cpu, 2 threads", cpu_build(2), checked=True,
                 note="torch.set_num_threads(2) around its forward+backward (the kernels follow torch's count)"),
            by["ours_dropin"], by["ours_compiled"]]


def _cpu_kernel_synaptic_impls(ctx: Context) -> List[Impl]:
    """The Synaptic rows of config ``cpu_kernels``: snnTorch's loop, the PyTorch path, the compiled CPU kernels
    on the run's threads and on 2, and the drop-in (``auto``: the CPU kernels)."""
    dev = ctx.device

    def build(make, threads=None):
        return lambda: Built(forward=make(), threads=threads)

    return [Impl("snntorch", "snnTorch Synaptic, Python loop", build(lambda: _snntorch_synaptic_forward(dev)),
                 checked=True),
            Impl("ours_torch", "ours: synaptic_sequence torch", build(lambda: _synaptic_sequence_fn("torch", dev)),
                 checked=True),
            Impl("ours_cpu", "ours: synaptic_sequence cpu (numba)",
                 build(lambda: _synaptic_sequence_fn("cpu", dev)), checked=True),
            Impl("ours_cpu_2t", "ours: synaptic_sequence cpu, 2 threads",
                 build(lambda: _synaptic_sequence_fn("cpu", dev), 2), checked=True,
                 note="torch.set_num_threads(2) around its forward+backward (the kernels follow torch's count)"),
            Impl("ours_dropin", "ours: snntorch.Synaptic.sequence", build(lambda: _synaptic_dropin_forward(dev)),
                 checked=True, note="the drop-in's sequence(backend='auto')")]


def _import_norse():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Norse 1.1's torch.jit.script decorators warn at import
        import norse.torch as norse
    return norse


def _norse_own_forward(device, box: bool, record: bool = False) -> Callable[[Tensor], tuple]:
    """Norse 1.1's own neuron as a user runs it, default parameters: ``norse.torch.LIF`` or, for the box
    neuron (Norse has no sequence module for it), a ``LIFBoxCell`` looped over time. Returns
    ``(spikes, membrane after every step)`` with ``record``, else ``(spikes, None)``."""
    norse = _import_norse()
    if not box:
        lif = norse.LIF(record_states=record).to(device)

        def forward(x):
            z, state = lif(x)
            return z, state.v if record else None

        return forward
    cell = norse.LIFBoxCell().to(device)

    def forward_box(x):
        state, zs, vs = None, [], []
        for xt in x.unbind(0):
            z, state = cell(xt, state)
            zs.append(z)
            if record:
                vs.append(state.v)
        return torch.stack(zs), torch.stack(vs) if record else None

    return forward_box


def _norse_dropin_forward(device, box: bool, backend: str, record: bool = False) -> Callable[[Tensor], tuple]:
    """Our drop-in ``surroflos.norse.LIF`` / ``LIFBox`` (default parameters) with ``backend``."""
    from . import norse as ours

    mod = (ours.LIFBox if box else ours.LIF)(record_states=record, backend=backend).to(device)

    def forward(x):
        z, state = mod(x)
        return z, state.v if record else None

    return forward


def _norse_impls(ctx: Context, box: bool) -> List[Impl]:
    """The Norse rows of config ``cpu_kernels``: Norse 1.1's own module (the baseline), our drop-in with
    ``backend="torch"``, the compiled CPU kernels (numba, ``backend="cpu"``, the run's threads) and the drop-in
    as users call it (``auto``: the CPU kernels on CPU tensors). Timed without recorded states (as users run
    them); the output check runs each with ``record_states=True``."""
    dev = ctx.device

    def recorded(make):
        return lambda: Built(forward=make(False), check_forward=make(True))

    mod = "LIFBox" if box else "LIF"
    fn = "lif_box_sequence" if box else "lif_feed_forward_sequence"
    return [Impl("norse", "Norse 1.1 LIFBoxCell, Python loop" if box else "Norse 1.1 norse.torch.LIF",
                 recorded(lambda r: _norse_own_forward(dev, box, r)), checked=True,
                 note=("Norse has no box sequence module: its LIFBoxCell stepped over time" if box else
                       "Norse's own SNN loop over its (TorchScript) step, default parameters")),
            Impl("ours_torch", f"ours: norse.{mod}(backend='torch')",
                 recorded(lambda r: _norse_dropin_forward(dev, box, "torch", r)), checked=True),
            Impl("ours_cpu", f"ours: norse.{mod}(backend='cpu')",
                 recorded(lambda r: _norse_dropin_forward(dev, box, "cpu", r)), checked=True,
                 note=f"the numba kernels ({fn}, backend='cpu') that the drop-in runs on CPU tensors"),
            Impl("ours_dropin", f"ours: norse.{mod}() (auto)",
                 recorded(lambda r: _norse_dropin_forward(dev, box, "auto", r)), checked=True,
                 note="the drop-in as users call it (backend='auto': the numba kernels for float32 CPU tensors)")]


def _with_threads(fn: Callable[[], Any], threads: Optional[int]) -> Callable[[], Any]:
    if threads is None:
        return fn

    def run():
        with torch_threads(threads):
            return fn()

    return run


def _lif_case(ctx: Context, name: str, T: int, B: int, N: int, dtype: torch.dtype, gpu: bool,
              targets: Sequence[Dict[str, Any]] = (), impls: Optional[List[Impl]] = None,
              synaptic: bool = False) -> Dict[str, Any]:
    """LIF neuron forward+backward over ``[T, B, N]`` (gradient to the input); ``synaptic``: snnTorch's
    current-based ``Synaptic`` instead of ``Leaky`` (reference, floor and title)."""
    item = torch.empty((), dtype=dtype).element_size()
    floor = _floor(ctx, (synaptic_floor_bytes if synaptic else lif_floor_bytes)(T, B, N, item), 0.0, dtype)
    ref_forward, neuron = (_snntorch_synaptic_forward, "Synaptic") if synaptic else (_snntorch_forward, "Leaky")

    def make(gen):
        x = _randn(ctx, (T, B, N), dtype, gen, 0.5, 0.15).requires_grad_(True)
        return x, _randn(ctx, (T, B, N), dtype, gen)

    sets = _sets(ctx, make, 2 * T * B * N * item, 1)
    bc = min(B, 4)
    xc, gc_ = sets[0][0].detach()[:, :bc].contiguous(), sets[0][1][:, :bc].contiguous()
    check = _guarded_check(lambda: _reference(ref_forward(ctx.device), [], xc.float(), gc_.float(), True),
                           xc, gc_, True, True)
    _progress_case(ctx, name)
    rows = _run_impls(ctx, _lif_impls(ctx, gpu) if impls is None else impls,
                      lambda b: _with_threads(_cycle_fwd_bwd(b, sets, True), b.threads), check)
    title = f"{'Synaptic (current-based LIF)' if synaptic else 'LIF'} neuron forward+backward"
    case = {"name": name, "title": f"{title} [T={T}, B={B}, N={N}] {_dt(dtype)}",
            "measure": "forward + backward (gradient to x for a random spike cotangent)",
            "dtype": _dt(dtype), "shapes": {"T": T, "B": B, "N": N}, "baseline": "snntorch",
            "check_reference": f"snnTorch {neuron} loop in float32 on x[:, :{bc}]", "floor": floor,
            "implementations": rows}
    _finish_case(case)
    case["targets"] = [evaluate_target(case, t) for t in targets]
    _cleanup(ctx)
    return case


def _norse_case(ctx: Context, name: str, T: int, B: int, N: int, box: bool,
                targets: Sequence[Dict[str, Any]] = ()) -> Dict[str, Any]:
    """Norse's feed-forward LIF (``box``: the LIF box neuron) forward+backward over ``[T, B, N]`` float32
    (gradient to the input), Norse 1.1's own module against our drop-in and its kernels: the LIF case's method
    (interleaved rounds, input sets, cotangent; the LIF's inputs are those of the snnTorch LIF case of the same
    shape), checked against Norse in float32 and float64 (:func:`_truth_check`)."""
    dtype = torch.float32
    item = torch.empty((), dtype=dtype).element_size()
    floor = _floor(ctx, norse_floor_bytes(T, B, N, item), 0.0, dtype)
    shift = NORSE_BOX_SHIFT if box else 0.15

    def make(gen):
        x = _randn(ctx, (T, B, N), dtype, gen, 0.5, shift).requires_grad_(True)
        return x, _randn(ctx, (T, B, N), dtype, gen)

    sets = _sets(ctx, make, 2 * T * B * N * item, 1)
    bc = min(B, 4)
    xc, gc_ = sets[0][0].detach()[:, :bc].contiguous(), sets[0][1][:, :bc].contiguous()
    kind = "box" if box else "lif"
    check = _guarded(lambda: _truth_check(lambda: _norse_own_forward(ctx.device, box, record=True), xc, gc_,
                                          NORSE_OPS_PER_STEP[kind]))
    _progress_case(ctx, name)
    rows = _run_impls(ctx, _norse_impls(ctx, box),
                      lambda b: _with_threads(_cycle_fwd_bwd(b, sets, True), b.threads), check)
    own = "LIFBoxCell loop" if box else "norse.torch.LIF"
    case = {"name": name,
            "title": f"Norse {'LIF box' if box else 'LIF (current-based)'} neuron forward+backward "
                     f"[T={T}, B={B}, N={N}] {_dt(dtype)}",
            "measure": "forward + backward (gradient to x for a random spike cotangent)",
            "dtype": _dt(dtype), "shapes": {"T": T, "B": B, "N": N}, "baseline": "norse",
            "inputs": f"0.5 N(0,1) + {shift:g}",
            "check_reference": f"Norse 1.1 {own} in float32 on x[:, :{bc}]; against the same in float64: "
                               f"within {TRUTH_FACTOR:g} x max(Norse's float32 error, sqrt(ops) eps magnitude)",
            "floor": floor, "implementations": rows}
    _finish_case(case)
    case["targets"] = [evaluate_target(case, t) for t in targets]
    _cleanup(ctx)
    return case


def _dt(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# --------------------------------------------------------------------------------------------------
# Config 2: Linear + LIF
# --------------------------------------------------------------------------------------------------


def _linear_lif_case(ctx: Context, name: str, T: int, B: int, N: int, dtype: torch.dtype,
                     targets: Sequence[Dict[str, Any]] = ()) -> Dict[str, Any]:
    item = torch.empty((), dtype=dtype).element_size()
    # Forward: x, W in; spikes, membrane out. Backward: spike cotangent, membrane and x in; dW out.
    nbytes = (6 * T * B * N + 2 * N * N) * item
    flops = 4.0 * T * B * N * N  # forward x W^T, backward dW = g^T x (no input gradient)
    floor = _floor(ctx, nbytes, flops, dtype)
    wgen = torch.Generator().manual_seed(ctx.seed + 7)
    w = (torch.randn(N, N, generator=wgen) / math.sqrt(N)).to(ctx.device, dtype)
    b = torch.full((N,), 0.15).to(ctx.device, dtype)

    def linear():
        fc = torch.nn.Linear(N, N, device=ctx.device, dtype=dtype)
        with torch.no_grad():
            fc.weight.copy_(w)
            fc.bias.copy_(b)
        return fc

    def make(gen):
        return _randn(ctx, (T, B, N), dtype, gen, 0.5), _randn(ctx, (T, B, N), dtype, gen)

    sets = _sets(ctx, make, 2 * T * B * N * item, 2)
    bc = min(B, 4)
    xc, gc_ = sets[0][0][:, :bc].contiguous(), sets[0][1][:, :bc].contiguous()
    fc_ref = torch.nn.Linear(N, N, device=ctx.device)
    with torch.no_grad():
        fc_ref.weight.copy_(w.float())
        fc_ref.bias.copy_(b.float())
    check = _guarded_check(lambda: _reference(_snntorch_forward(ctx.device, per_step=fc_ref),
                                              list(fc_ref.parameters()), xc.float(), gc_.float(), False),
                           xc, gc_, False, True)
    _progress_case(ctx, name)
    rows = _run_impls(ctx, _lif_impls(ctx, True, make_linear=linear),
                      lambda bt: _cycle_fwd_bwd(bt, sets, False), check)
    case = {"name": name, "title": f"Linear({N}->{N}) + LIF forward+backward [T={T}, B={B}] {_dt(dtype)}",
            "measure": "forward + backward to the Linear's weight and bias (random spike cotangent)",
            "dtype": _dt(dtype), "shapes": {"T": T, "B": B, "N": N, "n_in": N}, "baseline": "snntorch",
            "check_reference": f"snnTorch Linear + Leaky loop in float32 on x[:, :{bc}]", "floor": floor,
            "implementations": rows}
    _finish_case(case)
    case["targets"] = [evaluate_target(case, t) for t in targets]
    _cleanup(ctx)
    return case


# --------------------------------------------------------------------------------------------------
# Config 3: recurrent LIF network training step
# --------------------------------------------------------------------------------------------------


def _accepts(fn: Callable, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _spiking_rnn(ctx: Context, sizes: Dict[str, int], backend: Optional[str], surrogate: str = "atan"):
    from .models import SpikingRNN

    kw = {}
    if backend is not None:
        if not _accepts(SpikingRNN.__init__, "backend"):
            raise RuntimeError("SpikingRNN has no backend argument yet")
        kw["backend"] = backend
    gen = torch.Generator().manual_seed(ctx.seed + 11)
    return SpikingRNN(sizes["n_in"], sizes["N"], sizes["n_out"], neuron="lif", beta=BETA, threshold=THRESHOLD,
                      surrogate=surrogate, g=1.0, input_scale=1.0 / math.sqrt(sizes["n_in"]), generator=gen,
                      device=ctx.device, dtype=torch.float32, **kw)


def _rnn_impls(ctx: Context, sizes: Dict[str, int], gpu: bool) -> List[Impl]:
    dev = ctx.device

    def snn_build():
        import snntorch
        from snntorch import surrogate as snn_sur

        model = _spiking_rnn(ctx, sizes, None)
        N = sizes["N"]
        fc_in = torch.nn.Linear(sizes["n_in"], N, device=dev)
        rlif = snntorch.RLeaky(beta=BETA, threshold=THRESHOLD, linear_features=N, spike_grad=snn_sur.atan(),
                               reset_mechanism="subtract").to(dev)
        readout = torch.nn.Linear(N, sizes["n_out"], device=dev)
        with torch.no_grad():  # the same network as ours, so the outputs can be compared
            fc_in.weight.copy_(model.weight_in)
            fc_in.bias.copy_(model.bias)
            rlif.recurrent.weight.copy_(model.weight_rec)
            rlif.recurrent.bias.zero_()
            readout.weight.copy_(model.readout_layer.weight)
            readout.bias.copy_(model.readout_layer.bias)

        def forward(x):
            spk = torch.zeros(x.shape[1], N, device=x.device, dtype=x.dtype)
            mem = torch.zeros_like(spk)
            out = []
            for xt in x.unbind(0):
                spk, mem = rlif(fc_in(xt), spk, mem)
                out.append(spk)
            return readout(torch.stack(out)), None

        params = list(fc_in.parameters()) + [rlif.recurrent.weight] + list(readout.parameters())
        return Built(forward=forward, params=params, check_params=[rlif.recurrent.weight])

    def norse_build():
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import norse.torch as norse
        rec = norse.LIFRecurrent(sizes["n_in"], sizes["N"]).to(dev)
        readout = torch.nn.Linear(sizes["N"], sizes["n_out"], device=dev)

        def forward(x):
            z, _ = rec(x)
            return readout(z), None

        return Built(forward=forward, params=list(rec.parameters()) + list(readout.parameters()))

    def ours_build(backend):
        def build():
            note = ""
            try:
                model = _spiking_rnn(ctx, sizes, backend)
            except RuntimeError as e:
                if backend != "torch" or "no backend argument" not in str(e):
                    raise
                model = _spiking_rnn(ctx, sizes, None)
                note = "SpikingRNN has no backend argument yet: its per-step Python loop"
            params = [p for p in model.parameters() if p.requires_grad]
            return Built(forward=lambda x: (model(x)[0], None), params=params, check_params=[model.weight_rec],
                         note=note)
        return build

    def compiled_build():
        model = _spiking_rnn(ctx, sizes, None)
        step = torch.compile(model.step_function, backend=ctx.compile_backend, dynamic=False)

        def forward(x):
            p = model.params()
            U = torch.zeros(x.shape[1], model.state_dim, device=x.device, dtype=x.dtype)
            acts = []
            for xt in x.unbind(0):
                s, U = step(xt, U, p)
                acts.append(s)
            return model.readout(torch.stack(acts)), None

        params = [p for p in model.parameters() if p.requires_grad]
        return Built(forward=forward, params=params, check_params=[model.weight_rec])

    impls = [
        Impl("snntorch", "snnTorch RLeaky net, Python loop", snn_build, checked=True),
        Impl("norse", "Norse LIFRecurrent (own dynamics)", norse_build,
             note="Norse's current-based recurrent LIF: same sizes, different equations (not checked)"),
        Impl("ours_torch", "ours: SpikingRNN torch", ours_build("torch"), checked=True),
        Impl("ours_compiled", "ours: torch.compile(lif_step) loop", compiled_build, compiled=True, checked=True),
    ]
    if gpu:
        impls.append(Impl("ours_triton", "ours: SpikingRNN triton", ours_build("triton"), needs_cuda=True,
                          checked=True))
    else:  # the compiled spike-sparse forward (numba), the PyTorch backward
        impls.append(Impl("ours_cpu", "ours: SpikingRNN cpu (compiled forward)", ours_build("cpu"), checked=True))
    return impls


def _rnn_case(ctx: Context, name: str, sizes: Dict[str, int], gpu: bool,
              targets: Sequence[Dict[str, Any]] = ()) -> Dict[str, Any]:
    T, B, N, n_in, n_out = (sizes[k] for k in ("T", "B", "N", "n_in", "n_out"))
    item = 4
    nbytes = item * (T * B * n_in + 2 * (N * n_in + N * N + N * n_out)  # x; weights read + grads written
                     + 2 * T * B * N  # states written, read back by the backward
                     + 2 * T * B * n_out)  # outputs, output cotangent
    flops = 2.0 * T * B * (N * n_in + N * N + N * n_out) + 2.0 * T * B * (2 * N * N + N * n_in + 2 * N * n_out)
    floor = _floor(ctx, nbytes, flops, torch.float32)

    def make(gen):
        return _randn(ctx, (T, B, n_in), torch.float32, gen), _randn(ctx, (T, B, n_out), torch.float32, gen)

    sets = _sets(ctx, make, item * T * B * (n_in + n_out), 3)
    Tc, bc = min(T, 50), min(B, 4)
    xc, gc_ = sets[0][0][:Tc, :bc].contiguous(), sets[0][1][:Tc, :bc].contiguous()
    impls = _rnn_impls(ctx, sizes, gpu)

    def reference():
        built = impls[0].build()
        return _reference(built.forward, built.check_params, xc, gc_, False)

    check = _guarded_check(reference, xc, gc_, False, False)
    _progress_case(ctx, name)
    rows = _run_impls(ctx, impls, lambda bt: _cycle_fwd_bwd(bt, sets, False), check)
    case = {"name": name,
            "title": f"recurrent LIF training step N={N}, n_in={n_in}, B={B}, T={T} float32",
            "measure": "forward + backward to all parameters (random output cotangent)",
            "dtype": "float32", "shapes": dict(sizes), "baseline": "snntorch",
            "check_reference": f"snnTorch RLeaky net with the same weights, x[:{Tc}, :{bc}] (recurrent weight grad)",
            "floor": floor, "implementations": rows}
    _finish_case(case)
    case["targets"] = [evaluate_target(case, t) for t in targets]
    _cleanup(ctx)
    return case


# --------------------------------------------------------------------------------------------------
# Config 4: surrogate Lyapunov spectrum
# --------------------------------------------------------------------------------------------------


def naive_lyapunov(model, x: Tensor, k: int, state0: Tensor, Q0: Tensor) -> Tensor:
    """The naive QR method: tangent matmul and ``torch.linalg.qr`` at every step; ``[B, k]`` descending.

    Same accumulation window as :func:`surroflos.lyapunov_spectrum` with ``transient = frame_warmup = 0``
    (the tangent map is taken at the state before each step).
    """
    p = model.params()
    step, tangent = model.step_function, model.tangent_function
    U, Q = state0, Q0
    log_sum = torch.zeros(x.shape[1], k, dtype=x.dtype, device=x.device)
    for t in range(x.shape[0]):
        Q = tangent(x[t], U, p, Q)
        U = step(x[t], U, p)[1]
        Q, R = torch.linalg.qr(Q)
        log_sum = log_sum + R.diagonal(dim1=-2, dim2=-1).abs().log()
    return torch.sort(log_sum / (x.shape[0] * float(model.dt)), dim=-1, descending=True).values


def _lyap_model(ctx: Context, sizes: Dict[str, int], network: str, surrogate: str):
    """The network of a Lyapunov case: the LIF ``SpikingRNN`` of the other cases (``surrogate``), or a chaotic
    tanh ``RateRNN`` (g = 1.5)."""
    if network == "lif":
        return _spiking_rnn(ctx, {"N": sizes["N"], "n_in": sizes["n_in"], "n_out": 1}, None, surrogate=surrogate)
    from .models import RateRNN

    return RateRNN(sizes["n_in"], sizes["N"], 1, g=1.5, input_scale=1.0 / math.sqrt(sizes["n_in"]),
                   generator=torch.Generator().manual_seed(ctx.seed + 11), device=ctx.device, dtype=torch.float32)


def _lyap_case(ctx: Context, name: str, sizes: Dict[str, int], with_grad: bool, gpu: bool,
               targets: Sequence[Dict[str, Any]] = (), network: str = "lif",
               surrogate: str = "atan") -> Dict[str, Any]:
    from ._random import orthonormal_frame
    from .flossing import flossing_loss
    from .lyapunov import lyapunov_spectrum

    T, B, N, n_in, k, q = (sizes[s] for s in ("T", "B", "N", "n_in", "k", "qr_every"))
    item = 4
    # Bytes: inputs and weights in, exponents out (the state and frame can stay on chip); backward
    # re-reads the saved states and frames it needs at the QR points and writes the weight gradient.
    nbytes = item * (T * B * n_in + N * N + N * n_in + B * k)
    step_flops = 2.0 * B * N * N * k + 2.0 * B * N * (N + n_in)  # tangent W (d Q) + state update
    qr_flops = 4.0 * B * N * k * k  # Householder QR with the thin Q formed
    flops = T * step_flops + (T / q) * qr_flops
    if with_grad:
        nbytes += item * (2 * T * B * N + 2 * (T // q) * B * N * k + N * N)
        flops *= 3.0
    floor = _floor(ctx, nbytes, flops, torch.float32)
    x = _randn(ctx, (T, B, n_in), torch.float32, ctx.generator(4))
    state_gen = torch.Generator().manual_seed(ctx.seed + 5)
    if network == "lif":
        u0 = torch.rand(B, N, generator=state_gen).to(ctx.device) * THRESHOLD
    else:
        u0 = torch.randn(B, N, generator=state_gen).to(ctx.device)

    def frame():
        return orthonormal_frame(B, N, k, generator=torch.Generator().manual_seed(ctx.seed + 6),
                                 dtype=torch.float32, device=ctx.device)

    def timed(compute, model):
        wrt = [model.weight_rec]

        def run():
            if not with_grad:
                with torch.no_grad():
                    return compute()
            loss = flossing_loss(compute())
            return torch.autograd.grad(loss, wrt)

        return run

    def naive_build():
        model = _lyap_model(ctx, sizes, network, surrogate)
        Q0 = frame()
        compute = lambda: naive_lyapunov(model, x, k, u0, Q0)  # noqa: E731
        return Built(run=timed(compute, model), result=compute)

    def ours_build(backend):
        def build():
            model = _lyap_model(ctx, sizes, network, surrogate)
            kw: Dict[str, Any] = {}
            note = ""
            if _accepts(lyapunov_spectrum, "backend"):
                kw["backend"] = backend
            elif backend == "torch":
                note = "lyapunov_spectrum has no backend argument yet: its per-step loop"
            else:
                raise RuntimeError("lyapunov_spectrum has no backend argument yet")

            def compute():
                gen = torch.Generator().manual_seed(ctx.seed + 6)  # the naive loop's frame
                return lyapunov_spectrum(model, x, k, qr_every=q, state0=u0, generator=gen, **kw).exponents

            return Built(run=timed(compute, model), result=compute, note=note)
        return build

    impls = [
        Impl("naive", "naive loop: QR every step", naive_build, checked=True),
        Impl("ours_torch", "ours: lyapunov_spectrum torch", ours_build("torch"), checked=True),
    ]
    if gpu:
        impls.append(Impl("ours_triton", "ours: lyapunov_spectrum triton", ours_build("triton"), needs_cuda=True,
                          checked=True))
    ref: Dict[str, Tensor] = {}

    def check(built: Built) -> Dict[str, Any]:
        with torch.no_grad():
            lam = built.result().mean(0)
        if "lam" not in ref:
            ref["lam"] = lam
            return {"summary": "reference", "lambda_1": float(lam[0])}
        err = float((lam - ref["lam"]).abs().max())
        return {"lambda_max_abs_err": err, "lambda_1": float(lam[0]), "summary": f"lambda {err:.1e}"}

    _progress_case(ctx, name)
    rows = _run_impls(ctx, impls, lambda bt: bt.run, check)
    what = "forward + backward of the flossing loss to W_rec" if with_grad else "forward (no gradient)"
    net = "tanh rate network (g=1.5)" if network == "rate" else f"LIF network ({surrogate} surrogate)"
    case = {"name": name,
            "title": f"Lyapunov spectrum of a {net}, k={k}, N={N}, {B} trajectories, T={T}, ours qr_every={q} "
                     "(naive: every step): " + ("forward+backward" if with_grad else "forward"),
            "measure": what, "dtype": "float32", "shapes": dict(sizes), "baseline": "naive",
            "check_reference": "naive loop (QR every step) on the same network, state and frame: mean exponents",
            "floor": floor, "implementations": rows}
    _finish_case(case)
    case["targets"] = [evaluate_target(case, t) for t in targets]
    _cleanup(ctx)
    return case


def _ensemble_case(ctx: Context, E: int, sizes: Dict[str, int], targets: Sequence[Dict[str, Any]] = ()
                   ) -> Dict[str, Any]:
    """One training step of E networks: E solo networks in turn (each its own Adam, as E runs in one
    process) against one ensemble of E members (surroflos.ensemble), with the trainer's own pieces: task
    batches per member, forward, task loss, backward, per-network clipping, Adam."""
    from . import tasks
    from .ensemble import MemberUpdates, stack
    from .models import SpikingRNN
    from .train import _losses, _sample

    T, B, N = sizes["T"], sizes["B"], sizes["N"]
    task = tasks.make("xor", delay=sizes["delay"], T=T, encoding="current")
    dev = ctx.device

    def nets():
        return [SpikingRNN(task.n_in, N, task.n_out, beta=0.7, reset="zero", g=1.0, device=dev,
                           generator=torch.Generator().manual_seed(ctx.seed + e)) for e in range(E)]

    def solo_build():
        models = nets()
        opts = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in models]
        gens = [torch.Generator().manual_seed(100 + e) for e in range(E)]

        def run():
            for m, opt, g in zip(models, opts, gens):
                x, y, mask = _sample(task, B, g, dev, torch.float32)
                opt.zero_grad(set_to_none=True)
                task.loss(m(x)[0], y, mask).backward()
                torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
                opt.step()
        return Built(run=run)

    def ensemble_build():
        model = stack(nets())
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        upd = MemberUpdates(list(model.parameters()), E)
        gens = [torch.Generator().manual_seed(100 + e) for e in range(E)]

        def run():
            x, y, mask = _sample(task, B, gens, dev, torch.float32)
            opt.zero_grad(set_to_none=True)
            _losses(task, model(x)[0], y, mask, E).sum().backward()
            upd.clip_(1.0)
            opt.step()
        return Built(run=run)

    impls = [Impl("solo", f"{E} solo networks, one after another", solo_build),
             Impl("ensemble", f"one ensemble of {E} members", ensemble_build)]
    n_in, n_out = task.n_in, task.n_out
    item = 4
    nbytes = E * item * (T * B * n_in + 2 * 4 * (N * n_in + N * N + N * n_out) + 2 * T * B * N + 2 * T * B * n_out)
    flops = E * 3 * 2.0 * T * B * (N * n_in + N * N + N * n_out)  # forward and the two backward products
    floor = _floor(ctx, nbytes, flops, torch.float32)
    _progress_case(ctx, f"E{E}")
    rows = _run_impls(ctx, impls, lambda bt: bt.run)
    for r in rows:
        if r["status"] == "ok":
            r["network_steps_per_s"] = E / (r["median_ms"] * 1e-3)
            r["network_epochs_per_s"] = r["network_steps_per_s"] / sizes["steps_per_epoch"]
    saved = {}
    for impl in impls:  # activation memory kept for the backward pass, summed over the step's graphs
        try:
            saved[impl.name] = _saved_mib(impl.build().run)
        except Exception as e:  # noqa: BLE001
            saved[impl.name] = f"unavailable: {_reason(e)}"
    case = {"name": f"E{E}", "title": f"training step of {E} recurrent LIF networks N={N}, B={B}, T={T} "
                                      f"(xor-lif preset network) float32",
            "measure": "task batches, forward, loss, backward, clipping and Adam for all E networks",
            "dtype": "float32", "shapes": dict(sizes, E=E), "baseline": "solo", "floor": floor,
            "implementations": rows, "saved_activation_mib": saved}
    _finish_case(case)
    case["targets"] = [evaluate_target(case, t) for t in targets]
    _cleanup(ctx)
    return case


def _saved_mib(run: Callable[[], Any]) -> float:
    """MiB of tensors autograd saves for the backward during one call of ``run`` (the activation memory
    that grows with sequence length and ensemble size; weights and optimiser state come on top)."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return total[0] / 2**20


# --------------------------------------------------------------------------------------------------
# Configurations
# --------------------------------------------------------------------------------------------------


def _config_cpu(ctx: Context) -> List[Dict[str, Any]]:
    q = ctx.quick
    T, B, N = (16, 4, 32) if q else (200, 32, 512)
    rnn = dict(T=16, B=4, N=32, n_in=8, n_out=4) if q else dict(T=200, B=16, N=256, n_in=32, n_out=10)
    lyap = dict(T=20, B=2, N=24, n_in=4, k=4, qr_every=5) if q else dict(T=200, B=4, N=128, n_in=16, k=16,
                                                                           qr_every=10)
    cases = [
        _lif_case(ctx, "lif", T, B, N, torch.float32, gpu=False,
                  targets=[_target("ours (PyTorch path) >= 2x snnTorch", "speedup", "ours_torch", 2.0, "snntorch")]),
        _rnn_case(ctx, "rnn_train", rnn, gpu=False),
        _lyap_case(ctx, "lyapunov_forward", lyap, False, gpu=False),
        _lyap_case(ctx, "lyapunov_forward_backward", lyap, True, gpu=False),
    ]
    for case in cases:
        case["group"] = "cpu"
    # Issue 17's targets are stated for this config "in the same run": the compiled-kernel cases follow (on a
    # CUDA device they are skipped; run_config says so in the payload's note).
    return cases + ([] if ctx.cuda else _config_cpu_kernels(ctx))


def _config_cpu_lyapunov(ctx: Context) -> List[Dict[str, Any]]:
    """Issue 17's Lyapunov cases: a rate network N=256 (T=1000) and a LIF network N=512 (T=500), k=32, B=4,
    forward and forward+backward, against the naive loop (QR every step); LIF with the atan surrogate (never zero) and the
    triangle surrogate (zero off its support: the sparse product), ours with QR every step and every 10."""
    q = ctx.quick
    rate = dict(T=20, B=2, N=24, n_in=4, k=4, qr_every=1) if q else dict(T=1000, B=4, N=256, n_in=16, k=32,
                                                                           qr_every=1)
    lif = dict(rate, N=32 if q else 512, T=20 if q else 500)
    rate_t = [_target(">= 1.5x the naive loop", "speedup", "ours_torch", 1.5, "naive")]
    lif_t = [_target(">= 3x the naive loop", "speedup", "ours_torch", 3.0, "naive")]
    cases = []
    for grad, what in ((False, "forward"), (True, "forward_backward")):
        cases.append(_lyap_case(ctx, f"lyapunov_rate_{what}", rate, grad, gpu=False, targets=rate_t, network="rate"))
        for sur, every in (("atan", 1), ("atan", 10), ("triangle", 1), ("triangle", 10)):
            cases.append(_lyap_case(ctx, f"lyapunov_lif_{sur}_q{every}_{what}", dict(lif, qr_every=every), grad,
                                    gpu=False, targets=lif_t, network="lif", surrogate=sur))
    return cases


def _config_cpu_kernels(ctx: Context) -> List[Dict[str, Any]]:
    sizes = [(16, 4, 64), (16, 4, 256)] if ctx.quick else [(500, 16, 2048), (500, 16, 8192)]
    targets = [_target(">= 50% of the bandwidth floor", "fraction", "ours_cpu", 0.5),
               _target(">= 5x snnTorch", "speedup", "ours_cpu", 5.0, "snntorch"),
               _target(">= 3x torch.compile of the step", "speedup", "ours_cpu", 3.0, "ours_compiled"),
               _target("2 threads not slower than the run's threads", "speedup", "ours_cpu_2t", 1.0, "ours_cpu")]
    T, B, N = (16, 4, 64) if ctx.quick else (500, 16, 2048)
    syn_targets = [targets[0], targets[1], targets[3]]  # no torch.compile row for Synaptic
    # Norse's neurons: the issue's LIF targets applied to them, against the library they mirror.
    norse_targets = [targets[0], _target(">= 5x Norse", "speedup", "ours_cpu", 5.0, "norse")]
    cases = [_lif_case(ctx, f"lif_N{n}", t, b, n, torch.float32, gpu=False, targets=targets,
                       impls=_cpu_kernel_lif_impls(ctx)) for t, b, n in sizes] + [
        _lif_case(ctx, f"synaptic_N{N}", T, B, N, torch.float32, gpu=False, targets=syn_targets,
                  impls=_cpu_kernel_synaptic_impls(ctx), synaptic=True),
        _norse_case(ctx, f"norse_lif_N{N}", T, B, N, box=False, targets=norse_targets),
        _norse_case(ctx, f"norse_box_N{N}", T, B, N, box=True, targets=norse_targets)]
    # The recurrent network's training step at the issue's size (the compiled spike-sparse forward)
    rnn = dict(T=16, B=4, N=32, n_in=8, n_out=4) if ctx.quick else dict(T=500, B=32, N=512, n_in=128, n_out=10)
    cases.append(_rnn_case(ctx, f"rnn_train_N{rnn['N']}", rnn, gpu=False,
                           targets=[_target(">= 4x snnTorch", "speedup", "ours_cpu", 4.0, "snntorch")]))
    for case in cases:
        case["group"] = "cpu_kernels"
    return cases


def _config_1(ctx: Context) -> List[Dict[str, Any]]:
    T, B, N = (32, 8, 256) if ctx.quick else (500, 64, 4096)
    targets = [_target(">= 70% of the bandwidth floor", "fraction", "ours_triton", 0.7),
               _target(">= 1.3x SpikingJelly Triton", "speedup", "ours_triton", 1.3, "spikingjelly_triton"),
               _target(">= 30x snnTorch", "speedup", "ours_triton", 30.0, "snntorch")]
    return [_lif_case(ctx, _dt(dt), T, B, N, dt, gpu=True, targets=targets) for dt in (torch.float32, torch.bfloat16)]


def _config_2(ctx: Context) -> List[Dict[str, Any]]:
    T, B = (32, 4) if ctx.quick else (500, 16)
    ns = (64, 128) if ctx.quick else (4096, 16384)
    return [_linear_lif_case(ctx, f"N{n}", T, B, n, torch.float32) for n in ns]


def _config_3(ctx: Context) -> List[Dict[str, Any]]:
    sizes = dict(T=32, B=8, N=64, n_in=16, n_out=4) if ctx.quick else dict(T=500, B=64, N=1024, n_in=128, n_out=10)
    targets = [_target(">= 5x snnTorch", "speedup", "ours_triton", 5.0, "snntorch"),
               _target(">= 2x our compiled PyTorch path", "speedup", "ours_triton", 2.0, "ours_compiled"),
               _target("peak memory <= snnTorch's", "memory", "ours_triton", other="snntorch")]
    return [_rnn_case(ctx, "train_step", sizes, gpu=True, targets=targets)]


def _config_4(ctx: Context) -> List[Dict[str, Any]]:
    sizes = (dict(T=40, B=2, N=64, n_in=8, k=8, qr_every=10) if ctx.quick
             else dict(T=1000, B=8, N=1024, n_in=128, k=64, qr_every=10))
    targets = [_target(">= 10x the naive loop", "speedup", "ours_triton", 10.0, "naive")]
    return [_lyap_case(ctx, "forward", sizes, False, gpu=True, targets=targets),
            _lyap_case(ctx, "forward_backward", sizes, True, gpu=True, targets=targets)]


def _config_ensemble(ctx: Context) -> List[Dict[str, Any]]:
    sizes = (dict(T=12, B=4, N=16, delay=2, steps_per_epoch=20) if ctx.quick
             else dict(T=60, B=32, N=64, delay=6, steps_per_epoch=20))
    Es = (1, 4) if ctx.quick else (1, 4, 16, 64)
    want = 50.0 if ctx.cuda else 10.0
    return [_ensemble_case(ctx, E, sizes, [_target(f">= {want:g}x the solo throughput at E = 16 "
                                                   f"({'GPU' if ctx.cuda else 'CPU'})", "speedup", "ensemble",
                                                   want, "solo")] if E == 16 else [])
            for E in Es]


_RUNNERS = {"cpu": _config_cpu, "cpu_kernels": _config_cpu_kernels, "cpu_lyapunov": _config_cpu_lyapunov,
            "1": _config_1, "2": _config_2,
            "3": _config_3, "4": _config_4, "ensemble": _config_ensemble}
_TITLES = {
    "cpu": "CPU: LIF [200, 32, 512] fwd+bwd; scaled-down recurrent training step and Lyapunov spectrum; "
           "then the cpu_kernels cases",
    "cpu_kernels": "CPU kernels (numba): LIF fwd+bwd [500, 16, 2048] and [500, 16, 8192], Synaptic fwd+bwd "
                   "[500, 16, 2048], 1 and 2 threads; Norse LIF and LIF box fwd+bwd [500, 16, 2048]",
    "cpu_lyapunov": "CPU Lyapunov spectra (issue 17): rate N=256 (T=1000) and LIF N=512 (T=500; atan, triangle), "
                    "k=32, B=4",
    "1": "LIF neuron forward+backward [500, 64, 4096], float32 and bfloat16",
    "2": "Linear + LIF layer, B=16, T=500, N=4096 and 16384 (Open Neuromorphic configuration)",
    "3": "Recurrent LIF network training step, N=1024, n_in=128, B=64, T=500, and peak memory",
    "4": "Surrogate Lyapunov spectrum, k=64, 8 trajectories, T=1000, qr_every=10",
    "ensemble": "E networks of the xor-lif preset (N=64, T=60, B=32) trained as one ensemble vs one by one, "
                "E = 1, 4, 16, 64",
}


# --------------------------------------------------------------------------------------------------
# Metadata, running, output
# --------------------------------------------------------------------------------------------------


def _version_of(module: str) -> Optional[str]:
    try:
        import importlib
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mod = importlib.import_module(module)
        return str(getattr(mod, "__version__", "unknown"))
    except Exception:  # noqa: BLE001
        return None


def _versions() -> Dict[str, Optional[str]]:
    from . import __version__

    return {"surroflos": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "triton": _version_of("triton"), "snntorch": _version_of("snntorch"),
            "norse": _version_of("norse"), "spikingjelly": _version_of("spikingjelly")}


def _git_commit() -> Optional[str]:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (sha + ("+dirty" if dirty else "")) if sha else None
    except Exception:  # noqa: BLE001
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _device_info(ctx: Context) -> Dict[str, Any]:
    info: Dict[str, Any] = {"type": ctx.device.type}
    if ctx.cuda:
        props = torch.cuda.get_device_properties(ctx.device)
        info.update({"name": props.name, "memory_GiB": props.total_memory / 2**30,
                     "multiprocessors": props.multi_processor_count, "l2_bytes": ctx.cache_bytes,
                     "capability": f"{props.major}.{props.minor}",
                     "allow_tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32)})
    else:
        info.update({"name": _cpu_name(), "cpu_count": os.cpu_count(),
                     "torch_threads": torch.get_num_threads(), "llc_bytes": ctx.cache_bytes})
        try:
            info["load_average"] = list(os.getloadavg())
        except OSError:
            pass
    return info


def run_config(config: str, ctx: Context) -> Dict[str, Any]:
    """Run one configuration and return its JSON payload (nothing is written or printed)."""
    if config == "event":  # exact event-based simulation: its own cases and table (surroflos/event/bench.py)
        from .event.bench import run_config as run_event

        return run_event(ctx)
    if config not in _RUNNERS:
        raise ValueError(f"config must be one of {CONFIGS}, got {config!r}")
    payload: Dict[str, Any] = {
        "schema": SCHEMA, "config": config, "title": _TITLES[config], "quick": ctx.quick,
        "repeats": ctx.repeats, "budget_s": ctx.budget_s, "compile_backend": ctx.compile_backend,
        "interleaved": ctx.interleave and not ctx.cuda,
        "seed": ctx.seed, "versions": _versions(), "git": _git_commit(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "device": _device_info(ctx),
        "target_device": TARGET_DEVICE if config in GPU_CONFIGS else None,
    }
    if config in GPU_CONFIGS and not ctx.cuda:
        if ctx.forced_cpu:
            payload["note"] = "GPU configuration run on the CPU (--device cpu): a smoke test, not a measurement"
        else:
            payload.update({"status": "skipped: no CUDA device (GPU configuration)", "cases": []})
            return payload
    if config == "cpu_kernels" and ctx.cuda:
        payload.update({"status": "skipped: CPU configuration (run it with --device cpu)", "cases": []})
        return payload
    if config == "cpu" and ctx.cuda:
        payload["note"] = "the cpu_kernels cases are CPU only and were skipped (run with --device cpu to include them)"
    t0 = time.perf_counter()
    torch.manual_seed(ctx.seed)
    payload["cases"] = _RUNNERS[config](ctx)
    payload["status"] = "ok"
    payload["seconds"] = time.perf_counter() - t0
    payload["timer"] = next((r["timer"] for c in payload["cases"] for r in c["implementations"] if "timer" in r),
                            None)
    if not ctx.cuda:
        try:
            payload["device"]["load_average_end"] = list(os.getloadavg())
        except OSError:
            pass
    on = payload["device"].get("name", "")
    payload["on_target_device"] = bool(payload["target_device"]) and TARGET_DEVICE in str(on)
    return payload


def _fmt(v: Optional[float], spec: str, suffix: str = "") -> str:
    return "-" if v is None else format(v, spec) + suffix


def header_lines(payload: Dict[str, Any]) -> List[str]:
    """The table's first lines: config and title, device, threads and load, the note, a failed status."""
    dev = payload.get("device", {})
    lines = [f"== config {payload['config']}: {payload['title']}",
             f"   device: {dev.get('type')} {dev.get('name', '')}".rstrip()
             + (f", {dev['torch_threads']} threads, load {dev['load_average'][0]:.2f}" if "load_average" in dev
                else "")
             + (" [--quick sizes]" if payload.get("quick") else "")]
    if payload.get("note"):
        lines.append(f"   note: {payload['note']}")
    if payload.get("status", "ok") != "ok":
        lines.append(f"   {payload['status']}")
    return lines


def format_table(payload: Dict[str, Any]) -> str:
    """A plain-text table of one configuration's payload (as returned by :func:`run_config`)."""
    if payload.get("config") == "event":
        from .event.bench import format_table as event_table

        return event_table(payload)
    lines = header_lines(payload)
    if payload.get("status", "ok") != "ok":
        return "\n".join(lines)
    dev = payload.get("device", {})
    for case in payload["cases"]:
        fl = case["floor"]
        floor = (f"floor {fl['ms']:.3f} ms ({fl['bound']} bound: {fl['bytes'] / 1e6:.1f} MB at "
                 f"{fl['copy_bandwidth_GBps']:.1f} GB/s = {fl['bandwidth_ms']:.3f} ms")
        if "compute_ms" in fl:
            floor += f"; {fl['flops'] / 1e9:.1f} GFLOP at {fl['matmul_TFLOPs']:.2f} TFLOP/s = {fl['compute_ms']:.3f} ms"
        floor += ")"
        lines += ["", f"-- {case['name']}: {case['title']}", f"   {case['measure']}; {floor}"]
        base = case["baseline"]
        hdr = (f"   {'implementation':<36} {'median ms':>10} {'IQR ms':>9} {'floor %':>8} {'vs ' + base:>12} "
               f"{'compile s':>9} {'peak MiB':>9}  check")
        lines += [hdr, "   " + "-" * (len(hdr) - 3)]
        for r in case["implementations"]:
            if r["status"] != "ok":
                lines.append(f"   {r['label']:<36} {r['status']}")
                continue
            frac = r.get("fraction_of_floor")
            lines.append(
                f"   {r['label']:<36} {r['median_ms']:>10.3f} {r['iqr_ms']:>9.3f} "
                f"{_fmt(None if frac is None else 100 * frac, '.1f', '%'):>8} "
                f"{_fmt(r.get('speedup_vs_baseline'), '.2f', 'x'):>12} {_fmt(r.get('compile_s'), '.1f'):>9} "
                f"{_fmt(r.get('peak_mem_mib'), '.0f'):>9}  {r.get('check', {}).get('summary', '')}")
        for r in case["implementations"]:
            if r.get("note"):
                lines.append(f"   note [{r['name']}]: {r['note']}")
        if "saved_activation_mib" in case:  # the ensemble config
            rate = ", ".join(f"{r['name']} {r['network_epochs_per_s']:.2f}" for r in case["implementations"]
                             if "network_epochs_per_s" in r)
            mem = ", ".join(f"{k} {_fmt(v, '.1f') if isinstance(v, float) else v}"
                            for k, v in case["saved_activation_mib"].items())
            lines.append(f"   network-epochs/s: {rate}; activations saved for backward (MiB): {mem}")
        for t in case.get("targets", []):
            val = t["value"]
            shown = "" if val is None else (f" ({100 * val:.1f}%)" if t["kind"] == "fraction" else f" ({val:.2f}x)")
            result = t["result"].upper() if t["result"] in ("pass", "fail") else t["result"]
            lines.append(f"   target [{t['subject']}] {t['text']}: {result}{shown}")
    if payload.get("target_device") and not payload.get("on_target_device"):
        lines.append(f"   (targets are defined for an {payload['target_device']}; this device is "
                     f"{dev.get('name', dev.get('type'))})")
    return "\n".join(lines)


def _write_json(path: str, payload: Dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, default=str)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------

def _configure(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--config", choices=CONFIGS + ("all",), default="cpu",
                   help="cpu (runs anywhere), 1-4 (GPU configurations; skipped without CUDA) or all (default cpu)")
    p.add_argument("--out", default="outputs/bench", help="folder for bench_<config>.json (default outputs/bench)")
    p.add_argument("--repeats", type=_positive_int, default=None,
                   help="timed runs per implementation (default 20 on CUDA, 10 on CPU, 3 with --quick)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: seconds, for tests (not a measurement)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: CUDA when available. cpu also runs configs 1-4 on the CPU (smoke test)")
    p.add_argument("--budget", type=_positive_float, default=60.0,
                   help="seconds of timed runs per implementation; fewer runs (>= 3) for slow ones (default 60)")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend of the compiled rows (inductor, aot_eager, eager) or none")
    p.add_argument("--no-interleave", action="store_true",
                   help="CPU: time each implementation in one go instead of in interleaved rounds")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch CPU threads (default: torch's own choice); 1 on a shared, loaded machine")
    p.add_argument("--seed", type=_seed, default=0)
    return p


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand to ``subparsers`` (from ``parser.add_subparsers()``); returns it.

    The subparser's default ``func`` is :func:`run_bench`.
    """
    p = subparsers.add_parser(
        "bench", help="benchmark surroflos against snnTorch and Norse (JSON + table)",
        description="Time surroflos' LIF, recurrent-network and Lyapunov paths against snnTorch's and Norse's "
        "loops (and SpikingJelly's Triton LIF where installed); writes bench_<config>.json to --out and prints "
        "a table with bandwidth floors, speedups and targets.")
    _configure(p)
    p.set_defaults(func=run_bench)
    return p


def run_bench(args: argparse.Namespace) -> int:
    """Run the configurations named by parsed arguments; write JSON, print tables. Returns 0; raises
    :class:`~surroflos.errors.UsageError` on bad use (checked before anything is timed)."""
    from ._io import ensure_writable_folder
    from .errors import UsageError

    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda requested but no CUDA device is available (use --device cpu or auto)")
    backends = _compile_backends()
    if str(args.compile_backend).lower() != "none" and args.compile_backend not in backends:
        raise UsageError(f"--compile-backend must be a torch.compile backend (e.g. inductor, aot_eager, eager; "
                         f"torch._dynamo.list_backends(exclude_tags=()) lists all) or none, got {args.compile_backend!r}")
    ensure_writable_folder(args.out)
    if getattr(args, "threads", None):
        torch.set_num_threads(int(args.threads))
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    compile_backend = None if str(args.compile_backend).lower() == "none" else args.compile_backend
    repeats = args.repeats or (3 if args.quick else (20 if use_cuda else 10))
    ctx = Context(device=device, repeats=repeats, budget_s=float(args.budget), quick=bool(args.quick),
                  compile_backend=compile_backend, seed=int(args.seed), cache_bytes=_cache_bytes(device),
                  forced_cpu=args.device == "cpu", progress=not args.quick,
                  interleave=not getattr(args, "no_interleave", False))
    configs = list(CONFIGS) if args.config == "all" else [args.config]
    for config in configs:
        payload = run_config(config, ctx)
        path = os.path.join(args.out, f"bench_{config}.json")
        _write_json(path, payload)
        print(format_table(payload))
        print(f"   wrote {path}\n", flush=True)
    return 0


def _compile_backends() -> list:
    """The ``torch.compile`` backends this torch knows (imports torch._dynamo: call only when needed)."""
    import torch._dynamo

    return sorted(torch._dynamo.list_backends(exclude_tags=()))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m surroflos.bench [--config ...]``: the same as ``surroflos bench`` (same error boundary)."""
    from .cli import main as cli_main

    return cli_main(["bench", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
