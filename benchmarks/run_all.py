"""Run the surroflos benchmark suite and keep its JSON under benchmarks/results/<tag>/.

    python benchmarks/run_all.py                 # configs cpu (with the cpu_kernels cases) and ensemble, full size
    python benchmarks/run_all.py --gpu           # configurations 1-4 on CUDA, one after the other
    python benchmarks/run_all.py --gpu --configs 1 3
    python benchmarks/run_all.py --quick         # seconds: checks that everything runs

Each configuration is one ``surroflos bench`` call (printed before it runs), so a device lease with
a per-command limit can run them one by one instead. ``--tag`` names the results folder (default
``cpu``, or the GPU's name with ``--gpu``). Extra flags after ``--`` go to every call, e.g.
``-- --repeats 30 --compile-backend none``.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # run from a checkout without installing

from surroflos import bench  # noqa: E402

# The default CPU configurations. ``cpu`` runs the ``cpu_kernels`` cases in the same run (issue 17's targets are
# stated for it), so ``cpu_kernels`` is not listed again; ``--configs cpu_kernels`` still runs it alone.
CPU_CONFIGS = ["cpu", "ensemble"]


def _tag(gpu: bool) -> str:
    if not gpu:
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("--gpu: no CUDA device here")
    return re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name()).strip("-").lower()


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", action="store_true", help="run configurations 1-4 and ensemble on CUDA instead of cpu")
    p.add_argument("--configs", nargs="+", choices=bench.CONFIGS,
                   help="which configurations (default: cpu, which includes the cpu_kernels cases, and "
                        "ensemble; or 1 2 3 4 and ensemble with --gpu)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test, not a measurement)")
    p.add_argument("--tag", help="results sub-folder (default cpu or the GPU name)")
    p.add_argument("--results", default=os.path.join(HERE, "results"), help="results root (default benchmarks/results)")
    args = p.parse_args(argv)
    # the ensemble config runs on both devices: with --gpu it measures the GPU variant of issue 12's target
    configs = args.configs or (list(bench.GPU_CONFIGS) + ["ensemble"] if args.gpu else list(CPU_CONFIGS))
    tag = args.tag or _tag(args.gpu) + ("-quick" if args.quick else "")
    out = os.path.join(args.results, tag)
    rc = 0
    for config in configs:
        call = ["--config", config, "--out", out] + (["--quick"] if args.quick else []) + extra
        if args.gpu:
            call += ["--device", "cuda"]
        print("$ surroflos bench " + " ".join(shlex.quote(a) for a in call), flush=True)
        rc = bench.main(call) or rc
    return rc


if __name__ == "__main__":
    sys.exit(main())
