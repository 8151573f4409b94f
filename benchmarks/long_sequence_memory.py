"""Memory of one recurrent LIF training step over long sequences (issue 17: at T = 2000 ours must need less
than half of snnTorch's memory).

The network of ``surroflos bench``'s recurrent case: input Linear (n_in = 128) -> recurrent LIF N = 512
(beta 0.9, threshold 1, atan surrogate, subtract reset) -> readout Linear (n_out = 10), batch 32, float32,
one thread. One training step = forward over ``[T, 32, 128]`` inputs and backward of a random output
cotangent to every parameter. The implementations are those of ``surroflos bench``'s recurrent case
(:func:`surroflos.bench._rnn_impls`, the same networks):

- ``snntorch``: ``nn.Linear`` + ``snntorch.RLeaky`` + ``nn.Linear`` in a Python loop over time (how snnTorch's
  tutorials train recurrent networks), with our weights;
- ``norse``: ``norse.torch.LIFRecurrent`` + ``nn.Linear`` (Norse's own current-based dynamics: same sizes,
  other equations; for scale only);
- ``ours_torch`` / ``ours_cpu``: ``surroflos.SpikingRNN`` on the fused recurrent op's PyTorch path / with its
  compiled forward (``backend="cpu"``, what ``"auto"`` runs at N = 512).

Each (implementation, T) runs in a fresh process: build, one warm-up step at T = 20 (one-time allocations of
the libraries), then the measured step. The figure is the peak resident memory during that step above the
resident memory before it (``VmHWM`` reset through ``/proc/self/clear_refs``): what the step itself needs.
Also printed: the size of one ``[T, B, N]`` float32 array (a membrane trace), the unit these numbers come in,
and the step's wall time.

    python benchmarks/long_sequence_memory.py                  # T = 500, 1000, 2000; about two minutes
    python benchmarks/long_sequence_memory.py --T 2000 --impls ours_cpu snntorch
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

B, N, N_IN, N_OUT = 32, 512, 128, 10
IMPLS = ("snntorch", "norse", "ours_torch", "ours_cpu")


def _status_mib(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def _build(impl: str, T: int):
    """The implementation ``impl`` of ``surroflos bench``'s recurrent training-step case at these sizes (the same
    networks, weights copied from ours into snnTorch's): ``forward(x) -> outputs``."""
    import torch

    from surroflos.bench import Context, _rnn_impls

    ctx = Context(device=torch.device("cpu"), compile_backend=None)
    impls = {i.name: i for i in _rnn_impls(ctx, dict(T=T, B=B, N=N, n_in=N_IN, n_out=N_OUT), gpu=False)}
    forward = impls[impl].build().forward
    return lambda x: forward(x)[0]


def _one(impl: str, T: int) -> dict:
    import torch

    torch.set_num_threads(1)
    forward = _build(impl, T)
    gen = torch.Generator().manual_seed(1)
    x, g = torch.randn(T, B, N_IN, generator=gen), torch.randn(T, B, N_OUT, generator=gen)
    forward(x[:20]).backward(g[:20])  # one-time allocations (libraries' workspaces) before the measurement
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident size
    base = _status_mib("VmRSS")
    t0 = time.perf_counter()
    forward(x).backward(g)
    wall = time.perf_counter() - t0
    return {"impl": impl, "T": T, "peak_above_base_MiB": _status_mib("VmHWM") - base, "base_MiB": base,
            "step_s": wall, "trace_MiB": 4 * T * B * N / 2 ** 20, "torch": torch.__version__}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--T", type=int, nargs="+", default=[500, 1000, 2000])
    p.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS))
    p.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results", "cpu",
                                                  "long_sequence_memory.json"))
    p.add_argument("--one", nargs=2, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one is not None:
        print(json.dumps(_one(args.one[0], int(args.one[1]))))
        return 0
    if not os.path.exists("/proc/self/clear_refs"):
        print("needs Linux's /proc/self/clear_refs to reset the peak resident size", file=sys.stderr)
        return 2
    rows = []
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for T in args.T:
        for impl in args.impls:
            out = subprocess.run([sys.executable, __file__, "--one", impl, str(T)], capture_output=True, text=True,
                                 env=env)
            if out.returncode != 0:
                rows.append({"impl": impl, "T": T, "error": (out.stderr.strip().splitlines() or ["?"])[-1]})
            else:
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"T={T:5d} {impl:9s} " + (f"error: {r['error']}" if "error" in r else
                  f"peak {r['peak_above_base_MiB']:7.0f} MiB ({r['peak_above_base_MiB'] / r['trace_MiB']:4.1f} "
                  f"traces of {r['trace_MiB']:.0f} MiB)  step {r['step_s']:6.2f} s"), flush=True)
    by = {(r["impl"], r["T"]): r for r in rows if "error" not in r}
    print("\n| T | " + " | ".join(f"{i} (MiB)" for i in args.impls) + " | ours (cpu, else torch) / snnTorch |")
    print("|---|" + "---|" * (len(args.impls) + 1))
    for T in args.T:
        cells = [f"{by[(i, T)]['peak_above_base_MiB']:.0f}" if (i, T) in by else "-" for i in args.impls]
        ours = next((by[(i, T)] for i in ("ours_cpu", "ours_torch") if (i, T) in by), None)
        ratio = (f"{ours['peak_above_base_MiB'] / by[('snntorch', T)]['peak_above_base_MiB']:.2f}"
                 if ours is not None and ("snntorch", T) in by else "-")
        print(f"| {T} | " + " | ".join(cells) + f" | {ratio} |")
    result = {"what": __doc__.splitlines()[0], "sizes": {"B": B, "N": N, "n_in": N_IN, "n_out": N_OUT},
              "machine": {"processor": platform.processor() or platform.machine(), "python": platform.python_version(),
                          "loadavg_end": open("/proc/loadavg").read().split()[:3]},
              "rows": rows}
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
