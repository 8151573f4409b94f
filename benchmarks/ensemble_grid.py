"""Wall time of a small mixed grid, solo against packed (BENCHMARKS.md, "Results: ensembles").

The xor-lif preset's network (LIF, N = 64, T = 60, batch 32, delay 6, preflossed) over 2 gains x 2
learning rates x 3 seeds, with fewer epochs: ``solo`` trains the 12 runs one after another in this
process, ``packed`` trains them as one ensemble (surroflos.train.ensemble_config: member-wise g, lr
and seed). In float64 each member equals its solo run to 1e-10 (tests/test_ensemble.py); these runs are
float32 (the preset's), where a packed LIF run and its solo run part once rounding flips a spike.

    OMP_NUM_THREADS=1 python benchmarks/ensemble_grid.py solo|packed [--epochs 4] [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import time

import torch

from surroflos.sweep import PRESETS
from surroflos.train import TrainConfig, ensemble_config, train


def configs(epochs: int, out: str) -> list[TrainConfig]:
    base = dict(PRESETS["xor-lif"].base, task="xor", delay=6, model="lif", flossing="pre", epochs=epochs)
    return [TrainConfig(**dict(base, g=g, lr=lr, seed=s, out=os.path.join(out, f"g{g}-lr{lr}-s{s}")))
            for g in (1.0, 1.5) for lr in (1e-2, 3e-3) for s in range(3)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["solo", "packed"])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--out", default="/tmp/surroflos-ensemble-grid")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = os.path.join(args.out, args.mode)
    shutil.rmtree(out, ignore_errors=True)
    cfgs = configs(args.epochs, out)
    t0 = time.perf_counter()
    if args.mode == "solo":
        for cfg in cfgs:
            train(cfg, progress=False, log=lambda s: None)
    else:
        train(ensemble_config(cfgs, out=os.path.join(out, "pack")), progress=False, log=lambda s: None)
    print(f"{args.mode}: {len(cfgs)} runs in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
