"""Seed 001: the largest (surrogate) Lyapunov exponent predicts how error gradients grow or vanish.

For each network the leading exponent ``lambda_1`` is computed with :func:`surroflos.lyapunov_spectrum`
(tangent maps + QR) and, independently, the typical norm of the error gradient sent back over a lag,
``||dL_t/dh_{t-lag}||``, with :func:`surroflos.gradients.gradient_propagation` (autograd through the
rollout, random unit error vectors). Both use the same input sequences, initial states and time window
(the gradient segments start where the QR accumulation starts). The
gradient's growth rate is the least-squares slope of its mean log-norm against ``lag * dt`` over lags
``>= --fit-from`` (the first steps bend while the back-propagated vector aligns).

Networks (N = 100, one or three N(0, 1) input channels):

- rate, discrete tanh map, g = 0.5 (contracting: vanishing gradients) and g = 3 (chaotic: exploding);
- LIF, sigmoid surrogate (scale 5), g = 8, beta = 0.8, ``smooth=True, detach_reset=False``: the
  surrogate primitive in the forward pass, so the surrogate Jacobian is the exact Jacobian;
- the same LIF with the Heaviside forward (``smooth=False``, snnTorch's detached reset): the gradient
  is the surrogate gradient of training and ``lambda_1`` the surrogate Lyapunov exponent.

Usage::

    python examples/gradients_vs_lyapunov.py --quick     # ~10 s
    python examples/gradients_vs_lyapunov.py             # ~15 s (T=2000, 8 trajectories, lags to 60)

Writes ``gradients_vs_lyapunov.png`` and ``.json`` to ``--out`` (default ``outputs/gradients``) and prints
a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import surroflos as sf
from surroflos.gradients import gradient_propagation
from surroflos.plotting import figure, save_figure

F64 = torch.float64


def networks(seed: int) -> list[tuple[str, object, int]]:
    def g(s: int) -> torch.Generator:
        return torch.Generator().manual_seed(s)

    sig = sf.Surrogate("sigmoid", scale=5.0)
    return [
        ("rate g=0.5 (contracting)", sf.RateRNN(1, 100, 1, g=0.5, generator=g(seed), dtype=F64), 1),
        ("rate g=3 (chaotic)", sf.RateRNN(1, 100, 1, g=3.0, generator=g(seed), dtype=F64), 1),
        ("LIF smooth forward (exact Jacobian)",
         sf.SpikingRNN(3, 100, 1, g=8.0, beta=0.8, surrogate=sig, input_scale=0.5, smooth=True,
                       detach_reset=False, generator=g(seed), dtype=F64), 3),
        ("LIF Heaviside forward (surrogate gradient)",
         sf.SpikingRNN(3, 100, 1, g=8.0, beta=0.8, surrogate=sig, input_scale=0.5, generator=g(seed), dtype=F64), 3),
    ]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter runs (T=600, 4 trajectories, lags to 40, every end time)")
    ap.add_argument("--out", default="outputs/gradients")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fit-from", type=int, default=10, help="smallest lag used in the growth-rate fit")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        T, B, max_lag, n_times, n_probe = 600, 4, 40, None, 1
    else:
        T, B, max_lag, n_times, n_probe = 2000, 8, 60, 256, 4
    transient, frame_warmup = 100, 100
    lags = list(range(1, max_lag + 1))

    rows, results = [], {}
    fig, axes = figure(ncols=2, nrows=2, size=(5.2, 3.8))
    for ax, (name, model, n_in) in zip(axes, networks(args.seed)):
        x = torch.randn(T, B, n_in, generator=torch.Generator().manual_seed(1000 + args.seed), dtype=F64)
        s0 = model.initial_state(B, random=True, generator=torch.Generator().manual_seed(1))
        t0 = time.perf_counter()
        with torch.no_grad():
            lam = sf.lyapunov_spectrum(model, x, 1, transient=transient, frame_warmup=frame_warmup, state0=s0,
                                       generator=torch.Generator().manual_seed(2)).exponents[:, 0]
        t1 = time.perf_counter()
        # Same window as the QR accumulation: the gradient's segments start after transient + frame_warmup.
        r = gradient_propagation(model, x, lags, state0=s0, transient=transient + frame_warmup, n_times=n_times,
                                 n_probe=n_probe,
                                 generator=torch.Generator().manual_seed(3))
        t2 = time.perf_counter()
        lam1, rate = float(lam.mean()), r.growth_rate(min_lag=args.fit_from)
        rows.append((name, lam1, float(lam.std()), rate, (rate - lam1) / abs(lam1), t1 - t0, t2 - t1))
        results[name] = dict(lambda1=lam1, lambda1_std=float(lam.std()), growth_rate=rate,
                             rel_diff=(rate - lam1) / abs(lam1), lags=lags, log_norm=r.log_norm.tolist(),
                             seconds_qr=t1 - t0, seconds_grad=t2 - t1)
        r.plot(ax, lambda1=lam1, min_lag=args.fit_from, label="gradient", title=name)

    print(f"T={T}, B={B}, transient={transient}, frame_warmup={frame_warmup}, lags 1..{max_lag} (fit from {args.fit_from}), "
          f"n_times={n_times}, n_probe={n_probe}")
    print(f"{'network':44s} {'lambda_1 (QR)':>18s} {'gradient rate':>14s} {'rel diff':>9s} {'t_QR':>6s} {'t_grad':>7s}")
    for name, lam1, sd, rate, rel, tq, tg in rows:
        print(f"{name:44s} {lam1:+9.4f} +- {sd:.4f} {rate:+14.4f} {100 * rel:+8.1f}% {tq:5.1f}s {tg:6.1f}s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    png = save_figure(fig, out / "gradients_vs_lyapunov.png")
    (out / "gradients_vs_lyapunov.json").write_text(json.dumps(
        dict(settings=dict(T=T, B=B, transient=transient, frame_warmup=frame_warmup, max_lag=max_lag,
                           fit_from=args.fit_from, n_times=n_times, n_probe=n_probe, seed=args.seed),
             results=results), indent=1))
    print(f"wrote {png}")
    return results


if __name__ == "__main__":
    main()
