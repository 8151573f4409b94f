"""Flossing steps of a small ensemble under libgomp's default (spinning) wait policy, passive waiting and one
thread, each setting in a fresh process (the policy is read once, when torch loads libgomp), interleaved.

    python benchmarks/omp_wait_policy.py --rounds 3 --out benchmarks/results/cpu/omp_wait_policy.json

Prints a table (median wall and CPU seconds per setting) and writes JSON with the machine's load and versions.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

# One process of work: 5 flossing steps of the main job's 8-member LIF ensemble (N = 64, k = 4, T = 100).
WORK = r"""
import json, time, torch
from surroflos.train import TrainConfig, validate, build_initialized_model, _generators, _SEED_FLOSS, _long_inputs
from surroflos.flossing import floss
cfg = TrainConfig(task="gonogo_temporal", delay=36, T=None, beta=0.8, surrogate="superspike", k=4, ensemble=8,
                  out="unused")
task = validate(cfg)
model = build_initialized_model(cfg, task, torch.device("cpu"), torch.float32)
gens = _generators(cfg, _SEED_FLOSS)
inputs = lambda i, g: _long_inputs(task, 100, 8, g, "cpu", torch.float32)
floss(model, 1, k=4, T=100, batch=8, inputs=inputs, generator=gens, progress=False)  # warm-up
c, w = time.process_time(), time.perf_counter()
floss(model, 5, k=4, T=100, batch=8, inputs=inputs, generator=gens, progress=False)
print(json.dumps({"wall": time.perf_counter() - w, "cpu": time.process_time() - c,
                  "threads": torch.get_num_threads(), "torch": torch.__version__}))
"""

SETTINGS = {
    "2 threads, OMP_WAIT_POLICY unset (libgomp spins)": {"OMP_WAIT_POLICY": None, "OMP_NUM_THREADS": "2",
                                                         "pre": "import torch\n"},
    "2 threads, OMP_WAIT_POLICY=PASSIVE (surroflos' default)": {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "2",
                                                                "pre": ""},
    "1 thread": {"OMP_WAIT_POLICY": None, "OMP_NUM_THREADS": "1", "pre": "import torch\n"},
}


def run(setting: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS"):
        if setting[k] is not None:
            env[k] = setting[k]
    # "import torch" first: surroflos then leaves the policy alone (the unset case really is libgomp's default).
    out = subprocess.run([sys.executable, "-c", setting["pre"] + WORK], env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    load_before = os.getloadavg()
    samples = {name: [] for name in SETTINGS}
    for _ in range(args.rounds):
        for name, setting in SETTINGS.items():  # interleaved: every round runs each setting once
            samples[name].append(run(setting))
    load_after = os.getloadavg()
    rows = [{"setting": n, "wall_median": statistics.median(s["wall"] for s in v),
             "cpu_median": statistics.median(s["cpu"] for s in v), "samples": v} for n, v in samples.items()]
    print(f"5 flossing steps, 8 LIF networks (N = 64, k = 4, T = 100, batch 8); {args.rounds} rounds; "
          f"load average {load_before[0]:.1f} -> {load_after[0]:.1f}; {platform.processor() or platform.machine()}")
    print("| setting | wall s (median) | CPU s (median) |\n|---|---|---|")
    for r in rows:
        print(f"| {r['setting']} | {r['wall_median']:.2f} | {r['cpu_median']:.2f} |")
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as fh:
            json.dump({"rows": rows, "load_before": load_before, "load_after": load_after,
                       "cpu_count": os.cpu_count(), "python": platform.python_version()}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
