"""BalancedNetwork at large N: time per simulated step and peak memory (issue 17's targets).

Each size runs in a fresh process (so ``ru_maxrss`` is that size's peak): build ``BalancedNetwork(N, K)``
(timed), build its event pattern (timed), simulate 20 steps to warm up, then time ``simulate(steps)``.
Targets: per-step time at N = 1e6 <= 12x that at 1e5; peak RSS at 1e6 <= 2 GiB.

    python benchmarks/balanced_scaling.py                       # N = 1e4, 1e5, 1e6 (several minutes)
    python benchmarks/balanced_scaling.py --sizes 10000 100000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

_STEPS = {10_000: 1000, 100_000: 300, 1_000_000: 100}


def _one(N: int, K: int, steps: int) -> dict:
    import torch

    from surroflos.kernels.balanced import prepare_pattern
    from surroflos.models import BalancedNetwork

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    net = BalancedNetwork(N, K, generator=torch.Generator().manual_seed(0))
    t1 = time.perf_counter()
    prepare_pattern(net.pre_idx)
    t2 = time.perf_counter()
    gen = torch.Generator().manual_seed(1)
    state0 = net.initial_state(1, random=True, generator=gen)
    _, state, _ = net.simulate(20, state0=state0, return_state=True)
    t3 = time.perf_counter()
    spikes = net.simulate(steps, state0=state)
    t4 = time.perf_counter()
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    return {"N": N, "K": K, "steps": steps, "construction_s": t1 - t0, "pattern_s": t2 - t1,
            "per_step_ms": 1e3 * (t4 - t3) / steps, "spike_rate_per_step": float(spikes.float().mean()),
            "peak_rss_GiB": cpu.ru_maxrss / 2 ** 20, "torch": torch.__version__}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=sorted(_STEPS))
    p.add_argument("--K", type=int, default=100)
    p.add_argument("--steps", type=int, default=None, help="simulated steps (default: 1000, 300, 100 by size)")
    p.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results", "cpu",
                                                  "balanced_scaling.json"))
    p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one is not None:
        print(json.dumps(_one(args.one, args.K, args.steps)))
        return 0
    runs = []
    print(f"{'N':>9} {'build s':>8} {'pattern s':>9} {'ms/step':>8} {'peak GiB':>8}")
    for N in args.sizes:
        steps = args.steps or _STEPS.get(N, 100)
        env = dict(os.environ, OMP_NUM_THREADS="1")
        out = subprocess.run([sys.executable, __file__, "--one", str(N), "--K", str(args.K), "--steps", str(steps)],
                             capture_output=True, text=True, env=env)
        if out.returncode:
            print(out.stderr[-2000:], file=sys.stderr)
            return out.returncode
        r = json.loads(out.stdout.strip().splitlines()[-1])
        runs.append(r)
        print(f"{N:>9} {r['construction_s']:>8.1f} {r['pattern_s']:>9.2f} {r['per_step_ms']:>8.2f} "
              f"{r['peak_rss_GiB']:>8.2f}")
    by = {r["N"]: r for r in runs}
    targets = {}
    if 100_000 in by and 1_000_000 in by:
        ratio = by[1_000_000]["per_step_ms"] / by[100_000]["per_step_ms"]
        targets["per-step time at 1e6 / 1e5 (target <= 12)"] = round(ratio, 2)
    if 1_000_000 in by:
        targets["peak RSS at 1e6, GiB (target <= 2)"] = round(by[1_000_000]["peak_rss_GiB"], 2)
    for k, v in targets.items():
        print(f"{k}: {v}")
    record = {"what": "BalancedNetwork(N, K).simulate: one fresh process per N, 1 thread, batch 1, float32; "
                      "per-step time after a 20-step warm-up; peak RSS of the whole process",
              "command": "python benchmarks/balanced_scaling.py " + " ".join(argv or sys.argv[1:]),
              "machine": {"cpu": platform.processor() or platform.machine(), "load_average": os.getloadavg()},
              "runs": runs, "targets": targets}
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(record, f, indent=1)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
