"""``surroflos bench --config event``: the exact event-based simulator against a naive event loop and the
time-stepped network, and the cost of exact Lyapunov spectra.

Cases (``--quick`` shrinks every size so the run takes seconds, for tests):

``simulate``  LIF network (SparseProp's settings: ``K = 100``, ``J0 = 1``, ``nu = 1 Hz``, ``tau_m = 10 ms``,
              ``graph="out"``) at ``N = 1e4, 1e5, 1e6``, in the steady state (after one spike per neuron):
              spikes per second of wall time for
              - ``heap``: :class:`~surroflos.event.EventNetwork` (compiled 4-ary heap loop, O(K log N) per spike),
              - ``lazy``: the same loop with the lazy heap (kicks update true keys only, stale roots re-sifted;
                same spikes bit for bit),
              - ``calendar``: the calendar queue (``queue="calendar"``: kicks update true keys only, stale
                neurons re-queued in O(1) into key-range slots; same spikes bit for bit),
              - ``naive``: the same dynamics and arithmetic with an O(N) scan for the next spiker per spike
                (:func:`~surroflos.event._kernels.naive_advance`; checked to give the same spikes bit for bit),
              - ``stepped``: the time-stepped :class:`~surroflos.BalancedNetwork` with the same graph
                (:meth:`EventNetwork.to_balanced`, ``dt = 0.1 ms``, delta synapses, float32, its event-driven
                PyTorch path), over a stretch of simulated time.
              Every row also gives simulated seconds per wall second (equal simulated time: a row's wall time
              for one simulated second is ``1 / sim_per_wall``). Target: >= 1e6 spikes/s at N = 1e6 on one core,
              cost per spike growing no faster than log N.
``spectrum``  Exact Lyapunov spectrum of a theta network, N = 1000, K = 100, ``k = 1, 10, 100, 1000``
              exponents, ``qr_every = N / 4``: wall time per spike, and the extrapolated wall time of a full
              spectrum over 100 spikes per neuron.

Timing: ``time.perf_counter`` around each compiled call (and ``time.process_time``: spikes per CPU second,
less sensitive to a shared machine's load); ``ctx.repeats`` repeats (fewer when one would exceed
the budget), each continuing the same simulation; medians and inter-quartile ranges. numba runs on one thread;
the QRs' BLAS is limited to one thread while timed (threadpoolctl, where installed).
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from typing import Any, Dict, List

import numpy as np

from . import _kernels as kern
from .lyapunov import lyapunov_spectrum
from .network import EventNetwork

__all__ = ["run", "run_config", "format_table", "TITLE", "TARGET_SPIKES_PER_S"]

TITLE = "Exact event-based simulation (SparseProp) vs naive event loop and time-stepped network; exact spectra"
TARGET_SPIKES_PER_S = 1e6
_PARAMS = dict(K=100, J0=1.0, rate=1.0, tau_m=0.01, neuron="lif", seed=0)


def _one_blas_thread():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _stats(rates: List[float]) -> Dict[str, float]:
    rs = sorted(rates)
    if len(rs) >= 2:
        q = statistics.quantiles(rs, n=4, method="inclusive")
        q1, q3 = q[0], q[2]
    else:
        q1 = q3 = rs[0]
    return {"median": statistics.median(rs), "q1": q1, "q3": q3, "runs": len(rs)}


def _repeats(ctx, est_s: float) -> int:
    return int(max(3, min(ctx.repeats, ctx.budget_s // max(est_s, 1e-9))))


def _heap_row(net: EventNetwork, ctx, n_per_run: int, queue: str) -> Dict[str, Any]:
    t0 = time.perf_counter()
    eng = net._engine(None, queue=queue)
    first = time.perf_counter()
    eng.advance(net.N)  # steady state; the first call also loads (or compiles) the loop
    first = time.perf_counter() - first
    t_setup = time.perf_counter() - t0
    rates, cpu_rates, sims = [], [], []
    t_probe = time.perf_counter()
    eng.advance(n_per_run)
    est = time.perf_counter() - t_probe
    for _ in range(_repeats(ctx, est)):
        tb = eng.time()
        c = time.process_time()
        t = time.perf_counter()
        eng.advance(n_per_run)
        dt = time.perf_counter() - t
        rates.append(n_per_run / dt)
        cpu_rates.append(n_per_run / max(time.process_time() - c, 1e-9))
        sims.append((eng.time() - tb) / dt)
    return {"name": queue, "status": "ok", "spikes_per_s": _stats(rates),
            "spikes_per_cpu_s": _stats(cpu_rates), "sim_per_wall": statistics.median(sims),
            "spikes_per_run": n_per_run, "first_call_s": first, "setup_s": t_setup}


def _naive_row(net: EventNetwork, ctx, n_per_run: int, check: bool) -> Dict[str, Any]:
    model = kern.LIF if net.neuron == "lif" else kern.THETA
    keys = net._keys_from_phases(net.initial_state()).reshape(-1, 1).copy()
    g = np.array([1.0 if model == kern.LIF else 0.0, 0.0])
    p = net._kernel_params()
    row: Dict[str, Any] = {"name": "naive", "status": "ok"}
    if check:  # the same spikes as the heap loop, bit for bit (first 200 spikes from the same state)
        m = 200
        ot, oi = np.empty(m), np.empty(m, dtype=np.int32)
        kern.naive_advance(model, m, keys, net.indptr, net.indices, net.jump, p, g, ot, oi)
        ref = net.simulate(m / net.N)
        same = bool(np.array_equal(oi, ref.spike_ids) and np.array_equal(ot, ref.spike_times))
        row["check"] = {"same_spikes_as_heap": same, "spikes": m,
                        "summary": "same 200 spikes as heap" if same else "DIFFERENT spikes from heap"}
    empty_t, empty_i = np.zeros(0), np.zeros(0, dtype=np.int32)
    t = time.perf_counter()
    kern.naive_advance(model, n_per_run, keys, net.indptr, net.indices, net.jump, p, g, empty_t, empty_i)
    est = time.perf_counter() - t
    rates, sims = [], []
    for _ in range(_repeats(ctx, est)):
        tb = g[1] + (p[1] * math.log(g[0]) if model == kern.LIF else g[0] / p[2])
        t = time.perf_counter()
        kern.naive_advance(model, n_per_run, keys, net.indptr, net.indices, net.jump, p, g, empty_t, empty_i)
        dt = time.perf_counter() - t
        te = g[1] + (p[1] * math.log(g[0]) if model == kern.LIF else g[0] / p[2])
        rates.append(n_per_run / dt)
        sims.append((te - tb) / dt)
    row.update(spikes_per_s=_stats(rates), sim_per_wall=statistics.median(sims), spikes_per_run=n_per_run)
    return row


def _stepped_row(net: EventNetwork, ctx, steps: int, dt: float) -> Dict[str, Any]:
    import torch

    try:
        bn = net.to_balanced(dt, dtype=torch.float32)
        state = net.balanced_state().to(torch.float32)
        _, state, _ = bn.simulate(5 if ctx.quick else 50, state0=state, return_state=True)  # warm up
        t = time.perf_counter()
        bn.simulate(steps, state0=state)
        est = time.perf_counter() - t
        rates, sims = [], []
        for _ in range(_repeats(ctx, est)):
            t = time.perf_counter()
            spikes, state, _ = bn.simulate(steps, state0=state, return_state=True)
            el = time.perf_counter() - t
            rates.append(float(spikes.sum()) / el)
            sims.append(steps * dt / el)
    except (MemoryError, RuntimeError) as err:
        return {"name": "stepped", "status": f"unavailable: {type(err).__name__}: {err}"[:200]}
    return {"name": "stepped", "status": "ok", "spikes_per_s": _stats(rates), "sim_per_wall": statistics.median(sims),
            "steps_per_run": steps, "dt": dt, "torch_threads": torch.get_num_threads()}


def _simulate_case(ctx) -> Dict[str, Any]:
    sizes = (1000, 4000) if ctx.quick else (10_000, 100_000, 1_000_000)
    rows = []
    for N in sizes:
        t = time.perf_counter()
        net = EventNetwork(N, **_PARAMS) if not ctx.quick else EventNetwork(N, **dict(_PARAMS, K=20))
        build = time.perf_counter() - t
        n_heap = 20 * N if ctx.quick else max(200_000, N)
        n_naive = 200 if ctx.quick else max(200, int(2e8 // N))
        heap = _heap_row(net, ctx, n_heap, "heap")
        lazy = _heap_row(net, ctx, n_heap, "lazy")
        calendar = _heap_row(net, ctx, n_heap, "calendar")
        naive = _naive_row(net, ctx, n_naive, check=True)
        stepped = _stepped_row(net, ctx, 20 if ctx.quick else 100, 1e-4)
        for r in (heap, lazy, calendar, naive, stepped):
            r["N"] = N
            r["K"] = net.K
            if r["status"] == "ok":
                r["us_per_spike"] = 1e6 / r["spikes_per_s"]["median"]
                r["speedup_heap_vs_this"] = heap["spikes_per_s"]["median"] / r["spikes_per_s"]["median"]
        heap["build_network_s"] = build
        rows += [heap, lazy, calendar, naive, stepped]
    for name in ("heap", "lazy", "calendar"):
        rs = [r for r in rows if r["name"] == name]
        for r in rs:
            r["cost_growth"] = r["us_per_spike"] / rs[0]["us_per_spike"]
            r["log_growth"] = math.log(r["N"]) / math.log(rs[0]["N"])
    heaps = [r for r in rows if r["name"] == "calendar"]  # what EventNetwork.simulate runs (inhibitory: calendar)
    base, last = heaps[0], heaps[-1]
    targets = [
        {"text": f">= {TARGET_SPIKES_PER_S:.0e} spikes/s at N = {last['N']}", "value": last["spikes_per_s"]["median"],
         "result": ("pass" if last["spikes_per_s"]["median"] >= TARGET_SPIKES_PER_S else "fail") if not ctx.quick
         else "n/a (--quick sizes)"},
        {"text": f"cost per spike N={base['N']} -> {last['N']} grows <= log N ({last['log_growth']:.2f}x)",
         "value": last["cost_growth"],
         "result": ("pass" if last["cost_growth"] <= last["log_growth"] else "fail") if not ctx.quick
         else "n/a (--quick sizes)"},
    ]
    return {"name": "simulate", "title": "LIF network, K=%d, J0=1, nu=1 Hz, tau_m=10 ms: spikes per wall second"
            % heaps[0]["K"], "rows": rows, "targets": targets}


def _spectrum_case(ctx) -> Dict[str, Any]:
    N = 200 if ctx.quick else 1000
    K = 20 if ctx.quick else 100
    ks = (1, 10, N) if ctx.quick else (1, 10, 100, 1000)
    net = EventNetwork(N, K, 1.0, 1.0, 0.01, neuron="theta", seed=0)
    lyapunov_spectrum(net, k=2, spikes_per_neuron=0.1, warmup_spikes_per_neuron=0.1)  # load the loop
    rows = []
    with _one_blas_thread():
        for k in ks:
            spn = 2.0
            t = time.perf_counter()
            res = lyapunov_spectrum(net, k=k, spikes_per_neuron=spn, warmup_spikes_per_neuron=1.0,
                                    frame_warmup_spikes_per_neuron=0.0)
            el = time.perf_counter() - t
            n = res.n_spikes + N  # warm-up spikes cost little next to the frame's
            per = el / res.n_spikes
            rows.append({"name": f"k={k}", "k": k, "N": N, "status": "ok", "wall_s": el, "spikes": res.n_spikes,
                         "us_per_spike": 1e6 * per, "full_run_s_100_spikes_per_neuron": per * 100 * N,
                         "qr_every": res.qr_every, "total_spikes": n})
    return {"name": "spectrum", "title": f"exact Lyapunov spectrum, theta, N={N}, K={K}, qr_every=N/4, 1 BLAS thread",
            "rows": rows, "targets": []}


def run(ctx) -> Dict[str, Any]:
    """Run the event benchmark and return its payload's ``cases`` (see the module docstring)."""
    return [_simulate_case(ctx), _spectrum_case(ctx)]


