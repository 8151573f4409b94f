"""Flossing a sparse balanced LIF network to the edge of chaos (seed 000, Fig 3 style).

Builds a small autonomous balanced network (``N = 200, K = 20, dt = 0.5 ms``, trainable recurrent weights,
surrogate ``fast_sigmoid(10)``), measures its largest surrogate Lyapunov exponent ``lambda_1`` on held-out
trajectories, flosses ``lambda_1`` toward 0 (``k = 1``) and measures it again on fresh held-out trajectories.

**Unit**: exponents are reported per membrane time constant, ``lambda_1 [1/s] * tau_m`` (``tau_m = 10 ms``),
i.e. the log growth rate of a perturbation per ``tau_m``. (The library returns 1/s.)

Flossing uses short windows (``T = 80`` steps = 40 ms, of which 30 ms are accumulated) because backprop
through long windows explodes. Adam's step size does not shrink as the loss ``lambda_1^2`` approaches 0, and
an overshoot into the silent / regular regime (``lambda_1 ~ -1/tau_m``, where the surrogate derivative
vanishes and so does the gradient) is a trap, so flossing runs in chunks of ``chunk`` updates with a fresh
Adam whose learning rate is scaled by ``|lambda_1|`` of the previous chunk (``lr0 * min(1, |lam|/lam0)``,
floored at ``lr_min``).

Outputs (``outputs/balanced_flossing/``): ``balanced_flossing.png`` (raster before, raster after,
``lambda_1`` over the flossing steps) and ``balanced_flossing.json``.

Run: ``python examples/balanced_flossing.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from surroflos import surrogate as sg
from surroflos.flossing import floss
from surroflos.lyapunov import lyapunov_spectrum
from surroflos.models.balanced import BalancedNetwork, plot_raster

UNIT = "per tau_m (lambda [1/s] * tau_m)"


def build(seed: int = 0, N: int = 200, K: int = 20, dt: float = 5e-4, surrogate=("fast_sigmoid", 10.0)):
    g = torch.Generator().manual_seed(seed)
    return BalancedNetwork(N=N, K=K, dt=dt, learn_recurrent=True, surrogate=sg.Surrogate(*surrogate), generator=g)


def held_out_lambda1(net: BalancedNetwork, seed: int, T: int = 600, batch: int = 8, transient: int = 100,
                     frame_warmup: int = 50) -> tuple[float, float]:
    """Mean and standard error of lambda_1 (per tau_m) over ``batch`` fresh trajectories."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        r = lyapunov_spectrum(net, torch.zeros(T, batch, 0), 1, transient=transient, frame_warmup=frame_warmup,
                              qr_every=4, generator=g)
    e = r.exponents[:, 0].double() * net.tau_m
    return float(e.mean()), float(e.std() / math.sqrt(batch))


