"""Issue 17's Lyapunov cases, before and after the lean step loop, interleaved in one process.

Loads ``surroflos/lyapunov.py`` as of ``--before`` (a git commit; default d0525f7, the last commit before the
lean loop) beside the installed ``surroflos.lyapunov`` and times both against ``surroflos.bench.naive_lyapunov``
on the same network, inputs, initial state and frame: the rate network N=256 (T=1000) and the LIF network
N=512 (T=500; atan, triangle surrogates), k=32, B=4, ours with QR every step, forward (no gradient) and
forward+backward of the flossing loss to the recurrent weights. Rounds rotate the order of the implementations; medians of the
per-round wall times and of the thread CPU times (``time.thread_time``, less sensitive to other processes on
a shared machine) are printed and written to ``--out`` as JSON.

    python benchmarks/lyapunov_before_after.py --rounds 5 --out benchmarks/results/cpu/lyapunov_before_after.json
"""

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch


def load_before(commit: str):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    src = subprocess.run(["git", "-C", root, "show", f"{commit}:surroflos/lyapunov.py"], check=True,
                         capture_output=True, text=True).stdout
    path = os.path.join(tempfile.mkdtemp(), "lyapunov_before.py")
    with open(path, "w") as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location("surroflos._lyapunov_before", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)  # relative imports resolve against the installed surroflos
    return mod


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", default="d0525f7")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--T", type=int, default=1000, help="steps of the rate case")
    p.add_argument("--T-lif", type=int, default=500, help="steps of the LIF cases")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cases", default="rate,lif_atan,lif_triangle")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from surroflos import lyapunov as after
    from surroflos._random import orthonormal_frame
    from surroflos.bench import naive_lyapunov
    from surroflos.flossing import flossing_loss
    from surroflos.models import RateRNN, SpikingRNN

    before = load_before(args.before)
    results = {"before": args.before, "T": args.T, "T_lif": args.T_lif, "threads": args.threads, "rounds": args.rounds,
               "load_start": list(os.getloadavg()), "torch": torch.__version__, "python": platform.python_version(),
               "cpu": platform.processor() or platform.machine(), "cases": []}
    B, k, n_in = 4, 32, 16
    for case in args.cases.split(","):
        g = torch.Generator().manual_seed(11)
        if case == "rate":
            N = 256
            model = RateRNN(n_in, N, 1, g=1.5, input_scale=n_in ** -0.5, generator=g)
            u0 = torch.randn(B, N, generator=torch.Generator().manual_seed(5))
        else:
            N = 512
            model = SpikingRNN(n_in, N, 1, beta=0.9, threshold=1.0, surrogate=case.split("_")[1], g=1.0,
                               input_scale=n_in ** -0.5, generator=g)
            u0 = torch.rand(B, N, generator=torch.Generator().manual_seed(5))
        T = args.T if case == "rate" else args.T_lif
        x = torch.randn(T, B, n_in, generator=torch.Generator().manual_seed(4))
        Q0 = orthonormal_frame(B, N, k, generator=torch.Generator().manual_seed(6))

        def spectrum(mod):
            return lambda: mod.lyapunov_spectrum(model, x, k, qr_every=1, state0=u0, backend="torch",
                                                 generator=torch.Generator().manual_seed(6)).exponents

        impls = {"naive": lambda: naive_lyapunov(model, x, k, u0, Q0), "before": spectrum(before),
                 "after": spectrum(after)}
        for grad in (False, True):
            def timed(f):
                if grad:
                    return lambda: torch.autograd.grad(flossing_loss(f()), [model.weight_rec])
                def run():
                    with torch.no_grad():
                        return f()
                return run
            runs = {n: timed(f) for n, f in impls.items()}
            with torch.no_grad():
                ref = impls["naive"]().mean(0)
                err = {n: float((impls[n]().mean(0) - ref).abs().max()) for n in ("before", "after")}
            for f in runs.values():
                f()  # warm-up
            wall = {n: [] for n in runs}
            cpu = {n: [] for n in runs}
            names = list(runs)
            for r in range(args.rounds):
                order = names[r % len(names):] + names[:r % len(names)]
                for n in order:
                    w0, c0 = time.perf_counter(), time.thread_time()
                    runs[n]()
                    cpu[n].append(time.thread_time() - c0)
                    wall[n].append(time.perf_counter() - w0)
            med = {n: (statistics.median(wall[n]) * 1e3, statistics.median(cpu[n]) * 1e3) for n in runs}
            row = {"case": case, "measure": "forward+backward" if grad else "forward", "N": N, "k": k, "B": B,
                   "T": T, "median_wall_ms": {n: v[0] for n, v in med.items()},
                   "median_cpu_ms": {n: v[1] for n, v in med.items()},
                   "wall_ms": {n: [t * 1e3 for t in v] for n, v in wall.items()},
                   "cpu_ms": {n: [t * 1e3 for t in v] for n, v in cpu.items()}, "lambda_max_abs_err": err}
            results["cases"].append(row)
            sp = {n: (med["naive"][0] / med[n][0], med["naive"][1] / med[n][1]) for n in ("before", "after")}
            print(f"{case:13s} {row['measure']:16s} naive {med['naive'][0]:8.1f} ms | before {med['before'][0]:8.1f} ms "
                  f"({sp['before'][0]:.2f}x wall, {sp['before'][1]:.2f}x cpu) | after {med['after'][0]:8.1f} ms "
                  f"({sp['after'][0]:.2f}x wall, {sp['after'][1]:.2f}x cpu) | lambda err {err['after']:.1e}",
                  flush=True)
            results["load_end"] = list(os.getloadavg())
            if args.out:  # after every case: a partial run keeps what it measured
                with open(args.out, "w") as f:
                    json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