def run_config(ctx) -> Dict[str, Any]:
    """The JSON payload of ``surroflos bench --config event`` (``ctx``: a :class:`surroflos.bench.Context`)."""
    import os

    import numba

    from .. import bench as B

    payload: Dict[str, Any] = {
        "schema": B.SCHEMA, "config": "event", "title": TITLE, "quick": ctx.quick, "repeats": ctx.repeats,
        "budget_s": ctx.budget_s, "seed": ctx.seed, "versions": dict(B._versions(), numba=numba.__version__,
                                                                      numpy=np.__version__),
        "git": B._git_commit(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "device": B._device_info(ctx),
        "target_device": None, "timer": "time.perf_counter around each compiled call",
    }
    t0 = time.perf_counter()
    payload["cases"] = run(ctx)
    payload["status"] = "ok"
    payload["seconds"] = time.perf_counter() - t0
    try:
        payload["device"]["load_average_end"] = list(os.getloadavg())
    except OSError:  # pragma: no cover
        pass
    return payload


def _median(row: Dict[str, Any], key: str) -> str:
    return f"{row[key]['median']:.3g}" if key in row else "-"


def format_table(payload: Dict[str, Any]) -> str:
    """A plain-text table of the event payload (header as every config's: :func:`surroflos.bench.header_lines`)."""
    from .. import bench as B

    lines = B.header_lines(payload)
    if payload.get("status", "ok") != "ok":
        return "\n".join(lines)
    for case in payload["cases"]:
        lines += ["", f"-- {case['name']}: {case['title']}"]
        if case["name"] == "simulate":
            hdr = (f"   {'N':>8} {'impl':<8} {'spikes/s':>10} {'IQR':>21} {'us/spike':>9} {'heap x':>8} "
                   f"{'sim s/wall s':>12} {'spikes/CPU s':>12}  check")
            lines += [hdr, "   " + "-" * (len(hdr) - 3)]
            for r in case["rows"]:
                if r["status"] != "ok":
                    lines.append(f"   {r['N']:>8} {r['name']:<8} {r['status']}")
                    continue
                s = r["spikes_per_s"]
                lines.append(f"   {r['N']:>8} {r['name']:<8} {s['median']:>10.3g} [{s['q1']:>9.3g}, {s['q3']:>9.3g}] "
                             f"{r['us_per_spike']:>9.3g} {r['speedup_heap_vs_this']:>8.3g} {r['sim_per_wall']:>12.3g} "
                             f"{_median(r, 'spikes_per_cpu_s'):>12}  {r.get('check', {}).get('summary', '')}")
            for r in case["rows"]:
                if "cost_growth" in r:
                    built = f"; network built in {r['build_network_s']:.2f} s" if "build_network_s" in r else ""
                    lines.append(f"   {r['name']} N={r['N']}: cost per spike x{r['cost_growth']:.2f} of N="
                                 f"{case['rows'][0]['N']} (log N ratio {r['log_growth']:.2f}){built}")
        else:
            hdr = f"   {'k':>6} {'us/spike':>10} {'wall s':>8} {'spikes':>8} {'full spectrum, 100 spikes/neuron':>34}"
            lines += [hdr, "   " + "-" * (len(hdr) - 3)]
            for r in case["rows"]:
                lines.append(f"   {r['k']:>6} {r['us_per_spike']:>10.3g} {r['wall_s']:>8.2f} {r['spikes']:>8} "
                             f"{r['full_run_s_100_spikes_per_neuron']:>31.0f} s")
        for t in case.get("targets", []):
            lines.append(f"   target {t['text']}: {t['result'].upper() if t['result'] in ('pass', 'fail') else t['result']}"
                         f" ({t['value']:.3g})")
    return "\n".join(lines)