def floss_adaptive(net: BalancedNetwork, steps: int, *, seed: int, T: int = 120, batch: int = 8, lr0: float = 5e-2,
                   lr_min: float = 2e-3, chunk: int = 10, target: float = 0.0) -> tuple[list[float], list[float]]:
    """Flossing in chunks with a learning rate shrinking with |lambda_1|; returns per-step lambda_1 (per tau_m)
    training estimates and the learning rate of each step."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(T, batch, 0)
    lams: list[float] = []
    lrs: list[float] = []
    lam0 = None
    lr = lr0
    done = 0
    while done < steps:
        n = min(chunk, steps - done)
        h = floss(net, n, k=1, T=T, batch=batch, lr=lr, target=target / net.tau_m, inputs=x, transient=T // 3,
                  frame_warmup=T // 3, qr_every=4, generator=g, progress=False)
        chunk_lams = (h.exponents[:, 0].double() * net.tau_m).tolist()
        lams += chunk_lams
        lrs += [lr] * len(chunk_lams)
        done += n
        m = abs(sum(chunk_lams) / len(chunk_lams) - target)
        lam0 = m if lam0 is None else lam0
        lr = max(lr_min, lr0 * min(1.0, m / max(lam0, 1e-12)))
    return lams, lrs


def mean_rate(net: BalancedNetwork, seed: int, steps: int = 2000, batch: int = 4) -> tuple[float, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    spk = net.simulate(steps, batch=batch, generator=g)
    return float(spk.float().mean()) / net.dt, spk


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300, help="flossing updates")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="fewer steps (smoke run)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "outputs" / "balanced_flossing"))
    args = ap.parse_args(argv)
    steps = 40 if args.quick else args.steps
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    t_start = time.time()

    net = build(args.seed)
    lam_before, se_before = held_out_lambda1(net, seed=1000 + args.seed)
    rate_before, spk_before = mean_rate(net, seed=2000 + args.seed)
    print(f"before: lambda_1 = {lam_before:+.3f} +- {se_before:.3f} {UNIT}, rate {rate_before:.1f} Hz")

    t0 = time.time()
    lams, lrs = floss_adaptive(net, steps, seed=3000 + args.seed)
    t_floss = time.time() - t0

    lam_after, se_after = held_out_lambda1(net, seed=4000 + args.seed)  # fresh trajectories, not training ones
    rate_after, spk_after = mean_rate(net, seed=2000 + args.seed)
    print(f"after:  lambda_1 = {lam_after:+.3f} +- {se_after:.3f} {UNIT}, rate {rate_after:.1f} Hz "
          f"(flossing {t_floss:.1f} s)")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(8, 9))
    n_show = 500  # 250 ms
    plot_raster(spk_before[:n_show], net.dt, axes[0], n_neurons=net.N, markersize=1.5,
                title=f"before flossing: $\\lambda_1\\tau_m$ = {lam_before:+.2f}, {rate_before:.1f} Hz")
    plot_raster(spk_after[:n_show], net.dt, axes[1], n_neurons=net.N, markersize=1.5,
                title=f"after flossing: $\\lambda_1\\tau_m$ = {lam_after:+.2f}, {rate_after:.1f} Hz")
    ax = axes[2]
    ax.plot(range(len(lams)), lams, ".-", ms=3, lw=0.8, label="training estimate (T = 120 steps)")
    ax.axhline(0.0, color="k", lw=0.8)
    ax.errorbar([0], [lam_before], yerr=[se_before], fmt="o", color="C1", label="held-out before")
    ax.errorbar([len(lams) - 1], [lam_after], yerr=[se_after], fmt="s", color="C3", label="held-out after")
    ax.set_xlabel("flossing step")
    ax.set_ylabel(r"$\lambda_1$ per $\tau_m$  ($\lambda_1$[1/s] $\times\,\tau_m$)")
    ax.set_title(f"N={net.N}, K={net.K}, dt={net.dt * 1e3:g} ms, surrogate {net.surrogate.name}({net.surrogate.scale:g})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = out / "balanced_flossing.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)

    result = {
        "unit": UNIT,
        "tau_m_s": net.tau_m,
        "settings": {"N": net.N, "K": net.K, "J0": net.J0, "I0": net.I0, "dt_s": net.dt, "tau_s_s": net.tau_s,
                     "surrogate": [net.surrogate.name, net.surrogate.scale], "learn_recurrent": True, "k": 1,
                     "steps": steps, "T": 120, "transient": 40, "frame_warmup": 40, "qr_every": 4,
                     "batch": 8, "lr0": 5e-2, "lr_min": 2e-3, "chunk": 10, "seed": args.seed,
                     "held_out": {"T": 600, "transient": 100, "frame_warmup": 50, "batch": 8}},
        "lambda1_before": lam_before, "lambda1_before_sem": se_before,
        "lambda1_after": lam_after, "lambda1_after_sem": se_after,
        "lambda1_before_per_s": lam_before / net.tau_m, "lambda1_after_per_s": lam_after / net.tau_m,
        "rate_before_hz": rate_before, "rate_after_hz": rate_after,
        "lambda1_training": lams, "lr": lrs,
        "flossing_seconds": t_floss, "total_seconds": time.time() - t_start,
    }
    (out / "balanced_flossing.json").write_text(json.dumps(result, indent=1))
    print(f"saved {png} and balanced_flossing.json ({result['total_seconds']:.1f} s)")
    return result


if __name__ == "__main__":
    main()
