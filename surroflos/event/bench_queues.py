"""The event loop's three queues side by side, in one process: eager heap, lazy heap, calendar queue.

``python -m surroflos.event.bench_queues --out benchmarks/results/cpu/bench_event_calendar.json`` (run with
``OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1``): SparseProp's LIF network of the event bench (``K = 100``, ``J0 = 1``,
``nu = 1 Hz``, ``tau_m = 10 ms``, ``graph="out"``) at each ``N``; the three engines start from the same state,
are brought to the steady state (``N`` spikes each; this also loads the compiled loops) and then run
``--rounds`` rounds, each engine advancing ``max(200000, N)`` spikes per round, the engines' order rotating from
round to round, so that a change in the machine's load hits all three alike. Spikes per wall second
(``time.perf_counter``) and per CPU second (``time.process_time``), medians and ranges over the rounds; the
three engines are checked to have produced the same spikes (the same final state, bit for bit). The load average
is recorded at the start and the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import time
from typing import Any, Dict, List

import numpy as np

from . import _calendar as cal
from .network import EventNetwork

QUEUES = ("heap", "lazy", "calendar")
PARAMS = dict(K=100, J0=1.0, rate=1.0, tau_m=0.01, neuron="lif", seed=0)


def _loadavg() -> List[float]:
    try:
        return [float(x) for x in open("/proc/loadavg").read().split()[:3]]
    except OSError:  # pragma: no cover
        return list(os.getloadavg())


def _git() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(__file__), timeout=10).stdout.strip()
    except Exception:  # pragma: no cover
        return "unknown"


def measure(N: int, rounds: int, n_per_run: int, K: int = 100, fill=None) -> Dict[str, Any]:
    t = time.perf_counter()
    net = EventNetwork(N, **dict(PARAMS, K=K))
    build = time.perf_counter() - t
    engines = {q: net._engine(None, queue=q, fill=fill if q == "calendar" else None) for q in QUEUES}
    for eng in engines.values():
        eng.advance(N)
    wall: Dict[str, List[float]] = {q: [] for q in QUEUES}
    cpu: Dict[str, List[float]] = {q: [] for q in QUEUES}
    st = engines["calendar"].cal[6]
    r0, s0 = int(st[cal.RECHECKS]), int(st[cal.STEPS])
    for r in range(rounds):
        order = QUEUES[r % 3:] + QUEUES[:r % 3]
        for q in order:
            eng = engines[q]
            c = time.process_time()
            t = time.perf_counter()
            eng.advance(n_per_run)
            dt = time.perf_counter() - t
            dc = time.process_time() - c
            wall[q].append(n_per_run / dt)
            cpu[q].append(n_per_run / max(dc, 1e-9))
    phases = {q: e.phases() for q, e in engines.items()}
    same = all(np.array_equal(phases["heap"], phases[q]) for q in QUEUES) and all(
        engines["heap"].time() == engines[q].time() for q in QUEUES)
    n_cal = rounds * n_per_run
    rows = {}
    for q in QUEUES:
        rows[q] = {"spikes_per_s": {"median": statistics.median(wall[q]), "min": min(wall[q]), "max": max(wall[q]),
                                    "runs": wall[q]},
                   "spikes_per_cpu_s": {"median": statistics.median(cpu[q]), "min": min(cpu[q]),
                                        "max": max(cpu[q]), "runs": cpu[q]}}
        rows[q]["us_per_spike_cpu"] = 1e6 / rows[q]["spikes_per_cpu_s"]["median"]
    for q in QUEUES:
        rows[q]["speedup_vs_heap_wall"] = rows[q]["spikes_per_s"]["median"] / rows["heap"]["spikes_per_s"]["median"]
        rows[q]["speedup_vs_heap_cpu"] = (rows[q]["spikes_per_cpu_s"]["median"]
                                          / rows["heap"]["spikes_per_cpu_s"]["median"])
    B = engines["calendar"].cal[0].shape[0]
    rows["calendar"].update(ring_slots=B, fill=cal.DEFAULT_FILL if fill is None else fill,
                            rechecks_per_spike=(int(st[cal.RECHECKS]) - r0) / n_cal,
                            slot_steps_per_spike=(int(st[cal.STEPS]) - s0) / n_cal,
                            overflow_scans=int(st[cal.OVFSCANS]), rebuilds=int(st[cal.REBUILDS]))
    return {"N": N, "K": K, "spikes_per_run": n_per_run, "rounds": rounds, "build_network_s": build,
            "same_spikes": bool(same), "queues": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[1e4, 1e5, 1e6])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--spikes", type=int, default=200_000, help="spikes per run (at least N)")
    ap.add_argument("--fill", type=float, default=None, help="the calendar's neurons per slot")
    ap.add_argument("--out", default=None, help="JSON file to write")
    args = ap.parse_args(argv)
    import numba

    payload: Dict[str, Any] = {
        "config": "event_queues", "git": _git(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "load_average_start": _loadavg(), "cpu": platform.processor() or platform.machine(),
        "threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS")},
        "versions": {"numba": numba.__version__, "numpy": np.__version__, "python": platform.python_version()},
        "params": PARAMS, "timer": "time.perf_counter (wall) and time.process_time (CPU) around each advance call",
        "cases": [],
    }
    try:
        payload["cpu"] = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):  # pragma: no cover
        pass
    for N in args.sizes:
        N = int(N)
        case = measure(N, args.rounds, max(args.spikes, N), fill=args.fill)
        case["load_average_after"] = _loadavg()
        payload["cases"].append(case)
        qs = case["queues"]
        print(f"N={N:>8}: " + "  ".join(
            f"{q} {qs[q]['spikes_per_s']['median']:.3g}/s wall {qs[q]['spikes_per_cpu_s']['median']:.3g}/s CPU"
            for q in QUEUES) + f"  same spikes: {case['same_spikes']}  load {case['load_average_after']}", flush=True)
    payload["load_average_end"] = _loadavg()
    cases = payload["cases"]
    if len(cases) >= 2:
        lo, hi = cases[0], cases[-1]
        payload["cost_growth_cpu"] = {q: lo["queues"][q]["spikes_per_cpu_s"]["median"]
                                      / hi["queues"][q]["spikes_per_cpu_s"]["median"] for q in QUEUES}
        payload["log_growth"] = math.log(hi["N"]) / math.log(lo["N"])
    if args.out:
        with open(args.out, "w") as f:
            json.dump(payload, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
