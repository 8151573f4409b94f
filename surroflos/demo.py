"""The README's main job until ``surroflos train`` exists.

Computes the Lyapunov spectrum of a chaotic random rate network and the surrogate spectrum of a
recurrent LIF network, preflosses both (the first k exponents towards 0), and prints and plots the
spectra before and after. About a minute on a laptop CPU; ``quick=True`` takes a few seconds.
"""

from __future__ import annotations

import json
import os
import time

import torch

from . import plotting
from ._threads import torch_threads
from .flossing import floss
from .lyapunov import lyapunov_spectrum
from .models import RateRNN, SpikingRNN

__all__ = ["run_demo"]


def _spectrum(model, x, k, seed):
    with torch.no_grad():
        return lyapunov_spectrum(model, x, k, qr_every=1, transient=100, frame_warmup=100,
                                 generator=torch.Generator().manual_seed(seed))


def _fmt(v: torch.Tensor, n: int = 8) -> str:
    return " ".join(f"{x:+.3f}" for x in v[:n].tolist())


def run_demo(out: str = "outputs/demo", seed: int = 0, quick: bool = False,
             device: torch.device | str = "cpu") -> dict:
    """Run the demo, print a summary, write ``demo.png`` and ``demo.json`` to ``out``; return the numbers."""
    # Many tiny ops: one thread avoids the synchronisation cost of intra-op parallelism on small tensors.
    with torch_threads(1):
        return _run(out, seed, quick, device)


def _run(out: str, seed: int, quick: bool, device) -> dict:
    t_start = time.perf_counter()
    n, k_floss, k_show = 64, 4, 32
    T_eval = 250 if quick else 1200
    gen = torch.Generator().manual_seed(seed)
    nets = {
        "rate (tanh, g=3)": RateRNN(1, n, 1, g=3.0, generator=gen, device=device),
        "LIF (beta=0.9, atan surrogate, g=3)": SpikingRNN(1, n, 1, neuron="lif", beta=0.9, g=3.0, surrogate="atan",
                                                          generator=gen, device=device),
    }
    x_eval = torch.randn(T_eval, 8, 1, generator=torch.Generator().manual_seed(seed + 1)).to(device)
    # Adam settings per network: the rate network's large couplings need a larger step.
    floss_cfg = {"rate (tanh, g=3)": {"lr": 1e-2, "batch": 16, "steps": 10 if quick else 400},
                 "LIF (beta=0.9, atan surrogate, g=3)": {"lr": 3e-3, "batch": 16, "steps": 10 if quick else 500}}
    summary: dict = {"config": {"N": n, "k_flossed": k_floss, "T_flossing": 60,
                                "flossing": floss_cfg, "T_eval": T_eval, "seed": seed, "device": str(device)}}
    fig, axes = plotting.figure(2, 2)
    print(f"surroflos demo: Lyapunov spectra before/after preflossing the first {k_floss} exponents to 0 "
          f"(N={n})")
    for col, (name, net) in enumerate(nets.items()):
        before = _spectrum(net, x_eval, k_show, seed + 2)
        t0 = time.perf_counter()
        cfg = floss_cfg[name]
        hist = floss(net, cfg["steps"], k=k_floss, T=60, lr=cfg["lr"], batch=cfg["batch"], generator=gen)
        took = time.perf_counter() - t0
        after = _spectrum(net, x_eval, k_show, seed + 2)
        b, a = before.mean(), after.mean()
        print(f"\n{name}  ({cfg['steps']} flossing steps, {took:.1f} s)")
        print(f"  before: {_fmt(b)} ...   lambda_1 = {b[0]:+.4f}  KY dim = {float(before.kaplan_yorke_dimension().mean()):.2f}")
        print(f"  after:  {_fmt(a)} ...   lambda_1 = {a[0]:+.4f}  KY dim = {float(after.kaplan_yorke_dimension().mean()):.2f}")
        plotting.plot_spectra(axes[col], {"before": before.exponents, "after preflossing": after.exponents},
                              title=name, unit="1/step")
        axes[col].axvspan(0.5, k_floss + 0.5, color="0.85", zorder=0, label="_flossed")
        plotting.plot_flossing(axes[2 + col], hist.exponents, target=0.0, title="exponents during flossing")
        summary[name] = {"before": b.tolist(), "after": a.tolist(), "flossing_history": hist.exponents.tolist(),
                         "flossing_seconds": took}
    os.makedirs(out, exist_ok=True)
    png = plotting.save_figure(fig, os.path.join(out, "demo.png"))
    with open(os.path.join(out, "demo.json.tmp"), "w") as f:
        json.dump(summary, f, indent=1)
    os.replace(os.path.join(out, "demo.json.tmp"), os.path.join(out, "demo.json"))
    print(f"\nwrote {png} and {os.path.join(out, 'demo.json')} in {time.perf_counter() - t_start:.0f} s")
    return summary
